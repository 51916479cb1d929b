import BrokerKit
import Foundation
import Numerics
import Models
import Data
import Training
import Methods
import Jobs
import RPC
@testable import Remote
import ServiceKit
import Store
import StoreTestSupport
import SwiftProtobuf
@testable import TeacherKit
import WinnowProto
import XCTest

/// Teachers over real loopback sockets: a broker, the feature store and three teacher services
/// registered with it as their processes wire them. A CSRec job whose teachers train and answer
/// there ends with the metrics of the same job in one process, pipelined or not; every bad
/// request is refused naming its field; a busy teacher refuses a second member.
final class TeacherServiceTests: XCTestCase {
    var services: LoopbackServices!
    var workers: [TeacherWorker] = []
    var client: RPCClient { services.client }
    var store: FeatureStore { services.store }
    var datasetID: String { services.datasetID }
    var runtimes: [ServiceRuntime] { services.runtimes }

    override func setUp() async throws {
        Threads.set(1)
        services = try await LoopbackServices(label: "teacher", file: try itemCyclesFile(seed: 5, name: "teacher-cycles.inter"))
        for _ in 0..<3 {
            let t = try services.runtime(kind: "teacher")
            let w = TeacherWorker(store: RemoteFeatureStore(client: client), broker: services.broker.endpoint)
            w.register(on: t.server)
            workers.append(w)
            try await services.serve(t)
        }
    }

    override func tearDown() async throws {
        for w in workers { _ = w.release(Winnow_V1_ReleaseTeacherRequest()) }
        services?.stop()
    }

    func job(_ csrec: String, seed: Int = 2) throws -> JobConfig {
        try JobConfig.parse(Foundation.Data(#"{"backbone": "sasrec", "dim": 8, "blocks": 1, "loop": {"max_epochs": 3, "patience": 3, "max_length": 8, "batch_size": 16, "seed": \#(seed)}, "methods": {"csrec": \#(csrec)}}"#.utf8))
    }

    func data() async throws -> SequenceDataset { try await services.data() }

    func teacherCall<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ service: String, _ method: String, _ r: Req,
                                                                             _ t: Res.Type) async throws -> Res {
        try await client.call(service: service, method: method, r, as: t, timeout: .seconds(30))
    }

    /// WSLRec across processes: stage 1 trains in a teacher process and is published with its
    /// dropout generator, stage 2 mines there (`MineTopK`), stage 3 fine-tunes in the trainer
    /// from the downloaded model: the same metrics as the three stages in one process.
    func testAWSLRecJobWhosePretrainingAndMiningRunInATeacherServiceEqualsTheJobInOneProcess() async throws {
        let data = try await data()
        let job = try JobConfig.parse(Foundation.Data(#"{"backbone": "sasrec", "dim": 8, "blocks": 1, "loop": {"max_epochs": 3, "patience": 3, "max_length": 8, "batch_size": 16, "seed": 2}, "methods": {"wslrec": {"weak_k": 5, "mining_k": 5}}}"#.utf8))
        let local = try JobRunner.run(job, data: data)
        let teachers = RemoteTeachers(jobID: "wsl", datasetID: datasetID, broker: client)
        let remote = try JobRunner.run(job, data: data, teachers: teachers)
        XCTAssertEqual(remote.test, local.test, "stages 1–2 in a teacher process, 3 here: the same metrics to the last digit")
        XCTAssertEqual(remote.valid, local.valid)
        XCTAssertEqual((remote.log ?? []).map(\.loss), (local.log ?? []).map(\.loss), "the fine-tuning epochs' losses")
        XCTAssertEqual(workers.map { $0.status().state }, ["idle", "idle", "idle"], "the pre-trained member is released after mining")
    }

    func testACSRecJobWhoseTeachersRunInTeacherServicesEqualsTheJobInOneProcess() async throws {
        let data = try await data()
        for (name, csrec, pipelined) in [("m", #"{"teachers": "model", "m": 2}"#, true), ("m-off", #"{"teachers": "model", "m": 2}"#, false),
                                         ("t", #"{"teachers": "training", "beta": 0.75}"#, true)] {
            let job = try job(csrec)
            let local = try JobRunner.run(job, data: data)
            let teachers = RemoteTeachers(jobID: "eq-\(name)", datasetID: datasetID, broker: client)
            teachers.pipelined = pipelined
            var lines: [String] = []
            teachers.log = { lines.append($0) }
            let remote = try JobRunner.run(job, data: data, teachers: teachers)
            XCTAssertEqual(remote.test, local.test, "\(name): through the teacher services, the same metrics to the last digit")
            XCTAssertEqual(remote.valid, local.valid, name)
            XCTAssertEqual(remote.bestEpoch, local.bestEpoch, name)
            // three processes: CSRec-M's two members train on two and the third becomes a replica;
            // CSRec-T's side teacher trains, hands its model to the main teacher and goes back to the pool
            XCTAssertTrue(lines.contains { $0.contains("replica") }, "\(lines)")
            XCTAssertEqual(workers.map { $0.status().state }, ["ready", "ready", "ready"], "every process serves a member")
            let members = Set(workers.map { $0.status().spec.member })
            XCTAssertEqual(members, name == "t" ? ["main"] : ["m0", "m1"])
            teachers.releaseAll()
            var left: [String] = []
            for _ in 0..<100 {
                left = try teachers.workers().filter { $0.service.hasPrefix("teacher/") }.map(\.service)
                if left.isEmpty { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            XCTAssertTrue(left.isEmpty, "released, the members leave the broker: \(left)")
            XCTAssertEqual(workers.map { $0.status().state }, ["idle", "idle", "idle"])
        }
    }

    func testTooFewTeacherProcessesIsAClearError() async throws {
        let data = try await data()
        let teachers = RemoteTeachers(jobID: "few", datasetID: datasetID, broker: client)
        XCTAssertThrowsError(try JobRunner.run(try job(#"{"teachers": "model", "m": 4}"#), data: data, teachers: teachers)) { e in
            XCTAssertTrue("\(e)".contains("reads 4 teachers at once; the stack runs 3 teacher processes"), "\(e)")
        }
    }

    func testBadTeacherRequestsAreRefusedNamingTheFieldAndABusyTeacherRefusesAnother() async throws {
        let endpoint = try XCTUnwrap(runtimes[2].server.endpoint)   // runtimes[0] is the feature store
        let direct = try RPCClient(endpoint: endpoint)
        defer { direct.close() }
        func expect<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ code: Winnow_V1_StatusCode, _ method: String, _ r: Req,
                                                                            _ t: Res.Type, _ text: String, line: UInt = #line) async {
            await expectRPCStatus(code, mentioning: text, line: line) {
                _ = try await direct.call(service: "teacher", method: method, r, as: t, timeout: .seconds(30))
            }
        }
        var spec = Winnow_V1_TeacherSpec()
        spec.jobID = "bad"; spec.member = "m0"; spec.datasetID = datasetID
        let encoder = JSONEncoder()
        spec.hyperparametersJson = String(decoding: try encoder.encode(try job(#"{"teachers": "model"}"#)), as: UTF8.self)
        var train = Winnow_V1_TrainTeacherRequest()
        for (field, change) in [("spec.member", { (s: inout Winnow_V1_TeacherSpec) in s.member = "m7" }),
                                ("spec.member", { $0.member = "teacher" }),
                                ("spec.job_id", { $0.jobID = "a/b" }),
                                ("spec.hyperparameters_json", { $0.hyperparametersJson = #"{"backbone": "bert"}"# }),
                                ("spec.hyperparameters_json", { $0.hyperparametersJson = "" }),
                                ("spec.dataset_id", { $0.datasetID = "" }),
                                ("spec.backbone", { $0.backbone = "gru4rec" })] as [(String, (inout Winnow_V1_TeacherSpec) -> Void)] {
            var s = spec; change(&s); train.spec = s
            await expect(.invalidArgument, "Train", train, Winnow_V1_TrainTeacherResponse.self, field)
        }
        await expect(.failedPrecondition, "SoftLabels", Winnow_V1_SoftLabelsRequest(), Winnow_V1_SoftLabelsResponse.self, "serves no member")
        XCTAssertEqual(workers[1].status().state, "idle", "a refused request leaves the teacher as it was")

        // a member trained there; a second member is refused while it serves one
        train.spec = spec
        _ = try await direct.call(service: "teacher", method: "Train", train, as: Winnow_V1_TrainTeacherResponse.self, timeout: .seconds(10))
        var other = train; other.spec.member = "m1"
        await expect(.failedPrecondition, "Train", other, Winnow_V1_TrainTeacherResponse.self, "busy")
        let deadline = Date().addingTimeInterval(60)
        while workers[1].status().state != "ready" && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        XCTAssertEqual(workers[1].status().state, "ready", workers[1].status().error)

        // its answers: logits equal to the member's own, soft labels, top-k; bad rows and items refused
        var r = Winnow_V1_SoftLabelsRequest()
        var a = Winnow_V1_ItemSequence(); a.items = [1, 2, 3]
        var b = Winnow_V1_ItemSequence(); b.items = [4, 5]
        r.sequences = [a, b]; r.returnLogits = true; r.rowSequences = [0, 0, 1]; r.rowPositions = [2, 0, 1]
        let logits = try await teacherCall("teacher/bad/m0", "SoftLabels", r, Winnow_V1_SoftLabelsResponse.self)
        let download = try await ModelTransfer.download(name: "teacher/bad/m0", version: workers[1].status().modelVersion, from: store)
        let member = ModelSoftLabelSource(teachers: [try ModelArtifact(decoding: download.bytes).backbone()])
        let N = member.itemCount
        XCTAssertEqual(logits.dense.shape, [3, Int64(N)])
        var items: [Int32] = [1, 2, 3, 0, 0, 0, 0, 0, 4, 5, 0, 0, 0, 0, 0, 0], lengths: [Int32] = [3, 2]
        var rs: [Int32] = [0, 0, 1], rp: [Int32] = [2, 0, 1]
        var expected = [Float](repeating: 0, count: 3 * N)
        try member.logits(items: &items, lengths: &lengths, B: 2, T: 8,
                          rows: ScoredRows(sequences: &rs, positions: &rp, count: 3, batchSize: 2), batch: nil, out: &expected)
        var got = [Float](repeating: 0, count: 3 * N)
        try logits.dense.copy(into: &got, count: 3 * N, what: "test")
        XCTAssertEqual(got, expected)
        r.returnLogits = false; r.temperature = 2; r.topK = 3
        let top = try await teacherCall("teacher/bad/m0", "SoftLabels", r, Winnow_V1_SoftLabelsResponse.self)
        XCTAssertEqual(top.topkItems.count, 9)
        for row in 0..<3 {
            var m = -Float.infinity
            for j in 0..<N { m = max(m, expected[row * N + j]) }
            let s = (0..<N).reduce(Float(0)) { $0 + expf((expected[row * N + $1] - m) / 2) }
            let best = top.topkItems[row * 3]
            XCTAssertEqual(expected[row * N + Int(best) - 1], m, "row \(row): the first of the top-3 is the arg-max")
            XCTAssertEqual(top.topkProbs[row * 3], 1 / s, accuracy: 1e-5)
        }
        var bad = r; bad.rowPositions = [2, 3, 1]
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "row_positions[1]")
        bad = r; bad.rowSequences = [0, 2, 1]
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "row_sequences[1]")
        bad = r; bad.rowSequences = [0]
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "row_sequences")
        bad = r; bad.sequences[1].items = [4, Int32(N + 1)]
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "sequences[1].items[1]")
        bad = r; bad.sequences[0].items = Array(repeating: 1, count: 9)
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "sequences[0]: 9 items")
        bad = r; bad.temperature = 0
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "temperature")
        bad = r; bad.sequences = []
        await expect(.invalidArgument, "SoftLabels", bad, Winnow_V1_SoftLabelsResponse.self, "sequences: empty")
        var mine = Winnow_V1_MineTopKRequest(); mine.sequences = [a]; mine.k = 0
        await expect(.invalidArgument, "MineTopK", mine, Winnow_V1_MineTopKResponse.self, "k:")
        mine.k = 2; mine.excludeHistory = true
        let mined = try await teacherCall("teacher/bad/m0", "MineTopK", mine, Winnow_V1_MineTopKResponse.self)
        XCTAssertEqual(mined.items.count, 2)
        XCTAssertTrue(mined.items.allSatisfy { !a.items.contains($0) }, "history left out: \(mined.items)")

        // released: back in the pool, its member gone from the broker
        var release = Winnow_V1_ReleaseTeacherRequest(); release.jobID = "bad"
        let after = try await direct.call(service: "teacher", method: "Release", release, as: Winnow_V1_TeacherStatus.self, timeout: .seconds(5))
        XCTAssertEqual(after.state, "idle")
        await expect(.failedPrecondition, "SoftLabels", r, Winnow_V1_SoftLabelsResponse.self, "serves no member")
    }
}
