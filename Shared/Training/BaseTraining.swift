// The base run of the protocol, as `winnow train --local` runs it: a backbone trained by the
// one loop with next-item cross-entropy on the leave-one-out split, the best-validation weights
// evaluated by full ranking on validation and test.
import Foundation
import Numerics
import Models
import Data
import Evaluation

/// A base run: the backbone, the loop's settings, the loss over items and the cut-offs reported.
public struct TrainingConfig: Sendable {
    public var model: ModelKind
    public var loop = LoopConfig()
    public var objective: ObjectiveKind = .fullSoftmax
    /// Metric cut-offs reported.
    public var ks = [5, 10, 20]
    public init(model: ModelKind) { self.model = model }
}

/// A serialisable choice of the loss over items.
public enum ObjectiveKind: Sendable, Equatable {
    case fullSoftmax
    case sampledSoftmax(negatives: Int, popularity: Bool)
}

/// The outcome of a run, as the protocol's JSON (`model`, `seed`, `epochs`, `best_epoch`,
/// `valid`, `test`, `seconds`, `scheme`) plus context.
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
    public var scheme: TrainingScheme
    public var batch: Int
    public var lr: Float
    public var historyMasked = false
    public var maxLen: Int
    public var padding = "right"
    public var data: [String: Int]
    public var log: [EpochLog]
    enum CodingKeys: String, CodingKey {
        case model, seed, epochs, valid, test, seconds, framework, threads, scheme, batch, lr, padding, data, log
        case bestEpoch = "best_epoch", historyMasked = "history_masked", maxLen = "max_len"
    }
}

/// Trains a backbone on a dataset's leave-one-out split and evaluates it by full ranking.
public final class BaseTraining {
    public let config: TrainingConfig
    public let data: SequenceDataset
    public let split: LeaveOneOut
    public let model: Backbone
    public let loop: TrainingLoop
    public let loss: CrossEntropyLoss

    public init(data: SequenceDataset, config: TrainingConfig) {
        self.config = config
        self.data = data
        split = LeaveOneOut(data)
        model = config.model.make(itemCount: data.itemCount, maxLength: config.loop.maxLength, seed: config.loop.seed)
        switch config.objective {
        case .fullSoftmax: loss = CrossEntropyLoss(.fullSoftmax, seed: config.loop.seed)
        case .sampledSoftmax(let S, let popularity):
            let sampler = popularity
                ? NegativeSampler(itemCount: data.itemCount, proposal: .popularity, counts: data.itemPopularity().map(Int.init))
                : NegativeSampler(itemCount: data.itemCount, proposal: .uniform)
            loss = CrossEntropyLoss(.sampledSoftmax(negatives: S, sampler: sampler), seed: config.loop.seed)
        }
        loop = TrainingLoop(data: data, config: config.loop)
    }

    /// Mean metrics over an instance set (validation or test).
    public func evaluate(_ instances: InstanceSet) -> [String: Double] {
        LabelEvaluation.fullRanking(model, data: data, instances: instances, maxLength: config.loop.maxLength, ks: config.ks)
    }

    /// Runs training to early stop (or maxEpochs), restores the best weights, evaluates. With a
    /// `checkpoint` path the state is saved after every epoch and an existing file is continued.
    public func run(checkpoint: String? = nil) throws -> TrainingResult {
        let fit = try loop.fit(model: model, instances: split.train, loss: loss, validate: { [self] _ in evaluate(split.validation) },
                               checkpoint: checkpoint)
        let evaluation = Date()
        let valid = evaluate(split.validation), test = evaluate(split.test)
        return TrainingResult(model: config.model.rawValue, seed: config.loop.seed, epochs: fit.epochs, bestEpoch: fit.bestEpoch,
                              valid: valid, test: test,
                              seconds: fit.seconds + Date().timeIntervalSince(evaluation),
                              threads: Threads.count, scheme: config.loop.scheme, batch: config.loop.batchSize,
                              lr: config.loop.learningRate, maxLen: config.loop.maxLength,
                              data: ["users": data.userCount, "items": data.itemCount, "interactions": data.interactionCount,
                                     "train_instances": split.train.count, "train_rows": fit.rows],
                              log: fit.log)
    }
}
