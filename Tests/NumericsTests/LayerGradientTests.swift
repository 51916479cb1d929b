import WinnowTestSupport
import XCTest
@testable import Numerics

/// Every layer's backward against central finite differences: f = Σ c ⊙ out for random c, so the
/// analytic gradient is backward(dout = c).
final class LayerGradientTests: XCTestCase {
    override func setUp() { Threads.set(1) }

    func testEmbeddingBackwardScattersAndSkipsPadding() {
        var rng = RNG(seed: 1)
        let V = 6, C = 4, N = 7
        let ids = IntBuf([1, 3, 0, 3, 5, 0, 2])
        let table = Buf(random: V * C, rng: &rng), out = Buf(N * C), c = Buf(random: N * C, rng: &rng), dtable = Buf(V * C)
        embeddingForward(out: out.p, ids: ids.p, table: table.p, N: N, C: C)
        embeddingBackward(dtable: dtable.p, dout: c.p, ids: ids.p, N: N, C: C)
        for k in 0..<C { XCTAssertEqual(dtable[k], 0, "padding row gets no gradient") }
        XCTAssertEqual(dtable[3 * C], c[1 * C] + c[3 * C], accuracy: 1e-6)
        let f = { embeddingForward(out: out.p, ids: ids.p, table: table.p, N: N, C: C); return out.dot(c) }
        // the padding row's true derivative is non-zero, so check only rows 1...
        assertGradient(GradientCheck.check("dtable", x: table.p + C, analytic: dtable.p + C, count: (V - 1) * C, f: f))
    }

    func testLinearBackward() {
        var rng = RNG(seed: 2)
        let N = 5, C = 4, OC = 3
        let inp = Buf(random: N * C, rng: &rng), w = Buf(random: OC * C, rng: &rng), b = Buf(random: OC, rng: &rng)
        let out = Buf(N * OC), c = Buf(random: N * OC, rng: &rng)
        let dinp = Buf(N * C), dw = Buf(OC * C), db = Buf(OC)
        let f = { linearForward(out: out.p, inp: inp.p, weight: w.p, bias: b.p, N: N, C: C, OC: OC); return out.dot(c) }
        _ = f()
        linearBackward(dinp: dinp.p, dweight: dw.p, dbias: db.p, dout: c.p, inp: inp.p, weight: w.p, N: N, C: C, OC: OC)
        assertGradient(GradientCheck.check("dinp", x: inp.p, analytic: dinp.p, count: N * C, f: f))
        assertGradient(GradientCheck.check("dweight", x: w.p, analytic: dw.p, count: OC * C, f: f))
        assertGradient(GradientCheck.check("dbias", x: b.p, analytic: db.p, count: OC, f: f))
    }

    func testCheckerFailsOnDeliberatelyBrokenBackward() {
        var rng = RNG(seed: 3)
        let N = 5, C = 4, OC = 3
        let inp = Buf(random: N * C, rng: &rng), w = Buf(random: OC * C, rng: &rng)
        let out = Buf(N * OC), c = Buf(random: N * OC, rng: &rng), dw = Buf(OC * C)
        let f = { linearForward(out: out.p, inp: inp.p, weight: w.p, bias: nil, N: N, C: C, OC: OC); return out.dot(c) }
        linearBackward(dinp: nil, dweight: dw.p, dbias: nil, dout: c.p, inp: inp.p, weight: w.p, N: N, C: C, OC: OC)
        XCTAssertTrue(GradientCheck.check("dweight", x: w.p, analytic: dw.p, count: OC * C, f: f).passed)
        // broken backward 1: one entry off by 5 %
        dw[2] *= 1.05
        XCTAssertFalse(GradientCheck.check("dweight", x: w.p, analytic: dw.p, count: OC * C, f: f).passed)
        dw[2] /= 1.05
        // broken backward 2: the transposed product (doutᵀ · inp computed as inpᵀ-shaped garbage)
        dw.zero()
        sgemm(transA: true, M: OC, N: C, K: N, A: c.p, lda: OC, B: inp.p, ldb: C, beta: 1, C: dw.p, ldc: C)
        for i in 0..<OC * C { dw[i] *= 0.98 }   // a 2 % scale error everywhere must also fail
        XCTAssertFalse(GradientCheck.check("dweight", x: w.p, analytic: dw.p, count: OC * C, f: f).passed)
    }

    func testLayerNormBackward() {
        var rng = RNG(seed: 4)
        let N = 4, C = 8
        let inp = Buf(random: N * C, rng: &rng), w = Buf(random: C, rng: &rng), b = Buf(random: C, rng: &rng)
        let out = Buf(N * C), mean = Buf(N), rstd = Buf(N), c = Buf(random: N * C, rng: &rng)
        let dinp = Buf(N * C), dw = Buf(C), db = Buf(C)
        let f = { layerNormForward(out: out.p, mean: mean.p, rstd: rstd.p, inp: inp.p, weight: w.p, bias: b.p, N: N, C: C, eps: 1e-12); return out.dot(c) }
        _ = f()
        layerNormBackward(dinp: dinp.p, dweight: dw.p, dbias: db.p, dout: c.p, inp: inp.p, weight: w.p, mean: mean.p, rstd: rstd.p, N: N, C: C)
        assertGradient(GradientCheck.check("dinp", x: inp.p, analytic: dinp.p, count: N * C, eps: 1e-3, f: f))
        assertGradient(GradientCheck.check("dweight", x: w.p, analytic: dw.p, count: C, f: f))
        assertGradient(GradientCheck.check("dbias", x: b.p, analytic: db.p, count: C, f: f))
    }

    func testDropoutBackwardAndSeededMask() {
        var rng = RNG(seed: 5)
        let n = 64
        let inp = Buf(random: n, rng: &rng), out = Buf(n), mask = Buf(n), c = Buf(random: n, rng: &rng), dinp = Buf(n)
        let f = { () -> Double in var r = RNG(seed: 77); dropoutForward(out: out.p, mask: mask.p, inp: inp.p, p: 0.4, n: n, rng: &r); return out.dot(c) }
        _ = f()
        let kept = (0..<n).filter { mask[$0] != 0 }.count
        XCTAssertTrue(kept > 20 && kept < 60, "about 60 % kept, got \(kept)")
        for i in 0..<n where mask[i] != 0 { XCTAssertEqual(mask[i], 1 / 0.6, accuracy: 1e-6) }
        dropoutBackward(dinp: dinp.p, dout: c.p, mask: mask.p, n: n)
        assertGradient(GradientCheck.check("dinp", x: inp.p, analytic: dinp.p, count: n, f: f))
    }

    func testDropoutMaskIsIndependentOfThreadCount() {
        let n = 50_000
        let inp = Buf(n, fill: 1)
        func mask(_ threads: Int) -> [Float] {
            Threads.set(threads)
            let out = Buf(n), m = Buf(n)
            var r = RNG(seed: 5)
            dropoutForward(out: out.p, mask: m.p, inp: inp.p, p: 0.3, n: n, rng: &r)
            return Array(UnsafeBufferPointer(start: m.p, count: n))
        }
        let a = mask(1), b = mask(2)
        Threads.set(1)
        XCTAssertEqual(a, b)
        XCTAssertEqual(Double(a.filter { $0 == 0 }.count) / Double(n), 0.3, accuracy: 0.01)
    }

    func testActivationBackwards() {
        var rng = RNG(seed: 6)
        let n = 40, C = 4
        let inp = Buf(random: n, rng: &rng), out = Buf(n), c = Buf(random: n, rng: &rng)
        for i in 0..<n where abs(inp[i]) < 0.05 { inp[i] = 0.3 }   // keep ReLU/PReLU away from the kink
        let d = Buf(n)
        let fr = { reluForward(out: out.p, inp: inp.p, n: n); return out.dot(c) }
        reluBackward(dinp: d.p, dout: c.p, inp: inp.p, n: n)
        assertGradient(GradientCheck.check("relu", x: inp.p, analytic: d.p, count: n, eps: 1e-3, f: fr))
        d.zero()
        let fg = { geluForward(out: out.p, inp: inp.p, n: n); return out.dot(c) }
        geluBackward(dinp: d.p, dout: c.p, inp: inp.p, n: n)
        assertGradient(GradientCheck.check("gelu", x: inp.p, analytic: d.p, count: n, f: fg))
        let cdf = Buf(n), d2 = Buf(n), out2 = Buf(n)
        geluForward(out: out.p, inp: inp.p, n: n)
        geluForward(out: out2.p, inp: inp.p, cdf: cdf.p, n: n)
        geluBackward(dinp: d2.p, dout: c.p, inp: inp.p, cdf: cdf.p, n: n)
        for i in 0..<n { XCTAssertEqual(out2[i], out[i]); XCTAssertEqual(d2[i], d[i], accuracy: 1e-6) }
        d.zero()
        let alpha = Buf(random: C, rng: &rng), dalpha = Buf(C)
        let fp = { preluForward(out: out.p, inp: inp.p, alpha: alpha.p, N: n / C, C: C); return out.dot(c) }
        preluBackward(dinp: d.p, dalpha: dalpha.p, dout: c.p, inp: inp.p, alpha: alpha.p, N: n / C, C: C)
        assertGradient(GradientCheck.check("prelu dinp", x: inp.p, analytic: d.p, count: n, eps: 1e-3, f: fp))
        assertGradient(GradientCheck.check("prelu dalpha", x: alpha.p, analytic: dalpha.p, count: C, f: fp))
    }

    func testSoftmaxBackward() {
        var rng = RNG(seed: 7)
        let N = 3, V = 7
        let inp = Buf(random: N * V, rng: &rng), out = Buf(N * V), c = Buf(random: N * V, rng: &rng), d = Buf(N * V)
        let f = { softmaxForward(out: out.p, inp: inp.p, N: N, V: V); return out.dot(c) }
        _ = f()
        for n in 0..<N { XCTAssertEqual((0..<V).reduce(Float(0)) { $0 + out[n * V + $1] }, 1, accuracy: 1e-5) }
        softmaxBackward(dinp: d.p, dout: c.p, out: out.p, N: N, V: V)
        assertGradient(GradientCheck.check("softmax", x: inp.p, analytic: d.p, count: N * V, f: f))
    }

    func testCausalAttentionBackwardWithPaddingAndDropout() {
        var rng = RNG(seed: 8)
        let B = 2, T = 5, C = 6, H = 2
        let qkv = Buf(random: B * T * 3 * C, rng: &rng), out = Buf(B * T * C)
        let att = Buf(B * H * T * T), attD = Buf(B * H * T * T), c = Buf(random: B * T * C, rng: &rng), d = Buf(B * T * 3 * C)
        // sequence 0: right-padded, length 3; sequence 1: a padding hole at position 1, full rows
        let ids = IntBuf([4, 2, 7, 0, 0, 3, 0, 5, 1, 2]), rows = IntBuf([3, 5])
        for p: Float in [0, 0.3] {
            d.zero()
            let f = { () -> Double in
                attentionForward(out: out.p, att: att.p, attDrop: attD.p, qkv: qkv.p, ids: ids.p, rows: rows.p, dropout: p, seed: 99, B: B, T: T, C: C, H: H)
                return out.dot(c)
            }
            _ = f()
            // causality and padding: row i of sequence 0 never weighs keys > i or padding keys
            for h in 0..<H { for i in 0..<T { for j in 0..<T where j > i || (ids.p[T + j] == 0) {
                XCTAssertEqual(att[((1 * H + h) * T + i) * T + j], 0)
            } } }
            for k in 3 * C..<T * C { XCTAssertEqual(out[k], 0, "padding query rows output 0") }
            attentionBackward(dqkv: d.p, dout: c.p, qkv: qkv.p, att: att.p, attDrop: attD.p, ids: ids.p, rows: rows.p, dropout: p, B: B, T: T, C: C, H: H)
            assertGradient(GradientCheck.check("dqkv p=\(p)", x: qkv.p, analytic: d.p, count: B * T * 3 * C, eps: 1e-3, tolerance: 2e-2, maxEntries: 400, f: f))
        }
    }

    func testAttentionIsIndependentOfThreadCount() {
        var rng = RNG(seed: 9)
        let B = 8, T = 6, C = 8, H = 2
        let qkv = Buf(random: B * T * 3 * C, rng: &rng)
        let ids = IntBuf((0..<(B * T)).map { Int32(($0 % T) < 4 ? 1 : 0) })
        func run(_ threads: Int) -> [Float] {
            Threads.set(threads)
            let out = Buf(B * T * C), att = Buf(B * H * T * T), attD = Buf(B * H * T * T)
            attentionForward(out: out.p, att: att.p, attDrop: attD.p, qkv: qkv.p, ids: ids.p, rows: nil, dropout: 0.5, seed: 3, B: B, T: T, C: C, H: H)
            return Array(UnsafeBufferPointer(start: out.p, count: out.n))
        }
        XCTAssertEqual(run(1), run(2))
        Threads.set(1)
    }

    func testGRUBackward() {
        var rng = RNG(seed: 10)
        let B = 3, T = 4, I = 3, H = 5, steps = 4
        let inp = Buf(random: B * T * I, rng: &rng, scale: 0.8)
        let wih = Buf(random: 3 * H * I, rng: &rng, scale: 0.5), whh = Buf(random: 3 * H * H, rng: &rng, scale: 0.5)
        let bih = Buf(random: 3 * H, rng: &rng, scale: 0.3), bhh = Buf(random: 3 * H, rng: &rng, scale: 0.3)
        let out = Buf(B * T * H), gates = Buf(B * T * 3 * H), gh = Buf(B * T * 3 * H), c = Buf(random: B * T * H, rng: &rng)
        let dinp = Buf(B * T * I), dwih = Buf(3 * H * I), dwhh = Buf(3 * H * H), dbih = Buf(3 * H), dbhh = Buf(3 * H)
        let dgi = Buf(B * T * 3 * H), dgh = Buf(B * T * 3 * H), dh = Buf(B * H), sums = Buf(gruBiasSumsCount(B: B, H: H))
        let f = { () -> Double in
            gruForward(out: out.p, gates: gates.p, gh: gh.p, inp: inp.p, wih: wih.p, whh: whh.p, bih: bih.p, bhh: bhh.p, steps: steps, B: B, T: T, I: I, H: H)
            return out.dot(c)
        }
        _ = f()
        gruBackward(dinp: dinp.p, dwih: dwih.p, dwhh: dwhh.p, dbih: dbih.p, dbhh: dbhh.p, dout: c.p, inp: inp.p, out: out.p,
                    gates: gates.p, gh: gh.p, wih: wih.p, whh: whh.p, dgi: dgi.p, dgh: dgh.p, dh: dh.p, biasSums: sums.p,
                    steps: steps, B: B, T: T, I: I, H: H)
        assertGradient(GradientCheck.check("dinp", x: inp.p, analytic: dinp.p, count: inp.n, f: f))
        assertGradient(GradientCheck.check("dwih", x: wih.p, analytic: dwih.p, count: wih.n, f: f))
        assertGradient(GradientCheck.check("dwhh", x: whh.p, analytic: dwhh.p, count: whh.n, f: f))
        assertGradient(GradientCheck.check("dbih", x: bih.p, analytic: dbih.p, count: bih.n, f: f))
        assertGradient(GradientCheck.check("dbhh", x: bhh.p, analytic: dbhh.p, count: bhh.n, f: f))
    }

    /// The time-major GRU with batch chunks per thread, vector gates and one W_hh product over all
    /// steps equals the straightforward batch-first step-by-step version (below), with and without biases, with
    /// fewer steps than positions, H not a multiple of 8, one or two threads, and with rows that
    /// stop at their own lengths (outputs compared where a row runs; every gradient, since the
    /// positions a row skips get no gradient in either).
    func testGRUEqualsStepByStepReference() {
        var rng = RNG(seed: 12)
        let B = 40, T = 6, I = 5, H = 11, steps = 5, H3 = 3 * H
        let inp = Buf(random: B * T * I, rng: &rng, scale: 0.8)
        let wih = Buf(random: H3 * I, rng: &rng, scale: 0.5), whh = Buf(random: H3 * H, rng: &rng, scale: 0.5)
        let bih = Buf(random: H3, rng: &rng, scale: 0.3), bhh = Buf(random: H3, rng: &rng, scale: 0.3)
        // non-increasing over the whole batch, so in every chunk for any thread count; 1...steps
        let rowLengths: [Int32] = (0..<B).map { Int32(steps - $0 * steps / B) }
        let inpTM = Buf(B * T * I)
        swapLeadingAxes(out: inpTM.p, inp: inp.p, rows: B, cols: T, block: I)
        for withLengths in [false, true] {
            let dout = Buf(random: B * T * H, rng: &rng)
            for b in 0..<B {
                let end = withLengths ? Int(rowLengths[b]) : steps
                for t in end..<T { for j in 0..<H { dout[(b * T + t) * H + j] = 0 } }
            }
            let doutTM = Buf(B * T * H)
            swapLeadingAxes(out: doutTM.p, inp: dout.p, rows: B, cols: T, block: H)
            for withBias in [true, false] {
                let rOut = Buf(B * T * H), rGates = Buf(B * T * H3), rGh = Buf(B * T * H3)
                let rDinp = Buf(B * T * I), rDwih = Buf(H3 * I), rDwhh = Buf(H3 * H), rDbih = Buf(H3), rDbhh = Buf(H3)
                let rDgi = Buf(B * T * H3), rDgh = Buf(B * H3), rDh = Buf(B * H)
                Threads.set(1)
                referenceGRUForward(out: rOut.p, gates: rGates.p, gh: rGh.p, inp: inp.p, wih: wih.p, whh: whh.p,
                                    bih: withBias ? bih.p : nil, bhh: withBias ? bhh.p : nil, steps: steps, B: B, T: T, I: I, H: H)
                referenceGRUBackward(dinp: rDinp.p, dwih: rDwih.p, dwhh: rDwhh.p, dbih: withBias ? rDbih.p : nil, dbhh: withBias ? rDbhh.p : nil,
                                     dout: dout.p, inp: inp.p, out: rOut.p, gates: rGates.p, gh: rGh.p, wih: wih.p, whh: whh.p,
                                     dgi: rDgi.p, dgh: rDgh.p, dh: rDh.p, steps: steps, B: B, T: T, I: I, H: H)
                for threads in [1, 2] {
                    Threads.set(threads)
                    let out = Buf(B * T * H, fill: 7), gates = Buf(B * T * H3), gh = Buf(B * T * H3)
                    let dinp = Buf(B * T * I), dwih = Buf(H3 * I), dwhh = Buf(H3 * H), dbih = Buf(H3), dbhh = Buf(H3)
                    let dgi = Buf(B * T * H3, fill: 5), dgh = Buf(B * T * H3, fill: 5), dh = Buf(B * H, fill: 5)
                    let sums = Buf(gruBiasSumsCount(B: B, H: H), fill: 5)
                    rowLengths.withUnsafeBufferPointer { rl in
                        let lengths = withLengths ? rl.baseAddress! : nil
                        gruForward(out: out.p, gates: gates.p, gh: gh.p, inp: inpTM.p, wih: wih.p, whh: whh.p,
                                   bih: withBias ? bih.p : nil, bhh: withBias ? bhh.p : nil, steps: steps, lengths: lengths,
                                   B: B, T: T, I: I, H: H)
                        gruBackward(dinp: dinp.p, dwih: dwih.p, dwhh: dwhh.p, dbih: withBias ? dbih.p : nil, dbhh: withBias ? dbhh.p : nil,
                                    dout: doutTM.p, inp: inpTM.p, out: out.p, gates: gates.p, gh: gh.p, wih: wih.p, whh: whh.p,
                                    dgi: dgi.p, dgh: dgh.p, dh: dh.p, biasSums: sums.p, steps: steps, lengths: lengths,
                                    B: B, T: T, I: I, H: H)
                    }
                    let label = "bias \(withBias), lengths \(withLengths), \(threads) threads"
                    for b in 0..<B {
                        let end = withLengths ? Int(rowLengths[b]) : steps
                        for t in 0..<T {
                            for j in 0..<H {
                                let i = (b * T + t) * H + j
                                XCTAssertEqual(out[(t * B + b) * H + j], t < end ? rOut[i] : 0, accuracy: 2e-6, "out \(i) \(label)")
                            }
                        }
                    }
                    let dinpBT = Buf(B * T * I)
                    swapLeadingAxes(out: dinpBT.p, inp: dinp.p, rows: T, cols: B, block: I)
                    for i in 0..<dinp.n { XCTAssertEqual(dinpBT[i], rDinp[i], accuracy: 2e-5, "dinp \(i) \(label)") }
                    for i in 0..<dwih.n { XCTAssertEqual(dwih[i], rDwih[i], accuracy: 1e-4, "dwih \(i) \(label)") }
                    for i in 0..<dwhh.n { XCTAssertEqual(dwhh[i], rDwhh[i], accuracy: 1e-4, "dwhh \(i) \(label)") }
                    for i in 0..<H3 { XCTAssertEqual(dbih[i], rDbih[i], accuracy: 1e-4, "dbih \(i) \(label)") }
                    for i in 0..<H3 { XCTAssertEqual(dbhh[i], rDbhh[i], accuracy: 1e-4, "dbhh \(i) \(label)") }
                }
            }
        }
        Threads.set(1)
    }

    /// GRUBatchOrder: a permutation; lengths non-increasing within each chunk; long rows dealt
    /// evenly over the chunks.
    func testGRUBatchOrderSortsEachChunkAndDealsEvenly() {
        var rng = RNG(seed: 4)
        for (threads, B) in [(1, 37), (2, 37), (2, 256), (3, 100), (2, 20)] {
            Threads.set(threads)
            let lengths = (0..<B).map { _ in Int32(1 + rng.below(50)) }
            let order = lengths.withUnsafeBufferPointer { GRUBatchOrder.order(lengths: $0.baseAddress!, B: B) }
            XCTAssertEqual(order.sorted(), Array(0..<B), "a permutation")
            let chunks = Threads.chunks(B, minPerChunk: GRUBatchOrder.minRowsPerChunk)
            var work: [Int] = []
            for c in 0..<chunks {
                let lo = B * c / chunks, hi = B * (c + 1) / chunks
                for p in (lo + 1)..<hi { XCTAssertLessThanOrEqual(lengths[order[p]], lengths[order[p - 1]], "chunk \(c)") }
                work.append((lo..<hi).map { Int(lengths[order[$0]]) }.reduce(0, +))
            }
            if chunks > 1 {
                XCTAssertLessThan(Double(work.max()! - work.min()!), 0.1 * Double(work.reduce(0, +)) / Double(chunks) + 50,
                                  "threads get about equal work: \(work)")
            }
        }
        Threads.set(1)
    }
}

// The step-by-step GRU the Numerics one is checked against: every step's recurrent product
// over the whole batch, scalar gates, W_hh's gradient accumulated one step at a time.
func referenceGRUForward(out: Floats, gates: Floats, gh: Floats, inp: UnsafePointer<Float>,
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
func referenceGRUBackward(dinp: Floats?, dwih: Floats, dwhh: Floats, dbih: Floats?, dbhh: Floats?,
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
