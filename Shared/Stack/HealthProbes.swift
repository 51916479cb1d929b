import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Health probes for ``Supervisor``.
public enum HealthProbes {
    /// Ready once a TCP connection to the child's `tcp://host:port` endpoint succeeds: the
    /// process has bound its socket and accepts connections. (A ZeroMQ socket accepts the TCP
    /// connection itself; the ZMTP handshake is not attempted.)
    public static let tcpConnect: HealthProbe = { target in
        guard let (host, port) = parseTCPEndpoint(target.endpoint) else { return false }
        return canConnect(host: host, port: port, timeoutMilliseconds: 200)
    }

    /// `tcp://127.0.0.1:5555` -> ("127.0.0.1", 5555).
    public static func parseTCPEndpoint(_ endpoint: String) -> (String, Int)? {
        guard endpoint.hasPrefix("tcp://") else { return nil }
        let rest = endpoint.dropFirst("tcp://".count)
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
              port > 0, port < 65536 else { return nil }
        var host = String(rest[..<colon])
        if host == "*" || host == "0.0.0.0" { host = "127.0.0.1" }
        if host == "localhost" { host = "127.0.0.1" }
        return (host, port)
    }

    /// Whether a TCP connection to an IPv4 `host:port` completes within the timeout.
    public static func canConnect(host: String, port: Int, timeoutMilliseconds: Int32) -> Bool {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { return false }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc == 0 { return true }
        guard errno == EINPROGRESS else { return false }
        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard poll(&pfd, 1, timeoutMilliseconds) == 1 else { return false }
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
        return err == 0
    }
}
