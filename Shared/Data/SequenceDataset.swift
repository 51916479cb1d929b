// Per-user interaction sequences with dense ids: the form every trainer, teacher and evaluator
// consumes. Built from `Interactions` by k-core, id remapping and a stable time sort.
//
// Id rules (the experiment protocol; the PyTorch reference follows the same rules):
//   users 0..U-1 in order of first appearance among the surviving rows in file order;
//   each user's interactions sorted by timestamp, ties kept in file order;
//   items 1..N in order of first appearance walking users 0..U-1 through their sorted
//   sequences; item 0 is padding and never occurs in a sequence.

/// Time-ordered item sequences of all users, packed (CSR), with both directions of the id maps.
public struct SequenceDataset: Sendable {
    /// Number of users U; user ids are 0..<U.
    public let userCount: Int
    /// Number of items N; item ids are 1...N, 0 is padding.
    public let itemCount: Int
    /// (U + 1) offsets: user u's interactions are at offsets[u] ..< offsets[u + 1].
    public let offsets: [Int]
    /// (total) item ids, each user's in time order.
    public let items: [Int32]
    /// (total) timestamps aligned with `items` (file position when the source had none).
    public let timestamps: [Double]
    /// (total) ratings aligned with `items`, when the source had them.
    public let ratings: [Float]?
    /// Original user tokens: `userTokens[u]` for dense user u; `userTokens.index(of:)` inverts.
    public let userTokens: TokenTable
    /// Original item tokens: `itemTokens[i - 1]` for dense item i (padding has no token).
    public let itemTokens: TokenTable

    /// Total number of interactions.
    public var interactionCount: Int { items.count }

    /// The items of user u in time order (a view into `items`).
    @inline(__always)
    public func sequence(_ u: Int) -> ArraySlice<Int32> { items[offsets[u] ..< offsets[u + 1]] }

    /// Number of interactions of user u.
    @inline(__always)
    public func length(_ u: Int) -> Int { offsets[u + 1] - offsets[u] }

    /// The original token of dense item `id` (1...N).
    public func itemToken(_ id: Int32) -> String { itemTokens[Int(id) - 1] }
    /// The dense item id of an original token, or nil.
    public func itemID(token: String) -> Int32? { itemTokens.index(of: token).map { $0 + 1 } }
    /// The original token of dense user `u`.
    public func userToken(_ u: Int32) -> String { userTokens[Int(u)] }
    /// The dense user id of an original token, or nil.
    public func userID(token: String) -> Int32? { userTokens.index(of: token) }

    /// Interaction counts per item id, (N + 1) with index 0 (padding) = 0.
    public func itemPopularity() -> [Int32] {
        var pop = [Int32](repeating: 0, count: itemCount + 1)
        for i in items { pop[Int(i)] += 1 }
        return pop
    }

    /// Applies iterative k-core (userK, itemK; 0 or 1 keeps everything) to `interactions`,
    /// remaps ids densely and sorts each user's interactions by time (stable).
    public init(_ interactions: Interactions, userK: Int = 5, itemK: Int = 5) {
        let rows = interactions.kCoreRows(userK: userK, itemK: itemK)
        let rawUsers = interactions.users, rawItems = interactions.items
        // Users in order of first appearance among surviving rows.
        var userOf = [Int32](repeating: -1, count: interactions.userTokens.count)
        var userTokens = TokenTable()
        var counts: [Int] = []
        for r in rows {
            let raw = Int(rawUsers[r])
            if userOf[raw] < 0 {
                userOf[raw] = Int32(counts.count)
                counts.append(0)
                interactions.userTokens.withBytes(raw) { p, n in _ = userTokens.intern(p, n) }
            }
            counts[Int(userOf[raw])] += 1
        }
        let U = counts.count
        var offsets = [Int](repeating: 0, count: U + 1)
        for u in 0..<U { offsets[u + 1] = offsets[u] + counts[u] }
        // Rows grouped per user, in file order, then a stable sort by time within each user.
        var grouped = [Int32](repeating: 0, count: rows.count)
        var fill = offsets
        for r in rows {
            let u = Int(userOf[Int(rawUsers[r])])
            grouped[fill[u]] = Int32(r); fill[u] += 1
        }
        if let ts = interactions.timestamps {
            for u in 0..<U {
                let lo = offsets[u], hi = offsets[u + 1]
                var seg = Array(grouped[lo..<hi])
                // (timestamp, row) order: the row index breaks ties, so the sort is stable by construction.
                seg.sort { a, b in
                    let ta = ts[Int(a)], tb = ts[Int(b)]
                    return ta < tb || (ta == tb && a < b)
                }
                grouped.replaceSubrange(lo..<hi, with: seg)
            }
        }
        // Items in order of first appearance along the sorted sequences.
        var itemOf = [Int32](repeating: 0, count: interactions.itemTokens.count)
        var itemTokens = TokenTable()
        var items = [Int32](repeating: 0, count: rows.count)
        var times = [Double](repeating: 0, count: rows.count)
        var ratings: [Float]? = interactions.ratings == nil ? nil : [Float](repeating: 0, count: rows.count)
        var next: Int32 = 1
        for k in 0..<grouped.count {
            let r = Int(grouped[k])
            let raw = Int(rawItems[r])
            if itemOf[raw] == 0 {
                itemOf[raw] = next; next += 1
                interactions.itemTokens.withBytes(raw) { p, n in _ = itemTokens.intern(p, n) }
            }
            items[k] = itemOf[raw]
            times[k] = interactions.timestamps?[r] ?? Double(r)
            if let rs = interactions.ratings { ratings![k] = rs[r] }
        }
        self.userCount = U
        self.itemCount = Int(next) - 1
        self.offsets = offsets
        self.items = items
        self.timestamps = times
        self.ratings = ratings
        self.userTokens = userTokens
        self.itemTokens = itemTokens
    }

    /// A dataset from ready sequences of dense item ids 1...itemCount (tests, synthetic data).
    /// Timestamps are positions; tokens are the decimal ids.
    public init(sequences: [[Int32]], itemCount: Int) {
        var offsets = [0], items: [Int32] = [], times: [Double] = []
        for s in sequences {
            for (t, i) in s.enumerated() {
                precondition(i >= 1 && Int(i) <= itemCount, "item id \(i) outside 1...\(itemCount)")
                items.append(i); times.append(Double(t))
            }
            offsets.append(items.count)
        }
        self.userCount = sequences.count
        self.itemCount = itemCount
        self.offsets = offsets
        self.items = items
        self.timestamps = times
        self.ratings = nil
        self.userTokens = TokenTable((0..<sequences.count).map(String.init))
        self.itemTokens = TokenTable((1...max(itemCount, 1)).prefix(itemCount).map(String.init))
    }
}
