// Exact maximum-inner-product search: the top-k items of each query by q · e_j over every item.
// The items are split into one range per thread; each thread multiplies the queries with blocks
// of its items (OpenBLAS, serial per thread) and keeps, per query, a min-heap of its best k,
// scanning each block's scores eight at a time against the heap's smallest so that only scores
// that can enter are looked at; the threads' heaps are merged at the end.
import Numerics

public final class InnerProductIndex {
    /// (N, C) row-major item vectors; item j + 1 is row j. Not copied: the owner keeps it alive.
    public let items: UnsafePointer<Float>
    public let count: Int
    public let dim: Int
    /// The items again, eight to a block (`packedInnerProducts`), for batches of at most
    /// `smallBatch` queries: a product call re-packs its item block every time, which for a few
    /// queries costs more than the arithmetic (45 % of the time at 1,000 requests/s).
    private let packed: UnsafeMutablePointer<Float>
    private let blocks: Int
    public var smallBatch = 32
    /// Items per product block, at most (scores of a block: queries × block floats per thread).
    public var blockItems = 8192
    /// Score floats per block for batches: a block of queries × items stays in L2 (FAISS blocks
    /// 1,024 items too).
    public var blockScores = 256 * 1024

    public init(items: UnsafePointer<Float>, count: Int, dim: Int) {
        precondition(count >= 1 && dim >= 1, "an index needs items and a dimension")
        self.items = items; self.count = count; self.dim = dim
        blocks = (count + 7) / 8
        packed = .allocate(capacity: blocks * 8 * dim)
        packed.update(repeating: 0, count: blocks * 8 * dim)   // the last block's missing items score 0 and are never read
        for j in 0..<count {
            let row = items + j * dim, block = packed + (j / 8) * 8 * dim
            for c in 0..<dim { block[c * 8 + j % 8] = row[c] }
        }
    }

    deinit { packed.deallocate() }

    /// The k best (item, score) of each of the B queries (B, C), best first, ties to the lower
    /// item; items in `exclude[b]` are never returned for query b. k must be in 1...count.
    public func search(queries: UnsafePointer<Float>, count B: Int, k: Int,
                       exclude: [Set<Int32>]? = nil) -> [[(item: Int32, score: Float)]] {
        precondition(k >= 1 && k <= count, "k must be in 1...\(count)")
        precondition(exclude == nil || exclude!.count == B, "one exclusion set per query")
        let N = count, C = dim
        if B <= smallBatch {
            // small batches: blocks of eight packed items, scored by the packed kernel
            let perStep = 128   // blocks per kernel call: B × 1,024 scores
            return searchRanges(of: blocks, minPerPart: 512, scoresPerStep: perStep * 8, B: B, k: k) { j, limit, scores in
                let n = min(perStep, limit - j)
                packedInnerProducts(out: scores, queries: queries, B: B, packed: packed + j * 8 * C, blocks: n, dim: C)
                // (first item, scores per query row, valid scores: the table may end inside the last block)
                return (next: j + n, firstItem: 8 * j + 1, stride: 8 * n, valid: min(8 * n, N - 8 * j))
            } exclude: { exclude?[$0] }
        }
        let nb = max(1, min(blockItems, N, B == 1 ? blockItems : max(256, blockScores / B)))
        return searchRanges(of: N, minPerPart: 4096, scoresPerStep: nb, B: B, k: k) { lo, limit, scores in
            let n = min(nb, limit - lo)
            if B == 1 {
                sgemv(M: n, N: C, A: items + lo * C, lda: C, x: queries, y: scores)
            } else {
                sgemm(transB: true, M: B, N: n, K: C, alpha: 1, A: queries, lda: C, B: items + lo * C, ldb: C, C: scores, ldc: n)
            }
            return (next: lo + n, firstItem: lo + 1, stride: n, valid: n)
        } exclude: { exclude?[$0] }
    }

    /// Splits `units` (items or packed blocks) into one range per thread; each thread steps
    /// through its range with `score` (which writes the batch's scores of one step and says
    /// where the next step starts, the step's first item, the scores per query row and how many
    /// are real) and offers every query's scores to that query's heap; the heaps are merged.
    private func searchRanges(of units: Int, minPerPart: Int, scoresPerStep: Int, B: Int, k: Int,
                              score: (_ from: Int, _ limit: Int, _ scores: Floats)
                                  -> (next: Int, firstItem: Int, stride: Int, valid: Int),
                              exclude: (Int) -> Set<Int32>?) -> [[(item: Int32, score: Float)]] {
        let parts = Threads.chunks(units, minPerChunk: minPerPart)
        var partial = [[TopK]](repeating: [], count: parts)
        partial.withUnsafeMutableBufferPointer { out in
            Threads.parallelFor(parts) { _, first, last in
                for part in first..<last {
                    let range = Threads.chunk(part, of: parts, units)
                    var heaps = (0..<B).map { _ in TopK(k) }
                    let scores = UnsafeMutablePointer<Float>.allocate(capacity: B * scoresPerStep)
                    defer { scores.deallocate() }
                    var at = range.lowerBound
                    while at < range.upperBound {
                        let step = score(at, range.upperBound, scores)
                        for b in 0..<B {
                            heaps[b].scan(scores + b * step.stride, count: step.valid, firstItem: Int32(step.firstItem), exclude: exclude(b))
                        }
                        at = step.next
                    }
                    out[part] = heaps
                }
            }
        }
        return Self.merge(partial, B: B, k: k)
    }

    /// Each query's best k over the threads' heaps, best first.
    private static func merge(_ partial: [[TopK]], B: Int, k: Int) -> [[(item: Int32, score: Float)]] {
        (0..<B).map { b in
            var all: [(item: Int32, score: Float)] = []
            for p in partial { all += p[b].entries }
            all.sort { $0.score > $1.score || ($0.score == $1.score && $0.item < $1.item) }
            return Array(all.prefix(k))
        }
    }
}

/// The k best (item, score) seen so far: a min-heap whose root is the one to beat.
struct TopK {
    let k: Int
    private(set) var scores: [Float] = []
    private(set) var items: [Int32] = []

    init(_ k: Int) { self.k = k; scores.reserveCapacity(k); items.reserveCapacity(k) }

    var entries: [(item: Int32, score: Float)] { zip(items, scores).map { ($0, $1) } }

    /// a ranks below b: a lower score, or the same score and a higher item
    @inline(__always) private func below(_ i: Int, _ j: Int) -> Bool {
        scores[i] < scores[j] || (scores[i] == scores[j] && items[i] > items[j])
    }

    /// Offers scores[0..<n] of items firstItem, firstItem + 1, …
    mutating func scan(_ s: UnsafePointer<Float>, count n: Int, firstItem: Int32, exclude: Set<Int32>?) {
        var j = 0
        // until the heap is full every score enters
        while j < n && scores.count < k {
            let item = firstItem + Int32(j)
            if exclude?.contains(item) != true { push(s[j], item) }
            j += 1
        }
        guard scores.count == k else { return }
        var floor = scores[0]
        // most blocks hold no score that beats the k-th best: find the next one that does with a
        // tight vector loop, then offer it
        while j < n {
            j = Self.firstAtLeast(floor, s, from: j, to: n)
            guard j < n else { break }
            let item = firstItem + Int32(j)
            if exclude?.contains(item) != true { offer(s[j], item); floor = scores[0] }
            j += 1
        }
    }

    /// The first index in j..<n with s[index] >= floor, or n.
    @inline(__always)
    static func firstAtLeast(_ floor: Float, _ s: UnsafePointer<Float>, from j0: Int, to n: Int) -> Int {
        var j = j0
        let f = SIMD8<Float>(repeating: floor)
        while j + 32 <= n {
            let p = UnsafeRawPointer(s + j)
            let a = p.loadUnaligned(as: SIMD8<Float>.self), b = p.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self)
            let c = p.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self), d = p.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self)
            if any((a .>= f) .| (b .>= f) .| (c .>= f) .| (d .>= f)) { break }
            j += 32
        }
        while j < n && s[j] < floor { j += 1 }
        return j
    }

    private mutating func push(_ score: Float, _ item: Int32) {
        scores.append(score); items.append(item)
        var i = scores.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            guard below(i, p) else { break }
            scores.swapAt(i, p); items.swapAt(i, p); i = p
        }
    }

    /// Replaces the root when (score, item) ranks above it.
    private mutating func offer(_ score: Float, _ item: Int32) {
        guard score > scores[0] || (score == scores[0] && item < items[0]) else { return }
        scores[0] = score; items[0] = item
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < scores.count && below(l, m) { m = l }
            if r < scores.count && below(r, m) { m = r }
            if m == i { return }
            scores.swapAt(i, m); items.swapAt(i, m); i = m
        }
    }
}
