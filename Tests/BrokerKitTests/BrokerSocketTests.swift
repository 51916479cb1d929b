import BrokerKit
import Foundation
import RPC
import WinnowProto
import WinnowTestSupport
import XCTest
import ZeroMQ

/// The broker on real loopback sockets, with in-process workers.
final class BrokerSocketTests: XCTestCase {
    var broker: Broker!
    var workers: [RPCServer] = []

    override func setUpWithError() throws {
        broker = try Broker(endpoint: "tcp://127.0.0.1:*",
                            configuration: BrokerConfiguration(heartbeatMicros: 100_000, liveness: 3))
        broker.start()
    }

    override func tearDown() {
        for worker in workers { worker.shutdown(grace: .milliseconds(200)) }
        broker?.shutdown()
    }

    func startWorker(_ name: String, bind: String = "tcp://127.0.0.1:*") throws -> RPCServer {
        let server = try RPCServer(configuration: RPCServerConfiguration(
            name: name, workerThreads: 2, heartbeatInterval: .milliseconds(100)))
        let instance = server.configuration.instance
        server.register("Health") { (_: Winnow_V1_HealthRequest) in
            var response = Winnow_V1_HealthResponse()
            response.status = .serving
            response.instance = instance
            return response
        }
        try server.bind(bind)
        server.attach(broker: broker.endpoint)
        server.start()
        workers.append(server)
        return server
    }

    func waitRegistered(_ servers: [RPCServer]) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !servers.allSatisfy(\.isRegistered) {
            XCTAssertLessThan(ContinuousClock.now, deadline, "workers did not register")
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func testCallsThroughTheBrokerReachEveryWorker() async throws {
        let servers = try (0..<3).map { _ in try startWorker("teacher") }
        try await waitRegistered(servers)
        let client = try RPCClient(endpoint: broker.endpoint)
        defer { client.close() }
        var seen: [String: Int] = [:]
        for _ in 0..<30 {
            let reply = try await client.call(service: "teacher", method: "Health", Winnow_V1_HealthRequest(),
                                              as: Winnow_V1_HealthResponse.self, timeout: .seconds(5))
            seen[reply.instance, default: 0] += 1
        }
        XCTAssertEqual(seen.count, 3)
        XCTAssertEqual(seen.values.sorted(), [10, 10, 10], "one caller in turn: least recently used is round robin")
    }

    func testUnknownServiceIsNotFoundThroughTheBroker() async throws {
        let client = try RPCClient(endpoint: broker.endpoint)
        defer { client.close() }
        let start = ContinuousClock.now
        do {
            _ = try await client.call(service: "nobody", method: "Health", Winnow_V1_HealthRequest(),
                                      as: Winnow_V1_HealthResponse.self, timeout: .seconds(5))
            XCTFail("expected NOT_FOUND")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .notFound)
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1))
    }

    func testTenThousandRandomMessagesDoNotStopTheBroker() async throws {
        let server = try startWorker("teacher")
        try await waitRegistered([server])
        let socket = try ZMQSocket(.dealer)
        try socket.connect(broker.endpoint)
        var generator = SplitMix64(seed: 5)
        let tags = [WireProtocol.request, WireProtocol.reply, WireProtocol.forward, WireProtocol.workerReply]
        for _ in 0..<10_000 {
            let count = Int(generator.next() % 6) + 1
            var frames: [Frame] = []
            for position in 0..<count {
                var frame = (0..<Int(generator.next() % 48)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                if position == 0 && generator.next() % 2 == 0 { frame = tags[Int(generator.next() % 4)] }
                frames.append(frame)
            }
            try socket.send(multipart: frames)
        }
        let client = try RPCClient(endpoint: broker.endpoint)
        defer { client.close() }
        // The broker still routes, and counted what it dropped.
        let reply = try await client.call(service: "teacher", method: "Health", Winnow_V1_HealthRequest(),
                                          as: Winnow_V1_HealthResponse.self, timeout: .seconds(20))
        XCTAssertEqual(reply.status, .serving)
        let deadline = ContinuousClock.now + .seconds(20)
        var list = Winnow_V1_ListWorkersResponse()
        repeat {
            list = try await client.call(service: "broker", method: "ListWorkers", Winnow_V1_ListWorkersRequest(),
                                         as: Winnow_V1_ListWorkersResponse.self, timeout: .seconds(5))
        } while list.malformedFrames < 5_000 && ContinuousClock.now < deadline
        XCTAssertGreaterThan(list.malformedFrames, 5_000)
        XCTAssertEqual(list.workers.count, 1)
    }

    /// A worker bound on every interface (as in a container) registers its host's name, not
    /// 0.0.0.0, so a peer that reads the broker's list dials it; beyond loopback every link is
    /// CURVE (broker, worker and client each with their own key pair).
    func testAWorkerBoundOnEveryInterfaceRegistersAnEndpointPeersCanDial() async throws {
        try XCTSkipUnless(CurveKeyPair.isSupported, "libzmq without CURVE")
        let keys = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-keys-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: keys) }
        try LinkSecurity.create(directory: keys, names: ["broker", "teacher", "client"])
        broker.shutdown()
        broker = try Broker(endpoint: "tcp://0.0.0.0:*", configuration: BrokerConfiguration(heartbeatMicros: 100_000, liveness: 3),
                            security: LinkSecurity(directory: keys, identity: "broker"))
        broker.start()
        let brokerEndpoint = RPCServer.advertised(broker.endpoint, host: "127.0.0.1")
        let server = try RPCServer(configuration: RPCServerConfiguration(
            name: "teacher", workerThreads: 2, heartbeatInterval: .milliseconds(100),
            security: LinkSecurity(directory: keys, identity: "teacher")))
        server.register("Health") { (_: Winnow_V1_HealthRequest) in
            var response = Winnow_V1_HealthResponse()
            response.status = .serving
            return response
        }
        try server.bind("tcp://0.0.0.0:*")
        server.attach(broker: brokerEndpoint)
        server.start()
        workers.append(server)
        try await waitRegistered([server])
        let client = try RPCClient(endpoint: brokerEndpoint, security: LinkSecurity(directory: keys, identity: "client"))
        defer { client.close() }
        let list = try await client.call(service: "broker", method: "ListWorkers", Winnow_V1_ListWorkersRequest(),
                                         as: Winnow_V1_ListWorkersResponse.self, timeout: .seconds(5))
        let endpoint = try XCTUnwrap(list.workers.first?.directEndpoint)
        let host = ProcessInfo.processInfo.hostName
        XCTAssertTrue(endpoint.hasPrefix("tcp://\(host):"), endpoint)
        let direct = try RPCClient(endpoint: endpoint, peer: "teacher", security: LinkSecurity(directory: keys, identity: "client"))
        defer { direct.close() }
        let reply = try await direct.call(service: "teacher", method: "Health", Winnow_V1_HealthRequest(),
                                          as: Winnow_V1_HealthResponse.self, timeout: .seconds(5))
        XCTAssertEqual(reply.status, .serving)
        // Through the broker too: caller → broker and broker ↔ worker are both CURVE links.
        let routed = try await client.call(service: "teacher", method: "Health", Winnow_V1_HealthRequest(),
                                           as: Winnow_V1_HealthResponse.self, timeout: .seconds(5))
        XCTAssertEqual(routed.status, .serving)
        // A broker beyond loopback without keys does not start.
        XCTAssertThrowsError(try Broker(endpoint: "tcp://0.0.0.0:*", configuration: BrokerConfiguration(), security: nil)) {
            XCTAssertEqual($0 as? LinkSecurityError, .unauthenticatedBind("tcp://0.0.0.0:*"))
        }
    }

    func testAWorkerReconnectsWithAFreshSocketWhenTheBrokerGoesSilent() async throws {
        let server = try startWorker("teacher")
        try await waitRegistered([server])
        broker.shutdown() // nothing answers heartbeats any more
        let start = ContinuousClock.now
        while server.stats.brokerReconnects == 0 && ContinuousClock.now - start < .seconds(3) {
            try await Task.sleep(for: .milliseconds(10))
        }
        XCTAssertGreaterThanOrEqual(server.stats.brokerReconnects, 1)
        // Three silent heartbeats of 100 ms, plus scheduling slack.
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(800))
        XCTAssertFalse(server.isRegistered)
        broker = nil
    }

    func testAWorkerWhoseBrokerRestartsRegistersAgain() async throws {
        let server = try startWorker("teacher")
        try await waitRegistered([server])
        let endpoint = broker.endpoint
        broker.shutdown()
        // libzmq releases the port in the background after close; wait for it.
        let rebindDeadline = ContinuousClock.now + .seconds(3)
        while true {
            do {
                broker = try Broker(endpoint: endpoint,
                                    configuration: BrokerConfiguration(heartbeatMicros: 100_000, liveness: 3))
                break
            } catch let error as ZMQError where error.code == EADDRINUSE && ContinuousClock.now < rebindDeadline {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        broker.start()
        let client = try RPCClient(endpoint: endpoint)
        defer { client.close() }
        let start = ContinuousClock.now
        while true {
            do {
                _ = try await client.call(service: "teacher", method: "Health", Winnow_V1_HealthRequest(),
                                          as: Winnow_V1_HealthResponse.self, timeout: .seconds(1))
                break
            } catch let error as RPCError where error.code == .notFound {
                XCTAssertLessThan(ContinuousClock.now - start, .seconds(5), "not back within 5 s")
                if ContinuousClock.now - start > .seconds(5) { return }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }
}

/// The broker's loop blocks in a receive bounded by its timer tick; stopping must not wait for it.
final class BrokerShutdownTests: XCTestCase {
    func testShutdownWakesALoopBlockedInItsReceiveAtOnce() throws {
        // A 20 s heartbeat makes the tick, and so the receive timeout, 2 s.
        let broker = try Broker(endpoint: "tcp://127.0.0.1:*",
                                configuration: BrokerConfiguration(heartbeatMicros: 20_000_000, liveness: 3))
        broker.start()
        Thread.sleep(forTimeInterval: 0.05) // let the loop block
        let start = ContinuousClock.now
        broker.shutdown()
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(500), "shutdown waited for the receive timeout")
    }
}
