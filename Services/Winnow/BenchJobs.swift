import ArgumentParser
import Data
import Foundation
import Jobs
import Methods
import Numerics
import Remote
import RPC
import Store
import WinnowProto

/// `winnow bench jobs`: training that crosses the stack beside the same training in one process.
/// CSRec-M's student with its two teachers in teacher processes, and ATJT's recommender with its
/// two recognisers in noise processes (pipelined, and not), against the same job in one process,
/// same data, seed, epochs and threads; then one member's soft-label throughput as its replicas
/// grow from 1 to 2 to 4. Needs a running stack with four teacher processes and a noise process
/// (`winnow up --teachers 4`; `--noise 2` puts the two groups in two processes); this process
/// plays the trainer.
struct BenchJobs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "CSRec-M's student through teacher processes and ATJT's through noise processes vs in one process; soft-label throughput over 1, 2, 4 replicas (needs winnow up --teachers 4 --noise 2).")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "ml-100k, a RecBole .inter file or a dataset id of the feature store.")
    var dataset = "ml-100k"

    @Option(help: "Epochs of every fit (teachers and student; no early stop).")
    var epochs = 3

    @Option(help: "Threads of this process's training (the teacher processes train with WINNOW_TRAIN_THREADS, default 1).")
    var threads = 1

    @Option(help: "Seconds of soft-label requests per replica count.")
    var seconds = 6.0

    @Option(help: "Soft-label requests in flight at once.")
    var inFlight = 8

    @Option(help: "Write the rows as JSON to this file.")
    var json: String?

    func run() throws {
        Threads.set(threads)
        let trainer = try TrainerClient(connection)
        let name = dataset
        let datasetID = try blocking { try await trainer.dataset(name) }
        let store = RemoteFeatureStore(client: trainer.client, timeout: .seconds(600))
        let data = try blocking { try await SnapshotCache().snapshot(datasetID, from: store).sequenceDataset }
        var job = JobConfig(backbone: .sasrec)
        job.methods = try JobMethods(parsing: "csrec-m")
        job.loop.maxEpochs = epochs; job.loop.patience = epochs + 1; job.loop.seed = 1
        let tag = String(UInt32.random(in: 0 ... .max), radix: 16)
        print("CSRec-M (2 teachers), SASRec on \(data.userCount) users × \(data.itemCount) items, \(epochs) epochs per fit, \(threads) thread(s) here")

        let local = try JobRunner.run(job, data: data)
        let localEpoch = local.stages["final"]!.seconds / Double(local.epochs)
        print(String(format: "  in one process:  teachers %.1f s, student %.2f s/epoch, test ndcg@10 %.6f", local.teacherSeconds, localEpoch,
                     local.test["ndcg@10"] ?? 0))
        var rows: [BenchRow] = []
        for pipelined in [true, false] {
            let teachers = RemoteTeachers(jobID: "bench-\(tag)-\(pipelined ? "pipelined" : "serial")", datasetID: datasetID, broker: trainer.client)
            teachers.pipelined = pipelined
            defer { teachers.releaseAll() }
            let remote = try JobRunner.run(job, data: data, teachers: teachers)
            rows += compare("csrec_m2", remote: remote, local: local, pipelined: pipelined)
            let suffix = pipelined ? "" : "_not_pipelined"
            rows.append(.time("jobs_csrec_m2_teachers" + suffix, winnow: remote.teacherSeconds, reference: local.teacherSeconds))
        }

        // ATJT: its two groups' recognisers in noise processes
        var atjt = job
        atjt.methods = try JobMethods(parsing: "atjt")
        print("ATJT (2 groups), same backbone, data and epochs")
        let localATJT = try JobRunner.run(atjt, data: data)
        print(String(format: "  in one process:  student %.2f s/epoch, test ndcg@10 %.6f", localATJT.stages["final"]!.seconds / Double(localATJT.epochs),
                     localATJT.test["ndcg@10"] ?? 0))
        for pipelined in [true, false] {
            let recognisers = RemoteRecognisers(jobID: "bench-\(tag)-atjt-\(pipelined ? "pipelined" : "serial")", datasetID: datasetID,
                                                broker: trainer.client)
            recognisers.pipelined = pipelined
            defer { recognisers.releaseAll() }
            let remote = try JobRunner.run(atjt, data: data, recognisers: recognisers)
            rows += compare("atjt", remote: remote, local: localATJT, pipelined: pipelined)
        }

        rows += try softLabelThroughput(job: job, data: data, datasetID: datasetID, broker: trainer.client, tag: tag)
        print("")
        BenchOutput.printTable(rows)
        if let json { try BenchOutput.writeJSON(rows, to: json) }
    }

    /// The student's epoch through the stack against in one process (ratio = the stack's
    /// student steps/s ÷ in-process), and whether the test metrics are the same.
    private func compare(_ name: String, remote: JobResult, local: JobResult, pipelined: Bool) -> [BenchRow] {
        let epoch = remote.stages["final"]!.seconds / Double(remote.epochs)
        let localEpoch = local.stages["final"]!.seconds / Double(local.epochs)
        let same = remote.test == local.test
        print(String(format: "  through the stack (%@): %@student %.2f s/epoch, test ndcg@10 %.6f (%@)",
                     pipelined ? "pipelined" : "not pipelined",
                     remote.teacherSeconds > 0 ? String(format: "teachers %.1f s, ", remote.teacherSeconds) : "", epoch,
                     remote.test["ndcg@10"] ?? 0, same ? "the same metrics" : "METRICS DIFFER"))
        let suffix = pipelined ? "" : "_not_pipelined"
        return [.time("jobs_\(name)_student_epoch" + suffix, winnow: epoch, reference: localEpoch, goal: pipelined ? 0.9 : nil),
                .time("jobs_\(name)_test_metrics_differ" + suffix, winnow: same ? 0 : 1, reference: nil, budget: 0, unit: "bool")]
    }

    /// Rows per second one member answers with 1, 2 and 4 processes serving it, requests of a
    /// training batch's rows (every position of 128 training sequences, in replies of ≤ 8 MB).
    private func softLabelThroughput(job: JobConfig, data: SequenceDataset, datasetID: String, broker: RPCClient,
                                     tag: String) throws -> [BenchRow] {
        let T = job.loop.maxLength, N = data.itemCount
        var requests: [Winnow_V1_SoftLabelsRequest] = []
        var sequences: [Winnow_V1_ItemSequence] = [], rowSeq: [Int32] = [], rowPos: [Int32] = []
        for u in 0..<min(128, data.userCount) {
            let items = Array(data.sequence(u).dropLast(2).suffix(T))
            guard !items.isEmpty else { continue }
            var s = Winnow_V1_ItemSequence(); s.items = items
            for t in 0..<items.count { rowSeq.append(Int32(sequences.count)); rowPos.append(Int32(t)) }
            sequences.append(s)
        }
        let per = max(1, (8 << 20) / (4 * N))
        var start = 0
        while start < rowSeq.count {
            let end = min(rowSeq.count, start + per)
            var r = Winnow_V1_SoftLabelsRequest()
            r.sequences = sequences; r.returnLogits = true
            r.rowSequences = Array(rowSeq[start..<end]); r.rowPositions = Array(rowPos[start..<end])
            requests.append(r)
            start = end
        }
        let teachers = RemoteTeachers(jobID: "bench-\(tag)-replicas", datasetID: datasetID, broker: broker)
        defer { teachers.releaseAll() }
        let service = "teacher/bench-\(tag)-replicas/m0", seconds = self.seconds, inFlight = self.inFlight
        let batch = requests
        print("\nsoft labels of one member: \(rowSeq.count) rows per batch in \(requests.count) requests of ≤ \(per) rows × \(N) logits, \(inFlight) in flight")
        var rows: [BenchRow] = [], single: Double? = nil
        for replicas in [1, 2, 4] {
            let serving = try teachers.serve(.csrec(.ensemble(0)), of: job, replicas: replicas)
            guard serving == replicas else {
                print("  \(replicas) replicas: only \(serving) teacher processes are free (winnow up --teachers 4); stopped")
                break
            }
            let (answered, elapsed) = try blocking { () -> (Int, Double) in
                let t0 = Date()
                var answered = 0, next = 0
                try await withThrowingTaskGroup(of: Int.self) { group in
                    func send() {
                        let r = batch[next % batch.count]; next += 1
                        group.addTask {
                            _ = try await broker.call(service: service, method: "SoftLabels", r, as: Winnow_V1_SoftLabelsResponse.self,
                                                      timeout: .seconds(60), idempotent: true)
                            return r.rowSequences.count
                        }
                    }
                    for _ in 0..<inFlight { send() }
                    while let n = try await group.next() {
                        answered += n
                        if Date().timeIntervalSince(t0) < seconds { send() }
                    }
                }
                return (answered, Date().timeIntervalSince(t0))
            }
            let rate = Double(answered) / elapsed
            if single == nil { single = rate }
            print(String(format: "  %d replica(s): %.0f rows/s (%.0f MB/s of logits)", replicas, rate, rate * Double(N) * 4 / 1e6))
            // the reference is one replica: ratio = the scaling
            rows.append(.rate("soft_labels_rows_per_s_\(replicas)_replicas", unit: "rows/s", winnow: rate, reference: replicas == 1 ? nil : single))
        }
        return rows
    }
}
