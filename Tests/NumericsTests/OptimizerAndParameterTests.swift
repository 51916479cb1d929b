import XCTest
import Foundation
@testable import Numerics

final class OptimizerTests: XCTestCase {
    func testAdamMatchesClosedFormOverTwoSteps() {
        let ps = ParameterSet([("w", [2])])
        ps.values[0] = 1; ps.values[1] = -2
        let adam = Adam(parameters: ps, learningRate: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01)
        let grads: [[Float]] = [[0.5, -1], [0.2, 0.3]]
        var m = [0.0, 0.0], v = [0.0, 0.0], p = [1.0, -2.0]
        for (t, g) in grads.enumerated() {
            ps.grads[0] = g[0]; ps.grads[1] = g[1]
            adam.update()
            for i in 0..<2 {
                let gi = Double(g[i]) + 0.01 * p[i]
                m[i] = 0.9 * m[i] + 0.1 * gi; v[i] = 0.999 * v[i] + 0.001 * gi * gi
                let mh = m[i] / (1 - pow(0.9, Double(t + 1))), vh = v[i] / (1 - pow(0.999, Double(t + 1)))
                p[i] -= 0.1 * mh / (vh.squareRoot() + 1e-8)
            }
        }
        XCTAssertEqual(Double(ps.values[0]), p[0], accuracy: 1e-5)
        XCTAssertEqual(Double(ps.values[1]), p[1], accuracy: 1e-5)
    }

    /// The eight-lane update equals torch.optim.Adam's per-element formula, in Float and in the
    /// same order, bit for bit — in the lanes and in the tail, without weight decay, with L2
    /// decay and decoupled (AdamW).
    func testAdamLanesEqualTheScalarFormulaBitForBit() {
        let n = 21
        for (wd, decoupled) in [(Float(0), false), (0.01, false), (0.01, true)] {
            var rng = RNG(seed: 4)
            let ps = ParameterSet([("w", [n])])
            for i in 0..<n { ps.values[i] = rng.normal() }
            var p = (0..<n).map { ps.values[$0] }, m = [Float](repeating: 0, count: n), v = m
            let adam = Adam(parameters: ps, learningRate: 0.01, weightDecay: wd, decoupled: decoupled)
            for step in 1...3 {
                let g = (0..<n).map { _ in rng.normal() }
                for i in 0..<n { ps.grads[i] = g[i] }
                adam.update()
                let c1 = 1 - powf(0.9, Float(step)), c2 = 1 - powf(0.999, Float(step))
                let stepSize = Float(0.01) / c1, c2s = c2.squareRoot()
                for i in 0..<n {
                    var gi = g[i]
                    if wd != 0 { if decoupled { p[i] -= 0.01 * wd * p[i] } else { gi += wd * p[i] } }
                    m[i] = 0.9 * m[i] + (1 - 0.9) * gi
                    v[i] = 0.999 * v[i] + (1 - 0.999) * gi * gi
                    p[i] -= stepSize * m[i] / (v[i].squareRoot() / c2s + 1e-8)
                    XCTAssertEqual(ps.values[i].bitPattern, p[i].bitPattern, "element \(i), step \(step), wd \(wd), decoupled \(decoupled)")
                }
            }
        }
    }

    func testAdagradMatchesClosedForm() {
        let ps = ParameterSet([("w", [1])])
        ps.values[0] = 1
        let opt = Adagrad(parameters: ps, learningRate: 0.5)
        ps.grads[0] = 2; opt.update()
        XCTAssertEqual(ps.values[0], 1 - 0.5 * 2 / 2, accuracy: 1e-6)
        ps.grads[0] = 1; opt.update()
        XCTAssertEqual(ps.values[0], 0.5 - 0.5 * 1 / Float(5).squareRoot(), accuracy: 1e-6)
    }

    func testGradientClippingAndSchedules() {
        let ps = ParameterSet([("a", [2]), ("b", [1])])
        ps.grads[0] = 3; ps.grads[1] = 0; ps.grads[2] = 4
        XCTAssertEqual(ps.clipGradNorm(1), 5, accuracy: 1e-9)
        XCTAssertEqual(ps.gradNorm(), 1, accuracy: 1e-5)
        XCTAssertEqual(ps.grads[0] / ps.grads[2], 0.75, accuracy: 1e-6)
        XCTAssertEqual(LearningRateSchedule.constant(0.1).rate(epoch: 50), 0.1)
        let s = LearningRateSchedule.step(initial: 1, stepSize: 10, gamma: 0.5)
        XCTAssertEqual(s.rate(epoch: 9), 1); XCTAssertEqual(s.rate(epoch: 10), 0.5); XCTAssertEqual(s.rate(epoch: 25), 0.25)
    }

    func testRNGIsReproducible() {
        var a = RNG(seed: 42), b = RNG(seed: 42), c = RNG(seed: 43)
        let xa = (0..<10).map { _ in a.next() }, xb = (0..<10).map { _ in b.next() }, xc = (0..<10).map { _ in c.next() }
        XCTAssertEqual(xa, xb); XCTAssertNotEqual(xa, xc)
        var r = RNG(seed: 1)
        let u = (0..<10000).map { _ in r.uniform() }
        XCTAssertTrue(u.allSatisfy { $0 >= 0 && $0 < 1 })
        XCTAssertEqual(u.reduce(0, +) / 10000, 0.5, accuracy: 0.02)
        let z = (0..<10000).map { _ in r.normal() }
        XCTAssertEqual(z.reduce(0, +) / 10000, 0, accuracy: 0.05)
        XCTAssertEqual(z.map { $0 * $0 }.reduce(0, +) / 10000, 1, accuracy: 0.05)
    }
}

final class ParameterFileTests: XCTestCase {
    func makeSet() -> ParameterSet {
        let ps = ParameterSet([("emb", [4, 3]), ("ln.w", [3])])
        for i in 0..<ps.count { ps.values[i] = Float(i) * 0.5 - 1 }
        return ps
    }

    func testRoundTripThroughFile() throws {
        let ps = makeSet()
        let path = NSTemporaryDirectory() + "winnow-params-\(UUID().uuidString).bin"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ps.save(to: path)
        let other = ParameterSet([("emb", [4, 3]), ("ln.w", [3])])
        try other.load(from: path)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: other.values, count: other.count)),
                       Array(UnsafeBufferPointer(start: ps.values, count: ps.count)))
        XCTAssertEqual(other.value("ln.w")[0], ps.value("ln.w")[0])
    }

    func testCorruptionIsDetected() {
        var bytes = makeSet().serialized()
        bytes[bytes.count - 10] ^= 0x01
        XCTAssertThrowsError(try makeSet().load(bytes: bytes)) { e in
            guard case .checksumMismatch = e as? ParameterFileError else { return XCTFail("\(e)") }
        }
    }

    func testWrongShapeNameCountMagicAndTruncationAreClearErrors() {
        let bytes = makeSet().serialized()
        XCTAssertThrowsError(try ParameterSet([("emb", [4, 2]), ("ln.w", [3])]).load(bytes: bytes)) { e in
            XCTAssertEqual(e as? ParameterFileError, .shapeMismatch(name: "emb", expected: [4, 2], found: [4, 3]))
            XCTAssertTrue("\(e)".contains("emb"))
        }
        XCTAssertThrowsError(try ParameterSet([("emb", [4, 3]), ("ln.b", [3])]).load(bytes: bytes)) { e in
            XCTAssertEqual(e as? ParameterFileError, .nameMismatch(index: 1, expected: "ln.b", found: "ln.w"))
        }
        XCTAssertThrowsError(try ParameterSet([("emb", [4, 3])]).load(bytes: bytes)) { e in
            XCTAssertEqual(e as? ParameterFileError, .tensorCountMismatch(expected: 1, found: 2))
        }
        var bad = bytes; bad[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try makeSet().load(bytes: bad)) { e in XCTAssertEqual(e as? ParameterFileError, .badMagic) }
        XCTAssertThrowsError(try makeSet().load(bytes: Array(bytes.prefix(10)))) { e in
            guard case .truncated = e as? ParameterFileError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try makeSet().load(from: "/nonexistent/params.bin")) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/params.bin"))
        }
    }
}
