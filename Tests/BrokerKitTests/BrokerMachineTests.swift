import BrokerKit
import RPC
import SwiftProtobuf
import WinnowProto
import XCTest
import ZeroMQ

/// The broker protocol without sockets: events in, actions out.
final class BrokerMachineTests: XCTestCase {
    let heartbeat: Int64 = 100_000 // 100 ms
    var machine: BrokerMachine!
    var now: Int64 = 1_000_000_000
    var nextID: UInt64 = 1

    override func setUp() {
        machine = BrokerMachine(configuration: BrokerConfiguration(heartbeatMicros: heartbeat, liveness: 3), now: now)
    }

    // MARK: helpers

    func peer(_ name: String) -> PeerID { Array(name.utf8) }

    @discardableResult
    func call(from client: String, service: String, method: String, _ message: some SwiftProtobuf.Message,
              idempotent: Bool = false, timeoutMicros: Int64 = 10_000_000, id: UInt64? = nil) -> [BrokerAction] {
        var header = Winnow_V1_RequestHeader()
        header.service = service
        header.method = method
        header.requestID = id ?? nextID
        nextID += 1
        header.idempotent = idempotent
        header.deadlineUnixMicros = now + timeoutMicros
        let frames: [Frame] = [peer(client), WireProtocol.head(WireProtocol.request, header), WireProtocol.bytes(message)]
        let event = BrokerEvent(frames: frames)!
        return machine.handle(event, now: now)
    }

    @discardableResult
    func register(_ worker: String, service: String = "teacher", concurrency: Int32 = 1) -> [BrokerAction] {
        var request = Winnow_V1_RegisterRequest()
        request.service = service
        request.instance = worker
        request.concurrency = concurrency
        request.heartbeatIntervalMicros = heartbeat
        return call(from: worker, service: "broker", method: "Register", request)
    }

    func answer(_ worker: String, to action: BrokerAction, code: Winnow_V1_StatusCode = .ok) -> [BrokerAction] {
        guard case let .forward(_, client, headerBytes, payload) = action else {
            XCTFail("not a forward: \(action)")
            return []
        }
        let request = try! Winnow_V1_RequestHeader(serializedBytes: headerBytes)
        let reply = WireProtocol.replyHeader(id: request.requestID, code: code)
        let frames: [Frame] = [peer(worker), WireProtocol.head(WireProtocol.workerReply, reply), client, payload]
        return machine.handle(BrokerEvent(frames: frames)!, now: now)
    }

    func forwards(_ actions: [BrokerAction]) -> [(worker: String, client: String)] {
        actions.compactMap {
            if case let .forward(worker, client, _, _) = $0 {
                return (String(decoding: worker, as: UTF8.self), String(decoding: client, as: UTF8.self))
            }
            return nil
        }
    }

    func replies(_ actions: [BrokerAction]) -> [(to: String, header: Winnow_V1_ReplyHeader, payload: Frame)] {
        actions.compactMap {
            if case let .reply(to, header, payload) = $0 { return (String(decoding: to, as: UTF8.self), header, payload) }
            if case let .relay(to, headerBytes, payload) = $0 {
                return (String(decoding: to, as: UTF8.self), try! Winnow_V1_ReplyHeader(serializedBytes: headerBytes), payload)
            }
            return nil
        }
    }

    func health() -> Winnow_V1_HealthRequest { Winnow_V1_HealthRequest() }

    // MARK: tests

    func testRegisterAnswersWithIntervalAndLiveness() throws {
        let reply = try XCTUnwrap(replies(register("w1")).first)
        XCTAssertEqual(reply.to, "w1")
        XCTAssertEqual(reply.header.code, .ok)
        let response = try Winnow_V1_RegisterResponse(serializedBytes: reply.payload)
        XCTAssertEqual(response.heartbeatIntervalMicros, heartbeat)
        XCTAssertEqual(response.liveness, 3)
        XCTAssertEqual(machine.workers.count, 1)
    }

    func testAnOversizedPayloadToTheBrokersOwnRPCsIsRefusedUndecoded() throws {
        var request = Winnow_V1_RegisterRequest()
        request.service = "teacher"
        request.instance = String(repeating: "x", count: BrokerMachine.ownPayloadCap)
        let actions = call(from: "w1", service: "broker", method: "Register", request)
        guard case let .reply(_, header, _) = try XCTUnwrap(actions.first) else { return XCTFail("\(actions)") }
        XCTAssertEqual(header.code, .invalidArgument)
        XCTAssertTrue(header.message.contains("over the cap"), header.message)
        XCTAssertTrue(machine.workers.isEmpty)
    }

    func testUnknownServiceGetsNotFoundAtOnce() {
        let reply = replies(call(from: "c", service: "teacher", method: "Health", health()))
        XCTAssertEqual(reply.map(\.header.code), [.notFound])
    }

    func testRequestsGoToTheLeastRecentlyUsedIdleWorker() {
        for name in ["w1", "w2", "w3"] { register(name) }
        var order: [String] = []
        for _ in 0..<3 {
            let actions = call(from: "c", service: "teacher", method: "Health", health())
            let sent = forwards(actions)
            XCTAssertEqual(sent.count, 1)
            order.append(sent[0].worker)
            _ = answer(sent[0].worker, to: actions.first { if case .forward = $0 { return true }; return false }!)
        }
        XCTAssertEqual(Set(order), ["w1", "w2", "w3"], "three calls in turn visit three workers")
        // The fourth goes back to the one used longest ago.
        let fourth = forwards(call(from: "c", service: "teacher", method: "Health", health()))
        XCTAssertEqual(fourth.first?.worker, order[0])
    }

    func testAWorkerHoldsUpToItsConcurrencyAndTheRestWait() {
        register("w1", concurrency: 2)
        let first = call(from: "c", service: "teacher", method: "Health", health())
        let second = call(from: "c", service: "teacher", method: "Health", health())
        let third = call(from: "c", service: "teacher", method: "Health", health())
        XCTAssertEqual(forwards(first).count, 1)
        XCTAssertEqual(forwards(second).count, 1)
        XCTAssertEqual(forwards(third).count, 0)
        XCTAssertEqual(machine.queued("teacher"), 1)
        // Answering one frees a slot: the waiting request goes out and the answer is relayed.
        let actions = answer("w1", to: first[0])
        XCTAssertEqual(replies(actions).map(\.to), ["c"])
        XCTAssertEqual(forwards(actions).count, 1)
        XCTAssertEqual(machine.queued("teacher"), 0)
    }

    func testSilentWorkerIsDroppedWithinLivenessAndItsRequestsAreReroutedOrFailed() {
        register("w1", concurrency: 4)
        let idempotent = call(from: "c", service: "teacher", method: "Health", health(), idempotent: true)
        let plain = call(from: "c", service: "teacher", method: "Health", health(), idempotent: false)
        XCTAssertEqual(forwards(idempotent + plain).map(\.worker), ["w1", "w1"])
        // w2 keeps heartbeating; w1 falls silent.
        now += heartbeat
        register("w2", concurrency: 4)
        now += 2 * heartbeat
        XCTAssertTrue(machine.tick(now: now).isEmpty, "alive at exactly 3 intervals")
        now += heartbeat / 10
        let actions = machine.tick(now: now)
        XCTAssertNil(machine.workers[peer("w1")])
        XCTAssertEqual(forwards(actions).map(\.worker), ["w2"], "the idempotent request is re-routed")
        XCTAssertEqual(replies(actions).map(\.header.code), [.unavailable], "the other fails with UNAVAILABLE")
    }

    func testLateReplyFromADroppedWorkerIsNotRelayed() {
        register("w1")
        register("w2")
        let actions = call(from: "c", service: "teacher", method: "Health", health(), idempotent: true)
        let first = forwards(actions)[0].worker
        let rerouted = machine.handle(.unreachable(peer(first)), now: now)
        XCTAssertEqual(forwards(rerouted).count, 1)
        XCTAssertTrue(replies(answer(first, to: actions[0])).isEmpty)
        XCTAssertEqual(machine.lateReplies, 1)
    }

    func testLastWorkerGoneFailsQueuedRequests() {
        register("w1", concurrency: 1)
        call(from: "c", service: "teacher", method: "Health", health(), idempotent: true)
        call(from: "c", service: "teacher", method: "Health", health(), idempotent: true)
        XCTAssertEqual(machine.queued("teacher"), 1)
        let actions = machine.handle(.unreachable(peer("w1")), now: now)
        XCTAssertEqual(replies(actions).map(\.header.code), [.unavailable, .unavailable])
        XCTAssertEqual(machine.queued("teacher"), 0)
    }

    func testHeartbeatFromAnUnknownWorkerIsNotFoundSoItRegistersAgain() {
        var beat = Winnow_V1_HeartbeatRequest()
        beat.instance = "w9"
        XCTAssertEqual(replies(call(from: "w9", service: "broker", method: "Heartbeat", beat)).map(\.header.code), [.notFound])
        register("w9")
        XCTAssertEqual(replies(call(from: "w9", service: "broker", method: "Heartbeat", beat)).map(\.header.code), [.ok])
    }

    func testHeartbeatsKeepAWorkerAlive() {
        register("w1")
        var beat = Winnow_V1_HeartbeatRequest()
        beat.instance = "w1"
        for _ in 0..<10 {
            now += heartbeat
            call(from: "w1", service: "broker", method: "Heartbeat", beat)
            _ = machine.tick(now: now)
        }
        XCTAssertNotNil(machine.workers[peer("w1")])
    }

    func testReRegisteringFromANewConnectionReplacesTheOldOne() {
        register("old-socket")
        var request = Winnow_V1_RegisterRequest()
        request.service = "teacher"
        request.instance = "old-socket" // same process instance
        request.heartbeatIntervalMicros = heartbeat
        call(from: "new-socket", service: "broker", method: "Register", request)
        XCTAssertEqual(machine.workers.keys.map { String(decoding: $0, as: UTF8.self) }, ["new-socket"])
    }

    func testUnregisterWithRequestsInFlightDrainsThenLeaves() {
        register("w1", concurrency: 2)
        let request = call(from: "c", service: "teacher", method: "Health", health())
        var bye = Winnow_V1_UnregisterRequest()
        bye.instance = "w1"
        call(from: "w1", service: "broker", method: "Unregister", bye)
        XCTAssertEqual(machine.workers[peer("w1")]?.leaving, true)
        // No new work for a leaving worker.
        XCTAssertEqual(replies(call(from: "c", service: "teacher", method: "Health", health())).map(\.header.code), [.notFound])
        // Its answer still reaches the caller, and then it is gone.
        XCTAssertEqual(replies(answer("w1", to: request[0])).map(\.to), ["c"])
        XCTAssertTrue(machine.workers.isEmpty)
    }

    func testExpiredRequestsAreAnsweredAndFreeTheirSlot() {
        register("w1", concurrency: 1)
        call(from: "c", service: "teacher", method: "Health", health(), timeoutMicros: 50_000)
        call(from: "c", service: "teacher", method: "Health", health(), timeoutMicros: 500_000)
        XCTAssertEqual(machine.queued("teacher"), 1)
        now += 60_000
        var beat = Winnow_V1_HeartbeatRequest()
        beat.instance = "w1"
        call(from: "w1", service: "broker", method: "Heartbeat", beat)
        let actions = machine.tick(now: now)
        XCTAssertEqual(replies(actions).map(\.header.code), [.deadlineExceeded])
        XCTAssertEqual(forwards(actions).count, 1, "the waiting request takes the freed slot")
    }

    func testListWorkersReportsEveryWorker() throws {
        register("w1", service: "teacher")
        register("w2", service: "retrieval", concurrency: 8)
        let reply = try XCTUnwrap(replies(call(from: "c", service: "broker", method: "ListWorkers",
                                               Winnow_V1_ListWorkersRequest())).first)
        let list = try Winnow_V1_ListWorkersResponse(serializedBytes: reply.payload)
        XCTAssertEqual(list.workers.map(\.service), ["retrieval", "teacher"])
        XCTAssertEqual(list.workers.first?.concurrency, 8)
        var filtered = Winnow_V1_ListWorkersRequest()
        filtered.servicePrefix = "teach"
        let only = try XCTUnwrap(replies(call(from: "c", service: "broker", method: "ListWorkers", filtered)).first)
        XCTAssertEqual(try Winnow_V1_ListWorkersResponse(serializedBytes: only.payload).workers.map(\.instance), ["w1"])
    }

    func testBrokerAnswersHealthAndRefusesUnknownOwnMethods() throws {
        let answer = try XCTUnwrap(replies(call(from: "c", service: "broker", method: "Health", health())).first)
        XCTAssertEqual(try Winnow_V1_HealthResponse(serializedBytes: answer.payload).status, .serving)
        XCTAssertEqual(replies(call(from: "c", service: "broker", method: "Bogus", health())).map(\.header.code), [.unimplemented])
        let bad = replies(call(from: "c", service: "broker", method: "Register", Winnow_V1_RegisterRequest()))
        XCTAssertEqual(bad.map(\.header.code), [.invalidArgument], "Register without a service name")
    }

    func testMalformedMessagesDoNotParse() {
        XCTAssertNil(BrokerEvent(frames: []))
        XCTAssertNil(BrokerEvent(frames: [peer("c")]))
        XCTAssertNil(BrokerEvent(frames: [peer("c"), Array("WHAT".utf8), []]))
        XCTAssertNil(BrokerEvent(frames: [peer("c"), WireProtocol.request + [0xFF, 0xFF], []]),
                     "undecodable header")
        XCTAssertNil(BrokerEvent(frames: [peer("c"), WireProtocol.request]),
                     "missing payload frame")
        XCTAssertNil(BrokerEvent(frames: [peer("w"), WireProtocol.workerReply, [], []]),
                     "worker reply without a caller")
    }
}
