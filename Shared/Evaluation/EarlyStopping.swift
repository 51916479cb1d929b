// Early stopping on a validation metric with patience, as the experiment protocol uses
// (validation NDCG@10, patience 10; test metrics from the best epoch's weights).

/// Tracks the best validation value; `update` says whether to keep the weights and whether to stop.
public struct EarlyStopping: Sendable {
    public enum Decision: Equatable, Sendable {
        /// A new best: keep these weights.
        case improved
        /// No improvement; `remaining` more epochs without one end training.
        case wait(remaining: Int)
        /// `patience` epochs without improvement: stop and use the best weights.
        case stop
    }

    /// Metric key, e.g. `ndcg@10`.
    public let metric: String
    public let patience: Int
    public private(set) var bestValue: Double = -.infinity
    public private(set) var bestEpoch: Int = 0
    public private(set) var epochsWithoutImprovement = 0

    public init(metric: String = "ndcg@10", patience: Int = 10) {
        precondition(patience >= 1, "patience must be >= 1")
        self.metric = metric; self.patience = patience
    }

    /// Puts back the counters a checkpoint saved.
    public mutating func restore(bestValue: Double, bestEpoch: Int, epochsWithoutImprovement: Int) {
        self.bestValue = bestValue; self.bestEpoch = bestEpoch; self.epochsWithoutImprovement = epochsWithoutImprovement
    }

    /// Records `epoch`'s validation metrics. Only a strictly higher value counts as an
    /// improvement; a missing or NaN metric counts as none.
    public mutating func update(epoch: Int, metrics: [String: Double]) -> Decision {
        if let v = metrics[metric], !v.isNaN, v > bestValue {
            bestValue = v; bestEpoch = epoch; epochsWithoutImprovement = 0
            return .improved
        }
        epochsWithoutImprovement += 1
        return epochsWithoutImprovement >= patience ? .stop : .wait(remaining: patience - epochsWithoutImprovement)
    }
}
