// What retrieval serves: a published student with its catalogue, ranking batches of histories
// with one encoder pass and one matrix product, exact inner-product top-k per row. No sockets.
import Foundation
import Numerics
import Models

/// Why a request cannot be answered as sent.
public enum RecommendError: Error, Equatable, CustomStringConvertible {
    case invalid(String)
    public var description: String { switch self { case .invalid(let m): return m } }
}

/// One history to rank: dense item ids (1...N, oldest first), k, and items not to return.
public struct RankRequest: Sendable {
    public var history: [Int32]
    public var k: Int
    public var exclude: Set<Int32>
    public init(history: [Int32], k: Int, exclude: Set<Int32> = []) { self.history = history; self.k = k; self.exclude = exclude }
}

/// A student loaded for serving: its backbone (inference only), the registry's name and version,
/// the dataset it was trained on and that dataset's external item ids.
public final class ServedModel: @unchecked Sendable {
    public let name: String
    public let version: UInt64
    public let datasetID: String
    public let backbone: Backbone
    /// (N) external id of dense item i at index i − 1.
    public let itemIDs: [Int64]
    private let denseOf: [Int64: Int32]
    private var inputs: [Int32] = [], lengths: [Int32] = []
    /// Exact top-k over the item table (the backbone's own weights).
    private let index: InnerProductIndex

    public var itemCount: Int { backbone.itemCount }

    public init(name: String, version: UInt64, datasetID: String, backbone: Backbone, itemIDs: [Int64]) throws {
        guard itemIDs.count == backbone.itemCount else {
            throw RecommendError.invalid("model \(name) v\(version) scores \(backbone.itemCount) items, its dataset \(datasetID) has \(itemIDs.count)")
        }
        guard itemIDs.allSatisfy({ $0 >= Int64(Int32.min) && $0 <= Int64(Int32.max) }) else {
            throw RecommendError.invalid("dataset \(datasetID) has item ids outside 32 bits, which Recommend's contract carries")
        }
        guard backbone.interests == 1 else {
            throw RecommendError.invalid("model \(name) v\(version) has \(backbone.interests) intention vectors per user; retrieval serves one")
        }
        self.name = name; self.version = version; self.datasetID = datasetID; self.backbone = backbone; self.itemIDs = itemIDs
        index = InnerProductIndex(items: backbone.scoringTable, count: backbone.itemCount, dim: backbone.dim)
        var map: [Int64: Int32] = [:]
        map.reserveCapacity(itemIDs.count)
        for (i, id) in itemIDs.enumerated() { map[id] = Int32(i + 1) }
        denseOf = map
    }

    /// The dense id of an external item id, nil when the catalogue does not hold it.
    public func dense(_ external: Int64) -> Int32? { denseOf[external] }
    public func external(_ dense: Int32) -> Int64 { itemIDs[Int(dense) - 1] }

    /// Top-k (dense item, score) of each request, best first: the last `maxLength` items of each
    /// history encoded in one pass, every item scored by one exact inner-product search, the
    /// request's exclusions never returned. Not thread-safe: one caller at a time.
    public func rank(_ requests: [RankRequest]) throws -> [[(item: Int32, score: Float)]] {
        let B = requests.count, T = backbone.maxLength, N = itemCount
        guard B > 0 else { return [] }
        for (r, q) in requests.enumerated() {
            guard !q.history.isEmpty else { throw RecommendError.invalid("request \(r): empty history") }
            guard q.k >= 1 && q.k <= N else { throw RecommendError.invalid("request \(r): k must be in 1...\(N), got \(q.k)") }
            if let bad = q.history.first(where: { $0 < 1 || Int($0) > N }) {
                throw RecommendError.invalid("request \(r): item \(bad) is not one of the model's 1...\(N)")
            }
        }
        if inputs.count < B * T { inputs = [Int32](repeating: 0, count: B * T); lengths = [Int32](repeating: 0, count: B) }
        for (b, q) in requests.enumerated() {
            let tail = q.history.suffix(T)
            for t in 0..<T { inputs[b * T + t] = t < tail.count ? tail[tail.startIndex + t] : 0 }
            lengths[b] = Int32(tail.count)
        }
        let user = inputs.withUnsafeBufferPointer { i in
            lengths.withUnsafeBufferPointer { l in
                backbone.forward(items: i.baseAddress!, lengths: l.baseAddress!, B: B, training: false)
            }
        }
        let k = requests.map(\.k).max()!
        let found = index.search(queries: user, count: B, k: k, exclude: requests.map(\.exclude))
        return zip(requests, found).map { Array($1.prefix($0.k)) }
    }
}
