import XCTest
import Numerics
import Models
import Data
@testable import Training

/// All-position training is the prefix scheme computed in one causal forward per window: on
/// sequences short enough that every target sees its whole history either way, the two give the
/// same loss and the same gradients.
final class AllPositionTests: XCTestCase {
    override func tearDown() { Threads.set(1) }

    func data() -> SequenceDataset {
        SequenceDataset(sequences: [[1, 2, 3, 4, 5, 6, 7], [8, 9, 1, 3, 5], [2, 4, 6, 8, 10, 12, 1, 3, 11], [5, 6, 7, 8]],
                        itemCount: 12)
    }

    func models(_ kind: String, T: Int) -> (Backbone, Backbone) {
        if kind == "SASRec" {
            var c = SASRecConfig(itemCount: 12)
            c.maxLength = T; c.dim = 8; c.heads = 2; c.blocks = 2; c.inner = 12; c.initStd = 0.3; c.seed = 5
            c.hiddenDropout = 0; c.attentionDropout = 0
            return (SASRec(c), SASRec(c))
        }
        var c = GRU4RecConfig(itemCount: 12)
        c.maxLength = T; c.embedding = 8; c.hidden = 6; c.layers = 2; c.embeddingDropout = 0; c.seed = 5
        return (GRU4Rec(c), GRU4Rec(c))
    }

    /// One step of each scheme over every training target, learning rate 0 (the weights stay);
    /// then the same with a weight per user, which each scheme spreads over that user's rows.
    func testAllPositionLossAndGradientsEqualThePrefixScheme() throws {
        Threads.set(1)
        let T = 8, d = data(), train = LeaveOneOut(d).train
        let userWeight: [Float] = [0.5, 2, 1.25, 0.75]
        for (kind, weighted) in [("SASRec", false), ("GRU4Rec", false), ("SASRec", true), ("GRU4Rec", true)] {
            let (a, b) = models(kind, T: T)
            var losses: [Double] = []
            for (model, scheme) in [(a, TrainingScheme.prefixes), (b, .allPositions)] {
                let rows = scheme == .prefixes ? train.count : WindowSet(train, maxLength: T).count
                let step = try TrainStep(model: model, loss: CrossEntropyLoss(), optimizer: Adam(parameters: model.parameters, learningRate: 0),
                                         scheme: scheme, batchSize: rows)
                var items = [Int32](repeating: 0, count: rows * T), lengths = [Int32](repeating: 0, count: rows)
                var targets = [Int32](repeating: 0, count: scheme == .prefixes ? rows : rows * T)
                let n: Int
                if scheme == .prefixes {
                    n = Batcher(data: d, instances: train, maxLength: T, batchSize: rows).fill(batch: 0, items: &items, lengths: &lengths, targets: &targets)
                } else {
                    n = Batcher(data: d, windowsOf: train, maxLength: T, batchSize: rows).fillWindows(batch: 0, items: &items, lengths: &lengths, targets: &targets)
                }
                // the user of each row: the prefix's, or the window's (one window per user here)
                let users = scheme == .prefixes ? Array(train.users) : WindowSet(train, maxLength: T).users
                let weights = users.map { userWeight[Int($0)] }
                losses.append(try step.step(items: items, lengths: lengths, targets: targets, instances: nil,
                                            weights: weighted ? weights : nil, B: n))
            }
            XCTAssertEqual(losses[0], losses[1], accuracy: 1e-5 * abs(losses[0]), "\(kind) weighted \(weighted): the mean loss over the same targets")
            if weighted {
                // independently: Σ_u w_u · (user u's summed unweighted loss) / all targets, from one
                // unweighted prefix step per user on a third copy of the model
                let (c, _) = models(kind, T: T)
                var expected = 0.0
                for u in 0..<d.userCount {
                    let mine = train.subset((0..<train.count).filter { train.users[$0] == Int32(u) })
                    guard mine.count > 0 else { continue }
                    let step = try TrainStep(model: c, loss: CrossEntropyLoss(), optimizer: Adam(parameters: c.parameters, learningRate: 0),
                                             scheme: .prefixes, batchSize: mine.count)
                    var items = [Int32](repeating: 0, count: mine.count * T), lengths = [Int32](repeating: 0, count: mine.count)
                    var targets = [Int32](repeating: 0, count: mine.count)
                    let n = Batcher(data: d, instances: mine, maxLength: T, batchSize: mine.count)
                        .fill(batch: 0, items: &items, lengths: &lengths, targets: &targets)
                    let mean = try step.step(items: items, lengths: lengths, targets: targets, instances: nil, B: n)
                    expected += Double(userWeight[u]) * mean * Double(n)
                }
                expected /= Double(train.count)
                XCTAssertEqual(losses[1], expected, accuracy: 1e-5 * abs(expected), "\(kind): each window's rows carry its user's weight")
            }
            let ga = a.parameters, gb = b.parameters
            var worst: Float = 0, scale: Float = 0
            for i in 0..<ga.count { worst = max(worst, abs(ga.grads[i] - gb.grads[i])); scale = max(scale, abs(ga.grads[i])) }
            XCTAssertGreaterThan(scale, 0, kind)
            XCTAssertLessThan(worst, 1e-4 * scale, "\(kind) weighted \(weighted): every parameter's gradient")
        }
    }

    /// A selection metric the validation does not report is an error naming it, not a run that
    /// never improves and keeps its initial weights.
    func testAnUnknownSelectionMetricIsRefusedByName() {
        Threads.set(1)
        var config = LoopConfig(); config.maxLength = 8; config.batchSize = 2; config.maxEpochs = 2; config.selectMetric = "ndgc@10"
        let d = data(), split = LeaveOneOut(d)
        let (model, _) = models("GRU4Rec", T: 8)
        let validate: ModelEvaluation = { LabelEvaluation.fullRanking($0, data: d, instances: split.validation, maxLength: 8) }
        XCTAssertThrowsError(try TrainingLoop(data: d, config: config).fit(model: model, instances: split.train, loss: CrossEntropyLoss(),
                                                                           validate: validate)) { error in
            XCTAssertTrue("\(error)".contains("ndgc@10") && "\(error)".contains("ndcg@10"), "\(error)")
        }
    }

    /// A model with K user vectors per sequence has no per-position readout: refused with the reason.
    func testAllPositionsRefusesAModelWithSeveralUserVectorsPerSequence() {
        final class FourInterests: Backbone {
            let inner: SASRec
            init() { var c = SASRecConfig(itemCount: 5); c.maxLength = 4; c.dim = 4; inner = SASRec(c) }
            var name: String { "four-interest" }
            var parameters: ParameterSet { inner.parameters }
            var itemCount: Int { 5 }
            var dim: Int { 4 }
            var interests: Int { 4 }
            var maxLength: Int { 4 }
            var itemTable: Floats { inner.itemTable }
            var itemTableGrad: Floats { inner.itemTableGrad }
            var rng: RNG { get { inner.rng } set { inner.rng = newValue } }
            func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool, readout: Readout) -> UnsafePointer<Float> {
                inner.forward(items: items, lengths: lengths, B: B, training: training, readout: readout)
            }
            func backward(dUser: UnsafePointer<Float>) { inner.backward(dUser: dUser) }
        }
        let m = FourInterests()
        XCTAssertThrowsError(try TrainStep(model: m, loss: CrossEntropyLoss(), optimizer: Adam(parameters: m.parameters),
                                           scheme: .allPositions, batchSize: 2)) { error in
            XCTAssertTrue("\(error)".contains("prefixes"), "\(error)")
        }
        XCTAssertNoThrow(try TrainStep(model: m, loss: CrossEntropyLoss(), optimizer: Adam(parameters: m.parameters),
                                       scheme: .prefixes, batchSize: 2))
    }

    /// Cancelling stops the loop at its next step with the epoch it was in; progress events come
    /// per step and per epoch, with the epoch's validation metrics.
    func testCancellationStopsAtTheNextStepAndProgressReportsEpochs() throws {
        Threads.set(1)
        var config = LoopConfig(); config.maxLength = 8; config.batchSize = 2; config.maxEpochs = 5
        let d = data(), split = LeaveOneOut(d)
        let loop = TrainingLoop(data: d, config: config)
        let (model, _) = models("GRU4Rec", T: 8)
        var events: [TrainingProgress] = []
        let cancel = Cancellation()
        loop.cancellation = cancel
        loop.progress = { p in
            events.append(p)
            if p.event == .epoch && p.epoch == 2 { cancel.cancel() }
        }
        let validate: ModelEvaluation = { LabelEvaluation.fullRanking($0, data: d, instances: split.validation, maxLength: 8) }
        XCTAssertThrowsError(try loop.fit(model: model, instances: split.train, loss: CrossEntropyLoss(), validate: validate)) { error in
            XCTAssertEqual(error as? TrainingError, .cancelled(epoch: 3))
        }
        let epochs = events.filter { $0.event == .epoch }
        XCTAssertEqual(epochs.map(\.epoch), [1, 2])
        XCTAssertNotNil(epochs[0].valid["ndcg@10"])
        let steps = events.filter { $0.event == .step && $0.epoch == 1 }
        XCTAssertEqual(steps.map(\.step), Array(1...steps[0].steps), "one event per step")
        XCTAssertEqual(steps[0].steps, 2, "4 windows in batches of 2")
    }
}
