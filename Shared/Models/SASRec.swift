// SASRec (Kang & McAuley 2018) as RecBole builds it: item + learned position embeddings,
// LayerNorm, dropout, then L post-LN transformer blocks
//   a = LN(h + Dropout(Attention(h) · Woᵀ + bo));  h' = LN(a + Dropout(GELU(a·W1ᵀ + b1)·W2ᵀ + b2))
// with causal, padding-masked multi-head attention (dropout on the attention weights); the user
// vector is the last block's output at the last real position. With `Readout.last` only that row
// of the last block is ever read, so the last block computes its query, attention output,
// feed-forward and LayerNorms for that row alone (keys and values for all rows): the same
// function, less work. `Readout.every` returns the last block's output at every position
// (all-position training: position p predicts the item after it; DSS's encoder reads z₁…z_t).
// It can carry a wrapper's parameters in its set.
// Shapes: B batch, T = maxLength, C = dim, H heads, F = inner size, N = itemCount, BT = B·T.
import Numerics

public struct SASRecConfig: Sendable, Equatable, Codable {
    public var itemCount: Int
    public var maxLength = 50
    public var dim = 64
    public var blocks = 2
    public var heads = 2
    public var inner = 256
    public var hiddenDropout: Float = 0.5
    public var attentionDropout: Float = 0.5
    public var layerNormEps: Float = 1e-12
    public var initStd: Float = 0.02
    public var seed: UInt64 = 1
    public init(itemCount: Int) { self.itemCount = itemCount }
}

public final class SASRec: Backbone {
    public let config: SASRecConfig
    public let parameters: ParameterSet
    public var rng: RNG
    public var name: String { "SASRec" }
    public var itemCount: Int { config.itemCount }
    public var dim: Int { config.dim }
    public var interests: Int { 1 }
    public var maxLength: Int { config.maxLength }
    public var itemTable: Floats { parameters.value("item_embedding") }
    public var itemTableGrad: Floats { parameters.grad("item_embedding") }

    // parameter views: values (p) and gradients (g)
    private struct Block {
        var qkvW, qkvB, outW, outB, ln1W, ln1B, ff1W, ff1B, ff2W, ff2B, ln2W, ln2B: Floats
    }
    private let pItem, pPos, pLn0W, pLn0B: Floats
    private let gItem, gPos, gLn0W, gLn0B: Floats
    private let pBlocks: [Block], gBlocks: [Block]

    // activations for the largest batch seen (see `allocate`)
    private let work = Workspace()
    private var x0: Floats! = nil, h0: Floats! = nil, mask0: Floats! = nil, ln0Mean: Floats! = nil, ln0Rstd: Floats! = nil
    private struct Acts {
        var qkv, att, attD, ctx, ao, aoMask, r1, a, ln1Mean, ln1Rstd, f1, g, f2, f2Mask, r2, h, ln2Mean, ln2Rstd, cdf: Floats
    }
    private var acts: [Acts] = []
    private var user: Floats! = nil
    // activation gradients, shared by all blocks
    private var dhA: Floats! = nil, dhB: Floats! = nil, dr: Floats! = nil, da: Floats! = nil, dtmp: Floats! = nil
    private var dF: Floats! = nil, dF2: Floats! = nil, dqkv: Floats! = nil
    // the last block runs its post-attention layers on the last real position only (the only
    // row the user vector reads): its context and residual input rows gathered, (B, C) each
    private var ctxL: Floats! = nil, hInL: Floats! = nil, dctxL: Floats! = nil
    // the last training forward's inputs
    private var lastItems: UnsafePointer<Int32>? = nil, lastLengths: UnsafePointer<Int32>? = nil, lastB = 0
    private var lastReadout = Readout.last

    /// `extraParameters` are appended to the set (after SASRec's own, left zero here) for a
    /// wrapper whose layers train with the transformer under one optimiser.
    public init(_ config: SASRecConfig, extraParameters: [(name: String, shape: [Int])] = []) {
        precondition(config.dim % config.heads == 0, "dim must divide into heads")
        self.config = config
        let C = config.dim, F = config.inner, N = config.itemCount, T = config.maxLength
        var specs: [(name: String, shape: [Int])] = [("item_embedding", [N + 1, C]), ("position_embedding", [T, C]),
                                                      ("ln0.weight", [C]), ("ln0.bias", [C])]
        for l in 0..<config.blocks {
            let p = "blocks.\(l)."
            specs += [(p + "qkv.weight", [3 * C, C]), (p + "qkv.bias", [3 * C]), (p + "out.weight", [C, C]), (p + "out.bias", [C]),
                      (p + "ln1.weight", [C]), (p + "ln1.bias", [C]), (p + "ff1.weight", [F, C]), (p + "ff1.bias", [F]),
                      (p + "ff2.weight", [C, F]), (p + "ff2.bias", [C]), (p + "ln2.weight", [C]), (p + "ln2.bias", [C])]
        }
        let ps = ParameterSet(specs + extraParameters)
        parameters = ps
        pItem = ps.value("item_embedding"); gItem = ps.grad("item_embedding")
        pPos = ps.value("position_embedding"); gPos = ps.grad("position_embedding")
        pLn0W = ps.value("ln0.weight"); pLn0B = ps.value("ln0.bias"); gLn0W = ps.grad("ln0.weight"); gLn0B = ps.grad("ln0.bias")
        func block(_ l: Int, _ view: (String) -> Floats) -> Block {
            let p = "blocks.\(l)."
            return Block(qkvW: view(p + "qkv.weight"), qkvB: view(p + "qkv.bias"), outW: view(p + "out.weight"), outB: view(p + "out.bias"),
                         ln1W: view(p + "ln1.weight"), ln1B: view(p + "ln1.bias"), ff1W: view(p + "ff1.weight"), ff1B: view(p + "ff1.bias"),
                         ff2W: view(p + "ff2.weight"), ff2B: view(p + "ff2.bias"), ln2W: view(p + "ln2.weight"), ln2B: view(p + "ln2.bias"))
        }
        pBlocks = (0..<config.blocks).map { block($0, ps.value) }
        gBlocks = (0..<config.blocks).map { block($0, ps.grad) }
        rng = RNG(seed: config.seed)
        resetParameters()
    }

    /// normal(0, initStd) for embeddings and linear weights, biases 0, LayerNorm 1 / 0 (RecBole).
    public func resetParameters() {
        var r = RNG(seed: config.seed).derived(0x1A17)
        let C = config.dim, F = config.inner
        Init.normal(pItem, (config.itemCount + 1) * C, std: config.initStd, rng: &r)
        Init.normal(pPos, config.maxLength * C, std: config.initStd, rng: &r)
        Init.constant(pLn0W, C, 1); Init.constant(pLn0B, C, 0)
        for b in pBlocks {
            Init.normal(b.qkvW, 3 * C * C, std: config.initStd, rng: &r); Init.constant(b.qkvB, 3 * C, 0)
            Init.normal(b.outW, C * C, std: config.initStd, rng: &r); Init.constant(b.outB, C, 0)
            Init.constant(b.ln1W, C, 1); Init.constant(b.ln1B, C, 0)
            Init.normal(b.ff1W, F * C, std: config.initStd, rng: &r); Init.constant(b.ff1B, F, 0)
            Init.normal(b.ff2W, C * F, std: config.initStd, rng: &r); Init.constant(b.ff2B, C, 0)
            Init.constant(b.ln2W, C, 1); Init.constant(b.ln2B, C, 0)
        }
    }

    private func allocate(_ requested: Int) {
        // grows to twice the last capacity at least: a server whose batches creep up 1, 2, 3, …
        // allocates (and clears) the activations a handful of times, not once per new size
        guard requested > work.capacity || work.slab == nil else { return }
        let B = work.slab == nil ? requested : max(requested, 2 * work.capacity)
        let T = config.maxLength, C = config.dim, F = config.inner, H = config.heads, L = config.blocks
        let BT = B * T
        let perBlock = [BT * 3 * C, B * H * T * T, B * H * T * T, BT * C, BT * C, BT * C, BT * C, BT * C, BT, BT,
                        BT * F, BT * F, BT * C, BT * C, BT * C, BT * C, BT, BT, BT * F]
        guard work.ensure(B, sizes: { _ in
            [BT * C, BT * C, BT * C, BT, BT] + Array([[Int]](repeating: perBlock, count: L).joined())
                + [B * C, BT * C, BT * C, BT * C, BT * C, BT * C, BT * F, BT * F, BT * 3 * C, B * C, B * C, B * C]
        }) else { return }
        let v = work.slab!.views
        x0 = v[0]; h0 = v[1]; mask0 = v[2]; ln0Mean = v[3]; ln0Rstd = v[4]
        var k = 5
        acts = (0..<L).map { _ in
            defer { k += perBlock.count }
            return Acts(qkv: v[k], att: v[k + 1], attD: v[k + 2], ctx: v[k + 3], ao: v[k + 4], aoMask: v[k + 5], r1: v[k + 6],
                        a: v[k + 7], ln1Mean: v[k + 8], ln1Rstd: v[k + 9], f1: v[k + 10], g: v[k + 11], f2: v[k + 12],
                        f2Mask: v[k + 13], r2: v[k + 14], h: v[k + 15], ln2Mean: v[k + 16], ln2Rstd: v[k + 17], cdf: v[k + 18])
        }
        user = v[k]; dhA = v[k + 1]; dhB = v[k + 2]; dr = v[k + 3]; da = v[k + 4]; dtmp = v[k + 5]
        dF = v[k + 6]; dF2 = v[k + 7]; dqkv = v[k + 8]; ctxL = v[k + 9]; hInL = v[k + 10]; dctxL = v[k + 11]
    }

    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool,
                        readout: Readout) -> UnsafePointer<Float> {
        allocate(B)
        let T = config.maxLength, C = config.dim, F = config.inner, H = config.heads, BT = B * T
        let pHidden = training ? config.hiddenDropout : 0, pAtt = training ? config.attentionDropout : 0
        // embeddings: item + position
        embeddingForward(out: x0, ids: items, table: pItem, N: BT, C: C)
        for b in 0..<B { for t in 0..<T { let x = x0 + (b * T + t) * C, p = pPos + t * C; for c in 0..<C { x[c] += p[c] } } }
        layerNormForward(out: h0, mean: ln0Mean, rstd: ln0Rstd, inp: x0, weight: pLn0W, bias: pLn0B, N: BT, C: C, eps: config.layerNormEps)
        dropoutForward(out: h0, mask: mask0, inp: h0, p: pHidden, n: BT * C, rng: &rng)
        var hIn: Floats = h0
        for b in 0..<B {
            precondition(lengths[b] >= 1 && Int(lengths[b]) <= T, "sequence length must be in 1...maxLength")
        }
        for (l, w) in pBlocks.enumerated() {
            let a = acts[l], last = l == config.blocks - 1 && readout == .last
            linearForward(out: a.qkv, inp: hIn, weight: w.qkvW, bias: w.qkvB, N: BT, C: C, OC: 3 * C)
            // inference draws nothing: evaluating between epochs must not move training's dropout
            let seed = training ? rng.next() : 0
            attentionForward(out: a.ctx, att: a.att, attDrop: a.attD, qkv: a.qkv, ids: items, rows: lengths, dropout: pAtt,
                             seed: seed, lastRowOnly: last, B: B, T: T, C: C, H: H)
            // rows R: all B·T positions, or in the last block the B last real positions
            var ctx: Floats = a.ctx, res: Floats = hIn, R = BT
            if last {
                for b in 0..<B {
                    let t = Int(lengths[b]) - 1
                    (ctxL + b * C).update(from: a.ctx + (b * T + t) * C, count: C)
                    (hInL + b * C).update(from: hIn + (b * T + t) * C, count: C)
                }
                ctx = ctxL; res = hInL; R = B
            }
            linearForward(out: a.ao, inp: ctx, weight: w.outW, bias: w.outB, N: R, C: C, OC: C)
            dropoutForward(out: a.ao, mask: a.aoMask, inp: a.ao, p: pHidden, n: R * C, rng: &rng)
            for i in 0..<(R * C) { a.r1[i] = a.ao[i] + res[i] }
            layerNormForward(out: a.a, mean: a.ln1Mean, rstd: a.ln1Rstd, inp: a.r1, weight: w.ln1W, bias: w.ln1B, N: R, C: C, eps: config.layerNormEps)
            linearForward(out: a.f1, inp: a.a, weight: w.ff1W, bias: w.ff1B, N: R, C: C, OC: F)
            geluForward(out: a.g, inp: a.f1, cdf: a.cdf, n: R * F)
            linearForward(out: a.f2, inp: a.g, weight: w.ff2W, bias: w.ff2B, N: R, C: F, OC: C)
            dropoutForward(out: a.f2, mask: a.f2Mask, inp: a.f2, p: pHidden, n: R * C, rng: &rng)
            for i in 0..<(R * C) { a.r2[i] = a.f2[i] + a.a[i] }
            layerNormForward(out: a.h, mean: a.ln2Mean, rstd: a.ln2Rstd, inp: a.r2, weight: w.ln2W, bias: w.ln2B, N: R, C: C, eps: config.layerNormEps)
            hIn = a.h
        }
        lastItems = items; lastLengths = lengths; lastB = B; lastReadout = readout
        if readout == .every { return UnsafePointer(hIn) }
        // the last block's output rows are the user vectors (B, C)
        user.update(from: hIn, count: B * C)
        return UnsafePointer(user)
    }

    public func backward(dUser: UnsafePointer<Float>) {
        guard let items = lastItems, let lengths = lastLengths else { preconditionFailure("backward before forward") }
        let B = lastB, T = config.maxLength, C = config.dim, F = config.inner, H = config.heads, BT = B * T
        let pHidden = config.hiddenDropout, pAtt = config.attentionDropout
        // gradient on the last block's output rows: (B, C), the user vectors, or (B, T, C)
        var dOut: Floats = dhA, dIn: Floats = dhB
        dOut.update(from: dUser, count: lastReadout == .every ? BT * C : B * C)
        for l in stride(from: config.blocks - 1, through: 0, by: -1) {
            let a = acts[l], w = pBlocks[l], g = gBlocks[l], last = l == config.blocks - 1 && lastReadout == .last
            let hIn: Floats = l == 0 ? h0 : acts[l - 1].h
            let R = last ? B : BT
            // h = LN2(r2), r2 = Dropout(f2) + a
            dr.update(repeating: 0, count: R * C)
            layerNormBackward(dinp: dr, dweight: g.ln2W, dbias: g.ln2B, dout: dOut, inp: a.r2, weight: w.ln2W, mean: a.ln2Mean, rstd: a.ln2Rstd, N: R, C: C)
            da.update(from: dr, count: R * C)
            dtmp.update(repeating: 0, count: R * C)
            dropoutBackward(dinp: dtmp, dout: dr, mask: a.f2Mask, n: R * C)
            dF.update(repeating: 0, count: R * F)
            linearBackward(dinp: dF, dweight: g.ff2W, dbias: g.ff2B, dout: dtmp, inp: a.g, weight: w.ff2W, N: R, C: F, OC: C)
            dF2.update(repeating: 0, count: R * F)
            geluBackward(dinp: dF2, dout: dF, inp: a.f1, cdf: a.cdf, n: R * F)
            linearBackward(dinp: da, dweight: g.ff1W, dbias: g.ff1B, dout: dF2, inp: a.a, weight: w.ff1W, N: R, C: C, OC: F)
            // a = LN1(r1), r1 = Dropout(ao) + residual
            dr.update(repeating: 0, count: R * C)
            layerNormBackward(dinp: dr, dweight: g.ln1W, dbias: g.ln1B, dout: da, inp: a.r1, weight: w.ln1W, mean: a.ln1Mean, rstd: a.ln1Rstd, N: R, C: C)
            dtmp.update(repeating: 0, count: R * C)
            dropoutBackward(dinp: dtmp, dout: dr, mask: a.aoMask, n: R * C)
            if last {
                // scatter the B rows back to their positions: residual into dIn, d ctx into da
                dIn.update(repeating: 0, count: BT * C)
                da.update(repeating: 0, count: BT * C)
                dctxL.update(repeating: 0, count: B * C)
                linearBackward(dinp: dctxL, dweight: g.outW, dbias: g.outB, dout: dtmp, inp: ctxL, weight: w.outW, N: B, C: C, OC: C)
                for b in 0..<B {
                    let t = Int(lengths[b]) - 1
                    (dIn + (b * T + t) * C).update(from: dr + b * C, count: C)
                    (da + (b * T + t) * C).update(from: dctxL + b * C, count: C)
                }
            } else {
                dIn.update(from: dr, count: BT * C)
                da.update(repeating: 0, count: BT * C)    // now d ctx
                linearBackward(dinp: da, dweight: g.outW, dbias: g.outB, dout: dtmp, inp: a.ctx, weight: w.outW, N: BT, C: C, OC: C)
            }
            dqkv.update(repeating: 0, count: BT * 3 * C)
            attentionBackward(dqkv: dqkv, dout: da, qkv: a.qkv, att: a.att, attDrop: a.attD, ids: items, rows: lengths,
                              dropout: pAtt, lastRowOnly: last, B: B, T: T, C: C, H: H)
            linearBackward(dinp: dIn, dweight: g.qkvW, dbias: g.qkvB, dout: dqkv, inp: hIn, weight: w.qkvW, N: BT, C: C, OC: 3 * C)
            swap(&dOut, &dIn)
        }
        // h0 = Dropout(LN0(x0)), x0 = item + position embeddings
        dtmp.update(repeating: 0, count: BT * C)
        dropoutBackward(dinp: dtmp, dout: dOut, mask: mask0, n: BT * C)
        dr.update(repeating: 0, count: BT * C)
        layerNormBackward(dinp: dr, dweight: gLn0W, dbias: gLn0B, dout: dtmp, inp: x0, weight: pLn0W, mean: ln0Mean, rstd: ln0Rstd, N: BT, C: C)
        embeddingBackward(dtable: gItem, dout: dr, ids: items, N: BT, C: C)
        for b in 0..<B { for t in 0..<T { let d = dr + (b * T + t) * C, p = gPos + t * C; for c in 0..<C { p[c] += d[c] } } }
        _ = pHidden
    }
}
