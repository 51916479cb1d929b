import ArgumentParser
import Foundation
import Numerics
import Models
import Training
import Evaluation
#if canImport(Glibc)
import Glibc
#endif

/// `winnow bench train`: training throughput (forward + backward + Adam) of SASRec and GRU4Rec
/// and full-ranking evaluation time, each beside PyTorch (scripts/reference/train_bench_torch.py)
/// with the same thread count in the same run. Every row runs in its own process on both sides,
/// so the peak memory reported is that row's; the sides alternate for `--rounds` rounds and each
/// keeps its best.
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Training throughput and full-ranking evaluation time beside PyTorch."
    )

    /// model-loss-items; "all" rows train every position of 50-item windows (50 targets per
    /// sequence), the others one target per sequence.
    static let rows = ["sasrec-full-1683", "sasrec-full-100000", "sasrec-sampled-100000", "gru4rec-full-1683",
                       "sasrec-all-1683", "gru4rec-all-1683", "eval-10000x100000"]

    @Option(help: "Write the rows as JSON to this file.")
    var json: String?

    @Option(help: "Threads for Winnow (its loops and products) and for PyTorch.")
    var threads = 2

    @Option(help: "Seconds of timed training per row and side.")
    var seconds = 20.0

    @Option(help: "Rounds per row; Winnow and PyTorch alternate, and each side keeps its best round (the machine is shared).")
    var rounds = 3

    @Option(help: "Run only these rows (comma-separated): \(BenchTrain.rows.joined(separator: ", ")).")
    var only: String?

    @Option(help: .hidden)
    var worker: String?

    func validate() throws {
        if let worker, !Self.rows.contains(worker) { throw ValidationError("unknown row \(worker)") }
        if let only { for r in only.split(separator: ",") where !Self.rows.contains(String(r)) { throw ValidationError("unknown row \(r)") } }
        guard threads >= 1, seconds > 0, rounds >= 1 else { throw ValidationError("--threads, --seconds and --rounds must be positive") }
    }

    func run() throws {
        if let worker {
            let (value, unit) = Self.measure(worker, threads: threads, seconds: seconds)
            let out: [String: Any] = ["row": worker, "value": value, "unit": unit, "peak_rss_mb": Self.peakRSSMegabytes(), "threads": threads]
            print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        let python = try BenchProcess.referencePython(["torch"])
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).path
        let selected = only.map { $0.split(separator: ",").map(String.init) } ?? Self.rows
        var table: [BenchRow] = []
        for row in selected {
            FileHandle.standardError.write("bench train: \(row) ...\n".data(using: .utf8)!)
            // Sides alternate round by round, so a slow spell of the machine hits both; each side
            // keeps its best value (lowest time, highest rate) and its highest peak memory.
            var unit = "", wv: Double? = nil, rv: Double? = nil, wMemory = 0.0, rMemory: Double? = nil
            func better(_ a: Double?, _ b: Double) -> Double { guard let a else { return b }; return unit == "s" ? min(a, b) : max(a, b) }
            for _ in 0..<rounds {
                let w = try Self.child(me, ["bench", "train", "--worker", row, "--threads", "\(threads)", "--seconds", "\(seconds)"])
                unit = w["unit"] as! String
                wv = better(wv, w["value"] as! Double)
                wMemory = max(wMemory, w["peak_rss_mb"] as! Double)
                if let r = try? Self.child(python, ["scripts/reference/train_bench_torch.py", "--row", row, "--threads", "\(threads)", "--seconds", "\(seconds)"]),
                   let value = r["value"] as? Double {
                    rv = better(rv, value)
                    rMemory = max(rMemory ?? 0, r["peak_rss_mb"] as? Double ?? 0)
                }
            }
            if unit == "s" {
                table.append(.time("\(row) (\(threads) threads)", winnow: wv!, reference: rv, goal: 1.5))
            } else {
                table.append(.rate("\(row) (\(threads) threads)", unit: unit, winnow: wv!, reference: rv, goal: 1.5))
            }
            table.append(.time("\(row) peak memory", winnow: wMemory, reference: rMemory, goal: 1.0, unit: "MB"))
        }
        BenchOutput.printTable(table)
        if let json { try BenchOutput.writeJSON(table, to: json) }
    }

    static func child(_ exe: String, _ args: [String]) throws -> [String: Any] {
        let r = try BenchProcess.run(exe, args)
        guard r.status == 0, let line = r.stdout.split(separator: "\n").last,
              let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw ValidationError("\(exe) \(args.joined(separator: " ")) failed (status \(r.status))")
        }
        return obj
    }

    static func peakRSSMegabytes() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024
    }

    /// Runs one row in this process: (value, unit).
    static func measure(_ row: String, threads: Int, seconds: Double) -> (Double, String) {
        Threads.set(threads)
        if row == "eval-10000x100000" { return (evalTime(users: 10_000, items: 100_000), "s") }
        let parts = row.split(separator: "-")
        let kind = ModelKind(rawValue: String(parts[0]))!, sampled = parts[1] == "sampled", all = parts[1] == "all", N = Int(parts[2])!
        let B = 256, T = 50
        let model = kind.make(itemCount: N, maxLength: T, seed: 1)
        let loss = CrossEntropyLoss(sampled ? .sampledSoftmax(negatives: 100, sampler: NegativeSampler(itemCount: N, proposal: .uniform)) : .fullSoftmax)
        let trainer = try! TrainStep(model: model, loss: loss, optimizer: Adam(parameters: model.parameters),
                                     scheme: all ? .allPositions : .prefixes, batchSize: B)
        var rng = RNG(seed: 1)
        let items = (0..<(B * T)).map { _ in Int32(1 + rng.below(N)) }
        let lengths = [Int32](repeating: Int32(T), count: B)
        let targets = (0..<(all ? B * T : B)).map { _ in Int32(1 + rng.below(N)) }
        func step() { try! trainer.step(items: items, lengths: lengths, targets: targets, instances: nil, B: B) }
        for _ in 0..<3 { step() }
        var steps = 0
        let t0 = benchNow()
        while true {
            step(); steps += 1
            let el = benchNow() - t0
            if el >= seconds && steps >= 5 { return (Double(steps * B) / el, "sequences/s") }
        }
    }

    /// Best of 3: rank of a target and the top 10 among `items` for `users` random user vectors (d = 64).
    static func evalTime(users: Int, items N: Int) -> Double {
        let C = 64, batch = 1024
        var rng = RNG(seed: 1)
        let U = Slab([users * C]), E = Slab([N * C])
        for i in 0..<(users * C) { U.base[i] = rng.normal() }
        for i in 0..<(N * C) { E.base[i] = rng.normal() }
        let targets = (0..<users).map { _ in Int32(1 + rng.below(N)) }
        let evaluator = RankingEvaluator(itemCount: N, dim: C, maxBatch: batch)
        var best = Double.infinity
        for _ in 0..<3 {
            let t0 = benchNow()
            var acc = MetricAccumulator()
            targets.withUnsafeBufferPointer { tg in
                var s = 0
                while s < users {
                    let n = min(batch, users - s)
                    evaluator.rankTargets(users: U.base + s * C, count: n, items: E.base, targets: tg.baseAddress! + s, into: &acc)
                    s += n
                }
            }
            best = min(best, benchNow() - t0)
        }
        return best
    }
}
