import CZeroMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error from a libzmq call: the `errno` it left and the name of the C function.
public struct ZMQError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The `errno` value (`zmq_errno()`), e.g. `EAGAIN`, `EHOSTUNREACH`, `ETERM`.
    public let code: Int32
    /// The libzmq function that failed, e.g. `"zmq_bind"`.
    public let function: String

    public init(code: Int32, function: String) {
        self.code = code
        self.function = function
    }

    public var description: String {
        let text = String(cString: zmq_strerror(code))
        return "\(function): \(text) (errno \(code))"
    }

    /// The send would block (high-water mark reached) or nothing was there to receive.
    public var isWouldBlock: Bool { code == EAGAIN }
    /// A ROUTER with `routerMandatory` was asked to send to an identity it has no peer for.
    public var isHostUnreachable: Bool { code == EHOSTUNREACH }
    /// The context is being terminated.
    public var isTerminated: Bool { code == ETERM }
}

/// Calls a libzmq function that returns -1 on failure, retrying on `EINTR`, and turns any other
/// failure into a `ZMQError` that names the function (the NIO `syscall` pattern).
@discardableResult
@inline(__always)
func zmqCall(_ function: @autoclosure () -> String, _ body: () -> Int32) throws -> Int32 {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = zmq_errno()
        if code == EINTR { continue }
        throw ZMQError(code: code, function: function())
    }
}

/// As `zmqCall`, for functions returning a pointer (NULL on failure).
@inline(__always)
func zmqPointerCall(_ function: @autoclosure () -> String, _ body: () -> UnsafeMutableRawPointer?) throws -> UnsafeMutableRawPointer {
    while true {
        if let pointer = body() { return pointer }
        let code = zmq_errno()
        if code == EINTR { continue }
        throw ZMQError(code: code, function: function())
    }
}
