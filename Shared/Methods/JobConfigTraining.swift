// The training loop every label method runs inside: seeded shuffled batches, one objective per
// batch (forward, the method's loss on the full score matrix, backward, Adam), validation every
// epoch, early stopping with patience, best-validation weights restored.
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
    public let B: Int
    public let T: Int
    /// Items N: score rows are (N) wide.
    public let N: Int
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
}

extension LabelObjective {
    public func beginEpoch(_ epoch: Int) {}
    public func afterUpdate() {}
    public func endEpoch(_ epoch: Int, meanLoss: Double) {}
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

/// Hyper-parameters of the loop (defaults: the ML-100K protocol).
public struct LoopConfig: Sendable, Codable, Equatable {
    public var maxEpochs = 200
    public var patience = 10
    public var batchSize = 256
    public var maxLength = 50
    public var learningRate: Float = 1e-3
    public var seed: UInt64 = 1
    /// The validation metric early stopping and selection follow (e.g. "ndcg@10", "recall@50").
    public var selectMetric = "ndcg@10"
    public init() {}
    enum CodingKeys: String, CodingKey {
        case maxEpochs = "max_epochs", patience, batchSize = "batch_size", maxLength = "max_length"
        case learningRate = "learning_rate", seed, selectMetric = "select_metric"
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        maxEpochs = try c.decodeIfPresent(Int.self, forKey: .maxEpochs) ?? 200
        patience = try c.decodeIfPresent(Int.self, forKey: .patience) ?? 10
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? 256
        maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? 50
        learningRate = try c.decodeIfPresent(Float.self, forKey: .learningRate) ?? 1e-3
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? 1
        selectMetric = try c.decodeIfPresent(String.self, forKey: .selectMetric) ?? "ndcg@10"
    }
}

/// What one call of `LabelLoop.fit` did.
public struct FitResult: Sendable, Codable {
    public var epochs: Int
    public var bestEpoch: Int
    public var bestValid: [String: Double]
    /// Mean training loss per epoch.
    public var losses: [Double]
    public var seconds: Double
    enum CodingKeys: String, CodingKey {
        case epochs, losses, seconds, bestEpoch = "best_epoch", bestValid = "best_valid"
    }
}

/// Validation or test metrics of a model (a closure, so either protocol plugs in).
public typealias ModelEvaluation = (Backbone) -> [String: Double]

/// The loop: trains `model` on `instances` with `objective`, selects on `validate`.
public final class LabelLoop {
    public let data: SequenceDataset
    public let config: LoopConfig
    /// A line per epoch; nil for silence.
    public var progress: ((String) -> Void)?

    public init(data: SequenceDataset, config: LoopConfig) {
        self.data = data; self.config = config
    }

    /// Trains to early stop (or maxEpochs) and leaves the best-validation weights in `model`.
    /// With `validate` nil, trains exactly `maxEpochs` epochs and keeps the last weights.
    @discardableResult
    public func fit(model: Backbone, instances: InstanceSet, objective: LabelObjective,
                    validate: ModelEvaluation?, optimizer: Adam? = nil) throws -> FitResult {
        let start = Date()
        let B = config.batchSize, T = config.maxLength, N = model.itemCount
        let adam = optimizer ?? Adam(parameters: model.parameters, learningRate: config.learningRate)
        let head = FullSoftmaxHead(itemCount: N, dim: model.dim, interests: model.interests)
        var batcher = Batcher(data: data, instances: instances, maxLength: T, batchSize: B, padding: .right, seed: config.seed)
        let buf = BatchBuffers(B: B, T: T, N: N)
        let best = model.parameters.clone()
        var bestScore = -Double.infinity, bestEpoch = 0, bad = 0, epochs = 0
        var bestValid: [String: Double] = [:], losses: [Double] = []
        guard instances.count > 0 else {
            return FitResult(epochs: 0, bestEpoch: 0, bestValid: validate?(model) ?? [:], losses: [], seconds: 0)
        }
        for epoch in 1...max(1, config.maxEpochs) {
            let t0 = Date()
            batcher.shuffle()
            objective.beginEpoch(epoch)
            var total = 0.0
            for i in 0..<batcher.batchCount {
                let n = batcher.fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.rows)
                let batch = LabelBatch(items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.rows, B: n, T: T, N: N)
                model.parameters.zeroGrad()
                let user = model.forward(items: buf.items, lengths: buf.lengths, B: n, training: true)
                head.scores(user: user, table: model.itemTable, B: n)
                buf.scores.update(from: head.logits, count: n * N)
                total += try objective.loss(batch: batch, logits: buf.scores, dlogits: head.logits)
                head.backward(user: user, table: model.itemTable, tableGrad: model.itemTableGrad, B: n)
                model.backward(dUser: head.dUser)
                adam.update()
                objective.afterUpdate()
            }
            let mean = total / Double(batcher.batchCount)
            losses.append(mean)
            objective.endEpoch(epoch, meanLoss: mean)
            epochs = epoch
            guard let validate else {
                progress?(String(format: "epoch %d  loss %.4f  %.1fs", epoch, mean, Date().timeIntervalSince(t0)))
                continue
            }
            let valid = validate(model)
            let score = valid[config.selectMetric] ?? 0
            progress?(String(format: "epoch %d  loss %.4f  valid %@ %.4f  %.1fs", epoch, mean, config.selectMetric,
                             score, Date().timeIntervalSince(t0)))
            if score > bestScore {
                bestScore = score; bestEpoch = epoch; bad = 0; bestValid = valid
                best.copyValues(from: model.parameters)
            } else {
                bad += 1
                if bad >= config.patience { break }
            }
        }
        if validate != nil { model.parameters.copyValues(from: best) } else { bestEpoch = epochs }
        return FitResult(epochs: epochs, bestEpoch: bestEpoch, bestValid: bestValid, losses: losses,
                         seconds: Date().timeIntervalSince(start))
    }
}

/// Per-batch buffers of the loop, allocated once.
final class BatchBuffers {
    let items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>
    let targets: UnsafeMutablePointer<Int32>, rows: UnsafeMutablePointer<Int32>
    let scores: Floats   // (B, N)
    init(B: Int, T: Int, N: Int) {
        items = .allocate(capacity: B * T); lengths = .allocate(capacity: B)
        targets = .allocate(capacity: B); rows = .allocate(capacity: B)
        scores = .allocate(capacity: B * N)
    }
    deinit {
        items.deallocate(); lengths.deallocate(); targets.deallocate(); rows.deallocate(); scores.deallocate()
    }
}

/// Evaluations of both protocols over a model (eval mode, history not masked).
public enum LabelEvaluation {
    /// Leave-one-out full ranking of `instances` (validation or test) over all N items.
    public static func fullRanking(_ model: Backbone, data: SequenceDataset, instances: InstanceSet,
                                   maxLength: Int = 50, ks: [Int] = [5, 10, 20]) -> [String: Double] {
        let evaluator = RankingEvaluator(itemCount: data.itemCount, dim: model.dim, maxBatch: 256,
                                         interests: model.interests, ks: ks, maskHistory: false)
        let report = evaluator.evaluateFullRanking(EvaluationInput(data: data, instances: instances, maxLength: maxLength),
                                                   items: model.scoringTable, encode: encoder(model))
        return report.metrics
    }

    /// WSLRec's protocol: the held-out users' last 20 % as a set against the top list.
    public static func sets(_ model: Backbone, data: SequenceDataset, instances: InstanceSet,
                            maxLength: Int = 50, ks: [Int] = [20, 50]) -> [String: Double] {
        let evaluator = RankingEvaluator(itemCount: data.itemCount, dim: model.dim, maxBatch: 256,
                                         interests: model.interests, ks: ks, maskHistory: false)
        let report = evaluator.evaluateSets(EvaluationInput(data: data, instances: instances, maxLength: maxLength),
                                            items: model.scoringTable, encode: encoder(model))
        return report.metrics
    }

    /// Each instance's top-k list (best first) under `model`, in instance order.
    public static func topLists(_ model: Backbone, data: SequenceDataset, instances: InstanceSet,
                                k: Int, maxLength: Int = 50) throws -> [[Int32]] {
        let source = ModelSoftLabelSource(teachers: [model])
        var out: [[Int32]] = []
        out.reserveCapacity(instances.count)
        let B = 256
        let batcher = Batcher(data: data, instances: instances, maxLength: maxLength, batchSize: B, padding: .right)
        let buf = BatchBuffers(B: B, T: maxLength, N: 1)
        var lists = [Int32](repeating: 0, count: B * k)
        for i in 0..<batcher.batchCount {
            let n = batcher.fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets)
            try lists.withUnsafeMutableBufferPointer {
                try source.topK(items: buf.items, lengths: buf.lengths, B: n, T: maxLength, k: k, out: $0.baseAddress!)
            }
            for b in 0..<n { out.append(Array(lists[(b * k)..<((b + 1) * k)])) }
        }
        return out
    }

    static func encoder(_ model: Backbone) -> UserEncoder {
        let width = model.interests * model.dim
        return { items, lengths, count, out in
            let user = model.forward(items: items, lengths: lengths, B: count, training: false)
            out.update(from: user, count: count * width)
        }
    }
}
