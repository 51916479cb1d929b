import Foundation
import Logging
import Postgres

/// The store's side of Postgres's `ConnectionPool`: failures become `StoreError`s, and an
/// operation that failed because the database went away runs once more — the pool drops a broken
/// connection when it comes back, so the retry gets a fresh one and the store recovers from a
/// database restart without being restarted itself. Every store operation is a transaction or
/// otherwise safe to repeat.
public final class StorePool: @unchecked Sendable {
    public let url: String
    private let pool: ConnectionPool

    public init(url: String, capacity: Int = 8, logger: Logger = Logger(label: "winnow.store.pool")) {
        self.url = url
        pool = ConnectionPool(url: url, maxConnections: capacity, logger: logger)
    }

    /// Runs `body` with a connection of its own; connection failures throw `StoreError.unavailable`.
    public func withConnection<T>(_ body: (Connection) throws -> T) throws -> T {
        do {
            return try pool.withConnection(body)
        } catch {
            guard case .unavailable = StoreError.from(error) else { throw StoreError.from(error) }
            do {
                return try pool.withConnection(body)
            } catch {
                throw StoreError.from(error)
            }
        }
    }

    /// Closes every idle connection; later calls fail with `StoreError.unavailable`.
    public func close() { pool.close() }
}
