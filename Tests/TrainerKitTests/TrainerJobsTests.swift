import Foundation
import Numerics
import Models
import Data
import Training
import Methods
@testable import Jobs
import RPC
import Store
import StoreTestSupport
@testable import TrainerKit
import WinnowProto
import XCTest

/// The trainer's jobs against a real feature store (embedded Postgres): a job runs on the store's
/// snapshot as it runs in process, bad submissions are refused naming the field, cancellation
/// frees the job's state, and a stopped trainer's job continues from its checkpoint.
final class TrainerJobsTests: XCTestCase {
    var store: FeatureStore!
    var datasetID = ""
    var directory = ""

    override func setUp() async throws {
        store = try FeatureStore(url: try TestDatabase.fresh("trainer"), poolSize: 4)
        _ = try await FileIngest(path: try itemCyclesFile(seed: 11, name: "trainer-cycles.inter", rating: true), format: .recboleInter).run(on: store)
        datasetID = try store.buildDataset(interSpec(k: 0)).dataset.datasetID
        directory = NSTemporaryDirectory() + "winnow-trainer-\(UUID().uuidString)"
        Threads.set(1)
    }

    override func tearDown() async throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func jobFile(_ methods: String = "{}", epochs: Int = 3, patience: Int = 10) -> String {
        #"{"backbone": "sasrec", "dim": 8, "blocks": 1, "loop": {"max_epochs": \#(epochs), "patience": \#(patience), "max_length": 8, "batch_size": 16, "seed": 2}, "methods": \#(methods)}"#
    }

    func submit(_ jobs: TrainerJobs, _ file: String, name: String = "", publish: Bool = false, dataset: String? = nil) async throws -> String {
        var r = Winnow_V1_SubmitJobRequest()
        r.spec.name = name; r.spec.datasetID = dataset ?? datasetID; r.spec.configYaml = file; r.spec.publish = publish
        return try await jobs.submit(r).jobID
    }

    /// The same job in this process, on the dataset the snapshot carries.
    func inProcess(_ file: String) async throws -> JobResult {
        let data = try await SnapshotCache().snapshot(datasetID, from: store).sequenceDataset
        return try JobRunner.run(try JobConfig.parse(Foundation.Data(file.utf8)), data: data)
    }

    func testAJobRunsAsItRunsInProcessAndPublishesItsStudent() async throws {
        let jobs = try TrainerJobs(directory: directory, store: store)
        jobs.start()
        defer { jobs.stop() }
        for (methods, publish) in [("{}", true), (#"{"csrec": {"m": 2}}"#, false)] {
            let file = jobFile(methods)
            let id = try await submit(jobs, file, publish: publish)
            XCTAssertEqual(jobs.wait(id, timeout: 120), .succeeded, (try? jobs.progress(id).error) ?? "")
            let result = try XCTUnwrap(jobs.result(id))
            let local = try await inProcess(file)
            XCTAssertEqual(result.test, local.test, methods)
            XCTAssertEqual(result.valid, local.valid, methods)
            XCTAssertEqual(result.bestEpoch, local.bestEpoch, methods)
            let p = try jobs.progress(id)
            XCTAssertEqual(p.state, .succeeded); XCTAssertEqual(p.test["ndcg@10"], local.test["ndcg@10"])
            XCTAssertEqual(p.modelName, studentModelName)
            // the registry holds the student: its weights rank the test users as the job's did
            let (meta, bytes) = try await ModelTransfer.download(name: p.modelName, version: p.modelVersion, from: store)
            XCTAssertEqual(meta.datasetID, datasetID)
            XCTAssertEqual(meta.metrics["test_ndcg@10"], local.test["ndcg@10"])
            let model = try ModelArtifact(decoding: bytes).backbone()
            let data = try await SnapshotCache().snapshot(datasetID, from: store).sequenceDataset
            XCTAssertEqual(LabelEvaluation.fullRanking(model, data: data, instances: LeaveOneOut(data).test, maxLength: 8), local.test)
            if publish {
                let (promoted, _) = try await ModelTransfer.download(name: studentModelName, from: store)
                XCTAssertEqual(promoted.version, p.modelVersion, "a job that asks to publish promotes its student")
            }
        }
        XCTAssertEqual(jobs.list().jobs.count, 2)
    }

    func testBadSubmissionsAreRefusedNamingTheFieldAndCreateNothing() async throws {
        let jobs = try TrainerJobs(directory: directory, store: store)
        func refusal(_ file: String, name: String = "", dataset: String? = nil, backbone: String = "", methods: [String] = []) async -> RPCError? {
            var r = Winnow_V1_SubmitJobRequest()
            r.spec.name = name; r.spec.datasetID = dataset ?? datasetID; r.spec.configYaml = file
            r.spec.backbone = backbone; r.spec.methods = methods
            do { _ = try await jobs.submit(r); return nil } catch { return error as? RPCError }
        }
        let cases: [(RPCError?, String)] = [
            (await refusal(jobFile(#"{"bert": {}}"#)), "config_yaml"),
            (await refusal(jobFile(#"{"dss": {}, "atjt": {}}"#)), "cannot be composed"),
            (await refusal("{\"backbone\": "), "config_yaml"),
            (await refusal(jobFile(), dataset: "no-such-dataset"), "spec.dataset_id"),
            (await refusal(jobFile(), dataset: ""), "spec.dataset_id"),
            (await refusal("", backbone: "bert4rec"), "spec.backbone"),
            (await refusal("", backbone: "sasrec", methods: ["atjt", "wslrec"]), "spec.methods"),
            (await refusal(jobFile(), backbone: "gru4rec"), "spec.backbone"),
            (await refusal(jobFile(), name: "../escape"), "spec.name"),
        ]
        for (error, field) in cases {
            XCTAssertEqual(error?.code, .invalidArgument, field)
            XCTAssertTrue(error?.message.contains(field) == true, "\(field): \(String(describing: error))")
        }
        XCTAssertTrue(jobs.list().jobs.isEmpty, "no job was created")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0 != "snapshots" }, [])
        _ = try await submit(jobs, jobFile(), name: "twice")
        let again = await refusal(jobFile(), name: "twice")
        XCTAssertEqual(again?.code, .alreadyExists)
        XCTAssertThrowsError(try jobs.progress("nobody")) { XCTAssertEqual(($0 as? RPCError)?.code, .notFound) }
    }

    func testCancellingARunningJobFreesItsState() async throws {
        let jobs = try TrainerJobs(directory: directory, store: store)
        jobs.start()
        defer { jobs.stop() }
        let id = try await submit(jobs, jobFile(epochs: 500, patience: 500))
        // cancelled once it has checkpointed
        let deadline = Date().addingTimeInterval(60)
        while (try jobs.progress(id)).epoch < 2, Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
        XCTAssertGreaterThanOrEqual(try jobs.progress(id).epoch, 2)
        XCTAssertEqual(try jobs.cancel(id).state, .cancelledByUser)
        XCTAssertEqual(try jobs.progress(id).state, .cancelledByUser)
        let left = try FileManager.default.contentsOfDirectory(atPath: jobs.jobDirectory(id))
        XCTAssertEqual(left, ["job.json"], "checkpoints removed")
        XCTAssertEqual(try jobs.cancel(id).state, .cancelledByUser, "cancelling again changes nothing")
    }

    func testAStoppedTrainerResumesItsJobAndEndsAsAnUninterruptedRun() async throws {
        let file = jobFile(epochs: 8, patience: 8)
        var jobs: TrainerJobs? = try TrainerJobs(directory: directory, store: store)
        jobs!.start()
        let id = try await submit(jobs!, file, name: "resumed")
        let deadline = Date().addingTimeInterval(60)
        while (try jobs!.progress(id)).epoch < 3, Date() < deadline { try await Task.sleep(for: .milliseconds(2)) }
        jobs!.stop()   // as if the process died: the job stays running on disk
        XCTAssertEqual(try jobs!.progress(id).state, .running)
        jobs = nil
        let restarted = try TrainerJobs(directory: directory, store: store)
        XCTAssertEqual(try restarted.progress(id).state, .running)
        restarted.start()
        defer { restarted.stop() }
        XCTAssertEqual(restarted.wait(id, timeout: 120), .succeeded, (try? restarted.progress(id).error) ?? "")
        let result = try XCTUnwrap(restarted.result(id))
        let whole = try await inProcess(file)
        XCTAssertEqual(result.test, whole.test)
        XCTAssertEqual(result.log?.map(\.loss), whole.log?.map(\.loss))
        XCTAssertEqual(result.epochs, 8)
    }
}
