import Numerics
@testable import RetrievalKit
import XCTest

/// The HNSW index finds what exact search finds where the items have structure (clusters, as
/// trained item embeddings do), and says so when it cannot be built.
final class ApproximateIndexTests: XCTestCase {
    func testOnClusteredItemsItRecallsTheExactTopKAndBroaderSearchesRecallMore() throws {
        defer { Threads.set(1) }
        Threads.set(2)
        var rng = RNG(seed: 9)
        let N = 3000, C = 16, clusters = 30, k = 10
        let centres = (0..<(clusters * C)).map { _ in rng.normal() * 3 }
        var items = [Float](repeating: 0, count: N * C)
        for j in 0..<N { let c = j % clusters; for d in 0..<C { items[j * C + d] = centres[c * C + d] + rng.normal() * 0.3 } }
        let queries = (0..<(40 * C)).map { _ in rng.normal() }
        try items.withUnsafeBufferPointer { e in
            try queries.withUnsafeBufferPointer { q in
                let ann = try ApproximateIndex(items: e.baseAddress!, count: N, dim: C)
                let exact = InnerProductIndex(items: e.baseAddress!, count: N, dim: C)
                func recall(_ ef: Int) throws -> Double {
                    ann.setSearchBreadth(ef)
                    var hits = 0
                    for i in 0..<40 {
                        let truth = Set(exact.search(queries: q.baseAddress! + i * C, count: 1, k: k)[0].map(\.item))
                        let found = try ann.search(query: q.baseAddress! + i * C, k: k)
                        XCTAssertEqual(found.count, k)
                        XCTAssertTrue(zip(found, found.dropFirst()).allSatisfy { $0.score >= $1.score }, "best first")
                        hits += found.filter { truth.contains($0.item) }.count
                    }
                    return Double(hits) / Double(40 * k)
                }
                let narrow = try recall(10), broad = try recall(400)
                XCTAssertGreaterThanOrEqual(broad, 0.85, "ef 400 (hnswlib on inner products, not a metric: 0.905 when written)")
                XCTAssertGreaterThanOrEqual(broad, narrow)
            }
        }
    }

    func testAnIndexThatCannotBeMadeIsAnError() {
        let none: [Float] = []
        XCTAssertThrowsError(try none.withUnsafeBufferPointer { try ApproximateIndex(items: $0.baseAddress ?? UnsafePointer(bitPattern: 8)!, count: 0, dim: 4) })
    }
}
