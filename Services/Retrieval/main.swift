// The retrieval process: serves Recommend from the promoted student (the trainer's `student`
// model), following promotions, with the feature store (through the broker) for histories.
import Foundation
import RPC
import RetrievalKit
import ServiceKit
import Store

exit(ServiceRuntime.main(kind: "retrieval") { runtime in
    let store = RemoteFeatureStore(client: try RPCClient(endpoint: runtime.options.broker))
    let server = RetrievalServer(store: store, logger: runtime.logger)
    RetrievalService(server: server, defaultModel: studentModelName).register(on: runtime.server)
    // follow the promoted student: at start and every two seconds (Reload loads at once)
    let logger = runtime.logger
    Task.detached {
        while true {
            do { try await server.follow(studentModelName) } catch { logger.debug("no promoted \(studentModelName) to serve yet: \(error)") }
            try? await Task.sleep(for: .seconds(2))
        }
    }
    runtime.healthDetail = { ["model": server.current.map { "\($0.name) v\($0.version)" } ?? "none"] }
})
