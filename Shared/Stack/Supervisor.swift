import Foundation
import Logging
import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// One process the supervisor keeps running.
public struct ChildSpec: Sendable, Equatable {
    /// Unique within the stack; names the log file (`<logs>/<name>.log`), e.g. `teacher-2`.
    public var name: String
    /// The service name it registers with the broker under, e.g. `teacher`.
    public var service: String
    /// Absolute path of the executable.
    public var executable: String
    public var arguments: [String]
    /// Added to (and overriding) the supervisor's own environment.
    public var environment: [String: String]
    /// Where it can be reached directly (shown in the table, used by health probes).
    public var endpoint: String
    /// Children of a stage start only once every child of the earlier stages is ready; they stop
    /// in the reverse order.
    public var stage: Int
    /// The endpoint is `tcp://127.0.0.1:PORT` on a port the stack picked, and nothing else is
    /// told that port (other processes find the child through the broker). When another process
    /// holds the port as the child is (re)started, the supervisor moves the child to a fresh port,
    /// rewriting the argument equal to ``endpoint``, instead of restarting it into the same
    /// failed bind for ever.
    public var endpointPortMayMove: Bool

    public init(name: String, service: String, executable: String, arguments: [String] = [],
                environment: [String: String] = [:], endpoint: String = "", stage: Int = 0,
                endpointPortMayMove: Bool = false) {
        self.name = name
        self.service = service
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.endpoint = endpoint
        self.stage = stage
        self.endpointPortMayMove = endpointPortMayMove
    }

    /// The port of a loopback TCP endpoint.
    var loopbackPort: Int? {
        HealthProbes.parseTCPEndpoint(endpoint).flatMap { host, port in host == "127.0.0.1" ? port : nil }
    }
}

/// When a child that ended is started again: after `initialBackoff`, doubling (×`multiplier`)
/// with each consecutive failure up to `maxBackoff`; a child that ran at least `stableAfter`
/// before ending starts again from `initialBackoff`.
public struct RestartPolicy: Sendable, Equatable {
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    public var multiplier: Double
    public var stableAfter: Duration

    public init(initialBackoff: Duration = .milliseconds(500), maxBackoff: Duration = .seconds(30),
                multiplier: Double = 2, stableAfter: Duration = .seconds(30)) {
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.multiplier = multiplier
        self.stableAfter = stableAfter
    }

    /// The wait before restart number `consecutiveFailures` (1 = first failure in a row).
    public func delay(consecutiveFailures: Int) -> Duration {
        let n = max(1, consecutiveFailures)
        let seconds = Double(initialBackoff.components.seconds) + Double(initialBackoff.components.attoseconds) / 1e18
        let maxSeconds = Double(maxBackoff.components.seconds) + Double(maxBackoff.components.attoseconds) / 1e18
        let d = min(seconds * pow(multiplier, Double(n - 1)), maxSeconds)
        return .nanoseconds(Int64(d * 1e9))
    }
}

/// A child's place in its life cycle.
public enum ChildState: String, Sendable, Codable {
    /// Started; its health probe has not answered yet.
    case starting
    /// Its health probe answered.
    case ready
    /// It ended; waiting out the backoff before starting it again.
    case backoff
    /// Being stopped.
    case stopping
    /// Stopped by the supervisor.
    case stopped
}

/// What the supervisor knows about one child, as shown in the status table and `stack.json`.
public struct ChildStatus: Sendable, Codable, Equatable {
    public var name: String
    public var service: String
    public var endpoint: String
    public var pid: Int32?
    public var state: ChildState
    /// How many times it was started again after ending.
    public var restarts: Int
    /// How its last run ended, if one did.
    public var lastExit: String?
    public var logFile: String
    /// The executable it runs (lets `winnow down` recognise an orphan before signalling it).
    public var executable: String
}

/// Who a health probe asks about.
public struct ProbeTarget: Sendable {
    public let name: String
    public let service: String
    public let endpoint: String
    public let pid: Int32
}

/// Answers whether a started child is ready (e.g. answers Health). Called repeatedly, every
/// ~100 ms, until it returns `true` or the child ends.
public typealias HealthProbe = @Sendable (ProbeTarget) async -> Bool

/// Errors of ``Supervisor/start(readinessTimeout:)``.
public enum SupervisorError: Error, CustomStringConvertible, Equatable {
    /// A child's executable does not exist or is not executable.
    case executableMissing(name: String, path: String)
    /// Children did not become ready in time: `(name, last exit or state, log file)`.
    case notReady(timeout: Duration, children: [String])
    /// Two children share a name.
    case duplicateName(String)
    /// `start` was called twice, or after `stop`.
    case alreadyStarted

    public var description: String {
        switch self {
        case .executableMissing(let name, let path):
            return "\(name): executable \(path) not found or not executable (build it with `swift build`)"
        case .notReady(let timeout, let children):
            return "not ready after \(timeout): " + children.joined(separator: "; ")
        case .duplicateName(let name):
            return "two children are named \(name)"
        case .alreadyStarted:
            return "the supervisor was already started"
        }
    }
}

/// Starts child processes stage by stage, waits until each answers its health probe, restarts
/// one that ends (with exponential backoff, logging the event to the supervisor's log and the
/// child's own log), and stops them all: SIGTERM, a grace period, then SIGKILL.
public actor Supervisor {
    private struct Child {
        var spec: ChildSpec
        var process: ChildProcess?
        var state: ChildState = .starting
        var restarts = 0
        var consecutiveFailures = 0
        var lastExit: String?
        var restartAt: ContinuousClock.Instant?
        var probe: Task<Void, Never>?
    }

    private var children: [Child]
    private let logDirectory: String
    private let policy: RestartPolicy
    private let probe: HealthProbe
    private let logger: Logger
    private let onChange: (@Sendable ([ChildStatus]) -> Void)?
    private let baseEnvironment: [String: String]
    private var monitor: Task<Void, Never>?
    private var started = false
    private var stopping = false

    public init(children: [ChildSpec], logDirectory: String, policy: RestartPolicy = RestartPolicy(),
                probe: @escaping HealthProbe, logger: Logger = Logger(label: "winnow.supervisor"),
                onChange: (@Sendable ([ChildStatus]) -> Void)? = nil) {
        self.children = children.map { Child(spec: $0) }
        self.logDirectory = logDirectory
        self.policy = policy
        self.probe = probe
        self.logger = logger
        self.onChange = onChange
        self.baseEnvironment = ProcessInfo.processInfo.environment
    }

    /// The current status of every child, in the order given.
    public func statuses() -> [ChildStatus] {
        children.map { c in
            ChildStatus(name: c.spec.name, service: c.spec.service, endpoint: c.spec.endpoint,
                        pid: c.process.flatMap { $0.isRunning ? $0.pid : nil }, state: c.state,
                        restarts: c.restarts, lastExit: c.lastExit, logFile: logFile(c.spec.name),
                        executable: c.spec.executable)
        }
    }

    public func logFile(_ name: String) -> String {
        (logDirectory as NSString).appendingPathComponent("\(name).log")
    }

    /// Starts every child, stage by stage, returning when all are ready. On failure (or when the
    /// calling task is cancelled: `CancellationError`) the children keep running under
    /// supervision; call ``stop(grace:)``.
    public func start(readinessTimeout: Duration) async throws {
        guard !started, !stopping else { throw SupervisorError.alreadyStarted }
        started = true
        var seen = Set<String>()
        for c in children {
            guard seen.insert(c.spec.name).inserted else { throw SupervisorError.duplicateName(c.spec.name) }
            guard access(c.spec.executable, X_OK) == 0 else {
                throw SupervisorError.executableMissing(name: c.spec.name, path: c.spec.executable)
            }
        }
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        monitor = Task { [weak self] in
            while !Task.isCancelled {
                await self?.tick()
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        for stage in Set(children.map(\.spec.stage)).sorted() {
            let indices = children.indices.filter { children[$0].spec.stage == stage }
            for i in indices { launch(i) }
            try await waitReady(indices, timeout: readinessTimeout)
        }
    }

    /// Stops every child: SIGTERM to each (latest stage first), up to `grace` for it to exit,
    /// then SIGKILL. No child is restarted afterwards.
    public func stop(grace: Duration) async {
        stopping = true
        monitor?.cancel()
        monitor = nil
        for i in children.indices {
            children[i].probe?.cancel()
            children[i].probe = nil
            children[i].restartAt = nil
        }
        for stage in Set(children.map(\.spec.stage)).sorted(by: >) {
            let indices = children.indices.filter { children[$0].spec.stage == stage }
            var running: [Int] = []
            for i in indices {
                if let p = children[i].process, p.isRunning {
                    children[i].state = .stopping
                    p.signal(SIGTERM)
                    running.append(i)
                } else {
                    children[i].state = .stopped
                }
            }
            changed()
            let deadline = ContinuousClock.now + grace
            while running.contains(where: { children[$0].process!.isRunning }) && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
            for i in running {
                let p = children[i].process!
                var how = "stopped"
                if p.isRunning {
                    logger.warning("\(children[i].spec.name) (pid \(p.pid)) ignored SIGTERM for \(grace); sending SIGKILL")
                    p.signal(SIGKILL)
                    _ = await p.wait(timeout: .seconds(5))
                    how = "killed after the grace period"
                }
                // Anything left in its process group goes too.
                kill(-p.pid, SIGKILL)
                let exit = p.reap().map { "\($0)" } ?? "unknown"
                children[i].lastExit = exit
                children[i].state = .stopped
                event(i, "\(how) (pid \(p.pid), \(exit))")
            }
            changed()
        }
    }

    // MARK: Internals

    private func launch(_ i: Int) {
        moveEndpointIfItsPortIsTaken(i)
        let spec = children[i].spec
        var env = baseEnvironment
        for (k, v) in spec.environment { env[k] = v }
        children[i].state = .starting
        children[i].restartAt = nil
        do {
            let p = try ChildProcess.spawn(executable: spec.executable, arguments: spec.arguments,
                                           environment: env, logFile: logFile(spec.name))
            children[i].process = p
            logger.info("started \(spec.name)", metadata: ["pid": "\(p.pid)", "endpoint": "\(spec.endpoint)"])
            let target = ProbeTarget(name: spec.name, service: spec.service, endpoint: spec.endpoint, pid: p.pid)
            let probe = self.probe
            children[i].probe?.cancel()
            children[i].probe = Task { [weak self] in
                while !Task.isCancelled {
                    if await probe(target) {
                        await self?.markReady(name: spec.name, pid: p.pid)
                        return
                    }
                    guard p.isRunning else { return }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
        } catch {
            children[i].process = nil
            let reason = (error as? SpawnError).map { ExitStatus.notStarted($0.code) } ?? .notStarted(EINVAL)
            exited(i, reason, ranFor: .zero)
        }
        changed()
    }

    /// See ``ChildSpec/endpointPortMayMove``. The child is not running here, so a port that
    /// cannot be bound is held by some other process.
    private func moveEndpointIfItsPortIsTaken(_ i: Int) {
        let spec = children[i].spec
        guard spec.endpointPortMayMove, let old = spec.loopbackPort, !LoopbackPort.isAvailable(old) else { return }
        var avoid = Set(children.indices.filter { $0 != i }.compactMap { children[$0].spec.loopbackPort })
        avoid.insert(old)
        guard let port = try? StackConfiguration.distinctPort(LoopbackPort.ephemeral, avoiding: &avoid) else {
            event(i, "port \(old) is taken by another process and no other free port was found; starting on it anyway",
                  level: .warning)
            return
        }
        let endpoint = "tcp://127.0.0.1:\(port)"
        children[i].spec.arguments = spec.arguments.map { $0 == spec.endpoint ? endpoint : $0 }
        children[i].spec.endpoint = endpoint
        event(i, "port \(old) is taken by another process; moving to \(endpoint)", level: .warning)
    }

    private func markReady(name: String, pid: Int32) {
        guard !stopping, let i = children.firstIndex(where: { $0.spec.name == name }),
              children[i].process?.pid == pid, children[i].state == .starting else { return }
        children[i].state = .ready
        logger.info("\(name) ready", metadata: ["pid": "\(pid)"])
        changed()
    }

    /// Reaps ended children and starts those whose backoff is over.
    private func tick() {
        guard !stopping else { return }
        let now = ContinuousClock.now
        for i in children.indices {
            if let p = children[i].process, children[i].state == .starting || children[i].state == .ready,
               let status = p.reap() {
                exited(i, status, ranFor: now - p.startedAt)
            }
            if children[i].state == .backoff, let at = children[i].restartAt, at <= now {
                children[i].restarts += 1
                launch(i)
                if let p = children[i].process {
                    event(i, "restarted as pid \(p.pid) (restart \(children[i].restarts))")
                }
            }
        }
    }

    private func exited(_ i: Int, _ status: ExitStatus, ranFor: Duration) {
        children[i].probe?.cancel()
        children[i].probe = nil
        children[i].consecutiveFailures = ranFor >= policy.stableAfter ? 1 : children[i].consecutiveFailures + 1
        let delay = policy.delay(consecutiveFailures: children[i].consecutiveFailures)
        children[i].state = .backoff
        children[i].lastExit = "\(status)"
        children[i].restartAt = ContinuousClock.now + delay
        let pid = children[i].process.map { "pid \($0.pid), " } ?? ""
        event(i, "exited unexpectedly (\(pid)\(status), ran \(format(ranFor))); restarting in \(format(delay))",
              level: .warning)
        changed()
    }

    /// Logs a supervision event to the supervisor's log and appends it to the child's log.
    private func event(_ i: Int, _ message: String, level: Logger.Level = .info) {
        let name = children[i].spec.name
        logger.log(level: level, "\(name) \(message)")
        let stamp = ISO8601DateFormatter().string(from: Date())
        let line = "\(stamp) [winnow supervisor] \(name) \(message)\n"
        let fd = open(logFile(name), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = line.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    }

    private func waitReady(_ indices: [Int], timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if indices.allSatisfy({ children[$0].state == .ready }) { return }
            try Task.checkCancellation()
            if stopping { throw CancellationError() }
            try? await Task.sleep(for: .milliseconds(50))
        }
        if indices.allSatisfy({ children[$0].state == .ready }) { return }
        let late = indices.filter { children[$0].state != .ready }.map { i -> String in
            let c = children[i]
            var s = "\(c.spec.name) is \(c.state.rawValue)"
            if c.restarts > 0 || c.lastExit != nil { s += " after \(c.restarts) restarts, last \(c.lastExit ?? "?")" }
            return s + " (log: \(logFile(c.spec.name)))"
        }
        throw SupervisorError.notReady(timeout: timeout, children: late)
    }

    private func changed() {
        onChange?(statuses())
    }

    private func format(_ d: Duration) -> String {
        let s = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        return s < 10 ? String(format: "%.2fs", s) : String(format: "%.0fs", s)
    }
}
