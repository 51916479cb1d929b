import Foundation
#if canImport(Glibc)
import Glibc
import Postgres
#endif

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    /// It called `exit` with this code.
    case exited(Int32)
    /// A signal killed it.
    case signalled(Int32)
    /// It could not be started at all (`posix_spawn` failed with this errno).
    case notStarted(Int32)

    init(waitStatus status: Int32) {
        let signal = status & 0x7f
        self = signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
    }

    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signalled(let sig): return "signal \(sig)\(Self.signalName(sig).map { " (\($0))" } ?? "")"
        case .notStarted(let errno): return "not started: \(String(cString: strerror(errno)))"
        }
    }

    static func signalName(_ sig: Int32) -> String? {
        switch sig {
        case SIGKILL: return "SIGKILL"
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGSEGV: return "SIGSEGV"
        case SIGABRT: return "SIGABRT"
        case SIGILL: return "SIGILL"
        case SIGBUS: return "SIGBUS"
        case SIGTRAP: return "SIGTRAP"
        default: return nil
        }
    }
}

/// A process started with `posix_spawn`: standard input from `/dev/null`, standard output and
/// error appended to a log file, no inherited descriptors beyond those three, and its own
/// process group (or its own session), so that signals reach it and anything it starts.
///
/// Only the starting process may call ``reap()``; it waits for this pid alone, never for any
/// child, so it does not steal other children's exit statuses.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    public let startedAt: ContinuousClock.Instant
    private let lock = NSLock()
    private var status: ExitStatus?

    private init(pid: pid_t) {
        self.pid = pid
        self.startedAt = ContinuousClock.now
    }

    /// Starts `executable` (an absolute path) with `arguments` (not including argv[0]).
    ///
    /// - Parameters:
    ///   - environment: the full environment of the child.
    ///   - logFile: where stdout and stderr go (created, appended to).
    ///   - newSession: `setsid` instead of a new process group: the child survives its parent's
    ///     terminal and process group (used to detach the supervisor).
    /// - Throws: ``SpawnError`` when the process cannot be started.
    public static func spawn(executable: String, arguments: [String], environment: [String: String],
                             logFile: String, workingDirectory: String? = nil,
                             newSession: Bool = false) throws -> ChildProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logFile, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        SpawnExtensions.closeFrom(&actions, 3)
        if let workingDirectory { SpawnExtensions.changeDirectory(&actions, workingDirectory) }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Children start with default signal dispositions and an empty mask, whatever ours are.
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setsigmask(&attr, &none)
        var flags = Int32(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        if newSession {
            flags |= Int32(SpawnExtensions.setsidFlag)
        } else {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attr, 0)
        }
        posix_spawnattr_setflags(&attr, Int16(flags))

        let argv = [executable] + arguments
        let envp = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let rc = withCStrings(argv) { cargv in
            withCStrings(envp) { cenv in posix_spawn(&pid, executable, &actions, &attr, cargv, cenv) }
        }
        guard rc == 0 else { throw SpawnError(executable: executable, code: rc) }
        return ChildProcess(pid: pid)
    }

    /// The exit status once the process has ended (reaping it), `nil` while it runs.
    @discardableResult
    public func reap() -> ExitStatus? {
        lock.lock(); defer { lock.unlock() }
        if let status { return status }
        var raw: Int32 = 0
        let r = waitpid(pid, &raw, WNOHANG)
        if r == pid {
            status = ExitStatus(waitStatus: raw)
        } else if r < 0 && errno == ECHILD {
            // Reaped elsewhere (should not happen); treat as gone.
            status = .exited(-1)
        }
        return status
    }

    /// Whether the process has not ended yet.
    public var isRunning: Bool { reap() == nil }

    /// Sends `signal` to the process's group (its own group, so anything it started gets it
    /// too), or to the process alone if the group is gone. Does nothing once it is reaped.
    public func signal(_ signal: Int32) {
        lock.lock(); defer { lock.unlock() }
        guard status == nil else { return }
        if kill(-pid, signal) != 0 { kill(pid, signal) }
    }

    /// Waits up to `timeout` for the process to end, polling every 20 ms.
    public func wait(timeout: Duration) async -> ExitStatus? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let s = reap() { return s }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return reap()
    }

    private static func withCStrings<T>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) throws -> T) rethrows -> T {
        let cstrings = strings.map { strdup($0) }
        defer { cstrings.forEach { free($0) } }
        return try body(cstrings + [nil])
    }
}

/// `posix_spawn` failed.
public struct SpawnError: Error, CustomStringConvertible {
    public let executable: String
    public let code: Int32
    public var description: String { "cannot start \(executable): \(String(cString: strerror(code))) (errno \(code))" }
}
