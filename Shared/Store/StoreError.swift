import Postgres
import RPC
import WinnowProto

/// Why a feature-store operation failed. Each case maps to one RPC status.
public enum StoreError: Error, CustomStringConvertible, Equatable, Sendable, RPCStatusConvertible {
    /// The request itself is wrong (bad row, bad spec, missing field): INVALID_ARGUMENT.
    case invalidArgument(String)
    /// A named thing (load, dataset, model, version) does not exist: NOT_FOUND.
    case notFound(String)
    /// The request is valid but the store's state does not allow it: FAILED_PRECONDITION.
    case failedPrecondition(String)
    /// The database cannot be reached right now; the call may be retried: UNAVAILABLE.
    case unavailable(String)
    /// The database schema was written by a newer Winnow than this binary.
    case schemaTooNew(database: Int, binary: Int)
    /// Anything else (a bug or an unexpected database error): INTERNAL.
    case internalError(String)

    public var description: String {
        switch self {
        case .invalidArgument(let m), .notFound(let m), .failedPrecondition(let m), .unavailable(let m),
             .internalError(let m):
            return m
        case let .schemaTooNew(database, binary):
            return "the database schema is version \(database), newer than this binary's \(binary); upgrade Winnow or use another database"
        }
    }

    /// The RPC status for this error.
    public var rpcError: RPCError {
        switch self {
        case .invalidArgument(let m): return RPCError(.invalidArgument, m)
        case .notFound(let m): return RPCError(.notFound, m)
        case .failedPrecondition: return RPCError(.failedPrecondition, description)
        case .schemaTooNew: return RPCError(.failedPrecondition, description)
        case .unavailable(let m): return RPCError(.unavailable, m)
        case .internalError(let m): return RPCError(.internal, m)
        }
    }

    /// Any error as a store error: database connection trouble is `unavailable`, a value the
    /// database cannot hold (SQLSTATE class 22, data exception: a number out of range, bad
    /// encoding; or a NUL in text, which the client refuses to bind) is the request's fault, `invalidArgument`; other database errors are `internalError`.
    public static func from(_ error: Error) -> StoreError {
        if let e = error as? StoreError { return e }
        if let e = error as? PQError {
            if isConnectionFailure(e) { return .unavailable("database unavailable: \(e.message)") }
            // class 22 from the server; "bind" is libpq refusing a parameter before sending it
            if e.sqlState?.hasPrefix("22") == true || (e.sqlState == nil && e.function == "bind") {
                return .invalidArgument("a value of the request cannot be stored: \(e.message)")
            }
            return .internalError("database error: \(e)")
        }
        return .internalError("\(error)")
    }

    /// Whether a database error means the connection or the server went away (retry later).
    public static func isConnectionFailure(_ e: PQError) -> Bool {
        guard let state = e.sqlState else {
            // Client-side libpq errors: a lost or refused connection.
            return e.function != "decode" && e.function != "bind" && e.function != "transaction"
        }
        return state.hasPrefix("08") || state == SQLState.adminShutdown || state == "57P02"
            || state == SQLState.cannotConnectNow
    }

    /// `value` of the request's `field` as a Postgres bigint; past 2^63 - 1 it names no stored row
    /// and is refused (INVALID_ARGUMENT) rather than trapping in the conversion.
    public static func bigint(_ value: UInt64, _ field: String) throws -> Int64 {
        guard let v = Int64(exactly: value) else {
            throw StoreError.invalidArgument("\(field) \(value) is past the largest stored value (2^63 - 1)")
        }
        return v
    }
}
