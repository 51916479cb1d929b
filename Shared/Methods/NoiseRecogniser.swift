// ATJT's noise-recognition model (atjt.md §3.3.2, §4.1.3): a sequence-to-value model that gives
// each training sequence (user, history → target) a weight w = g(u, s) = P(clean) in (0, 1).
//
//   e_u = U[user], e_n = E[history n], e_T = E[target]           (B, Du), (B, T, D), (B, D)
//   x_n = [e_n, e_T, e_n − e_T, e_n ⊙ e_T]                        (B, T, 4D)   DIN's attention input
//   a_n = Linear(Dropout(PReLU(Linear(x_n))))   (4D → A → 1)      (B, T)       attention MLP
//   h   = Σ_{n < len} a_n · e_n                                   (B, D)       sum pooling
//   o   = MLP([e_u, h, e_T])  (Du + 2D → 256 → 64 → 1, hidden layers Linear + PReLU + Dropout)
//   w   = sigmoid(o)                                              (B)
// The user enters where the authors' `FindWeight` puts it: its embedding is concatenated with the
// pooled history and the target before the output MLP (8 + 16 + 16 = 40, the paper's "(40, 256)").
// Label 1 = clean (original sequence), 0 = noisy (randomly replaced), as the paper's Eq. 2.
// Shapes: B rows, T = maxLength positions, D = dim, Du = userDim, A = attention hidden,
// N = itemCount, U = userCount.
// Forward / backward pairs follow Numerics: backward accumulates into `parameters.grads`.
import Models
import Numerics

public struct NoiseRecogniserConfig: Sendable, Equatable, Codable {
    public var itemCount: Int
    /// Users U (ids 0..<U); `ATJTWeigher` sets it from its data.
    public var userCount: Int
    public var maxLength = 50
    /// Embedding size D (the attention input is 4D = 64 as in the paper).
    public var dim = 16
    /// User embedding size Du (the authors' 8: with D = 16 the output MLP's input is 40 wide).
    public var userDim = 8
    /// Attention MLP hidden size (paper: 64 → 32 → 1).
    public var attentionHidden = 32
    /// Output MLP hidden sizes (paper: → 256 → 64 → 1).
    public var outputHidden = [256, 64]
    /// Dropout after every hidden PReLU (paper: 0.5).
    public var dropout: Float = 0.5
    public var embeddingStd: Float = 0.05
    public var seed: UInt64 = 1
    public init(itemCount: Int, userCount: Int = 0) { self.itemCount = itemCount; self.userCount = userCount }
}

/// Labels of the recogniser's self-supervised task.
public enum NoiseLabel {
    /// An original sequence.
    public static let clean: Float = 1
    /// A sequence with randomly replaced items.
    public static let noisy: Float = 0
}

public final class NoiseRecogniser {
    public let config: NoiseRecogniserConfig
    public let parameters: ParameterSet
    /// Dropout draws from this generator.
    public var rng: RNG

    private let T: Int, D: Int, A: Int, Du: Int
    private let hidden: [Int]           // output MLP widths: [Du + 2D, h1, h2, ..., 1]
    private let work = Workspace()
    // activations (for the largest batch seen)
    private var eh: Floats! = nil, et: Floats! = nil, x: Floats! = nil        // (B·T, D), (B, D), (B·T, 4D)
    private var a1: Floats! = nil, p1: Floats! = nil, m1: Floats! = nil       // (B·T, A) pre-PReLU, dropped PReLU out, mask
    private var att: Floats! = nil                                            // (B·T) attention weights a_n
    private var y0: Floats! = nil                                             // (B, Du + 2D) [e_u, h, e_T]
    private var eu: Floats! = nil, dEu: Floats! = nil                         // (B, Du), (B, Du)
    private var hz: [Floats] = [], hp: [Floats] = [], hm: [Floats] = []       // per hidden layer (B, H_l)
    private var logit: Floats! = nil, weight: Floats! = nil                   // (B), (B)
    // activation gradients
    private var dEh: Floats! = nil, dEt: Floats! = nil, dX: Floats! = nil, dA1: Floats! = nil, dP1: Floats! = nil
    private var dAtt: Floats! = nil, dY: [Floats] = [], dZ: Floats! = nil, dLogit: Floats! = nil
    private var lastUsers: UnsafePointer<Int32>? = nil
    private var lastItems: UnsafePointer<Int32>? = nil, lastLengths: UnsafePointer<Int32>? = nil
    private var lastTargets: UnsafePointer<Int32>? = nil, lastB = 0, lastTraining = false

    public init(_ config: NoiseRecogniserConfig) {
        precondition(config.itemCount > 0 && config.userCount > 0 && config.dim > 0 && config.userDim > 0
                     && config.attentionHidden > 0 && config.maxLength > 0, "positive recogniser sizes")
        self.config = config
        T = config.maxLength; D = config.dim; A = config.attentionHidden; Du = config.userDim
        hidden = [config.userDim + 2 * config.dim] + config.outputHidden + [1]
        var specs: [(name: String, shape: [Int])] = [
            ("embedding", [config.itemCount + 1, D]),
            ("user_embedding", [config.userCount, Du]),
            ("att1.weight", [A, 4 * D]), ("att1.bias", [A]), ("att1.prelu", [A]),
            ("att2.weight", [1, A]), ("att2.bias", [1]),
        ]
        for l in 0..<(hidden.count - 1) {
            specs.append(("out\(l).weight", [hidden[l + 1], hidden[l]]))
            specs.append(("out\(l).bias", [hidden[l + 1]]))
            if l + 1 < hidden.count - 1 { specs.append(("out\(l).prelu", [hidden[l + 1]])) }
        }
        parameters = ParameterSet(specs)
        rng = RNG(seed: config.seed).derived(0xD0)
        resetParameters()
    }

    /// Embeddings normal(0, embeddingStd) (padding row 0), linear weights U(±1/√fanIn) and biases 0,
    /// PReLU slopes 0.25 (PyTorch's defaults). The same values every time: ATJT re-initialises a
    /// recogniser with it at the start of each round.
    public func resetParameters() {
        var r = RNG(seed: config.seed).derived(0x1A17)
        let ps = parameters
        ps.values.update(repeating: 0, count: ps.count)
        Init.normal(ps.value("embedding") + D, config.itemCount * D, std: config.embeddingStd, rng: &r)
        Init.normal(ps.value("user_embedding"), config.userCount * Du, std: config.embeddingStd, rng: &r)
        for e in ps.entries where e.name.hasSuffix(".weight") {
            Init.uniform(ps.value(e.name), e.count, bound: 1 / Float(e.shape[1]).squareRoot(), rng: &r)
        }
        for e in ps.entries where e.name.hasSuffix(".prelu") { Init.constant(ps.value(e.name), e.count, 0.25) }
    }

    private func allocate(_ B: Int) {
        let BT = B * T
        let layers = hidden.count - 1
        guard work.ensure(B, sizes: { B in
            var s = [BT * D, B * D, BT * 4 * D, BT * A, BT * A, BT * A, BT, B * hidden[0]]
            for l in 1..<layers { s += [B * hidden[l], B * hidden[l], B * hidden[l]] }
            s += [B, B]
            s += [BT * D, B * D, BT * 4 * D, BT * A, BT * A, BT]
            for l in 0..<layers { s.append(B * hidden[l]) }
            s += [B * (hidden.max() ?? 1), B]
            s += [B * Du, B * Du]
            return s
        }) else { return }
        let v = work.slab!.views
        eh = v[0]; et = v[1]; x = v[2]; a1 = v[3]; p1 = v[4]; m1 = v[5]; att = v[6]; y0 = v[7]
        var k = 8
        hz = []; hp = []; hm = []
        for _ in 1..<layers { hz.append(v[k]); hp.append(v[k + 1]); hm.append(v[k + 2]); k += 3 }
        logit = v[k]; weight = v[k + 1]; k += 2
        dEh = v[k]; dEt = v[k + 1]; dX = v[k + 2]; dA1 = v[k + 3]; dP1 = v[k + 4]; dAtt = v[k + 5]; k += 6
        dY = []
        for _ in 0..<layers { dY.append(v[k]); k += 1 }
        dZ = v[k]; dLogit = v[k + 1]; k += 2
        eu = v[k]; dEu = v[k + 1]
    }

    /// The logits o (B) of the last forward.
    public var logits: UnsafePointer<Float> { UnsafePointer(logit) }
    /// The weights w = sigmoid(o) (B) of the last forward.
    public var weights: UnsafePointer<Float> { UnsafePointer(weight) }

    /// Weighs B sequences: users (B) in 0..<U, items (B, T) right-padded, lengths (B) in 1...T,
    /// targets (B). Returns w (B), valid until the next forward. `training` turns dropout on and
    /// keeps what backward needs; backward reads the inputs again, so they must outlive it.
    @discardableResult
    public func forward(users: UnsafePointer<Int32>, items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>,
                        targets: UnsafePointer<Int32>, B: Int, training: Bool) -> UnsafePointer<Float> {
        allocate(B)
        let BT = B * T, ps = parameters, p = training ? config.dropout : 0
        let table = ps.value("embedding")
        for b in 0..<B { precondition(users[b] >= 0 && Int(users[b]) < config.userCount, "user id outside 0..<userCount") }
        embeddingForward(out: eu, ids: users, table: ps.value("user_embedding"), N: B, C: Du)
        embeddingForward(out: eh, ids: items, table: table, N: BT, C: D)
        embeddingForward(out: et, ids: targets, table: table, N: B, C: D)
        for b in 0..<B {
            let t = et + b * D
            for n in 0..<T {
                let e = eh + (b * T + n) * D, xr = x + (b * T + n) * 4 * D
                for c in 0..<D {
                    xr[c] = e[c]; xr[D + c] = t[c]; xr[2 * D + c] = e[c] - t[c]; xr[3 * D + c] = e[c] * t[c]
                }
            }
        }
        linearForward(out: a1, inp: x, weight: ps.value("att1.weight"), bias: ps.value("att1.bias"), N: BT, C: 4 * D, OC: A)
        preluForward(out: p1, inp: a1, alpha: ps.value("att1.prelu"), N: BT, C: A)
        dropoutForward(out: p1, mask: m1, inp: p1, p: p, n: BT * A, rng: &rng)
        linearForward(out: att, inp: p1, weight: ps.value("att2.weight"), bias: ps.value("att2.bias"), N: BT, C: A, OC: 1)
        // sum pooling over the real positions, into [e_u, h, e_T]
        let W = hidden[0]
        for b in 0..<B {
            let len = Int(lengths[b])
            precondition(len >= 1 && len <= T, "sequence length must be in 1...maxLength")
            let row = y0 + b * W, h = row + Du
            row.update(from: eu + b * Du, count: Du)
            h.update(repeating: 0, count: D)
            for n in 0..<T {
                if n >= len { att[b * T + n] = 0; continue }
                let a = att[b * T + n], e = eh + (b * T + n) * D
                for c in 0..<D { h[c] += a * e[c] }
            }
            (h + D).update(from: et + b * D, count: D)
        }
        // output MLP
        var inp: Floats = y0
        let layers = hidden.count - 1
        for l in 0..<layers {
            let w = ps.value("out\(l).weight"), bias = ps.value("out\(l).bias")
            if l == layers - 1 {
                linearForward(out: logit, inp: inp, weight: w, bias: bias, N: B, C: hidden[l], OC: 1)
            } else {
                let z = hz[l], o = hp[l], m = hm[l]
                linearForward(out: z, inp: inp, weight: w, bias: bias, N: B, C: hidden[l], OC: hidden[l + 1])
                preluForward(out: o, inp: z, alpha: parameters.value("out\(l).prelu"), N: B, C: hidden[l + 1])
                dropoutForward(out: o, mask: m, inp: o, p: p, n: B * hidden[l + 1], rng: &rng)
                inp = o
            }
        }
        for b in 0..<B { weight[b] = sigmoid(logit[b]) }
        lastUsers = users; lastItems = items; lastLengths = lengths; lastTargets = targets; lastB = B; lastTraining = training
        return UnsafePointer(weight)
    }

    /// Accumulates parameter gradients for the last forward given dL/dw (B) — the recommender's
    /// loss reaching the recogniser through the weights.
    public func backward(dWeights: UnsafePointer<Float>) {
        for b in 0..<lastB { dLogit[b] = dWeights[b] * weight[b] * (1 - weight[b]) }
        backwardFromLogits()
    }

    /// Binary cross-entropy of the last forward against `labels` (B; 1 clean, 0 noisy):
    /// returns scale · Σ_b BCE_b and, when `backward`, accumulates its gradients.
    @discardableResult
    public func binaryCrossEntropy(labels: UnsafePointer<Float>, scale: Float, backward: Bool) -> Double {
        var total = 0.0
        for b in 0..<lastB {
            let y = labels[b], o = logit[b]
            // −[y log σ(o) + (1−y) log(1−σ(o))] = y·softplus(−o) + (1−y)·softplus(o)
            total += Double(y * softplus(-o) + (1 - y) * softplus(o))
            dLogit[b] = (weight[b] - y) * scale
        }
        if backward { backwardFromLogits() }
        return total * Double(scale)
    }

    /// Backward from dLogit (B), accumulating into the parameter gradients.
    private func backwardFromLogits() {
        guard let users = lastUsers, let items = lastItems, let lengths = lastLengths, let targets = lastTargets else {
            preconditionFailure("backward before forward")
        }
        let B = lastB, BT = B * T, ps = parameters
        let layers = hidden.count - 1
        // output MLP, last layer first; dY[l] is the gradient on layer l's input (B, hidden[l])
        var dOut: Floats = dLogit
        for l in stride(from: layers - 1, through: 0, by: -1) {
            let inp: Floats = l == 0 ? y0 : hp[l - 1]
            dY[l].update(repeating: 0, count: B * hidden[l])
            linearBackward(dinp: dY[l], dweight: ps.grad("out\(l).weight"), dbias: ps.grad("out\(l).bias"), dout: dOut,
                           inp: inp, weight: ps.value("out\(l).weight"), N: B, C: hidden[l], OC: hidden[l + 1])
            if l > 0 {
                // layer l's input is Dropout(PReLU(z_{l−1}))
                let n = B * hidden[l]
                dZ.update(repeating: 0, count: n)
                for i in 0..<n { dY[l][i] *= hm[l - 1][i] }
                preluBackward(dinp: dZ, dalpha: ps.grad("out\(l - 1).prelu"), dout: dY[l], inp: hz[l - 1],
                              alpha: ps.value("out\(l - 1).prelu"), N: B, C: hidden[l])
                dY[l].update(from: dZ, count: n)
                dOut = dY[l]
            }
        }
        // dY[0] = d[e_u, h, e_T]
        let dy0 = dY[0], W = hidden[0]
        dEh.update(repeating: 0, count: BT * D)
        dEt.update(repeating: 0, count: B * D)
        for b in 0..<B {
            let row = dy0 + b * W, dh = row + Du, len = Int(lengths[b])
            (dEu + b * Du).update(from: row, count: Du)
            addInPlace(dEt + b * D, dh + D, D)
            for n in 0..<T {
                if n >= len { dAtt[b * T + n] = 0; continue }
                let e = eh + (b * T + n) * D, de = dEh + (b * T + n) * D, a = att[b * T + n]
                var s: Float = 0
                for c in 0..<D { s += dh[c] * e[c]; de[c] += a * dh[c] }
                dAtt[b * T + n] = s
            }
        }
        // attention MLP
        dP1.update(repeating: 0, count: BT * A)
        linearBackward(dinp: dP1, dweight: ps.grad("att2.weight"), dbias: ps.grad("att2.bias"), dout: dAtt, inp: p1,
                       weight: ps.value("att2.weight"), N: BT, C: A, OC: 1)
        for i in 0..<(BT * A) { dP1[i] *= m1[i] }
        dA1.update(repeating: 0, count: BT * A)
        preluBackward(dinp: dA1, dalpha: ps.grad("att1.prelu"), dout: dP1, inp: a1, alpha: ps.value("att1.prelu"), N: BT, C: A)
        dX.update(repeating: 0, count: BT * 4 * D)
        linearBackward(dinp: dX, dweight: ps.grad("att1.weight"), dbias: ps.grad("att1.bias"), dout: dA1, inp: x,
                       weight: ps.value("att1.weight"), N: BT, C: 4 * D, OC: A)
        // x = [e, t, e − t, e ⊙ t]
        for b in 0..<B {
            let t = et + b * D, dt = dEt + b * D
            for n in 0..<T {
                let e = eh + (b * T + n) * D, de = dEh + (b * T + n) * D, dx = dX + (b * T + n) * 4 * D
                for c in 0..<D {
                    de[c] += dx[c] + dx[2 * D + c] + dx[3 * D + c] * t[c]
                    dt[c] += dx[D + c] - dx[2 * D + c] + dx[3 * D + c] * e[c]
                }
            }
        }
        let dTable = ps.grad("embedding")
        embeddingBackward(dtable: dTable, dout: dEh, ids: items, N: BT, C: D)
        embeddingBackward(dtable: dTable, dout: dEt, ids: targets, N: B, C: D)
        // user ids start at 0, a real user (`embeddingBackward` skips id 0 as item padding)
        let dUser = ps.grad("user_embedding")
        for b in 0..<B { addInPlace(dUser + Int(users[b]) * Du, dEu + b * Du, Du) }
    }
}
