// Seeded shuffling and batching into caller-owned buffers.

/// A small, fast, seeded generator (SplitMix64). Same seed, same sequence on every machine; used
/// for shuffles and splits so that data order never depends on the numerics' generators.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// The generator's state; `SplitMix64(seed: g.position)` continues g's sequence exactly.
    public var position: UInt64 { state }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<n (n > 0), unbiased (Lemire's multiply-and-reject).
    @inline(__always)
    public mutating func bounded(_ n: Int) -> Int {
        precondition(n > 0, "bounded(0)")
        let range = UInt64(n)
        var m = next().multipliedFullWidth(by: range)
        if m.low < range {
            let threshold = (0 &- range) % range
            while m.low < threshold { m = next().multipliedFullWidth(by: range) }
        }
        return Int(m.high)
    }

    /// Fisher–Yates shuffle, defined here (not the standard library's) so the order is fixed
    /// by the seed across toolchains.
    public mutating func shuffle<T>(_ a: inout [T]) {
        var i = a.count - 1
        while i > 0 {
            let j = bounded(i + 1)
            if i != j { a.swapAt(i, j) }
            i -= 1
        }
    }
}

/// Where padding goes in a batch row of width L.
public enum Padding: String, Sendable, CaseIterable {
    /// Items at columns 0..<len, zeros after (RecBole's layout; learned position p is the p-th
    /// item of the truncated input). The default: the protocol and the reference use it.
    case right
    /// Zeros first, items at columns L-len..<L (the last item is always at column L-1).
    case left
}

/// Cuts an `InstanceSet` — or its `WindowSet` — into batches: a seeded order per epoch, and
/// `fill` (`fillWindows`) writing a batch into buffers the caller owns (no allocation per batch).
///
/// Per row b of a batch: `items[b*L ..< (b+1)*L]` holds the input item ids padded with 0 as
/// `padding` says, `lengths[b]` the number of real items (>= 1 for every instance of the
/// protocols here), `targets[b]` the target item id, and optionally `instances[b]` the index of
/// the instance in the set (for per-instance state such as UFNRec's records).
public struct Batcher: Sendable {
    public let data: SequenceDataset
    public let instances: InstanceSet
    public let maxLength: Int
    public let batchSize: Int
    public let padding: Padding
    /// The windows batches are cut from (all-position training), or nil for one row per instance.
    public let windows: WindowSet?
    /// The current order of row indices, instances or windows (identity until `shuffle`).
    public private(set) var order: [Int32]
    private var rng: SplitMix64

    public init(data: SequenceDataset, instances: InstanceSet, maxLength: Int, batchSize: Int,
                padding: Padding = .right, seed: UInt64 = 0) {
        precondition(maxLength > 0 && batchSize > 0, "maxLength and batchSize must be positive")
        self.data = data; self.instances = instances; self.maxLength = maxLength
        self.batchSize = batchSize; self.padding = padding; windows = nil
        self.order = (0..<instances.count).map { Int32($0) }
        self.rng = SplitMix64(seed: seed)
    }

    /// Batches of windows over `instances` (`WindowSet(instances, maxLength:)`), right-padded.
    public init(data: SequenceDataset, windowsOf instances: InstanceSet, maxLength: Int, batchSize: Int, seed: UInt64 = 0) {
        precondition(maxLength > 0 && batchSize > 0, "maxLength and batchSize must be positive")
        let w = WindowSet(instances, maxLength: maxLength)
        self.data = data; self.instances = instances; self.maxLength = maxLength
        self.batchSize = batchSize; padding = .right; windows = w
        order = (0..<w.count).map { Int32($0) }
        rng = SplitMix64(seed: seed)
    }

    /// Number of rows: instances, or windows.
    public var count: Int { windows?.count ?? instances.count }
    /// Batches per epoch; the last one may be smaller than `batchSize`.
    public var batchCount: Int { (count + batchSize - 1) / batchSize }

    /// Draws the next epoch's order from the seeded generator (reshuffles the current order).
    public mutating func shuffle() { rng.shuffle(&order) }

    /// The shuffle generator's state, for checkpoints (see `restore(order:shufflePosition:)`).
    public var shufflePosition: UInt64 { rng.position }

    /// Puts back an order and a shuffle generator saved from a batcher over the same instances,
    /// so that the following epochs draw the orders an uninterrupted run would have. Returns
    /// false (and changes nothing) when `order` is not a permutation of this batcher's instances.
    public mutating func restore(order saved: [Int32], shufflePosition: UInt64) -> Bool {
        guard saved.count == order.count else { return false }
        var seen = [Bool](repeating: false, count: saved.count)
        for i in saved {
            guard i >= 0, Int(i) < seen.count, !seen[Int(i)] else { return false }
            seen[Int(i)] = true
        }
        order = saved
        rng = SplitMix64(seed: shufflePosition)
        return true
    }

    /// Restores file order (for evaluation passes).
    public mutating func resetOrder() { for k in 0..<order.count { order[k] = Int32(k) } }

    /// Rows in batch `index` (batchSize, or fewer for the last batch).
    public func rows(inBatch index: Int) -> Int {
        precondition(index >= 0 && index < batchCount, "batch \(index) outside 0..<\(batchCount)")
        return min(batchSize, count - index * batchSize)
    }

    /// Writes batch `index` of the current order. Buffers: items (batchSize × maxLength),
    /// lengths (batchSize), targets (batchSize), instances (batchSize, optional). Only the
    /// returned number of rows is written.
    @discardableResult
    public func fill(batch index: Int, items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>,
                     targets: UnsafeMutablePointer<Int32>, instances instanceOut: UnsafeMutablePointer<Int32>? = nil) -> Int {
        precondition(windows == nil, "a batcher of windows fills with fillWindows")
        let n = rows(inBatch: index), L = maxLength
        data.items.withUnsafeBufferPointer { all in
            let base = all.baseAddress!
            for b in 0..<n {
                let k = Int(order[index * batchSize + b])
                let u = Int(instances.users[k])
                let start = data.offsets[u], end = start + Int(instances.positions[k])
                let lo = max(start, end - L), len = end - lo
                let row = items + b * L
                switch padding {
                case .right:
                    if len > 0 { row.update(from: base + lo, count: len) }
                    if len < L { (row + len).update(repeating: 0, count: L - len) }
                case .left:
                    if len < L { row.update(repeating: 0, count: L - len) }
                    if len > 0 { (row + (L - len)).update(from: base + lo, count: len) }
                }
                lengths[b] = Int32(len)
                targets[b] = base[end]
                instanceOut?[b] = Int32(k)
            }
        }
        return n
    }

    /// Writes batch `index` of windows: items (batchSize × maxLength) right-padded, lengths
    /// (batchSize), and per position targets (batchSize × maxLength): the item position p
    /// predicts, 0 where it predicts none (context-only positions, padding); instances
    /// (batchSize × maxLength, optional): the source instance of each target, -1 elsewhere.
    @discardableResult
    public func fillWindows(batch index: Int, items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>,
                            targets: UnsafeMutablePointer<Int32>, instances instanceOut: UnsafeMutablePointer<Int32>? = nil) -> Int {
        guard let windows else { preconditionFailure("fillWindows on a batcher of instances") }
        let n = rows(inBatch: index), L = maxLength
        data.items.withUnsafeBufferPointer { all in
            let base = all.baseAddress!
            for b in 0..<n {
                let w = Int(order[index * batchSize + b])
                let start = data.offsets[Int(windows.users[w])]
                let end = Int(windows.lastTargets[w]), first = Int(windows.firstTargets[w])
                let lo = max(0, end - L), len = end - lo
                let row = items + b * L, out = targets + b * L
                row.update(from: base + start + lo, count: len)
                if len < L { (row + len).update(repeating: 0, count: L - len); (out + len).update(repeating: 0, count: L - len) }
                for p in 0..<len { out[p] = lo + p + 1 >= first ? base[start + lo + p + 1] : 0 }
                lengths[b] = Int32(len)
                if let instanceOut {
                    let ids = instanceOut + b * L, k0 = Int(windows.firstInstances[w])
                    for p in 0..<L { ids[p] = p < len && lo + p + 1 >= first ? Int32(k0 + lo + p + 1 - first) : -1 }
                }
            }
        }
        return n
    }
}

/// A filled batch's pointers: items (B, T), lengths (B), and targets and instances (B) for
/// instances or (B, T) for windows (0 / -1 where a position has no target), as `Batcher` writes.
public struct FilledBatch {
    public let items: UnsafePointer<Int32>
    public let lengths: UnsafePointer<Int32>
    public let targets: UnsafePointer<Int32>
    public let instances: UnsafePointer<Int32>?
    public let B: Int
    public init(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                instances: UnsafePointer<Int32>?, B: Int) {
        self.items = items; self.lengths = lengths; self.targets = targets; self.instances = instances; self.B = B
    }
}

/// Storage one batch is filled into, allocated once for batches of up to B sequences of T
/// positions; targets and instances per sequence, or per position for a batcher of windows.
public final class BatchBuffers {
    public let B: Int, T: Int, perPosition: Bool
    public let items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>
    public let targets: UnsafeMutablePointer<Int32>, instances: UnsafeMutablePointer<Int32>
    /// Sequences in the last fill.
    public private(set) var count = 0

    public init(B: Int, T: Int, perPosition: Bool = false) {
        self.B = B; self.T = T; self.perPosition = perPosition
        items = .allocate(capacity: B * T); lengths = .allocate(capacity: B)
        targets = .allocate(capacity: perPosition ? B * T : B); instances = .allocate(capacity: perPosition ? B * T : B)
    }
    deinit { items.deallocate(); lengths.deallocate(); targets.deallocate(); instances.deallocate() }

    /// Fills batch `index` of `batcher` (of windows or of instances, as it holds); returns its sequences.
    @discardableResult
    public func fill(_ batcher: Batcher, batch index: Int) -> Int {
        precondition(batcher.batchSize <= B && batcher.maxLength == T && (batcher.windows != nil) == perPosition,
                     "buffers of \(B) × \(T)\(perPosition ? " per position" : "") do not fit the batcher's batches")
        count = batcher.windows != nil
            ? batcher.fillWindows(batch: index, items: items, lengths: lengths, targets: targets, instances: instances)
            : batcher.fill(batch: index, items: items, lengths: lengths, targets: targets, instances: instances)
        return count
    }

    /// The last fill's pointers.
    public var filled: FilledBatch {
        FilledBatch(items: items, lengths: lengths, targets: targets, instances: instances, B: count)
    }
}
