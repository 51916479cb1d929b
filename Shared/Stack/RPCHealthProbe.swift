import Foundation
import RPC
import WinnowProto

/// The stack's readiness check over the wire. A child is ready when
///
/// - the broker: it answers `broker.Health` at its endpoint with its own pid;
/// - a service: it answers `Health` at its direct endpoint as SERVING with its own pid, the
///   broker lists a worker with that pid under the service's name (it registered), and a
///   `Health` call for the service name through the broker is answered SERVING.
///
/// Clients are made once per endpoint and kept for the probe's lifetime (`close()` ends them).
public final class RPCHealthProbe: @unchecked Sendable {
    private let broker: String
    private let timeout: Duration
    private let lock = NSLock()
    private var clients: [String: RPCClient] = [:]

    public init(broker: String, timeout: Duration = .milliseconds(500)) {
        self.broker = broker
        self.timeout = timeout
    }

    deinit { close() }

    /// The probe to hand to ``Supervisor`` or ``LocalStack``.
    public var probe: HealthProbe {
        { [self] target in await self.isReady(target) }
    }

    public func isReady(_ target: ProbeTarget) async -> Bool {
        do {
            let broker = try client(self.broker, peer: "broker")
            if target.service == "broker" {
                let health = try await broker.call(service: "broker", method: "Health", Winnow_V1_HealthRequest(),
                                                   as: Winnow_V1_HealthResponse.self, timeout: timeout)
                return Self.answers(health, pid: target.pid)
            }
            let direct = try client(target.endpoint, peer: target.service)
            let own = try await direct.call(service: target.service, method: "Health", Winnow_V1_HealthRequest(),
                                            as: Winnow_V1_HealthResponse.self, timeout: timeout)
            guard own.status == .serving, Self.answers(own, pid: target.pid) else { return false }
            var list = Winnow_V1_ListWorkersRequest()
            list.servicePrefix = target.service
            let workers = try await broker.call(service: "broker", method: "ListWorkers", list,
                                                as: Winnow_V1_ListWorkersResponse.self, timeout: timeout)
            guard workers.workers.contains(where: { $0.pid == target.pid && $0.service == target.service }) else { return false }
            let routed = try await broker.call(service: target.service, method: "Health", Winnow_V1_HealthRequest(),
                                               as: Winnow_V1_HealthResponse.self, timeout: timeout)
            return routed.status == .serving
        } catch {
            return false
        }
    }

    /// Whether a Health answer comes from process `pid`: its `pid` field, or where that is unset
    /// the pid inside its instance name (`host:pid[:start]`).
    static func answers(_ health: Winnow_V1_HealthResponse, pid: Int32) -> Bool {
        if health.pid != 0 { return health.pid == pid }
        let parts = health.instance.split(separator: ":")
        return parts.count >= 2 && parts[1] == "\(pid)"
    }

    public func close() {
        lock.lock()
        let all = clients.values
        clients.removeAll()
        lock.unlock()
        for c in all { c.close() }
    }

    private func client(_ endpoint: String, peer: String) throws -> RPCClient {
        lock.lock(); defer { lock.unlock() }
        if let c = clients[endpoint] { return c }
        let c = try RPCClient(endpoint: endpoint, peer: peer)
        clients[endpoint] = c
        return c
    }
}
