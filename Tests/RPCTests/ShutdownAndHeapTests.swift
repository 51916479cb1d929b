import Foundation
@testable import RPC
import WinnowProto
import WinnowTestSupport
import XCTest

final class ServerShutdownTests: XCTestCase {
    func testShutdownLetsRequestsInFlightFinish() async throws {
        let server = try TestServer(workers: 2)
        let client = try RPCClient(endpoint: server.endpoint)
        defer { client.close() }
        let calls = Task {
            try await withThrowingTaskGroup(of: Int64.self) { group in
                for index in 0..<10 {
                    group.addTask {
                        try await client.call(service: "echo", method: "Sleep", tensor([150, Int64(index)]),
                                              as: Winnow_V1_FloatTensor.self, timeout: .seconds(10)).shape[1]
                    }
                }
                var done: [Int64] = []
                for try await index in group { done.append(index) }
                return done.sorted()
            }
        }
        try await Task.sleep(for: .milliseconds(60))
        server.server.shutdown(grace: .seconds(5))
        let done = try await calls.value
        XCTAssertEqual(done, Array(0..<10))
    }

    func testShutdownFailsRequestsStillRunningAfterTheGraceWithUnavailable() async throws {
        let server = try TestServer(workers: 1)
        let client = try RPCClient(endpoint: server.endpoint)
        defer { client.close() }
        let call = Task {
            try await client.call(service: "echo", method: "Sleep", tensor([3000]), as: Winnow_V1_FloatTensor.self,
                                  timeout: .seconds(10))
        }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        server.server.shutdown(grace: .milliseconds(100))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        let error = await rpcError { try await call.value }
        XCTAssertEqual(error?.code, .unavailable)
    }
}

final class DeadlineHeapTests: XCTestCase {
    func testPopsInDeadlineOrder() {
        var heap = DeadlineHeap()
        var generator = SplitMix64(seed: 9)
        var expected: [Int64] = []
        for id in 0..<200 {
            let deadline = Int64(generator.next() % 1000)
            expected.append(deadline)
            heap.push(deadline: deadline, id: UInt64(id))
        }
        var popped: [Int64] = []
        while let next = heap.pop() { popped.append(next.deadline) }
        XCTAssertEqual(popped, expected.sorted())
    }
}
