import Foundation
import Numerics
import Models
import Data
@testable import Training

// The loop's tests drive it as the job runner drives base training (the runner lives in
// Methods, above this module): leave-one-out, the fused cross-entropy, full-ranking metrics.

/// The loss over items a test run uses.
enum BaseObjective: Equatable {
    case fullSoftmax
    case sampledSoftmax(negatives: Int, popularity: Bool)
}

struct BaseRunConfig {
    var model: ModelKind
    var loop = LoopConfig()
    var objective = BaseObjective.fullSoftmax
    init(model: ModelKind) { self.model = model }
}

struct BaseRunResult {
    var fit: FitResult
    var valid: [String: Double]
    var test: [String: Double]
    var log: [EpochLog] { fit.log }
    var epochs: Int { fit.epochs }
    var bestEpoch: Int { fit.bestEpoch }
    var scheme: TrainingScheme { fit.scheme }
}

final class BaseRun {
    let config: BaseRunConfig
    let data: SequenceDataset
    let split: LeaveOneOut
    let model: Backbone
    let loop: TrainingLoop
    let loss: CrossEntropyLoss

    init(data: SequenceDataset, config: BaseRunConfig) {
        self.config = config; self.data = data
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

    func evaluate(_ instances: InstanceSet) -> [String: Double] {
        LabelEvaluation.fullRanking(model, data: data, instances: instances, maxLength: config.loop.maxLength)
    }

    func run(checkpoint: String? = nil) throws -> BaseRunResult {
        let fit = try loop.fit(model: model, instances: split.train, loss: loss, validate: { [self] _ in evaluate(split.validation) },
                               checkpoint: checkpoint)
        return BaseRunResult(fit: fit, valid: evaluate(split.validation), test: evaluate(split.test))
    }
}
