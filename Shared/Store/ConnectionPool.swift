import Foundation
import Logging
import Postgres

/// A small pool of libpq connections to one database. Each caller gets a connection of its own
/// for the length of `withConnection`; a connection found broken (the server restarted, the
/// network dropped) is discarded and a fresh one opened on the next checkout, so the store
/// recovers from a database restart without being restarted itself.
public final class ConnectionPool: @unchecked Sendable {
    public let url: String
    public let capacity: Int
    private let logger: Logger
    private let condition = NSCondition()
    private var idle: [Connection] = []
    private var open = 0
    private var closed = false

    public init(url: String, capacity: Int = 8, logger: Logger = Logger(label: "winnow.store.pool")) {
        precondition(capacity >= 1, "pool capacity must be >= 1")
        self.url = url
        self.capacity = capacity
        self.logger = logger
    }

    /// Runs `body` with a connection of its own; connection failures throw `StoreError.unavailable`.
    /// A pooled connection that turns out dead (the server restarted while it sat idle) is
    /// replaced and `body` runs once more on a fresh one; `body` must therefore be a transaction
    /// or otherwise safe to repeat, as every store operation is.
    public func withConnection<T>(_ body: (Connection) throws -> T) throws -> T {
        var attempt = 0
        while true {
            let (connection, reused) = try checkout()
            do {
                let value = try body(connection)
                checkin(connection)
                return value
            } catch {
                let dead = !connection.isOpen
                checkin(connection)
                let mapped = StoreError.from(error)
                if reused && dead && attempt == 0, case .unavailable = mapped {
                    attempt += 1
                    continue
                }
                throw mapped
            }
        }
    }

    /// Closes every idle connection; later checkouts fail.
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

    private func checkout() throws -> (Connection, reused: Bool) {
        condition.lock()
        while true {
            if closed { condition.unlock(); throw StoreError.unavailable("the feature store is shutting down") }
            if let c = idle.popLast() {
                condition.unlock()
                if c.isOpen && !c.inTransaction { return (c, true) }
                c.close()
                condition.lock(); open -= 1; condition.unlock()
                return (try fresh(), false)
            }
            if open < capacity {
                open += 1
                condition.unlock()
                do {
                    return (try Connection(url: url, logger: logger), false)
                } catch {
                    condition.lock(); open -= 1; condition.broadcast(); condition.unlock()
                    throw StoreError.unavailable("cannot connect to the database at \(Connection.redacted(url)): \((error as? PQError)?.message ?? "\(error)")")
                }
            }
            condition.wait()
        }
    }

    private func fresh() throws -> Connection {
        condition.lock(); open += 1; condition.unlock()
        do {
            return try Connection(url: url, logger: logger)
        } catch {
            condition.lock(); open -= 1; condition.broadcast(); condition.unlock()
            throw StoreError.unavailable("cannot connect to the database at \(Connection.redacted(url)): \((error as? PQError)?.message ?? "\(error)")")
        }
    }

    private func checkin(_ c: Connection) {
        condition.lock()
        if closed || !c.isOpen || c.inTransaction {
            open -= 1
            condition.broadcast()
            condition.unlock()
            c.close()
            return
        }
        idle.append(c)
        condition.signal()
        condition.unlock()
    }
}
