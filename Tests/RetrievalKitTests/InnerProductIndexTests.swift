import Numerics
@testable import RetrievalKit
import XCTest

/// Exact top-k against a brute-force sort, across thread ranges, product blocks, exclusions and ties.
final class InnerProductIndexTests: XCTestCase {
    func brute(_ q: [Float], _ items: [Float], N: Int, C: Int, k: Int, exclude: Set<Int32>) -> [(item: Int32, score: Float)] {
        var all: [(item: Int32, score: Float)] = []
        for j in 0..<N where !exclude.contains(Int32(j + 1)) {
            var s: Float = 0
            for c in 0..<C { s += q[c] * items[j * C + c] }
            all.append((Int32(j + 1), s))
        }
        all.sort { $0.score > $1.score || ($0.score == $1.score && $0.item < $1.item) }
        return Array(all.prefix(k))
    }

    func testTopKEqualsABruteForceSortOverThreadsBothPathsBlocksExclusionsAndTies() {
        defer { Threads.set(1) }
        var rng = RNG(seed: 3)
        let N = 10_007, C = 16, B = 5
        // quantised values make ties common
        var items = (0..<(N * C)).map { _ in (rng.normal() * 4).rounded() / 4 }
        for c in 0..<C { items[77 * C + c] = items[5 * C + c] }     // two identical items
        let queries = (0..<(B * C)).map { _ in (rng.normal() * 4).rounded() / 4 }
        let exclude: [Set<Int32>] = [[], [6, 78, 1, 2, 3], Set((1...500).map(Int32.init)), [], [10_007]]
        for threads in [1, 2, 3] {
            Threads.set(threads)
            // small: the packed eight-item kernel; 0: OpenBLAS products (blocks of 1,000 or 8,192 items)
            for (small, block) in [(32, 8192), (0, 1000), (0, 8192)] {
                for k in [1, 50, 333] {
                    let index = items.withUnsafeBufferPointer { InnerProductIndex(items: $0.baseAddress!, count: N, dim: C) }
                    index.blockItems = block; index.smallBatch = small
                    let found = items.withUnsafeBufferPointer { _ in
                        queries.withUnsafeBufferPointer { index.search(queries: $0.baseAddress!, count: B, k: k, exclude: exclude) }
                    }
                    for b in 0..<B {
                        let expected = brute(Array(queries[(b * C)..<((b + 1) * C)]), items, N: N, C: C, k: k, exclude: exclude[b])
                        XCTAssertEqual(found[b].map(\.item), expected.map(\.item), "threads \(threads) small \(small) block \(block) k \(k) query \(b)")
                        for (x, y) in zip(found[b], expected) { XCTAssertEqual(x.score, y.score, accuracy: 1e-3) }
                    }
                }
            }
        }
    }
}
