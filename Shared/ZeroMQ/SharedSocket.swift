import CZeroMQ
import Foundation

/// A socket used from several threads without handing messages to an I/O thread: senders send
/// directly under a lock, and one thread waits for input on the socket's `ZMQ_FD` and drains it.
///
/// `ZMQ_FD` is edge-triggered and only says "look at ZMQ_EVENTS": a send or receive can consume
/// its signal. So a send checks `ZMQ_EVENTS` afterwards and reports whether input is waiting (the
/// caller then wakes the receiving thread), and the receiving thread calls `receiveOne` until it
/// returns nil.
public final class ZMQSharedSocket: @unchecked Sendable {
    private let socket: ZMQSocket
    private let lock = NSLock()
    private var closed = false
    /// The descriptor to poll (for `.pollIn`) before calling `receiveOne`.
    public let fileDescriptor: Int32

    public init(_ socket: ZMQSocket) throws {
        self.socket = socket
        var fd: Int32 = 0
        var size = MemoryLayout<Int32>.size
        guard let handle = socket.handle else { throw ZMQError(code: ENOTSOCK, function: "zmq_getsockopt(ZMQ_FD)") }
        try zmqCall("zmq_getsockopt(ZMQ_FD)") { zmq_getsockopt(handle, ZMQ_FD, &fd, &size) }
        fileDescriptor = fd
    }

    /// Sends a message without blocking. `sent` is false when the send queue is full; `readable`
    /// says input is waiting, which the receiving thread must be woken for. The receiving thread
    /// itself, about to receive again anyway, passes `checkReadable: false` and saves the
    /// `ZMQ_EVENTS` query (a `getpid` and a `poll`); `readable` is then false.
    public func send(multipart frames: [Frame], checkReadable: Bool = true) throws -> (sent: Bool, readable: Bool) {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw ZMQError(code: ENOTSOCK, function: "zmq_send") }
        let sent = try socket.send(multipart: frames, flags: .dontWait)
        return (sent, checkReadable ? try readableLocked() : false)
    }

    /// Receives one message if one is waiting; nil when none is (which also re-arms the
    /// edge-triggered descriptor) or the socket is closed.
    public func receiveOne() throws -> [Frame]? {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return nil }
        return try socket.receiveMultipart(flags: .dontWait)
    }

    private func readableLocked() throws -> Bool {
        try socket.getInt32Option(ZMQ_EVENTS) & ZMQ_POLLIN != 0
    }

    /// Runs `body` with the socket under the lock (for options, binding, unbinding).
    public func withSocket<T>(_ body: (ZMQSocket) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(socket)
    }

    public func close() {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        socket.close()
    }
}
