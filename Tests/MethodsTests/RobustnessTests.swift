import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Numerics
import Data
@testable import Methods
@testable import Jobs

final class RobustnessTests: XCTestCase {
    func testCorruptionReplacesExactlyTheFractionOfTrainingClicksAndNothingElse() {
        let world = AuxWorld(users: 30, items: 50, perUser: 10, noise: 0)
        let data = world.data
        let trainClicks = (0..<data.userCount).map { max(data.length($0) - 2, 0) }.reduce(0, +)
        for fraction in [0.0, 0.1, 0.2, 0.5, 1.0] {
            let (bad, flags) = RobustnessData.corruptTrainingClicks(data, fraction: fraction, seed: 3)
            XCTAssertEqual(flags.filter { $0 }.count, Int((fraction * Double(trainClicks)).rounded()))
            XCTAssertEqual(bad.offsets, data.offsets)
            for i in 0..<data.items.count {
                XCTAssertEqual(bad.items[i] != data.items[i], flags[i], "flag \(i) disagrees with the change")
            }
            for u in 0..<data.userCount {
                let hi = data.offsets[u + 1]
                XCTAssertEqual(Array(bad.items[(hi - 2)..<hi]), Array(data.items[(hi - 2)..<hi]), "validation/test of user \(u) changed")
            }
        }
    }

    func testBinaryAUCCountsTiesAsHalf() {
        XCTAssertEqual(binaryAUC(scores: [0.9, 0.8, 0.1, 0.2], positive: [true, true, false, false]), 1)
        XCTAssertEqual(binaryAUC(scores: [0.1, 0.2, 0.9, 0.8], positive: [true, true, false, false]), 0)
        XCTAssertEqual(binaryAUC(scores: [0.5, 0.5, 0.5, 0.5], positive: [true, false, true, false]), 0.5)
        XCTAssertEqual(binaryAUC(scores: [0.3, 0.7, 0.5], positive: [false, true, true])!, 1, accuracy: 1e-12)
        XCTAssertNil(binaryAUC(scores: [0.3, 0.7], positive: [true, true]))
    }

    func testPopularityGroupsPartitionTheTestUsers() {
        let world = AuxWorld(users: 40, items: 60, perUser: 10, noise: 0.1)
        let g = RobustnessData.popularityGroups(world.data, split: world.split)
        XCTAssertEqual(g.popular.count + g.niche.count, world.split.test.count)
        XCTAssertGreaterThan(g.popular.count, 0); XCTAssertGreaterThan(g.niche.count, 0)
        XCTAssertTrue(Set(g.popular.users).isDisjoint(with: Set(g.niche.users)))
    }

    func testLinePlotIsAnSVGWithOnePolylinePerSeries() throws {
        let svg = SVGPlot.lineChart(title: "NDCG@10 <vs> corruption", xLabel: "corrupted clicks", yLabel: "NDCG@10",
                                    series: [.init(name: "base", points: [(0, 0.1), (0.2, 0.08), (0.5, 0.05)]),
                                             .init(name: "DSS", points: [(0, 0.11), (0.2, 0.1)])])
        XCTAssertTrue(svg.hasPrefix("<svg "))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 2)
        XCTAssertTrue(svg.contains("NDCG@10 &lt;vs&gt; corruption"))
        let doc = try XMLDocument(xmlString: svg)
        XCTAssertEqual(doc.rootElement()?.name, "svg")
    }

    /// The recogniser learns its task (atjt.md §3.3.1): it tells sequences with a randomly replaced
    /// history item from original ones, on held-out sequences (each weighed by the recogniser of
    /// its own group, which never trained on it), with AUC >= 0.75. The world is clean, as the
    /// paper assumes its original sequences mostly are: with 20 % injected noise and T = 20 one
    /// more replaced item among some four noise clicks per window is not separable (AUC ≈ 0.5), and
    /// a recogniser trained on replaced history items does not tell corrupted *targets* apart
    /// either (the acceptance this test had while the corruption replaced the target: 0.80).
    func testRecogniserTellsReplacedHistoryItemsOnHeldOutSequences() throws {
        // 200 users × 20 clicks over 60 items in 6 topics, T = 5; one output hidden layer of 64
        // (the paper's 256 → 64 costs time here), the paper's dropout 0.5, Adagrad lr 0.1, 600
        // recogniser batches of 128 per group.
        let items = 60, topics = 6, users = 200, lr: Float = 0.1, steps = 600, hidden = 64, drop: Float = 0.5
        let world = AuxWorld(users: users, items: items, perUser: 20, noise: 0, topics: topics, seed: 11)
        let inst = world.split.train, T = 5
        var config = ATJTConfig(itemCount: items, maxLength: T)
        config.recogniserBatch = 128; config.recogniserLearningRate = lr; config.seed = 2
        config.recogniser.outputHidden = [hidden]; config.recogniser.dropout = drop
        let weigher = ATJTWeigher(config: config, data: world.data, instances: inst)
        let zero = AuxFloats(1)
        let buf = AuxBatches(B: 1, T: T)
        // self-supervised training alone: dL_R/dw = 0
        for _ in 0..<steps {
            for g in 0..<2 {
                let w = AuxFloats(1)
                try weigher.weighers[g].weigh(buf.fill(world.data, inst, weigher.partition.members[g].prefix(1)), id: 0, weights: w.p)
                try weigher.weighers[g].feedback(dWeights: zero.p, B: 1, id: 0)
            }
        }
        // every training sequence, half of each group's with one history item replaced
        var auc: [Double] = []
        for g in 0..<2 {
            let ids = weigher.partition.members[g], n = ids.count
            let rows = AuxBatches(B: n, T: T)
            _ = rows.fill(world.data, inst, ids[...])
            let labels = AuxFloats(n)
            var rng = RNG(seed: 17)
            ATJTNoise.corrupt(items: rows.items, lengths: rows.lengths, labels: labels.p, B: n, T: T, replaced: 1,
                              noisyFraction: 0.5, itemCount: items, rng: &rng)
            let users = AuxInts(ids.map { inst.users[Int($0)] })
            let w = weigher.recognisers[g].forward(users: users.p, items: rows.items, lengths: rows.lengths, targets: rows.targets,
                                                   B: n, training: false)
            auc.append(try XCTUnwrap(binaryAUC(scores: Array(UnsafeBufferPointer(start: w, count: n)),
                                               positive: (0..<n).map { labels.p[$0] == NoiseLabel.clean })))
        }
        print("recogniser AUC, replaced history item vs original, held out: \(auc)")
        for a in auc { XCTAssertGreaterThanOrEqual(a, 0.75) }
    }
}
