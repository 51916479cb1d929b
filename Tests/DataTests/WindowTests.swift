import XCTest
@testable import Data

/// Windows cover every training target exactly once, each with up to L items before it as context
/// (the newest window of a run always with all it can have), and mark context-only positions.
final class WindowTests: XCTestCase {
    func dataset() -> SequenceDataset {
        var seqs: [[Int32]] = []
        for (u, n) in [3, 4, 7, 12, 13, 25, 2, 40].enumerated() {
            seqs.append((0..<n).map { Int32(1 + (($0 * 7 + u * 3) % 30)) })
        }
        return SequenceDataset(sequences: seqs, itemCount: 30)
    }

    func check(_ instances: InstanceSet, _ d: SequenceDataset, L: Int, file: StaticString = #filePath, line: UInt = #line) {
        var b = Batcher(data: d, windowsOf: instances, maxLength: L, batchSize: 3, seed: 1)
        b.shuffle()
        var items = [Int32](repeating: -9, count: 3 * L), lengths = [Int32](repeating: 0, count: 3)
        var targets = [Int32](repeating: -9, count: 3 * L), ids = [Int32](repeating: -9, count: 3 * L)
        var seen = [Int](repeating: 0, count: instances.count)
        for i in 0..<b.batchCount {
            let n = b.fillWindows(batch: i, items: &items, lengths: &lengths, targets: &targets, instances: &ids)
            for r in 0..<n {
                let len = Int(lengths[r])
                XCTAssertTrue(len >= 1 && len <= L, file: file, line: line)
                for p in 0..<L {
                    let k = Int(ids[r * L + p])
                    if p >= len { XCTAssertEqual(items[r * L + p], 0, file: file, line: line) }
                    guard k >= 0 else { XCTAssertEqual(targets[r * L + p], 0, file: file, line: line); continue }
                    seen[k] += 1
                    // position p predicts instance k's target from the items right before it
                    XCTAssertEqual(targets[r * L + p], instances.target(k, in: d), file: file, line: line)
                    let context = Array(instances.input(k, in: d, maxLength: L))
                    let window = Array(items[(r * L)..<(r * L + p + 1)])
                    XCTAssertEqual(window, Array(context.suffix(window.count)), "context of instance \(k)", file: file, line: line)
                    if p == len - 1 { XCTAssertEqual(window, context, "a window's last target has the prefix's context", file: file, line: line) }
                }
            }
        }
        XCTAssertEqual(seen, [Int](repeating: 1, count: instances.count), "every target once", file: file, line: line)
    }

    func testWindowsCoverEveryLeaveOneOutTargetOnceWithItsContext() {
        let d = dataset()
        for L in [1, 3, 5, 50] { check(LeaveOneOut(d).train, d, L: L) }
        // 40 items: 38 for training, 37 targets in windows of 5 → 8, the oldest holding 2
        let w = WindowSet(LeaveOneOut(d).train, maxLength: 5)
        XCTAssertEqual(w.targetCount, LeaveOneOut(d).train.count)
        let last = (0..<w.count).filter { w.users[$0] == 7 }
        XCTAssertEqual(last.count, 8)
        XCTAssertEqual(last.map { w.lastTargets[$0] - w.firstTargets[$0] + 1 }, [2, 5, 5, 5, 5, 5, 5, 5])
    }

    func testWindowsOfAProtocolWithAMinimumHistoryMarkContextOnlyPositions() {
        let d = dataset()
        let split = UserSplit(d, seed: 3, minHistory: 4)
        for L in [2, 6, 50] { check(split.train, d, L: L) }
        // an instance set in no particular order: every target is a window of its own
        let shuffled = LeaveOneOut(d).train.subset([5, 1, 9, 3])
        XCTAssertEqual(WindowSet(shuffled, maxLength: 10).count, 4)
        check(shuffled, d, L: 10)
    }
}
