import WinnowTestSupport
import XCTest
import Kernels
@testable import Numerics

/// Loss gradients against finite differences of the returned weighted total.
final class LossGradientTests: XCTestCase {
    override func setUp() { Threads.set(1) }

    func testSoftmaxCrossEntropyWithWeightsAndSkippedRow() {
        var rng = RNG(seed: 11)
        let B = 4, V = 9
        let logits = Buf(random: B * V, rng: &rng), d = Buf(B * V), losses = Buf(B)
        let targets = IntBuf([2, 0, -1, 8]), w = Buf(B)
        for b in 0..<B { w[b] = 0.5 + Float(b) }
        let f = { softmaxCrossEntropy(losses: losses.p, dlogits: nil, logits: logits.p, targets: targets.p, weights: w.p, scale: 0.25, B: B, V: V) }
        let total = softmaxCrossEntropy(losses: losses.p, dlogits: d.p, logits: logits.p, targets: targets.p, weights: w.p, scale: 0.25, B: B, V: V)
        XCTAssertEqual(losses[2], 0)
        // per-example loss is −log softmax at the target
        var m: Float = -.infinity; for j in 0..<V { m = max(m, logits[j]) }
        var s: Float = 0; for j in 0..<V { s += expf(logits[j] - m) }
        XCTAssertEqual(losses[0], m + logf(s) - logits[2], accuracy: 1e-5)
        XCTAssertEqual(total, f(), accuracy: 1e-9)
        assertGradient(GradientCheck.check("dlogits", x: logits.p, analytic: d.p, count: B * V, f: f))
        // accumulate adds to what is there
        let d2 = Buf(B * V, fill: 1)
        softmaxCrossEntropy(losses: losses.p, dlogits: d2.p, logits: logits.p, targets: targets.p, weights: w.p, scale: 0.25, accumulate: true, B: B, V: V)
        for i in 0..<B * V { XCTAssertEqual(d2[i], d[i] + 1, accuracy: 1e-6) }
    }

    /// The tiled, fused cross-entropy against a table equals scores = user · tableᵀ, then
    /// softmaxCrossEntropy, then both products over the whole table — with weights, a skipped
    /// row, a last tile shorter than the others, and one or two threads.
    func testTableSoftmaxCrossEntropyEqualsUnfusedComposition() {
        var rng = RNG(seed: 21)
        let B = 5, N = 75, C = 12, tile = 16
        let user = Buf(random: B * C, rng: &rng), table = Buf(random: N * C, rng: &rng, scale: 0.7)
        let targets = IntBuf([3, 74, -1, 0, 40]), w = Buf(B)
        for b in 0..<B { w[b] = 0.5 + Float(b) }
        // unfused reference
        let refScores = Buf(B * N), refLosses = Buf(B), refDUser = Buf(B * C), refDTable = Buf(N * C, fill: 0.25)
        sgemm(transB: true, M: B, N: N, K: C, A: user.p, lda: C, B: table.p, ldb: C, C: refScores.p, ldc: N)
        let refTotal = softmaxCrossEntropy(losses: refLosses.p, dlogits: refScores.p, logits: refScores.p, targets: targets.p,
                                           weights: w.p, scale: 0.2, B: B, V: N)
        sgemm(M: B, N: C, K: N, A: refScores.p, lda: N, B: table.p, ldb: C, C: refDUser.p, ldc: C)
        sgemm(transA: true, M: N, N: C, K: B, A: refScores.p, lda: N, B: user.p, ldb: C, beta: 1, C: refDTable.p, ldc: C)
        for threads in [1, 2] {
            Threads.set(threads)
            let scores = Buf(B * N), losses = Buf(B), dUser = Buf(B * C, fill: 9), dTable = Buf(N * C, fill: 0.25)
            let scratch = Buf(tableSoftmaxScratchCount(B: B, N: N, tile: tile))
            let total = tableSoftmaxCrossEntropy(losses: losses.p, scores: scores.p, dUser: dUser.p, dTable: dTable.p,
                                                 user: user.p, table: table.p, targets: targets.p, weights: w.p, scale: 0.2,
                                                 scratch: scratch.p, B: B, N: N, C: C, tile: tile)
            XCTAssertEqual(total, refTotal, accuracy: 1e-5)
            XCTAssertEqual(losses[2], 0)
            for b in 0..<B { XCTAssertEqual(losses[b], refLosses[b], accuracy: 1e-5, "loss \(b)") }
            for i in 0..<(B * N) { XCTAssertEqual(scores[i], refScores[i], accuracy: 1e-6, "dscores \(i)") }
            for i in 0..<(B * C) { XCTAssertEqual(dUser[i], refDUser[i], accuracy: 1e-5, "dUser \(i)") }
            for i in 0..<(N * C) { XCTAssertEqual(dTable[i], refDTable[i], accuracy: 1e-5, "dTable \(i)") }
        }
        Threads.set(1)
    }

    func testMultiPositiveCrossEntropy() {
        var rng = RNG(seed: 12)
        let B = 3, V = 8
        let logits = Buf(random: B * V, rng: &rng), d = Buf(B * V), losses = Buf(B)
        let offsets = IntBuf([0, 2, 2, 5]), cols = IntBuf([1, 4, 0, 3, 7])
        let f = { multiPositiveCrossEntropy(losses: losses.p, dlogits: nil, logits: logits.p, offsets: offsets.p, cols: cols.p, weights: nil, scale: 1, B: B, V: V) }
        multiPositiveCrossEntropy(losses: losses.p, dlogits: d.p, logits: logits.p, offsets: offsets.p, cols: cols.p, weights: nil, scale: 1, B: B, V: V)
        XCTAssertEqual(losses[1], 0)
        assertGradient(GradientCheck.check("dlogits", x: logits.p, analytic: d.p, count: B * V, f: f))
    }

    func testKLBothDirections() {
        var rng = RNG(seed: 13)
        let B = 3, V = 6
        let logits = Buf(random: B * V, rng: &rng), target = Buf(random: B * V, rng: &rng), losses = Buf(B)
        softmaxForward(out: target.p, inp: target.p, N: B, V: V)
        for dir in KLDirection.allCases {
            let d = Buf(B * V)
            let f = { softmaxKL(losses: losses.p, dlogits: nil, logits: logits.p, target: target.p, direction: dir, weights: nil, scale: 0.5, B: B, V: V) }
            softmaxKL(losses: losses.p, dlogits: d.p, logits: logits.p, target: target.p, direction: dir, weights: nil, scale: 0.5, B: B, V: V)
            for b in 0..<B { XCTAssertGreaterThanOrEqual(losses[b], -1e-6) }
            assertGradient(GradientCheck.check("KL \(dir)", x: logits.p, analytic: d.p, count: B * V, eps: 3e-3, f: f))
        }
        // KL of a distribution to itself is 0
        let same = Buf(B * V); same.p.update(from: target.p, count: B * V)
        for i in 0..<B * V { same[i] = logf(same[i]) }
        softmaxKL(losses: losses.p, dlogits: nil, logits: same.p, target: target.p, direction: .targetToModel, weights: nil, scale: 1, B: B, V: V)
        for b in 0..<B { XCTAssertEqual(losses[b], 0, accuracy: 1e-5) }
    }

    func testBinaryCrossEntropyWithNegatives() {
        var rng = RNG(seed: 14)
        let B = 3, n = 4
        let pos = Buf(random: B, rng: &rng), neg = Buf(random: B * n, rng: &rng), mask = Buf(B * n, fill: 1)
        mask[5] = 0
        let dpos = Buf(B), dneg = Buf(B * n), losses = Buf(B)
        let f = { binaryCrossEntropyWithNegatives(losses: losses.p, dpos: nil, dneg: nil, pos: pos.p, neg: neg.p, negMask: mask.p, weights: nil, scale: 1, B: B, n: n) }
        binaryCrossEntropyWithNegatives(losses: losses.p, dpos: dpos.p, dneg: dneg.p, pos: pos.p, neg: neg.p, negMask: mask.p, weights: nil, scale: 1, B: B, n: n)
        XCTAssertEqual(dneg[5], 0)
        assertGradient(GradientCheck.check("dpos", x: pos.p, analytic: dpos.p, count: B, f: f))
        assertGradient(GradientCheck.check("dneg", x: neg.p, analytic: dneg.p, count: B * n, f: f))
    }

    func testSampledSoftmaxWithLogQAndAccidentalHits() {
        var rng = RNG(seed: 15)
        let B = 3, S = 5
        let logits = Buf(random: B * (S + 1), rng: &rng), d = Buf(B * (S + 1)), losses = Buf(B)
        let pos = IntBuf([3, 9, 4]), negs = IntBuf([1, 9, 2, 7, 8])
        let lqp = Buf(random: B, rng: &rng), lqn = Buf(random: S, rng: &rng)
        let f = { sampledSoftmaxCrossEntropy(losses: losses.p, dlogits: nil, logits: logits.p, posItems: pos.p, negItems: negs.p, logQPos: lqp.p, logQNeg: lqn.p, weights: nil, scale: 1, B: B, S: S) }
        sampledSoftmaxCrossEntropy(losses: losses.p, dlogits: d.p, logits: logits.p, posItems: pos.p, negItems: negs.p, logQPos: lqp.p, logQNeg: lqn.p, weights: nil, scale: 1, B: B, S: S)
        XCTAssertEqual(d[1 * (S + 1) + 2], 0, "the negative equal to row 1's positive is masked")
        assertGradient(GradientCheck.check("dlogits", x: logits.p, analytic: d.p, count: B * (S + 1), f: f))
    }

    func testNegativeSamplerProposals() {
        var rng = RNG(seed: 16)
        let N = 10
        let counts = [0] + (1...N).map { $0 == 1 ? 1000 : 1 }
        let pop = NegativeSampler(itemCount: N, proposal: .popularity, counts: counts)
        let items = IntBuf([Int32](repeating: 0, count: 2000))
        pop.sample(items: items.p, logQ: nil, S: 2000, rng: &rng)
        let ones = (0..<2000).filter { items.p[$0] == 1 }.count
        XCTAssertGreaterThan(ones, 1800)
        XCTAssertTrue((0..<2000).allSatisfy { items.p[$0] >= 1 && items.p[$0] <= Int32(N) })
        let uni = NegativeSampler(itemCount: N, proposal: .uniform)
        XCTAssertEqual(uni.logQ(3, S: 100), logf(100.0 / 10.0), accuracy: 1e-5)
        XCTAssertEqual(pop.logQ(1, S: 1), logf(1001.0 / 1019.0), accuracy: 1e-5)
    }

    func testInBatchSoftmax() {
        var rng = RNG(seed: 17)
        let B = 4, C = 3
        let a = Buf(random: B * C, rng: &rng), bm = Buf(random: B * C, rng: &rng), da = Buf(B * C), db = Buf(B * C)
        let scores = Buf(B * B), losses = Buf(B)
        let f = { inBatchSoftmax(losses: losses.p, da: nil, db: nil, a: a.p, bm: bm.p, scores: scores.p, temperature: 0.7, weights: nil, scale: 1, B: B, C: C) }
        inBatchSoftmax(losses: losses.p, da: da.p, db: db.p, a: a.p, bm: bm.p, scores: scores.p, temperature: 0.7, weights: nil, scale: 1, B: B, C: C)
        assertGradient(GradientCheck.check("da", x: a.p, analytic: da.p, count: B * C, f: f))
        assertGradient(GradientCheck.check("db", x: bm.p, analytic: db.p, count: B * C, f: f))
    }
}

final class VectorMathTests: XCTestCase {
    /// The Cephes steps one lane at a time with libm's floor and a float → int conversion: the
    /// vector exp8 (selects and the 1.5 · 2²³ trick instead) must give the same bits.
    func testExp8EqualsLaneWiseCephesBitForBit() {
        func cephes(_ x: Float) -> Float {
            if x < -87.3 { return 0 }
            let xc = min(max(x, -87.3), 88.3)
            let fx = floorf(xc * 1.44269504088896341 + 0.5)
            var r = xc - fx * 0.693359375
            r = r - fx * -2.12194440e-4
            let z = r * r
            var y: Float = 1.9875691500e-4
            y = y * r + 1.3981999507e-3
            y = y * r + 8.3334519073e-3
            y = y * r + 4.1665795894e-2
            y = y * r + 1.6666665459e-1
            y = y * r + 5.0000001201e-1
            y = y * z + r + 1
            return y * Float(bitPattern: UInt32(Int32(fx) + 127) << 23)
        }
        var rng = RNG(seed: 3)
        var xs: [Float] = [-.infinity, -100, -87.3, -87.29, -0.5, 0, 0.5, 1, 88.3, 100, .infinity]
        for k in -200...200 { xs.append(Float(k) * 0.34657359) }   // near the ties of x · log2 e + 0.5
        for _ in 0..<20_000 { xs.append(rng.normal() * 30) }
        while xs.count % 8 != 0 { xs.append(0) }
        for i in stride(from: 0, to: xs.count, by: 8) {
            var v = SIMD8<Float>()
            for l in 0..<8 { v[l] = xs[i + l] }
            let e = expLanes(v)
            for l in 0..<8 { XCTAssertEqual(e[l].bitPattern, cephes(v[l]).bitPattern, "exp(\(v[l]))") }
        }
    }

    func testExp8MatchesLibmWithinTwoUlpAndUnderflowsToZero() {
        var x: Float = -87
        while x < 88 {
            var v = SIMD8<Float>()
            for l in 0..<8 { v[l] = x + Float(l) * 0.013 }
            let e = expLanes(v)
            for l in 0..<8 {
                let ref = expf(v[l])
                XCTAssertEqual(e[l], ref, accuracy: max(ref.ulp * 2, Float.leastNormalMagnitude), "exp(\(v[l]))")
            }
            x += 0.37
        }
        let z = expLanes(SIMD8<Float>(-.infinity, -100, -88, 0, 1, -1, 2, -2))
        XCTAssertEqual(z[0], 0); XCTAssertEqual(z[1], 0); XCTAssertEqual(z[2], 0); XCTAssertEqual(z[3], 1)
        let xs: [Float] = (0..<19).map { Float($0) * 0.7 - 5 }
        xs.withUnsafeBufferPointer { p in
            XCTAssertEqual(maxElement(p.baseAddress!, 19), xs.max()!)
            XCTAssertEqual(expShifted(out: nil, p.baseAddress!, shift: 1, 19), xs.reduce(0) { $0 + expf($1 - 1) }, accuracy: 1e-2)
        }
    }
}
