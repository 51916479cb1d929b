// The noise process: ATJT's recognisers of the job groups trainers configure on it, each
// served to its trainer through the broker.
import Foundation
import Numerics
import NoiseKit
import RPC
import ServiceKit
import Store

exit(ServiceRuntime.main(kind: "noise") { runtime in
    // threads: a recogniser here gives the bits it gives in the trainer's process at the same count
    let threads = ProcessInfo.processInfo.environment["WINNOW_TRAIN_THREADS"].flatMap(Int.init) ?? 1
    Threads.set(max(1, threads))
    let store = RemoteFeatureStore(client: try RPCClient(endpoint: runtime.options.broker))
    let worker = NoiseWorker(store: store, broker: runtime.options.broker, logger: runtime.logger)
    worker.register(on: runtime.server)
    runtime.healthDetail = { ["training_threads": "\(threads)"] }
})
