// One GRU layer (PyTorch's gate order r | z | n and equations), batch-first:
//   r = σ(x·W_irᵀ + b_ir + h·W_hrᵀ + b_hr)     z = σ(x·W_izᵀ + b_iz + h·W_hzᵀ + b_hz)
//   n = tanh(x·W_inᵀ + b_in + r ⊙ (h·W_hnᵀ + b_hn))   h' = (1 − z) ⊙ n + z ⊙ h,   h₀ = 0
// Shapes: inp (B, T, I); wih (3H, I); whh (3H, H); bih, bhh (3H) or nil; out (B, T, H);
// caches gates (B, T, 3H) = r | z | n after activation, gh (B, T, 3H) = h·W_hᵀ + b_h.
// Only the first `steps` positions are computed (steps = longest sequence in a right-padded
// batch); later outputs stay 0. Multi-layer GRUs chain layers (out of one is inp of the next).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public func gruForward(out: Floats, gates: Floats, gh: Floats, inp: UnsafePointer<Float>,
                       wih: UnsafePointer<Float>, whh: UnsafePointer<Float>,
                       bih: UnsafePointer<Float>?, bhh: UnsafePointer<Float>?,
                       steps: Int, B: Int, T: Int, I: Int, H: Int) {
    let H3 = 3 * H
    out.update(repeating: 0, count: B * T * H)
    // input projections for every position at once
    linearForward(out: gates, inp: inp, weight: wih, bias: bih, N: B * T, C: I, OC: H3)
    for t in 0..<steps {
        let ght = gh + t * H3
        if t == 0 {
            for b in 0..<B {
                if let bhh { (ght + b * T * H3).update(from: bhh, count: H3) } else { (ght + b * T * H3).update(repeating: 0, count: H3) }
            }
        } else {
            for b in 0..<B {
                if let bhh { (ght + b * T * H3).update(from: bhh, count: H3) } else { (ght + b * T * H3).update(repeating: 0, count: H3) }
            }
            sgemm(transB: true, M: B, N: H3, K: H, A: out + (t - 1) * H, lda: T * H, B: whh, ldb: H,
                  beta: 1, C: ght, ldc: T * H3)
        }
        Threads.parallelFor(B, minPerChunk: 32) { lo, hi in
            for b in lo..<hi {
                let g = gates + (b * T + t) * H3, hh = gh + (b * T + t) * H3
                let o = out + (b * T + t) * H
                let hp: UnsafePointer<Float>? = t > 0 ? UnsafePointer(out + (b * T + t - 1) * H) : nil
                for j in 0..<H {
                    let r = 1 / (1 + expf(-(g[j] + hh[j])))
                    let z = 1 / (1 + expf(-(g[H + j] + hh[H + j])))
                    let n = tanhf(g[2 * H + j] + r * hh[2 * H + j])
                    g[j] = r; g[H + j] = z; g[2 * H + j] = n
                    o[j] = (1 - z) * n + z * (hp?[j] ?? 0)
                }
            }
        }
    }
}

/// Accumulates dinp (may be nil), dwih, dwhh, dbih, dbhh from dout (B, T, H). Work buffers:
/// dgi (B, T, 3H), dgh (B, 3H), dh (B, H), overwritten.
public func gruBackward(dinp: Floats?, dwih: Floats, dwhh: Floats, dbih: Floats?, dbhh: Floats?,
                        dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, out: UnsafePointer<Float>,
                        gates: UnsafePointer<Float>, gh: UnsafePointer<Float>,
                        wih: UnsafePointer<Float>, whh: UnsafePointer<Float>,
                        dgi: Floats, dgh: Floats, dh: Floats,
                        steps: Int, B: Int, T: Int, I: Int, H: Int) {
    let H3 = 3 * H
    dgi.update(repeating: 0, count: B * T * H3)
    dh.update(repeating: 0, count: B * H)
    var t = steps - 1
    while t >= 0 {
        Threads.parallelFor(B, minPerChunk: 32) { lo, hi in
            for b in lo..<hi {
                let g = gates + (b * T + t) * H3, hh = gh + (b * T + t) * H3
                let hp: UnsafePointer<Float>? = t > 0 ? out + (b * T + t - 1) * H : nil
                let go = dout + (b * T + t) * H, dhb = dh + b * H
                let di = dgi + (b * T + t) * H3, dg = dgh + b * H3
                for j in 0..<H {
                    let r = g[j], z = g[H + j], n = g[2 * H + j]
                    let dht = go[j] + dhb[j]
                    let hprev = hp?[j] ?? 0
                    let dn = dht * (1 - z), dz = dht * (hprev - n)
                    let dnp = dn * (1 - n * n), dzp = dz * z * (1 - z)
                    let drp = dnp * hh[2 * H + j] * r * (1 - r)
                    di[j] = drp; di[H + j] = dzp; di[2 * H + j] = dnp
                    dg[j] = drp; dg[H + j] = dzp; dg[2 * H + j] = dnp * r
                    dhb[j] = dht * z
                }
            }
        }
        if let dbhh { for b in 0..<B { let dg = dgh + b * H3; for k in 0..<H3 { dbhh[k] += dg[k] } } }
        if t > 0 {
            sgemm(M: B, N: H, K: H3, A: dgh, lda: H3, B: whh, ldb: H, beta: 1, C: dh, ldc: H)
            sgemm(transA: true, M: H3, N: H, K: B, A: dgh, lda: H3, B: out + (t - 1) * H, ldb: T * H,
                  beta: 1, C: dwhh, ldc: H)
        }
        t -= 1
    }
    linearBackward(dinp: dinp, dweight: dwih, dbias: dbih, dout: dgi, inp: inp, weight: wih, N: B * T, C: I, OC: H3)
}
