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
            let nRows = rows.map { min(T, Int($0[b])) } ?? T
            let a = att + bh * T * T, ad = attDrop + bh * T * T
            a.update(repeating: 0, count: T * T)
            ad.update(repeating: 0, count: T * T)
            let q0 = qkv + b * T * C3 + h * hs
            let k0 = q0 + C, v0 = q0 + 2 * C
            let o0 = out + b * T * C + h * hs
            for i in 0..<T {
                let o = o0 + i * C
                o.update(repeating: 0, count: hs)
                if i >= nRows || (lastRowOnly && i != nRows - 1) { continue }
                let q = q0 + i * C3, arow = a + i * T, adrow = ad + i * T
                var m = -Float.infinity
                for j in 0...i {
                    if let ids, ids[b * T + j] == 0 { continue }
                    let s = dot(q, k0 + j * C3, hs) * scale
                    arow[j] = s
                    m = max(m, s)
                }
                if m == -Float.infinity { continue }
                var sum: Float = 0
                for j in 0...i {
                    if let ids, ids[b * T + j] == 0 { arow[j] = 0; continue }
                    let e = expf(arow[j] - m); arow[j] = e; sum += e
                }
                let inv = 1 / sum
                for j in 0...i {
                    arow[j] *= inv
                    var w = arow[j]
                    if p > 0 {
                        if let ids, ids[b * T + j] == 0 { w = 0 }
                        else { w = rng.uniform() < keep ? w * invKeep : 0 }
                    }
                    adrow[j] = w
                    if w != 0 {
                        let v = v0 + j * C3
                        for c in 0..<hs { o[c] += w * v[c] }
                    }
                }
            }
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
    let invKeep = p > 0 ? 1 / (1 - p) : 1
    Threads.parallelFor(B * H, minPerChunk: 8) { lo, hi in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: T) { tmp in
            let datt = tmp.baseAddress!
            for bh in lo..<hi {
                let b = bh / H, h = bh % H
                let nRows = rows.map { min(T, Int($0[b])) } ?? T
                let a = att + bh * T * T, ad = attDrop + bh * T * T
                let q0 = qkv + b * T * C3 + h * hs
                let k0 = q0 + C, v0 = q0 + 2 * C
                let dq0 = dqkv + b * T * C3 + h * hs
                let dk0 = dq0 + C, dv0 = dq0 + 2 * C
                let g0 = dout + b * T * C + h * hs
                for i in (lastRowOnly ? max(nRows - 1, 0) : 0)..<nRows {
                    let g = g0 + i * C, arow = a + i * T, adrow = ad + i * T
                    // through attDrop · v
                    var rowDot: Float = 0
                    for j in 0...i {
                        let w = adrow[j]
                        if w == 0 { datt[j] = 0; continue }
                        let dv = dv0 + j * C3
                        for c in 0..<hs { dv[c] += w * g[c] }
                        datt[j] = dot(g, v0 + j * C3, hs) * invKeep
                        rowDot += datt[j] * arow[j]
                    }
                    // through softmax, then the scaled q · k
                    let q = q0 + i * C3, dq = dq0 + i * C3
                    for j in 0...i {
                        let dpre = arow[j] * ((adrow[j] != 0 ? datt[j] : 0) - rowDot) * scale
                        if dpre == 0 { continue }
                        let k = k0 + j * C3, dk = dk0 + j * C3
                        for c in 0..<hs { dq[c] += dpre * k[c]; dk[c] += dpre * q[c] }
                    }
                }
            }
        }
    }
}
