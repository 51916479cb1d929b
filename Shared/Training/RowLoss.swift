// One training step and the losses it sums. A batch is B right-padded sequences; the rows a loss
// scores are its training targets: one per sequence under the prefix scheme, one per position
// that has a target under the all-position scheme (gathered from the (B, T, C) readout into
// (R, C), so every loss sees the same row-major shape whichever scheme ran).
//
// Shapes: B sequences, T positions, R scored rows, K user vectors per row, C channels, N items.
import Numerics
import Models
import Data

/// One batch as the step hands it to a loss. Pointers are valid for the call only.
public struct TrainingBatch {
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

/// A loss over a batch's scored rows. The step owns forward, backward and the optimiser; a loss
/// turns the rows' user vectors into a loss and their gradient (and the item table's).
public protocol RowLoss: AnyObject {
    /// What a checkpoint records of this loss (a mismatch refuses to continue a run).
    var fingerprint: String { get }
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
    /// The loss's own state for a checkpoint (generators, records); [] when it has none.
    func checkpointState() -> [UInt64]
    /// Puts back what `checkpointState` returned; false (changing nothing) when it does not fit.
    func restore(checkpointState: [UInt64]) -> Bool
}

extension RowLoss {
    public var evaluatedModel: Backbone? { nil }
    public func supports(_ scheme: TrainingScheme) -> Bool { true }
    public func beginEpoch(_ epoch: Int) {}
    public func afterUpdate() {}
    public func endEpoch(_ epoch: Int, meanLoss: Double) {}
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

/// Forward + loss + backward + Adam for one batch of either scheme; the loop's one step.
public final class TrainStep {
    public let model: Backbone
    public let optimizer: Adam
    public let loss: RowLoss
    public let scheme: TrainingScheme
    private let maxBatch: Int
    // scored rows: targets, instances, sequences, positions (R each, R <= B·T); all positions'
    // user rows gathered from the readout, the rows' gradient (R·K·C), the (B, T, C) gradient the
    // readout takes back, and the rows' weights (R)
    private var rowTargets: [Int32], rowInstances: [Int32], rowSequences: [Int32], rowPositions: [Int32]
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
        rowTargets = [Int32](repeating: 0, count: R); rowInstances = rowTargets; rowSequences = rowTargets; rowPositions = rowTargets
        let KC = model.interests * model.dim, BTC = batchSize * model.maxLength * model.dim
        let every = scheme == .allPositions
        slab = Slab([every ? R * KC : 0, R * KC, every ? BTC : 0, R])
        let v = slab.views
        userRows = v[0]; dUserRows = v[1]; dEvery = v[2]; rowWeights = v[3]
    }

    /// One step on B sequences items (B, T), lengths (B). Prefixes: targets and instances (B).
    /// All positions: targets and instances (B, T), 0 and -1 where a position has no target.
    /// `weights` (B) weighs each sequence's rows (nil = 1). Returns the batch loss.
    @discardableResult
    public func step(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                     instances: UnsafePointer<Int32>?, weights: UnsafePointer<Float>? = nil, B: Int) throws -> Double {
        precondition(B >= 1 && B <= maxBatch, "batch of \(B) sequences outside 1...\(maxBatch)")
        let T = model.maxLength, C = model.dim
        model.parameters.zeroGrad()
        let out = model.forward(items: items, lengths: lengths, B: B, training: true,
                                readout: scheme == .allPositions ? .every : .last)
        var R = 0, user = out
        switch scheme {
        case .prefixes:
            // the readout's rows are the scored rows
            R = B
            for b in 0..<B {
                rowTargets[b] = targets[b]; rowInstances[b] = instances?[b] ?? -1
                rowSequences[b] = Int32(b); rowPositions[b] = lengths[b] - 1
            }
        case .allPositions:
            for b in 0..<B {
                for t in 0..<Int(lengths[b]) where targets[b * T + t] > 0 {
                    rowTargets[R] = targets[b * T + t]; rowInstances[R] = instances?[b * T + t] ?? -1
                    rowSequences[R] = Int32(b); rowPositions[R] = Int32(t)
                    (userRows + R * C).update(from: out + (b * T + t) * C, count: C)
                    R += 1
                }
            }
            user = UnsafePointer(userRows)
        }
        guard R > 0 else { return 0 }
        if let weights { for r in 0..<R { rowWeights[r] = weights[Int(rowSequences[r])] } }
        let total = try rowTargets.withUnsafeBufferPointer { tg in try rowInstances.withUnsafeBufferPointer { ins in
            try rowSequences.withUnsafeBufferPointer { sq in try rowPositions.withUnsafeBufferPointer { ps in
                let batch = TrainingBatch(items: items, lengths: lengths, B: B, T: T, N: model.itemCount, scheme: scheme, R: R,
                                          targets: tg.baseAddress!, instances: ins.baseAddress!, sequences: sq.baseAddress!,
                                          positions: ps.baseAddress!)
                return try loss.loss(batch, user: user, model: model, dUser: dUserRows, weights: weights == nil ? nil : UnsafePointer(rowWeights))
            } }
        } }
        if scheme == .allPositions {
            // scatter the rows' gradient back to their positions; every other position gets none
            zeroFill(dEvery, B * T * C)
            for r in 0..<R {
                (dEvery + (Int(rowSequences[r]) * T + Int(rowPositions[r])) * C).update(from: dUserRows + r * C, count: C)
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
