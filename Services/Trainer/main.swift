// The trainer process: runs submitted jobs on dataset snapshots from the feature store (through
// the broker), checkpointing under --state-dir/trainer, and serves their progress.
import Foundation
import Numerics
import RPC
import ServiceKit
import Store
import TrainerKit

exit(ServiceRuntime.main(kind: "trainer") { runtime in
    // training threads: results are reproducible for a fixed count, and a resumed job needs the same
    let threads = ProcessInfo.processInfo.environment["WINNOW_TRAIN_THREADS"].flatMap(Int.init) ?? 1
    Threads.set(max(1, threads))
    let broker = try RPCClient(endpoint: runtime.options.broker)
    let store = RemoteFeatureStore(client: broker)
    let jobs = try TrainerJobs(directory: (runtime.options.stateDir as NSString).appendingPathComponent("trainer"), store: store,
                               broker: broker, logger: runtime.logger)
    // off: each batch's soft labels are asked for when the student needs them (for measuring)
    jobs.pipelined = ProcessInfo.processInfo.environment["WINNOW_TEACHER_PIPELINE"] != "0"
    TrainerService(jobs: jobs).register(on: runtime.server)
    jobs.start()
    runtime.healthDetail = { ["training_threads": "\(threads)"] }
})
