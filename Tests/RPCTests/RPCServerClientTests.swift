import Foundation
@testable import RPC
import WinnowProto
import WinnowTestSupport
import XCTest
import ZeroMQ

final class RPCServerClientTests: XCTestCase {
    var server: TestServer!
    var client: RPCClient!

    override func setUpWithError() throws {
        server = try TestServer()
        client = try RPCClient(endpoint: server.endpoint)
    }

    override func tearDown() {
        client?.close()
        server?.stop()
    }

    func testRoundTripReturnsTheTypedResponse() async throws {
        let reply = try await client.call(service: "echo", method: "Echo", tensor([2, 3], data: [1, 2, 3]),
                                          as: Winnow_V1_FloatTensor.self, timeout: .seconds(5))
        XCTAssertEqual(reply.shape, [2, 3])
        XCTAssertEqual(Array(reply.data), [1, 2, 3])
    }

    func testEmptyServiceNameAndKindPrefixAreAcceptedDirectly() async throws {
        let viaEmpty = try await client.call(service: "", method: "Echo", tensor([7]), as: Winnow_V1_FloatTensor.self,
                                             timeout: .seconds(5))
        XCTAssertEqual(viaEmpty.shape, [7])
    }

    func testManyPipelinedCallsEachGetTheirOwnReply() async throws {
        let client = self.client!
        let replies = try await withThrowingTaskGroup(of: (Int64, Int64).self) { group in
            for index in 0..<500 {
                group.addTask {
                    let reply = try await client.call(service: "echo", method: "Echo", tensor([Int64(index)]),
                                                      as: Winnow_V1_FloatTensor.self, timeout: .seconds(20))
                    return (Int64(index), reply.shape.first ?? -1)
                }
            }
            var all: [(Int64, Int64)] = []
            for try await pair in group { all.append(pair) }
            return all
        }
        XCTAssertEqual(replies.count, 500)
        for (sent, got) in replies { XCTAssertEqual(sent, got) }
    }

    func testLargePayloadsRoundTripIntact() async throws {
        // Large frames are sent without copying; the bytes must still arrive exactly.
        let client = self.client!
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<20 {
                group.addTask {
                    var generator = SplitMix64(seed: UInt64(index))
                    let bytes = (0..<(200_000 + index * 1000)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                    let reply = try await client.call(service: "echo", method: "Echo", tensor([Int64(index)], data: bytes),
                                                      as: Winnow_V1_FloatTensor.self, timeout: .seconds(20))
                    XCTAssertEqual(reply.shape, [Int64(index)])
                    XCTAssertEqual(Array(reply.data), bytes)
                }
            }
            try await group.waitForAll()
        }
    }

    func testATaskPreferringTheClientExecutorRunsOnTheReceivingThread() async throws {
        let client = self.client!
        let (threads, error) = try await withTaskExecutorPreference(client.executor) {
            var threads: Set<Bool> = []
            for index in 0..<200 {
                let reply = try await client.call(service: "echo", method: "Echo", tensor([Int64(index)]),
                                                  as: Winnow_V1_FloatTensor.self, timeout: .seconds(5))
                XCTAssertEqual(reply.shape, [Int64(index)])
                threads.insert(client.isOnReceivingThread)
            }
            // Deadlines still fire while the task lives on that thread.
            let error = await rpcError {
                try await client.call(service: "echo", method: "Sleep", tensor([500]), as: Winnow_V1_FloatTensor.self,
                                      timeout: .milliseconds(50))
            }
            return (threads, error)
        }
        XCTAssertEqual(threads, [true], "every resumption ran on the receiving thread")
        XCTAssertEqual(error?.code, .deadlineExceeded)
    }

    func testCallsOverlapInsteadOfQueueingBehindEachOther() async throws {
        // 8 calls of 200 ms each on 2 handler threads that sleep asynchronously: pipelined, they
        // take about 200 ms together, far less than 8 x 200 ms one after another.
        let client = self.client!
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    _ = try await client.call(service: "echo", method: "Sleep", tensor([200]),
                                              as: Winnow_V1_FloatTensor.self, timeout: .seconds(10))
                }
            }
            try await group.waitForAll()
        }
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(1200))
    }

    func testDeadlineExceededAndTheLateReplyNeverReachesALaterCall() async throws {
        let start = ContinuousClock.now
        let error = await rpcError {
            try await self.client.call(service: "echo", method: "Sleep", tensor([400]), as: Winnow_V1_FloatTensor.self,
                                       timeout: .milliseconds(100))
        }
        XCTAssertEqual(error?.code, .deadlineExceeded)
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(350))
        // The slow reply arrives while this later call is waiting; it must get its own reply.
        let reply = try await client.call(service: "echo", method: "Sleep", tensor([600, 42]),
                                          as: Winnow_V1_FloatTensor.self, timeout: .seconds(5))
        XCTAssertEqual(reply.shape, [600, 42])
        XCTAssertEqual(client.droppedReplies, 1, "the late reply was received and dropped")
    }

    func testHandlerSeesTheCallersDeadline() async throws {
        let before = WallClock.nowMicros()
        let reply = try await client.call(service: "echo", method: "Deadline", tensor([]),
                                          as: Winnow_V1_FloatTensor.self, timeout: .seconds(3))
        let seen = reply.shape[0]
        XCTAssertGreaterThanOrEqual(seen, before + 3_000_000)
        XCTAssertLessThanOrEqual(seen, WallClock.nowMicros() + 3_000_000)
    }

    func testNestedCallInheritsTheDeadlineOfTheCallBeingServed() async throws {
        // A front server whose handler calls the back server with a long timeout: the back server
        // must see the front caller's (shorter) deadline.
        let backEndpoint = server.endpoint
        let front = try TestServer(name: "front") { server in
            let back = try! RPCClient(endpoint: backEndpoint)
            server.register("Relay") { (request: Winnow_V1_FloatTensor) in
                try await back.call(service: "echo", method: "Deadline", request, as: Winnow_V1_FloatTensor.self,
                                    timeout: .seconds(60))
            }
        }
        defer { front.stop() }
        let frontClient = try RPCClient(endpoint: front.endpoint)
        defer { frontClient.close() }
        let before = WallClock.nowMicros()
        let reply = try await frontClient.call(service: "front", method: "Relay", tensor([]),
                                               as: Winnow_V1_FloatTensor.self, timeout: .seconds(2))
        XCTAssertGreaterThanOrEqual(reply.shape[0], before + 2_000_000)
        XCTAssertLessThan(reply.shape[0], before + 10_000_000, "the 60 s timeout of the nested call did not win")
    }

    func testUnknownMethodIsUnimplementedAndWrongServiceIsNotFound() async throws {
        let unknown = await rpcError {
            try await self.client.call(service: "echo", method: "Nope", tensor([]), as: Winnow_V1_FloatTensor.self,
                                       timeout: .seconds(5))
        }
        XCTAssertEqual(unknown?.code, .unimplemented)
        XCTAssertTrue(unknown?.message.contains("Nope") ?? false)
        let wrong = await rpcError {
            try await self.client.call(service: "teacher", method: "Echo", tensor([]), as: Winnow_V1_FloatTensor.self,
                                       timeout: .seconds(5))
        }
        XCTAssertEqual(wrong?.code, .notFound)
    }

    func testThrownErrorsBecomeStatuses() async throws {
        let errors = try TestServer(name: "errors") { server in
            server.register("Refuse") { (_: Winnow_V1_FloatTensor) -> Winnow_V1_FloatTensor in
                throw RPCError(.failedPrecondition, "dataset 7 is not built")
            }
            server.register("Crash") { (_: Winnow_V1_FloatTensor) -> Winnow_V1_FloatTensor in
                throw CocoaError(.fileNoSuchFile)
            }
        }
        defer { errors.stop() }
        let client = try RPCClient(endpoint: errors.endpoint)
        defer { client.close() }
        let refused = await rpcError {
            try await client.call(service: "errors", method: "Refuse", tensor([]), as: Winnow_V1_FloatTensor.self,
                                  timeout: .seconds(5))
        }
        XCTAssertEqual(refused, RPCError(.failedPrecondition, "dataset 7 is not built"))
        let crashed = await rpcError {
            try await client.call(service: "errors", method: "Crash", tensor([]), as: Winnow_V1_FloatTensor.self,
                                  timeout: .seconds(5))
        }
        XCTAssertEqual(crashed?.code, .internal)
    }

    func testIdempotentCallsAreRetriedOnUnavailableAndOthersAreNot() async throws {
        let attempts = Counter()
        let flaky = try TestServer(name: "flaky") { server in
            server.register("Flaky") { (request: Winnow_V1_FloatTensor) in
                if attempts.increment() % 3 != 0 { throw RPCError(.unavailable, "warming up") }
                return request
            }
        }
        defer { flaky.stop() }
        let client = try RPCClient(endpoint: flaky.endpoint)
        defer { client.close() }
        let reply = try await client.call(service: "flaky", method: "Flaky", tensor([5]), as: Winnow_V1_FloatTensor.self,
                                          timeout: .seconds(5), idempotent: true)
        XCTAssertEqual(reply.shape, [5])
        XCTAssertEqual(attempts.value, 3)
        let failed = await rpcError {
            try await client.call(service: "flaky", method: "Flaky", tensor([5]), as: Winnow_V1_FloatTensor.self,
                                  timeout: .seconds(5), idempotent: false)
        }
        XCTAssertEqual(failed?.code, .unavailable)
        XCTAssertEqual(attempts.value, 4)
    }

    func testCancellingTheCallingTaskEndsTheCallWithCancelled() async throws {
        let client = self.client!
        let task = Task {
            try await client.call(service: "echo", method: "Sleep", tensor([2000]), as: Winnow_V1_FloatTensor.self,
                                  timeout: .seconds(10))
        }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        let error = await rpcError { try await task.value }
        XCTAssertEqual(error?.code, .cancelled)
    }

    func testOversizedRequestIsRefusedBeforeSending() async throws {
        client.maxPayloadBytes = 1000
        let error = await rpcError {
            try await self.client.call(service: "echo", method: "Echo", tensor([], data: Array(repeating: 1, count: 2000)),
                                       as: Winnow_V1_FloatTensor.self, timeout: .seconds(5))
        }
        XCTAssertEqual(error?.code, .invalidArgument)
    }
}

/// A thread-safe counter for handlers.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    @discardableResult
    func increment() -> Int { lock.withLock { count += 1; return count } }
    var value: Int { lock.withLock { count } }
}

final class InlineHandlerTests: XCTestCase {
    func testInlineHandlersAnswerEvenWhileEveryPoolThreadIsBusy() async throws {
        let gate = DispatchSemaphore(value: 0)
        let server = try TestServer(name: "busy", workers: 1) { server in
            server.register("Block") { (request: Winnow_V1_FloatTensor) in
                gate.wait() // holds the only pool thread
                return request
            }
            server.registerInline("Ping") { (request: Winnow_V1_FloatTensor) in
                var reply = request
                reply.shape.append(RPCContext.deadlineMicros ?? -1)
                return reply
            }
        }
        defer { server.stop() }
        let client = try RPCClient(endpoint: server.endpoint)
        defer { client.close() }
        let blocked = Task {
            try await client.call(service: "busy", method: "Block", tensor([1]), as: Winnow_V1_FloatTensor.self,
                                  timeout: .seconds(10))
        }
        try await Task.sleep(for: .milliseconds(50))
        let reply = try await client.call(service: "busy", method: "Ping", tensor([2]), as: Winnow_V1_FloatTensor.self,
                                          timeout: .seconds(2))
        XCTAssertEqual(reply.shape.count, 2)
        XCTAssertGreaterThan(reply.shape[1], WallClock.nowMicros(), "an inline handler sees the deadline too")
        gate.signal()
        let unblocked = try await blocked.value
        XCTAssertEqual(unblocked.shape, [1])
    }
}
