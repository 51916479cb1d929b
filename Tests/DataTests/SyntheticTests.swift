import Foundation
import XCTest
@testable import Data

final class SyntheticTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("winnow-synthetic-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private let small = SyntheticSpec(users: 300, items: 800, interactions: 6000, noiseRate: 0.2, seed: 7,
                                      topics: 20)

    func testSameSeedWritesIdenticalBytes() throws {
        _ = try Synthetic.write(small, interPath: path("a.inter"), noisePath: path("a.noise"))
        _ = try Synthetic.write(small, interPath: path("b.inter"), noisePath: path("b.noise"))
        var other = small
        other.seed = 8
        _ = try Synthetic.write(other, interPath: path("c.inter"), noisePath: path("c.noise"))
        let a = try Data(contentsOf: URL(fileURLWithPath: path("a.inter")))
        XCTAssertEqual(a, try Data(contentsOf: URL(fileURLWithPath: path("b.inter"))))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path("a.noise"))),
                       try Data(contentsOf: URL(fileURLWithPath: path("b.noise"))))
        XCTAssertNotEqual(a, try Data(contentsOf: URL(fileURLWithPath: path("c.inter"))))
        XCTAssertGreaterThan(a.count, 6000 * 10)
    }

    func testFilesHoldExactlyTheGeneratedInteractions() throws {
        let summary = try Synthetic.write(small, interPath: path("s.inter"), noisePath: path("s.noise"))
        let data = try Synthetic.generate(small)
        let inter = try String(contentsOfFile: path("s.inter"), encoding: .utf8).split(separator: "\n")
        let noise = try String(contentsOfFile: path("s.noise"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(String(inter[0]), "user_id:token\titem_id:token\ttimestamp:float")
        XCTAssertEqual(String(noise[0]), "user_id:token\tposition:float\titem_id:token\ttimestamp:float\tis_noise:float")
        XCTAssertEqual(inter.count - 1, small.interactions)
        XCTAssertEqual(noise.count - 1, small.interactions)
        XCTAssertEqual(summary.interactions, small.interactions)
        XCTAssertEqual(summary.noisy, data.isNoise.filter { $0 }.count)
        var line = 1
        for u in 0 ..< small.users {
            for (p, i) in (data.userOffsets[u] ..< data.userOffsets[u + 1]).enumerated() {
                let row = inter[line].split(separator: "\t").map { Int64($0)! }
                XCTAssertEqual(row, [Int64(u + 1), Int64(data.items[i]), data.timestamps[i]], "inter line \(line + 1)")
                let flags = noise[line].split(separator: "\t").map { Int64($0)! }
                XCTAssertEqual(flags, [Int64(u + 1), Int64(p), Int64(data.items[i]), data.timestamps[i],
                                       data.isNoise[i] ? 1 : 0], "noise line \(line + 1)")
                line += 1
            }
        }
        XCTAssertEqual(line, inter.count)
    }

    func testLengthsSumExactlyAndTimestampsIncreasePerUser() throws {
        let data = try Synthetic.generate(small)
        XCTAssertEqual(data.items.count, small.interactions)
        XCTAssertEqual(data.userOffsets.count, small.users + 1)
        XCTAssertEqual(data.userOffsets.last, small.interactions)
        var lengths = Set<Int>()
        for u in 0 ..< small.users {
            let range = data.userOffsets[u] ..< data.userOffsets[u + 1]
            XCTAssertGreaterThanOrEqual(range.count, 5, "user \(u) shorter than minLength")
            lengths.insert(range.count)
            for i in range.dropFirst() { XCTAssertGreaterThan(data.timestamps[i], data.timestamps[i - 1]) }
        }
        XCTAssertGreaterThan(lengths.count, 10, "lengths should vary between users")
        XCTAssertTrue(data.items.allSatisfy { $0 >= 1 && $0 <= 800 })
        // As many interactions as users: one each.
        let one = try Synthetic.generate(SyntheticSpec(users: 50, items: 10, interactions: 50, noiseRate: 0, seed: 1, topics: 5))
        XCTAssertEqual(one.userOffsets, Array(0 ... 50))
    }

    func testNoiseRateAndFlags() throws {
        var spec = SyntheticSpec(users: 2000, items: 1000, interactions: 60000, noiseRate: 0.2, seed: 3, topics: 50)
        let data = try Synthetic.generate(spec)
        let rate = Double(data.isNoise.filter { $0 }.count) / Double(data.items.count)
        XCTAssertEqual(rate, 0.2, accuracy: 0.01)
        spec.noiseRate = 0
        XCTAssertFalse(try Synthetic.generate(spec).isNoise.contains(true))
        spec.noiseRate = 1
        XCTAssertFalse(try Synthetic.generate(spec).isNoise.contains(false))
    }

    func testCleanItemsComeFromTheUsersIntentions() throws {
        var spec = SyntheticSpec(users: 500, items: 2000, interactions: 15000, noiseRate: 0.3, seed: 11,
                                 topics: 40, intentionsPerUser: 3, driftRate: 0.3)
        let data = try Synthetic.generate(spec)
        var mixes = Set<Int>()
        var noisyOutsideIntentions = 0
        for u in 0 ..< spec.users {
            var clean = Set<Int32>()
            for i in data.userOffsets[u] ..< data.userOffsets[u + 1] where !data.isNoise[i] {
                clean.insert(data.itemTopic[Int(data.items[i])])
            }
            XCTAssertLessThanOrEqual(clean.count, 3, "user \(u) mixes more topics than its intentions")
            mixes.insert(clean.count)
            for i in data.userOffsets[u] ..< data.userOffsets[u + 1] where data.isNoise[i] {
                if !clean.contains(data.itemTopic[Int(data.items[i])]) { noisyOutsideIntentions += 1 }
            }
        }
        // Zero only when every interaction of a short sequence was replaced by noise.
        XCTAssertTrue(mixes.isSuperset(of: [1, 2, 3]) && mixes.isSubset(of: [0, 1, 2, 3]), "\(mixes)")
        XCTAssertGreaterThan(noisyOutsideIntentions, 0)
        // Without drift a user stays in its first intention.
        spec.driftRate = 0
        spec.noiseRate = 0
        let still = try Synthetic.generate(spec)
        for u in 0 ..< spec.users {
            let topics = Set(still.sequence(ofUser: u).map { still.itemTopic[Int($0)] })
            XCTAssertEqual(topics.count, 1, "user \(u)")
        }
    }

    func testItemPopularityFollowsZipf() throws {
        for exponent in [0.8, 1.2] {
            let spec = SyntheticSpec(users: 4000, items: 2000, interactions: 200_000, noiseRate: 0, seed: 5,
                                     zipfExponent: exponent, topics: 10)
            let data = try Synthetic.generate(spec)
            var counts = [Int](repeating: 0, count: spec.items + 1)
            for v in data.items { counts[Int(v)] += 1 }
            let sorted = counts.dropFirst().sorted(by: >)
            // Least-squares slope of log(count) on log(rank) over ranks 1...50.
            let xs = (1 ... 50).map { log(Double($0)) }
            let ys = (0 ..< 50).map { log(Double(sorted[$0])) }
            let mx: Double = xs.reduce(0, +) / 50
            let my: Double = ys.reduce(0, +) / 50
            var sxy = 0.0, sxx = 0.0
            for (x, y) in zip(xs, ys) {
                sxy += (x - mx) * (y - my)
                sxx += (x - mx) * (x - mx)
            }
            let slope = sxy / sxx
            XCTAssertEqual(-slope, exponent, accuracy: 0.15, "exponent \(exponent)")
        }
    }

    func testBadSpecIsAnErrorNamingTheField() {
        let cases: [(SyntheticSpec, String)] = [
            (SyntheticSpec(users: 0, items: 10, interactions: 10, noiseRate: 0, seed: 1), "users"),
            (SyntheticSpec(users: 10, items: 0, interactions: 10, noiseRate: 0, seed: 1), "items"),
            (SyntheticSpec(users: 10, items: 10, interactions: 9, noiseRate: 0, seed: 1, topics: 2), "interactions"),
            (SyntheticSpec(users: 10, items: 10, interactions: 10, noiseRate: 1.5, seed: 1, topics: 2), "noiseRate"),
            (SyntheticSpec(users: 10, items: 10, interactions: 10, noiseRate: 0, seed: 1, zipfExponent: -1, topics: 2), "zipfExponent"),
            (SyntheticSpec(users: 10, items: 10, interactions: 10, noiseRate: 0, seed: 1, topics: 11), "topics"),
            (SyntheticSpec(users: 10, items: 10, interactions: 10, noiseRate: 0, seed: 1, topics: 2, intentionsPerUser: 3), "intentionsPerUser"),
            (SyntheticSpec(users: 10, items: 10, interactions: 10, noiseRate: 0, seed: 1, topics: 2, intentionsPerUser: 1, driftRate: -0.1), "driftRate"),
        ]
        for (spec, field) in cases {
            XCTAssertThrowsError(try Synthetic.generate(spec), field) { error in
                guard case .invalid(let got, _, _)? = error as? SyntheticError else { return XCTFail("\(error)") }
                XCTAssertEqual(got, field)
                XCTAssertTrue("\(error)".contains(field))
            }
        }
        XCTAssertThrowsError(try Synthetic.write(small, interPath: "/nonexistent-dir/x.inter", noisePath: path("x.noise"))) { error in
            guard case .write(let p, _)? = error as? SyntheticError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, "/nonexistent-dir/x.inter")
        }
    }

    func testNoisePathSitsBesideTheInterFile() {
        XCTAssertEqual(Synthetic.noisePath(forInter: "/d/synth.inter"), "/d/synth.noise")
        XCTAssertEqual(Synthetic.noisePath(forInter: "/d/synth.tsv"), "/d/synth.tsv.noise")
    }
}
