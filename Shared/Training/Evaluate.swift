// The one full-ranking evaluator of trained models: leave-one-out targets or WSLRec's held-out
// sets against every item, in eval mode, history not masked (the protocol).
import Numerics
import Models
import Data
import Evaluation

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
    /// The model as the ranking evaluator's encoder (user vectors at the last position).
    public static func encoder(_ model: Backbone) -> UserEncoder {
        let width = model.interests * model.dim
        return { items, lengths, count, out in
            let user = model.forward(items: items, lengths: lengths, B: count, training: false)
            out.update(from: user, count: count * width)
        }
    }
}
