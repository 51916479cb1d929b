// DSS's intention-disentanglement layer (dss.md §3.3, Eq. 8–13): from the per-position outputs
// z_i of a single-head SASRec, K vectors per sequence.
//
//   p_{k|i} = softmax_k( LN1(z_i) · LN2(c_k) / √C )                          Eq. 8   (B, T, K)
//   key~_i  = LN3(α_i + z_i);  key_i = key~_i + ReLU(key~_i · Wᵀ + b)         Eq. 10–11 (B, T, C)
//   query_t = LN4(α_t + z_t + b')                                            Eq. 12  (Q, C)
//   p_{t,i} = softmax_{i ≤ t}( key_i · query_t / √C )                        Eq. 9   (Q, T)
//   φ_k(t)  = LN5( β_k + Σ_{i ≤ t} p_{k|i} · p_{t,i} · z_i )                 Eq. 13  (Q, K, C)
// The paper reads a sequence out at its last position t. A readout q names a row and the
// position t it is read at, so one forward of a causal encoder gives every prefix's K vectors
// (all-position training: the readout at t is the readout of the prefix ending at t, since keys,
// prototype assignments and z_i for i ≤ t do not depend on later items). Keys and assignments
// are computed once per position and shared by every readout of the row.
// β comes from one of two sets: readouts q < labelFrom use the *input* set, readouts q >=
// labelFrom the *label* set (the encoded reversed futures of the seq2seq loss).
// Shapes: B rows, T = maxLength, Q readouts, C = dim, K = interests. Positions after a readout's
// t (padding included) get p_{t,i} = 0 and take no gradient from it. Backward accumulates (dz
// and the parameter gradients).
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

    // per position (B·T rows)
    private let work = Workspace()
    private var zn: Floats! = nil, m1: Floats! = nil, r1: Floats! = nil        // (BT, C), (BT), (BT)
    private var cn: Floats! = nil, m2: Floats! = nil, r2: Floats! = nil        // (K, C), (K), (K)
    private var pk: Floats! = nil                                               // (BT, K)
    private var kin: Floats! = nil, keyt: Floats! = nil, m3: Floats! = nil, r3: Floats! = nil, pre: Floats! = nil, key: Floats! = nil
    private var dpk: Floats! = nil, dlogit: Floats! = nil, dzn: Floats! = nil, dcn: Floats! = nil
    private var dkey: Floats! = nil, dkeyt: Floats! = nil, dpre: Floats! = nil, dkin: Floats! = nil
    // per readout (Q)
    private let readoutWork = Workspace()
    private var qin: Floats! = nil, query: Floats! = nil, m4: Floats! = nil, r4: Floats! = nil   // (Q, C), (Q, C), (Q), (Q)
    private var pi: Floats! = nil                                               // (Q, T)
    private var agg: Floats! = nil, out: Floats! = nil, m5: Floats! = nil, r5: Floats! = nil    // (QK, C), (QK, C), (QK), (QK)
    private var dagg: Floats! = nil, dpi: Floats! = nil, dquery: Floats! = nil, dqin: Floats! = nil
    private var readRows: [Int32] = [], readPositions: [Int32] = []
    private var lastZ: UnsafePointer<Float>? = nil, lastB = 0, lastQ = 0, lastLabelFrom = 0

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

    private func allocate(B: Int, Q: Int) {
        let C = dim, K = interests, T = maxLength
        if work.ensure(B, sizes: { B in
            let BT = B * T
            return [BT * C, BT, BT, K * C, K, K, BT * K, BT * C, BT * C, BT, BT, BT * C, BT * C,
                    BT * K, BT * K, BT * C, K * C, BT * C, BT * C, BT * C, BT * C]
        }) {
            let s = work.slab!.views
            zn = s[0]; m1 = s[1]; r1 = s[2]; cn = s[3]; m2 = s[4]; r2 = s[5]; pk = s[6]
            kin = s[7]; keyt = s[8]; m3 = s[9]; r3 = s[10]; pre = s[11]; key = s[12]
            dpk = s[13]; dlogit = s[14]; dzn = s[15]; dcn = s[16]; dkey = s[17]; dkeyt = s[18]; dpre = s[19]; dkin = s[20]
        }
        if readoutWork.ensure(Q, sizes: { Q in [Q * C, Q * C, Q, Q, Q * T, Q * K * C, Q * K * C, Q * K, Q * K, Q * K * C, Q * T, Q * C, Q * C] }) {
            let s = readoutWork.slab!.views
            qin = s[0]; query = s[1]; m4 = s[2]; r4 = s[3]; pi = s[4]; agg = s[5]; out = s[6]; m5 = s[7]; r5 = s[8]
            dagg = s[9]; dpi = s[10]; dquery = s[11]; dqin = s[12]
        }
    }

    /// z (B, T, C) per-position encoder outputs, lengths (B) in 1...T; each row read out at its
    /// last position, rows b >= labelFrom with the label β set. Returns φ (B, K, C).
    public func forward(z: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, labelFrom: Int, B: Int) -> UnsafePointer<Float> {
        let rows = (0..<B).map { Int32($0) }, positions = (0..<B).map { lengths[$0] - 1 }
        return forward(z: z, lengths: lengths, B: B, rows: rows, positions: positions, labelFrom: labelFrom)
    }

    /// z (B, T, C) per-position encoder outputs, lengths (B) in 1...T; readout q reads row
    /// `rows[q]` at position `positions[q]` (< that row's length), readouts q >= labelFrom with
    /// the label β set. Returns φ (Q, K, C), valid until the next forward; z must stay valid for
    /// backward.
    public func forward(z: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, B: Int, rows: [Int32], positions: [Int32],
                        labelFrom: Int) -> UnsafePointer<Float> {
        let Q = rows.count
        precondition(positions.count == Q, "one position per readout")
        allocate(B: B, Q: Q)
        let C = dim, K = interests, T = maxLength, BT = B * T
        let inv = 1 / Float(C).squareRoot()
        for q in 0..<Q {
            let b = Int(rows[q]), t = Int(positions[q])
            precondition(b >= 0 && b < B && t >= 0 && t < Int(lengths[b]), "readout \(q) at row \(b) position \(t) outside the batch")
        }
        // Eq. 8: clustering against the prototypes
        layerNormForward(out: zn, mean: m1, rstd: r1, inp: z, weight: v("ln1.weight"), bias: v("ln1.bias"), N: BT, C: C, eps: eps)
        layerNormForward(out: cn, mean: m2, rstd: r2, inp: v("prototypes"), weight: v("ln2.weight"), bias: v("ln2.bias"), N: K, C: C, eps: eps)
        sgemm(transB: true, M: BT, N: K, K: C, alpha: inv, A: zn, lda: C, B: cn, ldb: C, C: pk, ldc: K)
        softmaxForward(out: pk, inp: pk, N: BT, V: K)
        // Eq. 10–11: keys
        let alpha = v("positions"), qb = v("query.bias")
        for b in 0..<B { for t in 0..<T {
            let r = (b * T + t) * C
            for c in 0..<C { kin[r + c] = z[r + c] + alpha[t * C + c] }
        } }
        layerNormForward(out: keyt, mean: m3, rstd: r3, inp: kin, weight: v("ln3.weight"), bias: v("ln3.bias"), N: BT, C: C, eps: eps)
        linearForward(out: pre, inp: keyt, weight: v("key.weight"), bias: v("key.bias"), N: BT, C: C, OC: C)
        for i in 0..<(BT * C) { key[i] = keyt[i] + (pre[i] > 0 ? pre[i] : 0) }
        // Eq. 12: a query per readout
        for q in 0..<Q {
            let t = Int(positions[q]), r = (Int(rows[q]) * T + t) * C
            for c in 0..<C { qin[q * C + c] = z[r + c] + alpha[t * C + c] + qb[c] }
        }
        layerNormForward(out: query, mean: m4, rstd: r4, inp: qin, weight: v("ln4.weight"), bias: v("ln4.bias"), N: Q, C: C, eps: eps)
        // Eq. 9: position weights over i ≤ t
        for q in 0..<Q {
            let b = Int(rows[q]), len = Int(positions[q]) + 1, qv = query + q * C, p = pi + q * T
            var m = -Float.infinity
            for i in 0..<len {
                let k = key + (b * T + i) * C
                var s: Float = 0
                for c in 0..<C { s += k[c] * qv[c] }
                p[i] = s * inv; m = max(m, p[i])
            }
            var sum: Float = 0
            for i in 0..<len { p[i] = expf(p[i] - m); sum += p[i] }
            for i in 0..<T { p[i] = i < len ? p[i] / sum : 0 }
        }
        // Eq. 13: aggregation
        for q in 0..<Q {
            let beta = q < labelFrom ? v("beta.input") : v("beta.label")
            let b = Int(rows[q]), len = Int(positions[q]) + 1
            for k in 0..<K {
                let a = agg + (q * K + k) * C
                a.update(from: beta + k * C, count: C)
                for i in 0..<len {
                    let w = pk[(b * T + i) * K + k] * pi[q * T + i], zi = z + (b * T + i) * C
                    for c in 0..<C { a[c] += w * zi[c] }
                }
            }
        }
        layerNormForward(out: out, mean: m5, rstd: r5, inp: agg, weight: v("ln5.weight"), bias: v("ln5.bias"), N: Q * K, C: C, eps: eps)
        lastZ = z; lastB = B; lastQ = Q; lastLabelFrom = labelFrom; readRows = rows; readPositions = positions
        return UnsafePointer(out)
    }

    /// Accumulates dz (B, T, C) and the parameter gradients for the last forward given dφ (Q, K, C).
    public func backward(dOut: UnsafePointer<Float>, dz: Floats) {
        guard let z = lastZ else { preconditionFailure("backward before forward") }
        let B = lastB, Q = lastQ, C = dim, K = interests, T = maxLength, BT = B * T
        let inv = 1 / Float(C).squareRoot()
        // Eq. 13
        dagg.update(repeating: 0, count: Q * K * C)
        layerNormBackward(dinp: dagg, dweight: g("ln5.weight"), dbias: g("ln5.bias"), dout: dOut, inp: agg, weight: v("ln5.weight"),
                          mean: m5, rstd: r5, N: Q * K, C: C)
        dpk.update(repeating: 0, count: BT * K)
        dpi.update(repeating: 0, count: Q * T)
        for q in 0..<Q {
            let dbeta = q < lastLabelFrom ? g("beta.input") : g("beta.label")
            for i in 0..<(K * C) { dbeta[i] += dagg[q * K * C + i] }
            let b = Int(readRows[q]), len = Int(readPositions[q]) + 1
            for i in 0..<len {
                let zi = z + (b * T + i) * C, dzi = dz + (b * T + i) * C, p = pi[q * T + i]
                var dp: Float = 0
                for k in 0..<K {
                    let d = dagg + (q * K + k) * C, a = pk[(b * T + i) * K + k]
                    let w = a * p
                    var dc: Float = 0
                    for c in 0..<C { dzi[c] += w * d[c]; dc += d[c] * zi[c] }
                    dpk[(b * T + i) * K + k] += dc * p
                    dp += dc * a
                }
                dpi[q * T + i] = dp
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
        dquery.update(repeating: 0, count: Q * C)
        for q in 0..<Q {
            let b = Int(readRows[q]), len = Int(readPositions[q]) + 1, p = pi + q * T, dp = dpi + q * T
            var dot: Float = 0
            for i in 0..<len { dot += dp[i] * p[i] }
            let qv = query + q * C, dq = dquery + q * C
            for i in 0..<len {
                let ds = p[i] * (dp[i] - dot) * inv
                if ds == 0 { continue }
                let k = key + (b * T + i) * C, dk = dkey + (b * T + i) * C
                for c in 0..<C { dk[c] += ds * qv[c]; dq[c] += ds * k[c] }
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
        // Eq. 12: query_t = LN4(z_t + α_t + b')
        dqin.update(repeating: 0, count: Q * C)
        layerNormBackward(dinp: dqin, dweight: g("ln4.weight"), dbias: g("ln4.bias"), dout: dquery, inp: qin, weight: v("ln4.weight"),
                          mean: m4, rstd: r4, N: Q, C: C)
        for q in 0..<Q {
            let t = Int(readPositions[q]), r = (Int(readRows[q]) * T + t) * C
            for c in 0..<C { let d = dqin[q * C + c]; dz[r + c] += d; dalpha[t * C + c] += d; dqb[c] += d }
        }
    }
}
