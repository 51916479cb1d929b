import Numerics
import XCTest

final class RNGTests: XCTestCase {
    /// `below(n)` must cover 0..<n evenly: a wrong shift once made it return 0 for every n,
    /// which silently froze shuffles and made uniform negative sampling draw item 1 only.
    func testBelowCoversTheWholeRangeEvenly() {
        var rng = RNG(seed: 7)
        for n in [2, 3, 10, 1683] {
            var counts = [Int](repeating: 0, count: n)
            let draws = n * 200
            for _ in 0 ..< draws {
                let x = rng.below(n)
                XCTAssertTrue((0 ..< n).contains(x), "below(\(n)) gave \(x)")
                counts[x] += 1
            }
            XCTAssertEqual(counts.filter { $0 == 0 }.count, 0, "below(\(n)) never drew some values")
            // Each bucket expects 200 draws; 5 standard deviations (~70) either side is a generous band.
            XCTAssertLessThan(counts.max()!, 200 + 75, "below(\(n)) is uneven")
            XCTAssertGreaterThan(counts.min()!, 200 - 75, "below(\(n)) is uneven")
        }
    }

    func testShuffleIsAPermutationThatMovesItemsAndDependsOnTheSeed() {
        func shuffled(seed: UInt64) -> [Int] {
            var values = Array(0 ..< 100)
            var rng = RNG(seed: seed)
            values.withUnsafeMutableBufferPointer { rng.shuffle($0) }
            return values
        }
        let a = shuffled(seed: 1)
        XCTAssertEqual(a.sorted(), Array(0 ..< 100))
        XCTAssertLessThan(zip(a, 0 ..< 100).filter { $0 == $1 }.count, 10, "shuffle left most items in place")
        XCTAssertEqual(a, shuffled(seed: 1))
        XCTAssertNotEqual(a, shuffled(seed: 2))
    }
}
