import XCTest
import Numerics
import Models
import Data
@testable import Methods

final class SoftLabelTests: XCTestCase {
    func testSoftLabelsSumToOneKeepHalfOnTheTargetAndFlattenAsTemperatureGrows() {
        let B = 3, N = 50
        let logits = FBuf(random: B * N, seed: 11, scale: 3)
        let targets: [Int32] = [5, 1, 50]
        var previousMax = [Float](repeating: .infinity, count: B), previousMin = [Float](repeating: -.infinity, count: B)
        for temperature: Float in [0.5, 1, 3, 6, 9, 100, 1e6] {
            let r = FBuf(B * N)
            SoftLabels.fromLogits(r.p, logits: logits.p, targets: targets, temperature: temperature, B: B, N: N)
            for b in 0..<B {
                let row = Array(r.array[(b * N)..<((b + 1) * N)])
                XCTAssertEqual(row.reduce(0, +), 1, accuracy: 1e-5, "row \(b) at τ = \(temperature)")
                let t = Int(targets[b]) - 1
                XCTAssertGreaterThanOrEqual(row[t], 0.5)
                let others = row.enumerated().filter { $0.offset != t }.map(\.element)
                // flatter: the largest non-target label falls and the smallest rises
                XCTAssertLessThan(others.max()!, previousMax[b], "τ = \(temperature)")
                XCTAssertGreaterThan(others.min()!, previousMin[b], "τ = \(temperature)")
                previousMax[b] = others.max()!; previousMin[b] = others.min()!
            }
        }
        // τ → ∞: label smoothing, ½ onehot + ½ uniform
        let r = FBuf(B * N)
        SoftLabels.fromLogits(r.p, logits: logits.p, targets: targets, temperature: 1e6, B: B, N: N)
        XCTAssertEqual(r.p[0], 0.5 / Float(N), accuracy: 1e-5)
        XCTAssertEqual(r.p[4], 0.5 + 0.5 / Float(N), accuracy: 1e-5)
    }

    func testEnsembleLogitsAreTheMeanOfTheTeachersAndTopKMatchesASort() throws {
        let N = 20, T = 6, B = 4
        let g1 = labelsSASRec(items: N, maxLength: T, seed: 1), g2 = labelsSASRec(items: N, maxLength: T, seed: 2)
        let source = ModelSoftLabelSource(teachers: [g1, g2])
        let items: [Int32] = [1, 2, 3, 0, 0, 0,  4, 5, 6, 7, 8, 9,  10, 0, 0, 0, 0, 0,  11, 12, 0, 0, 0, 0]
        let lengths: [Int32] = [3, 6, 1, 2]
        let e = FBuf(B * N)
        try source.logits(items: items, lengths: lengths, B: B, T: T, out: e.p)
        func scores(_ g: Backbone) -> [Float] {
            let u = g.forward(items: items, lengths: lengths, B: B, training: false)
            var s = [Float](repeating: 0, count: B * N)
            for b in 0..<B { for j in 0..<N { for c in 0..<g.dim { s[b * N + j] += u[b * g.dim + c] * g.scoringTable[j * g.dim + c] } } }
            return s
        }
        let s1 = scores(g1), s2 = scores(g2)
        for i in 0..<(B * N) { XCTAssertEqual(e.p[i], (s1[i] + s2[i]) / 2, accuracy: 1e-4) }
        let k = 5
        var top = [Int32](repeating: 0, count: B * k)
        try source.topK(items: items, lengths: lengths, B: B, T: T, k: k, out: &top)
        for b in 0..<B {
            let row: [Float] = (0..<N).map { e.p[b * N + $0] }
            let order: [Int] = (0..<N).sorted { (i: Int, j: Int) -> Bool in row[i] != row[j] ? row[i] > row[j] : i < j }
            let expected: [Int32] = order.prefix(k).map { Int32($0 + 1) }
            XCTAssertEqual(Array(top[(b * k)..<((b + 1) * k)]), expected)
        }
    }

    func testTopKBreaksTiesToTheLowerId() {
        let row: [Float] = [1, 3, 3, 2, 3, -1]
        var out = [Int32](repeating: 0, count: 4)
        SoftLabels.topK(row: row, N: 6, k: 4, out: &out)
        XCTAssertEqual(out, [2, 3, 5, 4])
    }

    func testBaseCrossEntropyTrainingLowersTheLoss() throws {
        let data = cyclicDataset()
        let split = LeaveOneOut(data)
        let model = labelsSASRec(items: data.itemCount)
        let fit = try quickLoop(data, epochs: 6).fit(model: model, instances: split.train, objective: CrossEntropyObjective(), validate: nil)
        XCTAssertEqual(fit.losses.count, 6)
        XCTAssertLessThan(fit.losses.last!, fit.losses.first! * 0.9, "\(fit.losses)")
    }
}
