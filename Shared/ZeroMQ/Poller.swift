import CZeroMQ

/// Events a poll item waits for or reports.
public struct ZMQPollEvents: OptionSet, Sendable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    public static let pollIn = ZMQPollEvents(rawValue: Int16(ZMQ_POLLIN))
    public static let pollOut = ZMQPollEvents(rawValue: Int16(ZMQ_POLLOUT))
}

/// A set of sockets and plain file descriptors waited on together with `zmq_poll`.
///
/// Items are fixed at construction; `poll` returns the events seen per item, in order.
public struct ZMQPoller {
    public enum Item {
        case socket(ZMQSocket, ZMQPollEvents)
        case fileDescriptor(Int32, ZMQPollEvents)
    }

    private var items: [zmq_pollitem_t]
    private let sockets: [ZMQSocket?] // keeps the sockets alive while polled

    public init(_ items: [Item]) {
        var raw: [zmq_pollitem_t] = []
        var sockets: [ZMQSocket?] = []
        for item in items {
            switch item {
            case let .socket(socket, events):
                raw.append(zmq_pollitem_t(socket: socket.handle, fd: 0, events: events.rawValue, revents: 0))
                sockets.append(socket)
            case let .fileDescriptor(fd, events):
                raw.append(zmq_pollitem_t(socket: nil, fd: fd, events: events.rawValue, revents: 0))
                sockets.append(nil)
            }
        }
        self.items = raw
        self.sockets = sockets
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever, 0: do not wait). Returns the events seen
    /// for each item, in the order given. An interrupted wait (`EINTR`) returns no events.
    public mutating func poll(timeoutMilliseconds: Int) throws -> [ZMQPollEvents] {
        let count = Int32(items.count)
        let result = items.withUnsafeMutableBufferPointer { buffer in
            zmq_poll(buffer.baseAddress, count, timeoutMilliseconds)
        }
        if result == -1 {
            let code = zmq_errno()
            if code == EINTR { return Array(repeating: [], count: items.count) }
            throw ZMQError(code: code, function: "zmq_poll")
        }
        return items.map { ZMQPollEvents(rawValue: $0.revents) }
    }
}
