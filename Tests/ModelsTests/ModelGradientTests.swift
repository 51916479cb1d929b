import WinnowTestSupport
import XCTest
import Numerics
@testable import Models

/// End-to-end finite-difference checks: loss = full-softmax CE of the model's user vectors; every
/// parameter tensor's gradient is compared (dropout on, with the generator reset per evaluation).
final class ModelGradientTests: XCTestCase {
    override func setUp() { Threads.set(1) }

    /// Tiny right-padded batch: lengths 4, 2, 3, 1 (T = 4).
    let items: [Int32] = [1, 2, 3, 4, 5, 6, 0, 0, 7, 1, 5, 0, 3, 0, 0, 0]
    let lengths: [Int32] = [4, 2, 3, 1]
    let targets: [Int32] = [5, 7, 2, 6]

    func checkModel(_ model: Backbone, seed: UInt64, eps: Float = 3e-3, file: StaticString = #filePath, line: UInt = #line) {
        let B = lengths.count
        let head = FullSoftmaxHead(itemCount: model.itemCount, dim: model.dim, interests: model.interests)
        let ps = model.parameters
        let analytic = Buf(ps.count)
        items.withUnsafeBufferPointer { it in lengths.withUnsafeBufferPointer { ln in targets.withUnsafeBufferPointer { tg in
            let f = { () -> Double in
                model.rng = RNG(seed: seed)
                let u = model.forward(items: it.baseAddress!, lengths: ln.baseAddress!, B: B, training: true)
                return head.crossEntropy(user: u, table: model.itemTable, tableGrad: nil, targets: tg.baseAddress!, weights: nil, scale: 1 / Float(B), B: B)
            }
            ps.zeroGrad()
            model.rng = RNG(seed: seed)
            let u = model.forward(items: it.baseAddress!, lengths: ln.baseAddress!, B: B, training: true)
            let loss = head.crossEntropy(user: u, table: model.itemTable, tableGrad: model.itemTableGrad, targets: tg.baseAddress!, weights: nil, scale: 1 / Float(B), B: B)
            XCTAssertEqual(loss, f(), accuracy: 1e-6, "forward is reproducible", file: file, line: line)
            model.backward(dUser: head.dUser)
            analytic.p.update(from: ps.grads, count: ps.count)
            for c in 0..<model.dim { XCTAssertEqual(ps.grads[c], 0, "padding row gets no gradient", file: file, line: line) }
            for e in ps.entries {
                let skip = e.name == "item_embedding" ? model.dim : 0   // row 0 (padding) is excluded
                let r = GradientCheck.check("\(model.name) \(e.name)", x: ps.values + e.offset + skip, analytic: analytic.p + e.offset + skip,
                                            count: e.count - skip, eps: eps, tolerance: 2e-2, floorFraction: 0.05, maxEntries: 64, f: f)
                XCTAssertTrue(r.passed, r.description, file: file, line: line)
            }
        } } }
    }

    func testSASRecGradientsEndToEnd() {
        for (hidden, attention) in [(Float(0), Float(0)), (0.2, 0), (0, 0.2), (0.2, 0.2)] {
            var cfg = SASRecConfig(itemCount: 7)
            cfg.maxLength = 4; cfg.dim = 6; cfg.heads = 2; cfg.blocks = 2; cfg.inner = 8
            cfg.hiddenDropout = hidden; cfg.attentionDropout = attention; cfg.initStd = 0.4; cfg.seed = 3
            print("SASRec dropout", hidden, attention)
            checkModel(SASRec(cfg), seed: 11)
        }
    }

    func testGRU4RecGradientsEndToEndTwoLayersWithAndWithoutBias() {
        for bias in [false, true] {
            var cfg = GRU4RecConfig(itemCount: 7)
            cfg.maxLength = 4; cfg.embedding = 5; cfg.hidden = 6; cfg.layers = 2; cfg.embeddingDropout = 0.3
            cfg.gruBias = bias; cfg.seed = 4
            let m = GRU4Rec(cfg)
            if bias { for l in 0..<2 { var r = RNG(seed: 9); Init.normal(m.parameters.value("gru.\(l).bias_ih"), 18, std: 0.3, rng: &r) } }
            checkModel(m, seed: 12, eps: 1e-2)
        }
    }

    func testMultiInterestHeadTakesMaxOverInterestsAndItsGradient() {
        var rng = RNG(seed: 5)
        let B = 3, K = 2, C = 4, N = 6
        let user = Buf(random: B * K * C, rng: &rng), table = Buf(random: (N + 1) * C, rng: &rng), dTable = Buf((N + 1) * C)
        let head = FullSoftmaxHead(itemCount: N, dim: C, interests: K)
        let targets: [Int32] = [1, 6, 3]
        targets.withUnsafeBufferPointer { tg in
            head.scores(user: user.p, table: table.p, B: B)
            for b in 0..<B { for j in 0..<N {
                var best = -Float.infinity
                for k in 0..<K { var s: Float = 0; for c in 0..<C { s += user[(b * K + k) * C + c] * table[(j + 1) * C + c] }; best = max(best, s) }
                XCTAssertEqual(head.logits[b * N + j], best, accuracy: 1e-5)
            } }
            let f = { head.crossEntropy(user: user.p, table: table.p, tableGrad: nil, targets: tg.baseAddress!, weights: nil, scale: 1, B: B) }
            head.crossEntropy(user: user.p, table: table.p, tableGrad: dTable.p, targets: tg.baseAddress!, weights: nil, scale: 1, B: B)
            let dUser = Buf(B * K * C); dUser.p.update(from: head.dUser, count: B * K * C)
            assertGradient(GradientCheck.check("dUser", x: user.p, analytic: dUser.p, count: B * K * C, eps: 1e-3, f: f))
            assertGradient(GradientCheck.check("dTable", x: table.p + C, analytic: dTable.p + C, count: N * C, eps: 1e-3, f: f))
        }
    }

    func testSampledSoftmaxHeadGradient() {
        var rng = RNG(seed: 6)
        let B = 4, C = 3, N = 20, S = 6
        let user = Buf(random: B * C, rng: &rng), table = Buf(random: (N + 1) * C, rng: &rng), dTable = Buf((N + 1) * C)
        let counts = [0] + (1...N).map { $0 * 3 }
        let head = SampledSoftmaxHead(itemCount: N, dim: C, negatives: S, sampler: NegativeSampler(itemCount: N, proposal: .popularity, counts: counts))
        let targets: [Int32] = [3, 17, 20, 1]
        targets.withUnsafeBufferPointer { tg in
            let f = { () -> Double in var r = RNG(seed: 8); return head.crossEntropy(user: user.p, table: table.p, tableGrad: nil, targets: tg.baseAddress!, weights: nil, scale: 0.25, B: B, rng: &r) }
            var r = RNG(seed: 8)
            head.crossEntropy(user: user.p, table: table.p, tableGrad: dTable.p, targets: tg.baseAddress!, weights: nil, scale: 0.25, B: B, rng: &r)
            let dUser = Buf(B * C); dUser.p.update(from: head.dUser, count: B * C)
            assertGradient(GradientCheck.check("dUser", x: user.p, analytic: dUser.p, count: B * C, eps: 1e-3, f: f))
            assertGradient(GradientCheck.check("dTable", x: table.p + C, analytic: dTable.p + C, count: N * C, eps: 1e-3, f: f))
        }
    }

    func testUserVectorIsTheLastRealPositionAndIgnoresPadding() {
        var cfg = SASRecConfig(itemCount: 9)
        cfg.maxLength = 5; cfg.dim = 4; cfg.heads = 2; cfg.inner = 8
        let m = SASRec(cfg)
        // same prefix, different ids after the length: identical user vectors in eval mode
        let a: [Int32] = [3, 4, 5, 0, 0, 3, 4, 5, 0, 0], b: [Int32] = [3, 4, 5, 0, 0, 3, 4, 5, 9, 9]
        let ln: [Int32] = [3, 3]
        func encode(_ x: [Int32]) -> [Float] {
            x.withUnsafeBufferPointer { it in ln.withUnsafeBufferPointer { l in
                Array(UnsafeBufferPointer(start: m.forward(items: it.baseAddress!, lengths: l.baseAddress!, B: 2, training: false), count: 8)) } }
        }
        let ua = encode(a), ub = encode(b)
        XCTAssertEqual(ua, ub)
        XCTAssertEqual(Array(ua[0..<4]), Array(ua[4..<8]))
    }

    func testInferenceLeavesTheDropoutGeneratorWhereTrainingLeftIt() {
        // validation between epochs and WSLRec's mining run inference: they must not move the
        // generator that training's dropout draws from, or where they run would change the fit
        for backbone in [SASRec(SASRecConfig(itemCount: 9)) as Backbone, GRU4Rec(GRU4RecConfig(itemCount: 9))] {
            let it = [Int32](repeating: 3, count: backbone.maxLength), ln: [Int32] = [4]
            _ = backbone.forward(items: it, lengths: ln, B: 1, training: true)
            let before = backbone.rng.state
            _ = backbone.forward(items: it, lengths: ln, B: 1, training: false)
            XCTAssertEqual(backbone.rng.state, before, backbone.name)
        }
    }

    /// A server's batches creep up (1, 2, 3, …) and the activations grow ahead of them: a model
    /// that served smaller batches first answers a batch as a fresh model does.
    func testGrowingBatchesEncodeAsAFreshModelDoes() {
        var cfg = SASRecConfig(itemCount: 9)
        cfg.maxLength = 6; cfg.dim = 8; cfg.inner = 16; cfg.blocks = 1
        let served = SASRec(cfg)
        var r = RNG(seed: 12)
        for B in [1, 2, 3, 5, 4, 11] {
            let items = (0..<(B * 6)).map { _ in Int32(1 + r.below(9)) }, lengths = (0..<B).map { _ in Int32(1 + r.below(6)) }
            let got = Array(UnsafeBufferPointer(start: served.forward(items: items, lengths: lengths, B: B, training: false), count: B * 8))
            let fresh = SASRec(cfg)
            let want = Array(UnsafeBufferPointer(start: fresh.forward(items: items, lengths: lengths, B: B, training: false), count: B * 8))
            XCTAssertEqual(got, want, "batch of \(B)")
        }
    }

    func testSerialisedModelReloadsToIdenticalOutputs() throws {
        var cfg = GRU4RecConfig(itemCount: 9)
        cfg.maxLength = 5; cfg.embedding = 4; cfg.hidden = 6
        let m1 = GRU4Rec(cfg)
        cfg.seed = 77
        let m2 = GRU4Rec(cfg)
        try m2.parameters.load(bytes: m1.parameters.serialized())
        let it: [Int32] = [3, 4, 5, 0, 0], ln: [Int32] = [3]
        let u1 = Array(UnsafeBufferPointer(start: m1.forward(items: it, lengths: ln, B: 1, training: false), count: 4))
        let u2 = Array(UnsafeBufferPointer(start: m2.forward(items: it, lengths: ln, B: 1, training: false), count: 4))
        XCTAssertEqual(u1, u2)
    }
}

/// The head's fused cross-entropy runs in blocks of rows; past one block it gives the losses and
/// gradients of the unfused path (scores, softmax CE on them, the two products).
final class FullSoftmaxHeadBlockTests: XCTestCase {
    func testManyRowsInBlocksEqualTheUnfusedPath() {
        Threads.set(2)
        defer { Threads.set(1) }
        let B = 2 * FullSoftmaxHead.fusedRows + 37, N = 50, C = 6
        var rng = RNG(seed: 13)
        let user = Buf(random: B * C, rng: &rng), table = Buf(random: (N + 1) * C, rng: &rng)
        let targets = (0..<B).map { Int32($0 % 9 == 4 ? 0 : 1 + ($0 * 7) % N) }   // some rows skipped
        let weights = Buf(B)
        for b in 0..<B { weights[b] = 0.5 + Float(b % 5) / 4 }
        let fusedGrad = Buf((N + 1) * C), plainGrad = Buf((N + 1) * C)
        let fused = FullSoftmaxHead(itemCount: N, dim: C)
        let a = fused.crossEntropy(user: user.p, table: table.p, tableGrad: fusedGrad.p, targets: targets, weights: weights.p,
                                   scale: 1 / Float(B), B: B)
        // unfused: scores, then the loss with its gradient left in them, then the products
        let plain = FullSoftmaxHead(itemCount: N, dim: C)
        plain.scores(user: user.p, table: table.p, B: B)
        let cols = targets.map { $0 - 1 }
        var losses = [Float](repeating: 0, count: B)
        let b = softmaxCrossEntropy(losses: &losses, dlogits: plain.logits, logits: plain.logits, targets: cols, weights: weights.p,
                                    scale: 1 / Float(B), B: B, V: N)
        plain.backward(user: user.p, table: table.p, tableGrad: plainGrad.p, B: B)
        XCTAssertEqual(a, b, accuracy: 1e-5 * abs(b))
        for i in 0..<(B * C) { XCTAssertEqual(fused.dUser[i], plain.dUser[i], accuracy: 1e-6, "dUser \(i)") }
        for i in 0..<((N + 1) * C) { XCTAssertEqual(fusedGrad[i], plainGrad[i], accuracy: 1e-5, "dTable \(i)") }
        for r in 0..<B { XCTAssertEqual(fused.losses[r], losses[r], accuracy: 1e-5, "loss of row \(r)") }
    }
}
