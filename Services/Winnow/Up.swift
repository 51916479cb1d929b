import ArgumentParser
import Foundation
import Stack
#if canImport(Glibc)
import Glibc
#endif

/// Flags shared by `winnow up` and `winnow supervise`.
struct StackOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: "State directory (env WINNOW_STATE_DIR, default ./.state).")
    var stateDir: String?

    @Option(help: "Teacher processes to start; all register as \"teacher\".")
    var teachers: Int = 1

    @Option(help: "Noise processes to start; all register as \"noise\" (ATJT's groups are spread over them).")
    var noise: Int = 1

    @Option(name: .customLong("broker-port"), help: "The broker's port on 127.0.0.1.")
    var brokerPort: Int = 5555

    @Option(name: .customLong("pg-port"), help: "The embedded Postgres' port on 127.0.0.1.")
    var pgPort: Int = 54329

    @Option(name: .customLong("database-url"),
            help: "Use this Postgres instead of the embedded one (env WINNOW_DATABASE_URL).")
    var databaseURL: String?

    @Option(name: .customLong("heartbeat-ms"), help: "Heartbeat interval of the broker and services (env WINNOW_HEARTBEAT_MS).")
    var heartbeatMs: Int?

    @Option(name: .customLong("bin-dir"), help: "Directory of the service executables (default: beside winnow).")
    var binDir: String?

    @Option(name: .customLong("ready-timeout"), help: "Seconds each start stage may take to become ready.")
    var readyTimeout: Int = 60

    @Option(name: .customLong("stop-grace"), help: "Seconds a service gets between SIGTERM and SIGKILL.")
    var stopGrace: Int = 10

    @Flag(help: "Authenticate every link with CurveZMQ: a key pair per service and for clients, and an allow-list, in <state-dir>/curve (kept across ups).")
    var curve = false

    func validate() throws {
        guard (0...64).contains(teachers) else { throw ValidationError("--teachers must be between 0 and 64, got \(teachers)") }
        guard (0...64).contains(noise) else { throw ValidationError("--noise must be between 0 and 64, got \(noise)") }
        for (flag, port) in [("--broker-port", brokerPort), ("--pg-port", pgPort)] where !(1...65535).contains(port) {
            throw ValidationError("\(flag) must be a TCP port (1-65535), got \(port)")
        }
        guard brokerPort != pgPort else { throw ValidationError("--broker-port and --pg-port must differ (both \(pgPort))") }
        if let heartbeatMs, heartbeatMs < 10 { throw ValidationError("--heartbeat-ms must be at least 10, got \(heartbeatMs)") }
        guard readyTimeout > 0 else { throw ValidationError("--ready-timeout must be positive") }
        guard stopGrace >= 0 else { throw ValidationError("--stop-grace must not be negative") }
        if let raw = ProcessInfo.processInfo.environment["WINNOW_HEARTBEAT_MS"], heartbeatMs == nil, Int(raw) == nil {
            throw ValidationError("WINNOW_HEARTBEAT_MS must be an integer, got '\(raw)'")
        }
    }

    var layout: StackLayout { StackLayout(stateDirectory: resolvedStateDir) }

    var resolvedStateDir: String {
        stateDir ?? ProcessInfo.processInfo.environment["WINNOW_STATE_DIR"] ?? ".state"
    }

    var configuration: StackConfiguration {
        let env = ProcessInfo.processInfo.environment
        var configuration = StackConfiguration(
            stateDirectory: resolvedStateDir,
            binDirectory: binDir ?? WinnowExecutable.directory,
            teachers: teachers, noise: noise, brokerPort: brokerPort, postgresPort: pgPort,
            databaseURL: databaseURL ?? env["WINNOW_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 },
            heartbeatMilliseconds: heartbeatMs ?? env["WINNOW_HEARTBEAT_MS"].flatMap { Int($0) } ?? 2500,
            readinessTimeout: .seconds(readyTimeout), stopGrace: .seconds(stopGrace))
        configuration.curve = curve
        return configuration
    }

    /// The same options as flags, for re-running them in `winnow supervise` (paths made absolute).
    var forwarded: [String] {
        let c = configuration
        var args = ["--state-dir", c.layout.stateDirectory, "--teachers", "\(teachers)", "--noise", "\(noise)",
                    "--broker-port", "\(brokerPort)", "--pg-port", "\(pgPort)",
                    "--heartbeat-ms", "\(c.heartbeatMilliseconds)", "--bin-dir", c.binDirectory,
                    "--ready-timeout", "\(readyTimeout)", "--stop-grace", "\(stopGrace)"]
        if let url = c.databaseURL { args += ["--database-url", url] }
        if curve { args.append("--curve") }
        return args
    }
}

/// Where the running `winnow` binary lives; the stack's executables are its neighbours.
enum WinnowExecutable {
    static var path: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 { return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return CommandLine.arguments[0]
    }

    static var directory: String { (path as NSString).deletingLastPathComponent }
}

/// `winnow up`: Postgres, the broker and every service as supervised local processes.
struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the whole stack as local processes (embedded Postgres unless --database-url).",
        discussion: """
            By default the supervisor runs detached: `up` returns once every process answers its \
            health check and prints them. Logs go to <state-dir>/logs/. `winnow down` stops it all. \
            With --foreground the supervisor runs in this terminal until SIGINT/SIGTERM.
            """)

    @OptionGroup var stack: StackOptions

    @Flag(help: "Supervise in the foreground until SIGINT/SIGTERM instead of detaching.")
    var foreground = false

    func run() async throws {
        let layout = stack.layout
        if StackControl.isUp(layout) {
            let pid = StackControl.pidFromFile(layout).map { " (supervisor pid \($0))" } ?? ""
            print("winnow: the stack is already up on \(layout.stateDirectory)\(pid)")
            if let record = StackRecord.load(layout) { print(record.table()) }
            return
        }
        if foreground {
            try await Supervise.supervise(stack)
            return
        }
        let missing = stack.configuration.missingExecutables()
        guard missing.isEmpty else {
            throw ValidationError("\(StackError.missingExecutables(missing, binDirectory: stack.configuration.binDirectory))")
        }
        let supervisor = try StackControl.launchDetached(executable: WinnowExecutable.path,
                                                         arguments: ["supervise"] + stack.forwarded, layout: layout)
        do {
            // Postgres, then three start stages, each allowed the readiness timeout.
            let record = try await StackControl.waitUntilUp(layout, supervisor: supervisor,
                                                            timeout: .seconds(4 * stack.readyTimeout + 30))
            print(record.table())
            print("state: \(layout.stateDirectory)  logs: \(layout.logDirectory)  broker: \(record.brokerEndpoint)")
        } catch {
            FileHandle.standardError.write(Data("winnow up: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
