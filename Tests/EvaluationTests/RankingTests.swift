import XCTest
import Data
@testable import Evaluation

/// Small random problems with integer-valued vectors, so that scores tie often and exactly.
private final class Problem {
    let B: Int, K: Int, N: Int, d: Int
    let users: UnsafeMutablePointer<Float>   // (B·K, d)
    let items: UnsafeMutablePointer<Float>   // (N, d)
    var targets: [Int32]
    var histories: [[Int32]]

    init(B: Int, K: Int, N: Int, d: Int, rng: inout SplitMix64, levels: Int = 3) {
        self.B = B; self.K = K; self.N = N; self.d = d
        users = .allocate(capacity: B * K * d); items = .allocate(capacity: N * d)
        for i in 0..<(B * K * d) { users[i] = Float(rng.bounded(levels) - levels / 2) }
        for i in 0..<(N * d) { items[i] = Float(rng.bounded(levels) - levels / 2) }
        targets = (0..<B).map { _ in Int32(1 + rng.bounded(N)) }
        histories = (0..<B).map { _ in (0..<rng.bounded(6)).map { _ in Int32(1 + rng.bounded(N)) } }
    }
    deinit { users.deallocate(); items.deallocate() }

    /// Brute-force score of user b and item id (max over interests).
    func score(_ b: Int, _ item: Int) -> Float {
        var best = -Float.infinity
        for k in 0..<K {
            var s: Float = 0
            for c in 0..<d { s += users[(b * K + k) * d + c] * items[(item - 1) * d + c] }
            best = max(best, s)
        }
        return best
    }

    /// Items of user b sorted best first (score descending, id ascending), masked ones removed.
    func sortedItems(_ b: Int, masked: Set<Int32> = []) -> [Int32] {
        let ids = (1...N).map { Int32($0) }.filter { !masked.contains($0) }
        return ids.sorted { x, y in
            let sx = score(b, Int(x)), sy = score(b, Int(y))
            return sx > sy || (sx == sy && x < y)
        }
    }
}

final class RankingTests: XCTestCase {
    func testRanksMetricsAndAUCEqualBruteForceWithTies() {
        var rng = SplitMix64(seed: 1)
        for (K, mask) in [(1, false), (1, true), (3, false), (3, true)] {
            let p = Problem(B: 23, K: K, N: 37, d: 4, rng: &rng)
            let ev = RankingEvaluator(itemCount: p.N, dim: p.d, maxBatch: 32, interests: K, ks: [1, 5, 10], maskHistory: mask)
            var acc = MetricAccumulator()
            var ranks = [Int32](repeating: -1, count: p.B)
            ranks.withUnsafeMutableBufferPointer { r in
                ev.rankTargets(users: p.users, count: p.B, items: p.items, targets: p.targets,
                               history: { p.histories[$0][...] }, into: &acc, ranksOut: r.baseAddress!)
            }
            var expected = MetricAccumulator()
            var ties = 0
            for b in 0..<p.B {
                let t = p.targets[b]
                let masked = mask ? Set(p.histories[b]).subtracting([t]) : []
                let order = p.sortedItems(b, masked: masked)
                let rank = order.firstIndex(of: t)!
                XCTAssertEqual(Int(ranks[b]), rank, "K \(K) mask \(mask) user \(b)")
                let st = p.score(b, Int(t))
                let greater = order.filter { p.score(b, Int($0)) > st }.count
                let equal = order.filter { p.score(b, Int($0)) == st && $0 != t }.count
                ties += equal
                var m: [(String, Double)] = []
                for k in [1, 5, 10] {
                    let hit = rank < k ? 1.0 : 0.0
                    m += [("hr@\(k)", hit), ("recall@\(k)", hit), ("ndcg@\(k)", hit / log2(Double(rank) + 2)),
                          ("mrr@\(k)", hit / Double(rank + 1)), ("precision@\(k)", hit / Double(k)),
                          ("f1@\(k)", 2 * hit / Double(k + 1))]
                }
                m.append(("auc", 1 - (Double(greater) + 0.5 * Double(equal)) / Double(order.count - 1)))
                expected.add(m)
            }
            XCTAssertGreaterThan(ties, 0, "the case must contain ties")
            XCTAssertEqual(acc.users, p.B)
            for (key, v) in expected.means { XCTAssertEqual(acc.means[key]!, v, accuracy: 1e-12, "\(key) K \(K) mask \(mask)") }
            XCTAssertEqual(Set(acc.means.keys), Set(expected.means.keys))
        }
    }

    func testTopKEqualsASortedCatalogueWithTies() {
        var rng = SplitMix64(seed: 2)
        for K in [1, 2] {
            let p = Problem(B: 9, K: K, N: 50, d: 3, rng: &rng)
            let ev = RankingEvaluator(itemCount: p.N, dim: p.d, maxBatch: 9, interests: K)
            for k in [1, 7, 50] {
                var out = [Int32](repeating: 0, count: p.B * k), sc = [Float](repeating: 0, count: p.B * k)
                out.withUnsafeMutableBufferPointer { o in
                    sc.withUnsafeMutableBufferPointer { s in
                        ev.topK(users: p.users, count: p.B, items: p.items, k: k, out: o.baseAddress!, scoresOut: s.baseAddress!)
                    }
                }
                for b in 0..<p.B {
                    let expected = Array(p.sortedItems(b).prefix(k))
                    XCTAssertEqual(Array(out[(b * k)..<((b + 1) * k)]), expected, "K \(K) k \(k) user \(b)")
                    XCTAssertEqual(Array(sc[(b * k)..<((b + 1) * k)]), expected.map { p.score(b, Int($0)) })
                }
            }
            ev.maskHistory = true
            var out = [Int32](repeating: 0, count: p.B * 5)
            out.withUnsafeMutableBufferPointer { o in
                ev.topK(users: p.users, count: p.B, items: p.items, k: 5, history: { p.histories[$0][...] }, out: o.baseAddress!)
            }
            for b in 0..<p.B {
                XCTAssertEqual(Array(out[(b * 5)..<((b + 1) * 5)]), Array(p.sortedItems(b, masked: Set(p.histories[b])).prefix(5)))
            }
        }
    }

    func testNaNTargetRanksLast() {
        let users: [Float] = [1], items: [Float] = [.nan, 1, 2]
        let ev = RankingEvaluator(itemCount: 3, dim: 1, maxBatch: 1, ks: [3])
        var acc = MetricAccumulator()
        var rank: Int32 = -1
        ev.rankTargets(users: users, count: 1, items: items, targets: [1], into: &acc, ranksOut: &rank)
        XCTAssertEqual(rank, 2)
    }
}

final class SetMetricTests: XCTestCase {
    func testSetMetricsOnAHandMadeCase() {
        // Top list [5, 3, 9, 1], truth {3, 1, 7}: hits at positions 1 and 3.
        let list: [Int32] = [5, 3, 9, 1]
        let m = Dictionary(uniqueKeysWithValues: list.withUnsafeBufferPointer {
            setMetrics(topList: $0, truth: [3, 1, 7], ks: [2, 4])
        })
        XCTAssertEqual(m["recall@2"]!, 1.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(m["precision@2"]!, 0.5, accuracy: 1e-12)
        XCTAssertEqual(m["f1@2"]!, 2.0 / 5, accuracy: 1e-12)
        XCTAssertEqual(m["hr@2"]!, 1)
        XCTAssertEqual(m["dcg@2"]!, 1 / log2(3.0), accuracy: 1e-12)
        XCTAssertEqual(m["ndcg@2"]!, (1 / log2(3.0)) / (1 + 1 / log2(3.0)), accuracy: 1e-12)
        XCTAssertEqual(m["recall@4"]!, 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(m["precision@4"]!, 0.5, accuracy: 1e-12)
        XCTAssertEqual(m["f1@4"]!, 4.0 / 7, accuracy: 1e-12)
        let dcg4 = 1 / log2(3.0) + 1 / log2(5.0)
        XCTAssertEqual(m["dcg@4"]!, dcg4, accuracy: 1e-12)
        XCTAssertEqual(m["ndcg@4"]!, dcg4 / (1 + 1 / log2(3.0) + 1 / log2(4.0)), accuracy: 1e-12)
        let miss = Dictionary(uniqueKeysWithValues: list.withUnsafeBufferPointer { setMetrics(topList: $0, truth: [8], ks: [4]) })
        XCTAssertEqual(miss["hr@4"]!, 0)
        XCTAssertEqual(miss["ndcg@4"]!, 0)
    }

    func testRankSetsUsesTheTopListOfTheCatalogue() {
        var rng = SplitMix64(seed: 4)
        let p = Problem(B: 11, K: 1, N: 30, d: 3, rng: &rng)
        let truths: [Set<Int32>] = (0..<p.B).map { _ in Set((0..<(1 + rng.bounded(8))).map { _ in Int32(1 + rng.bounded(30)) }) }
        let ev = RankingEvaluator(itemCount: p.N, dim: p.d, maxBatch: 16, ks: [3, 10])
        var acc = MetricAccumulator()
        ev.rankSets(users: p.users, count: p.B, items: p.items, truth: { truths[$0] }, into: &acc)
        var expected = MetricAccumulator()
        for b in 0..<p.B {
            let top = Array(p.sortedItems(b).prefix(10))
            var m: [(String, Double)] = []
            for k in [3, 10] {
                var hits = 0.0, dcg = 0.0, idcg = 0.0
                for (i, item) in top.prefix(k).enumerated() where truths[b].contains(item) { hits += 1; dcg += 1 / log2(Double(i + 2)) }
                for i in 0..<min(k, truths[b].count) { idcg += 1 / log2(Double(i + 2)) }
                m += [("recall@\(k)", hits / Double(truths[b].count)), ("precision@\(k)", hits / Double(k)),
                      ("f1@\(k)", 2 * hits / Double(k + truths[b].count)), ("hr@\(k)", hits > 0 ? 1 : 0),
                      ("dcg@\(k)", dcg), ("ndcg@\(k)", dcg / idcg)]
            }
            expected.add(m)
        }
        for (key, v) in expected.means { XCTAssertEqual(acc.means[key]!, v, accuracy: 1e-12, key) }
        XCTAssertGreaterThan(expected.means["hr@10"]!, 0, "the case should contain hits")
    }

    func testHitsDifferenceRate() {
        // H1 = {1, 2}, H2 = {2, 3}: (3 - 1) / 3.
        XCTAssertEqual(hitsDifferenceRate([1, 2, 9], [2, 3, 8], truth: [1, 2, 3, 4]), 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(hitsDifferenceRate([9], [8], truth: [1]), 0)          // both empty -> 0
        XCTAssertEqual(hitsDifferenceRate([1], [8], truth: [1]), 1)
        // Eq. 12: average over users with HDR > 0 only: (2/3 + 1) / 2, the zero user not counted.
        let v = hitsDifferenceRate(lists1: [[1, 2, 9], [9], [1]], lists2: [[2, 3, 8], [8], [8]],
                                   truths: [[1, 2, 3, 4], [1], [1]], k: 3)
        XCTAssertEqual(v, (2.0 / 3 + 1) / 2, accuracy: 1e-12)
        // Only the first k of each list count.
        XCTAssertEqual(hitsDifferenceRate(lists1: [[9, 1]], lists2: [[9, 8]], truths: [[1]], k: 1), 0)
    }
}

final class SampledTests: XCTestCase {
    func testSamplerIsSeededDistinctExcludesAndFollowsPopularity() {
        let pop: [Int32] = [0, 1, 0, 3, 6, 10]   // item 2 never drawn
        var a = PopularitySampler(popularity: pop, seed: 7), b = PopularitySampler(popularity: pop, seed: 7)
        var counts = [Int](repeating: 0, count: 6)
        var out = [Int32](repeating: 0, count: 2), out2 = [Int32](repeating: 0, count: 2)
        for _ in 0..<4000 {
            let n = a.sample(count: 2, excluding: [5], into: &out)
            b.sample(count: 2, excluding: [5], into: &out2)
            XCTAssertEqual(n, 2)
            XCTAssertEqual(out, out2)
            XCTAssertNotEqual(out[0], out[1])
            for i in out { counts[Int(i)] += 1 }
        }
        XCTAssertEqual(counts[2], 0)
        XCTAssertEqual(counts[5], 0)
        XCTAssertGreaterThan(counts[4], counts[3])
        XCTAssertGreaterThan(counts[3], counts[1])
        // Asking for more than exists returns what exists.
        var big = [Int32](repeating: 0, count: 10)
        XCTAssertEqual(a.sample(count: 10, excluding: [], into: &big), 4)
        XCTAssertEqual(Set(big.prefix(4)), [1, 3, 4, 5])
    }

    func testSampledRanksEqualBruteForceOverTheSameDraws() {
        var rng = SplitMix64(seed: 5)
        let p = Problem(B: 15, K: 2, N: 60, d: 3, rng: &rng)
        let pop = [Int32(0)] + (1...60).map { Int32(1 + $0 % 7) }
        let ev = RankingEvaluator(itemCount: p.N, dim: p.d, maxBatch: 16, interests: 2, ks: [1, 10])
        var sampler = PopularitySampler(popularity: pop, seed: 3)
        var acc = MetricAccumulator()
        ev.rankSampled(users: p.users, count: p.B, items: p.items, targets: p.targets, negatives: 20,
                       sampler: &sampler, exclude: { p.histories[$0][...] }, into: &acc)
        var replay = PopularitySampler(popularity: pop, seed: 3)
        var expected = MetricAccumulator()
        var neg = [Int32](repeating: 0, count: 20)
        for b in 0..<p.B {
            let t = p.targets[b]
            replay.sample(count: 20, excluding: p.histories[b] + [t], into: &neg)
            XCTAssertFalse(neg.contains(t))
            XCTAssertTrue(Set(neg).isDisjoint(with: p.histories[b]))
            let cands = ([t] + neg).sorted { x, y in
                let sx = p.score(b, Int(x)), sy = p.score(b, Int(y))
                return sx > sy || (sx == sy && x < y)
            }
            let rank = cands.firstIndex(of: t)!
            let st = p.score(b, Int(t))
            let greater = neg.filter { p.score(b, Int($0)) > st }.count
            let equal = neg.filter { p.score(b, Int($0)) == st }.count
            expected.add(singleTargetMetrics(rank: rank, ks: [1, 10], greater: greater, equal: equal, candidates: 21))
        }
        for (key, v) in expected.means { XCTAssertEqual(acc.means[key]!, v, accuracy: 1e-12, key) }
    }
}

final class ProtocolTests: XCTestCase {
    /// A toy model: the user vector is the embedding of the last input item.
    func testFullRankingOverASplitMatchesAHandComputation() {
        var rng = SplitMix64(seed: 8)
        let N = 12, d = 4
        let seqs: [[Int32]] = (0..<10).map { _ in (0..<(3 + rng.bounded(6))).map { _ in Int32(1 + rng.bounded(N)) } }
        let data = SequenceDataset(sequences: seqs, itemCount: N)
        let split = LeaveOneOut(data)
        let table = (0..<(N * d)).map { _ in Float(rng.bounded(5)) - 2 }
        for mask in [false, true] {
            let ev = RankingEvaluator(itemCount: N, dim: d, maxBatch: 4, ks: [1, 3, 5], maskHistory: mask)
            let report = table.withUnsafeBufferPointer { t in
                ev.evaluateFullRanking(EvaluationInput(data: data, instances: split.test, maxLength: 3),
                                       items: t.baseAddress!) { items, lengths, n, out in
                    for b in 0..<n {
                        let last = Int(items[b * 3 + Int(lengths[b]) - 1])
                        for c in 0..<d { out[b * d + c] = t[(last - 1) * d + c] }
                    }
                }
            }
            var expected = MetricAccumulator()
            for k in 0..<split.test.count {
                let u = Int(split.test.users[k]), seq = Array(data.sequence(u))
                let target = seq.last!, last = seq[seq.count - 2]
                func s(_ i: Int32) -> Float { (0..<d).reduce(Float(0)) { $0 + table[(Int(last) - 1) * d + $1] * table[(Int(i) - 1) * d + $1] } }
                let masked = mask ? Set(seq.dropLast()).subtracting([target]) : []
                let order = (1...Int32(N)).filter { !masked.contains($0) }.sorted { s($0) > s($1) || (s($0) == s($1) && $0 < $1) }
                let rank = order.firstIndex(of: target)!
                let greater = order.filter { s($0) > s(target) }.count, equal = order.filter { s($0) == s(target) && $0 != target }.count
                expected.add(singleTargetMetrics(rank: rank, ks: [1, 3, 5], greater: greater, equal: equal, candidates: order.count))
            }
            XCTAssertEqual(report.users, split.test.count)
            XCTAssertEqual(report.historyMasked, mask)
            XCTAssertFalse(report.biased)
            for (key, v) in expected.means { XCTAssertEqual(report.metrics[key]!, v, accuracy: 1e-12, key) }
        }
    }
}
