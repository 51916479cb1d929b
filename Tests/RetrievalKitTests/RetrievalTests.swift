import Foundation
import Numerics
import Models
import Data
import Evaluation
import Training
import Methods
import RPC
import Store
import StoreTestSupport
import TrainerKit
@testable import RetrievalKit
import WinnowProto
import XCTest

/// Retrieval against a real feature store (embedded Postgres) and a student the trainer
/// published: its top-k is the in-process ranking of the same model and history, bad requests
/// get their status, the queue bound sheds, and a reload under load fails no request.
final class RetrievalTests: XCTestCase {
    var store: FeatureStore!
    var datasetID = ""
    var directory = ""
    var data: SequenceDataset!

    override func setUp() async throws {
        store = try FeatureStore(url: try TestDatabase.fresh("retrieval"), poolSize: 4)
        var text = "user_id:token\titem_id:token\ttimestamp:float\n"
        for u in 0..<50 {
            var x = (u * 5) % 25
            for t in 0..<10 { text += "\(u + 1)\t\(501 + x)\t\(100 * u + t)\n"; x = (x + 1 + u % 3) % 25 }
        }
        _ = try await FileIngest(path: try writeFile(text, name: "retrieval-cycles.inter"), format: .recboleInter).run(on: store)
        datasetID = try store.buildDataset(interSpec(k: 0)).dataset.datasetID
        data = try await SnapshotCache().snapshot(datasetID, from: store).sequenceDataset
        directory = NSTemporaryDirectory() + "winnow-retrieval-\(UUID().uuidString)"
        Threads.set(1)
    }

    override func tearDown() async throws { try? FileManager.default.removeItem(atPath: directory) }

    /// Trains and publishes a student through the trainer's jobs; returns its registry version.
    func publish(seed: UInt64, promote: Bool = true) async throws -> UInt64 {
        let jobs = try TrainerJobs(directory: directory, store: store)
        jobs.start()
        defer { jobs.stop() }
        var r = Winnow_V1_SubmitJobRequest()
        r.spec.datasetID = datasetID; r.spec.publish = promote
        r.spec.configYaml = #"{"backbone": "sasrec", "dim": 8, "blocks": 1, "loop": {"max_epochs": 3, "max_length": 8, "batch_size": 16, "seed": \#(seed)}}"#
        let id = try await jobs.submit(r).jobID
        XCTAssertEqual(jobs.wait(id, timeout: 120), .succeeded)
        return try jobs.progress(id).modelVersion
    }

    func request(items: [Int32] = [], user: String = "", k: Int32 = 5, excludeHistory: Bool = false) -> Winnow_V1_RecommendRequest {
        var r = Winnow_V1_RecommendRequest()
        r.recentItems = items; r.user = user; r.k = k; r.excludeHistory = excludeHistory
        return r
    }

    func testRecommendRanksAsTheEvaluatorDoesForTheSameModelAndHistory() async throws {
        let version = try await publish(seed: 2)
        let server = RetrievalServer(store: store)
        defer { server.stop() }
        let followed = try await server.follow(studentModelName)
        XCTAssertTrue(followed)
        let served = try XCTUnwrap(server.current)
        XCTAssertEqual(served.version, version)
        let model = served.backbone
        // user 7's history as the store keeps it, and the same history as external item ids
        let u = 6, seq = Array(data.sequence(u))
        let byUser = try await server.recommend(request(user: "7", k: 10))
        let byItems = try await server.recommend(request(items: seq.map { Int32(served.external($0)) }, k: 10))
        XCTAssertEqual(byUser.items, byItems.items)
        XCTAssertEqual(byUser.modelVersion, version)
        // the in-process scores of the same model: user vector · item table, best 10
        let T = model.maxLength, tail = Array(seq.suffix(T))
        var items = tail + [Int32](repeating: 0, count: T - tail.count), lengths = [Int32(tail.count)]
        let user = items.withUnsafeMutableBufferPointer { i in lengths.withUnsafeMutableBufferPointer { l in
            model.forward(items: i.baseAddress!, lengths: l.baseAddress!, B: 1, training: false) } }
        let C = model.dim, table = model.scoringTable
        var scored: [(item: Int32, score: Float)] = []
        for j in 1...model.itemCount {
            var s: Float = 0
            for c in 0..<C { s += user[c] * table[(j - 1) * C + c] }
            scored.append((Int32(j), s))
        }
        scored.sort { a, b in a.score > b.score || (a.score == b.score && a.item < b.item) }
        let best = Array(scored.prefix(10))
        XCTAssertEqual(byUser.items, best.map { Int32(served.external($0.item)) })
        for (a, b) in zip(byUser.scores, best.map { $0.score }) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        // exclusions: history excluded, and named items
        let excluded = try await server.recommend(request(user: "7", k: 10, excludeHistory: true))
        let history = Set(seq.map { Int32(served.external($0)) })
        XCTAssertTrue(excluded.items.allSatisfy { !history.contains($0) })
        var named = request(user: "7", k: 10); named.excludeItems = Array(byUser.items.prefix(3))
        let rest = try await server.recommend(named)
        XCTAssertEqual(Array(rest.items.prefix(7)), Array(byUser.items.dropFirst(3)))
    }

    func testBadRequestsGetAClearStatus() async throws {
        let server = RetrievalServer(store: store)
        defer { server.stop() }
        func code(_ r: Winnow_V1_RecommendRequest) async -> (Winnow_V1_StatusCode?, String) {
            do { _ = try await server.recommend(r); return (nil, "") } catch { return ((error as? RPCError)?.code, "\(error)") }
        }
        let none = await code(request(items: [501]))
        XCTAssertEqual(none.0, .failedPrecondition, none.1)
        XCTAssertTrue(none.1.contains("no model loaded"))
        _ = try await publish(seed: 3)
        let followed = try await server.follow(studentModelName)
        XCTAssertTrue(followed)
        let N = server.current!.itemCount
        let cases: [(Winnow_V1_RecommendRequest, Winnow_V1_StatusCode, String)] = [
            (request(items: [501], k: 0), .invalidArgument, "k must be"),
            (request(items: [501], k: Int32(N + 1)), .invalidArgument, "k must be"),
            (request(items: [501, 99999, 0]), .invalidArgument, "99999, 0 not in the catalogue"),
            (request(), .invalidArgument, "empty history"),
            (request(items: [501], user: "7"), .invalidArgument, "not both"),
            (request(user: "123456"), .notFound, "no history"),
            (request(user: "seven"), .invalidArgument, "user"),
            (request(items: [501], k: Int32(N), excludeHistory: true), .invalidArgument, "left after the exclusions"),
        ]
        for (r, expected, text) in cases {
            let (c, message) = await code(r)
            XCTAssertEqual(c, expected, message)
            XCTAssertTrue(message.contains(text), "\(text) in \(message)")
        }
        // a request past its deadline is not ranked
        do {
            _ = try await server.recommend(request(items: [501]), deadlineMicros: WallClock.nowMicros() - 1)
            XCTFail("ranked past its deadline")
        } catch let e as RPCError { XCTAssertEqual(e.code, .deadlineExceeded) }
    }

    func testTheQueueBoundShedsAndAReloadUnderLoadFailsNoRequest() async throws {
        let first = try await publish(seed: 4)
        let second = try await publish(seed: 5, promote: false)
        var config = RetrievalConfig(); config.queueCapacity = 8; config.maxBatch = 4; config.batchWindowMicros = 2000
        let server = RetrievalServer(config: config, store: store)
        defer { server.stop() }
        try await server.load(name: studentModelName, version: first)
        // a burst beyond the bound: some are shed at once, the rest answered
        let outcomes = await withTaskGroup(of: Winnow_V1_StatusCode?.self) { group -> [Winnow_V1_StatusCode?] in
            for _ in 0..<64 {
                group.addTask { do { _ = try await server.recommend(self.request(items: [501, 502])); return nil }
                                catch { return (error as? RPCError)?.code ?? .unknown } }
            }
            var all: [Winnow_V1_StatusCode?] = []
            for await o in group { all.append(o) }
            return all
        }
        XCTAssertGreaterThan(outcomes.filter { $0 == .resourceExhausted }.count, 0, "\(outcomes)")
        XCTAssertTrue(outcomes.allSatisfy { $0 == nil || $0 == .resourceExhausted }, "\(outcomes)")
        XCTAssertEqual(server.stats().shed, UInt64(outcomes.filter { $0 == .resourceExhausted }.count))
        // steady load while the model is swapped back and forth: every request answered
        var relaxed = RetrievalConfig(); relaxed.maxBatch = 4
        let steady = RetrievalServer(config: relaxed, store: store)
        defer { steady.stop() }
        try await steady.load(name: studentModelName, version: first)
        let versions = await withTaskGroup(of: UInt64?.self) { group -> [UInt64?] in
            for i in 0..<200 {
                group.addTask {
                    if i % 40 == 20 { _ = try? await steady.load(name: studentModelName, version: i % 80 == 20 ? second : first) }
                    return try? await steady.recommend(self.request(items: [501, 502, 503])).modelVersion
                }
            }
            var all: [UInt64?] = []
            for await v in group { all.append(v) }
            return all
        }
        XCTAssertTrue(versions.allSatisfy { $0 != nil }, "no request failed during reloads")
        XCTAssertEqual(Set(versions.compactMap { $0 }).isSubset(of: [first, second]), true)
    }
}
