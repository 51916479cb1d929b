import XCTest
import Numerics
@testable import Methods

/// Test-owned float buffer (a class, so closures capture a reference).
final class AuxFloats {
    let p: Floats
    let n: Int
    init(_ n: Int, fill: Float = 0) { self.n = n; p = .allocate(capacity: max(n, 1)); p.initialize(repeating: fill, count: max(n, 1)) }
    init(random n: Int, rng: inout RNG, scale: Float = 1) {
        self.n = n; p = .allocate(capacity: max(n, 1))
        for i in 0..<n { p[i] = rng.normal() * scale }
    }
    deinit { p.deallocate() }
    var array: [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
}

/// Test-owned Int32 buffer.
final class AuxInts {
    let p: UnsafeMutablePointer<Int32>
    let n: Int
    init(_ values: [Int32]) { n = values.count; p = .allocate(capacity: max(n, 1)); for (i, v) in values.enumerated() { p[i] = v } }
    deinit { p.deallocate() }
    var array: [Int32] { Array(UnsafeBufferPointer(start: p, count: n)) }
}

/// Checks every tensor of `ps` against finite differences of `f`.
func assertParameterGradients(_ ps: ParameterSet, eps: Float = 1e-2, tolerance: Double = 2e-2, skip: Set<String> = [],
                              file: StaticString = #filePath, line: UInt = #line, f: () -> Double) {
    for e in ps.entries where !skip.contains(e.name) {
        let r = GradientCheck.check(e.name, x: ps.value(e.name), analytic: ps.grad(e.name), count: e.count,
                                    eps: eps, tolerance: tolerance, maxEntries: 64, f: f)
        XCTAssertTrue(r.passed, r.description, file: file, line: line)
    }
}

final class NoiseRecogniserTests: XCTestCase {
    private func tiny() -> (NoiseRecogniser, AuxInts, AuxInts, AuxInts, AuxInts) {
        var c = NoiseRecogniserConfig(itemCount: 12, userCount: 3)
        c.maxLength = 5; c.dim = 4; c.userDim = 3; c.attentionHidden = 6; c.outputHidden = [8, 5]; c.dropout = 0
        c.embeddingStd = 0.5; c.seed = 7
        let rec = NoiseRecogniser(c)
        // Larger weights than the default init, so that the gradients stand well above float32
        // rounding in the finite differences; PReLU slopes in 0.6...0.9, so that both branches
        // carry distinct gradients while the kinks stay mild.
        var r = RNG(seed: 3)
        for e in rec.parameters.entries where e.name.hasSuffix(".weight") {
            for i in 0..<e.count { rec.parameters.value(e.name)[i] *= 3 }
        }
        for e in rec.parameters.entries where e.name.hasSuffix(".prelu") {
            for i in 0..<e.count { rec.parameters.value(e.name)[i] = 0.6 + 0.3 * r.uniform() }
        }
        for e in rec.parameters.entries where e.name.hasSuffix(".bias") {
            for i in 0..<e.count { rec.parameters.value(e.name)[i] = 0.1 * r.normal() }
        }
        let items = AuxInts([3, 5, 0, 0, 0,  1, 2, 3, 4, 5,  7, 0, 0, 0, 0,  9, 11, 12, 0, 0])
        let lengths = AuxInts([2, 5, 1, 3])
        let targets = AuxInts([6, 8, 10, 2])
        let users = AuxInts([0, 2, 1, 2])   // user 2 twice: its embedding's gradient sums two rows
        return (rec, users, items, lengths, targets)
    }

    func testRecogniserBackwardThroughWeightsMatchesFiniteDifferences() {
        let (rec, users, items, lengths, targets) = tiny()
        let B = 4
        var r = RNG(seed: 11)
        let c = AuxFloats(random: B, rng: &r)
        let f: () -> Double = {
            let w = rec.forward(users: users.p, items: items.p, lengths: lengths.p, targets: targets.p, B: B, training: false)
            var s = 0.0
            for b in 0..<B { s += Double(c.p[b]) * Double(w[b]) }
            return s
        }
        rec.parameters.zeroGrad()
        _ = rec.forward(users: users.p, items: items.p, lengths: lengths.p, targets: targets.p, B: B, training: true)
        rec.backward(dWeights: c.p)
        assertParameterGradients(rec.parameters, f: f)
    }

    func testRecogniserBinaryCrossEntropyBackwardMatchesFiniteDifferences() {
        let (rec, users, items, lengths, targets) = tiny()
        let B = 4
        let labels = AuxFloats(B)
        labels.p[0] = NoiseLabel.clean; labels.p[1] = NoiseLabel.noisy; labels.p[2] = NoiseLabel.noisy; labels.p[3] = NoiseLabel.clean
        let f: () -> Double = {
            rec.forward(users: users.p, items: items.p, lengths: lengths.p, targets: targets.p, B: B, training: false)
            return rec.binaryCrossEntropy(labels: labels.p, scale: 0.25, backward: false)
        }
        rec.parameters.zeroGrad()
        rec.forward(users: users.p, items: items.p, lengths: lengths.p, targets: targets.p, B: B, training: true)
        rec.binaryCrossEntropy(labels: labels.p, scale: 0.25, backward: true)
        assertParameterGradients(rec.parameters, f: f)
    }

    /// g(u, s): the user enters the output MLP beside the pooled history and the target, as the
    /// authors' `FindWeight` concatenates its user embedding; the gradient checks above cover it.
    func testTheWeightDependsOnTheUser() {
        let (rec, users, items, lengths, targets) = tiny()
        XCTAssertNotNil(rec.parameters.entries.first { $0.name == "user_embedding" && $0.shape == [3, 3] })
        let w = Array(UnsafeBufferPointer(start: rec.forward(users: users.p, items: items.p, lengths: lengths.p,
                                                             targets: targets.p, B: 4, training: false), count: 4))
        let others = AuxInts(users.array.map { ($0 + 1) % 3 })
        let v = Array(UnsafeBufferPointer(start: rec.forward(users: others.p, items: items.p, lengths: lengths.p,
                                                             targets: targets.p, B: 4, training: false), count: 4))
        for b in 0..<4 { XCTAssertNotEqual(w[b], v[b], "row \(b): another user, the same sequence") }
    }

    func testPaddingPositionsDoNotChangeTheWeight() {
        let (rec, users, items, lengths, targets) = tiny()
        let before = Array(UnsafeBufferPointer(start: rec.forward(users: users.p, items: items.p, lengths: lengths.p, targets: targets.p, B: 4, training: false), count: 4))
        // write real item ids into padding cells: lengths unchanged, so nothing may change
        let padded = AuxInts(items.array.enumerated().map { $0.element == 0 ? Int32(1 + $0.offset % 12) : $0.element })
        let after = Array(UnsafeBufferPointer(start: rec.forward(users: users.p, items: padded.p, lengths: lengths.p, targets: targets.p, B: 4, training: false), count: 4))
        XCTAssertEqual(before, after)
    }

    /// Noisy rows get min(r, len) history items replaced and keep their target (the paper's
    /// replaced "historical click items"); clean rows stay original; exactly half are noisy.
    func testReplacedSequencesGetLabelNoisyAndCleanOnesStayOriginal() {
        let B = 10, T = 6
        var original: [Int32] = [], lens: [Int32] = [], tg: [Int32] = []
        for b in 0..<B {
            let len = 2 + b % 4
            for t in 0..<T { original.append(t < len ? Int32(1 + (b * 7 + t) % 30) : 0) }
            lens.append(Int32(len)); tg.append(Int32(1 + (b * 3) % 30))
        }
        for r in [1, 2, 3, 9] {
            let items = AuxInts(original), targets = AuxInts(tg), lengths = AuxInts(lens), labels = AuxFloats(B, fill: -1)
            var rng = RNG(seed: UInt64(r))
            ATJTNoise.corrupt(items: items.p, lengths: lengths.p, labels: labels.p, B: B, T: T, replaced: r,
                              noisyFraction: 0.5, itemCount: 30, rng: &rng)
            var noisy = 0
            for b in 0..<B {
                let len = Int(lens[b])
                let changedHistory = (0..<T).filter { items.p[b * T + $0] != original[b * T + $0] }
                XCTAssertTrue(changedHistory.allSatisfy { $0 < len }, "padding was written")
                XCTAssertEqual(targets.p[b], tg[b], "row \(b): the target must be kept")
                if labels.p[b] == NoiseLabel.noisy {
                    noisy += 1
                    XCTAssertEqual(changedHistory.count, min(r, len), "row \(b), r \(r)")
                } else {
                    XCTAssertEqual(labels.p[b], NoiseLabel.clean)
                    XCTAssertTrue(changedHistory.isEmpty, "clean row \(b) was modified")
                }
            }
            XCTAssertEqual(noisy, B / 2)
        }
    }
}
