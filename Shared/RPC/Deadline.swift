#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Wall-clock time in microseconds since the Unix epoch: the unit of deadlines on the wire, so a
/// deadline means the same instant in every process on the machine.
public enum WallClock {
    public static func nowMicros() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1_000
    }
}

extension Duration {
    /// The duration in whole microseconds (rounded toward zero).
    public var microseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}

/// What a handler knows about the call it serves. Set by the server around every handler; read by
/// `RPCClient.call`, so a nested call made while serving inherits the caller's deadline.
public enum RPCContext {
    /// Absolute deadline of the call being served (unix microseconds), nil when it has none.
    @TaskLocal public static var deadlineMicros: Int64?
    /// Metadata of the request being served.
    @TaskLocal public static var metadata: [String: String] = [:]

    /// Microseconds left before the current deadline, nil when there is none.
    public static var remainingMicros: Int64? {
        deadlineMicros.map { $0 - WallClock.nowMicros() }
    }
}

/// Runs an async call to completion from a plain thread (a job's worker thread, which is not a
/// task) and returns its value or throws its error.
public func blocking<T>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var outcome: Result<T, Error>? = nil
    Task {
        do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
        done.signal()
    }
    done.wait()
    return try outcome!.get()
}
