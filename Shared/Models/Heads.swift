// Scoring heads: turn user vectors (B, K, C) and the backbone's item table into a loss, with
// gradients into the user vectors and the table. score(u, i) = max_k u_k · e_i.
import Numerics

/// Full softmax over all N items (padding excluded) with cross-entropy against target ids.
public final class FullSoftmaxHead {
    public let itemCount: Int, dim: Int, interests: Int
    private let work = Workspace()
    /// logits (B, N) for the last call; then the gradient on them.
    public private(set) var logits: Floats! = nil
    private var logitsK: Floats! = nil   // (B·K, N) when K > 1
    /// per-example losses (B) of the last call
    public private(set) var losses: Floats! = nil
    /// gradient on the user vectors (B, K, C) of the last call
    public private(set) var dUser: Floats! = nil
    private var argmaxStorage: [Int32] = [], colsStorage: [Int32] = []
    private var fusedScratch: Floats! = nil   // tableSoftmaxCrossEntropy's, when K = 1
    /// Items per tile of the fused cross-entropy (K = 1, with gradients); nil picks
    /// `tableSoftmaxTile(B:)`. Set before the first call (tests use small tiles to cover many
    /// tiles on small tables).
    public var tile: Int? = nil
    /// Rows per block of the fused cross-entropy.
    static let fusedRows = 256

    public init(itemCount: Int, dim: Int, interests: Int = 1) {
        self.itemCount = itemCount; self.dim = dim; self.interests = interests
    }

    private func tileSize(_ B: Int) -> Int { tile ?? tableSoftmaxTile(B: B) }

    private func allocate(_ B: Int) {
        let N = itemCount, C = dim, K = interests
        // the fused scratch for the capacity B also fits smaller batches (their tiles are no smaller)
        if work.ensure(B, sizes: { B in [B * N, K > 1 ? B * K * N : 0, B, B * K * C,
                                         K == 1 ? tableSoftmaxScratchCount(B: min(B, Self.fusedRows), N: N,
                                                                           tile: tileSize(min(B, Self.fusedRows))) : 0] }) {
            let v = work.slab!.views
            logits = v[0]; logitsK = v[1]; losses = v[2]; dUser = v[3]; fusedScratch = v[4]
            argmaxStorage = [Int32](repeating: 0, count: K > 1 ? B * N : 1)
            colsStorage = [Int32](repeating: 0, count: B)
        }
    }

    /// Scores (B, N) = max_k user_k · table[1...N] into `logits`.
    public func scores(user: UnsafePointer<Float>, table: UnsafePointer<Float>, B: Int) {
        allocate(B)
        let N = itemCount, C = dim, K = interests
        let items = table + C
        if K == 1 {
            sgemm(transB: true, M: B, N: N, K: C, A: user, lda: C, B: items, ldb: C, C: logits, ldc: N)
            return
        }
        sgemm(transB: true, M: B * K, N: N, K: C, A: user, lda: C, B: items, ldb: C, C: logitsK, ldc: N)
        argmaxStorage.withUnsafeMutableBufferPointer { am in
            for b in 0..<B {
                for j in 0..<N {
                    var best = logitsK[(b * K) * N + j], arg: Int32 = 0
                    for k in 1..<K { let s = logitsK[(b * K + k) * N + j]; if s > best { best = s; arg = Int32(k) } }
                    logits[b * N + j] = best; am[b * N + j] = arg
                }
            }
        }
    }

    /// Cross-entropy of target item ids (B; 1...N, or ≤ 0 to skip a row), weighted per row
    /// (or nil) and scaled; gradients accumulate into `tableGrad` and are left in `dUser`.
    /// Returns the weighted, scaled total.
    @discardableResult
    public func crossEntropy(user: UnsafePointer<Float>, table: UnsafePointer<Float>, tableGrad: Floats?,
                             targets: UnsafePointer<Int32>, weights: UnsafePointer<Float>?, scale: Float, B: Int) -> Double {
        let N = itemCount
        if interests == 1, let tableGrad {
            // forward and backward fused, tile by tile over the items (see tableSoftmaxCrossEntropy),
            // in blocks of at most `fusedRows` rows: rows are independent, and a block's scores
            // stay in cache between the kernel's two passes (all-position batches have thousands
            // of rows, whose whole score matrix would not)
            allocate(B)
            return colsStorage.withUnsafeMutableBufferPointer { cols -> Double in
                for b in 0..<B { cols[b] = targets[b] - 1 }
                var total = 0.0, r0 = 0
                while r0 < B {
                    let n = min(Self.fusedRows, B - r0)
                    total += tableSoftmaxCrossEntropy(losses: losses + r0, scores: logits, dUser: dUser + r0 * dim, dTable: tableGrad + dim,
                                                      user: user + r0 * dim, table: table + dim, targets: cols.baseAddress! + r0,
                                                      weights: weights.map { $0 + r0 }, scale: scale, scratch: fusedScratch,
                                                      B: n, N: N, C: dim, tile: tileSize(n))
                    r0 += n
                }
                return total
            }
        }
        scores(user: user, table: table, B: B)
        let total = colsStorage.withUnsafeMutableBufferPointer { cols -> Double in
            for b in 0..<B { cols[b] = targets[b] - 1 }
            return softmaxCrossEntropy(losses: losses, dlogits: tableGrad == nil ? nil : logits, logits: logits, targets: cols.baseAddress!,
                                       weights: weights, scale: scale, B: B, V: N)
        }
        if let tableGrad { backward(user: user, table: table, tableGrad: tableGrad, B: B) }
        return total
    }

    /// Given the gradient on the scores in `logits` (B, N), sets dUser and accumulates the table's.
    public func backward(user: UnsafePointer<Float>, table: UnsafePointer<Float>, tableGrad: Floats, B: Int) {
        let N = itemCount, C = dim, K = interests
        let items = table + C, dItems = tableGrad + C
        if K == 1 {
            sgemm(M: B, N: C, K: N, A: logits, lda: N, B: items, ldb: C, C: dUser, ldc: C)
            sgemm(transA: true, M: N, N: C, K: B, A: logits, lda: N, B: user, ldb: C, beta: 1, C: dItems, ldc: C)
            return
        }
        logitsK.update(repeating: 0, count: B * K * N)
        argmaxStorage.withUnsafeBufferPointer { am in
            for b in 0..<B { for j in 0..<N { logitsK[(b * K + Int(am[b * N + j])) * N + j] = logits[b * N + j] } }
        }
        sgemm(M: B * K, N: C, K: N, A: logitsK, lda: N, B: items, ldb: C, C: dUser, ldc: C)
        sgemm(transA: true, M: N, N: C, K: B * K, A: logitsK, lda: N, B: user, ldb: C, beta: 1, C: dItems, ldc: C)
    }
}

/// Sampled softmax with S negatives shared by the batch (ComiRec), log-Q corrected. K = 1.
public final class SampledSoftmaxHead {
    public let itemCount: Int, dim: Int, negatives: Int
    public let sampler: NegativeSampler
    private let work = Workspace()
    public private(set) var losses: Floats! = nil
    public private(set) var dUser: Floats! = nil
    private var logits: Floats! = nil, negEmb: Floats! = nil, dNegEmb: Floats! = nil, logQNeg: Floats! = nil, logQPos: Floats! = nil
    private var negItems: [Int32]

    public init(itemCount: Int, dim: Int, negatives S: Int, sampler: NegativeSampler) {
        self.itemCount = itemCount; self.dim = dim; negatives = S; self.sampler = sampler
        negItems = [Int32](repeating: 0, count: S)
    }

    @discardableResult
    public func crossEntropy(user: UnsafePointer<Float>, table: UnsafePointer<Float>, tableGrad: Floats?,
                             targets: UnsafePointer<Int32>, weights: UnsafePointer<Float>?, scale: Float, B: Int,
                             rng: inout RNG) -> Double {
        let S = negatives, C = dim, V = S + 1
        if work.ensure(B, sizes: { B in [B, B * C, B * V, S * C, S * C, S, B] }) {
            let v = work.slab!.views
            losses = v[0]; dUser = v[1]; logits = v[2]; negEmb = v[3]; dNegEmb = v[4]; logQNeg = v[5]; logQPos = v[6]
        }
        return negItems.withUnsafeMutableBufferPointer { negs -> Double in
            let neg = negs.baseAddress!
            sampler.sample(items: neg, logQ: logQNeg, S: S, rng: &rng)
            for b in 0..<B { logQPos[b] = sampler.logQ(Int(targets[b]), S: S) }
            for s in 0..<S { (negEmb + s * C).update(from: table + Int(neg[s]) * C, count: C) }
            // column 0: the positive; columns 1...S: shared negatives
            for b in 0..<B {
                let u = user + b * C, e = table + Int(targets[b]) * C
                var d: Float = 0
                for c in 0..<C { d += u[c] * e[c] }
                logits[b * V] = d
            }
            sgemm(transB: true, M: B, N: S, K: C, A: user, lda: C, B: negEmb, ldb: C, C: logits + 1, ldc: V)
            let total = sampledSoftmaxCrossEntropy(losses: losses, dlogits: tableGrad == nil ? nil : logits, logits: logits,
                                                   posItems: targets, negItems: neg, logQPos: logQPos, logQNeg: logQNeg,
                                                   weights: weights, scale: scale, B: B, S: S)
            guard let tableGrad else { return total }
            sgemm(M: B, N: C, K: S, A: logits + 1, lda: V, B: negEmb, ldb: C, C: dUser, ldc: C)
            sgemm(transA: true, M: S, N: C, K: B, A: logits + 1, lda: V, B: user, ldb: C, C: dNegEmb, ldc: C)
            for b in 0..<B {
                let g = logits[b * V], u = user + b * C, e = table + Int(targets[b]) * C, de = tableGrad + Int(targets[b]) * C
                let du = dUser + b * C
                for c in 0..<C { du[c] += g * e[c]; de[c] += g * u[c] }
            }
            for s in 0..<S { let de = tableGrad + Int(neg[s]) * C, d = dNegEmb + s * C; for c in 0..<C { de[c] += d[c] } }
            return total
        }
    }
}
