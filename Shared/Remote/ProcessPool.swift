// The processes of one kind (the teacher or the noise processes) as the broker lists them, and
// calls straight to one of them: placing work on a particular process cannot go through the
// broker, which balances a service's calls over all of its processes.
import Foundation
import RPC
import SwiftProtobuf
import WinnowProto

final class ProcessPool: @unchecked Sendable {
    /// The service every process of the kind registers ("teacher", "noise"); the work placed on
    /// them registers as "<kind>/<job>/<name>".
    let kind: String
    let broker: RPCClient
    private let lock = NSLock()
    private var direct: [String: RPCClient] = [:]

    struct Worker { var service: String; var instance: String; var directEndpoint: String }

    init(kind: String, broker: RPCClient) { self.kind = kind; self.broker = broker }

    /// Every live process of the kind and everything placed on them.
    func workers() throws -> [Worker] {
        var list = Winnow_V1_ListWorkersRequest(); list.servicePrefix = kind
        let request = list, broker = self.broker
        let answer = try blocking {
            try await broker.call(service: "broker", method: "ListWorkers", request, as: Winnow_V1_ListWorkersResponse.self,
                                  timeout: .seconds(5), idempotent: true)
        }
        return answer.workers.map { Worker(service: $0.service, instance: $0.instance, directEndpoint: $0.directEndpoint) }
    }

    /// The processes themselves (their pool registration), in a stable order.
    func processes() throws -> [Worker] {
        try workers().filter { $0.service == kind }.sorted { $0.instance < $1.instance }
    }

    private func client(_ endpoint: String) throws -> RPCClient {
        try lock.withLock {
            if let c = direct[endpoint] { return c }
            let c = try RPCClient(endpoint: endpoint, peer: kind)
            c.retryPolicy = .none
            direct[endpoint] = c
            return c
        }
    }

    /// Calls `method` on the process at `endpoint`, waiting for the answer.
    func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ endpoint: String, _ method: String, _ r: Req,
                                                                      _ t: Res.Type, timeout: Duration = .seconds(10)) throws -> Res {
        let c = try client(endpoint), kind = self.kind
        return try blocking { try await c.call(service: kind, method: method, r, as: t, timeout: timeout) }
    }
}
