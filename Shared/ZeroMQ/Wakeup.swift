#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A non-blocking pipe that lets other threads wake a thread blocked in `zmq_poll`: poll
/// `fileDescriptor` for `.pollIn`, `signal()` from any thread, `drain()` after waking.
public final class ZMQWakeup: @unchecked Sendable {
    /// The read end, to poll.
    public let fileDescriptor: Int32
    private let writeEnd: Int32

    public init() throws {
        var fds: [Int32] = [0, 0]
        if pipe(&fds) != 0 { throw ZMQError(code: errno, function: "pipe") }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        fileDescriptor = fds[0]
        writeEnd = fds[1]
    }

    deinit {
        close(fileDescriptor)
        close(writeEnd)
    }

    /// Wakes the polling thread. A full pipe already means a wake-up is pending, so EAGAIN is fine.
    public func signal() {
        var one: UInt8 = 1
        while write(writeEnd, &one, 1) < 0 && errno == EINTR {}
    }

    /// Clears pending signals.
    public func drain() {
        var buffer = [UInt8](repeating: 0, count: 256)
        while true {
            let n = read(fileDescriptor, &buffer, buffer.count)
            if n == buffer.count { continue }
            if n < 0 && errno == EINTR { continue }
            return
        }
    }
}
