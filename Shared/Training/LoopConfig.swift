// The one configuration of the training loop, as job files spell it (`"loop": {...}`), and the
// two ways a loop presents training targets to a model.

/// How training targets reach the model.
public enum TrainingScheme: String, Sendable, Codable, CaseIterable {
    /// Windows of consecutive targets, loss at every position of one causal forward
    /// (`WindowSet`): each target once per epoch with up to L items of context. The default.
    case allPositions = "all_positions"
    /// One row per target: its prefix (last L items) in, the target's loss at the last position.
    case prefixes
}

/// A loop setting out of range; names the key as job files spell it.
public struct LoopConfigError: Error, Equatable, CustomStringConvertible {
    public let key: String, reason: String
    public var description: String { "loop.\(key): \(reason)" }
}

/// Hyper-parameters of the loop (defaults: the ML-100K protocol).
public struct LoopConfig: Sendable, Codable, Equatable {
    public var maxEpochs = 200
    public var patience = 10
    /// Rows per batch: windows under `allPositions`, prefixes under `prefixes`. When a job file
    /// leaves it out, the scheme's default (`defaultBatchSize`).
    public var batchSize = LoopConfig.defaultBatchSize(.allPositions)
    public var maxLength = 50
    public var learningRate: Float = 1e-3
    public var weightDecay: Float = 0
    public var seed: UInt64 = 1
    /// The validation metric early stopping and selection follow (e.g. "ndcg@10", "recall@50").
    public var selectMetric = "ndcg@10"
    public var scheme = TrainingScheme.allPositions
    public init() {}

    /// 128 windows (chosen on ML-100K's validation set, docs/RESULTS.md), 256 prefixes (the
    /// prefix protocol's batch).
    public static func defaultBatchSize(_ scheme: TrainingScheme) -> Int { scheme == .allPositions ? 128 : 256 }

    enum CodingKeys: String, CodingKey {
        case maxEpochs = "max_epochs", patience, batchSize = "batch_size", maxLength = "max_length"
        case learningRate = "learning_rate", weightDecay = "weight_decay", seed, selectMetric = "select_metric", scheme
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = LoopConfig()
        maxEpochs = try c.decodeIfPresent(Int.self, forKey: .maxEpochs) ?? d.maxEpochs
        patience = try c.decodeIfPresent(Int.self, forKey: .patience) ?? d.patience
        scheme = try c.decodeIfPresent(TrainingScheme.self, forKey: .scheme) ?? d.scheme
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? LoopConfig.defaultBatchSize(scheme)
        maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? d.maxLength
        learningRate = try c.decodeIfPresent(Float.self, forKey: .learningRate) ?? d.learningRate
        weightDecay = try c.decodeIfPresent(Float.self, forKey: .weightDecay) ?? d.weightDecay
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? d.seed
        selectMetric = try c.decodeIfPresent(String.self, forKey: .selectMetric) ?? d.selectMetric
    }

    /// Range checks of everything a request can set.
    public func validate() throws(LoopConfigError) {
        func bad(_ k: String, _ r: String) -> LoopConfigError { LoopConfigError(key: k, reason: r) }
        if maxEpochs < 1 { throw bad("max_epochs", "must be at least 1") }
        if patience < 1 { throw bad("patience", "must be at least 1") }
        if batchSize < 1 { throw bad("batch_size", "must be at least 1") }
        if maxLength < 1 { throw bad("max_length", "must be at least 1") }
        if !(learningRate >= 0) || !learningRate.isFinite { throw bad("learning_rate", "must be a number >= 0 (0 trains nothing)") }
        if !(weightDecay >= 0) || !weightDecay.isFinite { throw bad("weight_decay", "must be a number >= 0") }
        if selectMetric.isEmpty { throw bad("select_metric", "must name a validation metric such as ndcg@10") }
    }
}
