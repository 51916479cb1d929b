import XCTest
@testable import Data

/// The naive definition: rounds of "count, drop every row of a light user or item", to a fixed point.
private func naiveKCore(users: [Int32], items: [Int32], userK: Int, itemK: Int) -> [Int] {
    var keep = Array(0..<users.count)
    while true {
        var uc: [Int32: Int] = [:], ic: [Int32: Int] = [:]
        for r in keep { uc[users[r], default: 0] += 1; ic[items[r], default: 0] += 1 }
        let next = keep.filter { uc[users[$0]]! >= userK && ic[items[$0]]! >= itemK }
        if next.count == keep.count { return keep }
        keep = next
    }
}

final class KCoreTests: XCTestCase {
    func testKCoreEqualsTheNaiveIterationOnRandomGraphs() {
        var rng = SplitMix64(seed: 42)
        var nonTrivial = 0
        for trial in 0..<60 {
            let U = 5 + rng.bounded(40), I = 5 + rng.bounded(60), n = rng.bounded(600)
            var users: [Int32] = [], items: [Int32] = []
            for _ in 0..<n {
                users.append(Int32(rng.bounded(U)))
                // Skewed items so that some survive and some cascade away; duplicates allowed.
                items.append(Int32(min(rng.bounded(I), rng.bounded(I))))
            }
            let (uk, ik) = (1 + trial % 6, 1 + (trial / 6) % 6)
            let fast = kCoreRows(users: users, items: items, userCount: U, itemCount: I, userK: uk, itemK: ik)
            let slow = naiveKCore(users: users, items: items, userK: uk, itemK: ik)
            XCTAssertEqual(fast, slow, "trial \(trial)")
            if !fast.isEmpty && fast.count < n { nonTrivial += 1 }
        }
        XCTAssertGreaterThan(nonTrivial, 10, "the random cases should exercise partial cores")
    }

    func testKCoreCascades() {
        let x = Interactions(users: ["u0", "u0", "u1", "u1", "u2", "u2", "u3", "u3"],
                             items: ["a", "b", "a", "c", "c", "d", "d", "c"])
        // b (1 row) goes -> u0 has 1 -> a has 1 -> u1 has 1 -> c keeps 2: four rounds.
        XCTAssertEqual(x.kCoreRows(userK: 2, itemK: 2), [4, 5, 6, 7])
        XCTAssertEqual(naiveKCore(users: x.users, items: x.items, userK: 2, itemK: 2), [4, 5, 6, 7])
    }
}

final class SequenceDatasetTests: XCTestCase {
    func testIdsFollowTheProtocolAndTimeSortIsStable() {
        // File order: u9 first, then u5. Times tie for u9's items x and y (file order kept: y, x).
        let x = Interactions(users: ["u9", "u5", "u9", "u9", "u5"],
                             items: ["y", "z", "x", "w", "y"],
                             timestamps: [5, 1, 5, 2, 0],
                             ratings: [1, 2, 3, 4, 5])
        let d = SequenceDataset(x, userK: 1, itemK: 1)
        XCTAssertEqual(d.userCount, 2)
        XCTAssertEqual(d.userToken(0), "u9")
        XCTAssertEqual(d.userToken(1), "u5")
        // u9 sorted: w(2), y(5), x(5) -> items numbered w=1, y=2, x=3; u5: y(0), z(1) -> z=4.
        XCTAssertEqual(Array(d.sequence(0)), [1, 2, 3])
        XCTAssertEqual(Array(d.sequence(1)), [2, 4])
        XCTAssertEqual(d.itemCount, 4)
        XCTAssertEqual(d.itemToken(3), "x")
        XCTAssertEqual(d.itemID(token: "z"), 4)
        XCTAssertEqual(d.userID(token: "u5"), 1)
        XCTAssertNil(d.itemID(token: "nope"))
        XCTAssertEqual(d.timestamps, [2, 5, 5, 0, 1])
        XCTAssertEqual(d.ratings!, [4, 1, 3, 5, 2])
        XCTAssertEqual(d.itemPopularity(), [0, 1, 2, 1, 1])
    }

    func testKCoreIsAppliedBeforeRemapping() {
        // Item "rare" occurs once and is dropped with k = 2; user "solo" then has 1 row and goes too.
        let x = Interactions(users: ["a", "a", "b", "b", "solo", "solo"],
                             items: ["p", "q", "p", "q", "rare", "p"], timestamps: [1, 2, 1, 2, 1, 2])
        let d = SequenceDataset(x, userK: 2, itemK: 2)
        XCTAssertEqual(d.userCount, 2)
        XCTAssertEqual(d.itemCount, 2)
        XCTAssertEqual(d.items, [1, 2, 1, 2])
    }
}

final class SplitTests: XCTestCase {
    func testLeaveOneOutInstances() {
        let d = SequenceDataset(sequences: [[1, 2, 3, 4, 5], [6, 7, 8], [1, 2]], itemCount: 8)
        let s = LeaveOneOut(d)
        // User 0: train part [1,2,3] -> positions 1, 2; user 1: train part [6] -> none;
        // user 2 (2 items): no evaluation, training over the whole sequence -> position 1.
        XCTAssertEqual(s.train.users, [0, 0, 2])
        XCTAssertEqual(s.train.positions, [1, 2, 1])
        XCTAssertEqual((0..<3).map { s.train.target($0, in: d) }, [2, 3, 2])
        XCTAssertEqual(Array(s.train.input(1, in: d, maxLength: 50)), [1, 2])
        XCTAssertEqual(Array(s.train.input(1, in: d, maxLength: 1)), [2])
        XCTAssertEqual(s.validation.users, [0, 1])
        XCTAssertEqual(Array(s.validation.input(0, in: d, maxLength: 50)), [1, 2, 3])
        XCTAssertEqual(s.validation.target(0, in: d), 4)
        XCTAssertEqual(Array(s.validation.input(1, in: d, maxLength: 50)), [6])
        XCTAssertEqual(s.validation.target(1, in: d), 7)
        XCTAssertEqual(Array(s.test.input(0, in: d, maxLength: 50)), [1, 2, 3, 4])
        XCTAssertEqual(s.test.target(0, in: d), 5)
        XCTAssertEqual(Array(s.test.input(0, in: d, maxLength: 2)), [3, 4])
        XCTAssertEqual(s.test.target(1, in: d), 8)
    }

    func testUserSplitProportionsHistoryAndGroundTruth() {
        var rng = SplitMix64(seed: 3)
        let seqs: [[Int32]] = (0..<100).map { _ in (0..<(5 + rng.bounded(20))).map { _ in Int32(1 + rng.bounded(30)) } }
        let d = SequenceDataset(sequences: seqs, itemCount: 30)
        let s = UserSplit(d, seed: 11)
        XCTAssertEqual(s.trainUsers.count, 80)
        XCTAssertEqual(s.validationUsers.count, 10)
        XCTAssertEqual(s.testUsers.count, 10)
        XCTAssertEqual(Set(s.trainUsers + s.validationUsers + s.testUsers).count, 100)
        XCTAssertEqual(UserSplit(d, seed: 11).testUsers, s.testUsers)
        XCTAssertNotEqual(UserSplit(d, seed: 12).testUsers, s.testUsers)
        // Training instances: positions 4...n-1 of each training user.
        let expected = s.trainUsers.reduce(0) { $0 + d.length(Int($1)) - 4 }
        XCTAssertEqual(s.train.count, expected)
        XCTAssertEqual(Set(s.train.users), Set(s.trainUsers))
        XCTAssertEqual(s.train.positions.min(), 4)
        // Held out: history = first floor(0.8 n), truth = the set of the rest.
        XCTAssertEqual(s.test.users, s.testUsers)
        let sets = s.test.futureSets(in: d)
        for k in 0..<s.test.count {
            let u = Int(s.test.users[k]), n = d.length(u), seq = Array(d.sequence(u))
            XCTAssertEqual(Int(s.test.positions[k]), n * 4 / 5)
            XCTAssertEqual(Array(s.test.input(k, in: d, maxLength: 1000)), Array(seq[0 ..< n * 4 / 5]))
            var seen = Set<Int32>(), truth: [Int32] = []
            for i in seq[(n * 4 / 5)...] where seen.insert(i).inserted { truth.append(i) }
            XCTAssertEqual(Array(sets.items[sets.offsets[k] ..< sets.offsets[k + 1]]), truth)
        }
    }

    func testHandMadeUserSplitOfFiveItems() {
        // n = 5: history 4 items, truth 1 item; as a training user: one instance at t = 4.
        let d = SequenceDataset(sequences: Array(repeating: [1, 2, 3, 4, 4], count: 10), itemCount: 4)
        let s = UserSplit(d, seed: 1)
        XCTAssertEqual(s.train.count, 8)
        XCTAssertEqual(Array(s.train.future(0, in: d)), [4])
        XCTAssertEqual(Array(s.validation.input(0, in: d, maxLength: 50)), [1, 2, 3, 4])
        let sets = s.validation.futureSets(in: d)
        XCTAssertEqual(sets.offsets, [0, 1])
        XCTAssertEqual(sets.items, [4])
    }
}

/// Buffers owned by a class (tests must not capture arrays mutated through pointers).
private final class BatchBuffers {
    let B: Int, L: Int
    let items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>
    let targets: UnsafeMutablePointer<Int32>, instances: UnsafeMutablePointer<Int32>
    init(B: Int, L: Int) {
        self.B = B; self.L = L
        items = .allocate(capacity: B * L); lengths = .allocate(capacity: B)
        targets = .allocate(capacity: B); instances = .allocate(capacity: B)
        items.initialize(repeating: -7, count: B * L)
    }
    deinit { items.deallocate(); lengths.deallocate(); targets.deallocate(); instances.deallocate() }
    func row(_ b: Int) -> [Int32] { Array(UnsafeBufferPointer(start: items + b * L, count: L)) }
}

final class BatcherTests: XCTestCase {
    private func epochs(seed: UInt64, count: Int, data d: SequenceDataset, set: InstanceSet) -> [[Int32]] {
        var batcher = Batcher(data: d, instances: set, maxLength: 4, batchSize: 7, seed: seed)
        let buf = BatchBuffers(B: 7, L: 4)
        var result: [[Int32]] = []
        for _ in 0..<count {
            batcher.shuffle()
            var seen: [Int32] = []
            for b in 0..<batcher.batchCount {
                let n = batcher.fill(batch: b, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.instances)
                for r in 0..<n {
                    let k = Int(buf.instances[r])
                    XCTAssertEqual(buf.targets[r], set.target(k, in: d))
                    let input = Array(set.input(k, in: d, maxLength: 4))
                    XCTAssertEqual(Int(buf.lengths[r]), input.count)
                    XCTAssertEqual(buf.row(r), input + Array(repeating: 0, count: 4 - input.count))
                    seen.append(Int32(k))
                }
            }
            result.append(seen)
        }
        return result
    }

    func testSeededEpochsAreReproducibleAndCoverEveryInstanceOnce() {
        var rng = SplitMix64(seed: 5)
        let seqs: [[Int32]] = (0..<13).map { _ in (0..<(3 + rng.bounded(9))).map { _ in Int32(1 + rng.bounded(20)) } }
        let d = SequenceDataset(sequences: seqs, itemCount: 20)
        let set = LeaveOneOut(d).train
        let a = epochs(seed: 9, count: 3, data: d, set: set)
        let b = epochs(seed: 9, count: 3, data: d, set: set)
        let c = epochs(seed: 10, count: 3, data: d, set: set)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
        XCTAssertNotEqual(a[0], a[1], "each epoch draws a new order")
        for e in a { XCTAssertEqual(e.sorted(), (0..<Int32(set.count)).map { $0 }) }
        XCTAssertGreaterThan(set.count % 7, 0, "the case should include a partial last batch")
    }

    func testLeftAndRightPaddingAndTruncation() {
        let d = SequenceDataset(sequences: [[1, 2, 3, 4, 5, 6, 7]], itemCount: 7)
        let set = InstanceSet(users: [0, 0, 0], positions: [1, 3, 6])
        let buf = BatchBuffers(B: 3, L: 4)
        let right = Batcher(data: d, instances: set, maxLength: 4, batchSize: 3)
        XCTAssertEqual(right.fill(batch: 0, items: buf.items, lengths: buf.lengths, targets: buf.targets), 3)
        XCTAssertEqual(buf.row(0), [1, 0, 0, 0])
        XCTAssertEqual(buf.row(1), [1, 2, 3, 0])
        XCTAssertEqual(buf.row(2), [3, 4, 5, 6])
        XCTAssertEqual(Array(UnsafeBufferPointer(start: buf.lengths, count: 3)), [1, 3, 4])
        XCTAssertEqual(Array(UnsafeBufferPointer(start: buf.targets, count: 3)), [2, 4, 7])
        let left = Batcher(data: d, instances: set, maxLength: 4, batchSize: 3, padding: .left)
        left.fill(batch: 0, items: buf.items, lengths: buf.lengths, targets: buf.targets)
        XCTAssertEqual(buf.row(0), [0, 0, 0, 1])
        XCTAssertEqual(buf.row(1), [0, 1, 2, 3])
        XCTAssertEqual(buf.row(2), [3, 4, 5, 6])
    }

    func testShuffleIsUnbiasedEnough() {
        // Each of 4 elements lands in each slot about 1/4 of the time over many shuffles.
        var rng = SplitMix64(seed: 1)
        var counts = [[Int]](repeating: [0, 0, 0, 0], count: 4)
        for _ in 0..<8000 {
            var a = [0, 1, 2, 3]
            rng.shuffle(&a)
            for (slot, v) in a.enumerated() { counts[v][slot] += 1 }
        }
        for row in counts { for c in row { XCTAssertEqual(Double(c), 2000, accuracy: 200) } }
    }
}

final class LocationTests: XCTestCase {
    func testNamedDatasetsResolveUnderTheDataDirectoryAndMissingOnesSayHowToFetch() throws {
        let dir = NSTemporaryDirectory() + "winnow-data-\(getpid())"
        setenv("WINNOW_DATA_DIR", dir, 1)
        defer { unsetenv("WINNOW_DATA_DIR"); try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertEqual(DatasetLocation.cachedPath(of: "ml-100k"), dir + "/ml-100k/ml-100k.inter")
        XCTAssertThrowsError(try DatasetLocation.resolve("ml-100k")) { e in
            XCTAssertTrue("\(e)".contains("scripts/fetch-ml100k"), "\(e)")
        }
        try FileManager.default.createDirectory(atPath: dir + "/toy", withIntermediateDirectories: true)
        var text = "user_id:token\titem_id:token\ttimestamp:float\n"
        for u in 0..<3 { for i in 0..<3 { text += "u\(u)\ti\(i)\t\(i)\n" } }
        try text.write(toFile: dir + "/toy/toy.inter", atomically: true, encoding: .utf8)
        let d = try SequenceDataset.load("toy", userK: 3, itemK: 3)
        XCTAssertEqual(d.userCount, 3)
        XCTAssertEqual(Array(d.sequence(2)), [1, 2, 3])
        XCTAssertEqual(try SequenceDataset.load(dir + "/toy/toy.inter", userK: 4, itemK: 1).userCount, 0)
        XCTAssertThrowsError(try SequenceDataset.load(dir + "/nope.inter"))
    }
}
