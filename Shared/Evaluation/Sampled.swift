// The sampled protocol of DSS and UFNRec: the target ranked against 100 negatives drawn in
// proportion to item popularity. Known to be biased (it overstates metrics and can reorder
// models; Krichene & Rendle, KDD 2020); reports mark it so and keep full ranking the default.
import Data

/// Draws items 1...N with probability proportional to popularity, without replacement within
/// one draw, skipping excluded items. Seeded; the same seed and calls give the same samples.
public struct PopularitySampler: Sendable {
    public let itemCount: Int
    private let cumulative: [Double]     // (N) cumulative weight of items 1...j+1
    private var rng: SplitMix64
    private var stamp: [UInt32]          // (N + 1) == current marks taken/excluded
    private var current: UInt32 = 0

    /// `popularity` has N + 1 entries (index 0, padding, is ignored); items with weight 0 are
    /// never drawn.
    public init(popularity: [Int32], seed: UInt64) {
        precondition(popularity.count >= 2, "popularity needs entries for items 1...N")
        itemCount = popularity.count - 1
        var c = [Double](repeating: 0, count: itemCount), run = 0.0
        for j in 0..<itemCount { run += Double(max(popularity[j + 1], 0)); c[j] = run }
        cumulative = c
        rng = SplitMix64(seed: seed)
        stamp = [UInt32](repeating: 0, count: itemCount + 1)
    }

    /// Writes `count` distinct items into `out`, none of them in `excluded`. When fewer than
    /// `count` eligible items exist it writes what there is and returns that number.
    @discardableResult
    public mutating func sample(count: Int, excluding excluded: some Sequence<Int32>,
                                into out: UnsafeMutablePointer<Int32>) -> Int {
        current &+= 1
        if current == 0 { for j in 0..<stamp.count { stamp[j] = 0 }; current = 1 }
        for e in excluded where e >= 1 && Int(e) <= itemCount { stamp[Int(e)] = current }
        let total = cumulative.last ?? 0
        var n = 0, attempts = 0
        let maxAttempts = 64 * count + 1024
        while n < count && total > 0 && attempts < maxAttempts {
            attempts += 1
            let x = Double(rng.next() >> 11) * (1.0 / 9_007_199_254_740_992.0) * total
            // First j with cumulative[j] > x.
            var lo = 0, hi = itemCount - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if cumulative[mid] > x { hi = mid } else { lo = mid + 1 }
            }
            let item = lo + 1
            if stamp[item] == current { continue }
            stamp[item] = current
            out[n] = Int32(item); n += 1
        }
        // Rejection ran dry (most of the mass excluded): take remaining eligible items in
        // descending popularity, deterministically.
        if n < count {
            var rest: [(Double, Int)] = []
            for j in 1...itemCount where stamp[j] != current {
                let w = cumulative[j - 1] - (j >= 2 ? cumulative[j - 2] : 0)
                if w > 0 { rest.append((w, j)) }
            }
            rest.sort { $0.0 > $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
            for (_, j) in rest.prefix(count - n) { out[n] = Int32(j); n += 1 }
        }
        return n
    }
}

extension RankingEvaluator {
    /// Sampled protocol: each user's target against `negatives` popularity-sampled items not in
    /// `exclude(b)` (the target is always excluded). Adds hr, recall, ndcg, mrr, precision, f1
    /// @ks and auc over these candidates to `acc`. Ties go to the lower item id.
    public func rankSampled(users: UnsafePointer<Float>, count B: Int, items: UnsafePointer<Float>,
                            targets: UnsafePointer<Int32>, negatives: Int = 100,
                            sampler: inout PopularitySampler, exclude: (Int) -> ArraySlice<Int32>,
                            into acc: inout MetricAccumulator) {
        let d = dim, K = interests
        let neg = UnsafeMutablePointer<Int32>.allocate(capacity: max(negatives, 1))
        defer { neg.deallocate() }
        @inline(__always) func score(_ b: Int, _ item: Int32) -> Float {
            var best = -Float.infinity
            let v = items + (Int(item) - 1) * d
            for k in 0..<K {
                let u = users + (b * K + k) * d
                var s: Float = 0
                for c in 0..<d { s += u[c] * v[c] }
                if s > best || k == 0 { best = s }
            }
            return best
        }
        for b in 0..<B {
            let target = targets[b]
            precondition(target >= 1 && Int(target) <= itemCount, "target \(target) outside 1...\(itemCount)")
            let n = sampler.sample(count: negatives, excluding: exclude(b) + [target], into: neg)
            let t = score(b, target)
            var rank = 0, greater = 0, equal = 0
            for i in 0..<n {
                let s = score(b, neg[i])
                if t.isNaN || s > t { rank += 1; greater += 1 }
                else if s == t { equal += 1; if neg[i] < target { rank += 1 } }
            }
            acc.add(singleTargetMetrics(rank: rank, ks: ks, greater: greater, equal: equal, candidates: n + 1))
        }
    }
}
