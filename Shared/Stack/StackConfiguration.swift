import Foundation

/// Everything `winnow up` decides about the local stack.
public struct StackConfiguration: Sendable {
    /// The services every stack runs besides the broker, in start order.
    public static let services = ["featurestore", "teacher", "noise", "trainer", "retrieval"]
    /// All executables the stack needs, found in ``binDirectory``.
    public static let executables = ["broker"] + services

    public var layout: StackLayout
    /// The directory holding the executables (by default the running `winnow`'s own).
    public var binDirectory: String
    /// Teacher processes to run; all register as `teacher`.
    public var teachers: Int
    /// Noise processes to run; all register as `noise` (ATJT's groups are placed across them).
    public var noise: Int
    /// The broker's port on 127.0.0.1.
    public var brokerPort: Int
    /// The embedded Postgres' port on 127.0.0.1 (unused with ``databaseURL``).
    public var postgresPort: Int
    /// An existing database to use instead of the embedded one.
    public var databaseURL: String?
    public var heartbeatMilliseconds: Int
    /// How long each start stage may take to become ready.
    public var readinessTimeout: Duration
    /// How long a child gets between SIGTERM and SIGKILL.
    public var stopGrace: Duration
    public var restartPolicy: RestartPolicy
    /// Every link CURVE-authenticated with the keys in `layout.curveDirectory`.
    public var curve = false

    /// The key names of a CURVE stack: one per executable, and the command-line clients'.
    public static let curveIdentities = executables + ["client"]

    public init(stateDirectory: String, binDirectory: String, teachers: Int = 1, noise: Int = 1, brokerPort: Int = 5555,
                postgresPort: Int = 54329, databaseURL: String? = nil, heartbeatMilliseconds: Int = 2500,
                readinessTimeout: Duration = .seconds(60), stopGrace: Duration = .seconds(10),
                restartPolicy: RestartPolicy = RestartPolicy()) {
        self.layout = StackLayout(stateDirectory: stateDirectory)
        self.binDirectory = binDirectory
        self.teachers = teachers
        self.noise = noise
        self.brokerPort = brokerPort
        self.postgresPort = postgresPort
        self.databaseURL = databaseURL
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.readinessTimeout = readinessTimeout
        self.stopGrace = stopGrace
        self.restartPolicy = restartPolicy
    }

    public var brokerEndpoint: String { "tcp://127.0.0.1:\(brokerPort)" }

    /// Probes made for one service's port before giving up.
    static let portAttempts = 64

    /// A port answered by `probe` that is not in `taken` (and is added to it), after at most
    /// ``portAttempts`` probes.
    static func distinctPort(_ probe: () throws -> Int, avoiding taken: inout Set<Int>) throws -> Int {
        for _ in 0..<portAttempts {
            let p = try probe()
            if taken.insert(p).inserted { return p }
        }
        throw StackError.noDistinctPort(attempts: portAttempts, taken: taken.sorted())
    }

    /// The executables missing from ``binDirectory``.
    public func missingExecutables() -> [String] {
        Self.executables.filter { access((binDirectory as NSString).appendingPathComponent($0), X_OK) != 0 }
    }

    /// The children to supervise, with the flags of the process contract: the broker (stage 0),
    /// the feature store (stage 1), then N teachers, M noise processes, the trainer and retrieval (stage 2).
    /// Each gets a direct endpoint on a free loopback port picked by `port`, distinct from every
    /// other child's and from the broker's and Postgres' ports: a port probe closes its socket, so
    /// the kernel may hand the same port out again to the next probe, and two services given one
    /// port would leave the second failing to bind on every restart. The supervisor may move such
    /// an endpoint if its port is taken by another process before a (re)start
    /// (``ChildSpec/endpointPortMayMove``).
    public func children(databaseURL: String, port: () throws -> Int) throws -> [ChildSpec] {
        func exe(_ name: String) -> String { (binDirectory as NSString).appendingPathComponent(name) }
        let keys = curve ? ["--curve-keys", layout.curveDirectory] : []
        var specs = [ChildSpec(name: "broker", service: "broker", executable: exe("broker"),
                               arguments: ["--endpoint", brokerEndpoint, "--heartbeat-ms", "\(heartbeatMilliseconds)"] + keys,
                               endpoint: brokerEndpoint, stage: 0)]
        var taken: Set<Int> = [brokerPort]
        if self.databaseURL == nil { taken.insert(postgresPort) }
        func service(_ name: String, _ kind: String, stage: Int, extra: [String] = []) throws -> ChildSpec {
            let endpoint = "tcp://127.0.0.1:\(try Self.distinctPort(port, avoiding: &taken))"
            return ChildSpec(name: name, service: kind, executable: exe(kind),
                             arguments: ["--broker", brokerEndpoint, "--name", kind, "--endpoint", endpoint,
                                         "--state-dir", layout.stateDirectory,
                                         "--heartbeat-ms", "\(heartbeatMilliseconds)"] + keys + extra,
                             endpoint: endpoint, stage: stage, endpointPortMayMove: true)
        }
        specs.append(try service("featurestore", "featurestore", stage: 1, extra: ["--database-url", databaseURL]))
        for i in 0..<teachers {
            specs.append(try service(teachers == 1 ? "teacher" : "teacher-\(i + 1)", "teacher", stage: 2))
        }
        for i in 0..<noise {
            specs.append(try service(noise == 1 ? "noise" : "noise-\(i + 1)", "noise", stage: 2))
        }
        for kind in ["trainer", "retrieval"] {
            specs.append(try service(kind, kind, stage: 2))
        }
        return specs
    }
}
