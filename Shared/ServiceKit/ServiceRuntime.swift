import Foundation
import Logging
import RPC
import SwiftProtobuf
import WinnowProto

/// The version every Winnow process reports in Health.
public let winnowVersion = "0.1.0"

/// Sets up swift-log once per process: to stderr, level from WINNOW_LOG_LEVEL (default info).
public enum WinnowLogging {
    private static let once: Void = {
        let level = ProcessInfo.processInfo.environment["WINNOW_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }()

    public static func bootstrap() { _ = once }
}

/// The runtime every service process uses: its flags, its logger, an `RPCServer` bound at the
/// direct endpoint and registered with the broker, the Health rpc, and graceful shutdown on
/// SIGINT/SIGTERM. A service's `main.swift` builds one, registers handlers and calls `run()`:
///
///     exit(ServiceRuntime.main(kind: "teacher") { runtime in
///         runtime.register("SoftLabels") { (request: Winnow_V1_SoftLabelsRequest) in ... }
///     })
public final class ServiceRuntime: @unchecked Sendable {
    public let kind: String
    public let options: ServiceOptions
    public private(set) var logger: Logger
    public let server: RPCServer
    private let started = WallClock.nowMicros()
    private var shutdownSignal: ShutdownSignal?
    private let lock = NSLock()
    private var draining = false
    /// Extra key/values reported by Health. Runs on the receiving thread: keep it cheap.
    public var healthDetail: @Sendable () -> [String: String] = { [:] }

    public init(kind: String, options: ServiceOptions) throws {
        WinnowLogging.bootstrap()
        self.kind = kind
        self.options = options
        var logger = Logger(label: "winnow.\(kind)")
        logger[metadataKey: "service"] = "\(options.name)"
        self.logger = logger
        // The service's clients (its feature store, teachers, noise processes) use the same keys.
        if let directory = options.curveKeys {
            LinkSecurity.installed = try LinkSecurity(directory: directory, identity: kind)
        } else if !LinkSecurityError.isLoopback(options.endpoint) {
            // Before any of the service's own setup (a database, a model): nothing starts.
            throw LinkSecurityError.unauthenticatedBind(options.endpoint)
        }
        let configuration = RPCServerConfiguration(
            name: options.name, workerThreads: options.workers,
            heartbeatInterval: .milliseconds(options.heartbeatMilliseconds), security: LinkSecurity.installed)
        server = try RPCServer(configuration: configuration, logger: logger)
        registerHealth()
    }

    /// Registers a handler for one rpc of this service.
    public func register<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
        _ method: String, _ handler: @escaping @Sendable (Req) async throws -> Res
    ) {
        server.register(method, handler)
    }

    /// Answers every rpc of this service's kind that has no handler yet with UNIMPLEMENTED.
    public func answerUnimplementedRPCs() {
        guard let service = ServiceCatalogue.kind(of: kind) else { return }
        let registered = Set(server.methods)
        for method in service.methods where !registered.contains(method.name) {
            let label = "\(service.protoService).\(method.name)"
            server.registerRaw(method.name) { _ in
                throw RPCError(.unimplemented, "\(label) is not implemented yet in Winnow \(winnowVersion)")
            }
        }
    }

    private func registerHealth() {
        let server = self.server
        // Inline: Health is cheap and must answer even when every handler thread is busy.
        server.registerInline("Health") { [self] (_: Winnow_V1_HealthRequest) -> Winnow_V1_HealthResponse in
            var response = Winnow_V1_HealthResponse()
            response.status = lock.withLock { draining } ? .notServing : .serving
            response.service = options.name
            response.instance = server.configuration.instance
            response.pid = Int32(getpid())
            response.version = winnowVersion
            response.uptimeMicros = WallClock.nowMicros() - started
            var detail = healthDetail()
            detail["kind"] = kind
            detail["endpoint"] = server.endpoint ?? ""
            detail["methods"] = server.methods.joined(separator: ",")
            detail["broker"] = options.broker
            detail["registered"] = server.isRegistered ? "true" : "false"
            detail["curve"] = server.configuration.security == nil ? "off" : "on"
            response.detail = detail
            return response
        }
    }

    /// Binds, registers with the broker, serves until SIGINT/SIGTERM (or `requestShutdown()`),
    /// then drains in-flight requests and closes. Returns the process exit code (0 on a clean stop).
    public func run(grace: Duration = .seconds(5)) -> Int32 {
        answerUnimplementedRPCs()
        let endpoint: String
        do {
            endpoint = try server.bind(options.endpoint)
        } catch {
            logger.critical("cannot bind \(options.endpoint): \(error)")
            return 1
        }
        server.advertisedEndpoint = options.advertise
        server.attach(broker: options.broker)
        let signal = lock.withLock { () -> ShutdownSignal in
            if shutdownSignal == nil { shutdownSignal = ShutdownSignal() }
            return shutdownSignal!
        }
        server.start()
        logger.info("\(options.name) serving at \(endpoint), broker \(options.broker), pid \(getpid())")
        signal.wait()
        lock.withLock { draining = true }
        logger.info("shutting down")
        server.shutdown(grace: grace)
        logger.info("stopped")
        return 0
    }

    /// Asks `run()` to stop, as SIGTERM does.
    public func requestShutdown() {
        let signal = lock.withLock { () -> ShutdownSignal in
            if shutdownSignal == nil { shutdownSignal = ShutdownSignal() }
            return shutdownSignal!
        }
        signal.request()
    }

    /// Parses the command line and environment, builds a runtime, lets `configure` register
    /// handlers, and runs it. Returns the exit code: 0 after a clean stop, 2 for bad flags,
    /// 1 when the service cannot start.
    public static func main(kind: String, arguments: [String] = Array(CommandLine.arguments.dropFirst()),
                            configure: (ServiceRuntime) throws -> Void = { _ in }) -> Int32 {
        let executable = (CommandLine.arguments.first as NSString?)?.lastPathComponent ?? kind
        let options: ServiceOptions
        do {
            options = try ServiceOptions.parse(arguments, environment: ProcessInfo.processInfo.environment,
                                               defaultName: kind)
        } catch ServiceOptionsError.help {
            print(ServiceOptions.usage(executable: executable))
            return 0
        } catch {
            FileHandle.standardError.write(Data("\(executable): \(error)\n\(ServiceOptions.usage(executable: executable))\n".utf8))
            return 2
        }
        do {
            let runtime = try ServiceRuntime(kind: kind, options: options)
            try configure(runtime)
            return runtime.run()
        } catch {
            FileHandle.standardError.write(Data("\(executable): cannot start: \(error)\n".utf8))
            return 1
        }
    }
}
