// An approximate inner-product index for catalogues where an exact pass over every item is too
// slow per query: hnswlib's HNSW graph (through CHNSW), built in parallel over the items.
import CHNSW
import Foundation
import Numerics

public enum ApproximateIndexError: Error, Equatable, CustomStringConvertible {
    case failed(String)
    public var description: String { switch self { case .failed(let m): return "approximate index: \(m)" } }
}

public final class ApproximateIndex {
    public let count: Int
    public let dim: Int
    private let graph: OpaquePointer

    /// Builds the graph over `count` items (N, C) row-major, item j + 1 being row j; `M` links per
    /// node and `efConstruction` candidates while inserting (hnswlib's defaults 16 and 200).
    public init(items: UnsafePointer<Float>, count: Int, dim: Int, M: Int = 16, efConstruction: Int = 200, seed: Int = 100) throws {
        guard count >= 1, dim >= 1, let g = chnsw_create(Int32(dim), count, M, efConstruction, seed) else {
            throw ApproximateIndexError.failed("cannot make a graph for \(count) items of \(dim) floats")
        }
        self.count = count; self.dim = dim; graph = g
        var failure: String? = nil
        let lock = NSLock()
        // hnswlib inserts distinct labels concurrently; the first item goes in alone (the entry point)
        if chnsw_add(g, items, 1) != 0 { failure = String(cString: chnsw_error(g)) }
        let rest = count - 1
        if rest > 0, failure == nil {
            let parts = Threads.chunks(rest, minPerChunk: 1024)
            Threads.parallelFor(parts) { _, first, last in
                for part in first..<last {
                    for j in Threads.chunk(part, of: parts, rest) where chnsw_add(g, items + (j + 1) * dim, j + 2) != 0 {
                        lock.withLock { failure = String(cString: chnsw_error(g)) }
                    }
                }
            }
        }
        if let failure { chnsw_free(g); throw ApproximateIndexError.failed(failure) }
    }

    deinit { chnsw_free(graph) }

    /// The candidate list of searches: more is slower and closer to exact.
    public func setSearchBreadth(_ ef: Int) { chnsw_set_ef(graph, max(ef, 1)) }

    /// The (approximately) k best (item, score) of one query (C), best first.
    public func search(query: UnsafePointer<Float>, k: Int) throws -> [(item: Int32, score: Float)] {
        var labels = [Int64](repeating: 0, count: k), scores = [Float](repeating: 0, count: k)
        let n = chnsw_search(graph, query, k, &labels, &scores)
        guard n >= 0 else { throw ApproximateIndexError.failed(String(cString: chnsw_error(graph))) }
        return (0..<Int(n)).map { (Int32(labels[$0]), scores[$0]) }
    }
}
