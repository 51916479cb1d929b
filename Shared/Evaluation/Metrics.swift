// Metric definitions and their aggregation (mean over evaluated users).
//
// Single target (leave-one-out), with rank r = 0-based position of the target:
//   hr@k = recall@k = [r < k]        ndcg@k = [r < k] / log2(r + 2)      mrr@k = [r < k] / (r + 1)
//   precision@k = [r < k] / k        f1@k = 2 [r < k] / (k + 1)          auc = 1 - (g + e/2) / (C - 1)
// where g / e count candidates scoring above / equal to the target and C is the number of
// candidates (the target included).
//
// Ground-truth set Y (WSLRec's protocol), top-k list B, hits h = |B ∩ Y|:
//   recall@k = h / |Y|   precision@k = h / k   f1@k = 2h / (k + |Y|)   hr@k = [h > 0]
//   dcg@k = Σ_{i < k, B_i ∈ Y} 1 / log2(i + 2)                       (WSLRec Eq. 20 as printed)
//   ndcg@k = dcg@k / Σ_{i < min(k, |Y|)} 1 / log2(i + 2)              (normalised, the usual NDCG)
//
// Ties: candidates are ordered by descending score, equal scores by ascending item id (a
// stable sort). A NaN target score ranks last.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sums of per-user metrics and the number of users; `means` is what reports print.
public struct MetricAccumulator: Sendable {
    public private(set) var sums: [String: Double] = [:]
    public private(set) var users: Int = 0

    public init() {}

    /// Adds one user's metrics.
    public mutating func add(_ values: [(String, Double)]) {
        for (k, v) in values { sums[k, default: 0] += v }
        users += 1
    }

    /// Adds another accumulator's users (e.g. from another thread or shard).
    public mutating func merge(_ other: MetricAccumulator) {
        for (k, v) in other.sums { sums[k, default: 0] += v }
        users += other.users
    }

    /// Mean of each metric over users (empty when no user was added).
    public var means: [String: Double] {
        guard users > 0 else { return [:] }
        return sums.mapValues { $0 / Double(users) }
    }
}

/// Metric values for one user with a single target at 0-based rank `rank` among `candidates`
/// items, `greater`/`equal` candidates scoring above/equal to it (equal excluding itself).
@inline(__always)
public func singleTargetMetrics(rank: Int, ks: [Int], greater: Int? = nil, equal: Int = 0,
                                candidates: Int? = nil) -> [(String, Double)] {
    var out: [(String, Double)] = []
    out.reserveCapacity(ks.count * 6 + 1)
    for k in ks {
        let hit = rank < k
        let h = hit ? 1.0 : 0.0
        out.append(("hr@\(k)", h))
        out.append(("recall@\(k)", h))
        out.append(("ndcg@\(k)", hit ? 1 / log2(Double(rank) + 2) : 0))
        out.append(("mrr@\(k)", hit ? 1 / (Double(rank) + 1) : 0))
        out.append(("precision@\(k)", h / Double(k)))
        out.append(("f1@\(k)", 2 * h / Double(k + 1)))
    }
    if let greater, let candidates, candidates > 1 {
        out.append(("auc", 1 - (Double(greater) + 0.5 * Double(equal)) / Double(candidates - 1)))
    }
    return out
}

/// Metric values for one user given a top list (best first, at least max(ks) long unless the
/// catalogue is smaller) and the ground-truth set.
public func setMetrics(topList: UnsafeBufferPointer<Int32>, truth: Set<Int32>, ks: [Int]) -> [(String, Double)] {
    var out: [(String, Double)] = []
    let y = truth.count
    for k in ks {
        var hits = 0, dcg = 0.0
        for i in 0..<min(k, topList.count) where truth.contains(topList[i]) {
            hits += 1
            dcg += 1 / log2(Double(i) + 2)
        }
        var idcg = 0.0
        for i in 0..<min(k, y) { idcg += 1 / log2(Double(i) + 2) }
        out.append(("recall@\(k)", y > 0 ? Double(hits) / Double(y) : 0))
        out.append(("precision@\(k)", Double(hits) / Double(k)))
        out.append(("f1@\(k)", 2 * Double(hits) / Double(k + y)))
        out.append(("hr@\(k)", hits > 0 ? 1 : 0))
        out.append(("dcg@\(k)", dcg))
        out.append(("ndcg@\(k)", idcg > 0 ? dcg / idcg : 0))
    }
    return out
}

/// Hits difference rate of one user (WSLRec Eq. 11): with H1 = B1 ∩ Y and H2 = B2 ∩ Y,
/// (|H1 ∪ H2| − |H1 ∩ H2|) / |H1 ∪ H2|, and 0 when both are empty.
public func hitsDifferenceRate(_ b1: some Sequence<Int32>, _ b2: some Sequence<Int32>, truth: Set<Int32>) -> Double {
    let h1 = Set(b1).intersection(truth), h2 = Set(b2).intersection(truth)
    let union = h1.union(h2).count
    guard union > 0 else { return 0 }
    return Double(union - h1.intersection(h2).count) / Double(union)
}

/// HDR@k over users (WSLRec Eq. 12): the sum of per-user HDR divided by the number of users
/// whose HDR is > 0 (0 when there is none). `lists1[u]`, `lists2[u]` are top-k lists.
public func hitsDifferenceRate(lists1: [[Int32]], lists2: [[Int32]], truths: [Set<Int32>], k: Int) -> Double {
    precondition(lists1.count == lists2.count && lists1.count == truths.count, "one list pair and truth per user")
    var sum = 0.0, positive = 0
    for u in 0..<truths.count {
        let v = hitsDifferenceRate(lists1[u].prefix(k), lists2[u].prefix(k), truth: truths[u])
        sum += v
        if v > 0 { positive += 1 }
    }
    return positive > 0 ? sum / Double(positive) : 0
}
