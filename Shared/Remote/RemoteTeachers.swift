// A job's CSRec teachers in teacher processes: the trainer places each member on an idle
// process of the pool (`teacher`), the members train in parallel, idle processes left over
// become replicas, and the student reads every member's logits over the broker
// (`teacher/<job>/<member>`, replicas balanced), averaged by the same `SoftLabelEnsemble`
// an in-process module uses, so both give the same bits. A member whose every process died is
// placed again from the registry and the batch is asked again.
import Foundation
import Numerics
import Models
import Data
import Training
import Methods
import Jobs
import RPC
import Store
import SwiftProtobuf
import WinnowProto

/// Why a job's teachers could not be had from the teacher processes.
public struct RemoteTeacherError: Error, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "teachers: \(reason)" }
}

/// The pool of teacher processes as one job's trainer sees it.
public final class RemoteTeachers: TeacherProvider, @unchecked Sendable {
    public let jobID: String
    public let datasetID: String
    /// Calls through the broker (and the broker's own ListWorkers).
    let broker: RPCClient
    /// Ask for batch t + 1's soft labels while batch t computes.
    public var pipelined = true
    /// How long to wait for an idle teacher process before giving up.
    public var patience: TimeInterval = 120
    /// Progress lines (placements, recoveries).
    public var log: (String) -> Void = { _ in }
    private let lock = NSLock()
    private let pool: ProcessPool
    /// The registered model of each member, for replicas and recovery.
    private var models: [String: (name: String, version: UInt64)] = [:]
    private var spec = Winnow_V1_TeacherSpec()

    public init(jobID: String, datasetID: String, broker: RPCClient) {
        self.jobID = jobID; self.datasetID = datasetID; self.broker = broker
        pool = ProcessPool(kind: "teacher", broker: broker)
    }

    func service(_ member: TeacherMember) -> String { "teacher/\(jobID)/\(member)" }

    // MARK: TeacherProvider

    public func source(for job: JobConfig, data: SequenceDataset) throws -> SoftLabelSource {
        guard let c = job.methods.csrec else { throw RemoteTeacherError("the job names no teachers") }
        let spec = try self.spec(for: job)
        let served = CSRecMember.served(c).map { TeacherMember.csrec($0) }
        let processes = try pool.processes().count
        guard processes >= served.count else {
            throw RemoteTeacherError("\(job.methods.name) reads \(served.count) teachers at once; the stack runs \(processes) teacher processes (winnow up --teachers \(served.count))")
        }
        if c.teachers == .training {
            // the side teacher trains first; its process goes back to the pool once g1 has it
            let side = try ensureTrained([.csrec(.side)], spec: spec)[0]
            var main = spec
            main.sideModelName = side.name; main.sideModelVersion = side.version
            _ = try ensureTrained([.csrec(.main)], spec: main)
            try releaseMember(.csrec(.side))
        } else {
            _ = try ensureTrained(served, spec: spec)
        }
        try placeReplicas(served)
        let T = job.loop.maxLength, N = data.itemCount
        return SoftLabelEnsemble(members: served.map { m in
            RemoteTeacherMember(service: service(m), itemCount: N, maxLength: T, client: broker, owner: self, member: m)
        })
    }

    /// WSLRec's stage 1 on an idle teacher process, then stage 2 there: `MineTopK` over the
    /// training instances' histories in the batches the job's own process mines in (256 rows,
    /// right-padded, so the same logits and the same lists); the pre-trained model comes back
    /// from the registry with its dropout generator for stage 3.
    public func pretrained(for job: JobConfig, data: SequenceDataset, instances: InstanceSet, k: Int) throws -> (model: Backbone, mined: [[Int32]]) {
        guard job.methods.wslrec != nil else { throw RemoteTeacherError("the job has no pre-trained model (no wslrec)") }
        let model = try ensureTrained([.pretrained], spec: try spec(for: job))[0]
        let store = RemoteFeatureStore(client: broker, timeout: .seconds(120))
        let pre = try blocking { try await ModelArtifact(decoding: ModelTransfer.download(name: model.name, version: model.version, from: store).bytes) }
            .backbone()
        let T = job.loop.maxLength, B = 256, service = self.service(.pretrained)
        let batcher = Batcher(data: data, instances: instances, maxLength: T, batchSize: B, padding: .right)
        let buf = BatchBuffers(B: B, T: T)
        var mined: [[Int32]] = []
        mined.reserveCapacity(instances.count)
        for i in 0..<batcher.batchCount {
            let n = buf.fill(batcher, batch: i)
            var r = Winnow_V1_MineTopKRequest()
            r.sequences = SequenceBatchForm.sequences(items: buf.items, lengths: buf.lengths, B: n, T: T)
            r.k = Int32(k)
            let request = r, broker = self.broker
            let answer = try blocking {
                try await broker.call(service: service, method: "MineTopK", request, as: Winnow_V1_MineTopKResponse.self,
                                      timeout: .seconds(60), idempotent: true)
            }
            guard answer.items.count == n * k else { throw RemoteTeacherError("\(service) mined \(answer.items.count) items for \(n) rows × \(k)") }
            for b in 0..<n { mined.append(Array(answer.items[(b * k)..<((b + 1) * k)])) }
        }
        try releaseMember(.pretrained)
        return (pre, mined)
    }

    /// The spec every member of `job` is trained from (the job file travels whole).
    func spec(for job: JobConfig) throws -> Winnow_V1_TeacherSpec {
        guard !TeacherPlan.members(job).isEmpty else { throw RemoteTeacherError("the job names no teachers") }
        var spec = Winnow_V1_TeacherSpec()
        spec.jobID = jobID; spec.datasetID = datasetID; spec.backbone = job.backbone.rawValue
        spec.seed = job.loop.seed
        if let c = job.methods.csrec {
            spec.subsample = Double(c.p)
            spec.kind = [.model: .modelLevel, .data: .dataLevel, .training: .trainingLevel][c.teachers]!
        } else {
            spec.kind = .wslrecPretrained
        }
        let encoder = JSONEncoder(); encoder.outputFormatting = .sortedKeys
        spec.hyperparametersJson = String(decoding: try encoder.encode(job), as: UTF8.self)
        lock.withLock { self.spec = spec }
        return spec
    }

    /// Trains one ensemble member of `job` (if no process serves it yet) and loads it onto idle
    /// processes until `replicas` serve it; returns how many do (fewer when the pool runs out).
    @discardableResult
    public func serve(_ member: TeacherMember, of job: JobConfig, replicas: Int) throws -> Int {
        _ = try ensureTrained([member], spec: try spec(for: job))
        var serving = try workers().filter { $0.service == service(member) }.count
        for w in try workers() where w.service == "teacher" && serving < replicas {
            guard let s = try? status(w.directEndpoint), s.state == "idle" else { continue }
            if (try? load(member, on: w.directEndpoint)) != nil { serving += 1 }
        }
        return serving
    }

    /// Releases every process serving this job (training stops, state is freed).
    public func releaseAll() {
        guard let serving = try? workers().filter({ $0.service.hasPrefix("teacher/\(jobID)/") }) else { return }
        for w in serving { _ = try? release(w.directEndpoint) }
    }

    // MARK: Placing members

    typealias Worker = ProcessPool.Worker

    func workers() throws -> [Worker] { try pool.workers() }

    private func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ endpoint: String, _ method: String, _ r: Req,
                                                                             _ t: Res.Type, timeout: Duration = .seconds(10)) throws -> Res {
        try pool.call(endpoint, method, r, t, timeout: timeout)
    }

    private func status(_ endpoint: String) throws -> Winnow_V1_TeacherStatus {
        try call(endpoint, "GetStatus", Winnow_V1_TeacherStatusRequest(), Winnow_V1_TeacherStatus.self, timeout: .seconds(3))
    }

    private func release(_ endpoint: String) throws -> Winnow_V1_TeacherStatus {
        var r = Winnow_V1_ReleaseTeacherRequest(); r.jobID = jobID
        return try call(endpoint, "Release", r, Winnow_V1_TeacherStatus.self, timeout: .seconds(3))
    }

    private func releaseMember(_ member: TeacherMember) throws {
        for w in try workers() where w.service == service(member) { _ = try? release(w.directEndpoint) }
    }

    /// Runs `claim` on idle pool processes until one takes it; waits for one up to `patience`.
    private func onIdleProcess(for what: String, _ claim: (String) throws -> Void) throws -> String {
        let end = Date().addingTimeInterval(patience)
        while true {
            for w in try workers() where w.service == "teacher" {
                guard let s = try? status(w.directEndpoint), s.state == "idle" || s.state == "failed" else { continue }
                do { try claim(w.directEndpoint); return w.directEndpoint }
                catch let e as RPCError where e.code == .failedPrecondition || e.code == .unavailable || e.code == .deadlineExceeded { continue }
            }
            guard Date() < end else {
                throw RemoteTeacherError("no idle teacher process took \(what) within \(Int(patience)) s (winnow up --teachers N starts more)")
            }
            Thread.sleep(forTimeInterval: 0.25)
        }
    }

    /// Trains each member that no process serves yet, in parallel, and waits for all; returns
    /// each member's registered model. A process that dies while training is replaced.
    func ensureTrained(_ members: [TeacherMember], spec: Winnow_V1_TeacherSpec) throws -> [(name: String, version: UInt64)] {
        var placed: [TeacherMember: String] = [:]   // member → the training process's endpoint
        func place(_ m: TeacherMember) throws {
            var s = spec; s.member = m.description
            var request = Winnow_V1_TrainTeacherRequest(); request.spec = s
            placed[m] = try onIdleProcess(for: service(m)) { endpoint in
                _ = try call(endpoint, "Train", request, Winnow_V1_TrainTeacherResponse.self)
            }
            log("\(service(m)): training on \(placed[m]!)")
        }
        // A trainer that restarted finds its members where it left them: trained and serving, or
        // still training in a pool process. Both are adopted; only members no process holds are placed.
        for w in try workers() where w.service == "teacher" {
            guard let s = try? status(w.directEndpoint), s.spec.jobID == jobID,
                  let m = members.first(where: { $0.description == s.spec.member }) else { continue }
            switch s.state {
            case "ready":
                lock.withLock { models[m.description] = (s.modelName, s.modelVersion) }
            case "training" where placed[m] == nil:
                placed[m] = w.directEndpoint
                log("\(service(m)): still training on \(w.directEndpoint); adopted")
            default:
                continue
            }
        }
        for m in members where placed[m] == nil && lock.withLock({ models[m.description] }) == nil {
            try place(m)
        }
        var lost: [TeacherMember: Date] = [:]
        while true {
            var waiting = false
            for (m, endpoint) in placed {
                if lock.withLock({ models[m.description] }) != nil { continue }
                let s: Winnow_V1_TeacherStatus
                do { s = try status(endpoint) } catch {
                    // unreachable: its process died (the supervisor restarts it idle); place again
                    let since = lost[m] ?? Date(); lost[m] = since
                    if Date().timeIntervalSince(since) > 5 { lost[m] = nil; log("\(service(m)): its process is gone; placing it again"); try place(m) }
                    waiting = true
                    continue
                }
                lost[m] = nil
                switch s.state {
                case "ready" where s.spec.member == m.description && s.spec.jobID == jobID:
                    lock.withLock { models[m.description] = (s.modelName, s.modelVersion) }
                case "failed":
                    throw RemoteTeacherError("\(service(m)) failed to train: \(s.error)")
                case "training":
                    waiting = true
                default:
                    // released or restarted under another job: place it again
                    try place(m); waiting = true
                }
            }
            if !waiting { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return try members.map { m in
            guard let model = lock.withLock({ models[m.description] }) else { throw RemoteTeacherError("\(service(m)) has no model") }
            return model
        }
    }

    /// Makes the idle processes left in the pool replicas of the members, round robin.
    private func placeReplicas(_ members: [TeacherMember]) throws {
        var k = 0
        for w in try workers() where w.service == "teacher" {
            guard let s = try? status(w.directEndpoint), s.state == "idle" else { continue }
            let m = members[k % members.count]
            if (try? load(m, on: w.directEndpoint)) != nil { k += 1; log("\(service(m)): replica on \(w.directEndpoint)") }
        }
    }

    private func load(_ m: TeacherMember, on endpoint: String) throws {
        guard let model = lock.withLock({ models[m.description] }) else { throw RemoteTeacherError("\(service(m)) has no model to load") }
        var r = Winnow_V1_LoadTeacherRequest()
        r.modelName = model.name; r.modelVersion = model.version
        r.spec = lock.withLock { spec }; r.spec.member = m.description
        _ = try call(endpoint, "Load", r, Winnow_V1_TeacherStatus.self, timeout: .seconds(60))
    }

    /// After a call to `member` failed: when no process serves it any more, loads it onto an
    /// idle one (the supervisor restarts a killed process idle) and waits until it serves.
    func recover(_ m: TeacherMember) throws {
        if try workers().contains(where: { $0.service == service(m) }) { return }   // a replica is left; the broker routes there
        log("\(service(m)): no process serves it; loading it again")
        _ = try onIdleProcess(for: service(m)) { endpoint in try load(m, on: endpoint) }
    }
}

/// One member's logits from its processes: the rows of a batch in chunks that fit the wire,
/// all in flight at once (replicas share them), asked for ahead when the loop announces a batch.
final class RemoteTeacherMember: SoftLabelSource {
    let service: String
    let itemCount: Int
    let maxLength: Int
    let client: RPCClient
    unowned let owner: RemoteTeachers
    let member: TeacherMember
    /// Rows per call: a reply of at most 8 MB.
    let rowsPerCall: Int
    private var pending: [BatchID: Task<[Float], Error>] = [:]

    init(service: String, itemCount: Int, maxLength: Int, client: RPCClient, owner: RemoteTeachers, member: TeacherMember) {
        self.service = service; self.itemCount = itemCount; self.maxLength = maxLength
        self.client = client; self.owner = owner; self.member = member
        rowsPerCall = max(1, (8 << 20) / (4 * itemCount))
    }

    func prefetch(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?, batch: BatchID) throws {
        guard owner.pipelined, pending[batch] == nil else { return }
        pending[batch] = request(items: items, lengths: lengths, B: B, T: T, rows: rows)
    }

    func logits(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                batch: BatchID?, out: Floats) throws {
        let R = rows?.count ?? B
        var task = batch.flatMap { pending.removeValue(forKey: $0) } ?? request(items: items, lengths: lengths, B: B, T: T, rows: rows)
        // a pending answer for an older batch is no longer wanted
        if let batch { for k in pending.keys where k < batch { pending.removeValue(forKey: k)?.cancel() } }
        var attempt = 0
        while true {
            do {
                let current = task
                let e = try blocking { try await current.value }
                guard e.count == R * itemCount else { throw RemoteTeacherError("\(service) answered \(e.count) logits for \(R) rows × \(itemCount) items") }
                e.withUnsafeBufferPointer { out.update(from: $0.baseAddress!, count: R * itemCount) }
                return
            } catch let error as RPCError where [.unavailable, .notFound, .deadlineExceeded].contains(error.code) && attempt < 3 {
                attempt += 1
                owner.log("\(service): \(error.message); asking again")
                try owner.recover(member)
                task = request(items: items, lengths: lengths, B: B, T: T, rows: rows)
            }
        }
    }

    func topK(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, k: Int, out: UnsafeMutablePointer<Int32>) throws {
        try SoftLabels.topK(of: self, items: items, lengths: lengths, B: B, T: T, k: k, out: out)
    }

    /// Sends the batch's rows now (the pointers are read before this returns); the task's value
    /// is the (R, N) logits.
    private func request(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?) -> Task<[Float], Error> {
        let sequences = SequenceBatchForm.sequences(items: items, lengths: lengths, B: B, T: T)
        let R = rows?.count ?? B, N = itemCount, per = rowsPerCall
        var requests: [Winnow_V1_SoftLabelsRequest] = []
        var start = 0
        while start < R {
            let end = min(R, start + per)
            var r = Winnow_V1_SoftLabelsRequest()
            r.returnLogits = true
            if let rows {
                r.sequences = sequences
                r.rowSequences = Array(UnsafeBufferPointer(start: rows.sequences + start, count: end - start))
                r.rowPositions = Array(UnsafeBufferPointer(start: rows.positions + start, count: end - start))
            } else {
                r.sequences = Array(sequences[start..<end])
            }
            requests.append(r)
            start = end
        }
        let client = self.client, service = self.service
        return Task {
            var e = [Float](repeating: 0, count: R * N)
            try await withThrowingTaskGroup(of: (Int, Winnow_V1_SoftLabelsResponse).self) { group in
                for (k, r) in requests.enumerated() {
                    group.addTask {
                        (k, try await client.call(service: service, method: "SoftLabels", r, as: Winnow_V1_SoftLabelsResponse.self,
                                                  timeout: .seconds(30), idempotent: true))
                    }
                }
                for try await (k, answer) in group {
                    let first = k * per, count = min(R, first + per) - first
                    try e.withUnsafeMutableBufferPointer { try answer.dense.copy(into: $0.baseAddress! + first * N, count: count * N, what: service) }
                }
            }
            return e
        }
    }
}
