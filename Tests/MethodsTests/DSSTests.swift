import XCTest
import Numerics
import Models
import Data
import Training
@testable import Methods

final class DSSTests: XCTestCase {
    /// A layer with large random weights and non-trivial LayerNorm affine parameters and biases,
    /// so that its gradients stand above float32 rounding in finite differences.
    private func randomLayer(T: Int, C: Int, K: Int, rng r: inout RNG) -> (ParameterSet, DisentangleLayer) {
        let ps = ParameterSet(DisentangleLayer.parameterSpecs(dim: C, interests: K, maxLength: T))
        let layer = DisentangleLayer(parameters: ps, dim: C, interests: K, maxLength: T, eps: 1e-5)
        layer.resetParameters(initStd: 0.3, rng: &r)
        for e in ps.entries where e.name.contains(".ln") || e.name.hasSuffix(".bias") {
            for i in 0..<e.count { ps.value(e.name)[i] += 0.2 * r.normal() }
        }
        return (ps, layer)
    }

    func testDisentangleLayerBackwardMatchesFiniteDifferences() {
        let B = 3, T = 5, C = 6, K = 3
        var r = RNG(seed: 21)
        let (ps, layer) = randomLayer(T: T, C: C, K: K, rng: &r)
        let z = AuxFloats(random: B * T * C, rng: &r)
        let dz = AuxFloats(B * T * C)
        let lengths = AuxInts([2, 5, 1])
        let c = AuxFloats(random: B * K * C, rng: &r)
        let f: () -> Double = {
            let out = layer.forward(z: z.p, lengths: lengths.p, labelFrom: 2, B: B)
            var s = 0.0
            for i in 0..<(B * K * C) { s += Double(c.p[i]) * Double(out[i]) }
            return s
        }
        ps.zeroGrad()
        _ = layer.forward(z: z.p, lengths: lengths.p, labelFrom: 2, B: B)
        layer.backward(dOut: c.p, dz: dz.p)
        // LN2's bias shifts every prototype's logit by the same amount: softmax over k is invariant
        // to it, its gradient is exactly 0 and the finite difference is pure rounding.
        XCTAssertEqual((0..<C).map { ps.grad("dss.ln2.bias")[$0] }.map(abs).max()!, 0, accuracy: 1e-6)
        assertParameterGradients(ps, eps: 1e-2, tolerance: 2e-2, skip: ["dss.ln2.bias"], f: f)
        let rz = GradientCheck.check("z", x: z.p, analytic: dz.p, count: z.n, eps: 1e-2, tolerance: 2e-2, f: f)
        XCTAssertTrue(rz.passed, rz.description)
        // padding positions (b = 0: i >= 2, b = 2: i >= 1) take no gradient
        for (b, len) in [(0, 2), (2, 1)] {
            for i in len..<T { for ch in 0..<C { XCTAssertEqual(dz.p[(b * T + i) * C + ch], 0) } }
        }
        // both β sets were used: rows 0, 1 input, row 2 label
        XCTAssertNotEqual(ps.grad("dss.beta.input")[0], 0)
        XCTAssertNotEqual(ps.grad("dss.beta.label")[0], 0)
    }

    /// Readouts at any position (several per row, both β sets): the backward is the forward's
    /// derivative, and positions after a readout's take no gradient from it.
    func testReadoutsAtEveryPositionBackwardMatchesFiniteDifferences() {
        let B = 3, T = 5, C = 6, K = 2
        // (a seed whose keys' pre-activations all lie farther than a finite step from ReLU's kink;
        // seed 33 puts one within it and its key-weight entry's finite difference is off by 17 %)
        var r = RNG(seed: 21)
        let (ps, layer) = randomLayer(T: T, C: C, K: K, rng: &r)
        let z = AuxFloats(random: B * T * C, rng: &r), dz = AuxFloats(B * T * C)
        let lengths = AuxInts([2, 5, 3])
        let rows: [Int32] = [0, 1, 1, 1, 2], positions: [Int32] = [1, 0, 2, 3, 0]   // row 1 read three times, never at 4
        let Q = rows.count
        let c = AuxFloats(random: Q * K * C, rng: &r)
        let f: () -> Double = {
            let out = layer.forward(z: z.p, lengths: lengths.p, B: B, rows: rows, positions: positions, labelFrom: 4)
            var s = 0.0
            for i in 0..<(Q * K * C) { s += Double(c.p[i]) * Double(out[i]) }
            return s
        }
        ps.zeroGrad()
        _ = layer.forward(z: z.p, lengths: lengths.p, B: B, rows: rows, positions: positions, labelFrom: 4)
        layer.backward(dOut: c.p, dz: dz.p)
        assertParameterGradients(ps, eps: 1e-2, tolerance: 2e-2, skip: ["dss.ln2.bias"], f: f)
        let rz = GradientCheck.check("z", x: z.p, analytic: dz.p, count: z.n, eps: 1e-2, tolerance: 2e-2, f: f)
        XCTAssertTrue(rz.passed, rz.description)
        // row 1 is read up to position 3, row 2 at 0: what lies after takes no gradient
        for (b, from) in [(1, 4), (2, 1)] {
            for i in from..<T { for ch in 0..<C { XCTAssertEqual(dz.p[(b * T + i) * C + ch], 0, "row \(b) position \(i)") } }
        }
        XCTAssertNotEqual(ps.grad("dss.beta.label")[0], 0)   // readout 4 used the label set
    }

    /// Under all positions a window's row at position t is read out as the prefix ending at t:
    /// the seq2item loss of a batch of windows equals the prefix scheme's over the same rows given
    /// as prefixes (dropout off, same initialisation).
    func testAllPositionRowsScoreAsThePrefixesEndingThere() throws {
        let world = AuxWorld(users: 6, items: 20, perUser: 8, noise: 0)
        let inst = world.split.train, T = 10
        var config = DSSConfig(itemCount: 20)
        config.encoder.maxLength = T; config.encoder.dim = 8; config.encoder.blocks = 1; config.encoder.inner = 16
        config.encoder.interests = 2; config.encoder.hiddenDropout = 0; config.encoder.attentionDropout = 0
        config.schedule = .pretrainThenFinetune(pretrainEpochs: 0)   // seq2item alone
        let batcher = Batcher(data: world.data, windowsOf: inst, maxLength: T, batchSize: 6)
        let windows = BatchBuffers(B: 6, T: T, perPosition: true)
        let B = windows.fill(batcher, batch: 0)
        var items: [Int32] = [], lengths: [Int32] = [], targets: [Int32] = [], ids: [Int32] = []
        for b in 0..<B {
            for p in 0..<Int(windows.lengths[b]) where windows.targets[b * T + p] > 0 {
                var row = [Int32](repeating: 0, count: T)
                for i in 0...p { row[i] = windows.items[b * T + i] }
                items += row; lengths.append(Int32(p + 1))
                targets.append(windows.targets[b * T + p]); ids.append(windows.instances[b * T + p])
            }
        }
        let R = lengths.count
        XCTAssertGreaterThan(R, 2 * B)
        let every = DSSTrainer(config: config, data: world.data, instances: inst, maxBatch: 6, scheme: .allPositions)
        let prefixes = DSSTrainer(config: config, data: world.data, instances: inst, maxBatch: R, scheme: .prefixes)
        every.beginEpoch(0); prefixes.beginEpoch(0)
        try every.step(windows.filled)
        try items.withUnsafeBufferPointer { i in try lengths.withUnsafeBufferPointer { l in
            try targets.withUnsafeBufferPointer { t in try ids.withUnsafeBufferPointer { k in
                _ = try prefixes.step(FilledBatch(items: i.baseAddress!, lengths: l.baseAddress!, targets: t.baseAddress!,
                                                  instances: k.baseAddress!, B: R))
            } }
        } }
        XCTAssertGreaterThan(prefixes.lastSeq2Item, 0)
        XCTAssertEqual(every.lastSeq2Item, prefixes.lastSeq2Item, accuracy: 1e-5 * prefixes.lastSeq2Item)
    }

    /// All-position DSS trains: both losses fall over epochs of windows, seq2seq contrasting one
    /// row per window.
    func testAllPositionEpochsLowerBothLosses() throws {
        let world = AuxWorld(users: 50, items: 40, perUser: 12, noise: 0.1)
        var config = DSSConfig(itemCount: 40)
        config.encoder.maxLength = 10; config.encoder.dim = 16; config.encoder.blocks = 1; config.encoder.inner = 32
        config.encoder.interests = 3; config.learningRate = 5e-3; config.lambda = 0.5
        let trainer = DSSTrainer(config: config, data: world.data, instances: world.split.train, maxBatch: 16, scheme: .allPositions)
        let epochs = DSSEpochs(trainer: trainer, batchSize: 16, seed: 3)
        var losses: [Double] = []
        for e in 0..<8 {
            losses.append(try epochs.run(epoch: e))
            XCTAssertGreaterThan(trainer.lastSeq2Seq, 0)
            XCTAssertGreaterThan(trainer.lastSeq2Item, 0)
        }
        XCTAssertLessThan(losses.last!, losses.first! - 0.1, "losses \(losses)")
    }

    func testSeq2ItemAndSeq2SeqBackwardsMatchFiniteDifferences() {
        let B = 3, K = 2, C = 5, M = 7
        var r = RNG(seed: 5)
        let user = AuxFloats(random: B * K * C, rng: &r), cand = AuxFloats(random: M * C, rng: &r)
        let dUser = AuxFloats(B * K * C), dCand = AuxFloats(M * C)
        let pos = AuxInts([4, 0, 6]), losses = AuxFloats(B), logits = AuxFloats(B * K * M)
        let f1: () -> Double = {
            DSSLoss.seq2item(losses: losses.p, dUser: nil, dCand: nil, user: user.p, cand: cand.p, pos: pos.p, logits: logits.p,
                             temperature: 1.5, scale: 0.5, B: B, K: K, C: C, M: M)
        }
        DSSLoss.seq2item(losses: losses.p, dUser: dUser.p, dCand: dCand.p, user: user.p, cand: cand.p, pos: pos.p, logits: logits.p,
                         temperature: 1.5, scale: 0.5, B: B, K: K, C: C, M: M)
        for (name, x, d) in [("user", user, dUser), ("cand", cand, dCand)] {
            let res = GradientCheck.check("seq2item d\(name)", x: x.p, analytic: d.p, count: x.n, eps: 1e-3, f: f1)
            XCTAssertTrue(res.passed, res.description)
        }
        // seq2seq with half of the terms kept: the selection is stable under small perturbations here
        let phi = AuxFloats(random: B * K * C, rng: &r), psi = AuxFloats(random: B * K * C, rng: &r)
        let dPhi = AuxFloats(B * K * C), dPsi = AuxFloats(B * K * C)
        let l2 = AuxFloats(B * K), mask = AuxFloats(B * K), scores = AuxFloats(B * K * B * K)
        let f2: () -> Double = {
            DSSLoss.seq2seq(losses: l2.p, mask: mask.p, dPhi: nil, dPsi: nil, phi: phi.p, psi: psi.p, scores: scores.p,
                            temperature: 2, lambda: 0.5, scale: 0.25, B: B, K: K, C: C)
        }
        let total = DSSLoss.seq2seq(losses: l2.p, mask: mask.p, dPhi: dPhi.p, dPsi: dPsi.p, phi: phi.p, psi: psi.p, scores: scores.p,
                                    temperature: 2, lambda: 0.5, scale: 0.25, B: B, K: K, C: C)
        let kept = (0..<(B * K)).filter { mask.p[$0] == 1 }
        XCTAssertEqual(kept.count, 3)
        XCTAssertEqual(total, 0.25 * kept.map { Double(l2.p[$0]) }.reduce(0, +), accuracy: 1e-6)
        for (name, x, d) in [("phi", phi, dPhi), ("psi", psi, dPsi)] {
            // eps 3e-3: at 1e-3 the float32 loss's rounding alone reaches 1 % of the smallest
            // entries' differences on some CPUs (0.0105 on a Xeon whose BLAS sums in another order)
            let res = GradientCheck.check("seq2seq d\(name)", x: x.p, analytic: d.p, count: x.n, eps: 3e-3, f: f2)
            XCTAssertTrue(res.passed, res.description)
        }
    }

    func testLambdaSelectionKeepsExactlyCeilLambdaBKTerms() {
        for (lambda, B, K) in [(Float(0), 4, 3), (0.05, 10, 4), (0.1, 7, 3), (0.33, 9, 2), (0.5, 5, 5), (0.95, 6, 7), (1, 8, 2)] {
            let n = B * K
            let expected = Int((Double(lambda) * Double(n) - 1e-6).rounded(.up))
            XCTAssertEqual(DSSLoss.keptCount(lambda: lambda, B: B, K: K), expected, "λ \(lambda), B \(B), K \(K)")
            // with many ties the mask still holds exactly that many ones: the smallest losses
            let losses = AuxFloats(n), mask = AuxFloats(n, fill: 7)
            for i in 0..<n { losses.p[i] = Float((i * 5) % 4) }
            DSSLoss.selectSmallest(losses: losses.p, count: n, keep: expected, mask: mask.p)
            let kept = (0..<n).filter { mask.p[$0] == 1 }
            XCTAssertEqual(kept.count, expected)
            XCTAssertEqual((0..<n).filter { mask.p[$0] != 0 && mask.p[$0] != 1 }.count, 0)
            let maxKept = kept.map { losses.p[$0] }.max() ?? -.infinity
            let minDropped = (0..<n).filter { mask.p[$0] == 0 }.map { losses.p[$0] }.min() ?? .infinity
            XCTAssertLessThanOrEqual(maxKept, minDropped)
        }
        // exact decimal products are not rounded up by float error: 0.1 · 10 · 3 = 3
        XCTAssertEqual(DSSLoss.keptCount(lambda: 0.1, B: 10, K: 3), 3)
        XCTAssertEqual(DSSLoss.keptCount(lambda: 0.3, B: 10, K: 1), 3)
    }

    func testReversedFutureIsReversedAndStaysInTheTrainingPart() {
        // user 0: items 1...10 -> training part 1...8, validation 9, test 10
        let data = SequenceDataset(sequences: [Array(1...10).map(Int32.init), [3, 1, 2, 5]], itemCount: 10)
        let split = LeaveOneOut(data)
        let futures = DSSFutures(users: 2, instances: split.train)
        XCTAssertEqual(futures.trainEnd, [8, 2])
        let row = UnsafeMutablePointer<Int32>.allocate(capacity: 12)
        defer { row.deallocate() }
        func instance(user: Int32, position: Int32) -> Int {
            (0..<split.train.count).first { split.train.users[$0] == user && split.train.positions[$0] == position }!
        }
        // input s[0..<3] = 1 2 3 -> future 4...8, reversed
        var len = futures.fillReversed(instance: instance(user: 0, position: 3), data: data, instances: split.train, maxLength: 12, row: row)
        XCTAssertEqual(len, 5)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: row, count: 12)), [8, 7, 6, 5, 4, 0, 0, 0, 0, 0, 0, 0])
        // truncated to the 3 items nearest the input: 4 5 6 reversed
        len = futures.fillReversed(instance: instance(user: 0, position: 3), data: data, instances: split.train, maxLength: 3, row: row)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: row, count: 3)), [6, 5, 4])
        // the last training instance's future is its target alone
        len = futures.fillReversed(instance: instance(user: 0, position: 7), data: data, instances: split.train, maxLength: 4, row: row)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: row, count: 4)), [8, 0, 0, 0])
        // user 1 (4 items: training part 3 1): its only instance's future is item 1
        len = futures.fillReversed(instance: instance(user: 1, position: 1), data: data, instances: split.train, maxLength: 4, row: row)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: row, count: 4)), [1, 0, 0, 0])
    }

    func testEncoderBackwardMatchesFiniteDifferences() {
        var c = DSSEncoderConfig(itemCount: 9)
        c.maxLength = 4; c.dim = 6; c.blocks = 1; c.inner = 8; c.interests = 2
        c.hiddenDropout = 0; c.attentionDropout = 0; c.layerNormEps = 1e-5; c.initStd = 0.3; c.seed = 4
        let model = DSSEncoder(c)
        let B = 3
        let items = AuxInts([1, 2, 3, 0,  4, 5, 6, 7,  8, 0, 0, 0]), lengths = AuxInts([3, 4, 1])
        var r = RNG(seed: 8)
        let w = AuxFloats(random: B * 2 * 6, rng: &r)
        let f: () -> Double = {
            let out = model.forward(items: items.p, lengths: lengths.p, labelFrom: 2, B: B, training: false)
            var s = 0.0
            for i in 0..<w.n { s += Double(w.p[i]) * Double(out[i]) }
            return s
        }
        model.parameters.zeroGrad()
        _ = model.forward(items: items.p, lengths: lengths.p, labelFrom: 2, B: B, training: true)
        model.backward(dUser: w.p)
        // eps 1e-2: the float32 forward's rounding swamps smaller steps on the layer's ~1e-3 gradients
        assertParameterGradients(model.parameters, eps: 1e-2, tolerance: 3e-2, skip: ["dss.ln2.bias"], f: f)
    }

    func testTinyEndToEndRunDecreasesTheLossAndServesMaxOverK() throws {
        let world = AuxWorld(users: 50, items: 40, perUser: 12, noise: 0.1)
        let inst = world.split.train, T = 10, B = 32
        var config = DSSConfig(itemCount: 40)
        config.encoder.maxLength = T; config.encoder.dim = 16; config.encoder.blocks = 1; config.encoder.inner = 32
        config.encoder.interests = 3; config.learningRate = 5e-3; config.lambda = 0.5
        config.encoder.hiddenDropout = 0.1; config.encoder.attentionDropout = 0.1
        let trainer = DSSTrainer(config: config, data: world.data, instances: inst, maxBatch: B)
        let buf = AuxBatches(B: B, T: T)
        var epochs: [Double] = []
        for e in 0..<6 {
            trainer.beginEpoch(e)
            var sum = 0.0, n = 0, start = 0
            let all = Array(0..<Int32(inst.count))
            while start < all.count {
                let end = min(start + B, all.count)
                sum += try trainer.step(buf.fill(world.data, inst, all[start..<end])); n += 1
                start = end
            }
            XCTAssertGreaterThan(trainer.lastSeq2Seq, 0)
            epochs.append(sum / Double(n))
        }
        XCTAssertLessThan(epochs.last!, epochs.first! - 0.1, "losses \(epochs)")
        // serving: K vectors per sequence, scored by max over K
        let batch = buf.fill(world.data, inst, Array(0..<Int32(4))[...])
        let out = trainer.model.forward(items: batch.items, lengths: batch.lengths, B: 4, training: false)
        let head = FullSoftmaxHead(itemCount: 40, dim: 16, interests: 3)
        head.scores(user: out, table: trainer.model.itemTable, B: 4)
        let table = trainer.model.itemTable
        for b in 0..<4 {
            for j in [0, 17, 39] {
                var best = -Float.infinity
                for k in 0..<3 {
                    var s: Float = 0
                    for ch in 0..<16 { s += out[(b * 3 + k) * 16 + ch] * table[(j + 1) * 16 + ch] }
                    best = max(best, s)
                }
                XCTAssertEqual(head.logits[b * 40 + j], best, accuracy: 1e-4)
            }
        }
    }

    func testPretrainThenFinetuneUsesOneLossPerPhase() throws {
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0)
        var config = DSSConfig(itemCount: 30)
        config.encoder.maxLength = 6; config.encoder.dim = 8; config.encoder.blocks = 1; config.encoder.inner = 16; config.encoder.interests = 2
        config.schedule = .pretrainThenFinetune(pretrainEpochs: 1)
        let trainer = DSSTrainer(config: config, data: world.data, instances: world.split.train, maxBatch: 8)
        let buf = AuxBatches(B: 8, T: 6)
        trainer.beginEpoch(0)
        try trainer.step(buf.fill(world.data, world.split.train, Array(0..<Int32(8))[...]))
        XCTAssertEqual(trainer.lastSeq2Item, 0); XCTAssertGreaterThan(trainer.lastSeq2Seq, 0)
        trainer.beginEpoch(1)
        try trainer.step(buf.fill(world.data, world.split.train, Array(0..<Int32(8))[...]))
        XCTAssertGreaterThan(trainer.lastSeq2Item, 0); XCTAssertEqual(trainer.lastSeq2Seq, 0)
    }
}
