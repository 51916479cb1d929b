import CPostgres
import Foundation
import Logging

/// One libpq connection to a Postgres server.
///
/// Every call is blocking and runs on the caller's thread. The connection is safe to share
/// between threads — calls are serialised by a lock — but a transaction (``transaction(isolation:_:)``)
/// belongs to whoever opened it: give each concurrent caller its own connection (see
/// ``ConnectionPool``). Errors are ``PQError`` values carrying the server's SQLSTATE and message.
public final class Connection: @unchecked Sendable {
    private var handle: OpaquePointer?
    private let lock = NSRecursiveLock()
    private let notices: NoticeSink
    private var savepointDepth = 0

    /// Opens a connection. `url` is a libpq connection URI or key/value string, e.g.
    /// `postgresql://postgres@127.0.0.1:5432/winnow` or `postgresql:///winnow?host=/run/dir&port=5432`.
    public init(url: String, logger: Logger = Logger(label: "winnow.postgres")) throws {
        guard let conn = PQconnectdb(url) else {
            throw PQError(function: "PQconnectdb", message: "libpq could not allocate a connection")
        }
        guard PQstatus(conn) == CONNECTION_OK else {
            let error = PQError(function: "PQconnectdb", connection: conn)
            PQfinish(conn)
            throw error
        }
        handle = conn
        notices = NoticeSink(logger: logger)
        PQsetNoticeReceiver(conn, noticeReceiver, Unmanaged.passUnretained(notices).toOpaque())
    }

    deinit { if let handle { PQfinish(handle) } }

    /// Closes the connection. Later calls throw; closing twice is harmless.
    public func close() {
        lock.lock(); defer { lock.unlock() }
        if let handle { PQfinish(handle) }
        handle = nil
    }

    /// Whether the connection is open and its last known state is good.
    public var isOpen: Bool {
        lock.lock(); defer { lock.unlock() }
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK
    }

    /// The server's version as an integer (150004 for 15.4).
    public var serverVersion: Int {
        lock.lock(); defer { lock.unlock() }
        return handle.map { Int(PQserverVersion($0)) } ?? 0
    }

    /// Whether a transaction block is open on this connection.
    public var inTransaction: Bool {
        lock.lock(); defer { lock.unlock() }
        guard let handle else { return false }
        let s = PQtransactionStatus(handle)
        return s == PQTRANS_INTRANS || s == PQTRANS_INERROR
    }

    /// Re-establishes a broken connection with the same parameters.
    public func reset() throws {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        PQreset(conn)
        guard PQstatus(conn) == CONNECTION_OK else { throw PQError(function: "PQreset", connection: conn) }
        savepointDepth = 0
    }

    /// The notices (`NOTICE`, `WARNING`, ...) the server sent since the last call, oldest first.
    public func drainNotices() -> [String] { notices.drain() }

    // MARK: Statements

    /// Runs one or more SQL statements with the simple query protocol (no parameters) and returns
    /// the last statement's result. Use ``query(_:_:resultFormat:)`` for anything carrying values.
    @discardableResult
    public func exec(_ sql: String) throws -> QueryResult {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        return try check(PQexec(conn, sql), function: "PQexec", conn: conn)
    }

    /// Runs one statement with `$1, $2, ...` placeholders bound to `params`.
    @discardableResult
    public func query(_ sql: String, _ params: [any PostgresBindable] = [],
                      resultFormat: ResultFormat = .text) throws -> QueryResult {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        let bound = try BoundParameters(params)
        let res = bound.withArrays { values, lengths, formats in
            PQexecParams(conn, sql, bound.count, nil, values, lengths, formats, resultFormat.rawValue)
        }
        return try check(res, function: "PQexecParams", conn: conn)
    }

    /// Runs a parameterised statement and returns how many rows it touched.
    @discardableResult
    public func execute(_ sql: String, _ params: [any PostgresBindable] = []) throws -> Int {
        try query(sql, params).rowsAffected ?? 0
    }

    /// Prepares a named statement on this connection (server-side plan, reused by ``execute(prepared:_:resultFormat:)``).
    @discardableResult
    public func prepare(_ name: String, _ sql: String) throws -> PreparedStatement {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        _ = try check(PQprepare(conn, name, sql, 0, nil), function: "PQprepare", conn: conn)
        return PreparedStatement(name: name)
    }

    /// Runs a statement prepared with ``prepare(_:_:)`` on this connection.
    @discardableResult
    public func execute(prepared statement: PreparedStatement, _ params: [any PostgresBindable] = [],
                        resultFormat: ResultFormat = .text) throws -> QueryResult {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        let bound = try BoundParameters(params)
        let res = bound.withArrays { values, lengths, formats in
            PQexecPrepared(conn, statement.name, bound.count, values, lengths, formats, resultFormat.rawValue)
        }
        return try check(res, function: "PQexecPrepared", conn: conn)
    }

    // MARK: Transactions

    public enum IsolationLevel: String, Sendable {
        case readCommitted = "READ COMMITTED"
        case repeatableRead = "REPEATABLE READ"
        case serializable = "SERIALIZABLE"
    }

    /// Runs `body` in a transaction: committed when it returns, rolled back when it throws (the
    /// error is rethrown). Called inside another transaction it uses a savepoint, so an inner
    /// failure rolls back only the inner part. The connection's lock is held for the whole
    /// transaction, so other threads using this connection wait until it ends.
    public func transaction<T>(isolation: IsolationLevel? = nil, _ body: (Connection) throws -> T) throws -> T {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        switch PQtransactionStatus(conn) {
        case PQTRANS_IDLE:
            try exec(isolation.map { "BEGIN ISOLATION LEVEL \($0.rawValue)" } ?? "BEGIN")
            let value: T
            do {
                value = try body(self)
            } catch {
                rollbackQuietly("ROLLBACK")
                throw error
            }
            let commit: QueryResult
            do {
                commit = try exec("COMMIT")
            } catch {
                rollbackQuietly("ROLLBACK")
                throw error
            }
            // COMMIT of a transaction in which a statement failed (and the error was caught in
            // `body`) succeeds as a command but rolls back; say so instead of returning quietly.
            if commit.commandTag == "ROLLBACK" {
                throw PQError(function: "transaction", sqlState: SQLState.inFailedTransaction,
                              message: "transaction rolled back: a statement inside it failed")
            }
            return value
        case PQTRANS_INTRANS:
            savepointDepth += 1
            let name = "winnow_sp_\(savepointDepth)"
            defer { savepointDepth -= 1 }
            try exec("SAVEPOINT \(name)")
            let value: T
            do {
                value = try body(self)
            } catch {
                rollbackQuietly("ROLLBACK TO SAVEPOINT \(name)")
                throw error
            }
            try exec("RELEASE SAVEPOINT \(name)")
            return value
        case PQTRANS_INERROR:
            throw PQError(function: "transaction", sqlState: SQLState.inFailedTransaction,
                          message: "the enclosing transaction has already failed; roll it back first")
        default:
            throw PQError(function: "transaction", message: "connection is busy (status \(PQtransactionStatus(conn).rawValue))")
        }
    }

    private func rollbackQuietly(_ sql: String) {
        guard let handle else { return }
        PQclear(PQexec(handle, sql))
    }

    // MARK: Escaping

    /// Quotes an identifier (`"my table"`) for splicing into SQL text.
    public func escapeIdentifier(_ identifier: String) throws -> String {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        let utf8 = Array(identifier.utf8)
        guard let p = PQescapeIdentifier(conn, identifier, utf8.count) else {
            throw PQError(function: "PQescapeIdentifier", connection: conn)
        }
        defer { PQfreemem(p) }
        return String(cString: p)
    }

    /// The server's verifier of `password` for `user` (SCRAM-SHA-256 where the server uses it),
    /// computed here so that ALTER ROLE sends the verifier, never the password.
    public func passwordVerifier(_ password: String, user: String) throws -> String {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        guard let p = PQencryptPasswordConn(conn, password, user, nil) else {
            throw PQError(function: "PQencryptPasswordConn", connection: conn)
        }
        defer { PQfreemem(p) }
        return String(cString: p)
    }

    /// Quotes a literal (`'it''s'`) for splicing into SQL text. Prefer parameters.
    public func escapeLiteral(_ literal: String) throws -> String {
        lock.lock(); defer { lock.unlock() }
        let conn = try open()
        let utf8 = Array(literal.utf8)
        guard let p = PQescapeLiteral(conn, literal, utf8.count) else {
            throw PQError(function: "PQescapeLiteral", connection: conn)
        }
        defer { PQfreemem(p) }
        return String(cString: p)
    }

    // MARK: Server readiness

    /// The server's answer to a connection attempt, without authenticating (libpq's `PQping`).
    public enum PingResult: Sendable {
        /// Accepting connections.
        case ok
        /// Running but refusing connections (starting up, shutting down, in recovery).
        case rejected
        /// Nothing answered.
        case noResponse
        /// The URL itself is invalid.
        case invalidParameters
    }

    public static func ping(url: String) -> PingResult {
        switch PQping(url) {
        case PQPING_OK: return .ok
        case PQPING_REJECT: return .rejected
        case PQPING_NO_RESPONSE: return .noResponse
        default: return .invalidParameters
        }
    }

    /// Waits until the server at `url` accepts connections, or throws after `timeout`.
    public static func waitUntilReady(url: String, timeout: Duration) throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var last = PingResult.noResponse
        while clock.now < deadline {
            last = ping(url: url)
            switch last {
            case .ok: return
            case .invalidParameters:
                throw PQError(function: "PQping", message: "invalid connection parameters in '\(redacted(url))'")
            case .rejected, .noResponse:
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        throw PQError(function: "PQping", message: "server at '\(redacted(url))' not ready after \(timeout) (last answer: \(last))")
    }

    /// The URL with any password replaced by `***`, for logs and messages.
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://") else { return url }
        let rest = url[schemeEnd.upperBound...]
        guard let at = rest.firstIndex(of: "@") else { return url }
        let userinfo = rest[rest.startIndex..<at]
        guard let colon = userinfo.firstIndex(of: ":") else { return url }
        return String(url[..<schemeEnd.upperBound]) + userinfo[..<colon] + ":***" + rest[at...]
    }

    // MARK: Internals (call with the lock held)

    func open() throws -> OpaquePointer {
        guard let handle else { throw PQError(function: "connection", message: "connection is closed") }
        return handle
    }

    /// Turns a result into a ``QueryResult`` or a thrown ``PQError``. A stray COPY state (a COPY
    /// statement sent through `exec`) is ended so the connection stays usable.
    func check(_ result: OpaquePointer?, function: String, conn: OpaquePointer) throws -> QueryResult {
        guard let result else { throw PQError(function: function, connection: conn) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_SINGLE_TUPLE:
            return QueryResult(handle: result)
        case PGRES_COPY_IN:
            PQclear(result)
            _ = PQputCopyEnd(conn, "COPY FROM STDIN must go through copyIn")
            drainResults(conn)
            throw PQError(function: function, message: "COPY FROM STDIN must be run with copyIn(_:_:)")
        case PGRES_COPY_OUT:
            PQclear(result)
            var buffer: UnsafeMutablePointer<CChar>?
            while PQgetCopyData(conn, &buffer, 0) > 0 { PQfreemem(buffer) }
            drainResults(conn)
            throw PQError(function: function, message: "COPY TO STDOUT must be run with copyOut(_:_:)")
        default:
            let error = PQError(function: function, result: result, connection: conn)
            PQclear(result)
            throw error
        }
    }

    func drainResults(_ conn: OpaquePointer) {
        while let r = PQgetResult(conn) { PQclear(r) }
    }

    func withLockedConnection<T>(_ body: (OpaquePointer) throws -> T) throws -> T {
        lock.lock(); defer { lock.unlock() }
        return try body(try open())
    }
}

/// A statement prepared on one connection; valid only on that connection.
public struct PreparedStatement: Sendable, Hashable {
    public let name: String
}

/// Collects server notices and forwards them to the logger.
final class NoticeSink: @unchecked Sendable {
    let logger: Logger
    private let lock = NSLock()
    private var pending: [String] = []

    init(logger: Logger) { self.logger = logger }

    func receive(_ severity: String, _ message: String) {
        lock.lock()
        pending.append("\(severity): \(message)")
        if pending.count > 256 { pending.removeFirst(pending.count - 256) }
        lock.unlock()
        if severity == "WARNING" {
            logger.warning("postgres: \(message)")
        } else {
            logger.debug("postgres \(severity.lowercased()): \(message)")
        }
    }

    func drain() -> [String] {
        lock.lock(); defer { lock.unlock() }
        defer { pending.removeAll() }
        return pending
    }
}

private func noticeReceiver(_ context: UnsafeMutableRawPointer?, _ result: OpaquePointer?) {
    guard let context, let result else { return }
    let sink = Unmanaged<NoticeSink>.fromOpaque(context).takeUnretainedValue()
    let severity = PQresultErrorField(result, Int32(UInt8(ascii: "V"))).map { String(cString: $0) } ?? "NOTICE"
    let message = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) } ?? ""
    sink.receive(severity, message)
}
