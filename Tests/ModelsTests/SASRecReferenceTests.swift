import WinnowTestSupport
import XCTest
import Numerics
@testable import Models

/// SASRec's optimised forward (attention rows skipped for padding, last block on the last row
/// only) against a direct composition of the layer functions over every row, in eval mode.
final class SASRecReferenceTests: XCTestCase {
    func testForwardEqualsDirectCompositionOverAllRows() {
        Threads.set(1)
        var cfg = SASRecConfig(itemCount: 11)
        cfg.maxLength = 6; cfg.dim = 8; cfg.heads = 2; cfg.blocks = 2; cfg.inner = 12; cfg.initStd = 0.3; cfg.seed = 7
        let m = SASRec(cfg)
        let B = 3, T = 6, C = 8, F = 12, H = 2, BT = B * T
        let items: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 9, 10, 11, 0, 0, 0]
        let lengths: [Int32] = [6, 2, 3]
        let ps = m.parameters
        let x = Buf(BT * C), h = Buf(BT * C), mean = Buf(BT), rstd = Buf(BT)
        let qkv = Buf(BT * 3 * C), att = Buf(B * H * T * T), attD = Buf(B * H * T * T), ctx = Buf(BT * C)
        let ao = Buf(BT * C), r = Buf(BT * C), a = Buf(BT * C), f1 = Buf(BT * F), g = Buf(BT * F), f2 = Buf(BT * C)
        items.withUnsafeBufferPointer { it in lengths.withUnsafeBufferPointer { ln in
            embeddingForward(out: x.p, ids: it.baseAddress!, table: ps.value("item_embedding"), N: BT, C: C)
            for b in 0..<B { for t in 0..<T { for c in 0..<C { x[(b * T + t) * C + c] += ps.value("position_embedding")[t * C + c] } } }
            layerNormForward(out: h.p, mean: mean.p, rstd: rstd.p, inp: x.p, weight: ps.value("ln0.weight"), bias: ps.value("ln0.bias"), N: BT, C: C, eps: 1e-12)
            for l in 0..<2 {
                let p = "blocks.\(l)."
                linearForward(out: qkv.p, inp: h.p, weight: ps.value(p + "qkv.weight"), bias: ps.value(p + "qkv.bias"), N: BT, C: C, OC: 3 * C)
                attentionForward(out: ctx.p, att: att.p, attDrop: attD.p, qkv: qkv.p, ids: it.baseAddress!, rows: nil, dropout: 0, seed: 0, B: B, T: T, C: C, H: H)
                linearForward(out: ao.p, inp: ctx.p, weight: ps.value(p + "out.weight"), bias: ps.value(p + "out.bias"), N: BT, C: C, OC: C)
                for i in 0..<(BT * C) { r[i] = ao[i] + h[i] }
                layerNormForward(out: a.p, mean: mean.p, rstd: rstd.p, inp: r.p, weight: ps.value(p + "ln1.weight"), bias: ps.value(p + "ln1.bias"), N: BT, C: C, eps: 1e-12)
                linearForward(out: f1.p, inp: a.p, weight: ps.value(p + "ff1.weight"), bias: ps.value(p + "ff1.bias"), N: BT, C: C, OC: F)
                geluForward(out: g.p, inp: f1.p, n: BT * F)
                linearForward(out: f2.p, inp: g.p, weight: ps.value(p + "ff2.weight"), bias: ps.value(p + "ff2.bias"), N: BT, C: F, OC: C)
                for i in 0..<(BT * C) { r[i] = f2[i] + a[i] }
                layerNormForward(out: h.p, mean: mean.p, rstd: rstd.p, inp: r.p, weight: ps.value(p + "ln2.weight"), bias: ps.value(p + "ln2.bias"), N: BT, C: C, eps: 1e-12)
            }
            let user = m.forward(items: it.baseAddress!, lengths: ln.baseAddress!, B: B, training: false)
            for b in 0..<B {
                let t = Int(lengths[b]) - 1
                for c in 0..<C { XCTAssertEqual(user[b * C + c], h[(b * T + t) * C + c], accuracy: 1e-5, "sequence \(b) channel \(c)") }
            }
            // `.every` (all-position training and DSS's encoder read it): the same composition at
            // every real position
            let z = m.forward(items: it.baseAddress!, lengths: ln.baseAddress!, B: B, training: false, readout: .every)
            for b in 0..<B {
                for t in 0..<Int(lengths[b]) {
                    for c in 0..<C { XCTAssertEqual(z[(b * T + t) * C + c], h[(b * T + t) * C + c], accuracy: 1e-5, "sequence \(b) position \(t)") }
                }
            }
        } }
    }

    /// A gradient on the last real positions alone, through `.every`, gives the parameter
    /// gradients of the user vectors' backward (dropout off: SASRec's last block draws masks for
    /// B rows in one mode and B·T in the other).
    func testEveryPositionBackwardAtTheLastPositionsEqualsTheUserVectorBackward() {
        var cfg = SASRecConfig(itemCount: 11)
        cfg.maxLength = 6; cfg.dim = 8; cfg.heads = 2; cfg.blocks = 2; cfg.inner = 12; cfg.initStd = 0.3; cfg.seed = 7
        cfg.hiddenDropout = 0; cfg.attentionDropout = 0
        var gru = GRU4RecConfig(itemCount: 11)
        gru.maxLength = 6; gru.embedding = 8; gru.hidden = 5; gru.layers = 2; gru.embeddingDropout = 0; gru.seed = 7
        for (last, every) in [(SASRec(cfg), SASRec(cfg)) as (Backbone, Backbone), (GRU4Rec(gru), GRU4Rec(gru))] {
            checkEveryPositionBackward(last: last, every: every)
        }
    }

    private func checkEveryPositionBackward(last: Backbone, every: Backbone) {
        let B = 3, T = 6, C = 8
        let items: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 9, 10, 11, 0, 0, 0]
        let lengths: [Int32] = [6, 2, 3]
        var rng = RNG(seed: 3)
        let dUser = Buf(random: B * C, rng: &rng), dz = Buf(B * T * C)
        for b in 0..<B { for c in 0..<C { dz[(b * T + Int(lengths[b]) - 1) * C + c] = dUser[b * C + c] } }
        items.withUnsafeBufferPointer { it in lengths.withUnsafeBufferPointer { ln in
            last.parameters.zeroGrad(); every.parameters.zeroGrad()
            _ = last.forward(items: it.baseAddress!, lengths: ln.baseAddress!, B: B, training: true)
            last.backward(dUser: dUser.p)
            _ = every.forward(items: it.baseAddress!, lengths: ln.baseAddress!, B: B, training: true, readout: .every)
            every.backward(dUser: dz.p)
        } }
        var worst: Float = 0, scale: Float = 0
        for i in 0..<last.parameters.count {
            worst = max(worst, abs(last.parameters.grads[i] - every.parameters.grads[i])); scale = max(scale, abs(last.parameters.grads[i]))
        }
        XCTAssertGreaterThan(scale, 0, last.name)
        XCTAssertLessThan(worst, 1e-5 * scale, last.name)
    }
}
