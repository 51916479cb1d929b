import Foundation

/// The flags every Winnow service process takes (see contracts): flags win over environment
/// variables, which win over defaults.
///
///     --broker tcp://127.0.0.1:PORT   WINNOW_BROKER         default tcp://127.0.0.1:5555
///     --name NAME                     WINNOW_SERVICE_NAME   default: the service kind
///     --endpoint tcp://127.0.0.1:*    WINNOW_ENDPOINT       direct endpoint to bind
///     --state-dir DIR                 WINNOW_STATE_DIR      default ./.state
///     --database-url URL              WINNOW_DATABASE_URL
///     --heartbeat-ms N                WINNOW_HEARTBEAT_MS   default 2500
///     --workers N                     WINNOW_WORKERS        handler threads, default 4
///     --advertise tcp://HOST:PORT     WINNOW_ADVERTISE      direct endpoint others dial (default:
///                                                           the bound one, a wildcard host replaced
///                                                           by this host's name)
///     --curve-keys DIR                WINNOW_CURVE_KEYS     CURVE key directory (LinkSecurity): every
///                                                           link authenticated; required to bind
///                                                           anything but loopback
public struct ServiceOptions: Sendable, Equatable {
    public var broker: String
    public var name: String
    public var endpoint: String
    public var stateDir: String
    public var databaseURL: String?
    public var heartbeatMilliseconds: Int
    public var workers: Int
    /// The direct endpoint registered with the broker, for peers on other hosts (a container's
    /// or pod's address); nil: the bound endpoint (`RPCServer.advertised`).
    public var advertise: String?
    /// The CURVE key directory; nil: no CURVE, loopback binds only.
    public var curveKeys: String?

    public static let defaultBroker = "tcp://127.0.0.1:5555"
    public static let defaultEndpoint = "tcp://127.0.0.1:*"

    public init(broker: String = ServiceOptions.defaultBroker, name: String,
                endpoint: String = ServiceOptions.defaultEndpoint, stateDir: String = "./.state",
                databaseURL: String? = nil, heartbeatMilliseconds: Int = 2500, workers: Int = 4) {
        self.broker = broker
        self.name = name
        self.endpoint = endpoint
        self.stateDir = stateDir
        self.databaseURL = databaseURL
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.workers = workers
    }

    /// The usage text of a service executable.
    public static func usage(executable: String, defaultEndpoint: String = ServiceOptions.defaultEndpoint) -> String {
        """
        usage: \(executable) [--broker ENDPOINT] [--name NAME] [--endpoint ENDPOINT] [--state-dir DIR]
               \(String(repeating: " ", count: executable.count)) [--database-url URL] [--heartbeat-ms N] [--workers N] [--advertise ENDPOINT]
               \(String(repeating: " ", count: executable.count)) [--curve-keys DIR]
          --broker        broker to register with (env WINNOW_BROKER, default \(defaultBroker))
          --name          service name to register under (env WINNOW_SERVICE_NAME)
          --endpoint      endpoint to bind (env WINNOW_ENDPOINT, default \(defaultEndpoint))
          --state-dir     state directory (env WINNOW_STATE_DIR, default ./.state)
          --database-url  libpq URL of the feature store's database (env WINNOW_DATABASE_URL)
          --heartbeat-ms  heartbeat interval in ms (env WINNOW_HEARTBEAT_MS, default 2500)
          --workers       handler threads (env WINNOW_WORKERS, default 4)
          --advertise     direct endpoint other hosts dial (env WINNOW_ADVERTISE; default the bound
                          endpoint, a wildcard host such as 0.0.0.0 replaced by this host's name)
          --curve-keys    CURVE key directory (env WINNOW_CURVE_KEYS; winnow up --curve or winnow keys
                          writes one): every peer authenticated; needed to bind beyond loopback
        """
    }

    /// Parses `arguments` (without the executable) over `environment`.
    /// Throws `ServiceOptionsError.help` for `--help`/`-h`.
    public static func parse(_ arguments: [String], environment: [String: String], defaultName: String,
                             defaultEndpoint: String = ServiceOptions.defaultEndpoint) throws -> ServiceOptions {
        var options = ServiceOptions(name: defaultName, endpoint: defaultEndpoint)
        func env(_ key: String) -> String? {
            guard let value = environment[key], !value.isEmpty else { return nil }
            return value
        }
        func integer(_ text: String, _ flag: String) throws -> Int {
            guard let value = Int(text), value > 0 else {
                throw ServiceOptionsError.invalidValue(flag: flag, value: text, expected: "a positive integer")
            }
            return value
        }
        if let value = env("WINNOW_BROKER") { options.broker = value }
        if let value = env("WINNOW_SERVICE_NAME") { options.name = value }
        if let value = env("WINNOW_ENDPOINT") { options.endpoint = value }
        if let value = env("WINNOW_STATE_DIR") { options.stateDir = value }
        if let value = env("WINNOW_DATABASE_URL") { options.databaseURL = value }
        if let value = env("WINNOW_HEARTBEAT_MS") { options.heartbeatMilliseconds = try integer(value, "WINNOW_HEARTBEAT_MS") }
        if let value = env("WINNOW_WORKERS") { options.workers = try integer(value, "WINNOW_WORKERS") }
        if let value = env("WINNOW_ADVERTISE") { options.advertise = value }
        if let value = env("WINNOW_CURVE_KEYS") { options.curveKeys = value }

        var index = 0
        while index < arguments.count {
            var flag = arguments[index]
            var value: String?
            if let equals = flag.firstIndex(of: "="), flag.hasPrefix("--") {
                value = String(flag[flag.index(after: equals)...])
                flag = String(flag[..<equals])
            }
            if flag == "--help" || flag == "-h" { throw ServiceOptionsError.help }
            let known = ["--broker", "--name", "--endpoint", "--state-dir", "--database-url", "--heartbeat-ms", "--workers", "--advertise", "--curve-keys"]
            guard known.contains(flag) else { throw ServiceOptionsError.unknownFlag(flag) }
            if value == nil {
                index += 1
                guard index < arguments.count else { throw ServiceOptionsError.missingValue(flag: flag) }
                value = arguments[index]
            }
            let text = value!
            if text.isEmpty { throw ServiceOptionsError.missingValue(flag: flag) }
            switch flag {
            case "--broker": options.broker = text
            case "--name": options.name = text
            case "--endpoint": options.endpoint = text
            case "--state-dir": options.stateDir = text
            case "--database-url": options.databaseURL = text
            case "--heartbeat-ms": options.heartbeatMilliseconds = try integer(text, flag)
            case "--workers": options.workers = try integer(text, flag)
            case "--advertise": options.advertise = text
            case "--curve-keys": options.curveKeys = text
            default: break
            }
            index += 1
        }
        return options
    }
}

/// A bad command line of a service executable.
public enum ServiceOptionsError: Error, CustomStringConvertible, Equatable {
    /// `--help` was asked for.
    case help
    /// A flag no service takes.
    case unknownFlag(String)
    /// A flag at the end of the line, or given an empty value.
    case missingValue(flag: String)
    /// A value of the wrong form.
    case invalidValue(flag: String, value: String, expected: String)

    public var description: String {
        switch self {
        case .help: return "help requested"
        case let .unknownFlag(flag): return "unknown flag \(flag)"
        case let .missingValue(flag): return "\(flag) needs a value"
        case let .invalidValue(flag, value, expected): return "\(flag): \"\(value)\" is not \(expected)"
        }
    }
}
