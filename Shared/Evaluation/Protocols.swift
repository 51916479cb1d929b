// Whole-split evaluation: batches an InstanceSet, asks the model for user vectors, ranks, and
// returns a report that says which protocol, whether history was masked and whether the
// protocol is biased.
import Data

/// Writes user vectors (count · K, d) into `out` for a batch of inputs: `items` (count, L)
/// padded as the evaluation's `padding` says, `lengths` (count).
public typealias UserEncoder = (_ items: UnsafePointer<Int32>, _ lengths: UnsafePointer<Int32>,
                                _ count: Int, _ out: UnsafeMutablePointer<Float>) -> Void

/// Metrics of one evaluation and the conditions they hold under.
public struct EvaluationReport: Sendable, CustomStringConvertible {
    /// "full" (all items), "sampled-100-popularity", or "user-split-sets".
    public var protocolName: String
    public var historyMasked: Bool
    /// True for the sampled protocol: its figures are not comparable with full ranking.
    public var biased: Bool
    public var users: Int
    /// Means over users, keyed like `ndcg@10`, `hr@10`, `mrr@10`.
    public var metrics: [String: Double]

    public var description: String {
        let keys = metrics.keys.sorted()
        let body = keys.map { "\($0)=\(String(format6: metrics[$0]!))" }.joined(separator: " ")
        return "\(protocolName)\(biased ? " (biased)" : ""), history \(historyMasked ? "masked" : "not masked"), \(users) users: \(body)"
    }
}

private extension String {
    init(format6 v: Double) {
        let scaled = (v * 1_000_000).rounded() / 1_000_000
        self = "\(scaled)"
    }
}

/// How to read inputs for evaluation.
public struct EvaluationInput {
    public var data: SequenceDataset
    public var instances: InstanceSet
    public var maxLength: Int
    public var padding: Padding

    public init(data: SequenceDataset, instances: InstanceSet, maxLength: Int, padding: Padding = .right) {
        self.data = data; self.instances = instances; self.maxLength = maxLength; self.padding = padding
    }

    /// The whole history before instance k (not truncated): what masking excludes.
    func history(_ k: Int) -> ArraySlice<Int32> {
        let u = Int(instances.users[k]), lo = data.offsets[u]
        return data.items[lo ..< lo + Int(instances.positions[k])]
    }
}

/// Buffers for one evaluation pass, allocated once.
private final class EvalBuffers {
    let items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>
    let targets: UnsafeMutablePointer<Int32>, rows: UnsafeMutablePointer<Int32>
    let vectors: UnsafeMutablePointer<Float>
    init(B: Int, L: Int, vectorFloats: Int) {
        items = .allocate(capacity: B * L); lengths = .allocate(capacity: B)
        targets = .allocate(capacity: B); rows = .allocate(capacity: B)
        vectors = .allocate(capacity: vectorFloats)
    }
    deinit {
        items.deallocate(); lengths.deallocate(); targets.deallocate(); rows.deallocate(); vectors.deallocate()
    }
}

extension RankingEvaluator {
    private func forEachBatch(_ input: EvaluationInput, encode: UserEncoder,
                              _ body: (EvalBuffers, Int) -> Void) {
        let B = maxBatch
        let buf = EvalBuffers(B: B, L: input.maxLength, vectorFloats: B * interests * dim)
        let batcher = Batcher(data: input.data, instances: input.instances, maxLength: input.maxLength,
                              batchSize: B, padding: input.padding)
        for i in 0..<batcher.batchCount {
            let n = batcher.fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets,
                                 instances: buf.rows)
            encode(buf.items, buf.lengths, n, buf.vectors)
            body(buf, n)
        }
    }

    /// Full ranking of every instance's target over all N items (`items` (N, d), row j = item
    /// j + 1). History is masked when `maskHistory` is set.
    public func evaluateFullRanking(_ input: EvaluationInput, items: UnsafePointer<Float>,
                                    encode: UserEncoder) -> EvaluationReport {
        var acc = MetricAccumulator()
        forEachBatch(input, encode: encode) { buf, n in
            rankTargets(users: buf.vectors, count: n, items: items, targets: buf.targets,
                        history: { input.history(Int(buf.rows[$0])) }, into: &acc)
        }
        return EvaluationReport(protocolName: "full", historyMasked: maskHistory, biased: false,
                                users: acc.users, metrics: acc.means)
    }

    /// The sampled protocol (biased): the target against `negatives` popularity-sampled items
    /// the user never interacted with (the whole sequence is excluded).
    public func evaluateSampled(_ input: EvaluationInput, items: UnsafePointer<Float>, negatives: Int = 100,
                                seed: UInt64, encode: UserEncoder) -> EvaluationReport {
        var acc = MetricAccumulator()
        var sampler = PopularitySampler(popularity: input.data.itemPopularity(), seed: seed)
        forEachBatch(input, encode: encode) { buf, n in
            rankSampled(users: buf.vectors, count: n, items: items, targets: buf.targets, negatives: negatives,
                        sampler: &sampler, exclude: { input.data.sequence(Int(input.instances.users[Int(buf.rows[$0])])) },
                        into: &acc)
        }
        return EvaluationReport(protocolName: "sampled-\(negatives)-popularity", historyMasked: true, biased: true,
                                users: acc.users, metrics: acc.means)
    }

    /// WSLRec's protocol: the top max(ks) list of each held-out user against the set of items
    /// from the instance's position to the end of the sequence.
    public func evaluateSets(_ input: EvaluationInput, items: UnsafePointer<Float>,
                             encode: UserEncoder) -> EvaluationReport {
        var acc = MetricAccumulator()
        forEachBatch(input, encode: encode) { buf, n in
            rankSets(users: buf.vectors, count: n, items: items,
                     truth: { Set(input.instances.future(Int(buf.rows[$0]), in: input.data)) },
                     history: { input.history(Int(buf.rows[$0])) }, into: &acc)
        }
        return EvaluationReport(protocolName: "user-split-sets", historyMasked: maskHistory, biased: false,
                                users: acc.users, metrics: acc.means)
    }
}
