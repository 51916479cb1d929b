// Timings of the data pipeline and full-ranking evaluation, built by scripts/bench-data-eval.
//   DataEvalBench inter FILE                 read + 5-core + sequences + leave-one-out of FILE
//   DataEvalBench synth FILE LINES           write a synthetic .inter of LINES rows (seeded)
//   DataEvalBench rank USERS ITEMS DIM       full ranking (sgemm + rank + top-50) timing
//   DataEvalBench dump FILE OUT              5-core sequences of FILE as text (compare with the
//                                            reference's --dump-sequences)
import Data
import Evaluation
#if canImport(Glibc)
import Glibc
#endif

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// CPU seconds of this process (all threads): less sensitive than wall time to a busy machine.
func cpu() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func fail(_ message: String) -> Never {
    fputs("DataEvalBench: \(message)\n", stderr)
    exit(2)
}

let args = CommandLine.arguments
guard args.count >= 3 else { fail("usage: inter FILE | synth FILE LINES | rank USERS ITEMS DIM") }

switch args[1] {
case "inter":
    let t0 = now(), c0 = cpu()
    let x: Interactions
    do { x = try InterReader().read(path: args[2]) } catch { fail("\(error)") }
    let t1 = now(), c1 = cpu()
    let d = SequenceDataset(x)
    let t2 = now(), c2 = cpu()
    let split = LeaveOneOut(d)
    let t3 = now()
    print("{\"file\":\"\(args[2])\",\"rows\":\(x.count),\"users\":\(d.userCount),\"items\":\(d.itemCount)," +
          "\"kept\":\(d.interactionCount),\"train_instances\":\(split.train.count)," +
          "\"read_s\":\(t1 - t0),\"read_cpu_s\":\(c1 - c0),\"kcore_sequences_cpu_s\":\(c2 - c1),\"rows_per_s\":\(Double(x.count) / (t1 - t0)),\"kcore_sequences_s\":\(t2 - t1)," +
          "\"split_s\":\(t3 - t2)}")
case "synth":
    guard args.count >= 4, let lines = Int(args[3]) else { fail("synth FILE LINES") }
    guard let f = fopen(args[2], "w") else { fail("cannot write \(args[2])") }
    var rng = SplitMix64(seed: 1)
    let users = max(lines / 20, 1), items = max(lines / 200, 1)
    fputs("user_id:token\titem_id:token\trating:float\ttimestamp:float\n", f)
    var buf = ""
    for r in 0..<lines {
        // Zipf-like items: the minimum of two uniforms skews toward low ids.
        let item = min(rng.bounded(items), rng.bounded(items))
        buf += "\(rng.bounded(users))\t\(item)\t\(1 + rng.bounded(5))\t\(880_000_000 + r)\n"
        if buf.utf8.count > 1 << 20 { fputs(buf, f); buf = "" }
    }
    fputs(buf, f)
    fclose(f)
case "rank":
    guard args.count >= 5, let U = Int(args[2]), let N = Int(args[3]), let d = Int(args[4]) else { fail("rank USERS ITEMS DIM") }
    var rng = SplitMix64(seed: 2)
    let users = UnsafeMutablePointer<Float>.allocate(capacity: U * d)
    let items = UnsafeMutablePointer<Float>.allocate(capacity: N * d)
    for i in 0..<(U * d) { users[i] = Float(rng.next() >> 40) / 16_777_216 - 0.5 }
    for i in 0..<(N * d) { items[i] = Float(rng.next() >> 40) / 16_777_216 - 0.5 }
    let targets = (0..<U).map { _ in Int32(1 + rng.bounded(N)) }
    let B = 256
    let ev = RankingEvaluator(itemCount: N, dim: d, maxBatch: B, ks: [10, 20])
    var best = Double.infinity, bestCPU = Double.infinity, checksum = 0.0
    for _ in 0..<3 {
        var acc = MetricAccumulator()
        let t0 = now(), c0 = cpu()
        var s = 0
        while s < U {
            let n = min(B, U - s)
            targets.withUnsafeBufferPointer { t in
                ev.rankTargets(users: users + s * d, count: n, items: items, targets: t.baseAddress! + s, into: &acc)
            }
            s += n
        }
        best = min(best, now() - t0)
        bestCPU = min(bestCPU, cpu() - c0)
        checksum = acc.means["ndcg@10"] ?? -1
    }
    var bestTop = Double.infinity
    let top = UnsafeMutablePointer<Int32>.allocate(capacity: B * 50)
    for _ in 0..<3 {
        let t0 = now()
        var s = 0
        while s < U {
            let n = min(B, U - s)
            ev.topK(users: users + s * d, count: n, items: items, k: 50, out: top)
            s += n
        }
        bestTop = min(bestTop, now() - t0)
    }
    print("{\"users\":\(U),\"items\":\(N),\"dim\":\(d),\"batch\":\(B),\"rank_s\":\(best),\"rank_cpu_s\":\(bestCPU),\"top50_s\":\(bestTop),\"ndcg@10\":\(checksum)}")
case "dump":
    guard args.count >= 4 else { fail("dump FILE OUT") }
    let d: SequenceDataset
    do { d = try SequenceDataset.load(args[2]) } catch { fail("\(error)") }
    var out = ""
    for u in 0..<d.userCount {
        out += d.userToken(Int32(u)) + "\t" + d.sequence(u).map { "\(d.itemToken($0))=\($0)" }.joined(separator: " ") + "\n"
    }
    guard let f = fopen(args[3], "w") else { fail("cannot write \(args[3])") }
    fputs(out, f)
    fclose(f)
default:
    fail("unknown mode \(args[1])")
}
