import CZeroMQ

/// The libzmq socket types Winnow uses.
public enum ZMQSocketType: Sendable {
    case router, dealer, req, rep, pair, push, pull, pub, sub

    var raw: Int32 {
        switch self {
        case .router: return ZMQ_ROUTER
        case .dealer: return ZMQ_DEALER
        case .req: return ZMQ_REQ
        case .rep: return ZMQ_REP
        case .pair: return ZMQ_PAIR
        case .push: return ZMQ_PUSH
        case .pull: return ZMQ_PULL
        case .pub: return ZMQ_PUB
        case .sub: return ZMQ_SUB
        }
    }
}

/// Flags for one send or receive.
public struct ZMQFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// Fail with `EAGAIN` instead of blocking.
    public static let dontWait = ZMQFlags(rawValue: ZMQ_DONTWAIT)
    /// More frames of the same message follow.
    public static let sendMore = ZMQFlags(rawValue: ZMQ_SNDMORE)
}

/// One frame of a multipart message.
public typealias Frame = [UInt8]

/// A libzmq socket.
///
/// Not thread-safe, as libzmq sockets are not: use a socket from one thread at a time (handing it
/// to another thread with a lock or queue in between is fine). `close()` is idempotent and is
/// called on deinit.
public final class ZMQSocket: @unchecked Sendable {
    public private(set) var handle: UnsafeMutableRawPointer?
    public let type: ZMQSocketType

    public init(_ type: ZMQSocketType, context: ZMQContext = .shared) throws {
        self.type = type
        handle = try zmqPointerCall("zmq_socket") { zmq_socket(context.handle, type.raw) }
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { close() }

    /// Closes the socket (pending outgoing messages are discarded: linger is 0).
    public func close() {
        guard let handle else { return }
        zmq_close(handle)
        self.handle = nil
    }

    private func live(_ function: String) throws -> UnsafeMutableRawPointer {
        guard let handle else { throw ZMQError(code: ENOTSOCK, function: function) }
        return handle
    }

    // MARK: endpoints

    public func bind(_ endpoint: String) throws {
        let socket = try live("zmq_bind")
        try zmqCall("zmq_bind(\(endpoint))") { zmq_bind(socket, endpoint) }
    }

    public func connect(_ endpoint: String) throws {
        let socket = try live("zmq_connect")
        try zmqCall("zmq_connect(\(endpoint))") { zmq_connect(socket, endpoint) }
    }

    public func unbind(_ endpoint: String) throws {
        let socket = try live("zmq_unbind")
        try zmqCall("zmq_unbind(\(endpoint))") { zmq_unbind(socket, endpoint) }
    }

    public func disconnect(_ endpoint: String) throws {
        let socket = try live("zmq_disconnect")
        try zmqCall("zmq_disconnect(\(endpoint))") { zmq_disconnect(socket, endpoint) }
    }

    /// The endpoint last bound, with the port resolved when it was bound with `*`.
    public var lastEndpoint: String {
        get throws {
            var buffer = [CChar](repeating: 0, count: 256)
            var size = buffer.count
            let socket = try live("zmq_getsockopt")
            try zmqCall("zmq_getsockopt(ZMQ_LAST_ENDPOINT)") {
                zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, &buffer, &size)
            }
            return String(cString: buffer)
        }
    }

    // MARK: options

    public func setOption(_ option: Int32, _ value: Int32) throws {
        var value = value
        let socket = try live("zmq_setsockopt")
        try zmqCall("zmq_setsockopt(\(option))") {
            zmq_setsockopt(socket, option, &value, MemoryLayout<Int32>.size)
        }
    }

    public func setOption(_ option: Int32, _ value: Int64) throws {
        var value = value
        let socket = try live("zmq_setsockopt")
        try zmqCall("zmq_setsockopt(\(option))") {
            zmq_setsockopt(socket, option, &value, MemoryLayout<Int64>.size)
        }
    }

    public func setOption(_ option: Int32, bytes: [UInt8]) throws {
        let socket = try live("zmq_setsockopt")
        _ = try bytes.withUnsafeBytes { raw in
            try zmqCall("zmq_setsockopt(\(option))") {
                zmq_setsockopt(socket, option, raw.baseAddress, raw.count)
            }
        }
    }

    public func getInt32Option(_ option: Int32) throws -> Int32 {
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        let socket = try live("zmq_getsockopt")
        try zmqCall("zmq_getsockopt(\(option))") { zmq_getsockopt(socket, option, &value, &size) }
        return value
    }

    /// The routing id a ROUTER peer sees for this socket.
    public func setRoutingID(_ id: [UInt8]) throws { try setOption(ZMQ_ROUTING_ID, bytes: id) }
    /// Frames larger than this (bytes) make libzmq drop the connection of the peer that sent them.
    public func setMaxMessageSize(_ bytes: Int64) throws { try setOption(ZMQ_MAXMSGSIZE, bytes) }
    /// Messages queued per peer before sends block or fail.
    public func setHighWaterMarks(send: Int32, receive: Int32) throws {
        try setOption(ZMQ_SNDHWM, send)
        try setOption(ZMQ_RCVHWM, receive)
    }
    /// ROUTER only: fail with `EHOSTUNREACH` rather than silently drop a message to an unknown peer.
    public func setRouterMandatory(_ on: Bool) throws { try setOption(ZMQ_ROUTER_MANDATORY, Int32(on ? 1 : 0)) }
    /// ROUTER only: a new connection with a routing id already in use takes it over.
    public func setRouterHandover(_ on: Bool) throws { try setOption(ZMQ_ROUTER_HANDOVER, Int32(on ? 1 : 0)) }
    /// Queue messages only to completed connections.
    public func setImmediate(_ on: Bool) throws { try setOption(ZMQ_IMMEDIATE, Int32(on ? 1 : 0)) }
    /// How long a blocking receive waits before failing with `EAGAIN` (-1: forever).
    public func setReceiveTimeout(milliseconds: Int32) throws { try setOption(ZMQ_RCVTIMEO, milliseconds) }
    public func setReconnectInterval(milliseconds: Int32, max: Int32) throws {
        try setOption(ZMQ_RECONNECT_IVL, milliseconds)
        try setOption(ZMQ_RECONNECT_IVL_MAX, max)
    }

    // MARK: send and receive

    /// Sends one frame. Returns false when `.dontWait` was given and the send would block.
    @discardableResult
    public func send(_ frame: UnsafeRawBufferPointer, flags: ZMQFlags = []) throws -> Bool {
        let socket = try live("zmq_send")
        do {
            try zmqCall("zmq_send") { zmq_send(socket, frame.baseAddress, frame.count, flags.rawValue) }
            return true
        } catch let error as ZMQError where error.isWouldBlock && flags.contains(.dontWait) {
            return false
        }
    }

    /// Frames at least this large are sent without copying (libzmq keeps a reference to the
    /// array's storage until it has written it); smaller ones are copied, which is cheaper.
    public static let zeroCopyThreshold = 32 << 10

    /// Sends one frame. Returns false when `.dontWait` was given and the send would block.
    @discardableResult
    public func send(_ frame: Frame, flags: ZMQFlags = []) throws -> Bool {
        if frame.count < ZMQSocket.zeroCopyThreshold {
            return try frame.withUnsafeBytes { try send($0, flags: flags) }
        }
        let socket = try live("zmq_msg_send")
        // The box keeps the (immutable) array alive; libzmq releases it through the free function
        // once the bytes are on the wire. A native array's storage does not move while retained
        // and unmutated, so the pointer stays valid after withUnsafeBytes returns.
        let box = FrameBox(frame)
        let retained = Unmanaged.passRetained(box).toOpaque()
        let data = box.frame.withUnsafeBytes { UnsafeMutableRawPointer(mutating: $0.baseAddress!) }
        var message = zmq_msg_t()
        guard zmq_msg_init_data(&message, data, frame.count, releaseFrameBox, retained) == 0 else {
            Unmanaged<FrameBox>.fromOpaque(retained).release()
            throw ZMQError(code: zmq_errno(), function: "zmq_msg_init_data")
        }
        do {
            try zmqCall("zmq_msg_send") { zmq_msg_send(&message, socket, flags.rawValue) }
            return true
        } catch let error as ZMQError {
            zmq_msg_close(&message) // releases the box
            if error.isWouldBlock && flags.contains(.dontWait) { return false }
            throw error
        }
    }

    /// Sends a multipart message atomically (libzmq delivers all frames or none).
    /// Returns false when `.dontWait` was given and the first frame would block.
    @discardableResult
    public func send(multipart frames: [Frame], flags: ZMQFlags = []) throws -> Bool {
        precondition(!frames.isEmpty, "a message has at least one frame")
        for (index, frame) in frames.enumerated() {
            let more: ZMQFlags = index < frames.count - 1 ? .sendMore : []
            // Only the first frame can hit the high-water mark; later frames of the same
            // message are always accepted.
            if !(try send(frame, flags: flags.union(more))) { return false }
        }
        return true
    }

    /// Receives one whole multipart message; nil when none came: `.dontWait` was given and none
    /// is waiting, or the receive timeout (`setReceiveTimeout`) passed.
    public func receiveMultipart(flags: ZMQFlags = []) throws -> [Frame]? {
        let socket = try live("zmq_msg_recv")
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        // Nothing waiting is how every drain of a receiving thread ends (once per message), so
        // it is answered without building and catching an error.
        while zmq_msg_recv(&message, socket, flags.rawValue) == -1 {
            let code = zmq_errno()
            if code == EINTR { continue }
            if code == EAGAIN { return nil }
            throw ZMQError(code: code, function: "zmq_msg_recv")
        }
        var frames: [Frame] = []
        frames.reserveCapacity(4) // Winnow's messages have 2 to 4 frames
        while true {
            let size = zmq_msg_size(&message)
            if size == 0 {
                frames.append([])
            } else {
                let data = zmq_msg_data(&message)!
                // One memcpy: Frame(UnsafeRawBufferPointer) goes through the generic sequence
                // initialiser, byte by byte wherever it is not specialised (a debug build took
                // 15 s of the broker's CPU for one 64 MB frame).
                frames.append(Frame(unsafeUninitializedCapacity: size) { buffer, count in
                    buffer.baseAddress!.update(from: data.assumingMemoryBound(to: UInt8.self), count: size)
                    count = size
                })
            }
            if zmq_msg_more(&message) == 0 { return frames }
            try zmqCall("zmq_msg_recv") { zmq_msg_recv(&message, socket, 0) }
        }
    }
}

/// Holds a frame's storage while libzmq sends it without copying.
final class FrameBox {
    let frame: Frame
    init(_ frame: Frame) { self.frame = frame }
}

private func releaseFrameBox(_ data: UnsafeMutableRawPointer?, _ hint: UnsafeMutableRawPointer?) {
    guard let hint else { return }
    Unmanaged<FrameBox>.fromOpaque(hint).release()
}
