// Layers as forward/backward pairs (llm.c style). Argument order: outputs, inputs and
// parameters, cached values, dimensions. Backward functions ACCUMULATE into gradients
// (`dinp[i] += …`); zeroing is a separate step. `N` counts rows (e.g. B·T).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Kernels
import KernelsAVX2

// MARK: Embedding

/// out (N, C) = table[ids[n]]; ids index rows of table (V, C). Id 0 is padding: its row is read
/// like any other (callers keep it zero or mask it) but never receives gradient.
public func embeddingForward(out: Floats, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>, N: Int, C: Int) {
    Threads.parallelFor(N, minPerChunk: 1024) { lo, hi in
        for n in lo..<hi { (out + n * C).update(from: table + Int(ids[n]) * C, count: C) }
    }
}

/// dtable[ids[n]] += dout[n] for every id except 0.
public func embeddingBackward(dtable: Floats, dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>, N: Int, C: Int) {
    for n in 0..<N {
        let id = Int(ids[n])
        if id == 0 { continue }
        let d = dtable + id * C, g = dout + n * C
        for c in 0..<C { d[c] += g[c] }
    }
}

// MARK: Layout

/// out (cols, rows, block) = inp (rows, cols, block) with the two leading axes swapped, e.g. a
/// batch-first (B, T, C) sequence into the time-major (T, B, C) layout and back.
public func swapLeadingAxes(out: Floats, inp: UnsafePointer<Float>, rows: Int, cols: Int, block: Int) {
    Threads.parallelFor(rows, minPerChunk: max(1, 16_384 / max(cols * block, 1))) { lo, hi in
        for r in lo..<hi {
            for c in 0..<cols { (out + (c * rows + r) * block).update(from: inp + (r * cols + c) * block, count: block) }
        }
    }
}

// MARK: Linear

/// out (N, OC) = inp (N, C) · weightᵀ + bias; weight (OC, C), bias (OC) or nil.
public func linearForward(out: Floats, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                          N: Int, C: Int, OC: Int) {
    if let bias {
        for n in 0..<N { (out + n * OC).update(from: bias, count: OC) }
        sgemm(transB: true, M: N, N: OC, K: C, A: inp, lda: C, B: weight, ldb: C, beta: 1, C: out, ldc: OC)
    } else {
        sgemm(transB: true, M: N, N: OC, K: C, A: inp, lda: C, B: weight, ldb: C, beta: 0, C: out, ldc: OC)
    }
}

/// dinp += dout · weight;  dweight += doutᵀ · inp;  dbias += Σ rows of dout. dinp may be nil.
public func linearBackward(dinp: Floats?, dweight: Floats, dbias: Floats?, dout: UnsafePointer<Float>,
                           inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, N: Int, C: Int, OC: Int) {
    if let dinp {
        sgemm(M: N, N: C, K: OC, A: dout, lda: OC, B: weight, ldb: C, beta: 1, C: dinp, ldc: C)
    }
    sgemm(transA: true, M: OC, N: C, K: N, A: dout, lda: OC, B: inp, ldb: C, beta: 1, C: dweight, ldc: C)
    if let dbias {
        for n in 0..<N { let g = dout + n * OC; for o in 0..<OC { dbias[o] += g[o] } }
    }
}

// MARK: Layer norm

/// out (N, C) = (inp − mean) · rstd · weight + bias per row; caches mean (N), rstd (N).
public func layerNormForward(out: Floats, mean: Floats, rstd: Floats, inp: UnsafePointer<Float>,
                             weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, N: Int, C: Int, eps: Float) {
    Threads.parallelFor(N, minPerChunk: 512) { lo, hi in
        for n in lo..<hi {
            let x = inp + n * C, o = out + n * C
            var m: Float = 0
            for c in 0..<C { m += x[c] }
            m /= Float(C)
            var v: Float = 0
            for c in 0..<C { let d = x[c] - m; v += d * d }
            v /= Float(C)
            let s = 1 / (v + eps).squareRoot()
            for c in 0..<C { o[c] = (x[c] - m) * s * weight[c] + bias[c] }
            mean[n] = m; rstd[n] = s
        }
    }
}

/// Accumulates dinp, dweight, dbias from dout (N, C).
public func layerNormBackward(dinp: Floats, dweight: Floats, dbias: Floats, dout: UnsafePointer<Float>,
                              inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                              mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, N: Int, C: Int) {
    // dinp in parallel over rows; dweight/dbias reduced serially (deterministic).
    Threads.parallelFor(N, minPerChunk: 512) { lo, hi in
        for n in lo..<hi {
            let x = inp + n * C, g = dout + n * C, dx = dinp + n * C
            let m = mean[n], s = rstd[n]
            var dnormMean: Float = 0, dnormNormMean: Float = 0
            for c in 0..<C {
                let norm = (x[c] - m) * s
                let dnorm = weight[c] * g[c]
                dnormMean += dnorm; dnormNormMean += dnorm * norm
            }
            dnormMean /= Float(C); dnormNormMean /= Float(C)
            for c in 0..<C {
                let norm = (x[c] - m) * s
                let dnorm = weight[c] * g[c]
                dx[c] += (dnorm - dnormMean - norm * dnormNormMean) * s
            }
        }
    }
    for n in 0..<N {
        let x = inp + n * C, g = dout + n * C
        let m = mean[n], s = rstd[n]
        for c in 0..<C {
            dbias[c] += g[c]
            dweight[c] += (x[c] - m) * s * g[c]
        }
    }
}

// MARK: Dropout (inverted, as PyTorch)

/// out = inp · mask with mask[i] ∈ {0, 1/(1−p)} (written to `mask`). One seed is drawn from
/// `rng`; elements are then masked in fixed chunks of 4096, each from its own generator, so the
/// mask does not depend on the thread count. p = 0 copies. out may alias inp.
public func dropoutForward(out: Floats, mask: Floats, inp: UnsafePointer<Float>, p: Float, n: Int, rng: inout RNG) {
    if p <= 0 {
        mask.update(repeating: 1, count: n)
        if UnsafePointer(out) != inp { out.update(from: inp, count: n) }
        return
    }
    let scale = 1 / (1 - p)
    let threshold = UInt32(min(Double(p) * 4_294_967_296.0, 4_294_967_295.0))
    let seed = rng.next()
    let chunk = 4096, chunks = (n + chunk - 1) / chunk
    Threads.parallelFor(chunks, minPerChunk: 16) { lo, hi in
        for c in lo..<hi {
            var r = RNG(seed: seed ^ (UInt64(c) &* 0xD1B5_4A32_D192_ED03))
            let start = c * chunk, end = min(n, start + chunk)
            var i = start
            while i < end {
                let bits = r.next()
                let m0: Float = UInt32(truncatingIfNeeded: bits) >= threshold ? scale : 0
                mask[i] = m0; out[i] = inp[i] * m0
                if i + 1 < end {
                    let m1: Float = UInt32(truncatingIfNeeded: bits >> 32) >= threshold ? scale : 0
                    mask[i + 1] = m1; out[i + 1] = inp[i + 1] * m1
                }
                i += 2
            }
        }
    }
}

/// dinp += dout · mask.
public func dropoutBackward(dinp: Floats, dout: UnsafePointer<Float>, mask: UnsafePointer<Float>, n: Int) {
    for i in 0..<n { dinp[i] += dout[i] * mask[i] }
}

// MARK: Activations

public func reluForward(out: Floats, inp: UnsafePointer<Float>, n: Int) {
    for i in 0..<n { out[i] = inp[i] > 0 ? inp[i] : 0 }
}
public func reluBackward(dinp: Floats, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, n: Int) {
    for i in 0..<n where inp[i] > 0 { dinp[i] += dout[i] }
}

/// Exact GELU, x · Φ(x) (PyTorch's default, RecBole's `gelu`; erf by Kernels' rational form).
/// When `cdf` (n) is given, Φ(x) is kept there for the backward pass.
public func geluForward(out: Floats, inp: UnsafePointer<Float>, cdf: Floats? = nil, n: Int) {
    Threads.parallelFor(n, minPerChunk: 16384) { lo, hi in
        let c = cdf.map { $0 + lo }
        if avx2Kernels { KernelsAVX2.geluForward(out: out + lo, inp: inp + lo, cdf: c, n: hi - lo) }
        else { Kernels.geluForward(out: out + lo, inp: inp + lo, cdf: c, n: hi - lo) }
    }
}
/// dinp += dout · (Φ(x) + x · φ(x)); `cdf` is Φ(x) cached by the forward, or nil to recompute.
public func geluBackward(dinp: Floats, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, cdf: UnsafePointer<Float>? = nil, n: Int) {
    Threads.parallelFor(n, minPerChunk: 16384) { lo, hi in
        let c = cdf.map { $0 + lo }
        if avx2Kernels { KernelsAVX2.geluBackward(dinp: dinp + lo, dout: dout + lo, inp: inp + lo, cdf: c, n: hi - lo) }
        else { Kernels.geluBackward(dinp: dinp + lo, dout: dout + lo, inp: inp + lo, cdf: c, n: hi - lo) }
    }
}

/// PReLU with one slope per channel: out (N, C) = x > 0 ? x : alpha[c] · x.
public func preluForward(out: Floats, inp: UnsafePointer<Float>, alpha: UnsafePointer<Float>, N: Int, C: Int) {
    for n in 0..<N { for c in 0..<C { let x = inp[n * C + c]; out[n * C + c] = x > 0 ? x : alpha[c] * x } }
}
public func preluBackward(dinp: Floats, dalpha: Floats, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                          alpha: UnsafePointer<Float>, N: Int, C: Int) {
    for n in 0..<N {
        for c in 0..<C {
            let x = inp[n * C + c], g = dout[n * C + c]
            if x > 0 { dinp[n * C + c] += g } else { dinp[n * C + c] += alpha[c] * g; dalpha[c] += x * g }
        }
    }
}

public func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

/// Numerically stable log(1 + eˣ).
@inline(__always) public func softplus(_ x: Float) -> Float { x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x)) }

// MARK: Softmax

/// Row-wise softmax: out (N, V) = softmax(inp) per row. out may alias inp.
public func softmaxForward(out: Floats, inp: UnsafePointer<Float>, N: Int, V: Int) {
    for n in 0..<N {
        let x = inp + n * V, o = out + n * V
        var m = -Float.infinity
        for j in 0..<V { m = max(m, x[j]) }
        var s: Float = 0
        for j in 0..<V { let e = expf(x[j] - m); o[j] = e; s += e }
        let inv = 1 / s
        for j in 0..<V { o[j] *= inv }
    }
}

/// dinp += out ⊙ (dout − Σ dout ⊙ out) per row, where out is the softmax output.
public func softmaxBackward(dinp: Floats, dout: UnsafePointer<Float>, out: UnsafePointer<Float>, N: Int, V: Int) {
    for n in 0..<N {
        let y = out + n * V, g = dout + n * V, d = dinp + n * V
        var dot: Float = 0
        for j in 0..<V { dot += g[j] * y[j] }
        for j in 0..<V { d[j] += y[j] * (g[j] - dot) }
    }
}

/// out += inp (elementwise), n floats.
@inline(__always) public func addInPlace(_ out: Floats, _ inp: UnsafePointer<Float>, _ n: Int) {
    for i in 0..<n { out[i] += inp[i] }
}
