import XCTest
import Foundation
import Numerics
import Models
import Data
@testable import Training

/// A run stopped after any epoch and continued from its checkpoint must be the run that never
/// stopped; a checkpoint that is damaged or belongs to another run must be refused untouched.
final class CheckpointTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-checkpoint-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
        Threads.set(1)
    }

    func data() -> SequenceDataset {
        var rng = RNG(seed: 9)
        let seqs: [[Int32]] = (0..<30).map { u in
            var x = rng.below(25)
            return (0..<12).map { _ in defer { x = (x + 1 + u % 4) % 25 }; return Int32(1 + x) }
        }
        return SequenceDataset(sequences: seqs, itemCount: 25)
    }

    func training(_ kind: ModelKind, seed: UInt64 = 2, epochs: Int, objective: BaseObjective = .fullSoftmax,
                  scheme: TrainingScheme = .allPositions) -> BaseRun {
        var cfg = BaseRunConfig(model: kind)
        cfg.loop.scheme = scheme; cfg.loop.seed = seed; cfg.loop.maxEpochs = epochs; cfg.loop.batchSize = 32; cfg.loop.maxLength = 6; cfg.objective = objective
        return BaseRun(data: data(), config: cfg)
    }

    func values(_ t: BaseRun) -> [Float] { Array(UnsafeBufferPointer(start: t.model.parameters.values, count: t.model.parameters.count)) }

    func testContinuedRunEqualsUninterruptedRun() throws {
        Threads.set(2)
        let cases: [(ModelKind, BaseObjective, TrainingScheme)] = [
            (.sasrec, .fullSoftmax, .allPositions), (.gru4rec, .sampledSoftmax(negatives: 8, popularity: false), .prefixes),
            (.gru4rec, .sampledSoftmax(negatives: 8, popularity: true), .allPositions)]
        for (kind, objective, scheme) in cases {
            let straight = training(kind, epochs: 4, objective: objective, scheme: scheme)
            let whole = try straight.run()
            let path = directory.appendingPathComponent("\(kind)-\(scheme).ckpt").path
            let first = training(kind, epochs: 2, objective: objective, scheme: scheme)
            _ = try first.run(checkpoint: path)
            // a new process: fresh objects, everything from the file
            let second = training(kind, epochs: 4, objective: objective, scheme: scheme)
            let resumed = try second.run(checkpoint: path)
            XCTAssertEqual(resumed.log.map(\.loss), whole.log.map(\.loss), "\(kind): the epochs' losses")
            XCTAssertEqual(resumed.log.map(\.validNDCG10), whole.log.map(\.validNDCG10), "\(kind)")
            XCTAssertEqual(resumed.test, whole.test, "\(kind): test metrics")
            XCTAssertEqual(resumed.bestEpoch, whole.bestEpoch)
            XCTAssertEqual(resumed.epochs, 4)
            XCTAssertTrue(values(second) == values(straight), "\(kind): final (best) weights bit for bit")
        }
    }

    func testFinishedRunIsOnlyEvaluatedAgain() throws {
        Threads.set(1)
        var cfg = BaseRunConfig(model: .gru4rec)
        cfg.loop.maxEpochs = 50; cfg.loop.patience = 1; cfg.loop.batchSize = 32; cfg.loop.maxLength = 6; cfg.loop.learningRate = 0
        let path = directory.appendingPathComponent("stopped.ckpt").path
        let first = try BaseRun(data: data(), config: cfg).run(checkpoint: path)
        XCTAssertEqual(first.epochs, 2, "no gain after epoch 1, patience 1")
        let again = try BaseRun(data: data(), config: cfg).run(checkpoint: path)
        XCTAssertEqual(again.epochs, 2, "an early-stopped run trains no further")
        XCTAssertEqual(again.test, first.test)
    }

    func testCheckpointOfAnotherRunIsRefusedAndChangesNothing() throws {
        Threads.set(1)
        let path = directory.appendingPathComponent("seed2.ckpt").path
        _ = try training(.sasrec, seed: 2, epochs: 1).run(checkpoint: path)
        let other = training(.sasrec, seed: 3, epochs: 2)
        let before = values(other)
        XCTAssertThrowsError(try other.run(checkpoint: path)) { error in
            guard case .mismatch(_, let field, let stored, let current) = error as? CheckpointError else {
                return XCTFail("expected a mismatch, got \(error)")
            }
            XCTAssertEqual(field, "seed"); XCTAssertEqual(stored, "2"); XCTAssertEqual(current, "3")
            XCTAssertTrue("\(error)".contains(path), "the error names the file")
        }
        XCTAssertTrue(values(other) == before, "nothing trained or loaded")
        Threads.set(2)
        XCTAssertThrowsError(try training(.sasrec, seed: 2, epochs: 2).run(checkpoint: path),
                             "another thread count would not reproduce the run") { error in
            guard case .mismatch(_, "threads", _, _) = error as? CheckpointError else { return XCTFail("\(error)") }
        }
    }

    func testDamagedCheckpointIsRefusedAndLeftAsItWas() throws {
        Threads.set(1)
        let path = directory.appendingPathComponent("damaged.ckpt").path
        _ = try training(.gru4rec, epochs: 1).run(checkpoint: path)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let t = training(.gru4rec, epochs: 2)
        let before = values(t)
        XCTAssertThrowsError(try t.run(checkpoint: path)) { error in
            guard case .corrupt(_, let reason) = error as? CheckpointError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("checksum"), reason)
        }
        XCTAssertTrue(values(t) == before, "nothing loaded")
        XCTAssertTrue([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) == bytes, "the file is not overwritten")
        try Data(bytes.prefix(100)).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try t.run(checkpoint: path)) { error in
            guard case .corrupt = error as? CheckpointError else { return XCTFail("\(error)") }
        }
        try Data("WNWP not a checkpoint".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try t.run(checkpoint: path)) { error in
            XCTAssertTrue("\(error)".contains("bad magic"), "\(error)")
        }
    }

    func testGeneratorStatesContinueTheirSequences() {
        var a = RNG(seed: 11)
        _ = a.normal()   // leaves a spare normal
        var b = RNG(state: a.state)!
        XCTAssertEqual((0..<5).map { _ in a.normal() }, (0..<5).map { _ in b.normal() })
        XCTAssertNil(RNG(state: [0, 0, 0, 0, 0, 0]), "the all-zero state is not one xoshiro can be in")
        XCTAssertNil(RNG(state: [1, 2, 3]))
        var batcher = Batcher(data: data(), instances: LeaveOneOut(data()).train, maxLength: 6, batchSize: 8, seed: 4)
        batcher.shuffle()
        var copy = Batcher(data: data(), instances: LeaveOneOut(data()).train, maxLength: 6, batchSize: 8, seed: 99)
        XCTAssertTrue(copy.restore(order: batcher.order, shufflePosition: batcher.shufflePosition))
        batcher.shuffle(); copy.shuffle()
        XCTAssertEqual(copy.order, batcher.order)
        var bad = batcher.order; bad[0] = bad[1]
        XCTAssertFalse(copy.restore(order: bad, shufflePosition: 0), "not a permutation")
        XCTAssertEqual(copy.order, batcher.order, "a refused restore changes nothing")
    }
}
