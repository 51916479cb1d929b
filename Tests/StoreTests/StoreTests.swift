import Data
import Foundation
import Postgres
@testable import Store
import StoreTestSupport
import WinnowProto
import XCTest

final class SHA256Tests: XCTestCase {
    func testKnownVectorsAndPostgresAgree() throws {
        XCTAssertEqual(SHA256.hex(SHA256.hash(Array("".utf8))), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(SHA256.hash(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // Streaming in odd pieces equals one shot, and equals Postgres' sha256().
        var bytes = [UInt8](repeating: 0, count: 100_003)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 7) }
        var s = SHA256()
        var i = 0
        for piece in [1, 63, 64, 65, 1000, 7] { s.update(bytes[i..<min(i + piece, bytes.count)]); i += piece }
        s.update(bytes[i...])
        let streamed = s.finalizeHex()
        XCTAssertEqual(streamed, SHA256.hex(SHA256.hash(bytes)))
        let c = try Connection(url: try TestDatabase.fresh("sha"))
        defer { c.close() }
        XCTAssertEqual(try c.query("SELECT encode(sha256($1), 'hex')", [bytes]).string(0, 0), streamed)
    }
}

final class StoreTests: XCTestCase {
    var url = ""
    var store: FeatureStore!

    override func setUpWithError() throws {
        url = try TestDatabase.fresh(name.split(separator: " ").last.map { String($0.filter(\.isLetter).prefix(20)) } ?? "t")
        store = try FeatureStore(url: url, poolSize: 4)
    }

    override func tearDown() { store?.close() }

    // MARK: schema

    func testMigrationsAreIdempotentAndANewerSchemaIsRefused() throws {
        let before = try dumpTables(url)
        let again = try FeatureStore(url: url)
        again.close()
        XCTAssertEqual(try dumpTables(url).keys.sorted(), before.keys.sorted())
        let c = try Connection(url: url)
        defer { c.close() }
        XCTAssertEqual(try c.query("SELECT max(version) FROM winnow_schema_migrations").int(0, 0), Schema.latestVersion)
        try c.exec("INSERT INTO winnow_schema_migrations (version, name) VALUES (\(Schema.latestVersion + 1), 'from the future')")
        XCTAssertThrowsError(try FeatureStore(url: url)) { error in
            XCTAssertEqual(error as? StoreError, .schemaTooNew(database: Schema.latestVersion + 1, binary: Schema.latestVersion))
            XCTAssertTrue("\(error)".contains("newer than this binary"), "\(error)")
        }
    }

    // MARK: ingest

    func testML100KIngestKeepsEveryRowOfTheFile() async throws {
        let path = try ml100kPath()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let fileRows = text.split(separator: "\n").count - 1
        let result = try await FileIngest(path: path, format: .recboleInter, batchBytes: 256 << 10).run(on: store)
        XCTAssertEqual(Int(result.rows), fileRows)
        XCTAssertEqual(result.users, 943)
        XCTAssertEqual(result.items, 1682)
        let c = try Connection(url: url)
        defer { c.close() }
        XCTAssertEqual(try c.query("SELECT count(*), count(DISTINCT line) FROM interactions").int(0, 0), fileRows)
        XCTAssertEqual(try c.query("SELECT count(DISTINCT line) FROM interactions").int(0, 0), fileRows)
        // The same file again is a no-op.
        let again = try await FileIngest(path: path, format: .recboleInter).run(on: store)
        XCTAssertTrue(again.alreadyCommitted)
        XCTAssertEqual(try c.query("SELECT count(*) FROM interactions").int(0, 0), fileRows)
    }

    func testKCoreDatasetEqualsAnIndependentComputation() async throws {
        let path = try ml100kPath()
        try await FileIngest(path: path, format: .recboleInter, batchBytes: 512 << 10).run(on: store)
        // Independent: rounds of degree counting until nothing changes (not the queue of Data.kCoreRows).
        struct Row { var user: Int64; var item: Int64; var ts: Double; var line: Int }
        var rows: [Row] = []
        for (k, line) in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").dropFirst().enumerated() {
            let f = line.split(separator: "\t")
            rows.append(Row(user: Int64(f[0])!, item: Int64(f[1])!, ts: Double(f[3])!, line: k))
        }
        let k = 10
        while true {
            var ud: [Int64: Int] = [:], id: [Int64: Int] = [:]
            for r in rows { ud[r.user, default: 0] += 1; id[r.item, default: 0] += 1 }
            let kept = rows.filter { ud[$0.user]! >= k && id[$0.item]! >= k }
            if kept.count == rows.count { break }
            rows = kept
        }
        var expected: [Int64: [Int64]] = [:]
        for r in rows.sorted(by: { ($0.ts, $0.line) < ($1.ts, $1.line) }) { expected[r.user, default: []].append(r.item) }

        let built = try store.buildDataset(interSpec(k: Int32(k)))
        XCTAssertEqual(Int(built.dataset.interactions), rows.count)
        XCTAssertEqual(Int(built.dataset.users), expected.count)
        // Read back from the database (not the build's in-memory copy) and compare per user.
        let fresh = try FeatureStore(url: url)
        defer { fresh.close() }
        let d = try fresh.dataset(built.dataset.datasetID)
        var got: [Int64: [Int64]] = [:]
        for u in 0..<d.userCount {
            got[d.userIDs[u]] = d.items[d.offsets[u]..<d.offsets[u + 1]].map { d.itemIDs[Int($0) - 1] }
        }
        XCTAssertEqual(got, expected)
        // Dense ids: items 1...N in order of first appearance along users 0..<U.
        var seen = Set<Int32>(), next: Int32 = 1
        for i in d.items where !seen.contains(i) { XCTAssertEqual(i, next); seen.insert(i); next += 1 }
        // Building the same spec again finds it.
        XCTAssertTrue(try store.buildDataset(interSpec(k: Int32(k))).alreadyExisted)
    }

    func testItemCFNeighboursStoredEqualABruteForceComputation() async throws {
        // CSV with a column mapping; 7 users over 6 items, timestamps give the order.
        var csv = "when,who,what,stars\n"
        let seqs: [[Int]] = [[1, 2, 3, 4, 5], [2, 3, 2, 4, 6, 1], [1, 3, 5, 6], [4, 5, 6, 1, 2], [3, 3, 4, 5], [1, 6, 2, 5, 3, 4, 1], [2, 5]]
        for (u, s) in seqs.enumerated() { for (t, i) in s.enumerated() { csv += "\(1000 + t * 10 + u),\(100 + u),\(i),\"4\"\n" } }
        let path = try writeFile(csv, name: "small.csv")
        var columns = Winnow_V1_ColumnMapping()
        columns.user = "who"; columns.item = "what"; columns.timestamp = "when"; columns.rating = "stars"
        try await FileIngest(path: path, format: .csv, columns: columns).run(on: store)
        let K = 3
        let built = try store.buildDataset(interSpec(k: 0, topK: Int32(K)))

        // Brute force over external ids, training part = all but the last two (leave-one-out).
        let train = seqs.map { $0.count >= 3 ? Array($0.dropLast(2)) : $0 }
        var W = [[Double]](repeating: [Double](repeating: 0, count: 7), count: train.count)
        for (u, s) in train.enumerated() where !s.isEmpty { for i in s { W[u][i] += 1 / log2(1 + Double(s.count)) } }
        func sim(_ a: Int, _ b: Int) -> Double {
            var dot = 0.0, na = 0.0, nb = 0.0
            for u in W.indices { dot += W[u][a] * W[u][b]; na += W[u][a] * W[u][a]; nb += W[u][b] * W[u][b] }
            return na > 0 && nb > 0 ? dot / (na.squareRoot() * nb.squareRoot()) : 0
        }
        let c = try Connection(url: url)
        defer { c.close() }
        let r = try c.query("SELECT item_idx, item_id, neighbours::text, scores::text FROM dataset_items WHERE dataset_id = $1 ORDER BY item_idx",
                            [built.dataset.datasetID])
        var external: [Int: Int] = [:]
        for k in 0..<r.rowCount { external[try r.int(k, 0)!] = try r.int(k, 1)! }
        XCTAssertEqual(r.rowCount, 6)
        for k in 0..<r.rowCount {
            let v = try r.int(k, 1)!
            let nb = r.string(k, 2)!.dropFirst().dropLast().split(separator: ",").map { external[Int($0)!]! }
            let scores = r.string(k, 3)!.dropFirst().dropLast().split(separator: ",").map { Double($0)! }
            var candidates: [(Int, Double)] = []
            for w in 1...6 where w != v {
                let s = sim(v, w)
                if s > 0 { candidates.append((w, s)) }
            }
            candidates.sort { (x: (Int, Double), y: (Int, Double)) -> Bool in x.1 > y.1 || (x.1 == y.1 && x.0 < y.0) }
            let brute = Array(candidates.prefix(K))
            XCTAssertEqual(scores.count, brute.count, "item \(v)")
            for (j, (w, s)) in zip(nb, scores).enumerated() {
                XCTAssertEqual(s, sim(v, w), accuracy: 1e-5, "item \(v) neighbour \(w)")
                XCTAssertEqual(s, brute[j].1, accuracy: 1e-5, "item \(v) rank \(j)")
            }
        }
    }

    func testRatingThresholdTimeCutoffAndQuotedCSVFields() async throws {
        // Quoted CSV fields (a comma inside a quoted column that is not mapped), ratings 1...5.
        var csv = "user,item,\"note, free text\",rating,time\n"
        var expectedKept = 0
        for k in 0..<60 {
            let rating = k % 5 + 1
            if rating >= 4 { expectedKept += 1 }
            csv += "\(k % 6),\(k % 10 + 1),\"a, \"\"quoted\"\" note\",\(rating),\(k)\n"
        }
        // Item 99 only after the cutoff.
        csv += "0,99,late,5,1000\n1,99,late,5,1001\n"
        let path = try writeFile(csv, name: "quoted.csv")
        var columns = Winnow_V1_ColumnMapping()
        columns.user = "user"; columns.item = "item"; columns.timestamp = "time"; columns.rating = "rating"
        let loaded = try await FileIngest(path: path, format: .csv, columns: columns).run(on: store)
        XCTAssertEqual(loaded.rows, 62)

        var filtered = interSpec()
        filtered.spec.ratingThreshold = 4
        XCTAssertEqual(Int(try store.buildDataset(filtered).dataset.interactions), expectedKept + 2)

        var cutoff = interSpec(topK: 5)
        cutoff.spec.split = .timeCutoff
        cutoff.spec.timeCutoff = 500
        let built = try store.buildDataset(cutoff).dataset
        let d = try store.dataset(built.datasetID)
        let late = d.itemIDs.firstIndex(of: 99)! + 1
        XCTAssertTrue(d.neighbours!.neighbours(of: late).items.isEmpty, "an item seen only after the cutoff has no neighbours")
        XCTAssertFalse(d.neighbours!.neighbours(of: 1).items.contains(Int32(late)))
        XCTAssertEqual(d.ratings?.count, d.items.count)
        var missingCutoff = interSpec()
        missingCutoff.spec.split = .timeCutoff
        XCTAssertThrowsError(try store.buildDataset(missingCutoff)) { XCTAssertTrue("\($0)".contains("time_cutoff")) }
    }

    func testEachBadInputClassNamesTheLineAndLeavesTablesUnchanged() async throws {
        let good = try writeFile("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n2\t20\t3\t200\n", name: "good.inter")
        try await FileIngest(path: good, format: .recboleInter).run(on: store)
        let header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        var okLines = ""
        for k in 0..<40 { okLines += "\(k % 7)\t\(k % 11)\t3\t\(1000 + k)\n" } // lines 2...41
        let cases: [(String, [UInt8], String, String)] = [
            ("missing column", Array((header + okLines + "5\t6\t3\n" + okLines).utf8), ":42: column timestamp", "missing"),
            ("non-numeric id", Array((header + okLines + "5\tabc\t3\t77\n").utf8), ":42: column item_id", "not an integer"),
            ("bad timestamp", Array((header + okLines + "5\t6\t3\tyesterday\n").utf8), ":42: column timestamp", "not a number"),
            ("truncated last line", Array((header + okLines + "5\t6\t3\t12").utf8), ":42", "truncated"),
            ("wrong encoding", Array((header + okLines).utf8) + [0x35, 0x09, 0xFF, 0xFE, 0x09, 0x33, 0x09, 0x37, 0x0A], ":42: column item_id", "UTF-8"),
        ]
        let before = try dumpTables(url)
        for (label, contents, location, reason) in cases {
            let path = try writeFile(contents, name: "bad-\(label.replacingOccurrences(of: " ", with: "-")).inter")
            do {
                // Small batches: the bad line comes after batches that were already staged.
                try await FileIngest(path: path, format: .recboleInter, batchBytes: 100).run(on: store, parallel: 1)
                XCTFail("\(label): ingest succeeded")
            } catch let e as StoreError {
                guard case .invalidArgument(let message) = e else { XCTFail("\(label): \(e)"); continue }
                XCTAssertTrue(message.contains(path + location), "\(label): \(message)")
                XCTAssertTrue(message.contains(reason), "\(label): \(message)")
            }
            XCTAssertEqual(try dumpTables(url), before, "\(label): tables changed")
        }
    }

    func testBatchAndLoadIdsAreIdempotent() throws {
        var begin = Winnow_V1_BeginIngestRequest()
        begin.loadID = "L1"; begin.source = "s.tsv"; begin.format = .tsv; begin.header = "u\ti\tt"
        begin.columns.user = "u"; begin.columns.item = "i"; begin.columns.timestamp = "t"
        try store.beginIngest(begin)
        var batch = Winnow_V1_IngestBatchRequest()
        batch.loadID = "L1"; batch.batchID = 7; batch.firstLine = 2; batch.raw = Foundation.Data("1\t2\t3\n4\t5\t6\n".utf8)
        XCTAssertEqual(try store.ingestBatch(batch).rowsAccepted, 2)
        XCTAssertTrue(try store.ingestBatch(batch).duplicate)
        var commit = Winnow_V1_CommitIngestRequest()
        commit.loadID = "L1"
        XCTAssertEqual(try store.commitIngest(commit).rows, 2)
        XCTAssertTrue(try store.commitIngest(commit).alreadyCommitted)
        XCTAssertTrue(try store.beginIngest(begin).alreadyCommitted)
        XCTAssertTrue(try store.ingestBatch(batch).duplicate)
        XCTAssertThrowsError(try store.abortIngest(loadID: "L1"))
        batch.loadID = "nope"
        XCTAssertThrowsError(try store.ingestBatch(batch)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .notFound) }
        begin.header = "u\ti"
        begin.loadID = "L2"
        XCTAssertThrowsError(try store.beginIngest(begin)) { XCTAssertTrue("\($0)".contains("column t"), "\($0)") }
    }

    func testIngestRetriedAfterPostgresRestartCompletesWithoutDuplicates() async throws {
        var text = "user_id:token\titem_id:token\ttimestamp:float\n"
        for k in 0..<3000 { text += "\(k % 97)\t\(k % 89)\t\(k)\n" }
        let path = try writeFile(text, name: "restart.inter")
        let pg = try TestDatabase.shared()
        let ingest = FileIngest(path: path, format: .recboleInter, loadID: "restart", batchBytes: 4096)
        let batches = Counter()
        do {
            try await ingest.run(on: store, parallel: 1) { _ in
                if batches.increment() == 3 { try? pg.stop(mode: .fast) }
            }
            XCTFail("ingest went through a stopped database")
        } catch let e as StoreError {
            guard case .unavailable = e else { return XCTFail("expected unavailable, got \(e)") }
        }
        XCTAssertFalse(pg.isRunning)
        try pg.start()
        let c0 = try Connection(url: url)
        let staged = try c0.query("SELECT count(*) FROM ingest_batches").int(0, 0)!
        c0.close()
        XCTAssertGreaterThan(staged, 0, "batches before the stop should stay staged")
        let result = try await ingest.run(on: store, parallel: 2)
        XCTAssertEqual(result.rows, 3000)
        let c = try Connection(url: url)
        defer { c.close() }
        XCTAssertEqual(try c.query("SELECT count(*) FROM interactions").int(0, 0), 3000)
        XCTAssertEqual(try c.query("SELECT count(DISTINCT line) FROM interactions").int(0, 0), 3000)
    }

    // MARK: events and history

    func testAppendEventsDeduplicatesAndHistoryIncludesThem() async throws {
        let path = try writeFile("user_id:token\titem_id:token\ttimestamp:float\n1\t10\t1\n1\t11\t2\n2\t10\t3\n2\t12\t4\n1\t12\t5\n", name: "h.inter")
        try await FileIngest(path: path, format: .recboleInter).run(on: store)
        let ds = try store.buildDataset(interSpec()).dataset.datasetID
        var h = Winnow_V1_GetHistoryRequest()
        h.user = "1"; h.n = 10; h.datasetID = ds
        let before = try store.history(h)
        XCTAssertEqual(before.timestamps, [1, 2, 5])
        var events = Winnow_V1_AppendEventsRequest()
        for (id, item, ts) in [("e1", "11", 6.0), ("e2", "10", 7.0), ("e1", "11", 6.0), ("e3", "999", 8.0)] {
            var e = Winnow_V1_Event(); e.eventID = id; e.user = "1"; e.item = item; e.timestamp = ts; e.kind = "click"
            events.events.append(e)
        }
        let appended = try store.appendEvents(events)
        XCTAssertEqual(appended.appended, 3)
        XCTAssertEqual(appended.duplicates, 1)
        XCTAssertEqual(try store.appendEvents(events).duplicates, 4)
        let after = try store.history(h)
        // Item 999 is unknown to the dataset and left out.
        XCTAssertEqual(after.timestamps, [1, 2, 5, 6, 7])
        let d = try store.dataset(ds)
        XCTAssertEqual(after.items.map { d.itemIDs[Int($0) - 1] }, [10, 11, 12, 11, 10])
        h.n = 2
        XCTAssertEqual(try store.history(h).timestamps, [6, 7])
        h.user = "x"
        XCTAssertThrowsError(try store.history(h)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .invalidArgument) }
        h.user = "1"; h.datasetID = "ds-none"
        XCTAssertThrowsError(try store.history(h)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .notFound) }
        h.datasetID = ""
        XCTAssertThrowsError(try store.history(h)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .failedPrecondition) }
    }

    // MARK: snapshots

    func testSnapshotShardsAndPagesReassembleTheDatasetAndAreCached() async throws {
        var text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        var rng = SplitMix64(seed: 5)
        for k in 0..<4000 { text += "\(rng.next() % 300)\t\(rng.next() % 120)\t\(Double(rng.next() % 5) + 1)\t\(k)\n" }
        let path = try writeFile(text, name: "snap.inter")
        try await FileIngest(path: path, format: .recboleInter).run(on: store)
        let info = try store.buildDataset(interSpec(k: 2, split: .userSplit811, topK: 5)).dataset
        let d = try store.dataset(info.datasetID)
        XCTAssertEqual(Set(d.roles), [0, 1, 2])
        let dir = NSTemporaryDirectory() + "winnow-snapcache-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var users: [Int64: [Int32]] = [:]
        for shard in 0..<3 {
            var request = Winnow_V1_GetSnapshotRequest()
            request.datasetID = info.datasetID; request.shard = UInt32(shard); request.numShards = 3; request.maxUsers = 17
            var pages = 0
            var page = try store.snapshot(request)
            while true {
                pages += 1
                let s = page.sequences
                for (k, u) in s.userIds.enumerated() {
                    XCTAssertEqual(Int(u) % 3, shard)
                    users[u] = Array(s.items[Int(s.offsets[k])..<Int(s.offsets[k + 1])])
                    XCTAssertEqual(s.roles[k], d.roles[Int(u)])
                }
                XCTAssertEqual(s.ratings.count, s.items.count)
                XCTAssertEqual(page.itemPopularity.isEmpty, !(shard == 0 && pages == 1))
                if page.nextPageToken == 0 { break }
                request.pageToken = page.nextPageToken
                page = try store.snapshot(request)
            }
            XCTAssertGreaterThan(pages, 1)
        }
        XCTAssertEqual(users.count, d.userCount)
        for u in 0..<d.userCount { XCTAssertEqual(users[Int64(u)], Array(d.items[d.offsets[u]..<d.offsets[u + 1]])) }

        let cache = SnapshotCache(directory: dir)
        let s0 = try await cache.snapshot(info.datasetID, from: store)
        XCTAssertEqual(s0.items, d.items)
        XCTAssertEqual(s0.itemPopularity, d.popularity)
        XCTAssertEqual(s0.neighbourItems, d.neighbours!.items)
        XCTAssertEqual(cache.fetches, 1)
        _ = try await cache.snapshot(info.datasetID, from: store)
        XCTAssertEqual(cache.fetches, 1)
        let other = SnapshotCache(directory: dir) // a new process: reads the file, fetches nothing
        let s1 = try await other.snapshot(info.datasetID, from: store)
        XCTAssertEqual(other.fetches, 0)
        XCTAssertEqual(s1.items, d.items)
        var bad = Winnow_V1_GetSnapshotRequest()
        bad.datasetID = info.datasetID; bad.shard = 3; bad.numShards = 3
        XCTAssertThrowsError(try store.snapshot(bad)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .invalidArgument) }
    }

    // MARK: model registry

    func testPromoteUnderConcurrentReadersNeverShowsAPartialModel() async throws {
        let a = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let b = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        var meta = Winnow_V1_ModelMeta()
        meta.name = "student"; meta.specJson = "{\"backbone\":\"SASRec\"}"; meta.metrics = ["NDCG@10": 0.1]; meta.datasetID = "ds-x"
        let m1 = try await ModelTransfer.upload(a, meta: meta, to: store, chunkBytes: 65_536)
        let m2 = try await ModelTransfer.upload(b, meta: meta, to: store, chunkBytes: 50_000)
        XCTAssertEqual([m1.version, m2.version], [1, 2])
        XCTAssertEqual(m1.contentHash, SHA256.hex(SHA256.hash(a)))
        XCTAssertEqual(m2.metrics["NDCG@10"], 0.1)
        var promote = Winnow_V1_PromoteRequest()
        promote.name = "student"; promote.version = 1
        XCTAssertEqual(try store.promote(promote).previousVersion, 0)

        let stop = Counter()
        let promoter = Thread { [store] in
            var v: UInt64 = 2
            while stop.value == 0 {
                var p = Winnow_V1_PromoteRequest(); p.name = "student"; p.version = v
                _ = try? store!.promote(p)
                v = v == 1 ? 2 : 1
            }
        }
        promoter.start()
        let reads = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for _ in 0..<3 {
                group.addTask { [store] in
                    var versions: [UInt64] = []
                    let end = Date().addingTimeInterval(2)
                    while Date() < end {
                        let (m, bytes) = try await ModelTransfer.download(name: "student", from: store!, chunkBytes: 32_768)
                        XCTAssertEqual(bytes, m.version == 1 ? a : b, "v\(m.version) mixed")
                        versions.append(m.version)
                    }
                    return versions
                }
            }
            var all: [UInt64] = []
            for try await v in group { all += v }
            return all
        }
        _ = stop.increment()
        XCTAssertGreaterThan(reads.count, 5)
        XCTAssertEqual(Set(reads), [1, 2], "readers should have seen both versions")
        let listed = try store.listModels(Winnow_V1_ListModelsRequest())
        XCTAssertEqual(listed.models.map(\.version), [1, 2])
        XCTAssertEqual(listed.models.filter(\.promoted).count, 1)
        // Retried last chunk of a finished upload: same version, nothing new.
        var again = Winnow_V1_PutModelRequest()
        again.uploadID = "u-1"; again.chunk = Foundation.Data([1, 2, 3]); again.last = true; again.meta = meta
        let first = try store.putModel(again)
        XCTAssertEqual(try store.putModel(again).meta.version, first.meta.version)
        var wrongOffset = Winnow_V1_PutModelRequest()
        wrongOffset.uploadID = "u-2"; wrongOffset.offset = 10; wrongOffset.chunk = Foundation.Data([1])
        XCTAssertThrowsError(try store.putModel(wrongOffset)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .failedPrecondition) }
        var missing = Winnow_V1_GetModelRequest()
        missing.name = "nobody"
        XCTAssertThrowsError(try store.getModel(missing)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .notFound) }
        // Versions past a bigint are refused, not trapped on (found by winnow bench fuzz),
        // and change nothing.
        let stored = try store.listModels(Winnow_V1_ListModelsRequest()).models
        var huge = Winnow_V1_GetModelRequest()
        huge.name = "m"; huge.version = .max
        XCTAssertThrowsError(try store.getModel(huge)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .invalidArgument) }
        var hugePromote = Winnow_V1_PromoteRequest()
        hugePromote.name = "m"; hugePromote.version = UInt64(Int64.max) + 1
        XCTAssertThrowsError(try store.promote(hugePromote)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .invalidArgument) }
        // Text the database cannot hold (a NUL) is the request's fault, not INTERNAL (found by the fuzzer).
        var nul = Winnow_V1_GetModelRequest()
        nul.name = "m\u{0}"
        XCTAssertThrowsError(try store.getModel(nul)) { XCTAssertEqual(($0 as? StoreError)?.rpcError.code, .invalidArgument, "\($0)") }
        XCTAssertEqual(try store.listModels(Winnow_V1_ListModelsRequest()).models, stored)
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    var value: Int { lock.withLock { n } }
    func increment() -> Int { lock.withLock { n += 1; return n } }
}

