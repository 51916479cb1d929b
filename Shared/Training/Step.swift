// One optimisation step of seq2item training: forward, loss, backward, Adam.
import Numerics
import Models

/// Which backbone to build.
public enum ModelKind: String, Sendable, CaseIterable, Codable {
    case sasrec, gru4rec

    /// The protocol's configuration of this backbone for `itemCount` items (items 1...N).
    public func make(itemCount: Int, maxLength: Int = 50, seed: UInt64) -> Backbone {
        switch self {
        case .sasrec:
            var c = SASRecConfig(itemCount: itemCount); c.maxLength = maxLength; c.seed = seed
            return SASRec(c)
        case .gru4rec:
            var c = GRU4RecConfig(itemCount: itemCount); c.maxLength = maxLength; c.seed = seed
            return GRU4Rec(c)
        }
    }
}

/// The training loss over items.
public enum Objective: Sendable {
    /// Cross-entropy over the full softmax of all items (the protocol).
    case fullSoftmax
    /// Sampled softmax with S negatives shared per batch, log-Q corrected.
    case sampledSoftmax(negatives: Int, sampler: NegativeSampler)
}

/// Forward + loss + backward + Adam for one batch; owns the head and the optimiser.
public final class TrainStep {
    public let model: Backbone
    public let optimizer: Adam
    public let objective: Objective
    private let full: FullSoftmaxHead?
    private let sampled: SampledSoftmaxHead?
    /// Draws the sampled softmax's negatives (kept in checkpoints).
    public var samplerRNG: RNG

    public init(model: Backbone, objective: Objective = .fullSoftmax, learningRate: Float = 1e-3,
                weightDecay: Float = 0, seed: UInt64) {
        self.model = model
        self.objective = objective
        optimizer = Adam(parameters: model.parameters, learningRate: learningRate, weightDecay: weightDecay)
        switch objective {
        case .fullSoftmax:
            full = FullSoftmaxHead(itemCount: model.itemCount, dim: model.dim, interests: model.interests); sampled = nil
        case .sampledSoftmax(let S, let sampler):
            precondition(model.interests == 1, "sampled softmax supports one user vector per sequence")
            sampled = SampledSoftmaxHead(itemCount: model.itemCount, dim: model.dim, negatives: S, sampler: sampler); full = nil
        }
        samplerRNG = RNG(seed: seed).derived(0x5A3)
    }

    /// Per-example losses (B) of the last step.
    public var losses: UnsafePointer<Float> { UnsafePointer(full?.losses ?? sampled!.losses) }

    /// One step on a right-padded batch: items (B, T), lengths (B), targets (B) item ids.
    /// `weights` (B) weighs each sequence's loss (nil = 1); the loss is the weighted mean.
    /// Returns the batch loss.
    @discardableResult
    public func step(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                     weights: UnsafePointer<Float>? = nil, B: Int) -> Double {
        let ps = model.parameters
        ps.zeroGrad()
        let user = model.forward(items: items, lengths: lengths, B: B, training: true)
        let scale = 1 / Float(B)
        let loss: Double
        let dUser: UnsafePointer<Float>
        if let full {
            loss = full.crossEntropy(user: user, table: model.itemTable, tableGrad: model.itemTableGrad, targets: targets,
                                     weights: weights, scale: scale, B: B)
            dUser = UnsafePointer(full.dUser)
        } else {
            loss = sampled!.crossEntropy(user: user, table: model.itemTable, tableGrad: model.itemTableGrad, targets: targets,
                                         weights: weights, scale: scale, B: B, rng: &samplerRNG)
            dUser = UnsafePointer(sampled!.dUser)
        }
        model.backward(dUser: dUser)
        optimizer.update()
        return loss
    }
}
