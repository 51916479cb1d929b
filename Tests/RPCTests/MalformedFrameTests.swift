import Foundation
import RPC
import WinnowProto
import WinnowTestSupport
import XCTest
import ZeroMQ

/// Bad input at a server: answered with INVALID_ARGUMENT when the request can be identified,
/// dropped otherwise, and the server keeps serving.
final class MalformedFrameTests: XCTestCase {
    func testUndecodablePayloadGetsInvalidArgument() throws {
        let server = try TestServer()
        defer { server.stop() }
        let socket = try rawDealer(server.endpoint)
        try socket.send(multipart: [WireProtocol.request + requestHeader(id: 9, method: "Echo"), [0xFF, 0xFF, 0xFF]])
        let reply = try XCTUnwrap(receive(socket, within: 5000))
        XCTAssertEqual(reply.count, 2)
        let header = try Winnow_V1_ReplyHeader(serializedBytes: XCTUnwrap(WireProtocol.headerBytes(reply[0], tag: WireProtocol.reply)))
        XCTAssertEqual(header.requestID, 9)
        XCTAssertEqual(header.code, .invalidArgument)
    }

    func testPayloadOverTheCapGetsInvalidArgument() throws {
        let server = try TestServer(maxPayloadBytes: 100_000)
        defer { server.stop() }
        let socket = try rawDealer(server.endpoint)
        let big = [UInt8](repeating: 7, count: 300_000) // over the cap, under the hard limit
        try socket.send(multipart: [WireProtocol.request + requestHeader(id: 3, method: "Echo"), big])
        let reply = try XCTUnwrap(receive(socket, within: 5000))
        let header = try Winnow_V1_ReplyHeader(serializedBytes: XCTUnwrap(WireProtocol.headerBytes(reply[0], tag: WireProtocol.reply)))
        XCTAssertEqual(header.code, .invalidArgument)
        XCTAssertTrue(header.message.contains("cap"), header.message)
    }

    func testFrameOverTheHardLimitIsDroppedAndTheServerKeepsServing() async throws {
        let server = try TestServer(maxPayloadBytes: 100_000)
        defer { server.stop() }
        let socket = try rawDealer(server.endpoint)
        let huge = [UInt8](repeating: 7, count: 100_000 + WireProtocol.hardLimitSlack + 1)
        try socket.send(multipart: [WireProtocol.request + requestHeader(id: 4, method: "Echo"), huge])
        XCTAssertNil(try receive(socket, within: 300), "a frame over the hard limit gets no answer")
        let client = try RPCClient(endpoint: server.endpoint)
        defer { client.close() }
        let reply = try await client.call(service: "echo", method: "Echo", tensor([1]), as: Winnow_V1_FloatTensor.self,
                                          timeout: .seconds(5))
        XCTAssertEqual(reply.shape, [1])
    }

    func testTenThousandRandomMessagesDoNotStopTheServer() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let socket = try rawDealer(server.endpoint)
        var generator = SplitMix64(seed: 2)
        for index in 0..<10_000 {
            try socket.send(multipart: randomMessage(&generator, index: index))
        }
        // Everything sent before this call reaches the server first (one connection, in order).
        let client = try RPCClient(endpoint: server.endpoint)
        defer { client.close() }
        let reply = try await client.call(service: "echo", method: "Echo", tensor([11]), as: Winnow_V1_FloatTensor.self,
                                          timeout: .seconds(20))
        XCTAssertEqual(reply.shape, [11])
        // Wait until the server has seen all 10,000, then check it is still serving.
        let deadline = Date().addingTimeInterval(20)
        while server.server.stats.malformed + server.server.stats.rejected + server.server.stats.served < 10_001,
              Date() < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTAssertGreaterThan(server.server.stats.malformed, 5_000)
        let again = try await client.call(service: "echo", method: "Echo", tensor([12]), as: Winnow_V1_FloatTensor.self,
                                          timeout: .seconds(5))
        XCTAssertEqual(again.shape, [12])
    }
}

/// Random multipart messages: random frame counts and bytes, some with a valid tag and header so
/// that the deeper checks (payload decoding, unknown methods) are exercised too.
func randomMessage(_ generator: inout SplitMix64, index: Int) -> [Frame] {
    let tags = [WireProtocol.request, WireProtocol.reply, WireProtocol.forward, WireProtocol.workerReply]
    let count = Int(generator.next() % 6) + 1
    var frames: [Frame] = []
    for position in 0..<count {
        let length = Int(generator.next() % 64)
        var frame = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        if position == 0 && generator.next() % 2 == 0 {
            // A real tag, then random bytes or (often) a real header.
            frame = tags[Int(generator.next() % 4)] + (generator.next() % 2 == 0 ? frame : requestHeader(
                id: UInt64(index), method: ["Echo", "Sleep", "", "Health"][Int(generator.next() % 4)]))
        }
        frames.append(frame)
    }
    return frames
}
