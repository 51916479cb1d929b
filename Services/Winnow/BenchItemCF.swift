import ArgumentParser
import Data
import Foundation

/// `winnow bench itemcf`: ItemCF build time beside scipy.sparse (scripts/reference/itemcf_scipy.py)
/// on ML-100K and on a synthetic set, same file and same K in the same run, checking that both
/// produce the same neighbours.
struct BenchItemCF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "itemcf",
        abstract: "ItemCF neighbour build time beside a scipy.sparse reference of the same formula.",
        discussion: """
        Data sets: ML-100K (every interaction of ml-100k.inter) and a synthetic set written by \
        `winnow synth` into DATA_DIR/synth and reused (full: 1M users, 100K items, 20M \
        interactions; --quick: 100K users, 20K items, 2M interactions). Both sides read the same \
        file, remap ids by first appearance, and are timed on the computation only (remapped \
        sequences in, top-K CSR out); reading is reported beside. Run from the repository root, \
        release build.
        """
    )

    @Option(help: "Write the rows as JSON to this file.") var json: String?
    @Flag(help: "Smaller synthetic set (100K users / 20K items / 2M interactions).") var quick = false
    @Option(help: "Neighbours per item.") var k: Int = 50
    @Option(help: "Worker threads for Winnow (default: all cores).") var threads: Int?
    @Option(name: .customLong("data-dir"), help: "Data cache (default: $WINNOW_DATA_DIR or ~/.cache/winnow/data).")
    var dataDir: String?
    @Option(name: .customLong("reference-memory-gb"),
            help: "Address-space limit for the reference process, so it fails cleanly instead of exhausting the machine.")
    var referenceMemoryGB: Int = 16
    @Flag(name: .customLong("skip-reference"), help: "Time Winnow only.") var skipReference = false

    func validate() throws {
        guard k >= 1 else { throw ValidationError("--k must be >= 1") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
    }

    func run() throws {
        setvbuf(stdout, nil, _IOLBF, 0)   // progress lines appear as they happen, also in a pipe
        #if DEBUG
        print("warning: debug build; build with -c release for timings")
        #endif
        let dir = dataDir ?? ProcessInfo.processInfo.environment["WINNOW_DATA_DIR"]
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/winnow/data").path
        let python = skipReference ? nil : try BenchProcess.referencePython(["scipy", "numpy"])
        let ml100k = try ML100K.path(dataDir: dir)
        let spec = quick
            ? SyntheticSpec(users: 100_000, items: 20_000, interactions: 2_000_000, noiseRate: 0.1, seed: 1)
            : SyntheticSpec(users: 1_000_000, items: 100_000, interactions: 20_000_000, noiseRate: 0.1, seed: 1)
        let (synth, generated) = try BenchSynthetic.file(spec, dataDir: dir)
        if let generated {
            print(String(format: "  %d interactions in %.2f s (%.2f M/s)", generated.interactions, generated.seconds,
                         Double(generated.interactions) / generated.seconds / 1e6))
        }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let workers = threads ?? cores
        print("ItemCF, K = \(k), Winnow threads = \(workers) (\(cores) cores); times are the computation only")

        var rows = [BenchRow]()
        rows += try measure(name: "ml100k", path: ml100k, repeats: 5, workers: workers, python: python)
        rows += try measure(name: quick ? "synth_2m" : "synth_20m", path: synth, repeats: quick ? 3 : 1,
                            workers: workers, python: python)
        print("")
        BenchOutput.printTable(rows)
        if let json {
            try BenchOutput.writeJSON(rows, to: json)
            print("wrote \(json)")
        }
        // Differing neighbours are a correctness failure, not a slow result.
        let disagreeing = rows.filter { $0.name.hasSuffix("_neighbour_agreement") && $0.winnow < 1 }
        if !disagreeing.isEmpty {
            print("error: Winnow and the reference disagree: \(disagreeing.map(\.name).joined(separator: ", "))")
            throw ExitCode.failure
        }
    }

    private func measure(name: String, path: String, repeats: Int, workers: Int, python: String?) throws -> [BenchRow] {
        print("\n[\(name)] \(path)")
        let readStart = benchNow()
        let input = try InterSequences.read(path: path)
        let readSeconds = benchNow() - readStart
        print(String(format: "  read: %d users, %d items, %d interactions in %.3f s", input.users, input.itemCount,
                     input.items.count, readSeconds))

        func time(threads: Int, repeats: Int) throws -> (ItemNeighbours, Double) {
            var best = Double.infinity
            var result: ItemNeighbours?
            for _ in 0 ..< repeats {
                let t = benchNow()
                result = try ItemCF.neighbours(items: input.items, offsets: input.offsets, itemCount: input.itemCount,
                                               k: k, threads: threads)
                best = min(best, benchNow() - t)
            }
            return (result!, best)
        }
        let (neighbours, seconds) = try time(threads: workers, repeats: repeats)
        print(String(format: "  winnow: %.4f s (best of %d, %d threads), %d neighbours", seconds, repeats, workers,
                     neighbours.count))
        var single: Double?
        if workers > 1 {
            single = try time(threads: 1, repeats: repeats).1
            print(String(format: "  winnow: %.4f s with 1 thread", single!))
        }

        var usage = rusage()
        #if os(Linux)
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        print(String(format: "  winnow process max RSS so far: %.0f MB", Double(usage.ru_maxrss) / 1024))

        var reference: ReferenceRun?
        if let python {
            reference = try runReference(python: python, path: path, repeats: repeats)
        }
        var rows = [BenchRow.time("itemcf_\(name)_seconds", winnow: seconds, reference: reference?.computeSeconds, goal: 1.0)]
        if let single {
            rows.append(.time("itemcf_\(name)_seconds_1thread", winnow: single, reference: reference?.computeSeconds, goal: 1.0))
        }
        rows.append(.time("itemcf_\(name)_end_to_end_seconds", winnow: readSeconds + seconds,
                          reference: reference.map { $0.readSeconds + $0.computeSeconds }, goal: 1.0))
        if let reference {
            let agreement = compare(neighbours, reference)
            print(String(format: "  agreement: %d of %d items identical, %d equal up to ties, %d differ; max |score diff| %.3g",
                         agreement.identical, agreement.items, agreement.tieEquivalent, agreement.differing,
                         agreement.maxScoreDifference))
            rows.append(.rate("itemcf_\(name)_neighbour_agreement", unit: "fraction of items (up to ties)",
                              winnow: Double(agreement.identical + agreement.tieEquivalent) / Double(max(agreement.items, 1)),
                              reference: nil, budget: 1.0))
        }
        return rows
    }

    private struct ReferenceRun {
        var computeSeconds: Double
        var readSeconds: Double
        var offsets: [Int64]
        var items: [Int32]
        var scores: [Float]
    }

    private func runReference(python: String, path: String, repeats: Int) throws -> ReferenceRun? {
        let prefix = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-itemcf-ref-\(getpid())").path
        defer {
            for ext in [".offsets.i64", ".items.i32", ".scores.f32"] { try? FileManager.default.removeItem(atPath: prefix + ext) }
        }
        let limitKB = referenceMemoryGB * 1024 * 1024
        let command = "ulimit -v \(limitKB) && exec \"$0\" scripts/reference/itemcf_scipy.py --inter \"$1\" --k \(k) --repeats \(repeats) --out \"$2\""
        let result = try BenchProcess.run("/usr/bin/env", ["bash", "-c", command, python, path, prefix])
        guard result.status == 0, let line = result.stdout.split(separator: "\n").last,
              let object = try? JSONSerialization.jsonObject(with: Foundation.Data(line.utf8)) as? [String: Any],
              let compute = object["compute_seconds"] as? Double, let read = object["read_seconds"] as? Double else {
            print("  reference: FAILED (status \(result.status), address-space limit \(referenceMemoryGB) GiB); output: \(result.stdout.suffix(500))")
            return nil
        }
        print(String(format: "  reference: %.4f s (best of %d), read %.3f s, %@ co-occurring pairs, max RSS %.0f MB",
                      compute, repeats, read, "\(object["cooccurring_pairs"] ?? "?")", (object["maxrss_mb"] as? Double) ?? 0))
        func load<T>(_ ext: String, _: T.Type) throws -> [T] {
            let data = try Foundation.Data(contentsOf: URL(fileURLWithPath: prefix + ext))
            return data.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
        }
        return ReferenceRun(computeSeconds: compute, readSeconds: read, offsets: try load(".offsets.i64", Int64.self),
                            items: try load(".items.i32", Int32.self), scores: try load(".scores.f32", Float.self))
    }

    private struct Agreement {
        var items = 0, identical = 0, tieEquivalent = 0, differing = 0
        var maxScoreDifference: Float = 0
    }

    /// Per item: identical ids in order, or equal up to ties (same length; shared neighbours
    /// score within tolerance; a neighbour on one side only is tied with the other side's
    /// last kept score), or differing.
    private func compare(_ a: ItemNeighbours, _ b: ReferenceRun) -> Agreement {
        var out = Agreement()
        let tolerance: Float = 1e-5
        guard b.offsets.count == a.itemCount + 2 else {
            out.items = a.itemCount
            out.differing = a.itemCount
            print("  reference has \(b.offsets.count - 2) items, Winnow \(a.itemCount)")
            return out
        }
        for v in 1 ... a.itemCount {
            out.items += 1
            let (ai, asc) = a.neighbours(of: v)
            let range = Int(b.offsets[v]) ..< Int(b.offsets[v + 1])
            let bi = b.items[range], bsc = b.scores[range]
            if Array(ai) == Array(bi) {
                out.identical += 1
                for (x, y) in zip(asc, bsc) { out.maxScoreDifference = max(out.maxScoreDifference, abs(x - y)) }
                continue
            }
            var equivalent = ai.count == bi.count
            if equivalent {
                let bMap = Dictionary(uniqueKeysWithValues: zip(bi, bsc))
                let aMap = Dictionary(uniqueKeysWithValues: zip(ai, asc))
                let aLast = asc.last ?? 0, bLast = bsc.last ?? 0
                for (id, s) in aMap {
                    if let t = bMap[id] { equivalent = equivalent && abs(s - t) <= tolerance }
                    else { equivalent = equivalent && abs(s - bLast) <= tolerance }
                }
                for (id, t) in bMap where aMap[id] == nil { equivalent = equivalent && abs(t - aLast) <= tolerance }
            }
            if equivalent { out.tieEquivalent += 1 } else { out.differing += 1 }
        }
        return out
    }
}

/// ML-100K through scripts/fetch-ml100k (cached, verified), run from the repository root.
enum ML100K {
    static func path(dataDir: String) throws -> String {
        let result = try BenchProcess.run("/usr/bin/env", ["bash", "scripts/fetch-ml100k"],
                                          environment: ["WINNOW_DATA_DIR": dataDir])
        guard result.status == 0, let line = result.stdout.split(separator: "\n").last,
              FileManager.default.fileExists(atPath: String(line)) else {
            throw ValidationError("scripts/fetch-ml100k failed (status \(result.status)); run it from the repository root")
        }
        return String(line)
    }
}

/// Users' item sequences in file order (the order ItemCF and the scipy reference both read),
/// items numbered 1...N by first appearance, from the shared `.inter` reader.
struct InterSequences {
    var users: Int
    var itemCount: Int
    var offsets: [Int]    // (U + 1)
    var items: [Int32]    // (interactions)

    static func read(path: String) throws -> InterSequences {
        let rows = try InterReader(columns: .init(timestamp: nil, rating: nil)).read(path: path)
        let U = rows.userTokens.count
        var offsets = [Int](repeating: 0, count: U + 1)
        for u in rows.users { offsets[Int(u) + 1] += 1 }
        for u in 0 ..< U { offsets[u + 1] += offsets[u] }
        var fill = offsets
        var items = [Int32](repeating: 0, count: rows.count)
        for (u, i) in zip(rows.users, rows.items) { items[fill[Int(u)]] = i + 1; fill[Int(u)] += 1 }
        return InterSequences(users: U, itemCount: rows.itemTokens.count, offsets: offsets, items: items)
    }
}
