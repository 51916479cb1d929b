import Foundation
import XCTest
@testable import Stack
@testable import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// `winnow up` / `winnow status` / `winnow down` as a person runs them: the built executables,
/// a clean state directory, the embedded Postgres, the real broker and services.
final class StackCommandTests: XCTestCase {
    var state: TemporaryStateDirectory!
    var binDirectory: String!

    override func setUpWithError() throws {
        state = TemporaryStateDirectory("stackcli")
        // The test runner sits in the build products directory, beside the executables.
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let me = String(decoding: buffer[0..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        binDirectory = (me as NSString).deletingLastPathComponent
        let missing = StackConfiguration(stateDirectory: state.path, binDirectory: binDirectory).missingExecutables()
            + (access(binDirectory + "/winnow", X_OK) == 0 ? [] : ["winnow"])
        guard missing.isEmpty else {
            throw SetupFailure("executables missing beside the test runner in \(binDirectory!): \(missing) (run `swift build --build-tests` first)")
        }
    }

    override func tearDown() {
        // Never leave a stack running, whatever failed.
        if let state, StackControl.isUp(StackLayout(stateDirectory: state.path)) {
            _ = try? winnow(["down", "--state-dir", state.path])
        }
        state?.remove()
    }

    struct Run {
        let status: Int32
        let output: String
    }

    /// Runs `winnow args` to completion and returns its exit status and output.
    func winnow(_ args: [String], timeout: TimeInterval = 180) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binDirectory + "/winnow")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, output: String(decoding: data, as: UTF8.self))
    }

    func testUpStatusDownOnTheEmbeddedPostgresFromACleanStateDirectory() throws {
        let layout = StackLayout(stateDirectory: state.path)
        let brokerPort = try LoopbackPort.ephemeral()
        var pgPort = try LoopbackPort.ephemeral()
        while pgPort == brokerPort { pgPort = try LoopbackPort.ephemeral() }
        let upArgs = ["up", "--state-dir", state.path, "--teachers", "2", "--broker-port", "\(brokerPort)",
                      "--pg-port", "\(pgPort)", "--heartbeat-ms", "250", "--ready-timeout", "60", "--stop-grace", "5"]

        // up: everything answers Health, the table lists it.
        let up = try winnow(upArgs)
        XCTAssertEqual(up.status, 0, up.output)
        for name in ["postgres", "broker", "featurestore", "teacher-1", "teacher-2", "noise", "trainer", "retrieval"] {
            XCTAssertTrue(up.output.split(separator: "\n").contains { $0.hasPrefix(name + " ") && $0.contains("ready") },
                          "\(name) ready in:\n\(up.output)")
        }
        let record = try XCTUnwrap(StackRecord.load(layout))
        XCTAssertEqual(record.phase, .ready)
        XCTAssertEqual(record.children.count, 7)
        let pids = record.children.compactMap(\.pid)
        XCTAssertEqual(pids.count, 7)
        for pid in pids { XCTAssertTrue(StackControl.isAlive(pid)) }
        let supervisorPID = try XCTUnwrap(StackControl.pidFromFile(layout))

        // The feature store's database is there.
        let db = try XCTUnwrap(record.database)
        XCTAssertTrue(db.embedded)
        let conn = try Connection(url: db.url)
        XCTAssertEqual(try conn.query("SELECT current_database()").string(0, 0), "winnow")
        try conn.exec("CREATE TABLE marker (v text); INSERT INTO marker VALUES ('kept')")
        conn.close()

        // status: the broker lists every service, both teachers included.
        let status = try winnow(["status", "--broker", "tcp://127.0.0.1:\(brokerPort)"])
        XCTAssertEqual(status.status, 0, status.output)
        let lines = status.output.split(separator: "\n")
        for service in ["featurestore", "noise", "trainer", "retrieval"] {
            XCTAssertEqual(lines.filter { $0.hasPrefix(service + " ") }.count, 1, "\(service) in:\n\(status.output)")
        }
        XCTAssertEqual(lines.filter { $0.hasPrefix("teacher ") }.count, 2, status.output)
        XCTAssertTrue(status.output.contains("6 workers"), status.output)
        // Without --broker, status finds the broker of the stack brought up in --state-dir.
        let byState = try winnow(["status", "--state-dir", state.path])
        XCTAssertEqual(byState.status, 0, byState.output)
        XCTAssertTrue(byState.output.contains("6 workers"), byState.output)

        // A crashed service is restarted, and the restart is logged.
        let teacher = try XCTUnwrap(record.children.first { $0.name == "teacher-2" })
        XCTAssertEqual(kill(teacher.pid!, SIGKILL), 0)
        var restarted: ChildStatus?
        XCTAssertTrue(eventually(timeout: 30) {
            restarted = StackRecord.load(layout)?.children.first { $0.name == "teacher-2" }
            return restarted?.state == .ready && restarted?.pid != nil && restarted?.pid != teacher.pid
        }, "teacher-2 restarted: \(String(describing: restarted))")
        XCTAssertEqual(restarted?.restarts, 1)
        let teacherLog = try String(contentsOfFile: layout.log("teacher-2"), encoding: .utf8)
        XCTAssertTrue(teacherLog.contains("teacher-2 exited unexpectedly (pid \(teacher.pid!), signal 9 (SIGKILL)"), teacherLog)
        XCTAssertTrue(teacherLog.contains("teacher-2 restarted as pid \(restarted!.pid!)"), teacherLog)

        // A second up on the same state directory says so and changes nothing.
        let again = try winnow(upArgs)
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("already up"), again.output)
        XCTAssertEqual(StackControl.pidFromFile(layout), supervisorPID)

        // down: everything is gone when it returns.
        let down = try winnow(["down", "--state-dir", state.path])
        XCTAssertEqual(down.status, 0, down.output)
        XCTAssertTrue(down.output.contains("the stack is down"), down.output)
        XCTAssertFalse(StackControl.isUp(layout))
        XCTAssertFalse(StackControl.isAlive(supervisorPID))
        for pid in pids + [restarted!.pid!] { XCTAssertFalse(StackControl.isAlive(pid), "pid \(pid) still alive") }
        XCTAssertEqual(Connection.ping(url: db.url), .noResponse)
        XCTAssertEqual(StackRecord.load(layout)?.phase, .stopped)
        let downAgain = try winnow(["down", "--state-dir", state.path])
        XCTAssertEqual(downAgain.status, 0)
        XCTAssertTrue(downAgain.output.contains("not up"), downAgain.output)

        // A second up reuses the Postgres data.
        let second = try winnow(upArgs.map { $0 == "2" ? "1" : $0 })
        XCTAssertEqual(second.status, 0, second.output)
        let url = try XCTUnwrap(StackRecord.load(layout)?.database?.url)
        let reconnected = try Connection(url: url)
        XCTAssertEqual(try reconnected.query("SELECT v FROM marker").string(0, 0), "kept")
        reconnected.close()
        let supervisorLog = try String(contentsOfFile: layout.supervisorLog, encoding: .utf8)
        XCTAssertEqual(supervisorLog.components(separatedBy: "initialising a new cluster").count - 1, 1,
                       "initdb ran once across two ups")
        XCTAssertEqual(try winnow(["down", "--state-dir", state.path]).status, 0)
        XCTAssertFalse(StackControl.isUp(layout))
    }

    func upArguments(teachers: Int, noise: Int = 1) throws -> [String] {
        let brokerPort = try LoopbackPort.ephemeral()
        var pgPort = try LoopbackPort.ephemeral()
        while pgPort == brokerPort { pgPort = try LoopbackPort.ephemeral() }
        return ["up", "--state-dir", state.path, "--teachers", "\(teachers)", "--noise", "\(noise)", "--broker-port", "\(brokerPort)",
                "--pg-port", "\(pgPort)", "--heartbeat-ms", "250", "--ready-timeout", "60", "--stop-grace", "5"]
    }

    func testUpInTheForegroundSupervisesUntilSIGINTThenStopsEverything() throws {
        let layout = StackLayout(stateDirectory: state.path)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binDirectory + "/winnow")
        p.arguments = try upArguments(teachers: 0) + ["--foreground"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        XCTAssertTrue(eventually(timeout: 120) { StackRecord.load(layout)?.phase == .ready || !p.isRunning },
                      "foreground stack ready")
        let record = try XCTUnwrap(StackRecord.load(layout))
        XCTAssertEqual(record.phase, .ready)
        XCTAssertEqual(record.supervisorPID, p.processIdentifier, "the foreground process supervises")
        XCTAssertEqual(record.children.map(\.name), ["broker", "featurestore", "noise", "trainer", "retrieval"])
        let pids = record.children.compactMap(\.pid)
        XCTAssertEqual(pids.count, 5)

        kill(p.processIdentifier, SIGINT)
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, output)
        XCTAssertTrue(output.contains("featurestore"), "the table was printed:\n\(output)")
        XCTAssertEqual(StackRecord.load(layout)?.phase, .stopped)
        XCTAssertFalse(StackControl.isUp(layout))
        for pid in pids { XCTAssertFalse(StackControl.isAlive(pid), "pid \(pid) still alive") }
        XCTAssertEqual(Connection.ping(url: record.database!.url), .noResponse)
    }

    func testDownStopsServicesAndPostgresLeftBehindByAKilledSupervisor() throws {
        let layout = StackLayout(stateDirectory: state.path)
        let up = try winnow(try upArguments(teachers: 1))
        XCTAssertEqual(up.status, 0, up.output)
        let record = try XCTUnwrap(StackRecord.load(layout))
        let pids = record.children.compactMap(\.pid)
        XCTAssertEqual(pids.count, 6)
        let supervisor = try XCTUnwrap(StackControl.pidFromFile(layout))
        XCTAssertEqual(kill(supervisor, SIGKILL), 0)
        XCTAssertTrue(eventually(timeout: 10) { !StackControl.isUp(layout) }, "the lock went with the supervisor")
        for pid in pids { XCTAssertTrue(StackControl.isAlive(pid), "services outlive a killed supervisor") }

        let down = try winnow(["down", "--state-dir", state.path])
        XCTAssertEqual(down.status, 0, down.output)
        XCTAssertTrue(down.output.contains("stopped services left without a supervisor: broker, featurestore, teacher, noise, trainer, retrieval"),
                      down.output)
        XCTAssertTrue(down.output.contains("stopped the embedded Postgres"), down.output)
        for pid in pids { XCTAssertFalse(StackControl.isAlive(pid), "pid \(pid) still alive") }
        XCTAssertEqual(Connection.ping(url: record.database!.url), .noResponse)
        XCTAssertEqual(StackRecord.load(layout)?.phase, .stopped)
    }

    func testUpWithADatabaseURLUsesThatServerAndDownLeavesItRunning() throws {
        let external = TemporaryStateDirectory("external-pg")
        defer { external.remove() }
        let pg = EmbeddedPostgres(.init(stateDirectory: external.path, port: try LoopbackPort.ephemeral()))
        try pg.start()
        defer { try? pg.stop() }
        let layout = StackLayout(stateDirectory: state.path)

        let up = try winnow(try upArguments(teachers: 0) + ["--database-url", pg.tcpURL()])
        XCTAssertEqual(up.status, 0, up.output)
        let record = try XCTUnwrap(StackRecord.load(layout))
        XCTAssertEqual(record.database?.embedded, false)
        XCTAssertEqual(record.database?.url, pg.tcpURL())
        XCTAssertFalse(FileManager.default.fileExists(atPath: state.path + "/postgres/data"), "no embedded cluster")
        let featurestore = try XCTUnwrap(record.children.first { $0.name == "featurestore" }?.pid)
        let cmdline = try XCTUnwrap(FileManager.default.contents(atPath: "/proc/\(featurestore)/cmdline"))
        let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        XCTAssertEqual(args.firstIndex(of: "--database-url").map { args[$0 + 1] }, pg.tcpURL())

        let down = try winnow(["down", "--state-dir", state.path])
        XCTAssertEqual(down.status, 0, down.output)
        XCTAssertFalse(StackControl.isUp(layout))
        XCTAssertTrue(pg.isRunning, "a given database is not ours to stop")
        XCTAssertEqual(Connection.ping(url: pg.url), .ok)
    }

    func testUpWithUnusableOptionsFailsWithAClearMessage() throws {
        let bad = try winnow(["up", "--state-dir", state.path, "--teachers", "65"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--teachers must be between 0 and 64"), bad.output)
        let clash = try winnow(["up", "--state-dir", state.path, "--broker-port", "7000", "--pg-port", "7000"])
        XCTAssertNotEqual(clash.status, 0)
        XCTAssertTrue(clash.output.contains("must differ"), clash.output)
        let nobin = try winnow(["up", "--state-dir", state.path, "--bin-dir", state.path])
        XCTAssertNotEqual(nobin.status, 0)
        XCTAssertTrue(nobin.output.contains("missing executables"), nobin.output)
        XCTAssertFalse(StackControl.isUp(StackLayout(stateDirectory: state.path)))
    }
}

/// A setup failure that must not pass as a skip.
struct SetupFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
