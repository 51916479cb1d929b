// Losses on scores. Each takes per-row `weights` (or nil for 1) and a `scale` (e.g. 1/B), writes
// the unweighted per-example loss into `losses` (B) — later methods weight sequences with it —
// and returns Σ_b scale · w_b · losses[b] in double precision. Gradients with respect to the
// scores are of that returned total. With `accumulate` false a loss overwrites its gradient
// buffer (which may then alias the scores); with true it adds to it (losses compose).
// Columns are indices into the score row; a target < 0 marks a row to skip (loss 0, no gradient).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Kernels

@inline(__always) private func rowWeight(_ w: UnsafePointer<Float>?, _ b: Int, _ scale: Float) -> Float {
    (w?[b] ?? 1) * scale
}

@inline(__always) private func total(_ losses: UnsafePointer<Float>, _ w: UnsafePointer<Float>?, _ scale: Float, _ B: Int) -> Double {
    var s = 0.0
    for b in 0..<B { s += Double(losses[b]) * Double(w?[b] ?? 1) }
    return s * Double(scale)
}

/// Row max and log Σ exp (for a stable log-softmax).
@inline(__always) private func logSumExp(_ x: UnsafePointer<Float>, _ V: Int) -> (max: Float, lse: Float) {
    let m = maxElement(x, V)
    return (m, m + logf(expShifted(out: nil, x, shift: m, V)))
}

/// d[j] += e^(x[j] − shift) · scale.
@inline(__always) private func addScaledExp(_ d: Floats, _ x: UnsafePointer<Float>, shift: Float, scale: Float, _ V: Int) {
    var j = 0
    let rx = UnsafeRawPointer(x), rd = UnsafeMutableRawPointer(d)
    while j + 8 <= V {
        let e = expLanes(rx.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self) - shift) * scale
        rd.storeBytes(of: rd.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self) + e, toByteOffset: 4 * j, as: SIMD8<Float>.self)
        j += 8
    }
    while j < V { d[j] += expf(x[j] - shift) * scale; j += 1 }
}

/// Full softmax cross-entropy: losses[b] = −log softmax(logits[b])[targets[b]]. logits (B, V).
/// dlogits (B, V) gets (softmax − onehot) · w_b · scale.
@discardableResult
public func softmaxCrossEntropy(losses: Floats, dlogits: Floats?, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
                                weights: UnsafePointer<Float>?, scale: Float, accumulate: Bool = false, B: Int, V: Int) -> Double {
    Threads.parallelFor(B, minPerChunk: max(1, 65536 / max(V, 1))) { lo, hi in
        for b in lo..<hi {
            let x = logits + b * V, y = Int(targets[b])
            if y < 0 {
                losses[b] = 0
                if let dlogits, !accumulate { (dlogits + b * V).update(repeating: 0, count: V) }
                continue
            }
            let w = rowWeight(weights, b, scale)
            guard let dlogits else { losses[b] = logSumExp(x, V).lse - x[y]; continue }
            let d = dlogits + b * V
            if accumulate {
                let (_, lse) = logSumExp(x, V)
                losses[b] = lse - x[y]
                addScaledExp(d, x, shift: lse, scale: w, V)
            } else {
                // one exponential pass: d = e^(x − max) (d may alias x), then scaled by w / Σ
                let m = maxElement(x, V), xy = x[y]
                let sum = expShifted(out: d, x, shift: m, V)
                losses[b] = m + logf(sum) - xy
                let k = w / sum
                for j in 0..<V { d[j] *= k }
            }
            d[y] -= w
        }
    }
    return total(losses, weights, scale, B)
}

/// Items per tile of `tableSoftmaxCrossEntropy` for B rows: a (B, tile) block of scores is
/// about 512 KB, so it stays in a core's L2 between the steps that produce and consume it.
public func tableSoftmaxTile(B: Int) -> Int { max(16, ((1 << 17) / max(B, 1)) & ~15) }

/// Floats of scratch `tableSoftmaxCrossEntropy` needs: per row and tile a max and a sum, per
/// row the target's score.
public func tableSoftmaxScratchCount(B: Int, N: Int, tile: Int) -> Int { B * (2 * ((N + tile - 1) / tile) + 1) }

/// Full softmax cross-entropy of user vectors (B, C) against every row of a table (N, C), with
/// the gradients into both. The same loss and gradients as
///   scores = user · tableᵀ;  softmaxCrossEntropy on scores (gradient left in them);
///   dUser = dscores · table;  dTable += dscoresᵀ · user
/// but computed tile by tile over the table's rows, so that each (B, tile) block of scores is
/// produced, turned into its gradient and used by both products while it is still in cache:
///   pass 1, per tile: scores, then e^(s − m) in place, keeping per row the tile's max m and Σ;
///   per row: lse from the tiles' (m, Σ), loss = lse − s[target];
///   pass 2, per tile: gradient = e^(s − m) · w · e^(m − lse) − w · onehot in place, then
///     dTable[tile] += gradientᵀ · user and dUser += gradient · table[tile].
/// The B·N scores are written once and read once (the unfused path writes them in one product,
/// passes over them three times for the softmax and reads them in two more products).
/// Tiles are split over threads, each tile's products on its chunk's thread (see
/// `Threads.parallelFor`); each thread chunk sums its own dUser, and the chunks' sums
/// are added in chunk order, so results are reproducible for a thread count.
/// targets (B) are row indices 0..<N, or < 0 to skip a row (loss 0, no gradient). scores (B, N)
/// is left holding the gradient on the scores; dUser (B, C) is overwritten; dTable accumulates.
/// `scratch` holds `tableSoftmaxScratchCount(B:N:tile:)` floats. Returns Σ_b scale · w_b · losses[b].
@discardableResult
public func tableSoftmaxCrossEntropy(losses: Floats, scores: Floats, dUser: Floats, dTable: Floats,
                                     user: UnsafePointer<Float>, table: UnsafePointer<Float>,
                                     targets: UnsafePointer<Int32>, weights: UnsafePointer<Float>?, scale: Float,
                                     scratch: Floats, B: Int, N: Int, C: Int, tile: Int) -> Double {
    let tiles = (N + tile - 1) / tile
    // (B, tiles) maxima; (B, tiles) sums, then each tile's factor w · e^(m − lse); (B) target scores
    let tm = scratch, ts = scratch + B * tiles, ty = scratch + 2 * B * tiles
    ty.update(repeating: 0, count: B)
    Threads.parallelFor(tiles) { _, lo, hi in
        for t in lo..<hi {
            let j0 = t * tile, nb = min(tile, N - j0)
            sgemm(transB: true, M: B, N: nb, K: C, A: user, lda: C, B: table + j0 * C, ldb: C, C: scores + j0, ldc: N)
            for b in 0..<B {
                let x = scores + b * N + j0, y = Int(targets[b]) - j0
                if y >= 0 && y < nb { ty[b] = x[y] }
                let m = maxElement(x, nb)
                tm[b * tiles + t] = m
                ts[b * tiles + t] = expShifted(out: x, x, shift: m, nb)
            }
        }
    }
    for b in 0..<B {
        let m = tm + b * tiles, s = ts + b * tiles
        if targets[b] < 0 { losses[b] = 0; s.update(repeating: 0, count: tiles); continue }
        var mx = -Float.infinity
        for t in 0..<tiles { mx = max(mx, m[t]) }
        var sum: Float = 0
        for t in 0..<tiles { sum += s[t] * expf(m[t] - mx) }
        let lse = mx + logf(sum), w = rowWeight(weights, b, scale)
        losses[b] = lse - ty[b]
        for t in 0..<tiles { s[t] = w * expf(m[t] - lse) }
    }
    let chunks = Threads.chunks(tiles)
    let partials: Floats? = chunks > 1 ? .allocate(capacity: (chunks - 1) * B * C) : nil
    defer { partials?.deallocate() }
    Threads.parallelFor(tiles) { c, lo, hi in
        let du = c == 0 ? dUser : partials! + (c - 1) * B * C
        for t in lo..<hi {
            let j0 = t * tile, nb = min(tile, N - j0)
            for b in 0..<B {
                let x = scores + b * N + j0, y = Int(targets[b]) - j0
                scaleInPlace(x, ts[b * tiles + t], nb)
                if y >= 0 && y < nb { x[y] -= rowWeight(weights, b, scale) }
            }
            sgemm(transA: true, M: nb, N: C, K: B, A: scores + j0, lda: N, B: user, ldb: C,
                  beta: 1, C: dTable + j0 * C, ldc: C)
            sgemm(M: B, N: C, K: nb, A: scores + j0, lda: N, B: table + j0 * C, ldb: C,
                  beta: t == lo ? 0 : 1, C: du, ldc: C)
        }
    }
    if let partials { for c in 1..<chunks { addInPlace(dUser, partials + (c - 1) * B * C, B * C) } }
    return total(losses, weights, scale, B)
}

/// Multi-positive cross-entropy: losses[b] = −Σ_{j ∈ P_b} log softmax(logits[b])[j], where the
/// positive set of row b is cols[offsets[b] ..< offsets[b+1]] (CSR). An empty set contributes 0.
@discardableResult
public func multiPositiveCrossEntropy(losses: Floats, dlogits: Floats?, logits: UnsafePointer<Float>,
                                      offsets: UnsafePointer<Int32>, cols: UnsafePointer<Int32>,
                                      weights: UnsafePointer<Float>?, scale: Float, accumulate: Bool = false,
                                      B: Int, V: Int) -> Double {
    Threads.parallelFor(B, minPerChunk: max(1, 65536 / max(V, 1))) { lo, hi in
        for b in lo..<hi {
            let x = logits + b * V
            let p0 = Int(offsets[b]), p1 = Int(offsets[b + 1])
            let k = Float(p1 - p0)
            let (_, lse) = logSumExp(x, V)
            var l: Float = 0
            for p in p0..<p1 { l += lse - x[Int(cols[p])] }
            losses[b] = l
            guard let dlogits else { continue }
            let d = dlogits + b * V, w = rowWeight(weights, b, scale)
            if !accumulate { d.update(repeating: 0, count: V) }
            if p1 == p0 { continue }
            for j in 0..<V { d[j] += k * expf(x[j] - lse) * w }
            for p in p0..<p1 { d[Int(cols[p])] -= w }
        }
    }
    return total(losses, weights, scale, B)
}

/// Which Kullback–Leibler divergence between the model's q = softmax(logits) and a target p.
public enum KLDirection: String, Sendable, CaseIterable {
    /// KL(p ‖ q) = Σ p (log p − log q): standard distillation (gradient q − p).
    case targetToModel
    /// KL(q ‖ p) = Σ q (log q − log p): the model's distribution against the target.
    case modelToTarget
}

/// KL divergence between softmax(logits) (B, V) and target distributions (B, V) (rows sum to 1;
/// zero entries are allowed for `.targetToModel`; for `.modelToTarget` they are floored at 1e-12).
@discardableResult
public func softmaxKL(losses: Floats, dlogits: Floats?, logits: UnsafePointer<Float>, target: UnsafePointer<Float>,
                      direction: KLDirection, weights: UnsafePointer<Float>?, scale: Float, accumulate: Bool = false,
                      B: Int, V: Int) -> Double {
    Threads.parallelFor(B, minPerChunk: max(1, 65536 / max(V, 1))) { lo, hi in
        for b in lo..<hi {
            let x = logits + b * V, p = target + b * V
            let (_, lse) = logSumExp(x, V)
            let w = rowWeight(weights, b, scale)
            let d = dlogits.map { $0 + b * V }
            var l: Float = 0
            switch direction {
            case .targetToModel:
                for j in 0..<V where p[j] > 0 { l += p[j] * (logf(p[j]) - (x[j] - lse)) }
                if let d {
                    if accumulate { for j in 0..<V { d[j] += (expf(x[j] - lse) - p[j]) * w } }
                    else { for j in 0..<V { d[j] = (expf(x[j] - lse) - p[j]) * w } }
                }
            case .modelToTarget:
                for j in 0..<V {
                    let lq = x[j] - lse
                    l += expf(lq) * (lq - logf(max(p[j], 1e-12)))
                }
                if let d {
                    for j in 0..<V {
                        let lq = x[j] - lse, q = expf(lq)
                        let g = q * (lq - logf(max(p[j], 1e-12)) - l) * w
                        if accumulate { d[j] += g } else { d[j] = g }
                    }
                }
            }
            losses[b] = l
        }
    }
    return total(losses, weights, scale, B)
}

/// Binary cross-entropy with one positive and n negatives per row: pos (B), neg (B, n);
/// losses[b] = softplus(−pos[b]) + Σ_k softplus(neg[b, k]). Negatives equal to the row's positive
/// item should be masked by the caller (negMask (B, n) with 0 to skip, or nil).
@discardableResult
public func binaryCrossEntropyWithNegatives(losses: Floats, dpos: Floats?, dneg: Floats?,
                                            pos: UnsafePointer<Float>, neg: UnsafePointer<Float>,
                                            negMask: UnsafePointer<Float>?, weights: UnsafePointer<Float>?,
                                            scale: Float, accumulate: Bool = false, B: Int, n: Int) -> Double {
    for b in 0..<B {
        let w = rowWeight(weights, b, scale)
        var l = softplus(-pos[b])
        let gp = (sigmoid(pos[b]) - 1) * w
        if let dpos { if accumulate { dpos[b] += gp } else { dpos[b] = gp } }
        for k in 0..<n {
            let m = negMask?[b * n + k] ?? 1
            let s = neg[b * n + k]
            l += m * softplus(s)
            if let dneg {
                let g = m * sigmoid(s) * w
                if accumulate { dneg[b * n + k] += g } else { dneg[b * n + k] = g }
            }
        }
        losses[b] = l
    }
    return total(losses, weights, scale, B)
}

/// Sampled softmax with log-Q correction. logits (B, 1 + S): column 0 is the row's positive,
/// columns 1...S the shared negatives. The corrected score is logit − log Q(item) where
/// logQPos (B) and logQNeg (S) are log expected counts (log(S · q(item))) under the proposal;
/// a negative equal to the row's positive (posItems[b] == negItems[s]) is masked out
/// (accidental hit). losses[b] = −log softmax(corrected)[0]; dlogits (B, 1 + S).
@discardableResult
public func sampledSoftmaxCrossEntropy(losses: Floats, dlogits: Floats?, logits: UnsafePointer<Float>,
                                       posItems: UnsafePointer<Int32>, negItems: UnsafePointer<Int32>,
                                       logQPos: UnsafePointer<Float>?, logQNeg: UnsafePointer<Float>?,
                                       weights: UnsafePointer<Float>?, scale: Float, accumulate: Bool = false,
                                       B: Int, S: Int) -> Double {
    let V = S + 1
    Threads.parallelFor(B, minPerChunk: 64) { lo, hi in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: V) { tmp in
            let z = tmp.baseAddress!
            for b in lo..<hi {
                let x = logits + b * V
                z[0] = x[0] - (logQPos?[b] ?? 0)
                for s in 0..<S {
                    z[s + 1] = negItems[s] == posItems[b] ? -Float.infinity : x[s + 1] - (logQNeg?[s] ?? 0)
                }
                let (_, lse) = logSumExp(z, V)
                losses[b] = lse - z[0]
                guard let dlogits else { continue }
                let d = dlogits + b * V, w = rowWeight(weights, b, scale)
                for j in 0..<V {
                    var g = expf(z[j] - lse) * w
                    if j == 0 { g -= w }
                    if accumulate { d[j] += g } else { d[j] = g }
                }
            }
        }
    }
    return total(losses, weights, scale, B)
}

/// In-batch softmax: scores (B, B) = (a · bᵀ) / temperature for a, bm (B, C); row b's positive is
/// column b, the other rows' vectors are its negatives. Accumulates da, db (B, C); scores is a
/// (B, B) work buffer (left holding the gradient on the scores).
@discardableResult
public func inBatchSoftmax(losses: Floats, da: Floats?, db: Floats?, a: UnsafePointer<Float>, bm: UnsafePointer<Float>,
                           scores: Floats, temperature: Float, weights: UnsafePointer<Float>?, scale: Float,
                           B: Int, C: Int) -> Double {
    sgemm(transB: true, M: B, N: B, K: C, alpha: 1 / temperature, A: a, lda: C, B: bm, ldb: C, beta: 0, C: scores, ldc: B)
    let diag = UnsafeMutablePointer<Int32>.allocate(capacity: B)
    defer { diag.deallocate() }
    for b in 0..<B { diag[b] = Int32(b) }
    let l = softmaxCrossEntropy(losses: losses, dlogits: scores, logits: scores, targets: diag, weights: weights,
                                scale: scale, B: B, V: B)
    if let da { sgemm(M: B, N: C, K: B, alpha: 1 / temperature, A: scores, lda: B, B: bm, ldb: C, beta: 1, C: da, ldc: C) }
    if let db { sgemm(transA: true, M: B, N: C, K: B, alpha: 1 / temperature, A: scores, lda: B, B: a, ldb: C, beta: 1, C: db, ldc: C) }
    return l
}

/// Draws shared negatives for sampled softmax and gives their log-Q correction.
public struct NegativeSampler: Sendable {
    /// The proposal distribution over items 1...N.
    public enum Proposal: Sendable { case uniform; case popularity }
    public let itemCount: Int
    public let proposal: Proposal
    private let cumulative: [Double]   // (N), popularity proposal only
    private let logProb: [Float]       // (N + 1), log q(item); index 0 unused

    /// `counts` (N + 1): interaction counts per item id (index 0 ignored); required for popularity.
    public init(itemCount N: Int, proposal: Proposal, counts: [Int]? = nil) {
        precondition(N > 0, "no items to sample")
        itemCount = N; self.proposal = proposal
        switch proposal {
        case .uniform:
            cumulative = []
            logProb = [Float](repeating: -logf(Float(N)), count: N + 1)
        case .popularity:
            guard let counts, counts.count == N + 1 else { preconditionFailure("popularity proposal needs counts for ids 0...N") }
            // add-one smoothing keeps every item reachable
            let total = counts[1...].reduce(0.0) { $0 + Double($1) + 1 }
            var cum = [Double](); cum.reserveCapacity(N)
            var lp = [Float](repeating: 0, count: N + 1)
            var acc = 0.0
            for i in 1...N {
                let q = (Double(counts[i]) + 1) / total
                acc += q; cum.append(acc); lp[i] = Float(log(q))
            }
            cumulative = cum; logProb = lp
        }
    }

    /// Fills items (S) with ids in 1...N (with replacement) and logQ (S) = log(S · q(item)).
    public func sample(items: UnsafeMutablePointer<Int32>, logQ: Floats?, S: Int, rng: inout RNG) {
        for s in 0..<S {
            let id: Int
            switch proposal {
            case .uniform: id = 1 + rng.below(itemCount)
            case .popularity:
                let u = Double(rng.next() >> 11) * (1.0 / 9_007_199_254_740_992.0) * cumulative[itemCount - 1]
                var lo = 0, hi = itemCount - 1
                while lo < hi { let mid = (lo + hi) / 2; if cumulative[mid] <= u { lo = mid + 1 } else { hi = mid } }
                id = lo + 1
            }
            items[s] = Int32(id)
        }
        if let logQ { for s in 0..<S { logQ[s] = self.logQ(Int(items[s]), S: S) } }
    }

    /// log(S · q(item)).
    public func logQ(_ item: Int, S: Int) -> Float { logProb[item] + logf(Float(S)) }
}
