// The base seq2item training loop of the protocol: seeded shuffled batches of training instances,
// one TrainStep per batch, full-ranking validation every epoch, early stopping on validation
// NDCG@10 with patience, best-validation weights restored for the test evaluation.
import Foundation
import Numerics
import Models
import Data
import Evaluation

/// Hyper-parameters of a base training run (defaults: the ML-100K protocol).
public struct TrainingConfig: Sendable {
    public var model: ModelKind
    public var seed: UInt64 = 1
    public var maxEpochs = 200
    public var patience = 10
    public var batchSize = 256
    public var maxLength = 50
    public var learningRate: Float = 1e-3
    public var weightDecay: Float = 0
    public var objective: ObjectiveKind = .fullSoftmax
    /// Users per full-ranking batch.
    public var evalBatch = 256
    /// Metric cut-offs reported.
    public var ks = [5, 10, 20]
    public init(model: ModelKind) { self.model = model }
}

/// A serialisable choice of objective.
public enum ObjectiveKind: Sendable, Equatable {
    case fullSoftmax
    case sampledSoftmax(negatives: Int, popularity: Bool)
}

/// One epoch's record.
public struct EpochLog: Codable, Sendable {
    public var epoch: Int
    public var loss: Double
    public var validNDCG10: Double
    public var validHR10: Double
    public var seconds: Double
    enum CodingKeys: String, CodingKey {
        case epoch, loss, seconds
        case validNDCG10 = "valid_ndcg@10", validHR10 = "valid_hr@10"
    }
}

/// The outcome of a run, as the protocol's JSON (`model`, `seed`, `epochs`, `best_epoch`,
/// `valid`, `test`, `seconds`) plus context.
public struct TrainingResult: Codable, Sendable {
    public var model: String
    public var seed: UInt64
    public var epochs: Int
    public var bestEpoch: Int
    public var valid: [String: Double]
    public var test: [String: Double]
    public var seconds: Double
    public var framework = "winnow"
    public var threads: Int
    public var historyMasked = false
    public var maxLen: Int
    public var padding = "right"
    public var data: [String: Int]
    public var log: [EpochLog]
    enum CodingKeys: String, CodingKey {
        case model, seed, epochs, valid, test, seconds, framework, threads, padding, data, log
        case bestEpoch = "best_epoch", historyMasked = "history_masked", maxLen = "max_len"
    }
}

/// Trains a backbone on a dataset's leave-one-out split and evaluates it by full ranking.
public final class Seq2ItemTraining {
    public let config: TrainingConfig
    public let data: SequenceDataset
    public let split: LeaveOneOut
    public let model: Backbone
    public let step: TrainStep
    private let evaluator: RankingEvaluator
    /// Called with a line per epoch (progress); nil for silence.
    public var progress: ((String) -> Void)?

    public init(data: SequenceDataset, config: TrainingConfig) {
        self.config = config
        self.data = data
        split = LeaveOneOut(data)
        model = config.model.make(itemCount: data.itemCount, maxLength: config.maxLength, seed: config.seed)
        let objective: Objective
        switch config.objective {
        case .fullSoftmax: objective = .fullSoftmax
        case .sampledSoftmax(let S, let popularity):
            let sampler = popularity
                ? NegativeSampler(itemCount: data.itemCount, proposal: .popularity, counts: data.itemPopularity().map(Int.init))
                : NegativeSampler(itemCount: data.itemCount, proposal: .uniform)
            objective = .sampledSoftmax(negatives: S, sampler: sampler)
        }
        step = TrainStep(model: model, objective: objective, learningRate: config.learningRate,
                         weightDecay: config.weightDecay, seed: config.seed)
        evaluator = RankingEvaluator(itemCount: data.itemCount, dim: model.dim, maxBatch: config.evalBatch,
                                     interests: model.interests, ks: config.ks, maskHistory: false)
    }

    /// Mean metrics over an instance set (validation or test), full ranking, history not masked.
    public func evaluate(_ instances: InstanceSet) -> [String: Double] {
        let B = config.evalBatch, T = config.maxLength
        let batcher = Batcher(data: data, instances: instances, maxLength: T, batchSize: B, padding: .right)
        var items = [Int32](repeating: 0, count: B * T), lengths = [Int32](repeating: 0, count: B), targets = [Int32](repeating: 0, count: B)
        var acc = MetricAccumulator()
        for i in 0..<batcher.batchCount {
            let n = batcher.fill(batch: i, items: &items, lengths: &lengths, targets: &targets)
            let user = model.forward(items: items, lengths: lengths, B: n, training: false)
            evaluator.rankTargets(users: user, count: n, items: model.scoringTable, targets: targets, into: &acc)
        }
        return acc.means
    }

    /// Runs training to early stop (or maxEpochs), restores the best weights, evaluates.
    ///
    /// With a `checkpoint` path, the run's state is saved there after every epoch, and a run
    /// started with an existing file continues from it: the figures are those of a run that
    /// never stopped (same seed and thread count), and `seconds` counts every part. A file
    /// that is corrupt or belongs to another configuration is an error, and nothing is trained.
    public func run(checkpoint: String? = nil) throws(CheckpointError) -> TrainingResult {
        let start = Date()
        let B = config.batchSize, T = config.maxLength
        var batcher = Batcher(data: data, instances: split.train, maxLength: T, batchSize: B, padding: .right, seed: config.seed)
        var items = [Int32](repeating: 0, count: B * T), lengths = [Int32](repeating: 0, count: B), targets = [Int32](repeating: 0, count: B)
        let best = model.parameters.clone()
        var loop = LoopState()
        if let checkpoint, FileManager.default.fileExists(atPath: checkpoint) {
            loop = try loadCheckpoint(from: checkpoint, batcher: &batcher, best: best)
            progress?("checkpoint: continuing after epoch \(loop.epoch) from \(checkpoint)")
        }
        while !loop.stopped && loop.epoch < max(1, config.maxEpochs) {
            let epoch = loop.epoch + 1
            let t0 = Date()
            batcher.shuffle()
            var total = 0.0
            for i in 0..<batcher.batchCount {
                let n = batcher.fill(batch: i, items: &items, lengths: &lengths, targets: &targets)
                total += step.step(items: items, lengths: lengths, targets: targets, B: n)
            }
            let valid = evaluate(split.validation)
            loop.epoch = epoch
            let entry = EpochLog(epoch: epoch, loss: total / Double(max(batcher.batchCount, 1)),
                                 validNDCG10: valid["ndcg@10"] ?? 0, validHR10: valid["hr@10"] ?? 0,
                                 seconds: Date().timeIntervalSince(t0))
            loop.log.append(entry)
            progress?(String(format: "epoch %d  loss %.4f  valid ndcg@10 %.4f  hr@10 %.4f  %.1fs",
                             epoch, entry.loss, entry.validNDCG10, entry.validHR10, entry.seconds))
            if entry.validNDCG10 > loop.bestNDCG {
                loop.bestNDCG = entry.validNDCG10; loop.bestEpoch = epoch; loop.epochsWithoutGain = 0
                best.copyValues(from: model.parameters)
            } else {
                loop.epochsWithoutGain += 1
                loop.stopped = loop.epochsWithoutGain >= config.patience
            }
            if let checkpoint {
                try saveCheckpoint(to: checkpoint, loop: loop, seconds: loop.secondsBefore + Date().timeIntervalSince(start),
                                   batcher: batcher, best: best)
            }
        }
        model.parameters.copyValues(from: best)
        let valid = evaluate(split.validation), test = evaluate(split.test)
        return TrainingResult(model: config.model.rawValue, seed: config.seed, epochs: loop.epoch, bestEpoch: loop.bestEpoch,
                              valid: valid, test: test, seconds: loop.secondsBefore + Date().timeIntervalSince(start),
                              threads: Threads.count,
                              maxLen: T, data: ["users": data.userCount, "items": data.itemCount,
                                                "interactions": data.interactionCount, "train_instances": split.train.count],
                              log: loop.log)
    }
}
