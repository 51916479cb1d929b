#if canImport(Glibc)
import Glibc
#endif

/// TCP ports on 127.0.0.1: whether one is free, and a fresh ephemeral one.
public enum LoopbackPort {
    /// Whether nothing listens on `127.0.0.1:port` (a bind with `SO_REUSEADDR` succeeds, as a
    /// server's would; connections lingering in TIME_WAIT do not count as in use).
    public static func isAvailable(_ port: Int) -> Bool {
        guard port > 0 && port < 65536 else { return false }
        return (try? bound(port: port)) != nil
    }

    /// A port the kernel picked from its ephemeral range and that is free right now. Another
    /// process may take it before it is used; callers that bind it should handle that.
    public static func ephemeral() throws -> Int {
        try bound(port: 0)
    }

    /// Binds a TCP socket to 127.0.0.1:port, reads back the port, closes it.
    private static func bound(port: Int) throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PortError(function: "socket", code: errno) }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw PortError(function: "bind", code: errno) }
        guard listen(fd, 1) == 0 else { throw PortError(function: "listen", code: errno) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let grc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard grc == 0 else { throw PortError(function: "getsockname", code: errno) }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// A socket call that failed while probing a port.
    public struct PortError: Error, CustomStringConvertible {
        public let function: String
        public let code: Int32
        public var description: String { "\(function): \(String(cString: strerror(code))) (errno \(code))" }
    }
}
