// A noise process: the ATJT recognisers of the job groups that trainers configure on it. Each
// group is built from the job file exactly as the job's own process would build it
// (`RecogniserPlan.group`), optionally continued from a snapshot, and served as
// `noise/<job>/g<group>` until the job releases it. Weighs and feedbacks of a group are applied
// in the order the trainer stepped them: a weigh sent ahead names the feedbacks it must follow
// and waits for them, and a repeated weigh or feedback (a retry after a lost reply) gets the
// answer it got the first time, so the recogniser's bits never depend on the wire.
import Foundation
import Logging
import Numerics
import Models
import Data
import Training
import Methods
import Jobs
import RPC
import Remote
import Store
import WinnowProto

public final class NoiseWorker: @unchecked Sendable {
    let store: FeatureStoreEndpoint
    /// Where the groups' own servers register (the broker's endpoint); nil serves none (tests
    /// call the pool server's handlers, which answer for every hosted group too).
    let broker: String?
    let logger: Logger
    /// How long a weigh sent ahead waits for the feedbacks it follows.
    public var orderPatience: TimeInterval = 30
    private let snapshots = SnapshotCache()
    private let lock = NSLock()
    private var hosted: [Key: Hosted] = [:]

    struct Key: Hashable, CustomStringConvertible {
        let job: String
        let group: Int
        var description: String { NoiseWorker.serviceName(job: job, group: group) }
    }

    /// One hosted group: its recogniser and the answers a retry gets again. `condition` guards
    /// every field and is signalled after each feedback.
    final class Hosted {
        var recogniser: GroupRecogniser
        var server: RPCServer?
        let condition = NSCondition()
        var lastWeigh: (batch: UInt64, step: UInt64, response: Winnow_V1_WeighResponse)?
        var lastFeedback: (batch: UInt64, step: UInt64, response: Winnow_V1_FeedbackResponse)?
        /// The weighed rows: the recogniser's backward reads its forward's inputs again at the
        /// feedback, so they live here until the next weigh.
        private(set) var rows = 0, capacity = 0, T = 0
        private(set) var items = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        private(set) var lengths = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        private(set) var targets = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        private(set) var instances = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        init(_ r: GroupRecogniser) { recogniser = r }
        deinit { items.deallocate(); lengths.deallocate(); targets.deallocate(); instances.deallocate() }

        /// Room for R rows of T items, zeroed.
        func reserve(rows R: Int, T: Int) {
            if R * T > capacity * self.T || R > capacity {
                items.deallocate(); lengths.deallocate(); targets.deallocate(); instances.deallocate()
                items = .allocate(capacity: R * T); lengths = .allocate(capacity: R)
                targets = .allocate(capacity: R); instances = .allocate(capacity: R)
                capacity = R
            }
            self.T = T; rows = R
            items.update(repeating: 0, count: R * T)
        }
        var batch: SequenceBatch { SequenceBatch(items: items, lengths: lengths, targets: targets, instances: instances, B: rows, T: T) }
    }

    public init(store: FeatureStoreEndpoint, broker: String?, logger: Logger = Logger(label: "winnow.noise")) {
        self.store = store; self.broker = broker; self.logger = logger
    }

    /// The broker service of a job's group.
    public static func serviceName(job: String, group: Int) -> String { "noise/\(job)/g\(group)" }

    /// Registers every noise rpc except Health on the process's pool server.
    public func register(on server: RPCServer) {
        server.register("Configure") { [self] (r: Winnow_V1_ConfigureRecogniserRequest) in try await configure(r) }
        server.register("GetStatus") { [self] (_: Winnow_V1_RecogniserStatusRequest) in status() }
        server.register("Release") { [self] (r: Winnow_V1_ReleaseRecogniserRequest) in release(r) }
        registerServing(on: server)
    }

    /// The rpcs a group's own server answers too.
    private func registerServing(on server: RPCServer) {
        server.register("Weigh") { [self] (r: Winnow_V1_WeighRequest) in try weigh(r) }
        server.register("Feedback") { [self] (r: Winnow_V1_FeedbackRequest) in try feedback(r) }
        server.register("TrainStep") { [self] (r: Winnow_V1_RecogniserTrainStepRequest) in try trainStep(r) }
        server.register("GetStatus") { [self] (_: Winnow_V1_RecogniserStatusRequest) in status() }
    }

    // MARK: - Hosting groups

    /// Builds (or continues from `state`) the recogniser of (job, group) and serves it.
    func configure(_ r: Winnow_V1_ConfigureRecogniserRequest) async throws -> Winnow_V1_RecogniserStatus {
        func bad(_ field: String, _ why: String) -> RPCError { RPCError(.invalidArgument, "\(field): \(why)") }
        guard !r.jobID.isEmpty, r.jobID.count <= 64,
              r.jobID.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
            throw bad("job_id", "a job id is 1 to 64 of A-Z a-z 0-9 . _ -, got '\(r.jobID)'")
        }
        guard !r.datasetID.isEmpty else { throw bad("dataset_id", "empty") }
        let job: JobConfig
        do { job = try JobConfig.parse(Foundation.Data(r.hyperparametersJson.utf8), path: "hyperparameters_json") }
        catch { throw bad("hyperparameters_json", "\(error)") }
        do { try job.validate() } catch { throw bad("hyperparameters_json", "\(error)") }
        guard let a = job.methods.atjt else { throw bad("hyperparameters_json", "the job names no atjt, so it has no recognisers") }
        guard r.numGroups == UInt32(a.groups) else { throw bad("num_groups", "\(r.numGroups), the job file's atjt.groups is \(a.groups)") }
        guard r.group < r.numGroups else { throw bad("group", "\(r.group) outside 0..<\(r.numGroups)") }
        let data: SequenceDataset
        do { data = try await snapshots.snapshot(r.datasetID, from: store).sequenceDataset }
        catch let e as StoreError { throw e.rpcError }
        let recogniser = try RecogniserPlan.group(Int(r.group), of: job, data: data)
        if !r.state.isEmpty {
            do { try recogniser.restore(Array(r.state)) } catch { throw bad("state", "\(error)") }
        }
        let key = Key(job: r.jobID, group: Int(r.group))
        // a group configured again (a trainer placing it after a fault) keeps its server
        if let existing = lock.withLock({ hosted[key] }) {
            existing.condition.withLock {
                existing.recogniser = recogniser; existing.lastWeigh = nil; existing.lastFeedback = nil
                existing.condition.broadcast()
            }
            logger.info("\(key): configured again at step \(recogniser.steps)")
            return status()
        }
        let h = Hosted(recogniser)
        if let broker {
            let s = try RPCServer(configuration: RPCServerConfiguration(name: key.description, workerThreads: 4), logger: logger)
            registerServing(on: s)
            try s.bind("tcp://127.0.0.1:*")
            s.attach(broker: broker)
            h.server = s
        }
        lock.withLock { hosted[key] = h }
        if let server = h.server {
            server.start()
            // answer once the broker routes to it, so the trainer can use the name at once
            let end = Date().addingTimeInterval(10)
            while !server.isRegistered && Date() < end { try await Task.sleep(nanoseconds: 10_000_000) }
        }
        logger.info("\(key): hosted (\(job.methods.name), \(a.groups) groups, step \(recogniser.steps))")
        return status()
    }

    /// Drops the job's groups (all, or one); their servers close after answering.
    func release(_ r: Winnow_V1_ReleaseRecogniserRequest) -> Winnow_V1_RecogniserStatus {
        let dropped: [(Key, Hosted)] = lock.withLock {
            let keys = hosted.keys.filter { $0.job == r.jobID && (r.allGroups || $0.group == Int(r.group)) }
            return keys.map { ($0, hosted.removeValue(forKey: $0)!) }
        }
        for (key, h) in dropped {
            logger.info("\(key): released")
            h.condition.withLock { h.condition.broadcast() }
            // Release comes to the pool server, never to the group's own: close it now, so the
            // broker stops routing the group here before the trainer places it elsewhere
            h.server?.shutdown(grace: .seconds(1))
        }
        return status()
    }

    func status() -> Winnow_V1_RecogniserStatus {
        let all = lock.withLock { hosted.sorted { ($0.key.job, $0.key.group) < ($1.key.job, $1.key.group) } }
        var s = Winnow_V1_RecogniserStatus()
        s.groups = all.map { key, h in
            h.condition.withLock {
                var g = Winnow_V1_RecogniserGroup()
                g.jobID = key.job; g.group = UInt32(key.group)
                g.steps = UInt64(h.recogniser.steps); g.rounds = UInt32(h.recogniser.rounds)
                g.lastLoss = Float(h.recogniser.lastRecogniserLoss)
                return g
            }
        }
        return s
    }

    private func group(_ job: String, _ g: UInt32) throws -> Hosted {
        guard let h = lock.withLock({ hosted[Key(job: job, group: Int(g))] }) else {
            throw RPCError(.notFound, "\(Self.serviceName(job: job, group: Int(g))) is not hosted here (Configure it first)")
        }
        return h
    }

    // MARK: - Serving

    /// Weights of one group's rows, once the feedbacks the weigh follows are applied.
    func weigh(_ r: Winnow_V1_WeighRequest) throws -> Winnow_V1_WeighResponse {
        let h = try group(r.jobID, r.group)
        let rec = h.condition.withLock { h.recogniser }
        let T = rec.config.recogniser.maxLength, N = rec.data.itemCount
        let (items, lengths) = try SequenceBatchForm.padded(r.sequences, T: T, itemCount: N)
        let S = r.sequences.count
        let windows = !r.rowSequences.isEmpty
        guard r.rowSequences.count == r.rowPositions.count else {
            throw RPCError(.invalidArgument, "row_sequences: \(r.rowSequences.count) entries, row_positions \(r.rowPositions.count); give one of each per row")
        }
        let R = windows ? r.rowSequences.count : S
        guard r.targets.count == R else { throw RPCError(.invalidArgument, "targets: \(r.targets.count) entries for \(R) rows") }
        guard r.instances.count == R else { throw RPCError(.invalidArgument, "instances: \(r.instances.count) entries for \(R) rows") }
        for (k, t) in r.targets.enumerated() where !(t >= 1 && Int(t) <= N) {
            throw RPCError(.invalidArgument, "targets[\(k)]: item \(t) outside 1...\(N)")
        }
        for (k, i) in r.instances.enumerated() where !(i >= 0 && Int(i) < rec.instances.count) {
            throw RPCError(.invalidArgument, "instances[\(k)]: \(i) outside the job's 0..<\(rec.instances.count) training instances")
        }
        // each row's (history, target), checked before the recogniser is touched
        var spans = [Int](repeating: 0, count: R)
        for row in 0..<R {
            let s = windows ? Int(r.rowSequences[row]) : row
            guard s >= 0 && s < S else { throw RPCError(.invalidArgument, "row_sequences[\(row)]: sequence \(s) outside 0..<\(S)") }
            let len = windows ? Int(r.rowPositions[row]) + 1 : Int(lengths[s])
            guard len >= 1 && len <= Int(lengths[s]) else {
                throw RPCError(.invalidArgument, "row_positions[\(row)]: position \(len - 1) outside sequence \(s)'s 0..<\(lengths[s])")
            }
            spans[row] = len
        }
        h.condition.lock()
        defer { h.condition.unlock() }
        let deadline = Date().addingTimeInterval(orderPatience)
        while UInt64(h.recogniser.steps) < r.step {
            guard lock.withLock({ hosted[Key(job: r.jobID, group: Int(r.group))] }) === h else {
                throw RPCError(.notFound, "\(Self.serviceName(job: r.jobID, group: Int(r.group))) was released")
            }
            guard h.condition.wait(until: deadline) || UInt64(h.recogniser.steps) >= r.step else {
                throw RPCError(.deadlineExceeded, "batch \(r.batchID) follows \(r.step) feedbacks; \(h.recogniser.steps) arrived within \(Int(orderPatience)) s")
            }
        }
        if let last = h.lastWeigh, last.batch == r.batchID, last.step == r.step { return last.response }
        guard UInt64(h.recogniser.steps) == r.step else {
            throw RPCError(.failedPrecondition, "batch \(r.batchID) was to follow \(r.step) feedbacks, the recogniser has applied \(h.recogniser.steps)")
        }
        // the rows right-padded, as the trainer's own process hands them to the recogniser
        h.reserve(rows: R, T: T)
        for row in 0..<R {
            let s = windows ? Int(r.rowSequences[row]) : row
            for t in 0..<spans[row] { h.items[row * T + t] = items[s * T + t] }
            h.lengths[row] = Int32(spans[row]); h.targets[row] = r.targets[row]; h.instances[row] = r.instances[row]
        }
        var weights = [Float](repeating: 0, count: R)
        do {
            try weights.withUnsafeMutableBufferPointer { try h.recogniser.weigh(h.batch, id: r.batchID, weights: $0.baseAddress!) }
        } catch let e as SequenceWeigherError { throw RPCError(.invalidArgument, e.description) }
        var response = Winnow_V1_WeighResponse()
        response.batchID = r.batchID
        response.weights = weights
        h.lastWeigh = (r.batchID, r.step, response)
        return response
    }

    /// dL_R/dw for the batch last weighed: the recogniser's joint step.
    func feedback(_ r: Winnow_V1_FeedbackRequest) throws -> Winnow_V1_FeedbackResponse {
        let h = try group(r.jobID, r.group)
        guard !r.lossGradWrtWeights.isEmpty else { throw RPCError(.invalidArgument, "loss_grad_wrt_weights: empty (one per weighed row)") }
        for (k, d) in r.lossGradWrtWeights.enumerated() where !d.isFinite {
            throw RPCError(.invalidArgument, "loss_grad_wrt_weights[\(k)]: \(d) is not finite")
        }
        h.condition.lock()
        defer { h.condition.unlock() }
        let rec = h.recogniser
        if let last = h.lastFeedback, last.batch == r.batchID, last.step == UInt64(rec.steps) { return last.response }
        do {
            try r.lossGradWrtWeights.withUnsafeBufferPointer { d in
                try rec.feedback(dWeights: d.baseAddress!, B: d.count, id: r.batchID)
            }
        } catch let e as SequenceWeigherError { throw RPCError(.failedPrecondition, e.description) }
        var response = Winnow_V1_FeedbackResponse()
        response.recogniserLoss = Float(rec.lastRecogniserLoss)
        response.step = UInt64(rec.steps)
        if r.snapshot { response.state = Foundation.Data(try rec.snapshot()) }
        h.lastFeedback = (r.batchID, UInt64(rec.steps), response)
        h.condition.broadcast()
        return response
    }

    /// Steps of the recogniser's own task alone.
    func trainStep(_ r: Winnow_V1_RecogniserTrainStepRequest) throws -> Winnow_V1_RecogniserTrainStepResponse {
        let h = try group(r.jobID, r.group)
        guard (1...10_000).contains(r.batches) else { throw RPCError(.invalidArgument, "batches: \(r.batches) outside 1...10000") }
        h.condition.lock()
        defer { h.condition.unlock() }
        var loss = 0.0, accuracy = 0.0
        for _ in 0..<Int(r.batches) {
            let s: (loss: Double, accuracy: Double)
            do { s = try h.recogniser.trainOwnTask() } catch let e as SequenceWeigherError { throw RPCError(.failedPrecondition, e.description) }
            loss += s.loss; accuracy += s.accuracy
        }
        h.lastWeigh = nil; h.lastFeedback = nil
        var response = Winnow_V1_RecogniserTrainStepResponse()
        response.loss = Float(loss / Double(r.batches)); response.accuracy = Float(accuracy / Double(r.batches))
        return response
    }
}
