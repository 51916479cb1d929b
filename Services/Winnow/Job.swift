import ArgumentParser
import Foundation
import Methods
import Jobs
import RPC
import Store
import SwiftProtobuf
import WinnowProto

/// `winnow job submit|status|cancel|list`: training jobs on the trainer service of a running
/// stack (`winnow up`).
struct Job: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Submit, watch, cancel and list training jobs on the trainer service.",
        subcommands: [JobSubmit.self, JobStatus.self, JobCancel.self, JobList.self]
    )
}

/// Talking to the trainer (and, for datasets, the feature store) through the broker.
struct TrainerClient {
    let client: RPCClient
    let timeout: Duration

    init(_ connection: ConnectionOptions) throws {
        client = try connection.client(for: "trainer")
        timeout = connection.timeout
    }

    func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ method: String, _ r: Req, _ t: Res.Type,
                                                                      idempotent: Bool = true) async throws -> Res {
        try await client.call(service: "trainer", method: method, r, as: t, timeout: timeout, idempotent: idempotent)
    }

    func progress(_ id: String) async throws -> Winnow_V1_JobProgress {
        var r = Winnow_V1_GetProgressRequest(); r.jobID = id
        return try await call("GetProgress", r, Winnow_V1_JobProgress.self)
    }

    /// The dataset a `--dataset` names: a dataset id the feature store holds, or a RecBole
    /// .inter file (or `ml-100k`) ingested first and built as the protocol builds it
    /// (5-core, leave-one-out) — a no-op when the store holds both already.
    func dataset(_ name: String) async throws -> String {
        let store = RemoteFeatureStore(client: client, timeout: max(timeout, .seconds(600)))
        let isFile = name == "ml-100k" || FileManager.default.fileExists(atPath: name)
        if !isFile {
            var get = Winnow_V1_GetDatasetRequest(); get.datasetID = name
            do { return try await store.callGetDataset(get).datasetID } catch let e as RPCError where e.code == .notFound {
                throw ValidationError("--dataset \(name): neither a file nor a dataset of the feature store (\(e.message))")
            }
        }
        let path = try Train.resolve(name)
        let ingested = try await FileIngest(path: path, format: .recboleInter).run(on: store)
        FileHandle.standardError.write(Data("\(path): \(ingested.alreadyCommitted ? "already ingested" : "ingested"), \(ingested.rows) rows\n".utf8))
        var build = Winnow_V1_BuildDatasetRequest()
        build.spec.kCore = 5
        build.spec.split = .leaveOneOut
        let store2 = store
        let built = try await store2.client.call(service: store2.service, method: "BuildDataset", build, as: Winnow_V1_BuildDatasetResponse.self,
                                                 timeout: max(timeout, .seconds(600)), idempotent: true)
        return built.dataset.datasetID
    }

    /// Polls the job until it ends, drawing a progress line; returns its last progress.
    func watch(_ id: String, draw: Bool) async throws -> Winnow_V1_JobProgress {
        var last = ""
        while true {
            let p = try await progress(id)
            if draw {
                let line = Self.line(p)
                if line != last { FileHandle.standardError.write(Data(("\r" + line + "   ").utf8)); last = line }
            }
            if ![.queued, .running].contains(p.state) {
                if draw { FileHandle.standardError.write(Data("\n".utf8)) }
                return p
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    /// One line: stage, epoch, a bar over the epoch's steps, loss, validation NDCG@10, ETA.
    static func line(_ p: Winnow_V1_JobProgress) -> String {
        switch p.state {
        case .queued: return "\(p.jobID): queued"
        case .running:
            let width = 20
            let fraction = p.totalSteps > 0 ? Double(p.step) / Double(p.totalSteps) : 0
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            var s = "\(p.jobID): running \(p.stage) epoch \(p.epoch) [\(bar)] loss \(String(format: "%.4f", p.loss))"
            if let n = p.validation["ndcg@10"] { s += String(format: "  valid ndcg@10 %.4f", n) }
            if p.etaMicros > 0 { s += "  ETA \(Self.duration(Double(p.etaMicros) / 1e6))" }
            return s
        default: return "\(p.jobID): \(name(p.state))"
        }
    }

    static func duration(_ s: Double) -> String {
        s >= 3600 ? String(format: "%dh%02dm", Int(s) / 3600, Int(s) % 3600 / 60) : s >= 60 ? String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60) : String(format: "%.0fs", s)
    }

    static func name(_ s: Winnow_V1_JobState) -> String {
        switch s {
        case .queued: return "queued"
        case .running: return "running"
        case .succeeded: return "succeeded"
        case .failed: return "failed"
        case .cancelledByUser: return "cancelled"
        default: return "unknown"
        }
    }

    /// The end of a job as the CLI reports it; writes the result JSON to `json` when given.
    static func report(_ p: Winnow_V1_JobProgress, json: String?) throws {
        guard p.state == .succeeded else {
            throw ValidationError("job \(p.jobID) \(name(p.state))" + (p.error.isEmpty ? "" : ": \(p.error)"))
        }
        let keys = ["ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20", "mrr@20"]
        print("\(p.jobID): succeeded" + (p.modelName.isEmpty ? "" : ", published \(p.modelName) v\(p.modelVersion)"))
        for (name, m) in [("valid", p.validation), ("test", p.test)] {
            print("  \(name): " + keys.map { "\($0) \(String(format: "%.4f", m[$0] ?? 0))" }.joined(separator: "  "))
        }
        if let json {
            guard !p.resultJson.isEmpty else { throw ValidationError("job \(p.jobID): the trainer sent no result JSON") }
            let tmp = json + ".partial"
            try Data(p.resultJson.utf8).write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, json) == 0 else { throw ValidationError("cannot write \(json): errno \(errno)") }
        }
    }

    /// Submits `job` on `dataset` (name or file); returns the job id.
    func submit(_ job: JobConfig, dataset: String, name: String?, publish: Bool) async throws -> String {
        var r = Winnow_V1_SubmitJobRequest()
        r.spec.name = name ?? ""
        r.spec.datasetID = try await self.dataset(dataset)
        r.spec.configYaml = String(decoding: try JSONEncoder().encode(job), as: UTF8.self)
        r.spec.publish = publish
        // not idempotent: a retried submission could be refused as a duplicate of itself
        return try await call("SubmitJob", r, Winnow_V1_SubmitJobResponse.self, idempotent: false).jobID
    }
}

struct JobSubmit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "submit", abstract: "Submit a job file to the trainer.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The job file (.json, or .yaml in JSON/flow style), as `winnow experiment job` reads it.") var file: String
    @Option(help: "A dataset id of the feature store, ml-100k, or a RecBole .inter file to ingest and build first (5-core, leave-one-out).")
    var dataset: String
    @Option(help: "The job's id (default: one the trainer makes).") var name: String?
    @Flag(help: "Promote the student in the model registry when the job succeeds.") var publish = false
    @Flag(help: "Show a live progress line and end with the result's metrics.") var watch = false
    @Option(help: "With --watch: write the result JSON here.") var json: String?

    func run() async throws {
        let job = try JobConfig.load(path: file)
        let trainer = try TrainerClient(connection)
        let id = try await trainer.submit(job, dataset: dataset, name: name, publish: publish)
        guard watch else { print(id); return }
        try TrainerClient.report(try await trainer.watch(id, draw: true), json: json)
    }
}

struct JobStatus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "A job's state and progress.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Job id.") var id: String
    func run() async throws {
        let p = try await TrainerClient(connection).progress(id)
        print(TrainerClient.line(p))
        if !p.error.isEmpty { print("  error: \(p.error)") }
        if !p.test.isEmpty { print("  test ndcg@10 \(String(format: "%.4f", p.test["ndcg@10"] ?? 0))  hr@10 \(String(format: "%.4f", p.test["hr@10"] ?? 0))") }
    }
}

struct JobCancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a queued or running job.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Job id.") var id: String
    func run() async throws {
        var r = Winnow_V1_CancelJobRequest(); r.jobID = id
        let state = try await TrainerClient(connection).call("CancelJob", r, Winnow_V1_CancelJobResponse.self).state
        print("\(id): \(TrainerClient.name(state))")
    }
}

struct JobList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "Every job the trainer knows, oldest first.")
    @OptionGroup var connection: ConnectionOptions
    func run() async throws {
        let jobs = try await TrainerClient(connection).call("ListJobs", Winnow_V1_ListJobsRequest(), Winnow_V1_ListJobsResponse.self).jobs
        if jobs.isEmpty { print("no jobs") }
        for p in jobs { print(TrainerClient.line(p)) }
    }
}
