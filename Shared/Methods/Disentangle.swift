// DSS's intention-disentanglement layer (dss.md §3.3, Eq. 8–13): from the per-position outputs
// z_i of a single-head SASRec, K vectors per sequence.
//
//   p_{k|i} = softmax_k( LN1(z_i) · LN2(c_k) / √C )                          Eq. 8   (B, T, K)
//   key~_i  = LN3(α_i + z_i);  key_i = key~_i + ReLU(key~_i · Wᵀ + b)         Eq. 10–11 (B, T, C)
//   query   = LN4(α_t + z_t + b')   (t = the last real position)             Eq. 12  (B, C)
//   p_i     = softmax_{i ≤ t}( key_i · query / √C )                          Eq. 9   (B, T)
//   φ_k     = LN5( β_k + Σ_i p_{k|i} · p_i · z_i )                           Eq. 13  (B, K, C)
// β comes from one of two sets: rows b < labelFrom use the *input* set, rows b >= labelFrom the
// *label* set (the encoded reversed futures of the seq2seq loss).
// Shapes: B rows, T = maxLength, C = dim, K = interests. Padding positions (i >= length) get
// p_i = 0 and take no gradient. Backward accumulates (dz and the parameter gradients).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Models
import Numerics

public final class DisentangleLayer {
    public let dim: Int, interests: Int, maxLength: Int
    public let eps: Float
    public let prefix: String
    private let ps: ParameterSet

    /// The layer's parameters, to be included in the model's `ParameterSet`.
    public static func parameterSpecs(prefix: String = "dss.", dim C: Int, interests K: Int, maxLength T: Int) -> [(name: String, shape: [Int])] {
        [(prefix + "prototypes", [K, C]), (prefix + "ln1.weight", [C]), (prefix + "ln1.bias", [C]),
         (prefix + "ln2.weight", [C]), (prefix + "ln2.bias", [C]), (prefix + "positions", [T, C]),
         (prefix + "ln3.weight", [C]), (prefix + "ln3.bias", [C]), (prefix + "key.weight", [C, C]), (prefix + "key.bias", [C]),
         (prefix + "query.bias", [C]), (prefix + "ln4.weight", [C]), (prefix + "ln4.bias", [C]),
         (prefix + "beta.input", [K, C]), (prefix + "beta.label", [K, C]), (prefix + "ln5.weight", [C]), (prefix + "ln5.bias", [C])]
    }

    private let work = Workspace()
    private var zn: Floats! = nil, m1: Floats! = nil, r1: Floats! = nil        // (BT, C), (BT), (BT)
    private var cn: Floats! = nil, m2: Floats! = nil, r2: Floats! = nil        // (K, C), (K), (K)
    private var pk: Floats! = nil                                               // (BT, K)
    private var kin: Floats! = nil, keyt: Floats! = nil, m3: Floats! = nil, r3: Floats! = nil, pre: Floats! = nil, key: Floats! = nil
    private var qin: Floats! = nil, query: Floats! = nil, m4: Floats! = nil, r4: Floats! = nil   // (B, C), (B, C), (B), (B)
    private var pi: Floats! = nil                                               // (BT)
    private var agg: Floats! = nil, out: Floats! = nil, m5: Floats! = nil, r5: Floats! = nil    // (BK, C), (BK, C), (BK), (BK)
    private var dagg: Floats! = nil, dpk: Floats! = nil, dlogit: Floats! = nil, dzn: Floats! = nil, dcn: Floats! = nil
    private var dpi: Floats! = nil, dkey: Floats! = nil, dkeyt: Floats! = nil, dpre: Floats! = nil, dkin: Floats! = nil
    private var dquery: Floats! = nil, dqin: Floats! = nil
    private var lastZ: UnsafePointer<Float>? = nil, lastLengths: UnsafePointer<Int32>? = nil, lastB = 0, lastLabelFrom = 0

    /// Views into `parameters` (which must hold `parameterSpecs(prefix:…)`).
    public init(parameters: ParameterSet, prefix: String = "dss.", dim: Int, interests: Int, maxLength: Int, eps: Float = 1e-12) {
        self.ps = parameters; self.prefix = prefix; self.dim = dim; self.interests = interests; self.maxLength = maxLength; self.eps = eps
        for (name, shape) in Self.parameterSpecs(prefix: prefix, dim: dim, interests: interests, maxLength: maxLength) {
            precondition(parameters.contains(name) && parameters.entry(name).shape == shape, "parameter set lacks \(name) \(shape)")
        }
    }

    private func v(_ n: String) -> Floats { ps.value(prefix + n) }
    private func g(_ n: String) -> Floats { ps.grad(prefix + n) }

    /// Prototypes and both β sets normal(0, 1/√C) (the paper's β), positions and the key weight
    /// normal(0, initStd), biases 0, LayerNorms 1 / 0.
    public func resetParameters(initStd: Float, rng: inout RNG) {
        let C = dim, K = interests, T = maxLength
        let s = 1 / Float(C).squareRoot()
        Init.normal(v("prototypes"), K * C, std: s, rng: &rng)
        Init.normal(v("beta.input"), K * C, std: s, rng: &rng)
        Init.normal(v("beta.label"), K * C, std: s, rng: &rng)
        Init.normal(v("positions"), T * C, std: initStd, rng: &rng)
        Init.normal(v("key.weight"), C * C, std: initStd, rng: &rng)
        Init.constant(v("key.bias"), C, 0); Init.constant(v("query.bias"), C, 0)
        for l in 1...5 { Init.constant(v("ln\(l).weight"), C, 1); Init.constant(v("ln\(l).bias"), C, 0) }
    }

    private func allocate(_ B: Int) {
        let C = dim, K = interests, BT = B * maxLength
        guard work.ensure(B, sizes: { _ in
            [BT * C, BT, BT, K * C, K, K, BT * K,
             BT * C, BT * C, BT, BT, BT * C, BT * C, B * C, B * C, B, B, BT,
             B * K * C, B * K * C, B * K, B * K,
             B * K * C, BT * K, BT * K, BT * C, K * C, BT, BT * C, BT * C, BT * C, BT * C, B * C, B * C]
        }) else { return }
        let s = work.slab!.views
        zn = s[0]; m1 = s[1]; r1 = s[2]; cn = s[3]; m2 = s[4]; r2 = s[5]; pk = s[6]
        kin = s[7]; keyt = s[8]; m3 = s[9]; r3 = s[10]; pre = s[11]; key = s[12]; qin = s[13]; query = s[14]; m4 = s[15]; r4 = s[16]; pi = s[17]
        agg = s[18]; out = s[19]; m5 = s[20]; r5 = s[21]
        dagg = s[22]; dpk = s[23]; dlogit = s[24]; dzn = s[25]; dcn = s[26]; dpi = s[27]; dkey = s[28]; dkeyt = s[29]
        dpre = s[30]; dkin = s[31]; dquery = s[32]; dqin = s[33]
    }

    /// z (B, T, C) per-position encoder outputs, lengths (B) in 1...T; rows b >= labelFrom use the
    /// label β set. Returns φ (B, K, C), valid until the next forward; z must stay valid for backward.
    public func forward(z: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, labelFrom: Int, B: Int) -> UnsafePointer<Float> {
        allocate(B)
        let C = dim, K = interests, T = maxLength, BT = B * T
        let inv = 1 / Float(C).squareRoot()
        // Eq. 8: clustering against the prototypes
        layerNormForward(out: zn, mean: m1, rstd: r1, inp: z, weight: v("ln1.weight"), bias: v("ln1.bias"), N: BT, C: C, eps: eps)
        layerNormForward(out: cn, mean: m2, rstd: r2, inp: v("prototypes"), weight: v("ln2.weight"), bias: v("ln2.bias"), N: K, C: C, eps: eps)
        sgemm(transB: true, M: BT, N: K, K: C, alpha: inv, A: zn, lda: C, B: cn, ldb: C, C: pk, ldc: K)
        softmaxForward(out: pk, inp: pk, N: BT, V: K)
        // Eq. 10–12: keys and the query
        let alpha = v("positions"), qb = v("query.bias")
        for b in 0..<B { for t in 0..<T {
            let r = (b * T + t) * C
            for c in 0..<C { kin[r + c] = z[r + c] + alpha[t * C + c] }
        } }
        layerNormForward(out: keyt, mean: m3, rstd: r3, inp: kin, weight: v("ln3.weight"), bias: v("ln3.bias"), N: BT, C: C, eps: eps)
        linearForward(out: pre, inp: keyt, weight: v("key.weight"), bias: v("key.bias"), N: BT, C: C, OC: C)
        for i in 0..<(BT * C) { key[i] = keyt[i] + (pre[i] > 0 ? pre[i] : 0) }
        for b in 0..<B {
            let t = Int(lengths[b]) - 1
            precondition(t >= 0 && t < T, "sequence length must be in 1...maxLength")
            let r = (b * T + t) * C
            for c in 0..<C { qin[b * C + c] = z[r + c] + alpha[t * C + c] + qb[c] }
        }
        layerNormForward(out: query, mean: m4, rstd: r4, inp: qin, weight: v("ln4.weight"), bias: v("ln4.bias"), N: B, C: C, eps: eps)
        // Eq. 9: position weights over the real positions
        for b in 0..<B {
            let len = Int(lengths[b]), q = query + b * C, p = pi + b * T
            var m = -Float.infinity
            for i in 0..<len {
                let k = key + (b * T + i) * C
                var s: Float = 0
                for c in 0..<C { s += k[c] * q[c] }
                p[i] = s * inv; m = max(m, p[i])
            }
            var sum: Float = 0
            for i in 0..<len { p[i] = expf(p[i] - m); sum += p[i] }
            for i in 0..<T { p[i] = i < len ? p[i] / sum : 0 }
        }
        // Eq. 13: aggregation
        for b in 0..<B {
            let beta = b < labelFrom ? v("beta.input") : v("beta.label")
            let len = Int(lengths[b])
            for k in 0..<K {
                let a = agg + (b * K + k) * C
                a.update(from: beta + k * C, count: C)
                for i in 0..<len {
                    let w = pk[(b * T + i) * K + k] * pi[b * T + i], zi = z + (b * T + i) * C
                    for c in 0..<C { a[c] += w * zi[c] }
                }
            }
        }
        layerNormForward(out: out, mean: m5, rstd: r5, inp: agg, weight: v("ln5.weight"), bias: v("ln5.bias"), N: B * K, C: C, eps: eps)
        lastZ = z; lastLengths = lengths; lastB = B; lastLabelFrom = labelFrom
        return UnsafePointer(out)
    }

    /// Accumulates dz (B, T, C) and the parameter gradients for the last forward given dφ (B, K, C).
    public func backward(dOut: UnsafePointer<Float>, dz: Floats) {
        guard let z = lastZ, let lengths = lastLengths else { preconditionFailure("backward before forward") }
        let B = lastB, C = dim, K = interests, T = maxLength, BT = B * T
        let inv = 1 / Float(C).squareRoot()
        // Eq. 13
        dagg.update(repeating: 0, count: B * K * C)
        layerNormBackward(dinp: dagg, dweight: g("ln5.weight"), dbias: g("ln5.bias"), dout: dOut, inp: agg, weight: v("ln5.weight"),
                          mean: m5, rstd: r5, N: B * K, C: C)
        dpk.update(repeating: 0, count: BT * K)
        dpi.update(repeating: 0, count: BT)
        for b in 0..<B {
            let dbeta = b < lastLabelFrom ? g("beta.input") : g("beta.label")
            for i in 0..<(K * C) { dbeta[i] += dagg[b * K * C + i] }
            let len = Int(lengths[b])
            for i in 0..<len {
                let zi = z + (b * T + i) * C, dzi = dz + (b * T + i) * C, p = pi[b * T + i]
                var dp: Float = 0
                for k in 0..<K {
                    let d = dagg + (b * K + k) * C, q = pk[(b * T + i) * K + k]
                    let w = q * p
                    var dc: Float = 0
                    for c in 0..<C { dzi[c] += w * d[c]; dc += d[c] * zi[c] }
                    dpk[(b * T + i) * K + k] = dc * p
                    dp += dc * q
                }
                dpi[b * T + i] = dp
            }
        }
        // Eq. 8
        dlogit.update(repeating: 0, count: BT * K)
        softmaxBackward(dinp: dlogit, dout: dpk, out: pk, N: BT, V: K)
        sgemm(M: BT, N: C, K: K, alpha: inv, A: dlogit, lda: K, B: cn, ldb: C, C: dzn, ldc: C)
        sgemm(transA: true, M: K, N: C, K: BT, alpha: inv, A: dlogit, lda: K, B: zn, ldb: C, C: dcn, ldc: C)
        layerNormBackward(dinp: dz, dweight: g("ln1.weight"), dbias: g("ln1.bias"), dout: dzn, inp: z, weight: v("ln1.weight"),
                          mean: m1, rstd: r1, N: BT, C: C)
        layerNormBackward(dinp: g("prototypes"), dweight: g("ln2.weight"), dbias: g("ln2.bias"), dout: dcn, inp: v("prototypes"),
                          weight: v("ln2.weight"), mean: m2, rstd: r2, N: K, C: C)
        // Eq. 9
        dkey.update(repeating: 0, count: BT * C)
        dquery.update(repeating: 0, count: B * C)
        for b in 0..<B {
            let len = Int(lengths[b]), p = pi + b * T, dp = dpi + b * T
            var dot: Float = 0
            for i in 0..<len { dot += dp[i] * p[i] }
            let q = query + b * C, dq = dquery + b * C
            for i in 0..<len {
                let ds = p[i] * (dp[i] - dot) * inv
                if ds == 0 { continue }
                let k = key + (b * T + i) * C, dk = dkey + (b * T + i) * C
                for c in 0..<C { dk[c] += ds * q[c]; dq[c] += ds * k[c] }
            }
        }
        // Eq. 10–11: key = key~ + ReLU(pre), pre = key~ · Wᵀ + b, key~ = LN3(z + α)
        dkeyt.update(from: dkey, count: BT * C)
        for i in 0..<(BT * C) { dpre[i] = pre[i] > 0 ? dkey[i] : 0 }
        linearBackward(dinp: dkeyt, dweight: g("key.weight"), dbias: g("key.bias"), dout: dpre, inp: keyt, weight: v("key.weight"), N: BT, C: C, OC: C)
        dkin.update(repeating: 0, count: BT * C)
        layerNormBackward(dinp: dkin, dweight: g("ln3.weight"), dbias: g("ln3.bias"), dout: dkeyt, inp: kin, weight: v("ln3.weight"),
                          mean: m3, rstd: r3, N: BT, C: C)
        let dalpha = g("positions"), dqb = g("query.bias")
        for b in 0..<B { for t in 0..<T {
            let r = (b * T + t) * C
            for c in 0..<C { dz[r + c] += dkin[r + c]; dalpha[t * C + c] += dkin[r + c] }
        } }
        // Eq. 12: query = LN4(z_t + α_t + b')
        dqin.update(repeating: 0, count: B * C)
        layerNormBackward(dinp: dqin, dweight: g("ln4.weight"), dbias: g("ln4.bias"), dout: dquery, inp: qin, weight: v("ln4.weight"),
                          mean: m4, rstd: r4, N: B, C: C)
        for b in 0..<B {
            let t = Int(lengths[b]) - 1, r = (b * T + t) * C
            for c in 0..<C { let d = dqin[b * C + c]; dz[r + c] += d; dalpha[t * C + c] += d; dqb[c] += d }
        }
    }
}
