import Foundation
import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// Controls a stack from outside its supervisor: `winnow up` (launch the supervisor detached,
/// wait until it is ready) and `winnow down` (stop it and wait until everything is gone).
public enum StackControl {
    /// Why `up` could not bring the stack up.
    public enum Failure: Error, CustomStringConvertible {
        /// The supervisor exited before the stack was ready.
        case supervisorExited(ExitStatus, message: String?, logTail: String)
        /// It was not ready within the time allowed (it keeps trying in the background).
        case notReadyInTime(Duration, logTail: String)

        public var description: String {
            switch self {
            case .supervisorExited(let status, let message, let tail):
                return "the stack did not come up (supervisor \(status)): \(message ?? "no reason recorded")\n--- supervisor log ---\n\(tail)"
            case .notReadyInTime(let timeout, let tail):
                return "the stack was not ready after \(timeout); it is still starting in the background (`winnow down` stops it)\n--- supervisor log ---\n\(tail)"
            }
        }
    }

    /// The pid written in `<state>/supervisor.pid`, if any.
    public static func pidFromFile(_ layout: StackLayout) -> Int32? {
        guard let s = try? String(contentsOfFile: layout.pidFile, encoding: .utf8) else { return nil }
        return Int32(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Whether a live supervisor holds the state directory's lock.
    public static func isUp(_ layout: StackLayout) -> Bool {
        let fd = open(layout.lockFile, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return false
        }
        return errno == EWOULDBLOCK
    }

    /// Starts `executable arguments` (the `winnow supervise ...` command) in a new session,
    /// detached from our terminal, with its output appended to `<state>/logs/supervisor.log`.
    public static func launchDetached(executable: String, arguments: [String], layout: StackLayout) throws -> ChildProcess {
        try FileManager.default.createDirectory(atPath: layout.logDirectory, withIntermediateDirectories: true)
        return try ChildProcess.spawn(executable: executable, arguments: arguments,
                                      environment: ProcessInfo.processInfo.environment,
                                      logFile: layout.supervisorLog, newSession: true)
    }

    /// Waits until the supervisor started as `supervisor` reports the stack ready, and returns
    /// its record. Throws when it exits first or `timeout` passes.
    public static func waitUntilUp(_ layout: StackLayout, supervisor: ChildProcess, timeout: Duration) async throws -> StackRecord {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = supervisor.reap() {
                let record = StackRecord.load(layout)
                throw Failure.supervisorExited(status, message: record?.supervisorPID == supervisor.pid ? record?.message : nil,
                                               logTail: tail(layout.supervisorLog))
            }
            if let record = StackRecord.load(layout), record.supervisorPID == supervisor.pid, record.phase == .ready {
                return record
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw Failure.notReadyInTime(timeout, logTail: tail(layout.supervisorLog))
    }

    /// What `down` found and did.
    public struct DownReport: Sendable {
        /// A supervisor was running.
        public var supervisorPID: Int32?
        /// It had to be killed (it did not stop within the time allowed).
        public var supervisorKilled = false
        /// Children left running without a supervisor that were stopped here.
        public var orphansStopped: [String] = []
        /// The embedded Postgres had to be stopped here.
        public var postgresStopped = false
        /// Nothing was running.
        public var wasDown: Bool { supervisorPID == nil && orphansStopped.isEmpty && !postgresStopped }
    }

    /// Stops the stack on this state directory and waits until its supervisor, every child and
    /// the embedded Postgres are gone. A supervisor that does not finish within `timeout` is
    /// killed; children and Postgres left behind by a dead supervisor are stopped directly.
    public static func down(_ layout: StackLayout, timeout: Duration = .seconds(90), grace: Duration = .seconds(10)) async -> DownReport {
        var report = DownReport()
        if isUp(layout) {
            let pid = pidFromFile(layout)
            report.supervisorPID = pid
            if let pid { kill(pid, SIGTERM) }
            let deadline = ContinuousClock.now + timeout
            while isUp(layout) && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(50))
            }
            if isUp(layout), let pid {
                kill(pid, SIGKILL)
                report.supervisorKilled = true
                while isUp(layout) { try? await Task.sleep(for: .milliseconds(20)) }
            }
            // The lock is released just before the supervisor exits; wait for the exit itself.
            if let pid {
                let gone = ContinuousClock.now + .seconds(5)
                while isAlive(pid) && ContinuousClock.now < gone { try? await Task.sleep(for: .milliseconds(20)) }
            }
        }
        // Leftovers of a supervisor that died without stopping its children.
        guard var record = StackRecord.load(layout) else { return report }
        var orphans: [(String, Int32)] = []
        for child in record.children {
            guard let pid = child.pid, isAlive(pid), runs(pid, child.executable) else { continue }
            kill(-pid, SIGTERM)
            kill(pid, SIGTERM)
            orphans.append((child.name, pid))
        }
        let deadline = ContinuousClock.now + grace
        while orphans.contains(where: { isAlive($0.1) }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for (_, pid) in orphans where isAlive(pid) {
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
        }
        report.orphansStopped = orphans.map(\.0)
        if record.database?.embedded ?? true {
            let pg = EmbeddedPostgres(.init(stateDirectory: layout.stateDirectory, port: record.database?.port ?? 0))
            if pg.isRunning {
                do {
                    try pg.stop()
                    report.postgresStopped = true
                } catch {
                    try? pg.stop(mode: .immediate)
                    report.postgresStopped = !pg.isRunning
                }
            }
        }
        if !report.orphansStopped.isEmpty || report.postgresStopped || report.supervisorKilled {
            record.phase = .stopped
            for i in record.children.indices { record.children[i].pid = nil; record.children[i].state = .stopped }
            record.database?.pid = nil
            record.database?.ready = false
            record.updated = Date()
            try? record.save(layout)
            unlink(layout.pidFile)
        }
        return report
    }

    /// Whether `pid` exists and is not a zombie.
    public static func isAlive(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    /// The executable `pid` runs (`/proc/<pid>/exe`), if readable.
    static func executable(of pid: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether `pid` runs `executable`: its `/proc/<pid>/exe`, or (for a script run through an
    /// interpreter) one of its first two arguments, names it. Guards against signalling a
    /// process that reused a recorded pid.
    static func runs(_ pid: Int32, _ executable: String) -> Bool {
        let target = resolved(executable)
        if Self.executable(of: pid) == target { return true }
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let args = data.split(separator: 0).prefix(2).map { String(decoding: $0, as: UTF8.self) }
        return args.contains { $0 == executable || resolved($0) == target }
    }

    /// `path` with symlinks resolved, as `/proc/<pid>/exe` shows it.
    static func resolved(_ path: String) -> String {
        guard let p = realpath(path, nil) else { return path }
        defer { free(p) }
        return String(cString: p)
    }

    /// The last lines of a log file.
    public static func tail(_ path: String, lines: Int = 25) -> String {
        guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return "(no log at \(path))" }
        return s.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }
}
