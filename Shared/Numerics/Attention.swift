// Causal multi-head self-attention with padding masks (the core after the q/k/v projection).
// Shapes: qkv (B, T, 3C) holds q | k | v per position; head h uses columns h·hs ..< (h+1)·hs of
// each; att, attDrop (B, H, T, T); out (B, T, C). Query i attends to keys j ≤ i whose id is not
// padding (ids[b, j] != 0). Rows i ≥ rows[b] (padding queries after a right-padded sequence) are
// not computed: their output is 0 and they take no gradient. A query with no valid key outputs 0.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Each (sequence, head) is a handful of small matrix products on OpenBLAS over the n × n block of
// its n computed rows (scores Q·Kᵀ, then P·V; backward dO·Vᵀ, Pᵀ·dO, dS·K, dSᵀ·Q), with the causal
// and padding masks applied between them: the full block does twice the causal multiply-adds,
// but as products it ran in a third of the time of dot products per (query, key) pair.

/// Attention forward. `ids` (B, T) marks padding keys (0) or is nil (all valid); `rows` (B) gives
/// the number of leading query rows to compute per sequence, or nil for T; with `lastRowOnly`
/// only query row rows[b] − 1 is computed (a last block whose other rows are never read). Attention dropout p
/// uses a generator seeded from `seed` and (b, h), so results do not depend on the thread count.
public func attentionForward(out: Floats, att: Floats, attDrop: Floats, qkv: UnsafePointer<Float>,
                             ids: UnsafePointer<Int32>?, rows: UnsafePointer<Int32>?, dropout p: Float, seed: UInt64,
                             lastRowOnly: Bool = false, B: Int, T: Int, C: Int, H: Int) {
    let hs = C / H, C3 = 3 * C
    let scale = 1 / Float(hs).squareRoot()
    let keep = 1 - p, invKeep = p > 0 ? 1 / (1 - p) : 1
    Threads.parallelFor(B * H, minPerChunk: 8) { lo, hi in
        for bh in lo..<hi {
            let b = bh / H, h = bh % H
            var rng = RNG(seed: seed ^ (UInt64(bh) &* 0x9E37_79B9_7F4A_7C15))
            let n = rows.map { min(T, Int($0[b])) } ?? T
            let first = lastRowOnly ? max(n - 1, 0) : 0
            let a = att + bh * T * T, ad = attDrop + bh * T * T
            let q = qkv + b * T * C3 + h * hs, k = q + C, v = q + 2 * C
            let o = out + b * T * C + h * hs
            a.update(repeating: 0, count: T * T)
            ad.update(repeating: 0, count: T * T)
            for i in 0..<T { (o + i * C).update(repeating: 0, count: hs) }
            if n == 0 { continue }
            // scores of rows first..<n against keys 0..<n, scaled
            sgemm(transB: true, M: n - first, N: n, K: hs, alpha: scale, A: q + first * C3, lda: C3, B: k, ldb: C3,
                  C: a + first * T, ldc: T)
            for i in first..<n {
                let arow = a + i * T, adrow = ad + i * T
                var m = -Float.infinity
                for j in 0..<n {
                    if j > i || (ids.map { $0[b * T + j] == 0 } ?? false) { arow[j] = -.infinity } else { m = max(m, arow[j]) }
                }
                // a query with no valid key outputs 0; masked keys come out of the exponential as 0
                if m == -Float.infinity { arow.update(repeating: 0, count: n); continue }
                scaleInPlace(arow, 1 / expShifted(out: arow, arow, shift: m, n), n)
                if p > 0 {
                    for j in 0...i where ids.map({ $0[b * T + j] != 0 }) ?? true {
                        adrow[j] = rng.uniform() < keep ? arow[j] * invKeep : 0
                    }
                } else {
                    adrow.update(from: arow, count: n)
                }
            }
            sgemm(M: n - first, N: hs, K: n, A: ad + first * T, lda: T, B: v, ldb: C3, C: o + first * C, ldc: C)
        }
    }
}

/// Attention backward: dqkv (B, T, 3C) += gradient from dout (B, T, C). Uses att / attDrop
/// cached by the forward (the dropout mask is recovered as attDrop != 0).
public func attentionBackward(dqkv: Floats, dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>,
                              att: UnsafePointer<Float>, attDrop: UnsafePointer<Float>,
                              ids: UnsafePointer<Int32>?, rows: UnsafePointer<Int32>?, dropout p: Float,
                              lastRowOnly: Bool = false, B: Int, T: Int, C: Int, H: Int) {
    let hs = C / H, C3 = 3 * C
    let scale = 1 / Float(hs).squareRoot()
    let invKeep: Float = p > 0 ? 1 / (1 - p) : 1
    Threads.parallelFor(B * H, minPerChunk: 8) { lo, hi in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: T * T) { tmp in
            let ds = tmp.baseAddress!    // (n, n) with row stride T: dP, then dS in place
            for bh in lo..<hi {
                let b = bh / H, h = bh % H
                let n = rows.map { min(T, Int($0[b])) } ?? T
                if n == 0 { continue }
                let first = lastRowOnly ? n - 1 : 0, m = n - first
                let a = att + bh * T * T + first * T, ad = attDrop + bh * T * T + first * T
                let q = qkv + b * T * C3 + h * hs, k = q + C, v = q + 2 * C
                let dq = dqkv + b * T * C3 + h * hs, dk = dq + C, dv = dq + 2 * C
                let g = dout + b * T * C + h * hs + first * C
                // dV += attDropᵀ · dO;  dP = dO · Vᵀ
                sgemm(transA: true, M: n, N: hs, K: m, A: ad, lda: T, B: g, ldb: C, beta: 1, C: dv, ldc: C3)
                sgemm(transB: true, M: m, N: n, K: hs, A: g, lda: C, B: v, ldb: C3, C: ds, ldc: T)
                // through dropout and the softmax: dS = P ⊙ (dP' − Σ_j P dP'), dP' = dP · mask / keep
                for r in 0..<m {
                    let arow = a + r * T, adrow = ad + r * T, d = ds + r * T
                    var rowDot: Float = 0
                    for j in 0..<n {
                        let dp: Float = adrow[j] != 0 ? d[j] * invKeep : 0
                        d[j] = dp; rowDot += dp * arow[j]
                    }
                    for j in 0..<n { d[j] = arow[j] * (d[j] - rowDot) * scale }
                }
                // dQ += dS · K;  dK += dSᵀ · Q
                sgemm(M: m, N: hs, K: n, A: ds, lda: T, B: k, ldb: C3, beta: 1, C: dq + first * C3, ldc: C3)
                sgemm(transA: true, M: n, N: hs, K: m, A: ds, lda: T, B: q + first * C3, ldb: C3, beta: 1, C: dk, ldc: C3)
            }
        }
    }
}
