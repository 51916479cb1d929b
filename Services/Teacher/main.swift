// The teacher process: one member of a job's teacher module at a time, trained here or loaded as
// a replica, served to the trainer through the broker.
import Foundation
import Numerics
import RPC
import ServiceKit
import Store
import TeacherKit

exit(ServiceRuntime.main(kind: "teacher") { runtime in
    // training threads: a member trained here equals the one a job trains in-process at the same count
    let threads = ProcessInfo.processInfo.environment["WINNOW_TRAIN_THREADS"].flatMap(Int.init) ?? 1
    Threads.set(max(1, threads))
    let store = RemoteFeatureStore(client: try RPCClient(endpoint: runtime.options.broker))
    let worker = TeacherWorker(store: store, broker: runtime.options.broker, logger: runtime.logger)
    worker.register(on: runtime.server)
    runtime.healthDetail = { ["training_threads": "\(threads)"] }
})
