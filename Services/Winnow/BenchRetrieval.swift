import ArgumentParser
import Foundation
import Numerics
import RetrievalKit

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
        print("exact top-\(k) inner-product search, d = \(dim), \(workers) thread(s) on both sides")
        var rows: [BenchRow] = []
        var disagreements: [String] = []
        for N in sizes {
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
        print("")
        BenchOutput.printTable(rows)
        if let json { try BenchOutput.writeJSON(rows, to: json); print("wrote \(json)") }
        if !disagreements.isEmpty {
            print("error: Winnow and FAISS found different items in \(disagreements.joined(separator: ", "))")
            throw ExitCode.failure
        }
    }

    private func write(_ values: [Float], to path: String) throws {
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path),
           (attributes[.size] as? Int) == values.count * 4 { return }
        try values.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: path))
    }
}
