import XCTest
import Numerics
import Models
import Data
import Training
@testable import Methods

/// Under all-position training a label method scores each target of a window as the prefix
/// scheme scores that target's prefix: soft labels from the teachers' output at the row's
/// position, UFNRec's records and multi-positives by the row's instance, its input items by the
/// row's position. On sequences that fit one window, steps of each scheme over every training
/// target (learning rate 0, no dropout) give the same losses and gradients.
final class AllPositionMethodTests: XCTestCase {
    override func tearDown() { Threads.set(1) }
    let T = 8

    func data() -> SequenceDataset {
        SequenceDataset(sequences: [[1, 2, 3, 4, 5, 6, 7], [8, 9, 1, 3, 5], [2, 4, 6, 8, 10, 12, 1, 3, 11], [5, 6, 7, 8]],
                        itemCount: 12)
    }

    func sasrec(_ seed: UInt64) -> SASRec {
        var c = SASRecConfig(itemCount: 12)
        c.maxLength = T; c.dim = 8; c.heads = 2; c.blocks = 2; c.inner = 12; c.initStd = 0.3; c.seed = seed
        c.hiddenDropout = 0; c.attentionDropout = 0
        return SASRec(c)
    }

    /// One batch of every training target under `scheme`, in `TrainStep`'s layout.
    struct Batch { var items: [Int32], lengths: [Int32], targets: [Int32], instances: [Int32], n: Int, capacity: Int }
    func batch(_ scheme: TrainingScheme) -> Batch {
        let d = data(), train = LeaveOneOut(d).train
        let rows = scheme == .prefixes ? train.count : WindowSet(train, maxLength: T).count
        let per = scheme == .prefixes ? rows : rows * T
        var items = [Int32](repeating: 0, count: rows * T), lengths = [Int32](repeating: 0, count: rows)
        var targets = [Int32](repeating: 0, count: per), instances = [Int32](repeating: 0, count: per)
        let n = scheme == .prefixes
            ? Batcher(data: d, instances: train, maxLength: T, batchSize: rows)
                .fill(batch: 0, items: &items, lengths: &lengths, targets: &targets, instances: &instances)
            : Batcher(data: d, windowsOf: train, maxLength: T, batchSize: rows)
                .fillWindows(batch: 0, items: &items, lengths: &lengths, targets: &targets, instances: &instances)
        return Batch(items: items, lengths: lengths, targets: targets, instances: instances, n: n, capacity: rows)
    }

    /// Runs `step` (returning the loss) `steps` times per scheme on a fresh student of the same
    /// seed; asserts equal losses at every step and equal gradients after the last.
    func compare(steps: Int = 1, file: StaticString = #filePath, line: UInt = #line,
                 _ step: (Backbone, TrainingScheme, Batch) throws -> Double) throws {
        Threads.set(1)
        var losses: [[Double]] = [], grads: [[Float]] = []
        for scheme in [TrainingScheme.prefixes, .allPositions] {
            let model = sasrec(5), b = batch(scheme)
            losses.append(try (0..<steps).map { _ in try step(model, scheme, b) })
            grads.append(Array(UnsafeBufferPointer(start: model.parameters.grads, count: model.parameters.count)))
        }
        for s in 0..<steps {
            XCTAssertEqual(losses[0][s], losses[1][s], accuracy: 1e-5 * abs(losses[0][s]), "step \(s + 1)'s loss", file: file, line: line)
        }
        var worst: Float = 0, scale: Float = 0
        for i in 0..<grads[0].count { worst = max(worst, abs(grads[0][i] - grads[1][i])); scale = max(scale, abs(grads[0][i])) }
        XCTAssertGreaterThan(scale, 0, file: file, line: line)
        XCTAssertLessThan(worst, 1e-4 * scale, "every parameter's gradient", file: file, line: line)
    }

    /// `compare` for a label objective `make(student)` on the loop's step (learning rate 0).
    func compare(steps: Int = 1, _ make: (Backbone) -> LabelObjective,
                 file: StaticString = #filePath, line: UInt = #line) throws {
        var current: (model: Backbone, step: TrainStep)? = nil
        try compare(steps: steps, file: file, line: line) { model, scheme, b in
            if current?.model !== model {
                current = (model, try TrainStep(model: model, loss: ObjectiveLoss(make(model)),
                                                optimizer: Adam(parameters: model.parameters, learningRate: 0), scheme: scheme,
                                                batchSize: b.capacity))
            }
            return try current!.step.step(items: b.items, lengths: b.lengths, targets: b.targets, instances: b.instances, B: b.n)
        }
    }

    func testCSRecStudentsSoftLabelsComeFromEachRowsPosition() throws {
        let source = ModelSoftLabelSource(teachers: [sasrec(11), sasrec(12)])
        try compare { _ in CSRecStudentObjective(source: source, beta: 0.5, temperature: 2) }
    }

    func testCSRecTMainTeachersConsistencyAndNoiseTermsPerRow() throws {
        let side = ModelSoftLabelSource(teachers: [sasrec(13)])
        try compare { _ in
            CSRecTeacherObjective(side: side, noise: NoiseMatrix(itemCount: 12, rank: 3, seed: 1), alpha: 0.3, learningRate: 0)
        }
    }

    func testWSLRecsMultiPositivesAreLookedUpByEachRowsInstance() throws {
        var config = WSLRecConfig(); config.sources = [.br]; config.weakK = 3
        let d = data(), train = LeaveOneOut(d).train
        let sets = WSLRec.pretrainingPositives(config, data: d, instances: train, neighbours: nil, maxLength: T)
        try compare { _ in MultiPositiveObjective(sets) }
    }

    /// After warm-up, with m = 1 and more negatives than items (every allowed item is drawn, so
    /// the draws' order does not matter): step 1 records the hard negatives, step 2 re-feeds and
    /// reverses them, step 3 trains them as positives with the EMA teacher's soft labels, which
    /// the teacher reads at each row's position.
    func testUFNRecsRecordsReversalsAndTeacherPerRow() throws {
        var config = UFNRecConfig(); config.negatives = 30; config.m = 1
        var reversed: [Int] = []
        try compare(steps: 3) { student in
            let u = UFNRecObjective(config: config, student: student, teacher: sasrec(5), seed: 3)
            u.endWarmup()
            reversed.append(0)
            return CheckReversals(u) { reversed[reversed.count - 1] = $0 }
        }
        XCTAssertEqual(reversed.count, 2)
        XCTAssertGreaterThan(reversed[0], 0, "some negatives were reversed, so the teacher path ran")
        XCTAssertEqual(reversed[0], reversed[1], "the same reversals under both schemes")
    }

    /// UFNRec's objective, reporting its reversed count after each step.
    final class CheckReversals: LabelObjective {
        let inner: UFNRecObjective, report: (Int) -> Void
        init(_ inner: UFNRecObjective, report: @escaping (Int) -> Void) { self.inner = inner; self.report = report }
        func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double {
            defer { report(inner.records.reversedCount) }
            return try inner.loss(batch: batch, logits: logits, dlogits: dlogits)
        }
        func afterUpdate() { inner.afterUpdate() }
    }

    /// Weighs a (history, target) pair by a fixed function of it, and keeps what it saw.
    final class HistoryWeigher: SequenceWeigher {
        /// instance → history + target, as weighed; instance → dL/dw
        var seen: [Int32: [Int32]] = [:], dW: [Int32: Float] = [:]
        private var order: [Int32] = []
        func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws {
            order = (0..<batch.B).map { batch.instances[$0] }
            for b in 0..<batch.B {
                let h = Array(UnsafeBufferPointer(start: batch.items + b * batch.T, count: Int(batch.lengths[b])))
                seen[batch.instances[b]] = h + [batch.targets[b]]
                weights[b] = 0.25 + Float(h.reduce(0, +) % 7) / 8 + Float(batch.targets[b]) / 40
            }
        }
        func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws {
            for b in 0..<B { dW[order[b]] = dWeights[b] }
        }
    }

    /// ATJT weighs each row, one (history, target) pair: under all positions the weigher sees the
    /// window up to the row, as the prefix scheme's row, and the loss, gradients and dL/dw per
    /// instance equal the prefix scheme's, with the next-item CE and with CSRec's student loss.
    func testATJTWeighsEachRowsHistoryAsThePrefixSchemeDoes() throws {
        let source = ModelSoftLabelSource(teachers: [sasrec(11)])
        for composed in [false, true] {
            var weighers: [HistoryWeigher] = []
            try compare { model, scheme, b in
                let weigher = HistoryWeigher()
                weighers.append(weigher)
                let loss = composed ? WeightedCSRecStudent(source: source, beta: 0.5, temperature: 2) : nil
                let trainer = ATJTTrainer(model: model, weighers: [weigher], learningRate: 0, maxBatch: b.capacity, loss: loss, scheme: scheme)
                return try b.items.withUnsafeBufferPointer { i in try b.lengths.withUnsafeBufferPointer { l in
                    try b.targets.withUnsafeBufferPointer { t in try b.instances.withUnsafeBufferPointer { k in
                        try trainer.step(FilledBatch(items: i.baseAddress!, lengths: l.baseAddress!, targets: t.baseAddress!,
                                                     instances: k.baseAddress!, B: b.n), group: 0)
                    } }
                } }
            }
            XCTAssertEqual(weighers[0].seen.count, LeaveOneOut(data()).train.count)
            XCTAssertEqual(weighers[0].seen, weighers[1].seen, "each instance's history and target")
            for (k, d) in weighers[0].dW {
                XCTAssertEqual(d, weighers[1].dW[k] ?? .nan, accuracy: 1e-5 * max(abs(d), 1e-3), "dL/dw of instance \(k), CSRec \(composed)")
            }
        }
    }
}
