import Foundation
import XCTest
@testable import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// A fresh state directory under the temp dir, removed by `remove()`.
final class TemporaryStateDirectory {
    let path: String

    init(_ label: String = "test") {
        let template = NSTemporaryDirectory() + "winnow-\(label)-XXXXXX"
        var bytes = Array(template.utf8CString)
        let made = bytes.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed: \(String(cString: strerror(errno)))")
        path = String(cString: bytes)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A TCP listener on 127.0.0.1 held open by the test, to occupy a port (`port`, or one the
/// kernel picks).
final class PortSquatter {
    let fd: Int32
    let port: Int

    init(port: Int = 0) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 4) == 0 else { close(fd); throw LoopbackPort.PortError(function: "bind/listen", code: errno) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: addr.sin_port))
    }

    deinit { close(fd) }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
func eventually(timeout: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    } while Date() < deadline
    return try condition()
}
