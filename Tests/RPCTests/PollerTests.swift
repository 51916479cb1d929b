import Foundation
import XCTest
import ZeroMQ

/// `ZMQPoller` over plain descriptors calls the OS's poll itself; libzmq's event bits differ from
/// the OS's (ZMQ_POLLOUT is 2, POLLOUT 4), so both directions are translated.
final class PollerTests: XCTestCase {
    func testDescriptorPollerReportsInputAndOutputInLibzmqBits() throws {
        var ends: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&ends), 0)
        defer { close(ends[0]); close(ends[1]) }
        var poller = ZMQPoller([.fileDescriptor(ends[0], .pollIn), .fileDescriptor(ends[1], .pollOut)])
        var events = try poller.poll(timeoutMilliseconds: 0)
        XCTAssertEqual(events, [[], .pollOut], "an empty pipe: nothing to read, room to write")
        var byte: UInt8 = 1
        XCTAssertEqual(write(ends[1], &byte, 1), 1)
        events = try poller.poll(timeoutMilliseconds: 0)
        XCTAssertEqual(events, [.pollIn, .pollOut])
    }

    func testDescriptorPollerWaitsForItsTimeoutWhenNothingHappens() throws {
        let wakeup = try ZMQWakeup()
        var poller = ZMQPoller([.fileDescriptor(wakeup.fileDescriptor, .pollIn)])
        let start = ContinuousClock.now
        XCTAssertEqual(try poller.poll(timeoutMilliseconds: 50), [[]])
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(45))
        wakeup.signal()
        XCTAssertEqual(try poller.poll(timeoutMilliseconds: 1000), [.pollIn])
    }
}
