import XCTest
import Numerics
import Models
import Data
@testable import Training

final class TrainingTests: XCTestCase {
    /// A learnable synthetic dataset: each user walks a cycle through items with a user-specific
    /// stride, so the next item follows from the last ones.
    func syntheticData(users: Int = 40, items: Int = 30, length: Int = 14) -> SequenceDataset {
        var rng = RNG(seed: 5)
        var seqs: [[Int32]] = []
        for u in 0..<users {
            let stride = 1 + u % 3
            var x = rng.below(items)
            var s: [Int32] = []
            for _ in 0..<length { s.append(Int32(1 + x)); x = (x + stride) % items }
            seqs.append(s)
        }
        return SequenceDataset(sequences: seqs, itemCount: items)
    }

    func run(_ kind: ModelKind, seed: UInt64, epochs: Int, threads: Int, scheme: TrainingScheme = .allPositions) -> BaseRunResult {
        Threads.set(threads)
        var cfg = BaseRunConfig(model: kind)
        cfg.loop.scheme = scheme
        cfg.loop.seed = seed; cfg.loop.maxEpochs = epochs; cfg.loop.batchSize = 64; cfg.loop.maxLength = 8
        return try! BaseRun(data: syntheticData(), config: cfg).run()
    }

    func testSameSeedAndThreadsGiveIdenticalMetrics() {
        for kind in ModelKind.allCases {
            let a = run(kind, seed: 3, epochs: 2, threads: 2), b = run(kind, seed: 3, epochs: 2, threads: 2)
            XCTAssertEqual(a.valid, b.valid, "\(kind)")
            XCTAssertEqual(a.test, b.test, "\(kind)")
            XCTAssertEqual(a.log.map(\.loss), b.log.map(\.loss), "\(kind)")
            let c = run(kind, seed: 4, epochs: 2, threads: 2)
            XCTAssertNotEqual(a.log.map(\.loss), c.log.map(\.loss), "another seed trains differently (\(kind))")
        }
        Threads.set(1)
    }

    func testTrainingLearnsASequentialPatternAndRestoresBestWeights() {
        for kind in ModelKind.allCases {
            for scheme in TrainingScheme.allCases {
            let r = run(kind, seed: 1, epochs: scheme == .allPositions ? 40 : 25, threads: 1, scheme: scheme)
            XCTAssertLessThan(r.log.last!.loss, r.log.first!.loss, "\(kind) loss decreases")
            // random ranking of 30 items gives hr@10 = 1/3 on average
            XCTAssertGreaterThan(r.valid["hr@10"] ?? 0, 0.6, "\(kind) learns the pattern: \(r.valid)")
            let bestLogged = r.log.map(\.validNDCG10).max()!
            XCTAssertEqual(r.valid["ndcg@10"]!, bestLogged, accuracy: 1e-9, "\(kind) evaluates the best-validation weights")
            XCTAssertEqual(r.log[r.bestEpoch - 1].validNDCG10, bestLogged)
            for key in ["ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20", "mrr@20"] { XCTAssertNotNil(r.test[key], key) }
            XCTAssertEqual(r.scheme, scheme)
            }
        }
    }

    func testEarlyStoppingHonoursPatience() {
        Threads.set(1)
        var cfg = BaseRunConfig(model: .gru4rec)
        cfg.loop.maxEpochs = 200; cfg.loop.patience = 2; cfg.loop.batchSize = 64; cfg.loop.maxLength = 8; cfg.loop.learningRate = 0
        let r = try! BaseRun(data: syntheticData(), config: cfg).run()
        // with a zero learning rate nothing improves after epoch 1
        XCTAssertEqual(r.bestEpoch, 1)
        XCTAssertEqual(r.epochs, 3)
    }

    func testSampledSoftmaxObjectiveTrains() {
        Threads.set(1)
        var cfg = BaseRunConfig(model: .gru4rec)
        cfg.loop.maxEpochs = 3; cfg.loop.batchSize = 64; cfg.loop.maxLength = 8; cfg.objective = .sampledSoftmax(negatives: 10, popularity: true)
        cfg.loop.scheme = .prefixes   // 7 steps an epoch (windows: 2)
        let r = try! BaseRun(data: syntheticData(), config: cfg).run()
        XCTAssertLessThan(r.log.last!.loss, r.log.first!.loss)
    }
}
