import Foundation
import XCTest
@testable import Stack
import Postgres
#if canImport(Glibc)
import Glibc
#endif

final class SupervisorTests: XCTestCase {
    var state: TemporaryStateDirectory!
    var supervisor: Supervisor?

    override func setUp() { state = TemporaryStateDirectory("supervisor") }

    override func tearDown() async throws {
        await supervisor?.stop(grace: .seconds(1))
        state.remove()
    }

    var logs: String { state.path + "/logs" }

    func sleeper(_ name: String, stage: Int = 0) -> ChildSpec {
        ChildSpec(name: name, service: name, executable: "/bin/sleep", arguments: ["300"], stage: stage)
    }

    func log(_ name: String) -> String {
        (try? String(contentsOfFile: "\(logs)/\(name).log", encoding: .utf8)) ?? ""
    }

    func testChildKilledWithSignal9IsRestartedWithANewPidAndTheEventIsLogged() async throws {
        let s = Supervisor(children: [sleeper("worker")], logDirectory: logs,
                           policy: RestartPolicy(initialBackoff: .milliseconds(100)), probe: { _ in true })
        supervisor = s
        try await s.start(readinessTimeout: .seconds(10))
        let first = await s.statuses()[0]
        XCTAssertEqual(first.state, .ready)
        let oldPID = try XCTUnwrap(first.pid)

        XCTAssertEqual(kill(oldPID, SIGKILL), 0)

        var restarted: ChildStatus?
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let st = await s.statuses()[0]
            if st.state == .ready, let pid = st.pid, pid != oldPID { restarted = st; break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let now = try XCTUnwrap(restarted, "worker was not restarted")
        XCTAssertEqual(now.restarts, 1)
        XCTAssertEqual(now.lastExit, "signal 9 (SIGKILL)")
        XCTAssertEqual(kill(now.pid!, 0), 0, "the new process runs")
        let text = log("worker")
        XCTAssertTrue(text.contains("worker exited unexpectedly (pid \(oldPID), signal 9 (SIGKILL)"), text)
        XCTAssertTrue(text.contains("worker restarted as pid \(now.pid!) (restart 1)"), text)
    }

    func testRestartBackoffDoublesUpToTheCapWhileAChildKeepsFailing() async throws {
        let crasher = ChildSpec(name: "crasher", service: "crasher", executable: "/bin/sh", arguments: ["-c", "exit 3"])
        let policy = RestartPolicy(initialBackoff: .milliseconds(100), maxBackoff: .milliseconds(400), multiplier: 2)
        let s = Supervisor(children: [crasher], logDirectory: logs, policy: policy, probe: { _ in false })
        supervisor = s
        do {
            try await s.start(readinessTimeout: .seconds(3))
            XCTFail("a child that keeps exiting cannot be ready")
        } catch let error as SupervisorError {
            guard case .notReady(_, let children) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(children.count, 1)
            XCTAssertTrue(children[0].contains("crasher"), children[0])
            XCTAssertTrue(children[0].contains("exit code 3"), children[0])
            XCTAssertTrue(children[0].contains("\(logs)/crasher.log"), children[0])
        }
        let delays = log("crasher").split(separator: "\n").compactMap { line -> String? in
            guard let r = line.range(of: "restarting in ") else { return nil }
            return String(line[r.upperBound...])
        }
        XCTAssertGreaterThanOrEqual(delays.count, 4, "\(delays)")
        XCTAssertEqual(Array(delays.prefix(4)), ["0.10s", "0.20s", "0.40s", "0.40s"])
        XCTAssertTrue(log("crasher").contains("exit code 3"))
        XCTAssertEqual(policy.delay(consecutiveFailures: 1), .milliseconds(100))
        XCTAssertEqual(policy.delay(consecutiveFailures: 3), .milliseconds(400))
        XCTAssertEqual(policy.delay(consecutiveFailures: 30), .milliseconds(400))
    }

    func testStopSendsSIGTERMThenSIGKILLAfterTheGracePeriodAndRestartsNothing() async throws {
        let stubborn = ChildSpec(name: "stubborn", service: "stubborn", executable: "/bin/sh",
                                 arguments: ["-c", "trap '' TERM; while :; do sleep 0.05; done"], stage: 1)
        let s = Supervisor(children: [sleeper("polite"), stubborn], logDirectory: logs,
                           policy: RestartPolicy(initialBackoff: .milliseconds(50)), probe: { _ in true })
        try await s.start(readinessTimeout: .seconds(10))
        let pids = await s.statuses().map { $0.pid! }
        let began = Date()
        await s.stop(grace: .milliseconds(700))
        let took = Date().timeIntervalSince(began)
        XCTAssertGreaterThanOrEqual(took, 0.7, "waited the grace period for the stubborn child")
        XCTAssertLessThan(took, 6)
        for pid in pids { XCTAssertNotEqual(kill(pid, 0), 0, "pid \(pid) is gone") }
        let after = await s.statuses()
        XCTAssertEqual(after.map(\.state), [.stopped, .stopped])
        XCTAssertEqual(after.map(\.restarts), [0, 0])
        XCTAssertEqual(after[0].lastExit, "signal 15 (SIGTERM)")
        XCTAssertEqual(after[1].lastExit, "signal 9 (SIGKILL)")
        XCTAssertTrue(log("stubborn").contains("killed after the grace period"), log("stubborn"))
        try await Task.sleep(for: .milliseconds(300))
        let final = await s.statuses()
        XCTAssertEqual(final.map(\.pid), [nil, nil], "nothing restarted after stop")
    }

    func testLaterStagesStartOnlyAfterEarlierStagesAreReady() async throws {
        let readyAfter = Date().addingTimeInterval(0.5)
        let order = Recorder()
        let s = Supervisor(children: [sleeper("second", stage: 1), sleeper("first", stage: 0)], logDirectory: logs,
                           probe: { target in
                               await order.note(target.name)
                               return target.name != "first" || Date() >= readyAfter
                           })
        supervisor = s
        try await s.start(readinessTimeout: .seconds(10))
        let seen = await order.names
        let firstSecond = try XCTUnwrap(seen.firstIndex(of: "second"))
        XCTAssertTrue(seen[..<firstSecond].allSatisfy { $0 == "first" })
        XCTAssertGreaterThan(firstSecond, 1, "first was probed until ready before second started")
        let states = await s.statuses().map(\.state)
        XCTAssertEqual(states, [.ready, .ready])
    }

    func testMissingExecutableIsReportedBeforeAnythingStarts() async throws {
        let s = Supervisor(children: [sleeper("ok"), ChildSpec(name: "ghost", service: "ghost", executable: state.path + "/nope")],
                           logDirectory: logs, probe: { _ in true })
        supervisor = s
        do {
            try await s.start(readinessTimeout: .seconds(5))
            XCTFail("started with a missing executable")
        } catch let error as SupervisorError {
            XCTAssertEqual(error, .executableMissing(name: "ghost", path: state.path + "/nope"))
        }
        let pids = await s.statuses().compactMap(\.pid)
        XCTAssertEqual(pids, [])
    }

    func testSpawnedChildGetsItsArgumentsEnvironmentAndLogFile() async throws {
        let echo = ChildSpec(name: "echo", service: "echo", executable: "/bin/sh",
                             arguments: ["-c", "echo \"arg=$0 env=$WINNOW_TEST_VALUE\"; exec sleep 300", "first"],
                             environment: ["WINNOW_TEST_VALUE": "42"])
        let s = Supervisor(children: [echo], logDirectory: logs, probe: { _ in true })
        supervisor = s
        try await s.start(readinessTimeout: .seconds(5))
        XCTAssertTrue(eventually(timeout: 5) { log("echo").contains("arg=first env=42") }, log("echo"))
    }

    func testChildWhosePortAnotherProcessTookRestartsOnAFreshPortUnlessItsPortIsFixed() async throws {
        // Each child prints the endpoint it was given, then stays up without binding it.
        func child(_ name: String, port: Int, mayMove: Bool) -> ChildSpec {
            let endpoint = "tcp://127.0.0.1:\(port)"
            return ChildSpec(name: name, service: name, executable: "/bin/sh",
                             arguments: ["-c", "echo \"given $0\"; exec sleep 300", endpoint],
                             endpoint: endpoint, endpointPortMayMove: mayMove)
        }
        let movable = try LoopbackPort.ephemeral()
        var fixed = try LoopbackPort.ephemeral()
        while fixed == movable { fixed = try LoopbackPort.ephemeral() }
        let s = Supervisor(children: [child("movable", port: movable, mayMove: true), child("fixed", port: fixed, mayMove: false)],
                           logDirectory: logs, policy: RestartPolicy(initialBackoff: .milliseconds(100)), probe: { _ in true })
        supervisor = s
        try await s.start(readinessTimeout: .seconds(10))
        XCTAssertTrue(eventually(timeout: 5) { log("movable").contains("given tcp://127.0.0.1:\(movable)") }, log("movable"))

        // Another process takes both ports while the children run; then both die.
        let holders = try [movable, fixed].map { try PortSquatter(port: $0) }
        defer { withExtendedLifetime(holders) {} }
        for status in await s.statuses() { XCTAssertEqual(kill(try XCTUnwrap(status.pid), SIGKILL), 0) }

        var restarted: [ChildStatus] = []
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            restarted = await s.statuses()
            if restarted.allSatisfy({ $0.restarts == 1 && $0.state == .ready }) { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertEqual(restarted.map(\.restarts), [1, 1])
        let moved = restarted[0].endpoint
        XCTAssertNotEqual(moved, "tcp://127.0.0.1:\(movable)", "the movable child left the taken port")
        XCTAssertNotEqual(moved, "tcp://127.0.0.1:\(fixed)")
        XCTAssertTrue(moved.hasPrefix("tcp://127.0.0.1:"), moved)
        XCTAssertTrue(eventually(timeout: 5) { log("movable").contains("given \(moved)") }, "the restarted child was given the new endpoint: \(log("movable"))")
        XCTAssertTrue(log("movable").contains("port \(movable) is taken by another process; moving to \(moved)"), log("movable"))
        XCTAssertEqual(restarted[1].endpoint, "tcp://127.0.0.1:\(fixed)", "a fixed port is never moved")
        XCTAssertFalse(log("fixed").contains("moving to"), log("fixed"))
    }
}

actor Recorder {
    var names: [String] = []
    func note(_ name: String) { names.append(name) }
}
