// DSS's sequence encoder φ (dss.md §3.3): a single-head SASRec whose outputs at every position
// (not only the last) feed the intention-disentanglement layer, giving K vectors per sequence.
// The transformer part is SASRec as the protocol builds it (post-LN blocks, GELU, dropout,
// learned positions, shared item table), with one head. Serving score = max over the K vectors
// (the `Backbone` contract), through the *input* β set.
// Shapes: B batch, T = maxLength, C = dim, F = inner, K = interests, N = itemCount, BT = B·T.
import Numerics
import Models

public struct DSSEncoderConfig: Sendable, Equatable, Codable {
    public var itemCount: Int
    public var maxLength = 50
    public var dim = 64
    public var blocks = 2
    public var inner = 256
    /// K, the number of intentions (the paper's grid: 1...8).
    public var interests = 4
    public var hiddenDropout: Float = 0.5
    public var attentionDropout: Float = 0.5
    public var layerNormEps: Float = 1e-12
    public var initStd: Float = 0.02
    public var seed: UInt64 = 1
    public init(itemCount: Int) { self.itemCount = itemCount }
}

public final class DSSEncoder: Backbone {
    public let config: DSSEncoderConfig
    public let parameters: ParameterSet
    public var rng: RNG
    public let disentangle: DisentangleLayer
    public var name: String { "DSS-SASRec" }
    public var itemCount: Int { config.itemCount }
    public var dim: Int { config.dim }
    public var interests: Int { config.interests }
    public var maxLength: Int { config.maxLength }
    public var itemTable: Floats { parameters.value("item_embedding") }
    public var itemTableGrad: Floats { parameters.grad("item_embedding") }

    private struct Block { var qkvW, qkvB, outW, outB, ln1W, ln1B, ff1W, ff1B, ff2W, ff2B, ln2W, ln2B: Floats }
    private let pBlocks: [Block], gBlocks: [Block]
    private struct Acts { var qkv, att, attD, ctx, ao, aoMask, r1, a, ln1Mean, ln1Rstd, f1, g, f2, f2Mask, r2, h, ln2Mean, ln2Rstd: Floats }
    private let work = Workspace()
    private var x0: Floats! = nil, h0: Floats! = nil, mask0: Floats! = nil, ln0Mean: Floats! = nil, ln0Rstd: Floats! = nil
    private var acts: [Acts] = []
    private var dhA: Floats! = nil, dhB: Floats! = nil, dr: Floats! = nil, da: Floats! = nil, dtmp: Floats! = nil
    private var dF: Floats! = nil, dF2: Floats! = nil, dqkv: Floats! = nil
    private var lastItems: UnsafePointer<Int32>? = nil, lastLengths: UnsafePointer<Int32>? = nil, lastB = 0

    public init(_ config: DSSEncoderConfig) {
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
        specs += DisentangleLayer.parameterSpecs(dim: C, interests: config.interests, maxLength: T)
        let ps = ParameterSet(specs)
        parameters = ps
        func block(_ l: Int, _ view: (String) -> Floats) -> Block {
            let p = "blocks.\(l)."
            return Block(qkvW: view(p + "qkv.weight"), qkvB: view(p + "qkv.bias"), outW: view(p + "out.weight"), outB: view(p + "out.bias"),
                         ln1W: view(p + "ln1.weight"), ln1B: view(p + "ln1.bias"), ff1W: view(p + "ff1.weight"), ff1B: view(p + "ff1.bias"),
                         ff2W: view(p + "ff2.weight"), ff2B: view(p + "ff2.bias"), ln2W: view(p + "ln2.weight"), ln2B: view(p + "ln2.bias"))
        }
        pBlocks = (0..<config.blocks).map { block($0, ps.value) }
        gBlocks = (0..<config.blocks).map { block($0, ps.grad) }
        disentangle = DisentangleLayer(parameters: ps, dim: C, interests: config.interests, maxLength: T, eps: config.layerNormEps)
        rng = RNG(seed: config.seed)
        resetParameters()
    }

    /// SASRec's initialisation (normal(0, initStd), biases 0, LayerNorm 1 / 0) and the layer's.
    public func resetParameters() {
        var r = RNG(seed: config.seed).derived(0xD55)
        let C = config.dim, F = config.inner, ps = parameters
        Init.normal(ps.value("item_embedding"), (config.itemCount + 1) * C, std: config.initStd, rng: &r)
        Init.normal(ps.value("position_embedding"), config.maxLength * C, std: config.initStd, rng: &r)
        Init.constant(ps.value("ln0.weight"), C, 1); Init.constant(ps.value("ln0.bias"), C, 0)
        for b in pBlocks {
            Init.normal(b.qkvW, 3 * C * C, std: config.initStd, rng: &r); Init.constant(b.qkvB, 3 * C, 0)
            Init.normal(b.outW, C * C, std: config.initStd, rng: &r); Init.constant(b.outB, C, 0)
            Init.constant(b.ln1W, C, 1); Init.constant(b.ln1B, C, 0)
            Init.normal(b.ff1W, F * C, std: config.initStd, rng: &r); Init.constant(b.ff1B, F, 0)
            Init.normal(b.ff2W, C * F, std: config.initStd, rng: &r); Init.constant(b.ff2B, C, 0)
            Init.constant(b.ln2W, C, 1); Init.constant(b.ln2B, C, 0)
        }
        disentangle.resetParameters(initStd: config.initStd, rng: &r)
    }

    private func allocate(_ B: Int) {
        let T = config.maxLength, C = config.dim, F = config.inner, L = config.blocks, BT = B * T
        let perBlock = [BT * 3 * C, B * T * T, B * T * T, BT * C, BT * C, BT * C, BT * C, BT * C, BT, BT,
                        BT * F, BT * F, BT * C, BT * C, BT * C, BT * C, BT, BT]
        guard work.ensure(B, sizes: { _ in
            [BT * C, BT * C, BT * C, BT, BT] + Array([[Int]](repeating: perBlock, count: L).joined())
                + [BT * C, BT * C, BT * C, BT * C, BT * C, BT * F, BT * F, BT * 3 * C]
        }) else { return }
        let v = work.slab!.views
        x0 = v[0]; h0 = v[1]; mask0 = v[2]; ln0Mean = v[3]; ln0Rstd = v[4]
        var k = 5
        acts = (0..<L).map { _ in
            defer { k += perBlock.count }
            return Acts(qkv: v[k], att: v[k + 1], attD: v[k + 2], ctx: v[k + 3], ao: v[k + 4], aoMask: v[k + 5], r1: v[k + 6],
                        a: v[k + 7], ln1Mean: v[k + 8], ln1Rstd: v[k + 9], f1: v[k + 10], g: v[k + 11], f2: v[k + 12],
                        f2Mask: v[k + 13], r2: v[k + 14], h: v[k + 15], ln2Mean: v[k + 16], ln2Rstd: v[k + 17])
        }
        dhA = v[k]; dhB = v[k + 1]; dr = v[k + 2]; da = v[k + 3]; dtmp = v[k + 4]; dF = v[k + 5]; dF2 = v[k + 6]; dqkv = v[k + 7]
    }

    /// The per-position outputs z (B, T, C) of the transformer for the last forward.
    public var positionOutputs: UnsafePointer<Float> { UnsafePointer(config.blocks > 0 ? acts[config.blocks - 1].h : h0) }

    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool) -> UnsafePointer<Float> {
        forward(items: items, lengths: lengths, labelFrom: B, B: B, training: training)
    }

    /// Encodes B sequences into φ (B, K, C); rows b >= labelFrom are encoded as seq2seq labels
    /// (the label β set).
    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, labelFrom: Int, B: Int, training: Bool) -> UnsafePointer<Float> {
        allocate(B)
        let T = config.maxLength, C = config.dim, F = config.inner, BT = B * T, ps = parameters
        let pHidden = training ? config.hiddenDropout : 0, pAtt = training ? config.attentionDropout : 0
        let pPos = ps.value("position_embedding")
        embeddingForward(out: x0, ids: items, table: itemTable, N: BT, C: C)
        for b in 0..<B { for t in 0..<T { let x = x0 + (b * T + t) * C, p = pPos + t * C; for c in 0..<C { x[c] += p[c] } } }
        layerNormForward(out: h0, mean: ln0Mean, rstd: ln0Rstd, inp: x0, weight: ps.value("ln0.weight"), bias: ps.value("ln0.bias"),
                         N: BT, C: C, eps: config.layerNormEps)
        dropoutForward(out: h0, mask: mask0, inp: h0, p: pHidden, n: BT * C, rng: &rng)
        var hIn: Floats = h0
        for (l, w) in pBlocks.enumerated() {
            let a = acts[l]
            linearForward(out: a.qkv, inp: hIn, weight: w.qkvW, bias: w.qkvB, N: BT, C: C, OC: 3 * C)
            let seed = rng.next()
            attentionForward(out: a.ctx, att: a.att, attDrop: a.attD, qkv: a.qkv, ids: items, rows: lengths, dropout: pAtt,
                             seed: seed, B: B, T: T, C: C, H: 1)
            linearForward(out: a.ao, inp: a.ctx, weight: w.outW, bias: w.outB, N: BT, C: C, OC: C)
            dropoutForward(out: a.ao, mask: a.aoMask, inp: a.ao, p: pHidden, n: BT * C, rng: &rng)
            for i in 0..<(BT * C) { a.r1[i] = a.ao[i] + hIn[i] }
            layerNormForward(out: a.a, mean: a.ln1Mean, rstd: a.ln1Rstd, inp: a.r1, weight: w.ln1W, bias: w.ln1B, N: BT, C: C, eps: config.layerNormEps)
            linearForward(out: a.f1, inp: a.a, weight: w.ff1W, bias: w.ff1B, N: BT, C: C, OC: F)
            geluForward(out: a.g, inp: a.f1, n: BT * F)
            linearForward(out: a.f2, inp: a.g, weight: w.ff2W, bias: w.ff2B, N: BT, C: F, OC: C)
            dropoutForward(out: a.f2, mask: a.f2Mask, inp: a.f2, p: pHidden, n: BT * C, rng: &rng)
            for i in 0..<(BT * C) { a.r2[i] = a.f2[i] + a.a[i] }
            layerNormForward(out: a.h, mean: a.ln2Mean, rstd: a.ln2Rstd, inp: a.r2, weight: w.ln2W, bias: w.ln2B, N: BT, C: C, eps: config.layerNormEps)
            hIn = a.h
        }
        lastItems = items; lastLengths = lengths; lastB = B
        return disentangle.forward(z: hIn, lengths: lengths, labelFrom: labelFrom, B: B)
    }

    public func backward(dUser: UnsafePointer<Float>) {
        guard let items = lastItems, let lengths = lastLengths else { preconditionFailure("backward before forward") }
        let B = lastB, T = config.maxLength, C = config.dim, F = config.inner, BT = B * T, ps = parameters
        let pAtt = config.attentionDropout
        var dOut: Floats = dhA, dIn: Floats = dhB
        dOut.update(repeating: 0, count: BT * C)
        disentangle.backward(dOut: dUser, dz: dOut)
        for l in stride(from: config.blocks - 1, through: 0, by: -1) {
            let a = acts[l], w = pBlocks[l], g = gBlocks[l]
            let hIn: Floats = l == 0 ? h0 : acts[l - 1].h
            dr.update(repeating: 0, count: BT * C)
            layerNormBackward(dinp: dr, dweight: g.ln2W, dbias: g.ln2B, dout: dOut, inp: a.r2, weight: w.ln2W, mean: a.ln2Mean, rstd: a.ln2Rstd, N: BT, C: C)
            da.update(from: dr, count: BT * C)
            dtmp.update(repeating: 0, count: BT * C)
            dropoutBackward(dinp: dtmp, dout: dr, mask: a.f2Mask, n: BT * C)
            dF.update(repeating: 0, count: BT * F)
            linearBackward(dinp: dF, dweight: g.ff2W, dbias: g.ff2B, dout: dtmp, inp: a.g, weight: w.ff2W, N: BT, C: F, OC: C)
            dF2.update(repeating: 0, count: BT * F)
            geluBackward(dinp: dF2, dout: dF, inp: a.f1, n: BT * F)
            linearBackward(dinp: da, dweight: g.ff1W, dbias: g.ff1B, dout: dF2, inp: a.a, weight: w.ff1W, N: BT, C: C, OC: F)
            dr.update(repeating: 0, count: BT * C)
            layerNormBackward(dinp: dr, dweight: g.ln1W, dbias: g.ln1B, dout: da, inp: a.r1, weight: w.ln1W, mean: a.ln1Mean, rstd: a.ln1Rstd, N: BT, C: C)
            dIn.update(from: dr, count: BT * C)
            dtmp.update(repeating: 0, count: BT * C)
            dropoutBackward(dinp: dtmp, dout: dr, mask: a.aoMask, n: BT * C)
            da.update(repeating: 0, count: BT * C)
            linearBackward(dinp: da, dweight: g.outW, dbias: g.outB, dout: dtmp, inp: a.ctx, weight: w.outW, N: BT, C: C, OC: C)
            dqkv.update(repeating: 0, count: BT * 3 * C)
            attentionBackward(dqkv: dqkv, dout: da, qkv: a.qkv, att: a.att, attDrop: a.attD, ids: items, rows: lengths,
                              dropout: pAtt, B: B, T: T, C: C, H: 1)
            linearBackward(dinp: dIn, dweight: g.qkvW, dbias: g.qkvB, dout: dqkv, inp: hIn, weight: w.qkvW, N: BT, C: C, OC: 3 * C)
            swap(&dOut, &dIn)
        }
        dtmp.update(repeating: 0, count: BT * C)
        dropoutBackward(dinp: dtmp, dout: dOut, mask: mask0, n: BT * C)
        dr.update(repeating: 0, count: BT * C)
        layerNormBackward(dinp: dr, dweight: ps.grad("ln0.weight"), dbias: ps.grad("ln0.bias"), dout: dtmp, inp: x0,
                          weight: ps.value("ln0.weight"), mean: ln0Mean, rstd: ln0Rstd, N: BT, C: C)
        embeddingBackward(dtable: itemTableGrad, dout: dr, ids: items, N: BT, C: C)
        let gPos = ps.grad("position_embedding")
        for b in 0..<B { for t in 0..<T { let d = dr + (b * T + t) * C, p = gPos + t * C; for c in 0..<C { p[c] += d[c] } } }
    }
}
