import Foundation
import XCTest
@testable import Stack
@testable import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// The stack's plan, record and control files, without starting services.
final class StackUnitTests: XCTestCase {
    var state: TemporaryStateDirectory!

    override func setUp() { state = TemporaryStateDirectory("stackunit") }
    override func tearDown() { state.remove() }

    func testChildrenCarryTheContractFlagsInStages() throws {
        var config = StackConfiguration(stateDirectory: state.path, binDirectory: "/opt/winnow/bin", teachers: 3,
                                        brokerPort: 6001, heartbeatMilliseconds: 250)
        config.postgresPort = 6002
        var next = 7000
        let children = try config.children(databaseURL: "postgresql:///winnow?host=/x&port=6002") {
            next += 1
            return next
        }
        XCTAssertEqual(children.map(\.name), ["broker", "featurestore", "teacher-1", "teacher-2", "teacher-3",
                                              "noise", "trainer", "retrieval"])
        XCTAssertEqual(children.map(\.stage), [0, 1, 2, 2, 2, 2, 2, 2])
        XCTAssertEqual(children[0].executable, "/opt/winnow/bin/broker")
        XCTAssertEqual(children[0].arguments, ["--endpoint", "tcp://127.0.0.1:6001", "--heartbeat-ms", "250"])
        XCTAssertEqual(children[1].arguments, ["--broker", "tcp://127.0.0.1:6001", "--name", "featurestore",
                                               "--endpoint", "tcp://127.0.0.1:7001", "--state-dir", state.path,
                                               "--heartbeat-ms", "250",
                                               "--database-url", "postgresql:///winnow?host=/x&port=6002"])
        for teacher in children[2...4] {
            XCTAssertEqual(teacher.service, "teacher")
            XCTAssertEqual(teacher.executable, "/opt/winnow/bin/teacher")
            let name = teacher.arguments[teacher.arguments.firstIndex(of: "--name")! + 1]
            XCTAssertEqual(name, "teacher", "every replica registers as teacher")
            XCTAssertFalse(teacher.arguments.contains("--database-url"))
        }
        XCTAssertEqual(Set(children.map(\.endpoint)).count, children.count, "distinct endpoints")
        XCTAssertEqual(children.map(\.endpointPortMayMove), [false] + Array(repeating: true, count: 7),
                       "the broker's port is the stack's address; the services' are the stack's to pick")
        var port = 0
        let single = try StackConfiguration(stateDirectory: state.path, binDirectory: "/b").children(databaseURL: "u") {
            port += 1
            return port
        }
        XCTAssertEqual(single.map(\.name), ["broker", "featurestore", "teacher", "noise", "trainer", "retrieval"])
    }

    func testServicesGetDistinctPortsWhenTheProbeAnswersOneTwiceOrTheBrokersOrPostgres() throws {
        var config = StackConfiguration(stateDirectory: state.path, binDirectory: "/b", teachers: 2, brokerPort: 7003)
        config.postgresPort = 7004
        // A probe closes its socket, so the kernel may answer the same port again.
        var answers = [7001, 7001, 7002, 7002, 7003, 7004, 7005, 7001, 7006, 7007, 7008]
        let children = try config.children(databaseURL: "u") { answers.removeFirst() }
        XCTAssertEqual(children.dropFirst().map(\.endpoint),
                       ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002", "tcp://127.0.0.1:7005",
                        "tcp://127.0.0.1:7006", "tcp://127.0.0.1:7007", "tcp://127.0.0.1:7008"])
        for child in children.dropFirst() {
            XCTAssertEqual(child.arguments[child.arguments.firstIndex(of: "--endpoint")! + 1], child.endpoint)
        }

        // With a given database the embedded Postgres' port is free for a service.
        config.databaseURL = "postgresql://db/winnow"
        var more = [7004, 7010, 7011, 7012, 7013, 7014]
        XCTAssertEqual(try config.children(databaseURL: "u") { more.removeFirst() }[1].endpoint, "tcp://127.0.0.1:7004")

        // A probe that only ever answers taken ports is an error naming them, not a loop.
        XCTAssertThrowsError(try config.children(databaseURL: "u") { 7003 }) { error in
            XCTAssertEqual(error as? StackError, .noDistinctPort(attempts: StackConfiguration.portAttempts, taken: [7003]))
            XCTAssertTrue("\(error)".contains("7003"), "\(error)")
        }
    }

    func testMissingExecutablesAreNamed() throws {
        let bin = state.path + "/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for name in ["broker", "teacher"] {
            FileManager.default.createFile(atPath: "\(bin)/\(name)", contents: Data("#!/bin/sh\n".utf8),
                                           attributes: [.posixPermissions: 0o755])
        }
        let config = StackConfiguration(stateDirectory: state.path, binDirectory: bin)
        XCTAssertEqual(config.missingExecutables(), ["featurestore", "noise", "trainer", "retrieval"])
    }

    func testRecordRoundTripsThroughTheStateFileAndRendersATable() throws {
        let layout = StackLayout(stateDirectory: state.path)
        let record = StackRecord(
            phase: .ready, supervisorPID: 42, stateDirectory: layout.stateDirectory, brokerEndpoint: "tcp://127.0.0.1:5555",
            database: .init(url: "postgresql:///winnow", embedded: true, pid: 7, port: 54329, ready: true),
            children: [ChildStatus(name: "broker", service: "broker", endpoint: "tcp://127.0.0.1:5555", pid: 8,
                                   state: .ready, restarts: 0, lastExit: nil, logFile: layout.log("broker"),
                                   executable: "/bin/broker"),
                       ChildStatus(name: "teacher-2", service: "teacher", endpoint: "tcp://127.0.0.1:6000", pid: nil,
                                   state: .backoff, restarts: 3, lastExit: "signal 9 (SIGKILL)",
                                   logFile: layout.log("teacher-2"), executable: "/bin/teacher")],
            updated: Date(timeIntervalSince1970: 1_800_000_000))
        try record.save(layout)
        XCTAssertEqual(StackRecord.load(layout), record)
        XCTAssertEqual(record.table(), """
            NAME       PID  ENDPOINT                    STATUS   RESTARTS
            postgres   7    127.0.0.1:54329 (embedded)  ready    -
            broker     8    tcp://127.0.0.1:5555        ready    0
            teacher-2  -    tcp://127.0.0.1:6000        backoff  3
            """)
    }

    func testLayoutMakesTheStateDirectoryAbsolute() {
        let cwd = FileManager.default.currentDirectoryPath
        XCTAssertEqual(StackLayout(stateDirectory: "rel/dir").stateDirectory, (cwd as NSString).appendingPathComponent("rel/dir"))
        let layout = StackLayout(stateDirectory: "/a/b/../c")
        XCTAssertEqual(layout.stateDirectory, "/a/c")
        XCTAssertEqual(layout.recordFile, "/a/c/stack.json")
        XCTAssertEqual(layout.log("teacher-1"), "/a/c/logs/teacher-1.log")
    }

    func testTCPProbeSeesAListenerAndNotAFreePort() async throws {
        let squatter = try PortSquatter()
        let target = ProbeTarget(name: "x", service: "x", endpoint: "tcp://127.0.0.1:\(squatter.port)", pid: getpid())
        let up = await HealthProbes.tcpConnect(target)
        XCTAssertTrue(up)
        let free = try LoopbackPort.ephemeral()
        let down = await HealthProbes.tcpConnect(ProbeTarget(name: "y", service: "y", endpoint: "tcp://127.0.0.1:\(free)", pid: 1))
        XCTAssertFalse(down)
        XCTAssertNil(HealthProbes.parseTCPEndpoint("ipc:///tmp/x"))
        XCTAssertEqual(HealthProbes.parseTCPEndpoint("tcp://*:5555")?.1, 5555)
    }

    func testStackRefusesAStateDirectoryAnotherSupervisorHolds() async throws {
        let layout = StackLayout(stateDirectory: state.path)
        try FileManager.default.createDirectory(atPath: state.path, withIntermediateDirectories: true)
        // Hold the lock as a live supervisor would.
        let fd = open(layout.lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        XCTAssertEqual(flock(fd, LOCK_EX | LOCK_NB), 0)
        try "4242\n".write(toFile: layout.pidFile, atomically: true, encoding: .utf8)
        XCTAssertTrue(StackControl.isUp(layout))

        let stack = LocalStack(configuration: StackConfiguration(stateDirectory: state.path, binDirectory: "/nonexistent"),
                               probe: { _ in true })
        do {
            try await stack.start()
            XCTFail("started on a held state directory")
        } catch let error as StackError {
            XCTAssertEqual(error, .alreadyUp(pid: 4242, stateDirectory: layout.stateDirectory))
        }
        flock(fd, LOCK_UN)
        close(fd)
        XCTAssertFalse(StackControl.isUp(layout))
    }

    func testFailedStartRecordsWhyAndReleasesTheStateDirectory() async throws {
        let layout = StackLayout(stateDirectory: state.path)
        let stack = LocalStack(configuration: StackConfiguration(stateDirectory: state.path, binDirectory: state.path + "/nobin"),
                               probe: { _ in true })
        do {
            try await stack.start()
            XCTFail("started without executables")
        } catch let error as StackError {
            guard case .missingExecutables(let names, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(names, StackConfiguration.executables)
        }
        let record = try XCTUnwrap(StackRecord.load(layout))
        XCTAssertEqual(record.phase, .failed)
        XCTAssertTrue(record.message?.contains("missing executables") ?? false, record.message ?? "nil")
        XCTAssertFalse(StackControl.isUp(layout))
        XCTAssertFalse(FileManager.default.fileExists(atPath: layout.pidFile))
        let report = await StackControl.down(layout, timeout: .seconds(5))
        XCTAssertTrue(report.wasDown)
    }
}
