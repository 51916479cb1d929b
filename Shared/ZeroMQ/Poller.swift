import CZeroMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
    /// Set when every item is a plain descriptor: then the OS's poll is called directly, because
    /// zmq_poll always makes a first zero-timeout pass before it waits (one system call more per
    /// wake-up, on every message of a server's or client's receiving thread).
    private var descriptors: [pollfd]?

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
        if sockets.allSatisfy({ $0 == nil }) {
            descriptors = raw.map { pollfd(fd: $0.fd, events: Self.systemEvents($0.events), revents: 0) }
        }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever, 0: do not wait). Returns the events seen
    /// for each item, in the order given. An interrupted wait (`EINTR`) returns no events.
    public mutating func poll(timeoutMilliseconds: Int) throws -> [ZMQPollEvents] {
        try wait(timeoutMilliseconds: timeoutMilliseconds)
        return (0..<itemCount).map { events(at: $0) }
    }

    /// As `poll`, keeping the events for `events(at:)` instead of returning an array: the
    /// receiving threads of servers and clients wait once per message and allocate nothing here.
    public mutating func wait(timeoutMilliseconds: Int) throws {
        if descriptors != nil { return try waitOnDescriptors(timeoutMilliseconds: timeoutMilliseconds) }
        let count = Int32(items.count)
        let result = items.withUnsafeMutableBufferPointer { buffer in
            zmq_poll(buffer.baseAddress, count, timeoutMilliseconds)
        }
        if result == -1 {
            let code = zmq_errno()
            if code == EINTR { return clearEvents() }
            throw ZMQError(code: code, function: "zmq_poll")
        }
    }

    /// The events the last wait saw for item `index`.
    public func events(at index: Int) -> ZMQPollEvents {
        if let descriptors { return Self.zmqEvents(descriptors[index].revents) }
        return ZMQPollEvents(rawValue: items[index].revents)
    }

    /// The number of items polled.
    public var itemCount: Int { items.count }

    private mutating func waitOnDescriptors(timeoutMilliseconds: Int) throws {
        let result = descriptors!.withUnsafeMutableBufferPointer { buffer in
            systemPoll(buffer.baseAddress, nfds_t(buffer.count), Int32(clamping: timeoutMilliseconds))
        }
        if result == -1 {
            if errno == EINTR { return clearEvents() }
            throw ZMQError(code: errno, function: "poll")
        }
    }

    private mutating func clearEvents() {
        for index in items.indices { items[index].revents = 0 }
        if descriptors != nil {
            for index in descriptors!.indices { descriptors![index].revents = 0 }
        }
    }

    // libzmq's event bits are its own (ZMQ_POLLOUT is 2, the OS's POLLOUT 4): translate both ways.
    private static func systemEvents(_ events: Int16) -> Int16 {
        var out: Int32 = 0
        if Int32(events) & ZMQ_POLLIN != 0 { out |= Int32(POLLIN) }
        if Int32(events) & ZMQ_POLLOUT != 0 { out |= Int32(POLLOUT) }
        return Int16(out)
    }

    private static func zmqEvents(_ revents: Int16) -> ZMQPollEvents {
        var out: ZMQPollEvents = []
        if Int32(revents) & Int32(POLLIN) != 0 { out.insert(.pollIn) }
        if Int32(revents) & Int32(POLLOUT) != 0 { out.insert(.pollOut) }
        // A closed or failed descriptor reads as input, so the caller looks and finds out.
        if Int32(revents) & Int32(POLLERR | POLLHUP | POLLNVAL) != 0 { out.insert(.pollIn) }
        return out
    }
}

/// The OS's poll, under a name the poller's own `poll` method does not shadow.
private func systemPoll(_ fds: UnsafeMutablePointer<pollfd>?, _ count: nfds_t, _ timeout: Int32) -> Int32 {
    poll(fds, count, timeout)
}
