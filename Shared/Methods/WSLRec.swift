// WSLRec (wslrec.md §4–5): weak positives from model-free recommenders, then top-k mining.
//
//   stage 1 (pre-training): multi-positive CE (Eq. 3) with P_pre = ∪ of the configured sources
//     among BR top-k (Eq. 7: the k most recent history items), ItemCF top-k (Eq. 8–10: the k
//     items of largest max_{v' ∈ X, v' ≠ v} sim(v, v'), weighted cosine over training users) and
//     `original` ({next item});
//   stage 2 (top-k mining, Eq. 14): B_pre = the pre-trained model's top-k per training instance;
//   stage 3 (fine-tuning from the pre-trained weights, Eq. 15): P_fin = {next} ∪ (B_pre ∩ Y),
//     Y the instance's future within the training data (never validation or test items).
//
// Eq. 10 as printed lets v = v' (sim 1), which would make ItemCF return the history itself;
// the intent (the item-to-item recommender of §4.1.2) excludes v' = v, as here.
// Losses use the full softmax (ML-100K's catalogue is small); the paper's sampled softmax with
// shared negatives is `Training.Objective.sampledSoftmax` for large catalogues.
import Foundation
import Numerics
import Models
import Data
import Training

/// A weak-positive source for WSLRec's pre-training.
public enum WSLRecSource: String, Sendable, Codable, CaseIterable {
    /// Behavioural retargeting (Eq. 7).
    case br
    /// Item-based collaborative filtering (Eq. 8–10).
    case itemcf
    /// The next item: the standard target.
    case original
}

/// WSLRec's hyper-parameters.
public struct WSLRecConfig: Sendable, Codable, Equatable {
    /// Pre-training positives (paper: BR on Taobao, BR ∪ ItemCF on Amazon Books).
    public var sources: [WSLRecSource] = [.br, .itemcf]
    /// k of the BR and ItemCF top-k sets (paper: 20).
    public var weakK = 20
    /// k of the top-k mining (Eq. 14).
    public var miningK = 20
    public init() {}
    enum CodingKeys: String, CodingKey { case sources, weakK = "weak_k", miningK = "mining_k" }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        sources = try c.decodeIfPresent([WSLRecSource].self, forKey: .sources) ?? [.br, .itemcf]
        weakK = try c.decodeIfPresent(Int.self, forKey: .weakK) ?? 20
        miningK = try c.decodeIfPresent(Int.self, forKey: .miningK) ?? 20
    }
    public func validate() throws {
        if sources.isEmpty { throw JobConfigError.invalid(key: "wslrec.sources", reason: "name at least one of br, itemcf, original") }
        if weakK < 1 { throw JobConfigError.invalid(key: "wslrec.weak_k", reason: "must be at least 1, got \(weakK)") }
        if miningK < 1 { throw JobConfigError.invalid(key: "wslrec.mining_k", reason: "must be at least 1, got \(miningK)") }
    }
}

/// Positive sets per training instance, packed: instance k's positives (item ids) are
/// items[offsets[k] ..< offsets[k + 1]], without duplicates.
public struct PositiveSets: Sendable, Equatable {
    public var offsets: [Int] = [0]
    public var items: [Int32] = []
    public init() {}
    public init(_ sets: [[Int32]]) { for s in sets { append(s) } }
    public var count: Int { offsets.count - 1 }
    public subscript(k: Int) -> ArraySlice<Int32> { items[offsets[k] ..< offsets[k + 1]] }
    /// Appends one set (duplicates dropped, first occurrence kept).
    public mutating func append<S: Sequence>(_ set: S) where S.Element == Int32 {
        var seen = Set<Int32>()
        for i in set where seen.insert(i).inserted { items.append(i) }
        offsets.append(items.count)
    }
}

public enum WSLRec {
    /// BR top-k (Eq. 7): the distinct items among the last k of the history, most recent first.
    public static func behaviouralRetargeting(history: ArraySlice<Int32>, k: Int) -> [Int32] {
        var out: [Int32] = [], seen = Set<Int32>()
        for i in history.suffix(k).reversed() where seen.insert(i).inserted { out.append(i) }
        return out
    }

    /// ItemCF top-k (Eq. 10): items by max over history items v' ≠ v of sim(v, v'), best first,
    /// equal scores to the lower id; only items with a positive similarity. Exact when the
    /// neighbour lists hold at least k entries per item (an item outside v*'s top-k list has k
    /// items scoring at least as high before it).
    public static func itemCF(history: ArraySlice<Int32>, neighbours: ItemNeighbours, k: Int) -> [Int32] {
        precondition(neighbours.k >= k, "neighbour lists of \(neighbours.k) cannot give an exact top-\(k)")
        var best: [Int32: Float] = [:]
        for h in Set(history) {
            let row = neighbours.neighbours(of: Int(h))
            for (v, s) in zip(row.items, row.scores) where s > (best[v] ?? 0) { best[v] = s }
        }
        return best.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(k).map(\.key)
    }

    /// The end (exclusive, index within the user's sequence) of each user's training data under
    /// leave-one-out: n − 2 for n ≥ 3, else n.
    public static func leaveOneOutTrainEnds(_ data: SequenceDataset) -> [Int] {
        (0..<data.userCount).map { u in let n = data.length(u); return n >= 3 ? n - 2 : n }
    }

    /// ItemCF neighbours from the training part of every user's sequence.
    public static func neighbours(_ data: SequenceDataset, trainUsers: [Int32]? = nil, trainEnds: [Int], k: Int) throws -> ItemNeighbours {
        let users = trainUsers.map { $0.map(Int.init) } ?? Array(0..<data.userCount)
        let seqs = users.map { u in Array(data.sequence(u).prefix(trainEnds[u])) }
        return try ItemCF.neighbours(sequences: seqs, itemCount: data.itemCount, k: k)
    }

    /// Pre-training positives (Eq. 13) per training instance: the union of the configured sources.
    /// The history X_{u,t} is the model's input window (the last `maxLength` items), as the paper
    /// truncates X_{u,t} itself.
    public static func pretrainingPositives(_ config: WSLRecConfig, data: SequenceDataset, instances: InstanceSet,
                                            neighbours: ItemNeighbours?, maxLength: Int = Int.max) -> PositiveSets {
        var sets = PositiveSets()
        for k in 0..<instances.count {
            let u = Int(instances.users[k]), t = Int(instances.positions[k])
            let history = data.sequence(u).prefix(t).suffix(maxLength)
            var p: [Int32] = []
            for s in config.sources {
                switch s {
                case .original: p.append(instances.target(k, in: data))
                case .br: p += behaviouralRetargeting(history: history, k: config.weakK)
                case .itemcf:
                    guard let neighbours else { preconditionFailure("ItemCF source needs neighbour lists") }
                    p += itemCF(history: history, neighbours: neighbours, k: config.weakK)
                }
            }
            sets.append(p)
        }
        return sets
    }

    /// Fine-tuning positives (Eq. 15): {next} ∪ (topK[k] ∩ Y), Y = the items from the instance's
    /// position up to `trainEnds[user]` (exclusive).
    public static func fineTuningPositives(data: SequenceDataset, instances: InstanceSet, topK: [[Int32]],
                                           trainEnds: [Int]) -> PositiveSets {
        precondition(topK.count == instances.count, "one top-k list per instance")
        var sets = PositiveSets()
        for k in 0..<instances.count {
            let u = Int(instances.users[k]), t = Int(instances.positions[k])
            let seq = data.sequence(u)
            let future = Set(seq.dropFirst(t).prefix(max(0, trainEnds[u] - t)))
            sets.append([seq[seq.startIndex + t]] + topK[k].filter { future.contains($0) })
        }
        return sets
    }

    /// Stages 1–3 on `model`. `fineTune` may wrap the fine-tuning objective (e.g. in CSRec's
    /// student loss). Returns the two fits.
    public static func train(_ config: WSLRecConfig, model: Backbone, loop: LabelLoop, instances: InstanceSet,
                             trainEnds: [Int], trainUsers: [Int32]? = nil, validate: ModelEvaluation?,
                             fineTune: (LabelObjective) throws -> LabelObjective = { $0 }) throws -> (pre: FitResult, fine: FitResult) {
        let r1 = try pretrain(config, model: model, loop: loop, instances: instances, trainEnds: trainEnds, trainUsers: trainUsers,
                              validate: validate)
        loop.progress?("WSLRec stage 2: top-\(config.miningK) mining")
        let lists = try LabelEvaluation.topLists(model, data: loop.data, instances: instances, k: min(config.miningK, loop.data.itemCount),
                                                 maxLength: loop.config.maxLength)
        let r2 = try WSLRec.fineTune(model, loop: loop, instances: instances, mined: lists, trainEnds: trainEnds, validate: validate,
                              objective: fineTune)
        return (r1, r2)
    }

    /// Stage 1 on `model` (wherever it runs: in the job's process, or in a teacher process that
    /// then serves the model for stage 2's mining).
    public static func pretrain(_ config: WSLRecConfig, model: Backbone, loop: LabelLoop, instances: InstanceSet,
                                trainEnds: [Int], trainUsers: [Int32]? = nil, validate: ModelEvaluation?) throws -> FitResult {
        let data = loop.data, T = loop.config.maxLength
        let nb = config.sources.contains(.itemcf)
            ? try neighbours(data, trainUsers: trainUsers, trainEnds: trainEnds, k: config.weakK) : nil
        let pre = pretrainingPositives(config, data: data, instances: instances, neighbours: nb, maxLength: T)
        let stage = loop.stage
        defer { loop.stage = stage }
        loop.progress?("WSLRec stage 1: pre-training on \(config.sources.map(\.rawValue).joined(separator: " ∪ "))")
        loop.stage = "pretrain"
        return try loop.fit(model: model, instances: instances, objective: MultiPositiveObjective(pre), validate: validate)
    }

    /// Stage 3: fine-tunes the pre-trained `model` (its weights and dropout generator as stage 1
    /// left them) on {next} ∪ (mined ∩ future); `objective` may wrap the loss (CSRec's student).
    public static func fineTune(_ model: Backbone, loop: LabelLoop, instances: InstanceSet, mined lists: [[Int32]], trainEnds: [Int],
                                validate: ModelEvaluation?,
                                objective: (LabelObjective) throws -> LabelObjective = { $0 }) throws -> FitResult {
        let fin = fineTuningPositives(data: loop.data, instances: instances, topK: lists, trainEnds: trainEnds)
        let stage = loop.stage
        defer { loop.stage = stage }
        loop.progress?("WSLRec stage 3: fine-tuning (\(fin.items.count - fin.count) mined positives)")
        loop.stage = "finetune"
        return try loop.fit(model: model, instances: instances, objective: try objective(MultiPositiveObjective(fin)), validate: validate)
    }
}

/// Multi-positive softmax CE (Eq. 3): −Σ_{v ∈ P} log p(v | X), mean over rows, with P looked up
/// per row's training instance.
public final class MultiPositiveObjective: LabelObjective {
    public let sets: PositiveSets
    private var offsets: [Int32] = [], cols: [Int32] = [], losses: [Float] = []
    public init(_ sets: PositiveSets) { self.sets = sets }

    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double {
        let B = batch.B
        offsets.removeAll(keepingCapacity: true); cols.removeAll(keepingCapacity: true)
        offsets.append(0)
        for b in 0..<B {
            for i in sets[Int(batch.instances[b])] { cols.append(i - 1) }
            offsets.append(Int32(cols.count))
        }
        if losses.count < B { losses = [Float](repeating: 0, count: B) }
        if cols.isEmpty { cols.append(0) }
        return multiPositiveCrossEntropy(losses: &losses, dlogits: dlogits, logits: logits, offsets: offsets, cols: cols,
                                         weights: nil, scale: 1 / Float(B), B: B, V: batch.N)
    }
}

extension WSLRec {
    /// The model-free recommenders' top-k lists for held-out instances (their history = the
    /// part before the instance's position), for HDR against a model: BR (Eq. 7) and ItemCF
    /// (Eq. 10, neighbours from the training users' whole sequences).
    public static func modelFreeLists(data: SequenceDataset, instances: InstanceSet, trainUsers: [Int32],
                                      k: Int) throws -> (br: [[Int32]], itemCF: [[Int32]]) {
        let nb = try neighbours(data, trainUsers: trainUsers,
                                trainEnds: (0..<data.userCount).map { data.length($0) }, k: k)
        var br: [[Int32]] = [], cf: [[Int32]] = []
        for i in 0..<instances.count {
            let h = data.sequence(Int(instances.users[i])).prefix(Int(instances.positions[i]))
            br.append(behaviouralRetargeting(history: h, k: k))
            cf.append(itemCF(history: h, neighbours: nb, k: k))
        }
        return (br, cf)
    }
}
