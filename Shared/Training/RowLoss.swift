// One training step and the losses it sums. A batch is B right-padded sequences; the rows a loss
// scores are its training targets: one per sequence under the prefix scheme, one per position
// that has a target under the all-position scheme (gathered from the (B, T, C) readout into
// (R, C), so every loss sees the same row-major shape whichever scheme ran).
//
// Shapes: B sequences, T positions, R scored rows, K user vectors per row, C channels, N items.
import Numerics
import Models
import Data

/// A batch's identity across a seam: the index of the step that trains it, counted from 0 over a
/// `TrainStep`'s life. A remote teacher or weigher matches a prefetched request to its use by it.
public typealias BatchID = UInt64

/// One batch as the step hands it to a loss. Pointers are valid for the call only.
public struct TrainingBatch {
    /// The step that trains it.
    public let id: BatchID
    /// (B, T) right-padded input items and (B) their lengths.
    public let items: UnsafePointer<Int32>
    public let lengths: UnsafePointer<Int32>
    public let B: Int
    public let T: Int
    /// Items N: score rows are (N) wide.
    public let N: Int
    public let scheme: TrainingScheme
    /// R scored rows.
    public let R: Int
    /// (R) each row's target item (1...N).
    public let targets: UnsafePointer<Int32>
    /// (R) each row's instance index in the training `InstanceSet`.
    public let instances: UnsafePointer<Int32>
    /// (R) each row's sequence, 0..<B (the identity under the prefix scheme).
    public let sequences: UnsafePointer<Int32>
    /// (R) each row's position in its sequence (its length − 1 under the prefix scheme).
    public let positions: UnsafePointer<Int32>
}

/// What a fit keeps between epochs besides weights, Adam's moments and the loop's counters:
/// generators, batch orders, records, a weigher's state. A checkpoint stores it and a resumed fit
/// puts it back.
public protocol CheckpointedState: AnyObject {
    /// What a checkpoint records of this part (a mismatch refuses to continue a run).
    var fingerprint: String { get }
    /// The state for a checkpoint; [] when there is none.
    func checkpointState() throws -> [UInt64]
    /// Puts back what `checkpointState` returned; false (changing nothing) when it does not fit.
    func restore(checkpointState: [UInt64]) throws -> Bool
}

/// A loss over a batch's scored rows. The step owns forward, backward and the optimiser; a loss
/// turns the rows' user vectors into a loss and their gradient (and the item table's).
public protocol RowLoss: CheckpointedState {
    /// The model the loop validates, keeps and leaves in the trained model's place, when it is
    /// not the trained model (UFNRec's EMA teacher after warm-up; same architecture); nil: the
    /// trained model.
    var evaluatedModel: Backbone? { get }
    /// Whether this loss can score rows of `scheme` (some methods read one row per sequence).
    func supports(_ scheme: TrainingScheme) -> Bool
    /// Given the rows' user vectors `user` (R, K, C), returns the batch loss (a mean over rows,
    /// row r weighted by `weights[r]` when given: its sequence's weight, as `TrainStep` spreads
    /// per-sequence weights over their rows), writes its gradient on `user` into `dUser`
    /// (R, K, C) and accumulates the item table's.
    func loss(_ batch: TrainingBatch, user: UnsafePointer<Float>, model: Backbone, dUser: Floats,
              weights: UnsafePointer<Float>?) throws -> Double
    /// Called before each epoch (1-based).
    func beginEpoch(_ epoch: Int)
    /// Called after each optimiser update (EMA teachers hook in here).
    func afterUpdate()
    /// Called after each epoch with the mean training loss.
    func endEpoch(_ epoch: Int, meanLoss: Double)
    /// The batch the next step will train, announced before this step's loss is computed (its
    /// rows, no user vectors; pointers valid for the call only): a loss with a remote side (a
    /// teacher or weigher process) sends that batch's request now, so the wire works while this
    /// step computes. The default does nothing.
    func prefetch(_ batch: TrainingBatch) throws
}

extension RowLoss {
    public var evaluatedModel: Backbone? { nil }
    public func supports(_ scheme: TrainingScheme) -> Bool { true }
    public func beginEpoch(_ epoch: Int) {}
    public func afterUpdate() {}
    public func endEpoch(_ epoch: Int, meanLoss: Double) {}
    public func prefetch(_ batch: TrainingBatch) throws {}
    public func checkpointState() -> [UInt64] { [] }
    public func restore(checkpointState state: [UInt64]) -> Bool { state.isEmpty }
}

/// Why a step or a loop could not run; every case names what to change.
public enum TrainingError: Error, Equatable, CustomStringConvertible {
    /// The loss, model and scheme do not go together.
    case unsupported(String)
    /// `Cancellation.cancel()` was called; the last checkpoint (if any) holds the last whole epoch.
    case cancelled(epoch: Int)

    public var description: String {
        switch self {
        case .unsupported(let why): return "training: \(why)"
        case .cancelled(let e): return "training: cancelled during epoch \(e)"
        }
    }
}

/// Cross-entropy of each row's target: over the full softmax of all N items (the protocol), or
/// a sampled softmax with S negatives shared per batch, log-Q corrected.
public final class CrossEntropyLoss: RowLoss {
    /// The training loss over items.
    public enum Kind: Sendable {
        case fullSoftmax
        case sampledSoftmax(negatives: Int, sampler: NegativeSampler)
    }
    public let kind: Kind
    private var full: FullSoftmaxHead? = nil
    private var sampled: SampledSoftmaxHead? = nil
    /// Draws the sampled softmax's negatives (kept in checkpoints).
    public var samplerRNG: RNG

    public init(_ kind: Kind = .fullSoftmax, seed: UInt64 = 1) {
        self.kind = kind
        samplerRNG = RNG(seed: seed).derived(0x5A3)
    }

    public var fingerprint: String {
        switch kind {
        case .fullSoftmax: return "full-softmax"
        case .sampledSoftmax(let n, let s): return "sampled-softmax-\(n)-\(s.proposal)"
        }
    }

    public func loss(_ batch: TrainingBatch, user: UnsafePointer<Float>, model: Backbone, dUser: Floats,
                     weights: UnsafePointer<Float>?) throws -> Double {
        let R = batch.R, C = model.dim, K = model.interests
        switch kind {
        case .fullSoftmax:
            if full == nil { full = FullSoftmaxHead(itemCount: model.itemCount, dim: C, interests: K) }
            let total = full!.crossEntropy(user: user, table: model.itemTable, tableGrad: model.itemTableGrad,
                                           targets: batch.targets, weights: weights, scale: 1 / Float(R), B: R)
            dUser.update(from: full!.dUser, count: R * K * C)
            return total
        case .sampledSoftmax(let S, let sampler):
            guard K == 1 else { throw TrainingError.unsupported("sampled softmax takes one user vector per row, \(model.name) gives \(K)") }
            if sampled == nil { sampled = SampledSoftmaxHead(itemCount: model.itemCount, dim: C, negatives: S, sampler: sampler) }
            let total = sampled!.crossEntropy(user: user, table: model.itemTable, tableGrad: model.itemTableGrad,
                                              targets: batch.targets, weights: weights, scale: 1 / Float(R), B: R, rng: &samplerRNG)
            dUser.update(from: sampled!.dUser, count: R * C)
            return total
        }
    }

    public func checkpointState() -> [UInt64] { samplerRNG.state }
    public func restore(checkpointState state: [UInt64]) -> Bool {
        guard let r = RNG(state: state) else { return false }
        samplerRNG = r
        return true
    }
}

/// A batch's scored rows: target, instance, sequence and position of each (R <= B·T).
public struct BatchRows {
    public private(set) var targets: [Int32], instances: [Int32], sequences: [Int32], positions: [Int32]
    public private(set) var count = 0
    public init(capacity: Int) {
        targets = [Int32](repeating: 0, count: capacity); instances = targets; sequences = targets; positions = targets
    }

    /// The rows of `batch` under `scheme`: one per sequence at its end (prefixes), or one per
    /// position that has a target (all positions).
    public mutating func gather(_ batch: FilledBatch, scheme: TrainingScheme, T: Int) {
        count = 0
        for b in 0..<batch.B {
            switch scheme {
            case .prefixes:
                append(target: batch.targets[b], instance: batch.instances?[b] ?? -1, sequence: b, position: Int(batch.lengths[b]) - 1)
            case .allPositions:
                for t in 0..<Int(batch.lengths[b]) where batch.targets[b * T + t] > 0 {
                    append(target: batch.targets[b * T + t], instance: batch.instances?[b * T + t] ?? -1, sequence: b, position: t)
                }
            }
        }
    }

    private mutating func append(target: Int32, instance: Int32, sequence: Int, position: Int) {
        targets[count] = target; instances[count] = instance; sequences[count] = Int32(sequence); positions[count] = Int32(position)
        count += 1
    }

    /// The loss's view of these rows (valid inside `body` only).
    func withBatch<R>(_ batch: FilledBatch, id: BatchID, T: Int, N: Int, scheme: TrainingScheme,
                      _ body: (TrainingBatch) throws -> R) rethrows -> R {
        try targets.withUnsafeBufferPointer { tg in try instances.withUnsafeBufferPointer { ins in
            try sequences.withUnsafeBufferPointer { sq in try positions.withUnsafeBufferPointer { ps in
                try body(TrainingBatch(id: id, items: batch.items, lengths: batch.lengths, B: batch.B, T: T, N: N, scheme: scheme, R: count,
                                       targets: tg.baseAddress!, instances: ins.baseAddress!, sequences: sq.baseAddress!,
                                       positions: ps.baseAddress!))
            } }
        } }
    }
}

/// Forward + loss + backward + Adam for one batch of either scheme; the loop's one step.
public final class TrainStep {
    public let model: Backbone
    public let optimizer: Adam
    public let loss: RowLoss
    public let scheme: TrainingScheme
    /// Steps taken: the id of the batch the next `step` trains.
    public private(set) var steps: BatchID = 0
    private let maxBatch: Int
    // the current batch's scored rows and the announced next batch's
    private var rows: BatchRows, nextRows: BatchRows
    // all positions' user rows gathered from the readout, the rows' gradient (R·K·C), the
    // (B, T, C) gradient the readout takes back, and the rows' weights (R)
    private let slab: Slab
    private let userRows: Floats, dUserRows: Floats, dEvery: Floats, rowWeights: Floats

    /// A step over batches of at most `batchSize` sequences. Throws when `loss` cannot score
    /// `scheme`'s rows or the model cannot read out every position.
    public init(model: Backbone, loss: RowLoss, optimizer: Adam, scheme: TrainingScheme, batchSize: Int) throws {
        if !loss.supports(scheme) {
            throw TrainingError.unsupported("loss \(loss.fingerprint) does not train under the \(scheme.rawValue) scheme")
        }
        if scheme == .allPositions && model.interests != 1 {
            throw TrainingError.unsupported("\(model.name) gives \(model.interests) user vectors per sequence, not one per position: use the prefixes scheme")
        }
        self.model = model; self.loss = loss; self.optimizer = optimizer; self.scheme = scheme
        maxBatch = batchSize
        let R = scheme == .allPositions ? batchSize * model.maxLength : batchSize
        rows = BatchRows(capacity: R); nextRows = BatchRows(capacity: R)
        let KC = model.interests * model.dim, BTC = batchSize * model.maxLength * model.dim
        let every = scheme == .allPositions
        slab = Slab([every ? R * KC : 0, R * KC, every ? BTC : 0, R])
        let v = slab.views
        userRows = v[0]; dUserRows = v[1]; dEvery = v[2]; rowWeights = v[3]
    }

    /// One step on B sequences items (B, T), lengths (B). Prefixes: targets and instances (B).
    /// All positions: targets and instances (B, T), 0 and -1 where a position has no target.
    /// `weights` (B) weighs each sequence's rows (nil = 1). `next`, the batch the following step
    /// will train, is announced to the loss (`RowLoss.prefetch`) before this batch's loss.
    /// Returns the batch loss.
    @discardableResult
    public func step(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                     instances: UnsafePointer<Int32>?, weights: UnsafePointer<Float>? = nil, B: Int,
                     next: FilledBatch? = nil) throws -> Double {
        precondition(B >= 1 && B <= maxBatch, "batch of \(B) sequences outside 1...\(maxBatch)")
        let T = model.maxLength, C = model.dim, N = model.itemCount, id = steps
        let current = FilledBatch(items: items, lengths: lengths, targets: targets, instances: instances, B: B)
        steps += 1
        if let next {
            precondition(next.B >= 1 && next.B <= maxBatch, "next batch of \(next.B) sequences outside 1...\(maxBatch)")
            nextRows.gather(next, scheme: scheme, T: T)
            try nextRows.withBatch(next, id: id + 1, T: T, N: N, scheme: scheme) { try loss.prefetch($0) }
        }
        model.parameters.zeroGrad()
        let out = model.forward(items: items, lengths: lengths, B: B, training: true,
                                readout: scheme == .allPositions ? .every : .last)
        rows.gather(current, scheme: scheme, T: T)
        let R = rows.count
        guard R > 0 else { return 0 }
        var user = out
        if scheme == .allPositions {
            for r in 0..<R {
                (userRows + r * C).update(from: out + (Int(rows.sequences[r]) * T + Int(rows.positions[r])) * C, count: C)
            }
            user = UnsafePointer(userRows)
        }
        if let weights { for r in 0..<R { rowWeights[r] = weights[Int(rows.sequences[r])] } }
        let total = try rows.withBatch(current, id: id, T: T, N: N, scheme: scheme) {
            try loss.loss($0, user: user, model: model, dUser: dUserRows, weights: weights == nil ? nil : UnsafePointer(rowWeights))
        }
        if scheme == .allPositions {
            // scatter the rows' gradient back to their positions; every other position gets none
            zeroFill(dEvery, B * T * C)
            for r in 0..<R {
                (dEvery + (Int(rows.sequences[r]) * T + Int(rows.positions[r])) * C).update(from: dUserRows + r * C, count: C)
            }
            model.backward(dUser: dEvery)
        } else {
            model.backward(dUser: dUserRows)
        }
        optimizer.update()
        loss.afterUpdate()
        return total
    }
}
