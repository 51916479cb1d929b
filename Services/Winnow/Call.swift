import ArgumentParser
import Foundation
import RPC
import Stack
import ServiceKit
import SwiftProtobuf

/// Where a CLI command sends its calls: the broker (default) or a service's own endpoint.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Broker endpoint (env WINNOW_BROKER; else the broker of the stack `winnow up` started in --state-dir; else \(ServiceOptions.defaultBroker)).")
    var broker: String?

    @Option(name: .customLong("state-dir"), help: "State directory of a stack started by `winnow up` (env WINNOW_STATE_DIR, default ./.state).")
    var stateDirectory: String?

    @Option(help: "Call this endpoint directly instead of going through the broker.")
    var direct: String?

    @Option(name: .customLong("timeout-ms"), help: "Deadline of each call, in milliseconds.")
    var timeoutMilliseconds: Int = 5000

    @Option(name: .customLong("curve-keys"), help: "CURVE key directory to call with, as its \"client\" (env WINNOW_CURVE_KEYS; else <state-dir>/curve when the stack there was brought up with --curve).")
    var curveKeys: String?

    var target: String { direct ?? resolvedBroker }

    private var resolvedStateDirectory: String {
        stateDirectory ?? ProcessInfo.processInfo.environment["WINNOW_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? ".state"
    }

    /// The key directory this command calls with, if any.
    var resolvedCurveKeys: String? {
        if let curveKeys { return curveKeys }
        if let fromEnvironment = ProcessInfo.processInfo.environment["WINNOW_CURVE_KEYS"], !fromEnvironment.isEmpty { return fromEnvironment }
        let directory = StackLayout(stateDirectory: resolvedStateDirectory).curveDirectory
        return FileManager.default.fileExists(atPath: directory + "/" + LinkSecurity.allowedKeysFile) ? directory : nil
    }

    /// The flag, then the environment, then the record of a stack brought up in the state
    /// directory (so `winnow up --broker-port P` needs no `--broker` afterwards), then the default.
    var resolvedBroker: String {
        let environment = ProcessInfo.processInfo.environment
        if let broker { return broker }
        if let fromEnvironment = environment["WINNOW_BROKER"], !fromEnvironment.isEmpty { return fromEnvironment }
        if let record = StackRecord.load(StackLayout(stateDirectory: resolvedStateDirectory)) { return record.brokerEndpoint }
        return ServiceOptions.defaultBroker
    }
    var timeout: Duration { .milliseconds(timeoutMilliseconds) }

    /// A client of the target: the broker, or with --direct the endpoint of `service`'s kind.
    func client(for service: String) throws -> RPCClient {
        try RPCClient(endpoint: target, peer: direct == nil ? WireProtocol.brokerService : service)
    }

    func validate() throws {
        guard timeoutMilliseconds > 0 else { throw ValidationError("--timeout-ms must be positive") }
        // Every client this command makes dials with these keys.
        if let directory = resolvedCurveKeys {
            LinkSecurity.installed = try LinkSecurity(directory: directory, identity: LinkSecurity.clientIdentity)
        }
    }
}

/// `winnow call SERVICE METHOD '{json}'`: calls any rpc with the protobuf JSON mapping.
struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Call any rpc of a Winnow service; JSON (protobuf mapping) in, JSON out.",
        discussion: """
        SERVICE is a service name (featurestore, teacher, teacher/job42/m0, broker, ...); its kind,
        the part before the first "/", selects the contract. Prints the reply as JSON on stdout and
        the status on stderr; exits 1 when the status is not OK.
        Example: winnow call broker ListWorkers '{}'
        """)

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "Service name, e.g. teacher or teacher/job42/m0.")
    var service: String

    @Argument(help: "Method, e.g. Health.")
    var method: String

    @Argument(help: "Request as protobuf JSON.")
    var json: String = "{}"

    @Flag(help: "Mark the call idempotent (it may be retried or re-routed).")
    var idempotent = false

    func run() async throws {
        guard let kind = ServiceCatalogue.kind(of: service) else {
            let known = ServiceCatalogue.kinds.map(\.name).joined(separator: ", ")
            throw ValidationError("unknown service kind \"\(ServiceCatalogue.kindName(of: service))\" (known: \(known))")
        }
        guard let rpc = kind.method(method) else {
            let known = kind.methods.map(\.name).joined(separator: ", ")
            throw ValidationError("\(kind.protoService) has no method \"\(method)\" (methods: \(known))")
        }
        let request: any SwiftProtobuf.Message
        do { request = try rpc.request.init(jsonString: json) } catch {
            throw ValidationError("request is not valid JSON for \(rpc.request.protoMessageName): \(error)")
        }
        let client = try connection.client(for: service)
        defer { client.close() }
        do {
            let reply = try await client.callRaw(service: service, method: method,
                                                 payload: try request.serializedBytes(),
                                                 timeout: connection.timeout, idempotent: idempotent)
            let response = try rpc.response.init(serializedBytes: reply)
            var options = JSONEncodingOptions()
            options.useDeterministicOrdering = true
            print(try response.jsonString(options: options))
            FileHandle.standardError.write(Data("status: OK\n".utf8))
        } catch let error as RPCError {
            FileHandle.standardError.write(Data("status: \(error.code.name): \(error.message)\n".utf8))
            throw ExitCode(1)
        }
    }
}
