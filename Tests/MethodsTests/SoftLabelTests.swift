import XCTest
import Numerics
import Models
import Data
import Training
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

    /// The loop announces each batch to the teachers before the student consumes the one before
    /// it (`SoftLabelSource.prefetch`): under either scheme, every batch but an epoch's first is
    /// announced with the id and the rows (each row's history) its `logits` call later asks for,
    /// and before that call.
    func testTheLoopAnnouncesEachBatchToTheTeachersBeforeItIsNeeded() throws {
        /// Records each call as (kind, batch id, each row's history).
        final class Recording: SoftLabelSource {
            let inner: ModelSoftLabelSource
            var calls: [(prefetch: Bool, id: BatchID?, rows: [[Int32]])] = []
            init(_ inner: ModelSoftLabelSource) { self.inner = inner }
            var itemCount: Int { inner.itemCount }
            func histories(_ items: UnsafePointer<Int32>, _ lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?) -> [[Int32]] {
                guard let rows else { return (0..<B).map { Array(UnsafeBufferPointer(start: items + $0 * T, count: Int(lengths[$0]))) } }
                return (0..<rows.count).map { r in
                    Array(UnsafeBufferPointer(start: items + Int(rows.sequences[r]) * T, count: Int(rows.positions[r]) + 1))
                }
            }
            func prefetch(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                          batch: BatchID) throws {
                calls.append((true, batch, histories(items, lengths, B: B, T: T, rows: rows)))
            }
            func logits(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                        batch: BatchID?, out: Floats) throws {
                calls.append((false, batch, histories(items, lengths, B: B, T: T, rows: rows)))
                try inner.logits(items: items, lengths: lengths, B: B, T: T, rows: rows, batch: batch, out: out)
            }
            func topK(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, k: Int,
                      out: UnsafeMutablePointer<Int32>) throws {
                try inner.topK(items: items, lengths: lengths, B: B, T: T, k: k, out: out)
            }
        }
        let data = cyclicDataset(users: 40, items: 16, length: 10)
        let split = LeaveOneOut(data)
        for scheme in TrainingScheme.allCases {
            var c = quickLoop(data, epochs: 2).config
            c.scheme = scheme; c.batchSize = scheme == .allPositions ? 8 : 32
            let source = Recording(ModelSoftLabelSource(teachers: [labelsSASRec(items: data.itemCount, seed: 9)]))
            try LabelLoop(data: data, config: c).fit(model: labelsSASRec(items: data.itemCount), instances: split.train,
                                                     objective: CSRecStudentObjective(source: source, beta: 0.5, temperature: 2),
                                                     validate: nil)
            let used = source.calls.enumerated().filter { !$0.element.prefetch }
            let stepsPerEpoch = used.count / 2
            XCTAssertGreaterThan(stepsPerEpoch, 2, scheme.rawValue)
            XCTAssertEqual(used.map { $0.element.id }, (0..<used.count).map { BatchID($0) }, "\(scheme.rawValue): one logits call per step, by id")
            var announced = 0
            for (index, call) in used {
                let id = call.id!
                let prefetched = source.calls[..<index].filter { $0.prefetch && $0.id == id }
                if id % BatchID(stepsPerEpoch) == 0 {
                    XCTAssertTrue(prefetched.isEmpty, "\(scheme.rawValue): an epoch's first batch is not announced")
                    continue
                }
                XCTAssertEqual(prefetched.count, 1, "\(scheme.rawValue): batch \(id) announced once, before its use")
                XCTAssertEqual(prefetched.first?.rows, call.rows, "\(scheme.rawValue): batch \(id)'s rows as announced")
                announced += 1
            }
            XCTAssertEqual(announced, used.count - 2, scheme.rawValue)
        }
    }

    /// What a request can get wrong (a batch of another width, a row outside the batch, k outside
    /// the items) is an error naming it, before any teacher runs; nothing is written.
    func testBadRequestsAreErrorsNamingWhatIsWrong() {
        let source = ModelSoftLabelSource(teachers: [labelsSASRec(items: 12, maxLength: 8)])
        let items = [Int32](repeating: 3, count: 2 * 6), lengths: [Int32] = [6, 4]
        let out = FBuf(2 * 12, fill: 7)
        XCTAssertThrowsError(try source.logits(items: items, lengths: lengths, B: 2, T: 6, out: out.p)) {
            XCTAssertTrue("\($0)".contains("reads 8 positions, the batch has 6"), "\($0)")
        }
        let wide = [Int32](repeating: 3, count: 2 * 8), seqs: [Int32] = [0, 1], positions: [Int32] = [2, 5]
        XCTAssertThrowsError(try seqs.withUnsafeBufferPointer { s in try positions.withUnsafeBufferPointer { p in
            try source.logits(items: wide, lengths: lengths, B: 2, T: 8,
                              rows: ScoredRows(sequences: s.baseAddress!, positions: p.baseAddress!, count: 2, batchSize: 2),
                              batch: nil, out: out.p)
        } }) { XCTAssertTrue("\($0)".contains("row 1 reads sequence 1 position 5"), "\($0)") }
        var top = [Int32](repeating: 0, count: 2 * 13)
        XCTAssertThrowsError(try source.topK(items: wide, lengths: lengths, B: 2, T: 8, k: 13, out: &top)) {
            XCTAssertTrue("\($0)".contains("k 13 outside 1...12"), "\($0)")
        }
        XCTAssertTrue(out.array.allSatisfy { $0 == 7 }, "nothing written")
    }
}
