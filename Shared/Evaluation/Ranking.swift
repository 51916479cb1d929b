// Full ranking over the catalogue: one sgemm per batch of users, then per user a counting
// pass (the target's rank is the number of items ahead of it) and, where lists are needed, a
// k-sized heap — never a sort of the catalogue.
//
// Shapes: B users per batch, K interests per user (1 for single-vector models), d dims,
// N items. users (B·K, d) row-major, user b's interests at rows b·K ..< (b+1)·K;
// items (N, d) row-major with row j holding item j + 1 (for a table with a padding row 0, pass
// table + d); scores (B, N), column j = item j + 1. Multi-interest score = max over interests.
import Numerics

/// Scores and ranks users against the catalogue, reusing one workspace.
public final class RankingEvaluator {
    public let itemCount: Int
    public let dim: Int
    public let interests: Int
    public let maxBatch: Int
    /// Cut-offs for the metrics.
    public var ks: [Int]
    /// Whether items of the user's history are excluded (score −∞) before ranking. The target
    /// itself is never excluded.
    public var maskHistory: Bool

    private let scores: UnsafeMutablePointer<Float>   // (maxBatch · K, N)
    private var heapScores: [Float] = []
    private var heapItems: [Int32] = []

    public init(itemCount: Int, dim: Int, maxBatch: Int = 256, interests: Int = 1,
                ks: [Int] = [5, 10, 20], maskHistory: Bool = false) {
        precondition(itemCount > 0 && dim > 0 && maxBatch > 0 && interests > 0, "positive sizes")
        self.itemCount = itemCount; self.dim = dim; self.maxBatch = maxBatch
        self.interests = interests; self.ks = ks; self.maskHistory = maskHistory
        scores = .allocate(capacity: maxBatch * interests * itemCount)
    }

    deinit { scores.deallocate() }

    /// Computes scores (B, N) into the workspace and calls `body` with it (not to escape).
    /// History masking is not applied here.
    public func withScores<R>(users: UnsafePointer<Float>, count B: Int, items: UnsafePointer<Float>,
                              _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        precondition(B >= 0 && B <= maxBatch, "batch \(B) exceeds maxBatch \(maxBatch)")
        let N = itemCount, K = interests, rowsBK = B * K
        if rowsBK > 0 {
            sgemm(transB: true, M: rowsBK, N: N, K: dim, A: users, lda: dim, B: items, ldb: dim, C: scores, ldc: N)
        }
        if K > 1 {
            // Max over interests, written into rows 0..<B (row b reads rows bK..<bK+K, bK >= b).
            for b in 0..<B {
                let out = scores + b * N, first = scores + b * K * N
                if b > 0 { out.update(from: first, count: N) }
                for k in 1..<K {
                    let r = first + k * N
                    for j in 0..<N where r[j] > out[j] { out[j] = r[j] }
                }
            }
        }
        return try body(scores)
    }

    /// Sets history items (other than `target`) to −∞ in a score row.
    @inline(__always)
    private func mask(_ row: UnsafeMutablePointer<Float>, history: ArraySlice<Int32>, target: Int32) {
        for h in history where h != target && h >= 1 && Int(h) <= itemCount {
            row[Int(h) - 1] = -.infinity
        }
    }

    /// 0-based rank of the target in a score row, with the counts AUC needs.
    /// rank = #{j : s_j > t} + #{j < target : s_j == t}; a NaN target ranks last.
    @inline(__always)
    static func rank(row: UnsafePointer<Float>, N: Int, target: Int) -> (rank: Int, greater: Int, equal: Int) {
        let ti = target - 1
        let t = row[ti]
        if t.isNaN { return (N - 1, N - 1, 0) }
        var gt = 0, eq = 0
        // Eight lanes at a time: a true lane of a comparison mask is −1 as an integer.
        var gtv = SIMD8<Int32>(), eqv = SIMD8<Int32>()
        let tv = SIMD8<Float>(repeating: t)
        let raw = UnsafeRawPointer(row)
        var j = 0
        while j + 8 <= N {
            let v = raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
            gtv &-= unsafeBitCast(v .> tv, to: SIMD8<Int32>.self)
            eqv &-= unsafeBitCast(v .== tv, to: SIMD8<Int32>.self)
            j += 8
        }
        gt = Int(gtv.wrappedSum()); eq = Int(eqv.wrappedSum())
        while j < N {
            gt &+= row[j] > t ? 1 : 0
            eq &+= row[j] == t ? 1 : 0
            j += 1
        }
        eq -= 1   // the target itself
        if eq == 0 { return (gt, gt, 0) }
        var eqBefore = 0
        for j in 0..<ti { eqBefore &+= row[j] == t ? 1 : 0 }
        return (gt + eqBefore, gt, eq)
    }

    /// Full ranking, one target per user: adds each user's metrics (hr, recall, ndcg, mrr,
    /// precision, f1 @ks, auc) to `acc`. `targets` (B) are item ids 1...N; `history(b)` gives
    /// user b's history for masking (used only when `maskHistory`). Returns nothing; per-user
    /// ranks go to `ranksOut` when given.
    public func rankTargets(users: UnsafePointer<Float>, count B: Int, items: UnsafePointer<Float>,
                            targets: UnsafePointer<Int32>, history: ((Int) -> ArraySlice<Int32>)? = nil,
                            into acc: inout MetricAccumulator, ranksOut: UnsafeMutablePointer<Int32>? = nil) {
        let N = itemCount
        for b in 0..<B {
            precondition(targets[b] >= 1 && Int(targets[b]) <= N, "target \(targets[b]) outside 1...\(N)")
        }
        let found = UnsafeMutablePointer<(rank: Int, greater: Int, equal: Int, candidates: Int)>.allocate(capacity: max(B, 1))
        defer { found.deallocate() }
        withScores(users: users, count: B, items: items) { s in
            // users' rows are independent: rank them on all threads, then add their metrics in
            // user order, so the sums are the same for every thread count
            Threads.parallelFor(B, minPerChunk: max(1, 65_536 / N)) { lo, hi in
                for b in lo..<hi {
                    let row = s + b * N, target = targets[b]
                    var candidates = N
                    if maskHistory, let history {
                        mask(row, history: history(b), target: target)
                        candidates = 0
                        for j in 0..<N where row[j] != -.infinity || j == Int(target) - 1 { candidates += 1 }
                    }
                    let r = Self.rank(row: row, N: N, target: Int(target))
                    found[b] = (r.rank, r.greater, r.equal, candidates)
                }
            }
        }
        for b in 0..<B {
            let r = found[b]
            ranksOut?[b] = Int32(r.rank)
            acc.add(singleTargetMetrics(rank: r.rank, ks: ks, greater: r.greater, equal: r.equal,
                                        candidates: r.candidates))
        }
    }

    /// Writes each user's top-k item ids (best first; ties to the lower id) into `out` (B, k),
    /// and their scores into `scoresOut` (B, k) when given. `history(b)` items are excluded when
    /// `maskHistory` (no target is protected here). k <= N.
    public func topK(users: UnsafePointer<Float>, count B: Int, items: UnsafePointer<Float>, k: Int,
                     history: ((Int) -> ArraySlice<Int32>)? = nil,
                     out: UnsafeMutablePointer<Int32>, scoresOut: UnsafeMutablePointer<Float>? = nil) {
        precondition(k >= 1 && k <= itemCount, "k \(k) outside 1...\(itemCount)")
        let N = itemCount
        withScores(users: users, count: B, items: items) { s in
            for b in 0..<B {
                let row = s + b * N
                if maskHistory, let history { mask(row, history: history(b), target: 0) }
                selectTop(row: row, N: N, k: k, out: out + b * k, scoresOut: scoresOut.map { $0 + b * k })
            }
        }
    }

    /// Set-valued ground truth (WSLRec's protocol): for each user b, the top max(ks) list is
    /// compared with `truth(b)`; adds recall, precision, f1, hr, dcg, ndcg @ks to `acc`.
    /// Lists go to `listsOut` (B, max(ks)) when given.
    public func rankSets(users: UnsafePointer<Float>, count B: Int, items: UnsafePointer<Float>,
                         truth: (Int) -> Set<Int32>, history: ((Int) -> ArraySlice<Int32>)? = nil,
                         into acc: inout MetricAccumulator, listsOut: UnsafeMutablePointer<Int32>? = nil) {
        let N = itemCount, kMax = min(ks.max() ?? 1, N)
        let lists = UnsafeMutablePointer<Int32>.allocate(capacity: max(B, 1) * kMax)
        defer { lists.deallocate() }
        topK(users: users, count: B, items: items, k: kMax, history: history, out: lists)
        for b in 0..<B {
            acc.add(setMetrics(topList: UnsafeBufferPointer(start: lists + b * kMax, count: kMax),
                               truth: truth(b), ks: ks))
        }
        listsOut?.update(from: lists, count: B * kMax)
    }

    /// Top-k of one row with a k-sized min-heap ordered by (score, −id): the root is the worst
    /// kept entry. Result sorted best first.
    private func selectTop(row: UnsafePointer<Float>, N: Int, k: Int, out: UnsafeMutablePointer<Int32>,
                           scoresOut: UnsafeMutablePointer<Float>?) {
        if heapScores.count < k {
            heapScores = [Float](repeating: 0, count: k)
            heapItems = [Int32](repeating: 0, count: k)
        }
        heapScores.withUnsafeMutableBufferPointer { hsBuf in
            heapItems.withUnsafeMutableBufferPointer { hiBuf in
                let hs = hsBuf.baseAddress!, hi = hiBuf.baseAddress!
                // a worse than b: lower score, or equal score and higher id. NaN counts as −∞.
                @inline(__always) func key(_ s: Float) -> Float { s.isNaN ? -.infinity : s }
                @inline(__always) func worse(_ sa: Float, _ ia: Int32, _ sb: Float, _ ib: Int32) -> Bool {
                    sa < sb || (sa == sb && ia > ib)
                }
                func siftDown(_ start: Int, _ n: Int) {
                    var i = start
                    while true {
                        let l = 2 * i + 1
                        if l >= n { break }
                        var m = l
                        if l + 1 < n && worse(hs[l + 1], hi[l + 1], hs[l], hi[l]) { m = l + 1 }
                        if worse(hs[m], hi[m], hs[i], hi[i]) {
                            hs.swapAt(m, i); hi.swapAt(m, i); i = m
                        } else { break }
                    }
                }
                for j in 0..<k { hs[j] = key(row[j]); hi[j] = Int32(j + 1) }
                var i = k / 2 - 1
                while i >= 0 { siftDown(i, k); i -= 1 }
                var rootScore = hs[0]
                for j in k..<N {
                    let s = row[j]
                    // Later items have higher ids, so a tie with the root never displaces it.
                    if s > rootScore {
                        hs[0] = s; hi[0] = Int32(j + 1)
                        siftDown(0, k)
                        rootScore = hs[0]
                    }
                }
                // Pop worst-first into the back of the output.
                var n = k
                while n > 0 {
                    out[n - 1] = hi[0]
                    scoresOut?[n - 1] = hs[0]
                    n -= 1
                    hs[0] = hs[n]; hi[0] = hi[n]
                    siftDown(0, n)
                }
            }
        }
    }
}

private extension UnsafeMutablePointer {
    @inline(__always) func swapAt(_ a: Int, _ b: Int) { let t = self[a]; self[a] = self[b]; self[b] = t }
}
