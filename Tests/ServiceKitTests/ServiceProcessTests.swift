import Foundation
import Postgres
import RPC
import ServiceKit
import WinnowProto
import XCTest

/// Real processes (built by `swift build`) on loopback: the broker and the service executables.
final class ServiceProcessTests: XCTestCase {
    let heartbeatMs = 200
    var directory: URL!
    var brokerEndpoint = ""
    var children: [Child] = []

    override func setUpWithError() throws {
        directory = try temporaryDirectory()
        brokerEndpoint = "tcp://127.0.0.1:\(try freePort())"
    }

    override func tearDown() {
        children.removeAll() // kills what is left
        try? FileManager.default.removeItem(at: directory)
    }

    @discardableResult
    func startBroker() throws -> Child {
        let broker = try Child("broker", ["--endpoint", brokerEndpoint, "--heartbeat-ms", "\(heartbeatMs)"],
                               logDirectory: directory)
        children.append(broker)
        return broker
    }

    @discardableResult
    func startService(_ executable: String, name: String? = nil, extra: [String] = []) throws -> Child {
        var arguments = ["--broker", brokerEndpoint, "--heartbeat-ms", "\(heartbeatMs)", "--state-dir", directory.path]
        if let name { arguments += ["--name", name] }
        arguments += extra
        let child = try Child(executable, arguments, logDirectory: directory)
        children.append(child)
        return child
    }

    func testFourTeachersBehindTheBrokerEachServeAtLeastFifteenPercent() async throws {
        try startBroker()
        for _ in 0..<4 { try startService("teacher") }
        let client = try RPCClient(endpoint: brokerEndpoint)
        defer { client.close() }
        let workers = try await waitForWorkers(client, service: "teacher", count: 4, within: .seconds(20))
        let outcomes = await stream(client, service: "teacher", total: 1000, concurrency: 16, timeout: .seconds(10))
        XCTAssertEqual(outcomes.filter { $0.code == .ok }.count, 1000)
        var served: [String: Int] = [:]
        for outcome in outcomes { served[outcome.instance, default: 0] += 1 }
        XCTAssertEqual(Set(served.keys), Set(workers.map(\.instance)))
        for (instance, count) in served {
            XCTAssertGreaterThanOrEqual(count, 150, "\(instance) served \(count) of 1000")
        }
    }

    func testKillingATeacherMidStreamEndsEveryRequestOKOrUnavailableInTime() async throws {
        try startBroker()
        var teachers: [Child] = []
        for _ in 0..<4 { teachers.append(try startService("teacher")) }
        let client = try RPCClient(endpoint: brokerEndpoint)
        defer { client.close() }
        let workers = try await waitForWorkers(client, service: "teacher", count: 4, within: .seconds(20))
        let victim = teachers[0]
        let victimInstance = try XCTUnwrap(workers.first { $0.pid == victim.pid }?.instance)
        let killed = KillSwitch()
        let timeout = Duration.seconds(3)
        // Even requests are idempotent (re-routed), odd ones are not (failed with UNAVAILABLE).
        let outcomes = await stream(client, service: "teacher", total: 1000, concurrency: 16, timeout: timeout,
                                    idempotent: { $0 % 2 == 0 }, onProgress: { finished in
            if finished == 300 { killed.fire { victim.signal(SIGKILL) } }
        })
        XCTAssertTrue(killed.fired)
        XCTAssertEqual(outcomes.count, 1000)
        let bad = outcomes.filter { $0.code != .ok && $0.code != .unavailable }
        XCTAssertTrue(bad.isEmpty, "codes other than OK/UNAVAILABLE: \(bad.map(\.code.name))")
        let slowest = outcomes.map(\.elapsed).max() ?? .zero
        XCTAssertLessThanOrEqual(slowest, timeout + .milliseconds(500), "a request outlived its deadline")
        XCTAssertGreaterThan(outcomes.filter { $0.code == .ok }.count, 900)
        let gone = try await listWorkers(client).workers.map(\.instance)
        XCTAssertFalse(gone.contains(victimInstance), "the dead worker is still listed")
        XCTAssertEqual(gone.count, 3)
    }

    func testAFrozenWorkerIsDroppedWithinThreeHeartbeats() async throws {
        // SIGSTOP keeps the TCP connection open, so only the missing heartbeats reveal it.
        try startBroker()
        let teacher = try startService("teacher")
        try startService("teacher")
        let client = try RPCClient(endpoint: brokerEndpoint)
        defer { client.close() }
        let workers = try await waitForWorkers(client, service: "teacher", count: 2, within: .seconds(20))
        let frozen = try XCTUnwrap(workers.first { $0.pid == teacher.pid }?.instance)
        teacher.signal(SIGSTOP)
        let stoppedAt = ContinuousClock.now
        defer { teacher.signal(SIGKILL); teacher.signal(SIGCONT) }
        var droppedAfter: Duration?
        while ContinuousClock.now - stoppedAt < .seconds(5) {
            let listed = try await listWorkers(client).workers.map(\.instance)
            if !listed.contains(frozen) {
                droppedAfter = ContinuousClock.now - stoppedAt
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        let after = try XCTUnwrap(droppedAfter, "the frozen worker was never dropped")
        // 3 heartbeats of 200 ms, plus the broker's timer granularity (a tenth) and polling slack.
        XCTAssertLessThanOrEqual(after, .milliseconds(3 * heartbeatMs + heartbeatMs / 10 + 150))
        XCTAssertGreaterThanOrEqual(after, .milliseconds(2 * heartbeatMs), "dropped before missing heartbeats")
        // Calls keep working on the other worker, even idempotent ones the frozen worker held.
        let reply = try await health(client, "teacher")
        XCTAssertNotEqual(reply.instance, frozen)
    }

    func testRestartedBrokerGetsItsWorkersBackWithinFiveSeconds() async throws {
        let broker = try startBroker()
        try startService("teacher")
        try startService("retrieval")
        let client = try RPCClient(endpoint: brokerEndpoint)
        defer { client.close() }
        _ = try await waitForWorkers(client, service: "teacher", count: 1, within: .seconds(20))
        _ = try await waitForWorkers(client, service: "retrieval", count: 1, within: .seconds(20))
        broker.signal(SIGKILL)
        _ = try await broker.waitForExit(timeout: .seconds(5))
        let restart = ContinuousClock.now
        try startBroker()
        var back: Duration?
        while ContinuousClock.now - restart < .seconds(8) {
            if let teacher = try? await health(client, "teacher", timeout: .milliseconds(500)),
               let retrieval = try? await health(client, "retrieval", timeout: .milliseconds(500)),
               teacher.status == .serving, retrieval.status == .serving {
                back = ContinuousClock.now - restart
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let elapsed = try XCTUnwrap(back, "workers did not come back")
        XCTAssertLessThan(elapsed, .seconds(5))
    }

    func testEveryServiceAnswersHealthDirectlyAndThroughTheBrokerAndExitsZeroOnSIGTERM() async throws {
        try startBroker()
        let kinds = ["featurestore", "teacher", "noise", "trainer", "retrieval"]
        // The feature store owns a database: give it a real one of its own.
        let postgres = try EmbeddedPostgres.temporary(label: "svc")
        defer { postgres.destroy() }
        var services: [String: Child] = [:]
        for kind in kinds {
            services[kind] = try startService(kind, extra: kind == "featurestore" ? ["--database-url", postgres.url] : [])
        }
        let client = try RPCClient(endpoint: brokerEndpoint)
        defer { client.close() }
        for kind in kinds {
            let worker = try await waitForWorkers(client, service: kind, count: 1, within: .seconds(20))[0]
            let viaBroker = try await health(client, kind)
            XCTAssertEqual(viaBroker.status, .serving)
            XCTAssertEqual(viaBroker.service, kind)
            XCTAssertEqual(viaBroker.pid, services[kind]!.pid)
            let direct = try RPCClient(endpoint: worker.directEndpoint)
            let viaEndpoint = try await health(direct, kind)
            direct.close()
            XCTAssertEqual(viaEndpoint.instance, viaBroker.instance)
            // the trainer, a teacher and a noise process check a request before anything else (an
            // empty one names the field); retrieval without a published student says so
            for (service, method, code, text) in [("trainer", "SubmitJob", Winnow_V1_StatusCode.invalidArgument, "spec."),
                                                  ("teacher", "Train", .invalidArgument, "spec.job_id"),
                                                  ("noise", "Configure", .invalidArgument, "job_id"),
                                                  ("noise", "Weigh", .notFound, "not hosted here"),
                                                  ("retrieval", "Recommend", .failedPrecondition, "no model loaded")] where kind == service {
                do {
                    _ = try await client.callRaw(service: kind, method: method, payload: [], timeout: .seconds(3))
                    XCTFail("an empty \(method) was answered OK")
                } catch let error as RPCError {
                    XCTAssertEqual(error.code, code)
                    XCTAssertTrue(error.message.contains(text), error.message)
                }
            }
        }
        for kind in kinds { services[kind]!.signal(SIGTERM) }
        for kind in kinds {
            let status = try await services[kind]!.waitForExit(timeout: .seconds(10))
            XCTAssertEqual(status, 0, "\(kind) exit status; log:\n\(services[kind]!.logText)")
        }
        // They left the broker on the way out.
        let left = try await listWorkers(client).workers
        XCTAssertTrue(left.isEmpty, "still listed: \(left.map(\.service))")
        let broker = children[0]
        broker.signal(SIGTERM)
        let brokerStatus = try await broker.waitForExit(timeout: .seconds(10))
        XCTAssertEqual(brokerStatus, 0)
    }

    func testSIGTERMDuringAStreamOfRequestsExitsZeroAndAnswersWhatItTook() async throws {
        try startBroker()
        let teacher = try startService("teacher")
        let client = try RPCClient(endpoint: brokerEndpoint)
        defer { client.close() }
        let worker = try await waitForWorkers(client, service: "teacher", count: 1, within: .seconds(20))[0]
        let direct = try RPCClient(endpoint: worker.directEndpoint)
        defer { direct.close() }
        let signalled = KillSwitch()
        let timeout = Duration.seconds(2)
        let outcomes = await stream(direct, service: "teacher", total: 3000, concurrency: 32, timeout: timeout,
                                    keepGoing: { !signalled.fired || teacher.process.isRunning }, onProgress: { finished in
            if finished == 200 { signalled.fire { teacher.signal(SIGTERM) } }
        })
        let status = try await teacher.waitForExit(timeout: .seconds(10))
        XCTAssertEqual(status, 0, "log:\n\(teacher.logText)")
        XCTAssertGreaterThanOrEqual(outcomes.filter { $0.code == .ok }.count, 200)
        // Requests it had taken were answered (OK) or refused (UNAVAILABLE); those sent after its
        // socket closed can only time out. Nothing else, and nothing outlives its deadline.
        let codes = Set(outcomes.map(\.code))
        XCTAssertTrue(codes.isSubset(of: [.ok, .unavailable, .deadlineExceeded]), "\(codes.map(\.name))")
        XCTAssertLessThanOrEqual(outcomes.map(\.elapsed).max() ?? .zero, timeout + .milliseconds(500))
    }
}

/// Fires an action once, from whichever task gets there first.
final class KillSwitch: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    var fired: Bool { lock.withLock { done } }
    func fire(_ action: () -> Void) {
        let first = lock.withLock { () -> Bool in
            defer { done = true }
            return !done
        }
        if first { action() }
    }
}
