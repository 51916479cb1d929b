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
// exists. Items are processed in parallel (each worker appends its finished rows to its own
// buffer, recording where each went; the rows are gathered in item order at the end); every
// item's result depends only on the input (users are visited in ascending index order), so the output is
// identical for any thread count. Sums are in Double; a score is rounded to Float once, and
// ranking uses that Float (so the stored rows are exactly ordered by their stored scores).
//
// Memory behaviour (the cost is cache misses, not arithmetic): column entries carry the user's
// row position and weight, so a column walk touches only the user rows; row entries hold the
// item and its count side by side; items are relabelled by popularity so the accumulator's hot
// entries share cache lines; the row a few users ahead is touched early to overlap misses.
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
    /// More interactions than the packed row positions address.
    case tooLarge(interactions: Int, limit: Int)

    public var description: String {
        switch self {
        case .invalidItemCount(let n): return "ItemCF: item count must be >= 1, got \(n)"
        case .invalidK(let k): return "ItemCF: k must be >= 1, got \(k)"
        case let .itemOutOfRange(sequence, position, item, itemCount):
            return "ItemCF: sequence \(sequence), position \(position): item id \(item) is outside 1...\(itemCount)"
        case let .malformedOffsets(index, reason):
            return "ItemCF: sequence offsets malformed at index \(index): \(reason)"
        case let .tooLarge(interactions, limit):
            return "ItemCF: \(interactions) interactions exceed the supported \(limit)"
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
        guard items.count < Int(ColumnEntry.repeatsBit) else {
            throw ItemCFError.tooLarge(interactions: items.count, limit: Int(ColumnEntry.repeatsBit) - 1)
        }
        let matrix = Cooccurrence(items: items, offsets: offsets, itemCount: N)
        let workers = max(1, threads ?? ProcessInfo.processInfo.activeProcessorCount)
        return topK(matrix, k: min(k, N), reportedK: k, threads: workers)
    }
}

// MARK: - W by rows and by columns

/// One entry of a user's row: an item (internal id) and c_uw, how often the user has it.
struct RowEntry {
    var item: Int32
    var count: Float
}

/// One entry of an item's column: where the user's row lies, and c_uv·s_u².
struct ColumnEntry {
    var rowStart: UInt32
    var rowLength: UInt32   // top bit set: some count in the row is > 1
    var weight: Double

    static let repeatsBit: UInt32 = 1 << 31
}

/// W = diag(s_u) · C, with C[u, v] = c_uv and s_u = 1 / log2(1 + n_u), kept as counts and
/// scales: W_uv·W_uw = (c_uv·s_u²)·c_uw. An item's column entries carry the user's row
/// position and c_uv·s_u², so walking a column touches each user's row and nothing else of
/// the user. Items are relabelled internally by descending number of users (ties: smaller id
/// first) so the accumulator's hot entries sit together; results are mapped back to the
/// caller's ids, and every comparison uses the caller's ids.
struct Cooccurrence {
    let itemCount: Int
    let original: [Int32]         // (N + 1) internal id -> item id; [0] = 0
    let rows: [RowEntry]          // (nnz) each user's distinct items, user after user
    let columnOffsets: [Int]      // (N + 2) by internal id
    let columns: [ColumnEntry]    // (nnz) users ascending within a column
    let norms: [Double]           // (N + 1) by internal id: sqrt(Σ_u c_uv² s_u²)

    init(items seq: [Int32], offsets seqOffsets: [Int], itemCount N: Int) {
        let U = seqOffsets.count - 1
        itemCount = N
        // Distinct items per user with counts (caller's ids for now).
        var rowOffsets = [Int](repeating: 0, count: U + 1)
        var rows = [RowEntry]()
        rows.reserveCapacity(seq.count)
        var userScale2 = [Double](repeating: 0, count: U)
        var userRepeats = [Bool](repeating: false, count: U)
        var users = [Int](repeating: 0, count: N + 1)   // users per item
        do {
            // stamp[v] = 1 + the last user that saw v; slot[v] = where v sits in that user's row.
            var stamp = [Int32](repeating: 0, count: N + 1)
            var slot = [Int](repeating: 0, count: N + 1)
            seq.withUnsafeBufferPointer { s in
                for u in 0 ..< U {
                    let lo = seqOffsets[u], hi = seqOffsets[u + 1]
                    let mark = Int32(truncatingIfNeeded: u + 1)
                    for p in lo ..< hi {
                        let v = Int(s[p])
                        if stamp[v] != mark {
                            stamp[v] = mark
                            slot[v] = rows.count
                            rows.append(RowEntry(item: Int32(v), count: 1))
                            users[v] += 1
                        } else {
                            rows[slot[v]].count += 1
                            userRepeats[u] = true
                        }
                    }
                    if hi > lo {
                        let scale = 1 / log2(1 + Double(hi - lo))
                        userScale2[u] = scale * scale
                    }
                    rowOffsets[u + 1] = rows.count
                }
            }
        }
        // Relabel by descending user count.
        var original = (0 ... N).map { Int32($0) }
        original[1...].sort { users[Int($0)] != users[Int($1)] ? users[Int($0)] > users[Int($1)] : $0 < $1 }
        var internalId = [Int32](repeating: 0, count: N + 1)
        for r in 1 ... N { internalId[Int(original[r])] = Int32(r) }
        for j in 0 ..< rows.count { rows[j].item = internalId[Int(rows[j].item)] }
        // Columns by internal id, users ascending.
        var columnOffsets = [Int](repeating: 0, count: N + 2)
        for r in 1 ... N { columnOffsets[r + 1] = columnOffsets[r] + users[Int(original[r])] }
        var fill = columnOffsets
        var columns = [ColumnEntry](repeating: ColumnEntry(rowStart: 0, rowLength: 0, weight: 0), count: rows.count)
        var norms = [Double](repeating: 0, count: N + 1)
        for u in 0 ..< U {
            let start = UInt32(rowOffsets[u])
            let length = UInt32(rowOffsets[u + 1] - rowOffsets[u]) | (userRepeats[u] ? ColumnEntry.repeatsBit : 0)
            for j in rowOffsets[u] ..< rowOffsets[u + 1] {
                let r = Int(rows[j].item)
                let c = Double(rows[j].count)
                let weight = c * userScale2[u]
                columns[fill[r]] = ColumnEntry(rowStart: start, rowLength: length, weight: weight)
                fill[r] += 1
                norms[r] += c * weight
            }
        }
        for r in 0 ... N { norms[r] = norms[r].squareRoot() }
        self.original = original
        self.rows = rows
        self.columnOffsets = columnOffsets
        self.columns = columns
        self.norms = norms
    }
}

// MARK: - Top-K by sparse accumulation

/// Pointers shared by the workers; each worker writes only its own items' output slots.
private struct Shared: @unchecked Sendable {
    let original: UnsafePointer<Int32>
    let rows: UnsafePointer<RowEntry>
    let columnOffsets: UnsafePointer<Int>
    let columns: UnsafePointer<ColumnEntry>
    let norms: UnsafePointer<Double>
    let rowWorker: UnsafeMutablePointer<Int32>  // (N + 1) by caller's id: which worker holds the row
    let rowStart: UnsafeMutablePointer<Int>     // (N + 1) where in that worker's output it starts
    let rowCount: UnsafeMutablePointer<Int>     // (N + 1) its length
}

/// One worker's finished rows, appended in the order it computed them.
private final class WorkerOutput: @unchecked Sendable {
    var items: [Int32] = []
    var scores: [Float] = []
}

/// Hands out chunks of internal item ids (most popular first) to workers.
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

private func topK(_ m: Cooccurrence, k: Int, reportedK: Int, threads: Int) -> ItemNeighbours {
    let N = m.itemCount
    // Rows land in per-worker buffers (memory follows the output, not N·k); where each row
    // went is recorded by item, and the rows are gathered in item order at the end.
    let outputs = (0 ..< threads).map { _ in WorkerOutput() }
    var rowWorker = [Int32](repeating: 0, count: N + 1)
    var rowStart = [Int](repeating: 0, count: N + 1)
    var rowCount = [Int](repeating: 0, count: N + 1)

    m.original.withUnsafeBufferPointer { original in
    m.rows.withUnsafeBufferPointer { rows in
    m.columnOffsets.withUnsafeBufferPointer { columnOffsets in
    m.columns.withUnsafeBufferPointer { columns in
    m.norms.withUnsafeBufferPointer { norms in
    rowWorker.withUnsafeMutableBufferPointer { rowWorker in
    rowStart.withUnsafeMutableBufferPointer { rowStart in
    rowCount.withUnsafeMutableBufferPointer { rowCount in
        // Empty arrays may have no base address; those pointers are then never read.
        func p<T>(_ b: UnsafeBufferPointer<T>) -> UnsafePointer<T> {
            b.baseAddress ?? UnsafePointer(bitPattern: MemoryLayout<T>.alignment)!
        }
        let shared = Shared(original: p(original), rows: p(rows), columnOffsets: p(columnOffsets),
                            columns: p(columns), norms: p(norms), rowWorker: rowWorker.baseAddress!,
                            rowStart: rowStart.baseAddress!, rowCount: rowCount.baseAddress!)
        let chunk = max(1, min(64, N / (threads * 64)))
        let counter = ChunkCounter(end: N + 1, chunk: chunk)
        DispatchQueue.concurrentPerform(iterations: threads) { w in
            var worker = Worker(itemCount: N, k: k, index: w, output: outputs[w])
            while let range = counter.take() {
                for r in range { worker.run(internalItem: r, shared) }
            }
            worker.release()
        }
    }}}}}}}}

    var offsets = [Int](repeating: 0, count: N + 2)
    for v in 0 ... N { offsets[v + 1] = offsets[v] + rowCount[v] }
    var items = [Int32](repeating: 0, count: offsets[N + 1])
    var scores = [Float](repeating: 0, count: offsets[N + 1])
    for v in 1 ... N where rowCount[v] > 0 {
        let from = outputs[Int(rowWorker[v])]
        let src = rowStart[v] ..< rowStart[v] + rowCount[v]
        items.replaceSubrange(offsets[v] ..< offsets[v + 1], with: from.items[src])
        scores.replaceSubrange(offsets[v] ..< offsets[v + 1], with: from.scores[src])
    }
    return ItemNeighbours(itemCount: N, k: reportedK, offsets: offsets, items: items, scores: scores)
}

/// One thread's scratch: the dense accumulator, the touched list and the heap.
private struct Worker {
    let N: Int
    let k: Int
    let acc: UnsafeMutablePointer<Double>       // (N + 1) by internal id, all zero between items
    let touched: UnsafeMutablePointer<Int32>    // (N + 2): touched ids, then one scratch slot
    let heapScores: UnsafeMutablePointer<Float> // (k) min-heap: root is the worst kept
    let heapItems: UnsafeMutablePointer<Int32>  // (k) caller's ids

    let index: Int32
    let output: WorkerOutput

    init(itemCount N: Int, k: Int, index: Int, output: WorkerOutput) {
        self.N = N
        self.k = k
        self.index = Int32(index)
        self.output = output
        acc = .allocate(capacity: N + 1)
        acc.initialize(repeating: 0, count: N + 1)
        touched = .allocate(capacity: N + 2)
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

    mutating func run(internalItem r: Int, _ m: Shared) {
        // acc[x] = Σ_{u ∋ r} (c_ur·s_u²)·c_ux over r's users in ascending order.
        var nTouched = 0
        let columnEnd = m.columnOffsets[r + 1]
        var lookAhead: Int32 = 0
        for j in m.columnOffsets[r] ..< columnEnd {
            // Touch the row a few users ahead so its cache miss overlaps with this row's work.
            if j + 4 < columnEnd { lookAhead &+= m.rows[Int(m.columns[j + 4].rowStart)].item }
            let e = m.columns[j]
            let f = e.weight
            let lo = Int(e.rowStart)
            let hi = lo + Int(e.rowLength & ~ColumnEntry.repeatsBit)
            if e.rowLength & ColumnEntry.repeatsBit != 0 {
                for q in lo ..< hi {
                    let x = Int(m.rows[q].item)
                    if acc[x] == 0 { touched[nTouched] = Int32(truncatingIfNeeded: x); nTouched += 1 }
                    acc[x] += f * Double(m.rows[q].count)
                }
            } else {
                for q in lo ..< hi {
                    let x = Int(m.rows[q].item)
                    if acc[x] == 0 { touched[nTouched] = Int32(truncatingIfNeeded: x); nTouched += 1 }
                    acc[x] += f
                }
            }
        }
        touched[N + 1] = lookAhead   // a store keeps the look-ahead loads from being dropped
        // Score, keep the k best (score descending, then caller's id ascending), clear the accumulator.
        var count = 0
        let nr = m.norms[r]
        for t in 0 ..< nTouched {
            let x = Int(touched[t])
            let dot = acc[x]
            acc[x] = 0
            if x == r { continue }
            let s = Float(dot / (nr * m.norms[x]))
            let id = m.original[x]
            if count < k {
                heapScores[count] = s; heapItems[count] = id
                count += 1
                siftUp(count - 1)
            } else if worse(heapScores[0], heapItems[0], s, id) {
                heapScores[0] = s; heapItems[0] = id
                siftDown(0, count)
            }
        }
        // Heap sort in place: the worst moves to the back each time, so the row ends best first.
        var n = count
        while n > 1 {
            let s = heapScores[0], id = heapItems[0]
            heapScores[0] = heapScores[n - 1]; heapItems[0] = heapItems[n - 1]
            heapScores[n - 1] = s; heapItems[n - 1] = id
            n -= 1
            siftDown(0, n)
        }
        let v = Int(m.original[r])
        m.rowWorker[v] = index
        m.rowStart[v] = output.items.count
        m.rowCount[v] = count
        output.items.append(contentsOf: UnsafeBufferPointer(start: heapItems, count: count))
        output.scores.append(contentsOf: UnsafeBufferPointer(start: heapScores, count: count))
    }
}
