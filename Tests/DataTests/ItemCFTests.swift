import Foundation
import XCTest
@testable import Data

/// Independent dense computation of WSLRec Eq. 8–9 and the top-K rule, for small inputs only.
private func bruteForceNeighbours(_ sequences: [[Int32]], itemCount N: Int, k: Int) -> [[(Int32, Float)]] {
    let U = sequences.count
    var W = [[Double]](repeating: [Double](repeating: 0, count: N + 1), count: U)
    for (u, s) in sequences.enumerated() where !s.isEmpty {
        for v in s { W[u][Int(v)] += 1 }
        for v in 0 ... N { W[u][v] /= log2(1 + Double(s.count)) }
    }
    var result = [[(Int32, Float)]](repeating: [], count: N + 1)
    for v in 1 ... N {
        var candidates = [(Int32, Float)]()
        for w in 1 ... N where w != v {
            var dot = 0.0, nv = 0.0, nw = 0.0
            for u in 0 ..< U {
                dot += W[u][v] * W[u][w]
                nv += W[u][v] * W[u][v]
                nw += W[u][w] * W[u][w]
            }
            if dot > 0 { candidates.append((Int32(w), Float(dot / (nv.squareRoot() * nw.squareRoot())))) }
        }
        candidates.sort { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
        result[v] = Array(candidates.prefix(k))
    }
    return result
}

/// SplitMix64, so the random cases are the same on every run.
private struct TestRNG {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

private func randomSequences(users: Int, items: Int, maxLength: Int, seed: UInt64) -> [[Int32]] {
    var rng = TestRNG(state: seed)
    return (0 ..< users).map { _ in
        let n = rng.below(maxLength + 1)   // includes empty users
        // Small item range per user makes repeats and exact ties common.
        return (0 ..< n).map { _ in Int32(1 + (rng.below(3) == 0 ? rng.below(4) : rng.below(items))) }
    }
}

final class ItemCFTests: XCTestCase {
    private func assertMatchesBruteForce(_ sequences: [[Int32]], itemCount: Int, k: Int,
                                         threads: Int = 2, file: StaticString = #filePath, line: UInt = #line) throws {
        let got = try ItemCF.neighbours(sequences: sequences, itemCount: itemCount, k: k, threads: threads)
        let want = bruteForceNeighbours(sequences, itemCount: itemCount, k: k)
        XCTAssertEqual(got.offsets.count, itemCount + 2, file: file, line: line)
        XCTAssertEqual(got.neighbours(of: 0).items.count, 0, "padding row must be empty", file: file, line: line)
        for v in 1 ... itemCount {
            let row = got.neighbours(of: v)
            XCTAssertEqual(Array(row.items), want[v].map(\.0), "neighbour ids of item \(v)", file: file, line: line)
            for (s, w) in zip(row.scores, want[v].map(\.1)) {
                XCTAssertEqual(s, w, accuracy: 1e-5, "scores of item \(v)", file: file, line: line)
            }
        }
    }

    func testNeighboursEqualDenseBruteForceOnRandomSequences() throws {
        for seed in UInt64(1) ... 6 {
            let items = 12 + Int(seed) * 5
            let sequences = randomSequences(users: 40, items: items, maxLength: 9, seed: seed)
            try assertMatchesBruteForce(sequences, itemCount: items, k: 1 + Int(seed) % 7)
        }
    }

    func testResultIsIdenticalForEveryThreadCount() throws {
        let sequences = randomSequences(users: 300, items: 200, maxLength: 20, seed: 42)
        let one = try ItemCF.neighbours(sequences: sequences, itemCount: 200, k: 10, threads: 1)
        for threads in [2, 3, 8] {
            let many = try ItemCF.neighbours(sequences: sequences, itemCount: 200, k: 10, threads: threads)
            XCTAssertEqual(one, many, "threads = \(threads)")
        }
        XCTAssertGreaterThan(one.count, 0)
    }

    func testTiesAreBrokenBySmallerItemId() throws {
        // One user with items 4, 3, 2, 1: every pair has similarity 1.
        let got = try ItemCF.neighbours(sequences: [[4, 3, 2, 1]], itemCount: 4, k: 2, threads: 2)
        XCTAssertEqual(Array(got.neighbours(of: 1).items), [2, 3])
        XCTAssertEqual(Array(got.neighbours(of: 3).items), [1, 2])
        XCTAssertEqual(Array(got.neighbours(of: 4).items), [1, 2])
        XCTAssertEqual(Array(got.neighbours(of: 4).scores), [1, 1])
        // A higher score still wins over a smaller id: item 4 shares a second user with item 3.
        let skewed = try ItemCF.neighbours(sequences: [[4, 3, 2, 1], [4, 3]], itemCount: 4, k: 2, threads: 1)
        XCTAssertEqual(Array(skewed.neighbours(of: 4).items), [3, 1])
    }

    func testEmptyUsersChangeNothing() throws {
        let base: [[Int32]] = [[1, 2, 3], [2, 3], [3, 4, 1]]
        let padded: [[Int32]] = [[], [1, 2, 3], [], [2, 3], [3, 4, 1], []]
        let a = try ItemCF.neighbours(sequences: base, itemCount: 5, k: 3)
        let b = try ItemCF.neighbours(sequences: padded, itemCount: 5, k: 3)
        XCTAssertEqual(a, b)
        XCTAssertEqual(b.neighbours(of: 5).items.count, 0, "an unseen item has no neighbours")
        let none = try ItemCF.neighbours(sequences: [[], []], itemCount: 3, k: 2)
        XCTAssertEqual(none.count, 0)
        XCTAssertEqual(none.offsets, [0, 0, 0, 0, 0])
    }

    func testSingleItemUsersOnlyEnterTheNorm() throws {
        // W(user 0) = 1/log2(3) for items 1 and 2; W(user 1, item 1) = 1/log2(2) = 1.
        // sim(1, 2) = a² / (sqrt(a² + 1) · a) with a = 1/log2(3).
        let got = try ItemCF.neighbours(sequences: [[1, 2], [1], [3]], itemCount: 3, k: 5)
        let a = 1 / log2(3.0)
        let want = Float(a / (a * a + 1).squareRoot())
        XCTAssertEqual(Array(got.neighbours(of: 1).items), [2])
        XCTAssertEqual(got.neighbours(of: 1).scores.first!, want, accuracy: 1e-6)
        XCTAssertEqual(got.neighbours(of: 2).scores.first!, want, accuracy: 1e-6)
        XCTAssertEqual(got.neighbours(of: 3).items.count, 0)
        try assertMatchesBruteForce([[1, 2], [1], [3], [3], [2]], itemCount: 3, k: 2)
    }

    func testRepeatedInteractionsCountInTheWeight() throws {
        // User 0: item 1 twice, item 2 once, n = 3: W = (2, 1)/2.  User 1: items 1, 3, n = 2.
        // sim(1, 2) = (1 · 0.5) / (sqrt(1 + b²) · 0.5) with b = 1/log2(3).
        let got = try ItemCF.neighbours(sequences: [[1, 2, 1], [1, 3]], itemCount: 3, k: 2)
        let b = 1 / log2(3.0)
        let sim12 = 1 / (1 + b * b).squareRoot()
        let sim13 = b * b / ((1 + b * b).squareRoot() * b)
        XCTAssertEqual(Array(got.neighbours(of: 1).items), sim12 > sim13 ? [2, 3] : [3, 2])
        let row = got.neighbours(of: 1)
        XCTAssertEqual(row.scores[row.scores.startIndex], Float(max(sim12, sim13)), accuracy: 1e-6)
        XCTAssertEqual(row.scores[row.scores.startIndex + 1], Float(min(sim12, sim13)), accuracy: 1e-6)
        try assertMatchesBruteForce([[1, 2, 1], [1, 3], [2, 2, 2, 3]], itemCount: 3, k: 2)
    }

    func testKLargerThanTheNeighbourCountKeepsEveryNeighbour() throws {
        let sequences: [[Int32]] = [[1, 2], [2, 3], [4]]
        let got = try ItemCF.neighbours(sequences: sequences, itemCount: 4, k: 100)
        XCTAssertEqual(got.k, 100)
        XCTAssertEqual(Array(got.neighbours(of: 2).items).sorted(), [1, 3])
        XCTAssertEqual(Array(got.neighbours(of: 1).items), [2])
        XCTAssertEqual(got.neighbours(of: 4).items.count, 0)
        try assertMatchesBruteForce(randomSequences(users: 10, items: 8, maxLength: 6, seed: 9), itemCount: 8, k: 50)
        // Memory follows the output, not N·k: an absurd k is just "all of them".
        let all = try ItemCF.neighbours(sequences: sequences, itemCount: 4, k: 1 << 40)
        XCTAssertEqual(all.offsets, got.offsets)
        XCTAssertEqual(all.items, got.items)
    }

    func testPackedInputEqualsNestedInput() throws {
        let sequences = randomSequences(users: 50, items: 30, maxLength: 8, seed: 3)
        var offsets = [0]
        for s in sequences { offsets.append(offsets.last! + s.count) }
        let a = try ItemCF.neighbours(sequences: sequences, itemCount: 30, k: 4)
        let b = try ItemCF.neighbours(items: sequences.flatMap { $0 }, offsets: offsets, itemCount: 30, k: 4)
        XCTAssertEqual(a, b)
    }

    func testBadInputIsAnErrorNamingWhere() {
        XCTAssertThrowsError(try ItemCF.neighbours(sequences: [[1, 2], [3, 9]], itemCount: 5, k: 2)) { error in
            XCTAssertEqual(error as? ItemCFError, .itemOutOfRange(sequence: 1, position: 1, item: 9, itemCount: 5))
            XCTAssertTrue("\(error)".contains("sequence 1, position 1"))
        }
        XCTAssertThrowsError(try ItemCF.neighbours(sequences: [[0]], itemCount: 5, k: 2)) { error in
            XCTAssertEqual(error as? ItemCFError, .itemOutOfRange(sequence: 0, position: 0, item: 0, itemCount: 5))
        }
        XCTAssertThrowsError(try ItemCF.neighbours(sequences: [[1]], itemCount: 5, k: 0)) { error in
            XCTAssertEqual(error as? ItemCFError, .invalidK(0))
        }
        XCTAssertThrowsError(try ItemCF.neighbours(sequences: [[1]], itemCount: 0, k: 1)) { error in
            XCTAssertEqual(error as? ItemCFError, .invalidItemCount(0))
        }
        XCTAssertThrowsError(try ItemCF.neighbours(items: [1, 2], offsets: [0, 3], itemCount: 5, k: 1)) { error in
            guard case .malformedOffsets(index: 1, _)? = error as? ItemCFError else {
                return XCTFail("want malformedOffsets, got \(error)")
            }
        }
    }
}
