// The trainer's jobs: submitted job files checked and queued, run one at a time by the one job
// runner on a dataset snapshot from the feature store, their progress kept for whoever asks,
// cancelled on request, and everything a job needs to continue written under the trainer's
// state directory, so that a restarted trainer resumes its unfinished jobs from their last
// checkpoint. The student of a finished job goes to the model registry.
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

/// What the trainer keeps of a job on disk (`<state>/<id>/job.json`).
struct JobRecord: Codable {
    var id: String
    var datasetID: String
    var config: JobConfig
    var publish: Bool
    var state: String
    var error: String?
    var created: Double
    var result: JobResult?
    var modelName: String?
    var modelVersion: UInt64?
    enum CodingKeys: String, CodingKey {
        case id, config, publish, state, error, created, result
        case datasetID = "dataset_id", modelName = "model_name", modelVersion = "model_version"
    }
}

public final class TrainerJobs: @unchecked Sendable {
    public let directory: String
    public let store: FeatureStoreEndpoint
    /// The broker, through which CSRec jobs reach the teacher processes and ATJT jobs the noise
    /// processes; nil trains both in this process.
    let broker: RPCClient?
    /// Whether the student asks for batch t + 1's soft labels (CSRec) or weights (ATJT) while
    /// batch t computes.
    public var pipelined = true
    let logger: Logger
    private let snapshots: SnapshotCache
    private let lock = NSLock()
    private let wake = NSCondition()
    private var records: [String: JobRecord] = [:]
    private var order: [String] = []
    private var queue: [String] = []
    private var live: [String: TrainingProgress] = [:]
    /// The validation metrics of each running job's last epoch (step events carry none).
    private var lastValid: [String: [String: Double]] = [:]
    private var cancellations: [String: Cancellation] = [:]
    private var userCancelled: Set<String> = []
    private var stopping = false
    private var worker: Thread?
    private var idle = true

    /// Jobs under `directory` (created if absent); datasets and the registry from `store`.
    public init(directory: String, store: FeatureStoreEndpoint, broker: RPCClient? = nil,
                logger: Logger = Logger(label: "winnow.trainer")) throws {
        self.directory = directory; self.store = store; self.broker = broker; self.logger = logger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        snapshots = SnapshotCache(directory: (directory as NSString).appendingPathComponent("snapshots"))
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
            let file = (directory as NSString).appendingPathComponent(name + "/job.json")
            guard let bytes = FileManager.default.contents(atPath: file) else { continue }
            guard let r = try? JSONDecoder().decode(JobRecord.self, from: bytes) else {
                logger.error("\(file): unreadable job record, skipped")
                continue
            }
            records[r.id] = r
            order.append(r.id)
        }
        order.sort { records[$0]!.created < records[$1]!.created }
        // a job that was queued or running when the trainer stopped continues from its checkpoint
        queue = order.filter { ["queued", "running"].contains(records[$0]!.state) }
    }

    /// Starts the worker that runs queued jobs, oldest first.
    public func start() {
        lock.withLock {
            guard worker == nil else { return }
            let t = Thread { [weak self] in self?.work() }
            t.name = "trainer jobs"
            t.stackSize = 16 << 20
            worker = t
            t.start()
        }
    }

    /// Stops the worker: a running job stops at its next step and stays "running" on disk, as
    /// after a crash, to continue from its checkpoint when a trainer starts on this directory.
    public func stop() {
        let running: [Cancellation] = lock.withLock { stopping = true; return Array(cancellations.values) }
        running.forEach { $0.cancel() }
        notifyWorker()
        while lock.withLock({ !idle && worker != nil }) { Thread.sleep(forTimeInterval: 0.01) }
    }

    // MARK: - Requests

    /// Checks a submission and queues it; nothing is created when it is refused.
    public func submit(_ request: Winnow_V1_SubmitJobRequest) async throws -> Winnow_V1_SubmitJobResponse {
        let spec = request.spec
        let config = try Self.config(of: spec)
        guard !spec.datasetID.isEmpty else { throw RPCError(.invalidArgument, "spec.dataset_id: empty (name a dataset the feature store built)") }
        var get = Winnow_V1_GetDatasetRequest(); get.datasetID = spec.datasetID
        do { _ = try await store.callGetDataset(get) } catch let e as RPCError where e.code == .notFound {
            throw RPCError(.invalidArgument, "spec.dataset_id: \(e.message)")
        } catch let e as StoreError {
            if case .notFound(let m) = e { throw RPCError(.invalidArgument, "spec.dataset_id: \(m)") }
            throw e.rpcError
        }
        let id = spec.name.isEmpty ? "job-" + String(UInt64.random(in: 0 ... .max), radix: 16) : spec.name
        guard id.count <= 64, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }), !id.hasPrefix(".") else {
            throw RPCError(.invalidArgument, "spec.name: a job id is 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .), got '\(id)'")
        }
        let record = JobRecord(id: id, datasetID: spec.datasetID, config: config, publish: spec.publish, state: "queued",
                               error: nil, created: Date().timeIntervalSince1970, result: nil, modelName: nil, modelVersion: nil)
        try lock.withLock {
            if let old = records[id] { throw RPCError(.alreadyExists, "spec.name: job \(id) exists (\(old.state)); give another name") }
            records[id] = record
            order.append(id)
        }
        do { try save(record) } catch {
            lock.withLock { records[id] = nil; order.removeAll { $0 == id } }
            throw RPCError(.internal, "cannot write the job's record: \(error)")
        }
        lock.withLock { queue.append(id) }
        notifyWorker()
        logger.info("job \(id): queued (\(config.methods.name) on \(config.backbone.rawValue), dataset \(spec.datasetID))")
        var response = Winnow_V1_SubmitJobResponse()
        response.jobID = id
        return response
    }

    /// The job file of a spec: `config_yaml` when given (the fields beside it must then agree
    /// with it or be empty), else backbone, methods and seed.
    static func config(of spec: Winnow_V1_JobSpec) throws -> JobConfig {
        func bad(_ field: String, _ why: String) -> RPCError { RPCError(.invalidArgument, "spec.\(field): \(why)") }
        var job: JobConfig
        if !spec.configYaml.isEmpty {
            do { job = try JobConfig.parse(Foundation.Data(spec.configYaml.utf8), path: "spec.config_yaml") }
            catch { throw bad("config_yaml", "\(error)") }
            if !spec.backbone.isEmpty, spec.backbone != job.backbone.rawValue {
                throw bad("backbone", "'\(spec.backbone)' differs from the job file's '\(job.backbone.rawValue)'")
            }
            if !spec.methods.isEmpty {
                let named = try JobMethods(parsing: spec.methods.joined(separator: "+"))
                guard named == job.methods else { throw bad("methods", "\(spec.methods) differ from the job file's \(job.methods.name)") }
            }
            if spec.seed != 0 { job.loop.seed = spec.seed }
        } else {
            guard let kind = ModelKind(rawValue: spec.backbone) else {
                throw bad("backbone", "'\(spec.backbone)' is not a backbone (\(ModelKind.allCases.map(\.rawValue).joined(separator: ", "))) and no config_yaml was given")
            }
            job = JobConfig(backbone: kind)
            do { job.methods = spec.methods.isEmpty ? JobMethods() : try JobMethods(parsing: spec.methods.joined(separator: "+")) }
            catch { throw bad("methods", "\(error)") }
            if spec.seed != 0 { job.loop.seed = spec.seed }
            job = job.with(job.methods, seed: job.loop.seed)
        }
        do { try job.validate() } catch { throw bad(spec.configYaml.isEmpty ? "methods" : "config_yaml", "\(error)") }
        return job
    }

    public func progress(_ id: String) throws -> Winnow_V1_JobProgress {
        try lock.withLock {
            guard let r = records[id] else { throw RPCError(.notFound, "no job \(id)") }
            return message(r)
        }
    }

    public func list() -> Winnow_V1_ListJobsResponse {
        lock.withLock {
            var response = Winnow_V1_ListJobsResponse()
            response.jobs = order.compactMap { records[$0].map(message) }
            return response
        }
    }

    /// Cancels a queued or running job and frees what it kept (checkpoints); a finished job
    /// keeps its state. Answers CANCELLED_BY_USER once the job has stopped, or RUNNING when it has
    /// not within two seconds (it stops at its next step, and GetProgress then says so).
    public func cancel(_ id: String) throws -> Winnow_V1_CancelJobResponse {
        let (state, running): (String, Cancellation?) = try lock.withLock {
            guard var r = records[id] else { throw RPCError(.notFound, "no job \(id)") }
            switch r.state {
            case "queued":
                queue.removeAll { $0 == id }
                r.state = "cancelled"; records[id] = r
                return ("cancelled", nil)
            case "running":
                userCancelled.insert(id)
                return ("running", cancellations[id])
            default:
                return (r.state, nil)
            }
        }
        if let running {
            running.cancel()
            // the worker records the cancellation at the job's next step (DSS and ATJT: at the end
            // of the epoch); answer within two seconds either way, the state saying which
            let end = Date().addingTimeInterval(2)
            while lock.withLock({ records[id]?.state == "running" }), Date() < end { Thread.sleep(forTimeInterval: 0.005) }
        } else if state == "cancelled", let r = lock.withLock({ records[id] }) {
            try? save(r)
            removeCheckpoints(id)
        }
        var response = Winnow_V1_CancelJobResponse()
        response.state = Self.state(lock.withLock { records[id]!.state })
        return response
    }

    /// Blocks until job `id` leaves the queue and its run (tests, the CLI's wait), or `timeout`.
    public func wait(_ id: String, timeout: TimeInterval) -> Winnow_V1_JobState {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if let s = lock.withLock({ records[id]?.state }), !["queued", "running"].contains(s) { return Self.state(s) }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return Self.state(lock.withLock { records[id]?.state } ?? "")
    }

    /// The stored result of a finished job.
    public func result(_ id: String) -> JobResult? { lock.withLock { records[id]?.result } }

    // MARK: - Running

    private func notifyWorker() { wake.lock(); wake.broadcast(); wake.unlock() }

    private func work() {
        while true {
            wake.lock()
            var next: String? = nil
            while true {
                let (stop, head) = lock.withLock { () -> (Bool, String?) in
                    if stopping { return (true, nil) }
                    if let h = queue.first { queue.removeFirst(); idle = false; return (false, h) }
                    idle = true
                    return (false, nil)
                }
                if stop { wake.unlock(); lock.withLock { idle = true; worker = nil }; return }
                if let head { next = head; break }
                _ = wake.wait(until: Date().addingTimeInterval(1))
            }
            wake.unlock()
            if let id = next { run(id) }
        }
    }

    private func run(_ id: String) {
        let cancellation = Cancellation()
        guard var record = lock.withLock({ () -> JobRecord? in
            guard var r = records[id] else { return nil }
            r.state = "running"; records[id] = r; cancellations[id] = cancellation
            return r
        }) else { return }
        try? save(record)
        let started = Date()
        var teachers: RemoteTeachers? = nil
        var recognisers: RemoteRecognisers? = nil
        do {
            let data = try fetch(record.datasetID)
            let log = logger
            let control = JobControl(events: { [weak self] p in
                                         if p.event == .resumed { log.info("job \(id): \(p.line)") }
                                         self?.lock.withLock {
                                             self?.live[id] = p
                                             if p.event == .epoch { self?.lastValid[id] = p.valid }
                                         }
                                     },
                                     cancellation: cancellation,
                                     checkpoints: (jobDirectory(id) as NSString).appendingPathComponent("checkpoint"))
            logger.info("job \(id): running on \(data.userCount) users, \(data.itemCount) items")
            if !TeacherPlan.members(record.config).isEmpty, let broker {
                let t = RemoteTeachers(jobID: id, datasetID: record.datasetID, broker: broker)
                t.pipelined = pipelined
                t.log = { log.info("job \(id): \($0)") }
                teachers = t
            }
            if record.config.methods.atjt != nil, let broker {
                let r = RemoteRecognisers(jobID: id, datasetID: record.datasetID, broker: broker)
                r.pipelined = pipelined
                r.log = { log.info("job \(id): \($0)") }
                recognisers = r
            }
            let trained = try JobRunner.train(record.config, data: data, control: control, teachers: teachers, recognisers: recognisers)
            record.result = trained.result
            if record.config.methods.dss == nil {
                let published = try publish(trained, record: record)
                record.modelName = published.name; record.modelVersion = published.version
            }
            record.state = "succeeded"
            teachers?.releaseAll(); recognisers?.releaseAll()
            logger.info("job \(id): succeeded in \(String(format: "%.1f", Date().timeIntervalSince(started))) s, test ndcg@10 \(trained.result.test["ndcg@10"] ?? 0)")
        } catch TrainingError.cancelled {
            let byUser = lock.withLock { userCancelled.contains(id) }
            if byUser {
                record.state = "cancelled"
                removeCheckpoints(id)
                teachers?.releaseAll(); recognisers?.releaseAll()
                logger.info("job \(id): cancelled")
            } else {
                logger.info("job \(id): stopped with the trainer; it continues from its checkpoint")
            }
        } catch {
            record.state = "failed"
            record.error = "\(error)"
            teachers?.releaseAll(); recognisers?.releaseAll()
            logger.error("job \(id): failed: \(error)")
        }
        try? save(record)
        lock.withLock {
            records[id] = record
            cancellations[id] = nil
            userCancelled.remove(id)
        }
    }

    /// The job's dataset from a snapshot (fetched once, then read from the state directory).
    private func fetch(_ datasetID: String) throws -> SequenceDataset {
        try blocking { try await self.snapshots.snapshot(datasetID, from: self.store).sequenceDataset }
    }

    /// Uploads the student with its metrics; promotes it when the job asks.
    private func publish(_ trained: TrainedJob, record: JobRecord) throws -> (name: String, version: UInt64) {
        let c = record.config
        let artifact = ModelArtifact(kind: c.backbone, model: trained.model, dim: c.dim, blocks: c.blocks)
        var meta = Winnow_V1_ModelMeta()
        meta.name = studentModelName
        meta.datasetID = record.datasetID
        meta.metrics = trained.result.test.mapKeys { "test_" + $0 }.merging(trained.result.valid.mapKeys { "valid_" + $0 }) { a, _ in a }
        meta.specJson = String(decoding: (try? JSONEncoder().encode(c)) ?? Foundation.Data(), as: UTF8.self)
        let bytes = try artifact.encoded(), described = meta, uploadID = "trainer-\(record.id)"
        let stored = try blocking { try await ModelTransfer.upload(bytes, meta: described, to: self.store, uploadID: uploadID) }
        if record.publish {
            var promote = Winnow_V1_PromoteRequest(); promote.name = stored.name; promote.version = stored.version
            let request = promote
            _ = try blocking { try await self.store.callPromote(request) }
        }
        return (stored.name, stored.version)
    }

    // MARK: - Records

    func jobDirectory(_ id: String) -> String { (directory as NSString).appendingPathComponent(id) }

    private func save(_ r: JobRecord) throws {
        let dir = jobDirectory(r.id)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(r).write(to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent("job.json")), options: .atomic)
    }

    private func removeCheckpoints(_ id: String) {
        let dir = jobDirectory(id)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix("checkpoint") {
            try? FileManager.default.removeItem(atPath: (dir as NSString).appendingPathComponent(name))
        }
    }

    static func state(_ s: String) -> Winnow_V1_JobState {
        switch s {
        case "queued": return .queued
        case "running": return .running
        case "succeeded": return .succeeded
        case "failed": return .failed
        case "cancelled": return .cancelledByUser
        default: return .unspecified
        }
    }

    /// The progress message of a record (under `lock`).
    private func message(_ r: JobRecord) -> Winnow_V1_JobProgress {
        var m = Winnow_V1_JobProgress()
        m.jobID = r.id
        m.state = Self.state(r.state)
        m.error = r.error ?? ""
        m.modelName = r.modelName ?? ""
        m.modelVersion = r.modelVersion ?? 0
        if let res = r.result {
            m.stage = "done"; m.epoch = UInt32(res.epochs)
            m.validation = res.valid; m.test = res.test
            m.loss = Float(res.log?.last?.loss ?? 0)
            let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            m.resultJson = (try? enc.encode(res)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        }
        if r.state == "running", let p = live[r.id] {
            m.stage = p.stage; m.epoch = UInt32(p.epoch); m.step = UInt64(max(p.step, 0)); m.totalSteps = UInt64(max(p.steps, 0))
            m.loss = Float(p.loss)
            m.validation = p.valid.isEmpty ? lastValid[r.id] ?? [:] : p.valid
            m.etaMicros = Self.eta(p)
        }
        return m
    }

    /// Time left in the stage at its pace so far: the rest of this epoch and the epochs that
    /// early stopping may still run (at most the patience left without a gain, at most the
    /// epochs left).
    static func eta(_ p: TrainingProgress) -> Int64 {
        guard p.epoch >= 1, p.seconds > 0 else { return 0 }
        let done = Double(p.epoch - 1) + (p.steps > 0 ? Double(p.step) / Double(p.steps) : 1)
        guard done > 0 else { return 0 }
        let perEpoch = p.seconds / done
        let epochsLeft = Double(max(0, min(p.maxEpochs - p.epoch, p.patienceLeft)))
        let thisEpoch = p.steps > 0 ? Double(p.steps - p.step) / Double(p.steps) : 0
        return Int64(((epochsLeft + thisEpoch) * perEpoch * 1e6).rounded())
    }
}

extension Dictionary where Key == String {
    func mapKeys(_ f: (String) -> String) -> [String: Value] { Dictionary(uniqueKeysWithValues: map { (f($0.key), $0.value) }) }
}
