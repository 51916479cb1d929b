import Foundation
import XCTest
@testable import Postgres

/// The libpq wrapper against a real embedded server, shared by the tests of this class.
final class PostgresConnectionTests: XCTestCase {
    nonisolated(unsafe) static var server: EmbeddedPostgres?
    nonisolated(unsafe) static var startError: Error?

    override class func setUp() {
        super.setUp()
        do {
            server = try EmbeddedPostgres.temporary(label: "pgconn")
        } catch {
            startError = error
        }
    }

    override class func tearDown() {
        if let dir = server?.configuration.stateDirectory {
            server?.destroy()
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "destroy() removes the state directory")
        }
        super.tearDown()
    }

    var conn: Connection!

    override func setUpWithError() throws {
        if let error = Self.startError { throw error }
        conn = try Connection(url: Self.server!.url)
    }

    override func tearDown() {
        conn?.close()
    }

    func testParameterisedQueryRoundTripsTypedValuesInTextAndBinaryFormats() throws {
        try conn.exec("CREATE TEMP TABLE t (i int8, f float8, s text, b bool, raw bytea, n int4)")
        let blob: [UInt8] = [0, 1, 2, 0xff, 0x5c, 0x27, 0x00]
        let inserted = try conn.execute("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6)",
                                        [Int64(-9_007_199_254_740_993), 0.1, "it's \"quoted\"\tand ünïcode", true, blob, nil as Int32?])
        XCTAssertEqual(inserted, 1)

        for format in [ResultFormat.text, .binary] {
            let r = try conn.query("SELECT i, f, s, b, raw, n FROM t", resultFormat: format)
            XCTAssertEqual(r.rowCount, 1)
            XCTAssertEqual(r.columnNames, ["i", "f", "s", "b", "raw", "n"])
            XCTAssertEqual(try r.int(0, 0), -9_007_199_254_740_993, "\(format)")
            XCTAssertEqual(try r.double(0, 1), 0.1, "\(format)")
            XCTAssertEqual(r.string(0, 2), "it's \"quoted\"\tand ünïcode", "\(format)")
            XCTAssertEqual(try r.bool(0, 3), true, "\(format)")
            XCTAssertEqual(try r.bytes(0, 4), blob, "\(format)")
            XCTAssertTrue(r.isNull(0, 5))
            XCTAssertNil(try r.int(0, 5))
            XCTAssertEqual(try r[0].string("s"), "it's \"quoted\"\tand ünïcode")
        }
    }

    func testDecodingAValueAsTheWrongTypeThrowsNamingTheColumn() throws {
        let r = try conn.query("SELECT 'abc'::text AS word")
        XCTAssertThrowsError(try r.int(0, 0)) { error in
            let e = error as? PQError
            XCTAssertEqual(e?.function, "decode")
            XCTAssertTrue(e?.message.contains("'word'") ?? false, "\(error)")
        }
        XCTAssertThrowsError(try r[0].int("missing"))
    }

    func testServerErrorsCarrySQLStateServerMessageAndPosition() throws {
        try conn.exec("CREATE TEMP TABLE u (id int PRIMARY KEY)")
        try conn.execute("INSERT INTO u VALUES ($1)", [1])
        XCTAssertThrowsError(try conn.execute("INSERT INTO u VALUES ($1)", [1])) { error in
            guard let e = error as? PQError else { return XCTFail("not a PQError: \(error)") }
            XCTAssertEqual(e.sqlState, SQLState.uniqueViolation)
            XCTAssertEqual(e.severity, "ERROR")
            XCTAssertEqual(e.function, "PQexecParams")
            XCTAssertTrue(e.message.contains("duplicate key value violates unique constraint"), e.message)
            XCTAssertEqual(e.detail, "Key (id)=(1) already exists.")
        }
        XCTAssertThrowsError(try conn.exec("SELEC 1")) { error in
            let e = error as? PQError
            XCTAssertEqual(e?.sqlState, SQLState.syntaxError)
            XCTAssertEqual(e?.position, 1)
        }
        XCTAssertThrowsError(try conn.query("SELECT * FROM no_such_table")) { error in
            XCTAssertEqual((error as? PQError)?.sqlState, SQLState.undefinedTable)
            XCTAssertTrue("\(error)".contains("SQLSTATE 42P01"), "\(error)")
        }
        // The connection stays usable after errors.
        XCTAssertEqual(try conn.query("SELECT count(*) FROM u").int(0, 0), 1)
    }

    func testConnectingToNothingIsAClientSideErrorWithoutSQLState() throws {
        let port = try LoopbackPort.ephemeral()
        XCTAssertThrowsError(try Connection(url: "postgresql://postgres@127.0.0.1:\(port)/winnow?connect_timeout=2")) { error in
            guard let e = error as? PQError else { return XCTFail("not a PQError: \(error)") }
            XCTAssertEqual(e.function, "PQconnectdb")
            XCTAssertNil(e.sqlState)
            XCTAssertTrue(e.message.contains("\(port)"), e.message)
        }
        XCTAssertEqual(Connection.ping(url: "postgresql://postgres@127.0.0.1:\(port)/winnow"), .noResponse)
        XCTAssertEqual(Connection.ping(url: Self.server!.url), .ok)
    }

    func testTransactionCommitsOnReturnAndRollsBackOnThrow() throws {
        try conn.exec("CREATE TEMP TABLE tx (v int)")
        struct Boom: Error {}
        try conn.transaction { c in try c.execute("INSERT INTO tx VALUES (1)") }
        XCTAssertThrowsError(try conn.transaction { c -> Void in
            try c.execute("INSERT INTO tx VALUES (2)")
            throw Boom()
        }) { XCTAssertTrue($0 is Boom) }
        XCTAssertThrowsError(try conn.transaction(isolation: .serializable) { c in
            try c.execute("INSERT INTO tx VALUES (3)")
            try c.execute("INSERT INTO tx VALUES ('x')")
        }) { XCTAssertEqual(($0 as? PQError)?.sqlState, SQLState.invalidTextRepresentation) }
        XCTAssertFalse(conn.inTransaction)
        let r = try conn.query("SELECT array_agg(v ORDER BY v)::text FROM tx")
        XCTAssertEqual(r.string(0, 0), "{1}")
    }

    func testNestedTransactionRollsBackOnlyItsSavepoint() throws {
        try conn.exec("CREATE TEMP TABLE nest (v int)")
        struct Inner: Error {}
        try conn.transaction { c in
            try c.execute("INSERT INTO nest VALUES (1)")
            XCTAssertThrowsError(try c.transaction { c2 -> Void in
                try c2.execute("INSERT INTO nest VALUES (2)")
                throw Inner()
            })
            try c.transaction { c2 in try c2.execute("INSERT INTO nest VALUES (3)") }
        }
        XCTAssertEqual(try conn.query("SELECT array_agg(v ORDER BY v)::text FROM nest").string(0, 0), "{1,3}")
    }

    func testCommitAfterASwallowedFailureReportsTheRollback() throws {
        try conn.exec("CREATE TEMP TABLE swallow (v int)")
        XCTAssertThrowsError(try conn.transaction { c in
            try c.execute("INSERT INTO swallow VALUES (1)")
            _ = try? c.execute("INSERT INTO swallow VALUES ('bad')")
        }) { XCTAssertEqual(($0 as? PQError)?.sqlState, SQLState.inFailedTransaction) }
        XCTAssertEqual(try conn.query("SELECT count(*) FROM swallow").int(0, 0), 0)
    }

    func testCopyInLoadsEveryRowWithEscapingAndCountsThem() throws {
        try conn.exec("CREATE TEMP TABLE inter (user_id int, item_id int, note text)")
        let n = 20_000
        let copied = try conn.copyIn("COPY inter FROM STDIN") { w in
            for i in 0..<n {
                if i == 7 {
                    try w.writeRow(["7", "70", "tab\there\nnewline back\\slash"])
                } else if i == 8 {
                    try w.writeRow(["8", "80", nil])
                } else {
                    try w.write("\(i)\t\(i * 10)\tplain\n")
                }
            }
        }
        XCTAssertEqual(copied, n)
        XCTAssertEqual(try conn.query("SELECT count(*), sum(item_id) FROM inter").int(0, 0), n)
        XCTAssertEqual(try conn.query("SELECT sum(item_id) FROM inter").int(0, 0), (0..<n).reduce(0) { $0 + $1 * 10 })
        XCTAssertEqual(try conn.query("SELECT note FROM inter WHERE user_id = 7").string(0, 0), "tab\there\nnewline back\\slash")
        XCTAssertTrue(try conn.query("SELECT note FROM inter WHERE user_id = 8").isNull(0, 0))
    }

    func testCopyInBadRowFailsNamingTheLineAndLoadsNothing() throws {
        try conn.exec("CREATE TEMP TABLE strict_inter (user_id int, item_id int)")
        try conn.execute("INSERT INTO strict_inter VALUES (1, 1)")
        XCTAssertThrowsError(try conn.copyIn("COPY strict_inter FROM STDIN") { w in
            try w.write("2\t2\n3\t3\nfour\t4\n5\t5\n")
        }) { error in
            guard let e = error as? PQError else { return XCTFail("not a PQError: \(error)") }
            XCTAssertEqual(e.sqlState, SQLState.invalidTextRepresentation)
            XCTAssertTrue(e.context?.contains("line 3") ?? false, "context: \(e.context ?? "nil")")
            XCTAssertTrue(e.message.contains("four"), e.message)
        }
        XCTAssertEqual(try conn.query("SELECT count(*) FROM strict_inter").int(0, 0), 1)
        // Still usable.
        XCTAssertEqual(try conn.copyIn("COPY strict_inter FROM STDIN") { try $0.write("9\t9\n") }, 1)
    }

    func testCopyInAbortedByTheClientLoadsNothingAndRethrows() throws {
        try conn.exec("CREATE TEMP TABLE aborted (v int)")
        struct Stop: Error {}
        XCTAssertThrowsError(try conn.copyIn("COPY aborted FROM STDIN") { w in
            for i in 0..<100_000 { try w.write("\(i)\n") }
            throw Stop()
        }) { XCTAssertTrue($0 is Stop, "\($0)") }
        XCTAssertEqual(try conn.query("SELECT count(*) FROM aborted").int(0, 0), 0)
        XCTAssertThrowsError(try conn.copyIn("SELECT 1") { _ in }) { error in
            XCTAssertTrue("\(error)".contains("not COPY ... FROM STDIN"), "\(error)")
        }
        XCTAssertThrowsError(try conn.exec("COPY aborted FROM STDIN"))
        XCTAssertEqual(try conn.query("SELECT 1").int(0, 0), 1)
    }

    func testCopyOutStreamsTheTable() throws {
        try conn.exec("CREATE TEMP TABLE src (a int, b text); INSERT INTO src SELECT g, 'x' || g FROM generate_series(1, 1000) g")
        var rows = 0
        let count = try conn.copyOut("COPY (SELECT * FROM src ORDER BY a) TO STDOUT") { chunk in
            rows += chunk.filter { $0 == 0x0A }.count
        }
        XCTAssertEqual(count, 1000)
        XCTAssertEqual(rows, 1000)
        let text = String(decoding: try conn.copyOut("COPY (SELECT * FROM src WHERE a <= 2 ORDER BY a) TO STDOUT"), as: UTF8.self)
        XCTAssertEqual(text, "1\tx1\n2\tx2\n")
    }

    func testPreparedStatementRunsWithNewParameters() throws {
        try conn.exec("CREATE TEMP TABLE p (k int, v text); INSERT INTO p SELECT g, 'v' || g FROM generate_series(1, 50) g")
        let stmt = try conn.prepare("get_v", "SELECT v FROM p WHERE k = $1")
        for k in [3, 17, 50] {
            XCTAssertEqual(try conn.execute(prepared: stmt, [k]).string(0, 0), "v\(k)")
        }
        XCTAssertEqual(try conn.execute(prepared: stmt, [51]).rowCount, 0)
    }

    func testBadParametersAreRejectedBeforeSending() throws {
        XCTAssertThrowsError(try conn.query("SELECT $1::text", ["nul\u{0}byte"])) { error in
            XCTAssertTrue("\(error)".contains("parameter $1 contains a NUL byte"), "\(error)")
        }
    }

    func testClosedConnectionThrowsInsteadOfCrashing() throws {
        conn.close()
        XCTAssertFalse(conn.isOpen)
        XCTAssertThrowsError(try conn.exec("SELECT 1")) { error in
            XCTAssertTrue("\(error)".contains("closed"), "\(error)")
        }
        conn.close()
    }

    func testServerNoticesAreCollected() throws {
        try conn.exec("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        XCTAssertTrue(conn.drainNotices().contains { $0.contains("hello from plpgsql") })
    }

    func testForEachRowStreamsRowsOneAtATime() throws {
        var sum = 0
        var seen = 0
        let n = try conn.forEachRow("SELECT g, 'r' || g AS label FROM generate_series(1, $1::int) g", [5000]) { row in
            XCTAssertEqual(row.rowCount, 1)
            sum += try row.int(0, 0)!
            seen += 1
            if seen == 1 { XCTAssertEqual(row.string(0, 1), "r1") }
        }
        XCTAssertEqual(n, 5000)
        XCTAssertEqual(sum, 5000 * 5001 / 2)
        XCTAssertThrowsError(try conn.forEachRow("SELECT * FROM nowhere") { _ in }) {
            XCTAssertEqual(($0 as? PQError)?.sqlState, SQLState.undefinedTable)
        }
    }

    func testForEachRowStopsWhenTheBodyThrowsAndTheConnectionStaysUsable() throws {
        struct Enough: Error {}
        var seen = 0
        XCTAssertThrowsError(try conn.forEachRow("SELECT g FROM generate_series(1, 2000000) g") { _ in
            seen += 1
            if seen == 10 { throw Enough() }
        }) { XCTAssertTrue($0 is Enough, "\($0)") }
        XCTAssertEqual(seen, 10)
        XCTAssertEqual(try conn.query("SELECT 7").int(0, 0), 7)
    }

    func testPoolLendsAtMostItsSizeUnderConcurrentUse() throws {
        let pool = ConnectionPool(url: Self.server!.url, maxConnections: 3)
        defer { pool.close() }
        let failures = Counter()
        let busy = Counter()
        DispatchQueue.concurrentPerform(iterations: 12) { i in
            for j in 0..<20 {
                do {
                    try pool.withConnection { c in
                        let now = busy.add(1)
                        XCTAssertLessThanOrEqual(now, 3)
                        XCTAssertEqual(try c.query("SELECT $1::int + $2::int", [i, j]).int(0, 0), i + j)
                        _ = busy.add(-1)
                    }
                } catch {
                    _ = failures.add(1)
                }
            }
        }
        XCTAssertEqual(failures.value, 0)
        XCTAssertLessThanOrEqual(pool.counts.open, 3)
        XCTAssertEqual(pool.counts.open, pool.counts.idle)
    }

    func testPoolReplacesABrokenConnectionAndTimesOutWhenExhausted() throws {
        let pool = ConnectionPool(url: Self.server!.url, maxConnections: 1, checkoutTimeout: .milliseconds(300))
        defer { pool.close() }
        let backend = try pool.withConnection { try $0.query("SELECT pg_backend_pid()").int(0, 0)! }
        try conn.query("SELECT pg_terminate_backend($1)", [backend])
        // The pooled connection is dead: its next use fails, and the pool drops it.
        XCTAssertThrowsError(try pool.withConnection { try $0.query("SELECT 1") })
        XCTAssertEqual(pool.counts.open, 0)
        let fresh = try pool.withConnection { try $0.query("SELECT pg_backend_pid()").int(0, 0)! }
        XCTAssertNotEqual(fresh, backend)

        // All lent: a second caller waits, then gets a clear error.
        try pool.withConnection { _ in
            XCTAssertThrowsError(try pool.withConnection { _ in }) { error in
                XCTAssertTrue("\(error)".contains("no connection free"), "\(error)")
            }
        }
        // A transaction left open is not handed to the next caller.
        try pool.withConnection { c in try c.exec("BEGIN") }
        XCTAssertEqual(pool.counts.open, 0)
    }

    func testRedactedURLHidesThePassword() {
        XCTAssertEqual(Connection.redacted("postgresql://u:secret@h:5432/db"), "postgresql://u:***@h:5432/db")
        XCTAssertEqual(Connection.redacted("postgresql://u@h/db"), "postgresql://u@h/db")
    }
}

/// A thread-safe counter for concurrency tests.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add(_ d: Int) -> Int { lock.lock(); defer { lock.unlock() }; n += d; return n }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
