import XCTest
import Numerics
import Models
import Data
@testable import Methods
@testable import Jobs

final class UFNRecTests: XCTestCase {
    func testANegativeOutscoringThePositiveMorePlusOneTimesIsReversedAndOneThatDoesNotIsNot() {
        let m = 3
        var r = FalseNegativeRecords(m: m)
        for round in 1...(m + 1) {
            r.observe(instance: 0, positiveScore: 1.0, negatives: [(7, 2.0), (9, 0.5), (8, round <= m ? 1.5 : 0.1)])
            XCTAssertEqual(r.isReversed(0, 7), round == m + 1, "round \(round)")
        }
        XCTAssertFalse(r.isReversed(0, 8), "outscored exactly m times")
        XCTAssertEqual(r.recorded(0), [], "8 did not outscore the positive at the last visit: not re-fed")
        XCTAssertEqual(r.count(0, 8), m, "its count stays")
        XCTAssertFalse(r.isReversed(0, 9))
        XCTAssertEqual(r.reversedItems(0), [7])
        // per (user, position): another instance is unaffected
        XCTAssertTrue(r.reversedItems(1).isEmpty)
        XCTAssertEqual(r.reversedCount, 1)
    }

    /// N_rec is the last visit's hard negatives (Eq. 5: recorded in one epoch, re-fed in the next),
    /// in draw order, not every candidate ever recorded.
    func testRecordedNegativesAreThoseThatOutscoredThePositiveAtTheLastVisit() {
        var r = FalseNegativeRecords(m: 10)
        r.observe(instance: 4, positiveScore: 0, negatives: [(9, 1), (3, 2), (6, -1), (5, 3)])
        XCTAssertEqual(r.recorded(4), [9, 3, 5])
        r.observe(instance: 4, positiveScore: 0, negatives: [(9, -1), (3, 2), (5, -2), (7, 1)])
        XCTAssertEqual(r.recorded(4), [3, 7], "9 and 5 stopped outscoring the positive")
        XCTAssertEqual([r.count(4, 9), r.count(4, 3), r.count(4, 5), r.count(4, 7)], [1, 2, 1, 1])
        r.observe(instance: 4, positiveScore: 5, negatives: [(3, 2), (7, 1)])
        XCTAssertEqual(r.recorded(4), [])
    }

    /// In the objective: what is re-fed at a visit is exactly what outscored the positive at the
    /// previous one; once nothing outscores it, nothing is re-fed.
    func testTheObjectiveReFeedsOnlyThePreviousVisitsHardNegatives() throws {
        let N = 30, T = 4
        var c = UFNRecConfig(); c.negatives = 4; c.m = 100
        let student = labelsSASRec(items: N, maxLength: T, seed: 1), teacher = labelsSASRec(items: N, maxLength: T, seed: 1)
        let objective = UFNRecObjective(config: c, student: student, teacher: teacher, seed: 5)
        objective.endWarmup()
        let items: [Int32] = [1, 0, 0, 0], lengths: [Int32] = [1], targets: [Int32] = [2], rows: [Int32] = [0]
        /// One visit; returns the items fed as negatives (positive gradient).
        func visit(_ logits: [Float]) throws -> Set<Int32> {
            var dlogits = [Float](repeating: 0, count: N)
            try items.withUnsafeBufferPointer { ib in try lengths.withUnsafeBufferPointer { lb in
                try targets.withUnsafeBufferPointer { tb in try rows.withUnsafeBufferPointer { rb in
                    let batch = LabelBatch(items: ib.baseAddress!, lengths: lb.baseAddress!, targets: tb.baseAddress!,
                                           instances: rb.baseAddress!, B: 1, T: T, N: N)
                    _ = try objective.loss(batch: batch, logits: logits, dlogits: &dlogits)
                }}
            }}
            return Set((0..<N).filter { dlogits[$0] > 0 }.map { Int32($0 + 1) })
        }
        // every item outscores the positive (item 2): all four negatives become N_rec
        var logits = [Float](repeating: 1, count: N); logits[1] = 0
        let first = try visit(logits)
        XCTAssertEqual(first.count, 4)
        XCTAssertEqual(Set(objective.records.recorded(0)), first)
        // they are re-fed, now scoring below the positive: N_rec empties
        for i in first { logits[Int(i) - 1] = -1 }
        let second = try visit(logits)
        XCTAssertEqual(second, first, "the previous visit's hard negatives fill the n slots")
        // the other items still outscore the positive, but none of them was drawn at this visit
        XCTAssertEqual(objective.records.recorded(0), [], "stopped outscoring: no longer recorded")
    }

    /// Negatives are never the user's own items: with `history`, nothing of the user's training
    /// sequence (later positions included, as the authors' sampler); without it, at least nothing
    /// of the row's input.
    func testNegativesAreNeverItemsOfTheUsersTrainingSequence() throws {
        // user 0 trains on items 1...6 (7, 8 are validation and test), user 1 on 9, 10, 7
        let data = SequenceDataset(sequences: [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 7, 8, 3]], itemCount: 10)
        let train = LeaveOneOut(data).train
        let N = 10, T = 4
        var c = UFNRecConfig(); c.negatives = 3
        for withHistory in [true, false] {
            let objective = UFNRecObjective(config: c, student: labelsSASRec(items: N, maxLength: T),
                                            teacher: labelsSASRec(items: N, maxLength: T), seed: 3,
                                            history: withHistory ? TrainingSequences(data: data, instances: train) : nil)
            for (k, own) in [(Int32(0), withHistory ? Set<Int32>(1...6) : [1]), (Int32(5), withHistory ? [9, 10, 7] : [9])] {
                let items = AuxInts([Int32](repeating: 0, count: T)), lengths = AuxInts([0]), targets = AuxInts([0]), ids = AuxInts([k])
                fillInstanceRows(data: data, instances: train, ids: ids.p, n: 1, maxLength: T, items: items.p, lengths: lengths.p,
                                 targets: targets.p)
                let batch = LabelBatch(items: items.p, lengths: lengths.p, targets: targets.p, instances: ids.p, B: 1, T: T, N: N)
                let logits = [Float](repeating: 0, count: N)
                var fed = Set<Int32>()
                for _ in 0..<40 {
                    var dlogits = [Float](repeating: 0, count: N)
                    _ = try objective.loss(batch: batch, logits: logits, dlogits: &dlogits)
                    for j in 0..<N where dlogits[j] > 0 { fed.insert(Int32(j + 1)) }
                }
                XCTAssertFalse(fed.isEmpty)
                XCTAssertTrue(fed.isDisjoint(with: own), "instance \(k), history \(withHistory): \(fed.intersection(own)) drawn")
            }
        }
    }

    func testEMATeacherEqualsTheClosedFormAverage() {
        let d: Float = 0.9
        let student = ParameterSet([("w", [4])]), teacher = ParameterSet([("w", [4])])
        let ema = ExponentialMovingAverage(average: teacher, decay: d)
        let steps: [[Float]] = [[1, 2, 3, 4], [0, -1, 2, 5], [3, 3, 3, 3], [-2, 0, 1, 7]]
        for i in 0..<4 { student.values[i] = steps[0][i] }
        ema.reset(to: student)
        for s in steps.dropFirst() {
            for i in 0..<4 { student.values[i] = s[i] }
            ema.update(from: student)
        }
        // ω'_3 = d³ ω_0 + (1 − d)(d² ω_1 + d ω_2 + ω_3)
        for i in 0..<4 {
            let expected = powf(d, 3) * steps[0][i] + (1 - d) * (d * d * steps[1][i] + d * steps[2][i] + steps[3][i])
            XCTAssertEqual(teacher.values[i], expected, accuracy: 1e-5)
        }
    }

    /// Drives the objective with fixed scores where item 3 beats the positive every time: it is
    /// pushed down as a negative until recorded more than m times, then pulled up as a positive
    /// with the consistency term added.
    func testReversedItemTurnsFromNegativeToPositiveInTheLoss() throws {
        let N = 6, T = 4
        var c = UFNRecConfig(); c.negatives = 5; c.m = 2; c.alpha = 0.3
        let student = labelsSASRec(items: N, maxLength: T, seed: 1), teacher = labelsSASRec(items: N, maxLength: T, seed: 1)
        let objective = UFNRecObjective(config: c, student: student, teacher: teacher, seed: 1)
        objective.endWarmup()
        let items: [Int32] = [1, 2, 0, 0], lengths: [Int32] = [2], targets: [Int32] = [5], rows: [Int32] = [0]
        let logits: [Float] = [0, 0, 4, 0, 1, 0]   // item 3 scores 4, the positive (5) scores 1
        var dlogits = [Float](repeating: 0, count: N)
        var signs: [Float] = []
        for _ in 0..<(c.m + 2) {
            try items.withUnsafeBufferPointer { ib in try lengths.withUnsafeBufferPointer { lb in
                try targets.withUnsafeBufferPointer { tb in try rows.withUnsafeBufferPointer { rb in
                    let batch = LabelBatch(items: ib.baseAddress!, lengths: lb.baseAddress!, targets: tb.baseAddress!,
                                           instances: rb.baseAddress!, B: 1, T: T, N: N)
                    _ = try objective.loss(batch: batch, logits: logits, dlogits: &dlogits)
                }}
            }}
            signs.append(dlogits[2])
        }
        // calls 1...m+1 treat item 3 as a negative (gradient > 0); it is reversed after call m+1
        for i in 0...c.m { XCTAssertGreaterThan(signs[i], 0, "call \(i + 1)") }
        XCTAssertTrue(objective.records.isReversed(0, 3))
        let s: Float = 4
        let sig = 1 / (1 + expf(-s))
        // teacher = student's EMA start; its score for item 3 gives ŷ
        let u = teacher.forward(items: items, lengths: lengths, B: 1, training: false)
        var ts: Float = 0
        for k in 0..<teacher.dim { ts += u[k] * teacher.itemTable[3 * teacher.dim + k] }
        let yHat = 1 / (1 + expf(-ts))
        // one row: E = 1 positive + 1 reversed + 2 negatives (4 and 6: 1, 2 are the input), R = 1
        XCTAssertEqual(signs[c.m + 1], 2 / 4 * (sig - 1) + c.alpha * (sig - yHat), accuracy: 1e-5)
        XCTAssertFalse(objective.records.isReversed(0, 1))
    }

    /// The authors' normalisation: L = 2/E · Σ basic BCE over the batch's E entries + α/R · Σ
    /// consistency BCE over its R reversed entries (their `2 * BCEWithLogitsLoss()` and
    /// `lbd * BCEWithLogitsLoss()` over the reversed entries), not sums per row averaged over rows.
    func testLossIsTwiceTheMeanBCEOverEntriesPlusAlphaTimesTheMeanConsistencyOverReversedEntries() throws {
        let N = 7, T = 2
        var c = UFNRecConfig(); c.negatives = 5; c.m = 0; c.alpha = 0.3
        let student = labelsSASRec(items: N, maxLength: T, seed: 1), teacher = labelsSASRec(items: N, maxLength: T, seed: 2)
        let objective = UFNRecObjective(config: c, student: student, teacher: teacher, seed: 1)
        objective.endWarmup()
        // row 0: input [1] → 2, negatives all of {3, 4, 5, 6, 7}; row 1: input [3] → 4, negatives {1, 2, 5, 6, 7}
        let items = AuxInts([1, 0, 3, 0]), lengths = AuxInts([1, 1]), targets = AuxInts([2, 4]), ids = AuxInts([0, 1])
        let batch = LabelBatch(items: items.p, lengths: lengths.p, targets: targets.p, instances: ids.p, B: 2, T: T, N: N)
        var logits = [Float](repeating: 0, count: 2 * N)
        logits[1] = 1; logits[4] = 3         // row 0: the positive scores 1, item 5 scores 3 (m = 0: reversed at once)
        logits[N + 3] = 2                    // row 1: the positive scores 2
        var dlogits = [Float](repeating: 0, count: 2 * N)
        _ = try objective.loss(batch: batch, logits: logits, dlogits: &dlogits)
        XCTAssertEqual(objective.records.reversedItems(0), [5])
        let loss = try objective.loss(batch: batch, logits: logits, dlogits: &dlogits)
        func sp(_ x: Float) -> Double { Double(log1p(expf(x))) }
        func sig(_ x: Float) -> Float { 1 / (1 + expf(-x)) }
        // E = row 0's positive, reversed 5 and negatives {3, 4, 6, 7} + row 1's positive and 5 negatives; R = 1
        let E = 12.0
        let basic0 = sp(-1) + sp(-3) + 4 * sp(0), basic1 = sp(-2) + 5 * sp(0)
        let u = teacher.forward(items: items.p, lengths: lengths.p, B: 2, training: false)
        var ts: Float = 0
        for k in 0..<teacher.dim { ts += u[k] * teacher.itemTable[5 * teacher.dim + k] }
        let yHat = sig(ts)
        let consistency = sp(3) - Double(yHat) * 3
        XCTAssertEqual(loss, 2 / E * (basic0 + basic1) + Double(c.alpha) * consistency, accuracy: 1e-5)
        XCTAssertEqual(dlogits[4], Float(2 / E) * (sig(3) - 1) + c.alpha * (sig(3) - yHat), accuracy: 1e-6, "reversed item 5")
        XCTAssertEqual(dlogits[1], Float(2 / E) * (sig(1) - 1), accuracy: 1e-6, "row 0's positive")
        XCTAssertEqual(dlogits[N + 0], Float(2 / E) * sig(0), accuracy: 1e-6, "row 1's negative 1")
        // per-row shares (ATJT's ℓ_b): ℓ_b = 2B/E · basic_b + αB/R · consistency_b, their mean is L
        let w = AuxFloats(2, fill: 1), rowLosses = AuxFloats(2)
        let weighted = try dlogits.withUnsafeMutableBufferPointer {
            try objective.loss(batch: batch, logits: logits, dlogits: $0.baseAddress!, weights: w.p, norm: 2, losses: rowLosses.p)
        }
        XCTAssertEqual(weighted, loss, accuracy: 1e-6)
        XCTAssertEqual(Double(rowLosses.p[0]), 4 / E * basic0 + 2 * Double(c.alpha) * consistency, accuracy: 1e-5)
        XCTAssertEqual(Double(rowLosses.p[1]), 4 / E * basic1, accuracy: 1e-5)
    }

    /// After warm-up the job validates, keeps and tests the EMA teacher, as the authors evaluate
    /// `with ema.average_parameters()`. With d = 1 the teacher stays the student of the last warm-up
    /// epoch, so the epochs after it evaluate one frozen model: never better, and a longer run
    /// ends with the same model as one that stops at the end of warm-up.
    func testTheJobEvaluatesTheEMATeacherAfterWarmup() throws {
        let data = cyclicDataset(users: 40, items: 20, length: 12)
        // a method trains one row per prefix ("scheme": "prefixes"; a loop without schemes ignores the key)
        var job = try JobConfig.parse(Data(#"{"backbone": "gru4rec", "loop": {"scheme": "prefixes"}}"#.utf8))
        job.loop.maxLength = 8; job.loop.batchSize = 64; job.loop.learningRate = 5e-3; job.loop.patience = 20
        var u = UFNRecConfig(); u.negatives = 5; u.m = 1; u.decay = 1; u.maxWarmupEpochs = 2
        job.methods = JobMethods(ufnrec: u)
        job.loop.maxEpochs = 2
        let short = try JobRunner.run(job, data: data)
        job.loop.maxEpochs = 8
        let long = try JobRunner.run(job, data: data)
        XCTAssertEqual(long.epochs, 8)
        XCTAssertLessThanOrEqual(long.bestEpoch, 2, "epochs 3...8 evaluate the frozen teacher")
        XCTAssertEqual(long.bestEpoch, short.bestEpoch)
        XCTAssertEqual(long.valid, short.valid)
        XCTAssertEqual(long.test, short.test)

        let student = labelsSASRec(items: 10), teacher = labelsSASRec(items: 10)
        let objective = UFNRecObjective(config: UFNRecConfig(), student: student, teacher: teacher, seed: 1)
        XCTAssertTrue(objective.evaluated === student, "warm-up: the student")
        objective.endWarmup()
        XCTAssertTrue(objective.evaluated === teacher, "after warm-up: the EMA teacher")
    }

    /// The loss is only comparable within a phase (after warm-up, re-fed hard negatives and
    /// reversed positives change its terms): warm-up lowers it, and so does the mining phase
    /// while nothing is reversed; with m = 1 reversals happen.
    func testWarmupEndsOnAPlateauAndEachPhaseLowersTheLoss() throws {
        let data = cyclicDataset()
        let train = LeaveOneOut(data).train
        for m in [1, 100] {
            var c = UFNRecConfig(); c.negatives = 10; c.m = m; c.maxWarmupEpochs = 3; c.decay = 0.9
            let student = labelsSASRec(items: data.itemCount), teacher = labelsSASRec(items: data.itemCount)
            let objective = UFNRecObjective(config: c, student: student, teacher: teacher, seed: 1)
            let fit = try quickLoop(data, epochs: 8).fit(model: student, instances: train, objective: objective, validate: nil)
            XCTAssertFalse(objective.warmingUp)
            let w = objective.warmupEpochs
            XCTAssertLessThanOrEqual(w, 3)
            XCTAssertLessThan(fit.losses[w - 1], fit.losses[0], "warm-up: \(fit.losses)")
            if m == 1 {
                XCTAssertGreaterThan(objective.records.reversedCount, 0, "m = 1 on a small catalogue reverses some negatives")
            } else {
                XCTAssertEqual(objective.records.reversedCount, 0)
                XCTAssertLessThan(fit.losses.last!, fit.losses[w], "mining phase: \(fit.losses)")
            }
        }
    }
}
