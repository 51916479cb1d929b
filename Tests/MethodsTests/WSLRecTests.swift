import XCTest
import Numerics
import Models
import Data
@testable import Methods

final class WSLRecTests: XCTestCase {
    func testBehaviouralRetargetingIsTheLastKHistoryItems() {
        XCTAssertEqual(WSLRec.behaviouralRetargeting(history: [3, 5, 3, 7, 9], k: 3), [9, 7, 3])
        XCTAssertEqual(WSLRec.behaviouralRetargeting(history: [3, 5, 3, 7, 9][...], k: 10), [9, 7, 3, 5])
        // brute force of Eq. 7 on random histories: the set {v_i : t − k < i ≤ t}
        var rng = SplitMix64(seed: 1)
        for _ in 0..<50 {
            let h = (0..<(1 + rng.bounded(12))).map { _ in Int32(1 + rng.bounded(6)) }
            let k = 1 + rng.bounded(8)
            let t = h.count
            let expected = Set((0..<t).filter { $0 > t - 1 - k }.map { h[$0] })
            let got = WSLRec.behaviouralRetargeting(history: h[...], k: k)
            XCTAssertEqual(Set(got), expected)
            XCTAssertEqual(got.count, expected.count)
            XCTAssertEqual(got.first, h.last)
        }
    }

    /// Eq. 8–10 computed densely (independently of ItemCF's sparse code).
    private func bruteForceItemCF(_ sequences: [[Int32]], N: Int, history: [Int32], k: Int) -> (top: [Int32], score: [Int32: Double]) {
        var W = [[Double]](repeating: [Double](repeating: 0, count: N + 1), count: sequences.count)
        for (u, s) in sequences.enumerated() where !s.isEmpty {
            for v in s { W[u][Int(v)] += 1 }
            for v in 0...N { W[u][v] /= log2(1 + Double(s.count)) }
        }
        func sim(_ a: Int, _ b: Int) -> Double {
            var dot = 0.0, na = 0.0, nb = 0.0
            for u in 0..<W.count { dot += W[u][a] * W[u][b]; na += W[u][a] * W[u][a]; nb += W[u][b] * W[u][b] }
            return na > 0 && nb > 0 ? dot / (na.squareRoot() * nb.squareRoot()) : 0
        }
        var score: [Int32: Double] = [:]
        for v in 1...N {
            let best = Set(history).filter { Int($0) != v }.map { sim(v, Int($0)) }.max() ?? 0
            if best > 0 { score[Int32(v)] = best }
        }
        let top = score.keys.sorted { score[$0]! != score[$1]! ? score[$0]! > score[$1]! : $0 < $1 }.prefix(k)
        return (Array(top), score)
    }

    func testItemCFTopKEqualsBruteForce() throws {
        var rng = SplitMix64(seed: 3)
        let N = 15
        let seqs = (0..<25).map { _ in (0..<(2 + rng.bounded(7))).map { _ in Int32(1 + rng.bounded(N)) } }
        for k in [1, 3, 6] {
            let nb = try ItemCF.neighbours(sequences: seqs, itemCount: N, k: k)
            for _ in 0..<30 {
                let history = (0..<(1 + rng.bounded(5))).map { _ in Int32(1 + rng.bounded(N)) }
                let got = WSLRec.itemCF(history: history[...], neighbours: nb, k: k)
                let (expected, score) = bruteForceItemCF(seqs, N: N, history: history, k: k)
                XCTAssertEqual(got.count, expected.count, "history \(history)")
                // the same ranking up to float rounding of equal similarities
                for (g, e) in zip(got, expected) {
                    XCTAssertEqual(score[g] ?? -1, score[e]!, accuracy: 1e-5, "history \(history) k \(k): \(got) vs \(expected)")
                }
            }
        }
    }

    func testFineTuningPositivesAreNextPlusMinedItemsInTheTrainingFuture() {
        // user 0: 1 2 3 4 5 | 6 (validation) | 7 (test); user 1: 8 9 10 11
        let data = SequenceDataset(sequences: [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11]], itemCount: 12)
        let ends = WSLRec.leaveOneOutTrainEnds(data)
        XCTAssertEqual(ends, [5, 2])
        let instances = InstanceSet(users: [0, 0, 1], positions: [2, 4, 1])
        let topK: [[Int32]] = [[5, 6, 9, 3, 1], [5, 4, 3], [12, 10, 9]]
        let sets = WSLRec.fineTuningPositives(data: data, instances: instances, topK: topK, trainEnds: ends)
        // Eq. 15: {3} ∪ ({5,6,9,3,1} ∩ {3,4,5}) — 6 is the validation item, 1 is in the past
        XCTAssertEqual(Array(sets[0]), [3, 5])
        // next item only when the intersection is empty
        XCTAssertEqual(Array(sets[1]), [5])
        // user 1's training part is [8, 9]: its future after position 1 is {9}; 10 is validation
        XCTAssertEqual(Array(sets[2]), [9])
    }

    func testPretrainingPositivesAreTheUnionOfTheConfiguredSources() throws {
        let data = SequenceDataset(sequences: [[1, 2, 3, 1, 4], [2, 3, 5, 6, 4]], itemCount: 6)
        let instances = InstanceSet(users: [0], positions: [4])
        var c = WSLRecConfig(); c.sources = [.br, .original]; c.weakK = 2
        let sets = WSLRec.pretrainingPositives(c, data: data, instances: instances, neighbours: nil)
        XCTAssertEqual(Set(sets[0]), [1, 3, 4])
        c.sources = [.itemcf]
        let nb = try ItemCF.neighbours(sequences: [[1, 2, 3, 1, 4], [2, 3, 5, 6, 4]], itemCount: 6, k: 2)
        let cf = WSLRec.pretrainingPositives(c, data: data, instances: instances, neighbours: nb)
        XCTAssertEqual(Array(cf[0]), WSLRec.itemCF(history: [1, 2, 3, 1], neighbours: nb, k: 2))
        // the history is the model's input window
        let window = WSLRec.pretrainingPositives(c, data: data, instances: instances, neighbours: nb, maxLength: 1)
        XCTAssertEqual(Array(window[0]), WSLRec.itemCF(history: [1], neighbours: nb, k: 2))
    }

    func testAllThreeStagesRunAndEachLowersItsLoss() throws {
        let data = cyclicDataset()
        let train = LeaveOneOut(data).train
        let model = labelsSASRec(items: data.itemCount)
        var c = WSLRecConfig(); c.weakK = 3; c.miningK = 5
        let r = try WSLRec.train(c, model: model, loop: quickLoop(data, epochs: 4), instances: train,
                                 trainEnds: WSLRec.leaveOneOutTrainEnds(data), validate: nil)
        XCTAssertLessThan(r.pre.losses.last!, r.pre.losses.first!, "\(r.pre.losses)")
        XCTAssertLessThan(r.fine.losses.last!, r.fine.losses.first!, "\(r.fine.losses)")
    }
}
