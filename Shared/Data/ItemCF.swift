// ItemCF neighbours: the weighted cosine of WSLRec (Eq. 8–9) between items, top-K per item.
//
// Legend
//   U  users (training sequences)       N  items, ids 1...N (0 is padding and never appears)
//   n_u  length of user u's sequence, repeats included
//   c_uv how many times item v occurs in user u's sequence
//
//   W_uv      = c_uv / log2(1 + n_u)                                   (Eq. 9)
//   sim(v, w) = Σ_u W_uv·W_uw / (sqrt(Σ_u W_uv²) · sqrt(Σ_u W_uw²))    (Eq. 8)
//
// Computed as a sparse product: for each item v, the sparse accumulator row
// acc[w] = Σ_{u ∋ v} W_uv·W_uw is built by walking v's users and each of their item rows
// (classic SpGEMM with a dense accumulator of length N and a list of touched entries), then
// divided by the norms and reduced to the K best by a small heap. The |V|×|V| matrix never
// exists. Items are processed in parallel into disjoint output slots; every item's result
// depends only on the input (users are visited in ascending index order), so the output is
// identical for any thread count.
import Foundation

/// Top-K neighbours of every item in compressed sparse rows, indexed by item id.
///
/// Row `v` (for `v` in `1...itemCount`) is `items[offsets[v] ..< offsets[v + 1]]` with the
/// matching `scores`; row 0 (the padding item) is always empty, so `offsets.count ==
/// itemCount + 2`. A row holds at most `k` neighbours, never the item itself, only items with
/// a positive similarity, ordered by score descending (the score as stored, a `Float`) and
/// then by item id ascending.
public struct ItemNeighbours: Sendable, Equatable {
    /// N: item ids run over `1...itemCount`.
    public let itemCount: Int
    /// The most neighbours a row holds.
    public let k: Int
    /// Row starts, indexed by item id; `itemCount + 2` entries, `offsets[0] == offsets[1] == 0`.
    public let offsets: [Int]
    /// Neighbour item ids, row after row.
    public let items: [Int32]
    /// sim(v, neighbour) per entry of `items`.
    public let scores: [Float]

    public init(itemCount: Int, k: Int, offsets: [Int], items: [Int32], scores: [Float]) {
        precondition(offsets.count == itemCount + 2, "offsets must have itemCount + 2 entries")
        precondition(items.count == scores.count && offsets.last == items.count, "ragged CSR")
        self.itemCount = itemCount
        self.k = k
        self.offsets = offsets
        self.items = items
        self.scores = scores
    }

    /// The neighbours of `item` (1...itemCount), best first.
    public func neighbours(of item: Int) -> (items: ArraySlice<Int32>, scores: ArraySlice<Float>) {
        precondition(item >= 0 && item <= itemCount, "item \(item) outside 0...\(itemCount)")
        let range = offsets[item] ..< offsets[item + 1]
        return (items[range], scores[range])
    }

    /// Total number of stored neighbour entries.
    public var count: Int { items.count }
}

/// Bad input to ItemCF.
public enum ItemCFError: Error, Equatable, CustomStringConvertible {
    /// `itemCount` must be at least 1.
    case invalidItemCount(Int)
    /// `k` must be at least 1.
    case invalidK(Int)
    /// An item id outside `1...itemCount`, at `position` of sequence `sequence` (both 0-based).
    case itemOutOfRange(sequence: Int, position: Int, item: Int32, itemCount: Int)
    /// Flat sequence offsets that do not start at 0, decrease, or do not end at the item count.
    case malformedOffsets(index: Int, reason: String)

    public var description: String {
        switch self {
        case .invalidItemCount(let n): return "ItemCF: item count must be >= 1, got \(n)"
        case .invalidK(let k): return "ItemCF: k must be >= 1, got \(k)"
        case let .itemOutOfRange(sequence, position, item, itemCount):
            return "ItemCF: sequence \(sequence), position \(position): item id \(item) is outside 1...\(itemCount)"
        case let .malformedOffsets(index, reason):
            return "ItemCF: sequence offsets malformed at index \(index): \(reason)"
        }
    }
}

public enum ItemCF {
    /// Top-`k` weighted-cosine neighbours of every item from users' item sequences.
    ///
    /// - Parameters:
    ///   - sequences: one array of item ids (1...itemCount) per training user; order within a
    ///     sequence does not matter; repeats count (c_uv), empty sequences contribute nothing.
    ///   - itemCount: N.
    ///   - k: the most neighbours kept per item.
    ///   - threads: worker threads (default: active processor count); the result does not
    ///     depend on it.
    public static func neighbours(sequences: [[Int32]], itemCount: Int, k: Int,
                                  threads: Int? = nil) throws -> ItemNeighbours {
        var offsets = [Int](repeating: 0, count: sequences.count + 1)
        var total = 0
        for (u, s) in sequences.enumerated() {
            total += s.count
            offsets[u + 1] = total
        }
        var flat = [Int32]()
        flat.reserveCapacity(total)
        for s in sequences { flat.append(contentsOf: s) }
        return try neighbours(items: flat, offsets: offsets, itemCount: itemCount, k: k, threads: threads)
    }

    /// The same from packed sequences: user `u` is `items[offsets[u] ..< offsets[u + 1]]`.
    public static func neighbours(items: [Int32], offsets: [Int], itemCount: Int, k: Int,
                                  threads: Int? = nil) throws -> ItemNeighbours {
        guard itemCount >= 1 else { throw ItemCFError.invalidItemCount(itemCount) }
        guard k >= 1 else { throw ItemCFError.invalidK(k) }
        guard let first = offsets.first, first == 0 else {
            throw ItemCFError.malformedOffsets(index: 0, reason: "offsets must start with 0")
        }
        for u in 1 ..< max(offsets.count, 1) where offsets[u] < offsets[u - 1] {
            throw ItemCFError.malformedOffsets(index: u, reason: "offsets decrease (\(offsets[u - 1]) then \(offsets[u]))")
        }
        guard offsets.last == items.count else {
            throw ItemCFError.malformedOffsets(index: offsets.count - 1,
                                               reason: "last offset \(offsets.last!) != item count \(items.count)")
        }
        let N = itemCount
        let U = offsets.count - 1
        try items.withUnsafeBufferPointer { it in
            for u in 0 ..< U {
                for p in offsets[u] ..< offsets[u + 1] where it[p] < 1 || Int(it[p]) > N {
                    throw ItemCFError.itemOutOfRange(sequence: u, position: p - offsets[u], item: it[p], itemCount: N)
                }
            }
        }
        let rows = UserRows(items: items, offsets: offsets, itemCount: N)
        let cols = ItemColumns(rows: rows, itemCount: N)
        let workers = max(1, threads ?? ProcessInfo.processInfo.activeProcessorCount)
        return topK(rows: rows, cols: cols, itemCount: N, k: min(k, max(N - 1, 1)), reportedK: k,
                    threads: workers)
    }
}

// MARK: - Sparse matrices W (users × items) by rows and by columns

/// W by user rows: each user's distinct items with W_uv = c_uv / log2(1 + n_u).
struct UserRows {
    var offsets: [Int]      // (U + 1)
    var items: [Int32]      // (nnz)
    var weights: [Double]   // (nnz)

    init(items seq: [Int32], offsets seqOffsets: [Int], itemCount N: Int) {
        let U = seqOffsets.count - 1
        var offsets = [Int](repeating: 0, count: U + 1)
        var items = [Int32]()
        var weights = [Double]()
        items.reserveCapacity(seq.count)
        weights.reserveCapacity(seq.count)
        // stamp[v] = 1 + the last user that saw v; slot[v] = where v sits in that user's row.
        var stamp = [Int32](repeating: 0, count: N + 1)
        var slot = [Int](repeating: 0, count: N + 1)
        seq.withUnsafeBufferPointer { s in
            for u in 0 ..< U {
                let start = items.count
                let lo = seqOffsets[u], hi = seqOffsets[u + 1]
                for p in lo ..< hi {
                    let v = Int(s[p])
                    if stamp[v] != Int32(truncatingIfNeeded: u + 1) {
                        stamp[v] = Int32(truncatingIfNeeded: u + 1)
                        slot[v] = items.count
                        items.append(Int32(v))
                        weights.append(1)
                    } else {
                        weights[slot[v]] += 1
                    }
                }
                if hi > lo {
                    let scale = 1 / log2(1 + Double(hi - lo))
                    for j in start ..< items.count { weights[j] *= scale }
                }
                offsets[u + 1] = items.count
            }
        }
        self.offsets = offsets
        self.items = items
        self.weights = weights
    }
}

/// W by item columns (users ascending), indexed by item id, and each item's norm sqrt(Σ_u W_uv²).
struct ItemColumns {
    var offsets: [Int]      // (N + 2), row 0 empty
    var users: [Int32]      // (nnz)
    var weights: [Double]   // (nnz)
    var norms: [Double]     // (N + 1)

    init(rows: UserRows, itemCount N: Int) {
        var offsets = [Int](repeating: 0, count: N + 2)
        for v in rows.items { offsets[Int(v) + 1] += 1 }
        for v in 0 ..< N + 1 { offsets[v + 1] += offsets[v] }
        var fill = offsets
        var users = [Int32](repeating: 0, count: rows.items.count)
        var weights = [Double](repeating: 0, count: rows.items.count)
        var norms = [Double](repeating: 0, count: N + 1)
        let U = rows.offsets.count - 1
        for u in 0 ..< U {
            for j in rows.offsets[u] ..< rows.offsets[u + 1] {
                let v = Int(rows.items[j])
                let w = rows.weights[j]
                users[fill[v]] = Int32(truncatingIfNeeded: u)
                weights[fill[v]] = w
                fill[v] += 1
                norms[v] += w * w
            }
        }
        for v in 0 ... N { norms[v] = norms[v].squareRoot() }
        self.offsets = offsets
        self.users = users
        self.weights = weights
        self.norms = norms
    }
}

// MARK: - Top-K by sparse accumulation

/// Pointers shared by the workers; each worker writes only its own items' output slots.
private struct Shared: @unchecked Sendable {
    let rowOffsets: UnsafePointer<Int>
    let rowItems: UnsafePointer<Int32>
    let rowWeights: UnsafePointer<Double>
    let colOffsets: UnsafePointer<Int>
    let colUsers: UnsafePointer<Int32>
    let colWeights: UnsafePointer<Double>
    let norms: UnsafePointer<Double>
    let outItems: UnsafeMutablePointer<Int32>   // (N + 1, k) slots
    let outScores: UnsafeMutablePointer<Float>  // (N + 1, k)
    let outCounts: UnsafeMutablePointer<Int>    // (N + 1)
}

/// Hands out chunks of item ids to workers.
private final class ChunkCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var next = 1
    let end: Int
    let chunk: Int
    init(end: Int, chunk: Int) { self.end = end; self.chunk = chunk }
    func take() -> Range<Int>? {
        lock.lock()
        defer { lock.unlock() }
        guard next < end else { return nil }
        let lo = next
        next = min(end, next + chunk)
        return lo ..< next
    }
}

private func topK(rows: UserRows, cols: ItemColumns, itemCount N: Int, k: Int, reportedK: Int,
                  threads: Int) -> ItemNeighbours {
    let outItems = UnsafeMutablePointer<Int32>.allocate(capacity: (N + 1) * k)
    let outScores = UnsafeMutablePointer<Float>.allocate(capacity: (N + 1) * k)
    let outCounts = UnsafeMutablePointer<Int>.allocate(capacity: N + 1)
    outCounts.initialize(repeating: 0, count: N + 1)
    defer { outItems.deallocate(); outScores.deallocate(); outCounts.deallocate() }

    rows.offsets.withUnsafeBufferPointer { ro in
    rows.items.withUnsafeBufferPointer { ri in
    rows.weights.withUnsafeBufferPointer { rw in
    cols.offsets.withUnsafeBufferPointer { co in
    cols.users.withUnsafeBufferPointer { cu in
    cols.weights.withUnsafeBufferPointer { cw in
    cols.norms.withUnsafeBufferPointer { nm in
        let shared = Shared(rowOffsets: ro.baseAddress!, rowItems: ri.baseAddress ?? UnsafePointer(bitPattern: 8)!,
                            rowWeights: rw.baseAddress ?? UnsafePointer(bitPattern: 8)!,
                            colOffsets: co.baseAddress!, colUsers: cu.baseAddress ?? UnsafePointer(bitPattern: 8)!,
                            colWeights: cw.baseAddress ?? UnsafePointer(bitPattern: 8)!, norms: nm.baseAddress!,
                            outItems: outItems, outScores: outScores, outCounts: outCounts)
        let chunk = max(1, min(256, N / (threads * 64)))
        let counter = ChunkCounter(end: N + 1, chunk: chunk)
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            var worker = Worker(itemCount: N, k: k)
            while let range = counter.take() {
                for v in range { worker.run(item: v, shared) }
            }
            worker.release()
        }
    }}}}}}}

    var offsets = [Int](repeating: 0, count: N + 2)
    for v in 0 ... N { offsets[v + 1] = offsets[v] + outCounts[v] }
    let total = offsets[N + 1]
    var items = [Int32](repeating: 0, count: total)
    var scores = [Float](repeating: 0, count: total)
    for v in 1 ... N {
        let c = outCounts[v]
        for j in 0 ..< c {
            items[offsets[v] + j] = outItems[v * k + j]
            scores[offsets[v] + j] = outScores[v * k + j]
        }
    }
    return ItemNeighbours(itemCount: N, k: reportedK, offsets: offsets, items: items, scores: scores)
}

/// One thread's scratch: the dense accumulator, the touched list and the heap.
private struct Worker {
    let N: Int
    let k: Int
    let acc: UnsafeMutablePointer<Double>       // (N + 1), all zero between items
    let touched: UnsafeMutablePointer<Int32>    // (N)
    let heapScores: UnsafeMutablePointer<Float> // (k) min-heap: root is the worst kept
    let heapItems: UnsafeMutablePointer<Int32>  // (k)

    init(itemCount N: Int, k: Int) {
        self.N = N
        self.k = k
        acc = .allocate(capacity: N + 1)
        acc.initialize(repeating: 0, count: N + 1)
        touched = .allocate(capacity: N + 1)
        heapScores = .allocate(capacity: k)
        heapItems = .allocate(capacity: k)
    }

    func release() {
        acc.deallocate(); touched.deallocate(); heapScores.deallocate(); heapItems.deallocate()
    }

    /// `a` ranks below `b`: lower score, or the same score and a larger id.
    @inline(__always)
    private func worse(_ sa: Float, _ ia: Int32, _ sb: Float, _ ib: Int32) -> Bool {
        sa < sb || (sa == sb && ia > ib)
    }

    private func siftDown(_ start: Int, _ count: Int) {
        var i = start
        let s = heapScores[i], it = heapItems[i]
        while true {
            var c = 2 * i + 1
            if c >= count { break }
            if c + 1 < count && worse(heapScores[c + 1], heapItems[c + 1], heapScores[c], heapItems[c]) { c += 1 }
            if !worse(heapScores[c], heapItems[c], s, it) { break }
            heapScores[i] = heapScores[c]; heapItems[i] = heapItems[c]
            i = c
        }
        heapScores[i] = s; heapItems[i] = it
    }

    private func siftUp(_ start: Int) {
        var i = start
        let s = heapScores[i], it = heapItems[i]
        while i > 0 {
            let p = (i - 1) / 2
            if !worse(s, it, heapScores[p], heapItems[p]) { break }
            heapScores[i] = heapScores[p]; heapItems[i] = heapItems[p]
            i = p
        }
        heapScores[i] = s; heapItems[i] = it
    }

    mutating func run(item v: Int, _ m: Shared) {
        // acc[w] = Σ_{u ∋ v} W_uv·W_uw over v's users in ascending order.
        var nTouched = 0
        for j in m.colOffsets[v] ..< m.colOffsets[v + 1] {
            let u = Int(m.colUsers[j])
            let wv = m.colWeights[j]
            for r in m.rowOffsets[u] ..< m.rowOffsets[u + 1] {
                let w = Int(m.rowItems[r])
                if acc[w] == 0 { touched[nTouched] = Int32(truncatingIfNeeded: w); nTouched += 1 }
                acc[w] += wv * m.rowWeights[r]
            }
        }
        // Score, keep the k best (score descending, then id ascending), clear the accumulator.
        var count = 0
        let nv = m.norms[v]
        for t in 0 ..< nTouched {
            let w = Int(touched[t])
            let dot = acc[w]
            acc[w] = 0
            if w == v { continue }
            let s = Float(dot / (nv * m.norms[w]))
            let id = Int32(truncatingIfNeeded: w)
            if count < k {
                heapScores[count] = s; heapItems[count] = id
                count += 1
                siftUp(count - 1)
            } else if worse(heapScores[0], heapItems[0], s, id) {
                heapScores[0] = s; heapItems[0] = id
                siftDown(0, count)
            }
        }
        // Pop the worst to the back: the row comes out best first.
        let base = v * k
        m.outCounts[v] = count
        var n = count
        while n > 0 {
            m.outScores[base + n - 1] = heapScores[0]
            m.outItems[base + n - 1] = heapItems[0]
            n -= 1
            if n > 0 {
                heapScores[0] = heapScores[n]; heapItems[0] = heapItems[n]
                siftDown(0, n)
            }
        }
    }
}
