import ArgumentParser
import Foundation
import Logging
import Models
import Numerics
import RPC
import RetrievalKit
import WinnowProto

/// `winnow bench retrieval`: exact top-k inner-product search (`InnerProductIndex`, what the
/// retrieval service ranks with) beside FAISS's IndexFlatIP on the same item matrix and queries,
/// same k, batch size and threads, in the same run.
struct BenchRetrieval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retrieval",
        abstract: "Exact top-k inner-product search beside FAISS IndexFlatIP (same matrix, queries, k, threads).",
        discussion: """
        Items and queries are standard normal float32 vectors (seeded), written once to a scratch \
        directory that the reference (scripts/reference/retrieval_faiss.py, faiss-cpu from the \
        reference venv) reads too. Each side is timed over every query, batch by batch, best of \
        --repeats passes; rows give seconds per batch and ratio = FAISS ÷ Winnow. Both sides' top-k \
        of the first queries are compared (a disagreement fails the bench). Release build.
        """
    )

    @Option(help: "Write the rows as JSON to this file.") var json: String?
    @Option(help: "Catalogue sizes, comma-separated.") var items = "100000,1000000"
    @Option(help: "Vector dimension.") var dim = 64
    @Option(help: "Results per query.") var k = 50
    @Option(help: "Batch sizes, comma-separated.") var batches = "1,256"
    @Option(help: "Queries per catalogue (a multiple of every batch size).") var queries = 1024
    @Option(help: "Threads on both sides (default: all cores).") var threads: Int?
    @Option(help: "Passes over the queries; the best counts.") var repeats = 3
    @Flag(name: .customLong("skip-reference"), help: "Time Winnow only.") var skipReference = false
    @Option(help: "End to end: open-loop request rates per second through the wire (empty: skip).")
    var rates = "250,500,1000,2000"
    @Option(name: .customLong("serve-items"), help: "End to end: the served SASRec's catalogue.") var serveItems = 100_000
    @Option(name: .customLong("seconds-per-rate"), help: "End to end: seconds of load per rate.") var secondsPerRate = 5.0
    @Flag(name: .customLong("only-end-to-end"), help: "Skip the search rows.") var onlyEndToEnd = false
    @Option(name: .customLong("ann-items"), help: "Approximate index (HNSW): catalogue sizes, comma-separated (empty: skip).")
    var annItems = ""
    @Option(name: .customLong("ann-ef"), help: "Approximate index: search breadths to measure.") var annEf = "64,128,256"

    func run() throws {
        setvbuf(stdout, nil, _IOLBF, 0)
        #if DEBUG
        print("warning: debug build; build with -c release for timings")
        #endif
        let sizes = items.split(separator: ",").compactMap { Int($0) }, batchSizes = batches.split(separator: ",").compactMap { Int($0) }
        guard !sizes.isEmpty, !batchSizes.isEmpty, sizes.allSatisfy({ $0 >= k }), batchSizes.allSatisfy({ $0 >= 1 && queries % $0 == 0 }) else {
            throw ValidationError("--items must each hold at least k items, and --queries must be a multiple of every --batches size")
        }
        let workers = threads ?? ProcessInfo.processInfo.activeProcessorCount
        Threads.set(workers)
        let python = skipReference ? nil : try BenchProcess.referencePython(["faiss-cpu", "numpy"])
        let scratch = NSTemporaryDirectory() + "winnow-bench-retrieval"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        var rows: [BenchRow] = []
        var disagreements: [String] = []
        if !onlyEndToEnd { print("exact top-\(k) inner-product search, d = \(dim), \(workers) thread(s) on both sides") }
        for N in onlyEndToEnd ? [] : sizes {
            var rng = RNG(seed: UInt64(N))
            let itemVectors = (0..<(N * dim)).map { _ in rng.normal() }
            let queryVectors = (0..<(queries * dim)).map { _ in rng.normal() }
            let itemFile = scratch + "/items-\(N)-\(dim).f32", queryFile = scratch + "/queries-\(N)-\(dim).f32"
            try write(itemVectors, to: itemFile); try write(queryVectors, to: queryFile)
            let index = itemVectors.withUnsafeBufferPointer { InnerProductIndex(items: $0.baseAddress!, count: N, dim: dim) }
            for B in batchSizes {
                let name = "top\(k)_\(N / 1000)k_items_batch\(B)"
                var best = Double.infinity
                var firstIDs: [[Int32]] = []
                try itemVectors.withUnsafeBufferPointer { _ in
                    try queryVectors.withUnsafeBufferPointer { q in
                        for _ in 0..<max(1, repeats) {
                            let t0 = benchNow()
                            for start in stride(from: 0, to: queries, by: B) {
                                let found = index.search(queries: q.baseAddress! + start * dim, count: B, k: k)
                                if start == 0 && firstIDs.isEmpty { firstIDs = found.map { $0.map(\.item) } }
                            }
                            best = min(best, benchNow() - t0)
                        }
                        guard firstIDs.count < 8 else { return }
                        firstIDs = index.search(queries: q.baseAddress!, count: 8, k: k).map { $0.map(\.item) }
                    }
                }
                let perBatch = best / Double(queries / B)
                var reference: Double? = nil
                if let python {
                    let r = try BenchProcess.run(python, ["scripts/reference/retrieval_faiss.py", itemFile, queryFile, "--dim", "\(dim)",
                                                          "--k", "\(k)", "--batch", "\(B)", "--threads", "\(workers)",
                                                          "--repeats", "\(max(1, repeats))"],
                                                 environment: ["OMP_NUM_THREADS": "\(workers)"])
                    guard r.status == 0, let line = r.stdout.split(separator: "\n").last,
                          let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          let seconds = object["seconds_per_batch"] as? Double, let ids = object["ids"] as? [[Int]] else {
                        throw ValidationError("the FAISS reference failed (status \(r.status)): \(r.stdout.suffix(400))")
                    }
                    reference = seconds
                    // the same items (as sets: FAISS may order equal scores otherwise)
                    for (a, b) in zip(firstIDs.prefix(ids.count), ids) where Set(a.map(Int.init)) != Set(b) {
                        disagreements.append(name)
                        break
                    }
                }
                let row = BenchRow.time(name, winnow: perBatch, reference: reference, goal: B > 1 ? 1.0 : nil, unit: "s/batch")
                rows.append(row)
                print("  \(name): winnow \(BenchOutput.format(perBatch)) s/batch, faiss \(BenchOutput.format(reference)) s/batch, ratio \(BenchOutput.format(row.ratio))")
            }
        }
        for N in annItems.split(separator: ",").compactMap({ Int($0) }) { rows += try approximate(N, threads: workers) }
        let rateList = rates.split(separator: ",").compactMap { Double($0) }
        if !rateList.isEmpty { rows += try endToEnd(rates: rateList, threads: workers) }
        print("")
        BenchOutput.printTable(rows)
        if let json { try BenchOutput.writeJSON(rows, to: json); print("wrote \(json)") }
        if !disagreements.isEmpty {
            print("error: Winnow and FAISS found different items in \(disagreements.joined(separator: ", "))")
            throw ExitCode.failure
        }
    }

    /// Recommend through the wire: a retrieval server (the service's handlers on an RPC server at
    /// a loopback endpoint) serving an untrained SASRec over `serveItems` items, and an open-loop
    /// generator that sends requests at a fixed rate whatever the answers do (each timed from
    /// its scheduled send, so a slow server shows as latency, not as a slower rate); then 10
    /// model swaps during a 500-per-second run.
    private func endToEnd(rates: [Double], threads: Int) throws -> [BenchRow] {
        let N = serveItems
        func model(_ seed: UInt64, version: UInt64) throws -> ServedModel {
            try ServedModel(name: "bench", version: version, datasetID: "bench",
                            backbone: ModelKind.sasrec.make(itemCount: N, seed: seed), itemIDs: (1...N).map(Int64.init))
        }
        let first = try model(1, version: 1), second = try model(2, version: 2)
        let server = RetrievalServer(store: nil, logger: Logger(label: "bench"))
        server.serve(first)
        let rpc = try RPCServer(configuration: RPCServerConfiguration(name: "retrieval", workerThreads: 4))
        RetrievalService(server: server, defaultModel: "bench").register(on: rpc)
        let endpoint = try rpc.bind("tcp://127.0.0.1:*")
        rpc.start()
        defer { server.stop(); rpc.shutdown(grace: .seconds(1)) }
        let client = try RPCClient(endpoint: endpoint)
        defer { client.close() }
        print("\nend to end: Recommend(20 recent items, k = 10) over \(N) items, SASRec, \(threads) thread(s), direct endpoint")
        var rows: [BenchRow] = []
        for rate in rates {
            let r = try load(client, rate: rate, seconds: secondsPerRate, swap: nil)
            print(String(format: "  %5.0f/s: sent %d, p50 %.2f ms, p99 %.2f ms, errors %d, shed %d, mean batch %.1f", rate, r.sent, r.p50 * 1e3,
                         r.p99 * 1e3, r.errors, r.shed, server.stats().meanBatchSize))
            let name = "e2e_\(N / 1000)k_items_\(Int(rate))_per_s"
            rows.append(.time(name + "_p50", winnow: r.p50 * 1e3, reference: nil, unit: "ms"))
            rows.append(.time(name + "_p99", winnow: r.p99 * 1e3, reference: nil, budget: rate == 1000 ? 5 : nil, unit: "ms"))
            rows.append(.time(name + "_failed", winnow: Double(r.errors + r.shed), reference: nil, unit: "requests"))
        }
        var swaps = 0
        let r = try load(client, rate: 500, seconds: max(secondsPerRate, 5), swap: { i in
            // ten swaps spread over the run
            guard i % max(1, Int(500 * max(secondsPerRate, 5)) / 10) == 0, swaps < 10 else { return }
            swaps += 1
            server.serve(swaps % 2 == 1 ? second : first)
        })
        print(String(format: "  500/s with %d model swaps: sent %d, p99 %.2f ms, failed %d", swaps, r.sent, r.p99 * 1e3, r.errors + r.shed))
        rows.append(.time("e2e_\(N / 1000)k_items_500_per_s_10_reloads_failed", winnow: Double(r.errors + r.shed), reference: nil,
                          budget: 0, unit: "requests"))
        return rows
    }

    /// HNSW beside the exact search on the same items and queries, one query at a time:
    /// build time, recall@k of the exact top-k, and the speed-up per query at each breadth.
    private func approximate(_ N: Int, threads: Int) throws -> [BenchRow] {
        var rng = RNG(seed: UInt64(N))
        let items = (0..<(N * dim)).map { _ in rng.normal() }
        let Q = min(queries, 256)
        let qs = (0..<(Q * dim)).map { _ in rng.normal() }
        print("\napproximate index (HNSW, M 16, ef_construction 200) over \(N) items, d = \(dim), \(Q) queries one at a time, \(threads) thread(s) building")
        var rows: [BenchRow] = []
        try items.withUnsafeBufferPointer { e in
            try qs.withUnsafeBufferPointer { q in
                let t0 = benchNow()
                let ann = try ApproximateIndex(items: e.baseAddress!, count: N, dim: dim)
                let build = benchNow() - t0
                print(String(format: "  build: %.1f s", build))
                rows.append(.time("ann_\(N / 1000)k_items_build", winnow: build, reference: nil))
                let exact = InnerProductIndex(items: e.baseAddress!, count: N, dim: dim)
                var truth: [Set<Int32>] = []
                let t1 = benchNow()
                for i in 0..<Q { truth.append(Set(exact.search(queries: q.baseAddress! + i * dim, count: 1, k: k)[0].map(\.item))) }
                let exactPerQuery = (benchNow() - t1) / Double(Q)
                for ef in annEf.split(separator: ",").compactMap({ Int($0) }) {
                    ann.setSearchBreadth(max(ef, k))
                    var hits = 0
                    let t2 = benchNow()
                    var found: [[Int32]] = []
                    for i in 0..<Q { found.append(try ann.search(query: q.baseAddress! + i * dim, k: k).map(\.item)) }
                    let perQuery = (benchNow() - t2) / Double(Q)
                    for i in 0..<Q { hits += found[i].filter { truth[i].contains($0) }.count }
                    let recall = Double(hits) / Double(Q * k)
                    print(String(format: "  ef %4d: recall@%d %.4f, %.3f ms a query against exact %.3f ms (%.1f × faster)", ef, k, recall,
                                 perQuery * 1e3, exactPerQuery * 1e3, exactPerQuery / perQuery))
                    rows.append(.rate("ann_\(N / 1000)k_items_ef\(ef)_recall\(k)", unit: "recall", winnow: recall, reference: nil))
                    rows.append(.time("ann_\(N / 1000)k_items_ef\(ef)_query_vs_exact", winnow: perQuery, reference: exactPerQuery))
                }
            }
        }
        return rows
    }

    private struct LoadResult { var sent = 0, errors = 0, shed = 0; var p50 = 0.0, p99 = 0.0 }

    private func load(_ client: RPCClient, rate: Double, seconds: Double, swap: ((Int) -> Void)?) throws -> LoadResult {
        let total = Int(rate * seconds)
        var rng = RNG(seed: UInt64(rate))
        let requests: [Winnow_V1_RecommendRequest] = (0..<total).map { _ in
            var q = Winnow_V1_RecommendRequest()
            q.recentItems = (0..<20).map { _ in Int32(1 + rng.below(serveItems)) }
            q.k = 10
            return q
        }
        let calls = OpenLoopLoad(client: client, rate: rate) { requests[$0] }.run(count: total, before: swap)
        var r = LoadResult(); r.sent = calls.count
        r.shed = calls.filter { $0.code == .resourceExhausted }.count
        r.errors = calls.filter { $0.code != .ok && $0.code != .resourceExhausted }.count
        let ok = calls.filter { $0.code == .ok }.map(\.latency).sorted()
        if !ok.isEmpty { r.p50 = ok[ok.count / 2]; r.p99 = ok[min(ok.count - 1, Int(0.99 * Double(ok.count)))] }
        return r
    }

    private func write(_ values: [Float], to path: String) throws {
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path),
           (attributes[.size] as? Int) == values.count * 4 { return }
        try values.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: path))
    }
}
