// Iterative k-core on the user–item interaction multigraph: drop every interaction of a user
// with fewer than userK interactions or of an item with fewer than itemK, and repeat until
// nothing changes. Interactions are counted as rows (a repeated user–item pair counts each
// time), as RecBole does. The fixed point is the unique largest set of rows in which every user
// has >= userK rows and every item >= itemK, so the order of removals does not matter; this
// implementation peels with a work queue in O(rows) instead of rescanning per round.

/// Indices of the rows that survive iterative k-core, ascending (file order).
/// `users[r]` is in 0..<userCount and `items[r]` in 0..<itemCount.
public func kCoreRows(users: [Int32], items: [Int32], userCount: Int, itemCount: Int,
                      userK: Int, itemK: Int) -> [Int] {
    precondition(users.count == items.count, "users and items differ in length")
    let n = users.count
    // CSR: rows of each user and of each item.
    func csr(_ keys: [Int32], _ m: Int) -> (offsets: [Int], rows: [Int32]) {
        var offsets = [Int](repeating: 0, count: m + 1)
        for k in keys { offsets[Int(k) + 1] += 1 }
        for i in 0..<m { offsets[i + 1] += offsets[i] }
        var fill = offsets, rows = [Int32](repeating: 0, count: keys.count)
        for (r, k) in keys.enumerated() { rows[fill[Int(k)]] = Int32(r); fill[Int(k)] += 1 }
        return (offsets, rows)
    }
    let byUser = csr(users, userCount), byItem = csr(items, itemCount)
    var userDeg = (0..<userCount).map { byUser.offsets[$0 + 1] - byUser.offsets[$0] }
    var itemDeg = (0..<itemCount).map { byItem.offsets[$0 + 1] - byItem.offsets[$0] }
    var alive = [Bool](repeating: true, count: n)
    // Queue entries: user u as u, item i as userCount + i.
    var queue: [Int] = []
    for u in 0..<userCount where userDeg[u] > 0 && userDeg[u] < userK { queue.append(u) }
    for i in 0..<itemCount where itemDeg[i] > 0 && itemDeg[i] < itemK { queue.append(userCount + i) }
    var head = 0
    while head < queue.count {
        let e = queue[head]; head += 1
        if e < userCount {
            for k in byUser.offsets[e]..<byUser.offsets[e + 1] {
                let r = Int(byUser.rows[k])
                guard alive[r] else { continue }
                alive[r] = false
                userDeg[e] -= 1
                let i = Int(items[r])
                itemDeg[i] -= 1
                if itemDeg[i] == itemK - 1 && itemDeg[i] > 0 { queue.append(userCount + i) }
            }
        } else {
            let i = e - userCount
            for k in byItem.offsets[i]..<byItem.offsets[i + 1] {
                let r = Int(byItem.rows[k])
                guard alive[r] else { continue }
                alive[r] = false
                itemDeg[i] -= 1
                let u = Int(users[r])
                userDeg[u] -= 1
                if userDeg[u] == userK - 1 && userDeg[u] > 0 { queue.append(u) }
            }
        }
    }
    var kept: [Int] = []
    kept.reserveCapacity(n)
    for r in 0..<n where alive[r] { kept.append(r) }
    return kept
}

extension Interactions {
    /// Rows surviving iterative k-core (see `kCoreRows`), in file order.
    public func kCoreRows(userK: Int, itemK: Int) -> [Int] {
        Data.kCoreRows(users: users, items: items, userCount: userTokens.count,
                       itemCount: itemTokens.count, userK: userK, itemK: itemK)
    }
}
