import Foundation
import Logging
import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// Why the local stack could not start.
public enum StackError: Error, CustomStringConvertible, Equatable {
    /// A supervisor already runs on this state directory.
    case alreadyUp(pid: Int32?, stateDirectory: String)
    /// Executables of the stack are missing from the bin directory.
    case missingExecutables([String], binDirectory: String)
    /// The state directory cannot be used.
    case unusableStateDirectory(String, reason: String)
    /// The given database did not answer.
    case databaseUnreachable(url: String, reason: String)
    /// The port probe kept answering ports already given to another part of the stack.
    case noDistinctPort(attempts: Int, taken: [Int])

    public var description: String {
        switch self {
        case .alreadyUp(let pid, let dir):
            return "the stack is already up on \(dir)" + (pid.map { " (supervisor pid \($0))" } ?? "")
        case .missingExecutables(let names, let dir):
            return "missing executables in \(dir): \(names.joined(separator: ", ")) (build them with `swift build`)"
        case .unusableStateDirectory(let dir, let reason):
            return "cannot use state directory \(dir): \(reason)"
        case .databaseUnreachable(let url, let reason):
            return "database \(url) is not reachable: \(reason)"
        case .noDistinctPort(let attempts, let taken):
            return "no free loopback port for a service after \(attempts) probes: each one answered a port the stack "
                + "already uses (\(taken.map(String.init).joined(separator: ", ")))"
        }
    }
}

/// The whole local stack in this process: Postgres (embedded under the state directory, or the
/// given URL), then the broker and every service under a ``Supervisor``. It holds
/// `<state>/supervisor.lock` while it runs, so only one stack runs per state directory, and
/// keeps `<state>/stack.json` current.
public final class LocalStack: @unchecked Sendable {
    public let configuration: StackConfiguration
    private let probe: HealthProbe
    private let logger: Logger
    private let lock = NSLock()
    private var record: StackRecord
    private var lockFD: Int32 = -1
    private var postgres: EmbeddedPostgres?
    private var supervisor: Supervisor?

    public init(configuration: StackConfiguration, probe: @escaping HealthProbe,
                logger: Logger = Logger(label: "winnow.stack")) {
        self.configuration = configuration
        self.probe = probe
        self.logger = logger
        self.record = StackRecord(phase: .starting, supervisorPID: getpid(),
                                  stateDirectory: configuration.layout.stateDirectory,
                                  brokerEndpoint: configuration.brokerEndpoint)
    }

    public var layout: StackLayout { configuration.layout }

    /// The current record (as written to `stack.json`).
    public func currentRecord() -> StackRecord {
        lock.lock(); defer { lock.unlock() }
        return record
    }

    /// Starts Postgres and every child and returns once all are ready. On failure everything
    /// started is stopped again, the record says why (phase `failed`), and the error is thrown.
    public func start() async throws {
        try claimStateDirectory()
        let missing = configuration.missingExecutables()
        guard missing.isEmpty else {
            let error = StackError.missingExecutables(missing, binDirectory: configuration.binDirectory)
            await shutDown(final: .failed, message: "\(error)")
            throw error
        }
        do {
            let url = try startDatabase()
            let children = try configuration.children(databaseURL: url, port: { try LoopbackPort.ephemeral() })
            let supervisor = Supervisor(children: children, logDirectory: layout.logDirectory,
                                        policy: configuration.restartPolicy, probe: probe, logger: logger,
                                        onChange: { [weak self] statuses in self?.update { $0.children = statuses } })
            self.supervisor = supervisor
            try await supervisor.start(readinessTimeout: configuration.readinessTimeout)
            update { $0.phase = .ready; $0.message = nil }
            logger.info("stack ready", metadata: ["state": "\(layout.stateDirectory)", "broker": "\(configuration.brokerEndpoint)"])
        } catch is CancellationError {
            await shutDown(final: .stopped, message: "stopped while starting")
            throw CancellationError()
        } catch {
            logger.error("stack failed to start: \(error)")
            await shutDown(final: .failed, message: "\(error)")
            throw error
        }
    }

    /// Stops every child (SIGTERM, grace, SIGKILL), then the embedded Postgres.
    public func stop() async {
        await shutDown(final: .stopped, message: nil)
    }

    // MARK: Steps

    private func claimStateDirectory() throws {
        let dir = layout.stateDirectory
        do {
            try FileManager.default.createDirectory(atPath: layout.logDirectory, withIntermediateDirectories: true)
        } catch {
            throw StackError.unusableStateDirectory(dir, reason: error.localizedDescription)
        }
        let fd = open(layout.lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw StackError.unusableStateDirectory(dir, reason: "cannot open \(layout.lockFile): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw StackError.alreadyUp(pid: StackControl.pidFromFile(layout), stateDirectory: dir)
        }
        lockFD = fd
        do {
            try "\(getpid())\n".write(toFile: layout.pidFile, atomically: true, encoding: .utf8)
        } catch {
            throw StackError.unusableStateDirectory(dir, reason: "cannot write \(layout.pidFile): \(error.localizedDescription)")
        }
        update { $0.phase = .starting; $0.message = nil; $0.children = []; $0.database = nil }
    }

    /// Starts the embedded server (or waits for the given one) and returns the feature store's URL.
    private func startDatabase() throws -> String {
        if let url = configuration.databaseURL {
            update { $0.database = .init(url: Connection.redacted(url), embedded: false, pid: nil, port: nil, ready: false) }
            do {
                try Connection.waitUntilReady(url: url, timeout: configuration.readinessTimeout)
            } catch {
                throw StackError.databaseUnreachable(url: Connection.redacted(url), reason: "\(error)")
            }
            update { $0.database?.ready = true }
            return url
        }
        let pg = EmbeddedPostgres(.init(stateDirectory: layout.stateDirectory, port: configuration.postgresPort,
                                        startTimeout: configuration.readinessTimeout))
        update { $0.database = .init(url: pg.url, embedded: true, pid: nil, port: pg.configuration.port, ready: false) }
        try pg.start()
        postgres = pg
        update { $0.database?.pid = pg.runningServerPID(); $0.database?.ready = true }
        return pg.url
    }

    private func shutDown(final phase: StackRecord.Phase, message: String?) async {
        update { $0.phase = .stopping }
        if let supervisor {
            await supervisor.stop(grace: configuration.stopGrace)
        }
        if let postgres {
            do {
                try postgres.stop()
            } catch {
                logger.error("stopping postgres failed: \(error)")
            }
            update { $0.database?.ready = false; $0.database?.pid = nil }
        }
        update { record in
            record.phase = phase
            if let message { record.message = message }
        }
        unlink(layout.pidFile)
        if lockFD >= 0 {
            flock(lockFD, LOCK_UN)
            close(lockFD)
            lockFD = -1
        }
    }

    private func update(_ change: (inout StackRecord) -> Void) {
        lock.lock()
        change(&record)
        record.updated = Date()
        let snapshot = record
        lock.unlock()
        do {
            try snapshot.save(layout)
        } catch {
            logger.warning("cannot write \(layout.recordFile): \(error)")
        }
    }
}

/// Waits for SIGINT or SIGTERM. Creating it makes the process ignore their default action
/// (termination) and deliver them here instead.
public final class TerminationSignals: @unchecked Sendable {
    private let lock = NSLock()
    private var sources: [DispatchSourceSignal] = []
    private var waiters: [CheckedContinuation<Int32, Never>] = []
    private var receivedSignal: Int32?

    public init(_ signals: [Int32] = [SIGINT, SIGTERM]) {
        let queue = DispatchQueue(label: "winnow.signals")
        for sig in signals {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [weak self] in self?.deliver(sig) }
            source.resume()
            sources.append(source)
        }
    }

    /// The first signal received, if any.
    public var received: Int32? {
        lock.lock(); defer { lock.unlock() }
        return receivedSignal
    }

    /// Returns the first signal, waiting for it if none came yet.
    public func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            lock.lock()
            if let s = receivedSignal {
                lock.unlock()
                continuation.resume(returning: s)
            } else {
                waiters.append(continuation)
                lock.unlock()
            }
        }
    }

    private func deliver(_ sig: Int32) {
        lock.lock()
        if receivedSignal == nil { receivedSignal = sig }
        let ready = waiters
        waiters.removeAll()
        let s = receivedSignal!
        lock.unlock()
        for w in ready { w.resume(returning: s) }
    }
}
