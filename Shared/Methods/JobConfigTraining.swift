// Label methods on the one training loop: an objective is a loss on a batch's full score matrix
// (forward, backward and Adam are the loop's).
//
// Shapes: B batch, T positions, C channels, N items (scores are over ids 1...N, column j = item j+1).
import Foundation
import Numerics
import Models
import Data
import Evaluation
import Training

/// One batch as the loop hands it to an objective. Pointers are valid for the call only.
public struct LabelBatch {
    /// (B, T) right-padded input items
    public let items: UnsafePointer<Int32>
    /// (B) real items per row
    public let lengths: UnsafePointer<Int32>
    /// (B) next items (ids 1...N)
    public let targets: UnsafePointer<Int32>
    /// (B) index of each row's instance in the training `InstanceSet`
    public let instances: UnsafePointer<Int32>
    /// Rows B (scored rows, or sequences when `rows` is nil).
    public let B: Int
    public let T: Int
    /// Items N: score rows are (N) wide.
    public let N: Int
    /// Under all-position training, which sequence and position each of the B rows reads (the
    /// batch's `items` and `lengths` are then per sequence); nil: row b is sequence b at its end.
    public var rows: ScoredRows? = nil
    /// The step that trains it (a remote teacher matches a prefetched request by it).
    public var id: BatchID = 0
    /// Sequences in `items` and `lengths`.
    public var sequenceCount: Int { rows?.batchSize ?? B }
}

/// What a label method changes: the loss on a batch's scores. The loop owns forward, backward
/// and the optimiser; an objective sees the full score matrix (B, N) and writes its gradient.
public protocol LabelObjective: AnyObject {
    /// Called before each epoch (1-based).
    func beginEpoch(_ epoch: Int)
    /// Given raw scores `logits` (B, N), returns the batch loss (mean over rows) and overwrites
    /// `dlogits` (B, N) with its gradient. `logits` and `dlogits` do not alias.
    func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double
    /// Called after each optimiser update (EMA teachers hook in here).
    func afterUpdate()
    /// Called after each epoch with the mean training loss.
    func endEpoch(_ epoch: Int, meanLoss: Double)
    /// The model to validate and keep instead of the trained one (`RowLoss.evaluatedModel`).
    var evaluatedModel: Backbone? { get }
    /// The next step's batch, before this step's loss (`RowLoss.prefetch`): an objective with
    /// teachers asks them now. `B` counts its rows; there are no scores.
    func prefetch(_ batch: LabelBatch) throws
    /// The objective's own state for a checkpoint (`RowLoss.checkpointState`); [] when it has none.
    func checkpointState() -> [UInt64]
    /// Puts back what `checkpointState` returned; false (changing nothing) when it does not fit.
    func restore(checkpointState: [UInt64]) -> Bool
}

extension LabelObjective {
    public var evaluatedModel: Backbone? { nil }
    public func prefetch(_ batch: LabelBatch) throws {}
    public func beginEpoch(_ epoch: Int) {}
    public func afterUpdate() {}
    public func endEpoch(_ epoch: Int, meanLoss: Double) {}
    public func checkpointState() -> [UInt64] { [] }
    public func restore(checkpointState state: [UInt64]) -> Bool { state.isEmpty }
}

/// The protocol's objective: full softmax cross-entropy of the next item.
public final class CrossEntropyObjective: LabelObjective {
    private var losses: [Float] = [], cols: [Int32] = []
    public init() {}
    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double {
        let B = batch.B, N = batch.N
        if losses.count < B { losses = [Float](repeating: 0, count: B); cols = [Int32](repeating: 0, count: B) }
        for b in 0..<B { cols[b] = batch.targets[b] - 1 }
        return softmaxCrossEntropy(losses: &losses, dlogits: dlogits, logits: logits, targets: cols, weights: nil,
                                   scale: 1 / Float(B), B: B, V: N)
    }
}

extension LabelBatch {
    /// The rows of a step's batch: its sequences' rows under the prefix scheme, every target of
    /// its windows (with their sequences and positions) under all positions.
    init(_ batch: TrainingBatch) {
        let scored = batch.scheme == .allPositions
            ? ScoredRows(sequences: batch.sequences, positions: batch.positions, count: batch.R, batchSize: batch.B) : nil
        self.init(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: batch.instances,
                  B: batch.R, T: batch.T, N: batch.N, rows: scored, id: batch.id)
    }
}

/// A label method's objective as the loop's `RowLoss`: the full score matrix (R, N) of the rows
/// in, its gradient back through the table and the user vectors. Under all positions the rows
/// are every target of the batch's windows, each knowing its sequence and position (`rows`).
final class ObjectiveLoss: RowLoss {
    let objective: LabelObjective
    private var head: FullSoftmaxHead? = nil
    private var scores: [Float] = []

    init(_ objective: LabelObjective) { self.objective = objective }

    var fingerprint: String { String(describing: type(of: objective)) }
    var evaluatedModel: Backbone? { objective.evaluatedModel }
    func beginEpoch(_ epoch: Int) { objective.beginEpoch(epoch) }
    func afterUpdate() { objective.afterUpdate() }
    func endEpoch(_ epoch: Int, meanLoss: Double) { objective.endEpoch(epoch, meanLoss: meanLoss) }
    func prefetch(_ batch: TrainingBatch) throws { try objective.prefetch(LabelBatch(batch)) }
    func checkpointState() -> [UInt64] { objective.checkpointState() }
    func restore(checkpointState state: [UInt64]) -> Bool { objective.restore(checkpointState: state) }

    func loss(_ batch: TrainingBatch, user: UnsafePointer<Float>, model: Backbone, dUser: Floats,
              weights: UnsafePointer<Float>?) throws -> Double {
        guard weights == nil else { throw TrainingError.unsupported("\(fingerprint) takes no per-sequence weights") }
        let R = batch.R, N = batch.N
        if head == nil { head = FullSoftmaxHead(itemCount: N, dim: model.dim, interests: model.interests) }
        let head = head!
        if scores.count < R * N { scores = [Float](repeating: 0, count: R * N) }
        head.scores(user: user, table: model.itemTable, B: R)
        return try scores.withUnsafeMutableBufferPointer { sc -> Double in
            sc.baseAddress!.update(from: head.logits, count: R * N)
            let total = try objective.loss(batch: LabelBatch(batch), logits: sc.baseAddress!, dlogits: head.logits)
            head.backward(user: user, table: model.itemTable, tableGrad: model.itemTableGrad, B: R)
            dUser.update(from: head.dUser, count: R * model.interests * model.dim)
            return total
        }
    }
}

/// What a caller controls of a running job: where its progress events go, how it is cancelled,
/// and where each stage checkpoints (a trainer service resumes a job from them).
public struct JobControl {
    /// Structured progress of every stage (`TrainingProgress.stage` names it).
    public var events: ((TrainingProgress) -> Void)?
    /// Checked before every step of every stage.
    public var cancellation: Cancellation?
    /// Where the stages checkpoint: the "train" stage in this file, any other stage beside it
    /// (`FILE.teacher-103`, `FILE.pretrain`, …); a stage whose file exists continues from it, and
    /// one that had finished returns its fit at once. DSS and ATJT, which train their own
    /// epochs, checkpoint theirs too (batch orders, seq2seq's draws by epoch, the recognisers'
    /// states, here or in the noise processes).
    public var checkpoints: String?
    public init(events: ((TrainingProgress) -> Void)? = nil, cancellation: Cancellation? = nil, checkpoints: String? = nil) {
        self.events = events; self.cancellation = cancellation; self.checkpoints = checkpoints
    }

    /// The checkpoint file of `stage` ("teacher 2" → `FILE.teacher-2`).
    public func checkpoint(_ stage: String) -> String? {
        checkpoints.map { stage == "train" ? $0 : $0 + "." + String(stage.map { $0.isLetter || $0.isNumber ? $0 : "-" }) }
    }
}

/// The one training loop (`TrainingLoop`) with a label method's objective, for one stage of a
/// job at a time.
public final class LabelLoop {
    public let data: SequenceDataset
    public let config: LoopConfig
    /// A line per epoch and per stage change; nil for silence.
    public var progress: ((String) -> Void)?
    /// The job's events, cancellation and checkpoints, shared by its stages.
    public var control = JobControl()
    /// The stage the next fit trains (progress events and its checkpoint file name it).
    public var stage = "train"

    public init(data: SequenceDataset, config: LoopConfig) {
        self.data = data; self.config = config
    }

    /// A loop for another stage of the same job (a teacher): same data, control and progress.
    func sub(stage: String, seed: UInt64) -> LabelLoop {
        let sub = LabelLoop(data: data, config: { var c = config; c.seed = seed; return c }())
        sub.progress = progress; sub.control = control; sub.stage = stage
        return sub
    }

    /// Trains to early stop (or maxEpochs) and leaves the best-validation weights in `model`.
    /// With `validate` nil, trains exactly `maxEpochs` epochs and keeps the last weights.
    @discardableResult
    public func fit(model: Backbone, instances: InstanceSet, objective: LabelObjective,
                    validate: ModelEvaluation?, optimizer: Adam? = nil) throws -> FitResult {
        try fit(model: model, instances: instances, loss: ObjectiveLoss(objective), validate: validate, optimizer: optimizer)
    }

    /// The same with a loss of the loop's own (base training's `CrossEntropyLoss`).
    @discardableResult
    public func fit(model: Backbone, instances: InstanceSet, loss: RowLoss, validate: ModelEvaluation?,
                    optimizer: Adam? = nil) throws -> FitResult {
        let loop = TrainingLoop(data: data, config: config)
        loop.stage = stage
        loop.cancellation = control.cancellation
        let lines = progress, events = control.events
        if lines != nil || events != nil {
            loop.progress = { p in
                if p.event != .step { lines?(p.line) }
                events?(p)
            }
        }
        if let file = control.checkpoints {
            let dir = (file as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        }
        return try loop.fit(model: model, instances: instances, loss: loss, validate: validate, optimizer: optimizer,
                            checkpoint: control.checkpoint(stage))
    }
}

extension LabelEvaluation {
    /// Each instance's top-k list (best first) under `model`, in instance order.
    public static func topLists(_ model: Backbone, data: SequenceDataset, instances: InstanceSet,
                                k: Int, maxLength: Int = 50) throws -> [[Int32]] {
        let source = ModelSoftLabelSource(teachers: [model])
        var out: [[Int32]] = []
        out.reserveCapacity(instances.count)
        let B = 256
        let batcher = Batcher(data: data, instances: instances, maxLength: maxLength, batchSize: B, padding: .right)
        let buf = BatchBuffers(B: B, T: maxLength)
        var lists = [Int32](repeating: 0, count: B * k)
        for i in 0..<batcher.batchCount {
            let n = buf.fill(batcher, batch: i)
            try lists.withUnsafeMutableBufferPointer {
                try source.topK(items: buf.items, lengths: buf.lengths, B: n, T: maxLength, k: k, out: $0.baseAddress!)
            }
            for b in 0..<n { out.append(Array(lists[(b * k)..<((b + 1) * k)])) }
        }
        return out
    }
}
