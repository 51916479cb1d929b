import Foundation
import Logging

/// A fixed-size set of connections to one database, lent out one caller at a time.
///
/// `withConnection` blocks while every connection is lent and `maxConnections` exist, up to
/// `checkoutTimeout`. A connection comes back to the pool only if it is still open and idle
/// (no transaction left open); otherwise it is closed and a new one is made on demand — so a
/// server restart costs each pooled connection one failed call, after which the pool reconnects.
public final class ConnectionPool: @unchecked Sendable {
    public let maxConnections: Int
    public let checkoutTimeout: Duration
    private let url: String
    private let logger: Logger
    private let condition = NSCondition()
    private var idle: [Connection] = []
    private var open = 0
    private var closed = false

    public init(url: String, maxConnections: Int = 8, checkoutTimeout: Duration = .seconds(30),
                logger: Logger = Logger(label: "winnow.postgres.pool")) {
        precondition(maxConnections > 0, "a pool needs at least one connection")
        self.url = url
        self.maxConnections = maxConnections
        self.checkoutTimeout = checkoutTimeout
        self.logger = logger
    }

    deinit { close() }

    /// Connections currently made (lent or idle) and idle.
    public var counts: (open: Int, idle: Int) {
        condition.lock(); defer { condition.unlock() }
        return (open, idle.count)
    }

    /// Lends a connection to `body` and takes it back afterwards. The connection must not be
    /// kept beyond `body`.
    public func withConnection<T>(_ body: (Connection) throws -> T) throws -> T {
        let conn = try checkOut()
        defer { checkIn(conn) }
        return try body(conn)
    }

    /// Closes idle connections and refuses further checkouts; lent ones close when returned.
    public func close() {
        condition.lock()
        closed = true
        let all = idle
        idle.removeAll()
        open -= all.count
        condition.broadcast()
        condition.unlock()
        for c in all { c.close() }
    }

    private func checkOut() throws -> Connection {
        let deadline = Date().addingTimeInterval(Double(checkoutTimeout.components.seconds)
                                                 + Double(checkoutTimeout.components.attoseconds) / 1e18)
        condition.lock()
        while true {
            if closed {
                condition.unlock()
                throw PQError(function: "ConnectionPool", message: "the pool is closed")
            }
            if let conn = idle.popLast() {
                condition.unlock()
                return conn
            }
            if open < maxConnections {
                open += 1
                condition.unlock()
                do {
                    return try Connection(url: url, logger: logger)
                } catch {
                    condition.lock()
                    open -= 1
                    condition.signal()
                    condition.unlock()
                    throw error
                }
            }
            guard condition.wait(until: deadline) else {
                condition.unlock()
                throw PQError(function: "ConnectionPool",
                              message: "no connection free after \(checkoutTimeout) (all \(maxConnections) in use)")
            }
        }
    }

    private func checkIn(_ conn: Connection) {
        let reusable = conn.isOpen && !conn.inTransaction
        if !reusable {
            logger.debug("dropping a pooled connection that is \(conn.isOpen ? "inside a transaction" : "broken")")
            conn.close()
        }
        condition.lock()
        if reusable && !closed {
            idle.append(conn)
        } else {
            open -= 1
            if reusable { conn.close() }
        }
        condition.signal()
        condition.unlock()
    }
}
