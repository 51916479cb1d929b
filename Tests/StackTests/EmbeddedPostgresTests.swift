import Foundation
import XCTest
@testable import Postgres
#if canImport(Glibc)
import Glibc
#endif

final class EmbeddedPostgresTests: XCTestCase {
    var state: TemporaryStateDirectory!

    override func setUp() { state = TemporaryStateDirectory("embedded") }
    override func tearDown() { state.remove() }

    func testCleanStateDirInitialisesStartsServesStopsAndRestartReusesTheData() throws {
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        try pg.start()
        XCTAssertTrue(pg.initializedCluster)
        XCTAssertTrue(pg.isRunning)
        XCTAssertTrue(FileManager.default.fileExists(atPath: state.path + "/postgres/data/PG_VERSION"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: state.path + "/logs/postgres.log"))

        do {
            let conn = try Connection(url: pg.url)
            XCTAssertEqual(try conn.query("SELECT current_database()").string(0, 0), "winnow")
            try conn.exec("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives a restart')")
            conn.close()
            // TCP works too.
            let tcp = try Connection(url: pg.tcpURL())
            XCTAssertEqual(try tcp.query("SELECT 1").int(0, 0), 1)
            tcp.close()
        }
        if geteuid() == 0 {
            var st = stat()
            XCTAssertEqual(stat(state.path + "/postgres/data", &st), 0)
            XCTAssertEqual(st.st_uid, getpwnam("postgres").pointee.pw_uid, "data dir belongs to postgres")
        }

        try pg.stop()
        XCTAssertFalse(pg.isRunning)
        XCTAssertEqual(Connection.ping(url: pg.url), .noResponse)
        try pg.stop() // stopping a stopped server is a no-op

        // Second start, on another port: same cluster, same data, no initdb.
        let again = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        try again.start()
        defer { try? again.stop() }
        XCTAssertFalse(again.initializedCluster)
        let conn = try Connection(url: again.url)
        XCTAssertEqual(try conn.query("SELECT v FROM kept").string(0, 0), "survives a restart")
        conn.close()
    }

    /// The server asks every client for the superuser's password (SCRAM), on its socket and on
    /// loopback alike; the password lives only in the 0600 password file the URLs name, and the
    /// server's log never shows it. A cluster made before passwords (trust) gets one at its next
    /// start.
    func testEveryConnectionNeedsThePasswordThatOnlyThePasswordFileHolds() throws {
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        try pg.start()
        var st = stat()
        XCTAssertEqual(stat(pg.passwordFile, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        let line = try String(contentsOfFile: pg.passwordFile, encoding: .utf8)
        let password = String(try XCTUnwrap(line.split(separator: ":").last).dropLast())
        XCTAssertEqual(password.count, 64)
        for url in [pg.url, pg.tcpURL()] {
            let bare = url.replacingOccurrences(of: "passfile=", with: "passfile=/nonexistent")
            XCTAssertThrowsError(try Connection(url: bare).query("SELECT 1"), url) { error in
                XCTAssertTrue("\(error)".contains("password"), "\(error)")
            }
            XCTAssertEqual(try Connection(url: url).query("SELECT 1").int(0, 0), 1)
        }
        // a cluster of an earlier build: trust, no password file
        try pg.stop()
        let hba = pg.dataDirectory + "/pg_hba.conf"
        let scram = try String(contentsOfFile: hba, encoding: .utf8)
        XCTAssertFalse(scram.split(separator: "\n").contains { !$0.hasPrefix("#") && $0.hasSuffix(" trust") })
        try scram.replacingOccurrences(of: " scram-sha-256", with: " trust").write(toFile: hba, atomically: true, encoding: .utf8)
        unlink(pg.passwordFile)
        let again = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        try again.start()
        defer { try? again.stop() }
        XCTAssertEqual(try Connection(url: again.url).query("SELECT 1").int(0, 0), 1)
        let bare = again.url.replacingOccurrences(of: "passfile=", with: "passfile=/nonexistent")
        XCTAssertThrowsError(try Connection(url: bare).query("SELECT 1"))
        let renewed = try String(contentsOfFile: again.passwordFile, encoding: .utf8)
        XCTAssertNotEqual(renewed, line)
        let log = try String(contentsOfFile: again.logFile, encoding: .utf8)
        for p in [password, String(renewed.split(separator: ":").last!.dropLast())] { XCTAssertFalse(log.contains(p)) }
    }

    func testURLUsesTheSocketDirectoryUnlessItsPathIsTooLongForAUnixSocket() {
        let short = EmbeddedPostgres(.init(stateDirectory: "/tmp/w s", port: 5433))
        XCTAssertTrue(short.usesUnixSocket)
        let pass = "passfile=/tmp/w%20s/postgres/pgpass"
        XCTAssertEqual(short.url, "postgresql:///winnow?host=/tmp/w%20s/postgres/run&port=5433&user=postgres&" + pass)
        XCTAssertEqual(short.tcpURL(), "postgresql://postgres@127.0.0.1:5433/winnow?" + pass)
        XCTAssertEqual(short.url(database: "postgres"), "postgresql:///postgres?host=/tmp/w%20s/postgres/run&port=5433&user=postgres&" + pass)
        let long = EmbeddedPostgres(.init(stateDirectory: "/tmp/" + String(repeating: "d", count: 100), port: 5433))
        XCTAssertFalse(long.usesUnixSocket)
        XCTAssertEqual(long.url, long.tcpURL())
    }

    func testSecondServerOnTheSameDataDirectoryIsRefusedClearly() throws {
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        try pg.start()
        defer { try? pg.stop() }
        let twin = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        XCTAssertThrowsError(try twin.start()) { error in
            guard case .alreadyRunning(let pid, let dir)? = error as? EmbeddedPostgres.Failure else {
                return XCTFail("expected alreadyRunning, got \(error)")
            }
            XCTAssertEqual(pid, pg.runningServerPID())
            XCTAssertEqual(dir, pg.dataDirectory)
        }
        XCTAssertTrue(pg.isRunning, "the refused start left the running server alone")
    }

    func testPortInUseIsReportedByNumber() throws {
        let squatter = try PortSquatter()
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: squatter.port))
        XCTAssertThrowsError(try pg.start()) { error in
            XCTAssertEqual(error as? EmbeddedPostgres.Failure, .portInUse(port: squatter.port))
            XCTAssertTrue("\(error)".contains("--pg-port"), "\(error)")
        }
        XCTAssertFalse(pg.isRunning)
    }

    func testMissingBinariesAreReportedWithWhereItLooked() throws {
        let empty = state.path + "/nobin"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral(), binDirectory: empty))
        XCTAssertThrowsError(try pg.start()) { error in
            XCTAssertEqual(error as? EmbeddedPostgres.Failure, .binariesNotFound(searched: [empty]))
            XCTAssertTrue("\(error)".contains("initdb"), "\(error)")
        }
    }

    func testStalePidFileFromAGoneServerIsClearedOnStart() throws {
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        try pg.start()
        try pg.stop()
        // A postmaster.pid naming a live process that is not postgres (this test runner), as
        // after a crash and a reboot that reused the pid.
        let pidFile = pg.dataDirectory + "/postmaster.pid"
        try "\(getpid())\n\(pg.dataDirectory)\n0\n\(pg.configuration.port)\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        if geteuid() == 0 { chown(pidFile, getpwnam("postgres").pointee.pw_uid, getpwnam("postgres").pointee.pw_gid) }
        XCTAssertFalse(pg.isRunning)
        try pg.start()
        defer { try? pg.stop() }
        XCTAssertTrue(pg.isRunning)
        XCTAssertNotEqual(pg.runningServerPID(), getpid())
    }

    func testNonClusterDataDirectoryIsRefused() throws {
        let data = state.path + "/postgres/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        try "not a cluster".write(toFile: data + "/junk", atomically: true, encoding: .utf8)
        if geteuid() == 0 { chown(data, getpwnam("postgres").pointee.pw_uid, getpwnam("postgres").pointee.pw_gid) }
        let pg = EmbeddedPostgres(.init(stateDirectory: state.path, port: try LoopbackPort.ephemeral()))
        XCTAssertThrowsError(try pg.start()) { error in
            guard case .unusableDirectory(let path, let reason)? = error as? EmbeddedPostgres.Failure else {
                return XCTFail("expected unusableDirectory, got \(error)")
            }
            XCTAssertEqual(path, data)
            XCTAssertTrue(reason.contains("PG_VERSION"), reason)
        }
    }
}
