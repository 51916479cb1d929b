import WinnowProto

/// The status of a failed call: a gRPC status code and a human-readable message.
public struct RPCError: Error, CustomStringConvertible, Equatable, Sendable {
    public let code: Winnow_V1_StatusCode
    public let message: String

    public init(_ code: Winnow_V1_StatusCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public init(code: Winnow_V1_StatusCode, message: String) {
        self.init(code, message)
    }

    public var description: String { "\(code.name): \(message)" }

    public static func invalidArgument(_ message: String) -> RPCError { RPCError(.invalidArgument, message) }
    public static func notFound(_ message: String) -> RPCError { RPCError(.notFound, message) }
    public static func unimplemented(_ message: String) -> RPCError { RPCError(.unimplemented, message) }
    public static func unavailable(_ message: String) -> RPCError { RPCError(.unavailable, message) }
    public static func internalError(_ message: String) -> RPCError { RPCError(.internal, message) }
    public static func failedPrecondition(_ message: String) -> RPCError { RPCError(.failedPrecondition, message) }
    public static func resourceExhausted(_ message: String) -> RPCError { RPCError(.resourceExhausted, message) }
}

/// An error of a library beneath a service that knows its own status (the feature store's
/// NOT_FOUND, INVALID_ARGUMENT, …): a handler may throw it as is, and the server answers with it.
public protocol RPCStatusConvertible: Error {
    var rpcError: RPCError { get }
}

extension Winnow_V1_StatusCode {
    /// The gRPC spelling, e.g. `DEADLINE_EXCEEDED`.
    public var name: String {
        switch self {
        case .ok: return "OK"
        case .cancelled: return "CANCELLED"
        case .unknown: return "UNKNOWN"
        case .invalidArgument: return "INVALID_ARGUMENT"
        case .deadlineExceeded: return "DEADLINE_EXCEEDED"
        case .notFound: return "NOT_FOUND"
        case .alreadyExists: return "ALREADY_EXISTS"
        case .permissionDenied: return "PERMISSION_DENIED"
        case .resourceExhausted: return "RESOURCE_EXHAUSTED"
        case .failedPrecondition: return "FAILED_PRECONDITION"
        case .aborted: return "ABORTED"
        case .outOfRange: return "OUT_OF_RANGE"
        case .unimplemented: return "UNIMPLEMENTED"
        case .internal: return "INTERNAL"
        case .unavailable: return "UNAVAILABLE"
        case .dataLoss: return "DATA_LOSS"
        case .unauthenticated: return "UNAUTHENTICATED"
        case .UNRECOGNIZED(let value): return "UNRECOGNIZED(\(value))"
        }
    }
}
