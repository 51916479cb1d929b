import CZeroMQ

/// A libzmq context: owns the I/O threads behind every socket made from it.
///
/// Most processes need one; `ZMQContext.shared` is created on first use and lives for the
/// process. A context made with `init` is terminated by `terminate()` (which blocks until every
/// socket made from it is closed) or when it is deinitialised.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    private var terminated = false

    /// The process-wide context (one I/O thread).
    public static let shared: ZMQContext = {
        // zmq_ctx_new only fails when the process is out of file descriptors or memory.
        guard let context = try? ZMQContext(ioThreads: 1) else {
            preconditionFailure("zmq_ctx_new failed: \(ZMQError(code: zmq_errno(), function: "zmq_ctx_new"))")
        }
        return context
    }()

    public init(ioThreads: Int32 = 1) throws {
        handle = try zmqPointerCall("zmq_ctx_new") { zmq_ctx_new() }
        try zmqCall("zmq_ctx_set") { zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads) }
        // Do not block termination on unsent messages of sockets someone forgot to close.
        try zmqCall("zmq_ctx_set") { zmq_ctx_set(handle, ZMQ_BLOCKY, 0) }
    }

    /// Terminates the context; blocks until all its sockets are closed.
    public func terminate() {
        guard !terminated else { return }
        terminated = true
        _ = try? zmqCall("zmq_ctx_term") { zmq_ctx_term(handle) }
    }

    deinit { terminate() }
}
