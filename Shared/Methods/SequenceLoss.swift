// The per-sequence loss a weighted trainer multiplies by its weights (ATJT's ℓ_b in
// L_R = Σ_b w_b ℓ_b / Σ_b w_b), on the full score rows (B, N). ATJT alone weighs the next-item
// cross-entropy; composed with CSRec it weighs CSRec's whole student loss
// ℓ_b = (1 − β)·hard_b + β·KL_b, so the recogniser's w scales a sequence's soft-label term as well
// as its hard one (a sequence judged noisy should teach neither); composed with UFNRec it weighs
// UFNRec's row loss (BCE over the positive, reversed items and negatives, plus consistency).
//
// Shapes: B batch, N items (score column j = item j + 1).
import Numerics

/// A loss with one term per sequence that a per-sequence weight can scale. The hooks are
/// `LabelObjective`'s (UFNRec's warm-up and EMA teacher live there); a trainer calls them.
public protocol WeightedSequenceLoss: AnyObject {
    /// Writes the unweighted ℓ_b into `losses` (B), overwrites `dlogits` (B, N) with the gradient
    /// of Σ_b w_b ℓ_b / norm and returns Σ_b w_b ℓ_b / norm. `logits` and `dlogits` do not alias.
    func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats, weights: UnsafePointer<Float>,
              norm: Float, losses: Floats) throws -> Double
    /// Called before each epoch (1-based).
    func beginEpoch(_ epoch: Int)
    /// Called after each optimiser update.
    func afterUpdate()
    /// Called after each epoch with the mean training loss.
    func endEpoch(_ epoch: Int, meanLoss: Double)
    /// The next step's batch, before this step's loss (`LabelObjective.prefetch`).
    func prefetch(_ batch: LabelBatch) throws
}

extension WeightedSequenceLoss {
    public func prefetch(_ batch: LabelBatch) throws {}
    public func beginEpoch(_ epoch: Int) {}
    public func afterUpdate() {}
    public func endEpoch(_ epoch: Int, meanLoss: Double) {}
}

/// ℓ_b = CE of the next item (what `ATJTTrainer` weighs when given no loss).
public final class WeightedCrossEntropy: WeightedSequenceLoss {
    private var cols: [Int32] = []
    public init() {}
    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats, weights: UnsafePointer<Float>,
                     norm: Float, losses: Floats) throws -> Double {
        let B = batch.B
        if cols.count < B { cols = [Int32](repeating: 0, count: B) }
        for b in 0..<B { cols[b] = batch.targets[b] - 1 }
        return softmaxCrossEntropy(losses: losses, dlogits: dlogits, logits: logits, targets: cols, weights: weights,
                                   scale: 1 / norm, B: B, V: batch.N)
    }
}

/// CSRec's student loss (Eq. 15) per sequence: ℓ_b = (1 − β)·hard_b + β·KL_b against soft labels
/// r = ½ (softmax(e/τ) + onehot) from `source` (Eq. 14); `hard` is the next-item CE or another
/// method's row loss (UFNRec's). The arithmetic is `CSRecStudentObjective`'s, with weights:
/// w ≡ 1 and norm = B give its numbers bit for bit, and β = 0 gives the weighted hard loss bit
/// for bit.
public final class WeightedCSRecStudent: WeightedSequenceLoss {
    public let source: SoftLabelSource
    public let hard: WeightedSequenceLoss
    public let beta: Float, temperature: Float
    public let direction: KLDirection
    private var labels: [Float] = [], klLosses: [Float] = []

    public init(source: SoftLabelSource, hard: WeightedSequenceLoss = WeightedCrossEntropy(), beta: Float, temperature: Float,
                direction: KLDirection = .targetToModel) {
        self.source = source; self.hard = hard; self.beta = beta; self.temperature = temperature; self.direction = direction
    }

    public func beginEpoch(_ epoch: Int) { hard.beginEpoch(epoch) }
    public func afterUpdate() { hard.afterUpdate() }
    public func endEpoch(_ epoch: Int, meanLoss: Double) { hard.endEpoch(epoch, meanLoss: meanLoss) }
    public func prefetch(_ batch: LabelBatch) throws {
        try hard.prefetch(batch)
        try source.prefetch(items: batch.items, lengths: batch.lengths, B: batch.sequenceCount, T: batch.T, rows: batch.rows, batch: batch.id)
    }

    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats, weights: UnsafePointer<Float>,
                     norm: Float, losses: Floats) throws -> Double {
        let B = batch.B, N = batch.N
        if labels.count < B * N { labels = [Float](repeating: 0, count: B * N) }
        if klLosses.count < B { klLosses = [Float](repeating: 0, count: B) }
        let h = try hard.loss(batch: batch, logits: logits, dlogits: dlogits, weights: weights, norm: norm, losses: losses)
        return try labels.withUnsafeMutableBufferPointer { r -> Double in
            try source.softLabels(items: batch.items, lengths: batch.lengths, targets: batch.targets, B: batch.sequenceCount,
                                  T: batch.T, rows: batch.rows, batch: batch.id, temperature: temperature, out: r.baseAddress!)
            let total = CSRecStudentObjective.combine(hardLoss: h, dlogits: dlogits, logits: logits, labels: r.baseAddress!,
                                                      beta: beta, direction: direction, losses: &klLosses, B: B, N: N,
                                                      weights: weights, norm: norm)
            // ℓ_b = (1 − β)·hard_b + β·KL_b, unweighted (dL_R/dw_b needs it)
            let keep = 1 - beta
            for b in 0..<B { losses[b] = keep * losses[b] + beta * klLosses[b] }
            return total
        }
    }
}
