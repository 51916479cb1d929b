import ArgumentParser
import Foundation
import Numerics
import Data
import Models
import Training
import Methods
import Jobs

/// `winnow train`: the base seq2item training run of the protocol — leave-one-out split,
/// full-softmax CE (at every position of windows by default, or per prefix), Adam, early stopping
/// on validation NDCG@10, full-ranking test metrics of the best-validation weights — as a job of
/// the trainer service of the stack `--state-dir` names, or with `--local` in this process. Both
/// write the same result JSON.
struct Train: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a sequential recommender and evaluate it by full ranking."
    )

    @Flag(help: "Train in this process, without the trainer service.")
    var local = false

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Backbone: \(ModelKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var model: ModelKind

    @Option(help: "ml-100k (the cache of scripts/fetch-ml100k) or a RecBole .inter file.")
    var dataset: String

    @Option(help: "Seed for initialisation, dropout and shuffling.")
    var seed: UInt64 = 1

    @Option(help: "Maximum epochs (early stopping may end sooner).")
    var epochs = 200

    @Option(help: "Early-stopping patience in epochs without a better validation NDCG@10.")
    var patience = 10

    @Option(help: "How targets reach the model: all_positions (windows, loss at every position) or prefixes (one row per target).")
    var scheme = TrainingScheme.allPositions

    @Option(help: "Rows per batch, windows or prefixes (default: 128 windows, 256 prefixes).")
    var batchSize: Int?

    @Option(help: "Adam's learning rate.")
    var lr = LoopConfig().learningRate

    @Option(help: "With --local: threads of Winnow's loops and products; results are reproducible for a fixed count (the trainer service trains with its own, WINNOW_TRAIN_THREADS).")
    var threads = 2

    @Option(help: "Write the result JSON to this file.")
    var json: String?

    @Option(help: ArgumentHelp("With --local: save the run's state to this file after every epoch; when the file exists, continue from it (the trainer service checkpoints every job itself).",
                               discussion: "A continued run gives the figures of one that never stopped (same seed and --threads)."))
    var checkpoint: String?

    @Flag(help: "No per-epoch progress on stderr.")
    var quiet = false

    func validate() throws {
        if !local, checkpoint != nil {
            throw ValidationError("--checkpoint is for --local runs; the trainer service checkpoints every job under its state directory")
        }
        guard epochs >= 1, patience >= 1, threads >= 1, (batchSize ?? 1) >= 1 else {
            throw ValidationError("--epochs, --patience, --batch-size and --threads must be >= 1")
        }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
    }

    /// The .inter file for `--dataset`.
    static func resolve(_ dataset: String) throws -> String {
        if dataset == "ml-100k" {
            let env = ProcessInfo.processInfo.environment
            let dir = env["WINNOW_DATA_DIR"] ?? (NSHomeDirectory() + "/.cache/winnow/data")
            let path = dir + "/ml-100k/ml-100k.inter"
            guard FileManager.default.fileExists(atPath: path) else {
                throw ValidationError("ml-100k is not in the cache (\(path)); run scripts/fetch-ml100k first")
            }
            return path
        }
        guard FileManager.default.fileExists(atPath: dataset) else {
            throw ValidationError("dataset \(dataset): no such file (give ml-100k or a RecBole .inter file)")
        }
        return dataset
    }

    /// The job these flags describe: base training of the backbone under the protocol.
    var job: JobConfig {
        var job = JobConfig(backbone: model)
        job.loop.seed = seed; job.loop.maxEpochs = epochs; job.loop.patience = patience
        job.loop.scheme = scheme; job.loop.batchSize = batchSize ?? LoopConfig.defaultBatchSize(scheme); job.loop.learningRate = lr
        return job
    }

    func run() async throws {
        guard local else {
            // the stack's trainer: the dataset from the feature store (ingested first when a file)
            let trainer = try TrainerClient(connection)
            let id = try await trainer.submit(job, dataset: dataset, name: nil, publish: false)
            FileHandle.standardError.write(Data("submitted job \(id) to the trainer at \(connection.target)\n".utf8))
            try TrainerClient.report(try await trainer.watch(id, draw: !quiet), json: json)
            return
        }
        Threads.set(threads)
        let path = try Self.resolve(dataset)
        let interactions = try InterReader().read(path: path)
        let data = SequenceDataset(interactions)
        guard data.userCount > 0, data.itemCount > 0 else {
            throw ValidationError("\(path): nothing left after 5-core filtering")
        }
        let err = FileHandle.standardError
        err.write("data: \(data.userCount) users, \(data.itemCount) items, \(data.interactionCount) interactions, \(LeaveOneOut(data).train.count) training targets (\(scheme.rawValue))\n".data(using: .utf8)!)
        let result: JobResult
        do {
            result = try JobRunner.run(job, data: data, progress: quiet ? nil : { err.write(($0 + "\n").data(using: .utf8)!) },
                                       control: JobControl(checkpoints: checkpoint))
        } catch { throw ValidationError("\(error)") }
        let keys = ["ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20", "mrr@20"]
        print("\(model.rawValue) seed \(seed): \(result.epochs) epochs, best \(result.bestEpoch), \(String(format: "%.1f", result.seconds)) s")
        for (name, m) in [("valid", result.valid), ("test", result.test)] {
            print("  \(name): " + keys.map { "\($0) \(String(format: "%.4f", m[$0] ?? 0))" }.joined(separator: "  "))
        }
        if let json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            let tmp = json + ".partial"
            try enc.encode(result).write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, json) == 0 else { throw ValidationError("cannot write \(json): errno \(errno)") }
        }
    }
}

extension ModelKind: ExpressibleByArgument {}
extension TrainingScheme: ExpressibleByArgument {}
