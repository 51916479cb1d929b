// A job's ATJT recognisers in noise processes: the trainer places group g on the g-th noise
// process (round robin when there are fewer processes than groups) and weighs each batch
// through `noise/<job>/g<g>`. The recogniser's answers are the in-process ones to the bit: the
// noise process builds the group from the same job file and data, applies weighs and feedbacks
// in step order, and a retry gets the first answer again.
//
// Faults: the trainer keeps the group's last snapshot (asked for with every `snapshotEvery`-th
// feedback) and the weighs and feedbacks sent since. When the group's process dies, it places
// the group on a live noise process from that snapshot, replays the calls since (the recogniser
// is deterministic given its state and its inputs) and goes on, so a job that lost a noise
// process ends with the metrics of one that did not.
//
// Pipelining: a feedback is sent without waiting for its answer, and the weigh of the batch
// announced next goes out right behind it; the noise process works on both while the trainer
// finishes its step. The next weigh's answer is awaited only when the loss needs it.
import Foundation
import Numerics
import Models
import Data
import Training
import Methods
import Jobs
import RPC
import SwiftProtobuf
import WinnowProto

/// The noise processes as one job's trainer sees them.
public final class RemoteRecognisers: RecogniserProvider, @unchecked Sendable {
    public let jobID: String
    public let datasetID: String
    let broker: RPCClient
    let pool: ProcessPool
    /// Send the next batch's weigh behind this batch's feedback, without waiting.
    public var pipelined = true
    /// Every this many feedbacks, the group's state comes back with the answer (the point a
    /// recovery replays from).
    public var snapshotEvery = 16
    /// How long to look for a live noise process before giving up.
    public var patience: TimeInterval = 60
    /// Progress lines (placements, recoveries).
    public var log: (String) -> Void = { _ in }
    private var configure = Winnow_V1_ConfigureRecogniserRequest()

    public init(jobID: String, datasetID: String, broker: RPCClient) {
        self.jobID = jobID; self.datasetID = datasetID; self.broker = broker
        pool = ProcessPool(kind: "noise", broker: broker)
    }

    func service(_ g: Int) -> String { "noise/\(jobID)/g\(g)" }

    // MARK: RecogniserProvider

    public func weighers(for job: JobConfig, data: SequenceDataset) throws -> [SequenceWeigher] {
        let config = try RecogniserPlan.config(job, data: data)
        var r = Winnow_V1_ConfigureRecogniserRequest()
        r.jobID = jobID; r.datasetID = datasetID; r.numGroups = UInt32(config.groups)
        let encoder = JSONEncoder(); encoder.outputFormatting = .sortedKeys
        r.hyperparametersJson = String(decoding: try encoder.encode(job), as: UTF8.self)
        configure = r
        let processes = try pool.processes()
        guard !processes.isEmpty else { throw RemoteTeacherError("ATJT weighs through noise processes and the stack runs none (winnow up --noise N)") }
        // a trainer that restarted starts its groups afresh: whatever an earlier run left goes
        releaseAll()
        for g in 0..<config.groups {
            let endpoint = processes[g % processes.count].directEndpoint
            try place(g, state: [], on: endpoint)
            log("\(service(g)): on \(endpoint)")
        }
        return (0..<config.groups).map { RemoteGroupRecogniser(group: $0, owner: self) }
    }

    /// Releases every group of this job on every noise process.
    public func releaseAll() {
        var r = Winnow_V1_ReleaseRecogniserRequest(); r.jobID = jobID; r.allGroups = true
        for w in (try? pool.processes()) ?? [] {
            _ = try? pool.call(w.directEndpoint, "Release", r, Winnow_V1_RecogniserStatus.self, timeout: .seconds(3))
        }
    }

    private func place(_ g: Int, state: [UInt8], on endpoint: String) throws {
        var r = configure
        r.group = UInt32(g); r.state = Foundation.Data(state)
        _ = try pool.call(endpoint, "Configure", r, Winnow_V1_RecogniserStatus.self, timeout: .seconds(120))
    }

    /// Places group g again from `state` on a live noise process (its own died): the group is
    /// dropped wherever it is still hosted, so that one process serves it.
    func replace(_ g: Int, state: [UInt8]) throws {
        let end = Date().addingTimeInterval(patience)
        var release = Winnow_V1_ReleaseRecogniserRequest(); release.jobID = jobID; release.group = UInt32(g)
        while true {
            let processes = (try? pool.processes()) ?? []
            for w in processes { _ = try? pool.call(w.directEndpoint, "Release", release, Winnow_V1_RecogniserStatus.self, timeout: .seconds(3)) }
            for w in processes.shuffled() {
                do { try place(g, state: state, on: w.directEndpoint); log("\(service(g)): placed again on \(w.directEndpoint)"); return }
                catch let e as RPCError where [.unavailable, .deadlineExceeded, .notFound].contains(e.code) { continue }
            }
            guard Date() < end else { throw RemoteTeacherError("no live noise process took \(service(g)) within \(Int(patience)) s") }
            Thread.sleep(forTimeInterval: 0.25)
        }
    }
}

/// Group g's recogniser in its noise process, as the trainer's weigher of group g.
final class RemoteGroupRecogniser: CheckpointedWeigher {
    let group: Int
    unowned let owner: RemoteRecognisers
    let service: String
    /// Feedbacks sent: the step the next weigh follows.
    private var steps: UInt64 = 0
    /// The last snapshot (empty: the fresh group) and the step it was taken after.
    private var snapshot: (step: UInt64, state: [UInt8]) = (0, [])
    /// Weighs and feedbacks sent since the snapshot, in order (replayed after a fault).
    private var sent: [(weigh: Winnow_V1_WeighRequest, feedback: Winnow_V1_FeedbackRequest)] = []
    /// The weigh of the batch being stepped, until its feedback.
    private var weighing: Winnow_V1_WeighRequest?
    /// A batch announced while this group's current batch awaits its feedback.
    private var announced: (id: BatchID, request: Winnow_V1_WeighRequest)?
    /// Weighs on the wire, and the last feedback on the wire.
    private var inFlight: (id: BatchID, request: Winnow_V1_WeighRequest, task: Task<Winnow_V1_WeighResponse, Error>)?
    private var lastFeedback: Task<Winnow_V1_FeedbackResponse, Error>?
    /// The next feedback brings the group's state back (a checkpoint follows it).
    private var snapshotNext = false

    init(group: Int, owner: RemoteRecognisers) {
        self.group = group; self.owner = owner; service = owner.service(group)
    }

    // MARK: SequenceWeigher

    func prefetch(_ batch: SequenceBatch, id: BatchID, behindCurrent: Bool) throws {
        guard owner.pipelined, inFlight?.id != id, announced?.id != id else { return }
        let request = self.request(batch, id: id)
        // a weigh follows the feedback of every weigh before it: send it now only if none waits
        if !behindCurrent && weighing == nil && inFlight == nil { inFlight = (id, request, send(request)) } else { announced = (id, request) }
    }

    func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws {
        var request: Winnow_V1_WeighRequest
        var task: Task<Winnow_V1_WeighResponse, Error>
        if let f = inFlight, f.id == id {
            request = f.request; task = f.task
        } else {
            if let stale = inFlight { stale.task.cancel() }
            request = announced?.id == id ? announced!.request : self.request(batch, id: id)
            request.step = steps
            task = send(request)
        }
        inFlight = nil; announced = nil
        var attempts = 0
        while true {
            do {
                if try settleFeedback() { task = send(request) }   // recovered: ask the group's new process
                let current = task
                let answer = try blocking { try await current.value }
                guard answer.weights.count == batch.B else {
                    throw SequenceWeigherError.remote("\(service) answered \(answer.weights.count) weights for \(batch.B) rows")
                }
                answer.weights.withUnsafeBufferPointer { weights.update(from: $0.baseAddress!, count: batch.B) }
                weighing = request
                return
            } catch let e as RPCError where Self.retriable(e) && attempts < 3 {
                attempts += 1
                try recover(after: e)
                task = send(request)
            } catch let e as RPCError {
                throw SequenceWeigherError.remote("\(service): \(e.code): \(e.message)")
            }
        }
    }

    func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws {
        guard let weighed = weighing, weighed.batchID == id, weighed.instances.count == B else {
            throw SequenceWeigherError.feedbackWithoutWeigh(batch: id, rows: B)
        }
        weighing = nil
        var f = Winnow_V1_FeedbackRequest()
        f.jobID = owner.jobID; f.group = UInt32(group); f.batchID = id
        f.lossGradWrtWeights = Array(UnsafeBufferPointer(start: dWeights, count: B))
        steps += 1
        f.snapshot = snapshotNext || steps % UInt64(max(1, owner.snapshotEvery)) == 0
        snapshotNext = false
        sent.append((weighed, f))
        lastFeedback = sendFeedback(f)
        if !owner.pipelined { _ = try settleFeedback() }
        if let next = announced {
            announced = nil
            var request = next.request
            request.step = steps
            inFlight = (next.id, request, send(request))
        }
    }

    // MARK: Checkpoints

    func checkpointDue() { snapshotNext = true }

    /// The step and the group's state as the last feedback brought it back: the step (8 bytes,
    /// little-endian), then the state.
    func checkpointBytes() throws -> [UInt8] {
        _ = try settleFeedback()
        guard sent.isEmpty else {
            throw SequenceWeigherError.remote("\(service): no state at step \(steps) (the last was at step \(snapshot.step)); a checkpoint follows a feedback marked due")
        }
        return withUnsafeBytes(of: snapshot.step.littleEndian) { Array($0) } + snapshot.state
    }

    /// Places the group again from a checkpoint's state (wherever it still runs, it is dropped).
    func restore(checkpointBytes bytes: [UInt8]) throws {
        guard bytes.count >= 8 else { throw SequenceWeigherError.remote("\(service): a checkpoint of \(bytes.count) bytes") }
        let step = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        let state = Array(bytes[8...])
        inFlight?.task.cancel(); inFlight = nil; announced = nil; weighing = nil; lastFeedback = nil
        try owner.replace(group, state: state)
        steps = step; snapshot = (step, state); sent = []
        owner.log("\(service): continued from a checkpoint at step \(step)")
    }

    // MARK: Wire

    /// Waits for the feedback on the wire and keeps the snapshot it carries; true when its
    /// process was gone and the group was recovered (the replay applied the feedback).
    private func settleFeedback() throws -> Bool {
        guard let t = lastFeedback else { return false }
        lastFeedback = nil
        do {
            let answer = try blocking { try await t.value }
            if !answer.state.isEmpty { keep(snapshot: Array(answer.state), step: answer.step) }
            return false
        } catch let e as RPCError where Self.retriable(e) {
            try recover(after: e)
            return true
        } catch let e as RPCError {
            throw SequenceWeigherError.remote("\(service): \(e.code): \(e.message)")
        }
    }

    private func keep(snapshot state: [UInt8], step: UInt64) {
        guard step > snapshot.step, step <= steps else { return }
        sent.removeFirst(Int(step - snapshot.step))
        snapshot = (step, state)
    }

    static func retriable(_ e: RPCError) -> Bool { [.unavailable, .notFound, .deadlineExceeded].contains(e.code) }

    /// The group's process is gone: place it again from the snapshot and replay what was sent
    /// since, one call at a time.
    private func recover(after error: RPCError) throws {
        owner.log("\(service): \(error.message); placing it again from step \(snapshot.step) and replaying \(sent.count) steps")
        inFlight?.task.cancel(); inFlight = nil
        lastFeedback = nil
        try owner.replace(group, state: snapshot.state)
        // one call at a time; a call that still reaches the group's old server is sent again
        // (the group's new process answers a repeated weigh or feedback as it did the first time)
        func again<T>(_ call: () -> Task<T, Error>) throws -> T {
            var tries = 0
            while true {
                let t = call()
                do { return try blocking { try await t.value } }
                catch let e as RPCError where Self.retriable(e) && tries < 20 { tries += 1; Thread.sleep(forTimeInterval: 0.1) }
            }
        }
        for (w, f) in Array(sent) {
            _ = try again { send(w) }
            let answer = try again { sendFeedback(f) }
            if !answer.state.isEmpty { keep(snapshot: Array(answer.state), step: answer.step) }
        }
    }

    /// Group g's rows as the wire carries them: the windows and each row's (window, position)
    /// under all positions, else the histories themselves.
    private func request(_ batch: SequenceBatch, id: BatchID) -> Winnow_V1_WeighRequest {
        var r = Winnow_V1_WeighRequest()
        r.jobID = owner.jobID; r.group = UInt32(group); r.batchID = id; r.step = steps
        if let w = batch.windows {
            r.sequences = SequenceBatchForm.sequences(items: w.items, lengths: w.lengths, B: w.count, T: batch.T)
            r.rowSequences = Array(UnsafeBufferPointer(start: w.rows.sequences, count: w.rows.count))
            r.rowPositions = Array(UnsafeBufferPointer(start: w.rows.positions, count: w.rows.count))
        } else {
            r.sequences = SequenceBatchForm.sequences(items: batch.items, lengths: batch.lengths, B: batch.B, T: batch.T)
        }
        r.targets = Array(UnsafeBufferPointer(start: batch.targets, count: batch.B))
        r.instances = Array(UnsafeBufferPointer(start: batch.instances, count: batch.B))
        return r
    }

    private func send(_ r: Winnow_V1_WeighRequest) -> Task<Winnow_V1_WeighResponse, Error> {
        let client = owner.broker, service = self.service
        return Task { try await client.call(service: service, method: "Weigh", r, as: Winnow_V1_WeighResponse.self, timeout: .seconds(40)) }
    }

    private func sendFeedback(_ r: Winnow_V1_FeedbackRequest) -> Task<Winnow_V1_FeedbackResponse, Error> {
        let client = owner.broker, service = self.service
        return Task { try await client.call(service: service, method: "Feedback", r, as: Winnow_V1_FeedbackResponse.self, timeout: .seconds(40)) }
    }
}
