// Splits and instances. An instance is (user, position) in a `SequenceDataset`: its input is the
// user's items before `position` (the last `maxLength` of them) and its target is the item at
// `position` — or, for set-valued protocols, the items from `position` to the end. Instances are
// offsets into the packed sequences, never copied arrays.

/// Instances (user, position), compact: 8 bytes each.
public struct InstanceSet: Sendable {
    /// (count) user of each instance.
    public let users: [Int32]
    /// (count) index within the user's sequence of the target; the input is the part before it.
    public let positions: [Int32]

    public var count: Int { users.count }

    public init(users: [Int32], positions: [Int32]) {
        precondition(users.count == positions.count, "users and positions differ in length")
        self.users = users; self.positions = positions
    }

    /// The input of instance k: the last `maxLength` items before its position.
    public func input(_ k: Int, in data: SequenceDataset, maxLength: Int) -> ArraySlice<Int32> {
        let lo = data.offsets[Int(users[k])], end = lo + Int(positions[k])
        return data.items[max(lo, end - maxLength) ..< end]
    }

    /// The target item of instance k.
    public func target(_ k: Int, in data: SequenceDataset) -> Int32 {
        data.items[data.offsets[Int(users[k])] + Int(positions[k])]
    }

    /// The future of instance k: the items from its position to the end of the user's sequence.
    public func future(_ k: Int, in data: SequenceDataset) -> ArraySlice<Int32> {
        let u = Int(users[k])
        return data.items[data.offsets[u] + Int(positions[k]) ..< data.offsets[u + 1]]
    }

    /// Ground-truth sets (the future of each instance, duplicates removed, first occurrence
    /// kept), packed: instance k's set is items[offsets[k] ..< offsets[k + 1]].
    public func futureSets(in data: SequenceDataset) -> (offsets: [Int], items: [Int32]) {
        var offsets = [0], items: [Int32] = []
        var seen = [Int32](repeating: -1, count: data.itemCount + 1)
        for k in 0..<count {
            for i in future(k, in: data) where seen[Int(i)] != Int32(k) {
                seen[Int(i)] = Int32(k); items.append(i)
            }
            offsets.append(items.count)
        }
        return (offsets, items)
    }
}

/// Leave-one-out by time: per user, the last item is the test target, the second-to-last the
/// validation target, the rest is training.
///
/// - train: every position t >= 1 of the training part (input s[0..<t], last maxLength) -> s[t];
/// - validation: input = the whole training part -> the second-to-last item;
/// - test: input = training part + validation item -> the last item.
/// Users with fewer than 3 interactions have no validation or test instance; their items
/// (if 2) give training instances over the whole sequence.
public struct LeaveOneOut: Sendable {
    public let train: InstanceSet
    public let validation: InstanceSet
    public let test: InstanceSet

    public init(_ data: SequenceDataset) {
        var tu: [Int32] = [], tp: [Int32] = [], vu: [Int32] = [], vp: [Int32] = [], su: [Int32] = [], sp: [Int32] = []
        tu.reserveCapacity(data.interactionCount); tp.reserveCapacity(data.interactionCount)
        for u in 0..<data.userCount {
            let n = data.length(u)
            let trainEnd = n >= 3 ? n - 2 : n
            if trainEnd >= 2 {
                for t in 1..<trainEnd { tu.append(Int32(u)); tp.append(Int32(t)) }
            }
            if n >= 3 {
                vu.append(Int32(u)); vp.append(Int32(n - 2))
                su.append(Int32(u)); sp.append(Int32(n - 1))
            }
        }
        train = InstanceSet(users: tu, positions: tp)
        validation = InstanceSet(users: vu, positions: vp)
        test = InstanceSet(users: su, positions: sp)
    }
}

/// WSLRec's protocol: users split at random 8:1:1 into training, validation and test users.
///
/// - training users: every position t with minHistory <= t <= n - 1 gives an instance whose
///   input is s[0..<t] (last maxLength) and whose future is s[t..<n] (next item s[t]);
///   minHistory = 4 as the paper (t from 4 to n_u - 1, 1-based).
/// - validation and test users: one instance at position floor(0.8 n): the first 80 % is the
///   history, the set of items in the last 20 % is the ground truth (`futureSets`). Users whose
///   history or ground truth would be empty get no instance.
/// Split sizes: train = floor(0.8 U), validation = floor(0.1 U), test = the rest; membership is
/// a seeded shuffle of the user ids.
public struct UserSplit: Sendable {
    public let trainUsers: [Int32]
    public let validationUsers: [Int32]
    public let testUsers: [Int32]
    public let train: InstanceSet
    public let validation: InstanceSet
    public let test: InstanceSet

    public init(_ data: SequenceDataset, seed: UInt64, minHistory: Int = 4) {
        var order = (0..<data.userCount).map { Int32($0) }
        var rng = SplitMix64(seed: seed)
        rng.shuffle(&order)
        let nTrain = data.userCount * 8 / 10, nValid = data.userCount / 10
        trainUsers = Array(order[0..<nTrain]).sorted()
        validationUsers = Array(order[nTrain ..< nTrain + nValid]).sorted()
        testUsers = Array(order[(nTrain + nValid)...]).sorted()
        var tu: [Int32] = [], tp: [Int32] = []
        for u in trainUsers {
            let n = data.length(Int(u))
            if n > minHistory {
                for t in max(minHistory, 1)..<n { tu.append(u); tp.append(Int32(t)) }
            }
        }
        train = InstanceSet(users: tu, positions: tp)
        func heldOut(_ users: [Int32]) -> InstanceSet {
            var hu: [Int32] = [], hp: [Int32] = []
            for u in users {
                let n = data.length(Int(u)), k = n * 4 / 5
                if k >= 1 && k < n { hu.append(u); hp.append(Int32(k)) }
            }
            return InstanceSet(users: hu, positions: hp)
        }
        validation = heldOut(validationUsers)
        test = heldOut(testUsers)
    }
}
