// A teacher process's one member: trained here from a job's spec (or loaded from the registry
// as a replica of a member trained elsewhere), published to the model registry, then served as
// `teacher/<job>/<member>` until the job releases it. An idle process is in the pool that a
// trainer draws from; it serves one member at a time.
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

public final class TeacherWorker: @unchecked Sendable {
    public enum State: String { case idle, training, ready, failed }

    let store: FeatureStoreEndpoint
    /// Where the member's own server registers (the broker's endpoint); nil serves no member
    /// server (tests call the handlers directly).
    let broker: String?
    let logger: Logger
    private let snapshots = SnapshotCache()
    private let lock = NSLock()
    /// One computation at a time: a member's buffers are its own.
    private let compute = NSLock()
    private var state = State.idle
    private var spec = Winnow_V1_TeacherSpec()
    private var source: ModelSoftLabelSource?
    private var modelName = "", modelVersion: UInt64 = 0
    private var error = ""
    private var progressValue = 0.0
    private var cancellation: Cancellation?
    private var memberServer: RPCServer?
    /// Bumped by every claim and release, so a training thread that was released stops quietly.
    private var generation = 0

    public init(store: FeatureStoreEndpoint, broker: String?, logger: Logger = Logger(label: "winnow.teacher")) {
        self.store = store; self.broker = broker; self.logger = logger
    }

    /// The registry name and broker service of a job's member.
    public static func memberName(job: String, member: String) -> String { "teacher/\(job)/\(member)" }

    /// Registers every teacher rpc except Health on `server`.
    public func register(on server: RPCServer) {
        server.register("Train") { [self] (r: Winnow_V1_TrainTeacherRequest) in try train(r) }
        server.register("Load") { [self] (r: Winnow_V1_LoadTeacherRequest) in try await load(r) }
        registerServing(on: server)
    }

    /// The rpcs a member's own server answers too.
    private func registerServing(on server: RPCServer) {
        server.register("GetStatus") { [self] (_: Winnow_V1_TeacherStatusRequest) in status() }
        server.register("SoftLabels") { [self] (r: Winnow_V1_SoftLabelsRequest) in try softLabels(r) }
        server.register("MineTopK") { [self] (r: Winnow_V1_MineTopKRequest) in try mineTopK(r) }
        server.register("Release") { [self] (r: Winnow_V1_ReleaseTeacherRequest) in release(r) }
    }

    // MARK: - Claiming a member

    /// The job file and member of a spec, checked; the error names the field.
    static func check(_ spec: Winnow_V1_TeacherSpec) throws -> (job: JobConfig, member: TeacherMember) {
        func bad(_ field: String, _ why: String) -> RPCError { RPCError(.invalidArgument, "spec.\(field): \(why)") }
        guard !spec.jobID.isEmpty, spec.jobID.count <= 64,
              spec.jobID.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
            throw bad("job_id", "a job id is 1 to 64 of A-Z a-z 0-9 . _ -, got '\(spec.jobID)'")
        }
        guard let member = TeacherMember(name: spec.member) else {
            throw bad("member", "'\(spec.member)' is not a member name (m0, m1, …, side, main, pretrain)")
        }
        let job: JobConfig
        do { job = try JobConfig.parse(Foundation.Data(spec.hyperparametersJson.utf8), path: "spec.hyperparameters_json") }
        catch { throw bad("hyperparameters_json", "\(error)") }
        do { try job.validate() } catch { throw bad("hyperparameters_json", "\(error)") }
        guard TeacherPlan.members(job).contains(member) else {
            throw bad("member", "'\(spec.member)' is not a teacher of \(job.methods.name)")
        }
        if !spec.backbone.isEmpty, spec.backbone != job.backbone.rawValue {
            throw bad("backbone", "'\(spec.backbone)' differs from the job file's '\(job.backbone.rawValue)'")
        }
        guard !spec.datasetID.isEmpty else { throw bad("dataset_id", "empty") }
        if member == .csrec(.main) && spec.sideModelName.isEmpty { throw bad("side_model_name", "the main teacher needs its registered side teacher") }
        return (job, member)
    }

    /// Takes the member of `spec` if this process is free; the error says what it serves.
    private func claim(_ spec: Winnow_V1_TeacherSpec, as newState: State) throws -> (generation: Int, cancellation: Cancellation) {
        try lock.withLock {
            guard state == .idle || state == .failed else {
                throw RPCError(.failedPrecondition, "busy: \(state.rawValue) \(Self.memberName(job: self.spec.jobID, member: self.spec.member))")
            }
            state = newState; self.spec = spec; error = ""; progressValue = 0
            modelName = Self.memberName(job: spec.jobID, member: spec.member); modelVersion = 0
            generation += 1
            let c = Cancellation()
            cancellation = c
            return (generation, c)
        }
    }

    /// Starts training the spec's member in the background; GetStatus follows it.
    func train(_ request: Winnow_V1_TrainTeacherRequest) throws -> Winnow_V1_TrainTeacherResponse {
        let (job, member) = try Self.check(request.spec)
        let spec = request.spec
        let (gen, cancellation) = try claim(spec, as: .training)
        let name = Self.memberName(job: spec.jobID, member: spec.member)
        logger.info("\(name): training (\(job.methods.name) \(member) on \(job.backbone.rawValue), dataset \(spec.datasetID))")
        let thread = Thread { [self] in
            do {
                let store = self.store, datasetID = spec.datasetID
                let data = try blocking { try await self.snapshots.snapshot(datasetID, from: store).sequenceDataset }
                var side: Backbone? = nil
                if member == .csrec(.main) {
                    let (sideName, sideVersion) = (spec.sideModelName, spec.sideModelVersion)
                    side = try blocking { try await ModelArtifact(decoding: ModelTransfer.download(name: sideName, version: sideVersion, from: store).bytes) }
                        .backbone()
                }
                let events: (TrainingProgress) -> Void = { [self] p in
                    lock.withLock { if generation == gen { progressValue = Double(p.epoch) / Double(max(1, p.maxEpochs)) } }
                }
                let g = try TeacherPlan.train(member, of: job, data: data, side: side,
                                              control: JobControl(events: events, cancellation: cancellation))
                var meta = Winnow_V1_ModelMeta()
                meta.name = name
                meta.datasetID = datasetID
                meta.specJson = spec.hyperparametersJson
                // WSLRec's stage 3 goes on from the pre-trained model: its dropout generator travels too
                let bytes = try ModelArtifact(kind: job.backbone, model: g, dim: job.dim, blocks: job.blocks,
                                              generator: member == .pretrained).encoded()
                let described = meta
                let stored = try blocking { try await ModelTransfer.upload(bytes, meta: described, to: store, uploadID: "\(name)-\(gen)") }
                try serve(g, name: name, version: stored.version, generation: gen)
                logger.info("\(name): trained and registered as version \(stored.version)")
            } catch TrainingError.cancelled {
                logger.info("\(name): training stopped (released)")
            } catch {
                lock.withLock {
                    guard generation == gen else { return }
                    state = .failed; self.error = "\(error)"
                }
                logger.error("\(name): training failed: \(error)")
            }
        }
        thread.name = "teacher training"
        thread.stackSize = 16 << 20
        thread.start()
        var response = Winnow_V1_TrainTeacherResponse()
        response.modelName = name
        return response
    }

    /// Becomes a replica of a registered member: downloads it and serves it.
    func load(_ request: Winnow_V1_LoadTeacherRequest) async throws -> Winnow_V1_TeacherStatus {
        guard !request.modelName.isEmpty else { throw RPCError(.invalidArgument, "model_name: empty") }
        guard TeacherMember(name: request.spec.member) != nil, !request.spec.jobID.isEmpty else {
            throw RPCError(.invalidArgument, "spec: name the job_id and member this model serves")
        }
        let name = Self.memberName(job: request.spec.jobID, member: request.spec.member)
        let (gen, _) = try claim(request.spec, as: .training)
        do {
            let got = try await ModelTransfer.download(name: request.modelName, version: request.modelVersion, from: store)
            let g = try ModelArtifact(decoding: got.bytes).backbone()
            try serve(g, name: name, version: got.meta.version, generation: gen)
            logger.info("\(name): replica of \(request.modelName) v\(got.meta.version)")
        } catch {
            lock.withLock { if generation == gen { state = .failed; self.error = "\(error)" } }
            if let e = error as? RPCError { throw e }
            if let e = error as? StoreError { throw e.rpcError }
            throw RPCError(.failedPrecondition, "cannot load \(request.modelName) v\(request.modelVersion): \(error)")
        }
        return status()
    }

    /// Serves `g` as `name` (its own server, registered with the broker) unless released meanwhile.
    private func serve(_ g: Backbone, name: String, version: UInt64, generation gen: Int) throws {
        var server: RPCServer? = nil
        if let broker {
            let s = try RPCServer(configuration: RPCServerConfiguration(name: name, workerThreads: 2), logger: logger)
            registerServing(on: s)
            try s.bind("tcp://127.0.0.1:*")
            s.attach(broker: broker)
            server = s
        }
        let kept = lock.withLock { () -> Bool in
            guard generation == gen else { return false }
            source = ModelSoftLabelSource(teachers: [g])
            modelVersion = version
            state = .ready; progressValue = 1
            memberServer = server
            return true
        }
        guard kept else { return }
        guard let server else { return }
        server.start()
        // answer once the broker routes to it, so the caller can use the name at once
        let end = Date().addingTimeInterval(10)
        while !server.isRegistered && Date() < end { Thread.sleep(forTimeInterval: 0.01) }
    }

    /// Leaves the member (stopping its training) and returns to the pool.
    func release(_ request: Winnow_V1_ReleaseTeacherRequest) -> Winnow_V1_TeacherStatus {
        let (server, cancellation): (RPCServer?, Cancellation?) = lock.withLock {
            guard request.jobID.isEmpty || request.jobID == spec.jobID, state != .idle else { return (nil, nil) }
            logger.info("\(Self.memberName(job: spec.jobID, member: spec.member)): released")
            generation += 1
            state = .idle; source = nil; error = ""; progressValue = 0
            defer { memberServer = nil; self.cancellation = nil }
            return (memberServer, self.cancellation)
        }
        cancellation?.cancel()
        // the member's server may be answering this very call: let it reply, then close
        if let server { DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { server.shutdown(grace: .seconds(1)) } }
        return status()
    }

    func status() -> Winnow_V1_TeacherStatus {
        lock.withLock {
            var s = Winnow_V1_TeacherStatus()
            s.spec = spec
            s.state = state.rawValue
            s.progress = progressValue
            s.modelName = state == .idle ? "" : modelName
            s.modelVersion = modelVersion
            s.error = error
            return s
        }
    }

    // MARK: - Serving

    /// The member being served, or FAILED_PRECONDITION saying why there is none.
    private func served() throws -> ModelSoftLabelSource {
        try lock.withLock {
            guard state == .ready, let source else {
                throw RPCError(.failedPrecondition, "this teacher serves no member yet (\(state.rawValue))")
            }
            return source
        }
    }

    /// Logits, soft labels (softmax(e / τ)) or their top-k for a batch's rows.
    func softLabels(_ r: Winnow_V1_SoftLabelsRequest) throws -> Winnow_V1_SoftLabelsResponse {
        let source = try served()
        let g = source.teachers[0], T = g.maxLength, N = source.itemCount
        let (items, lengths) = try SequenceBatchForm.padded(r.sequences, T: T, itemCount: N)
        let B = r.sequences.count
        guard r.rowSequences.count == r.rowPositions.count else {
            throw RPCError(.invalidArgument, "row_sequences: \(r.rowSequences.count) entries, row_positions \(r.rowPositions.count); give one of each per row")
        }
        for (k, (b, t)) in zip(r.rowSequences, r.rowPositions).enumerated() {
            guard b >= 0 && Int(b) < B else { throw RPCError(.invalidArgument, "row_sequences[\(k)]: sequence \(b) outside 0..<\(B)") }
            guard t >= 0 && t < lengths[Int(b)] else {
                throw RPCError(.invalidArgument, "row_positions[\(k)]: position \(t) outside sequence \(b)'s 0..<\(lengths[Int(b)])")
            }
        }
        if !r.returnLogits { guard r.temperature > 0 else { throw RPCError(.invalidArgument, "temperature: must be positive, got \(r.temperature)") } }
        guard r.topK >= 0 && Int(r.topK) <= N else { throw RPCError(.invalidArgument, "top_k: \(r.topK) outside 0...\(N)") }
        for (k, c) in r.candidates.enumerated() where !(c >= 1 && Int(c) <= N) {
            throw RPCError(.invalidArgument, "candidates[\(k)]: item \(c) outside 1...\(N)")
        }
        let R = r.rowSequences.isEmpty ? B : r.rowSequences.count
        let width = r.topK > 0 ? Int(r.topK) : (r.candidates.isEmpty ? N : r.candidates.count)
        guard R * width * 4 <= WireProtocol.defaultMaxPayloadBytes - 1024 else {
            throw RPCError(.invalidArgument, "\(R) rows × \(width) floats do not fit a reply of \(WireProtocol.defaultMaxPayloadBytes) bytes; ask for fewer rows")
        }
        var e = [Float](repeating: 0, count: R * N)
        try compute.withLock {
            try items.withUnsafeBufferPointer { ib in
                try lengths.withUnsafeBufferPointer { lb in
                    try e.withUnsafeMutableBufferPointer { eb in
                        try r.rowSequences.withUnsafeBufferPointer { rs in
                            try r.rowPositions.withUnsafeBufferPointer { rp in
                                let rows = rs.isEmpty ? nil : ScoredRows(sequences: rs.baseAddress!, positions: rp.baseAddress!, count: R, batchSize: B)
                                do {
                                    try source.logits(items: ib.baseAddress!, lengths: lb.baseAddress!, B: B, T: T, rows: rows, batch: nil, out: eb.baseAddress!)
                                } catch let err as SoftLabelError { throw RPCError(.invalidArgument, err.reason) }
                                if !r.returnLogits {
                                    SoftLabels.fromLogits(eb.baseAddress!, logits: UnsafePointer(eb.baseAddress!), targets: nil,
                                                          temperature: r.temperature, B: R, N: N)
                                }
                            }
                        }
                    }
                }
            }
        }
        var response = Winnow_V1_SoftLabelsResponse()
        response.modelVersion = lock.withLock { modelVersion }
        if r.topK > 0 {
            let k = Int(r.topK)
            var top = [Int32](repeating: 0, count: R * k)
            e.withUnsafeBufferPointer { eb in
                top.withUnsafeMutableBufferPointer { tb in
                    for row in 0..<R { SoftLabels.topK(row: eb.baseAddress! + row * N, N: N, k: k, out: tb.baseAddress! + row * k) }
                }
            }
            response.topkItems = top
            response.topkProbs = (0..<(R * k)).map { e[($0 / k) * N + Int(top[$0]) - 1] }
        } else if !r.candidates.isEmpty {
            let C = r.candidates.count
            let picked = (0..<(R * C)).map { e[($0 / C) * N + Int(r.candidates[$0 % C]) - 1] }
            picked.withUnsafeBufferPointer { response.dense = Winnow_V1_FloatTensor(shape: [R, C], values: $0) }
        } else {
            e.withUnsafeBufferPointer { response.dense = Winnow_V1_FloatTensor(shape: [R, N], values: $0) }
        }
        return response
    }

    /// WSLRec-style top-k mining: the member's k best items after each sequence (history items
    /// left out when asked).
    func mineTopK(_ r: Winnow_V1_MineTopKRequest) throws -> Winnow_V1_MineTopKResponse {
        let source = try served()
        let g = source.teachers[0], T = g.maxLength, N = source.itemCount
        let (items, lengths) = try SequenceBatchForm.padded(r.sequences, T: T, itemCount: N)
        let B = r.sequences.count, k = Int(r.k)
        guard k >= 1 && k <= N else { throw RPCError(.invalidArgument, "k: \(r.k) outside 1...\(N)") }
        var e = [Float](repeating: 0, count: B * N), top = [Int32](repeating: 0, count: B * k)
        compute.withLock {
            items.withUnsafeBufferPointer { ib in
                lengths.withUnsafeBufferPointer { lb in
                    e.withUnsafeMutableBufferPointer { eb in
                        try? source.logits(items: ib.baseAddress!, lengths: lb.baseAddress!, B: B, T: T, out: eb.baseAddress!)
                        if r.excludeHistory {
                            for b in 0..<B { for t in 0..<Int(lb[b]) { eb[b * N + Int(ib[b * T + t]) - 1] = -.infinity } }
                        }
                        top.withUnsafeMutableBufferPointer { tb in
                            for b in 0..<B { SoftLabels.topK(row: eb.baseAddress! + b * N, N: N, k: k, out: tb.baseAddress! + b * k) }
                        }
                    }
                }
            }
        }
        var response = Winnow_V1_MineTopKResponse()
        response.items = top
        response.scores = (0..<(B * k)).map { e[($0 / k) * N + Int(top[$0]) - 1] }
        return response
    }
}
