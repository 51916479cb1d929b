import BrokerKit
import Foundation
import Numerics
import Models
import Data
import Training
import Methods
import Jobs
import RPC
@testable import NoiseKit
@testable import Remote
import ServiceKit
import Store
import StoreTestSupport
import SwiftProtobuf
import WinnowProto
import XCTest

/// ATJT's recognisers over real loopback sockets: a broker, the feature store and two noise
/// services registered with it as their processes wire them. An ATJT job that weighs through
/// them ends with the metrics of the same job in one process, pipelined or not, and after its
/// recogniser's process lost it mid-job; bad requests are refused naming their field.
final class NoiseServiceTests: XCTestCase {
    var services: LoopbackServices!
    var workers: [NoiseWorker] = []
    var client: RPCClient { services.client }
    var datasetID: String { services.datasetID }
    var runtimes: [ServiceRuntime] { services.runtimes }

    override func setUp() async throws {
        Threads.set(1)
        services = try await LoopbackServices(label: "noise", file: try itemCyclesFile(seed: 7, name: "noise-cycles.inter"))
        for _ in 0..<2 {
            let n = try services.runtime(kind: "noise")
            let w = NoiseWorker(store: RemoteFeatureStore(client: client), broker: services.broker.endpoint)
            w.register(on: n.server)
            workers.append(w)
            try await services.serve(n)
        }
    }

    override func tearDown() async throws {
        for w in workers { for g in w.status().groups { var r = Winnow_V1_ReleaseRecogniserRequest(); r.jobID = g.jobID; r.allGroups = true; _ = w.release(r) } }
        services?.stop()
    }

    func job(scheme: String = "all_positions", epochs: Int = 3) throws -> JobConfig {
        try JobConfig.parse(Foundation.Data(#"{"backbone": "sasrec", "dim": 8, "blocks": 1, "loop": {"max_epochs": \#(epochs), "patience": 3, "max_length": 8, "batch_size": 8, "seed": 3, "scheme": "\#(scheme)"}, "methods": {"atjt": {"alpha": 10, "recogniser_lr": 0.1}}}"#.utf8))
    }

    func data() async throws -> SequenceDataset { try await services.data() }

    func testAnATJTJobWhoseRecognisersRunInNoiseServicesEqualsTheJobInOneProcess() async throws {
        let data = try await data()
        for (scheme, pipelined) in [("all_positions", true), ("all_positions", false), ("prefixes", true)] {
            let job = try job(scheme: scheme)
            let local = try JobRunner.run(job, data: data)
            let recognisers = RemoteRecognisers(jobID: "eq-\(scheme)-\(pipelined)", datasetID: datasetID, broker: client)
            recognisers.pipelined = pipelined
            let remote = try JobRunner.run(job, data: data, recognisers: recognisers)
            let name = "\(scheme), pipelined \(pipelined)"
            XCTAssertEqual(remote.test, local.test, "\(name): through the noise services, the same metrics to the last digit")
            XCTAssertEqual(remote.valid, local.valid, name)
            XCTAssertEqual((remote.log ?? []).map(\.loss), (local.log ?? []).map(\.loss), name)
            // N = 2 groups on two processes: each hosts one, and has stepped it
            let hosted = workers.map { $0.status().groups }
            XCTAssertEqual(hosted.map(\.count), [1, 1], "each noise process hosts one group")
            XCTAssertEqual(Set(hosted.flatMap { $0.map(\.group) }), [0, 1])
            XCTAssertTrue(hosted.allSatisfy { $0.allSatisfy { $0.steps > 0 } })
            recognisers.releaseAll()
            XCTAssertEqual(workers.map { $0.status().groups.count }, [0, 0], "release frees every process's job state")
        }
    }

    func testAGroupLostMidJobIsPlacedAgainFromItsSnapshotAndTheJobEndsWithTheSameMetrics() async throws {
        let data = try await data()
        let job = try job(epochs: 4)
        let local = try JobRunner.run(job, data: data)
        let recognisers = RemoteRecognisers(jobID: "lost", datasetID: datasetID, broker: client)
        recognisers.snapshotEvery = 4
        var lines: [String] = []
        recognisers.log = { lines.append($0) }
        // once group 1 has stepped 9 times, its process drops it (as a restarted process would have)
        let workers = self.workers
        let dropped = DispatchSemaphore(value: 0)
        Thread {
            let end = Date().addingTimeInterval(60)
            while Date() < end {
                for w in workers where w.status().groups.contains(where: { $0.group == 1 && $0.steps >= 9 }) {
                    var r = Winnow_V1_ReleaseRecogniserRequest(); r.jobID = "lost"; r.group = 1
                    _ = w.release(r)
                    dropped.signal()
                    return
                }
                Thread.sleep(forTimeInterval: 0.002)
            }
            dropped.signal()
        }.start()
        let remote = try JobRunner.run(job, data: data, recognisers: recognisers)
        dropped.wait()
        XCTAssertTrue(lines.contains { $0.contains("g1") && $0.contains("replaying") }, "\(lines)")
        XCTAssertEqual(remote.test, local.test, "a group placed again from its snapshot gives the same bits")
        XCTAssertEqual((remote.log ?? []).map(\.loss), (local.log ?? []).map(\.loss))
        recognisers.releaseAll()
    }

    func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ method: String, _ r: Req, _ t: Res.Type,
                                                                     service: String = "noise") async throws -> Res {
        try await client.call(service: service, method: method, r, as: t, timeout: .seconds(30))
    }

    func expectStatus<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
        _ code: Winnow_V1_StatusCode, _ method: String, _ r: Req, _ t: Res.Type, mentioning text: String,
        service: String = "noise", file: StaticString = #filePath, line: UInt = #line
    ) async {
        await expectRPCStatus(code, mentioning: text, file: file, line: line) { _ = try await self.call(method, r, t, service: service) }
    }

    func testBadRequestsAreRefusedNamingTheFieldAndTrainStepStepsTheRecognisersOwnTask() async throws {
        let json = String(decoding: try JSONEncoder().encode(try job()), as: UTF8.self)
        func configure(_ edit: (inout Winnow_V1_ConfigureRecogniserRequest) -> Void) -> Winnow_V1_ConfigureRecogniserRequest {
            var r = Winnow_V1_ConfigureRecogniserRequest()
            r.jobID = "bad"; r.datasetID = datasetID; r.numGroups = 2; r.group = 0; r.hyperparametersJson = json
            edit(&r)
            return r
        }
        let S = Winnow_V1_RecogniserStatus.self
        await expectStatus(.invalidArgument, "Configure", configure { $0.jobID = "no spaces" }, S, mentioning: "job_id")
        await expectStatus(.invalidArgument, "Configure", configure { $0.hyperparametersJson = "{" }, S, mentioning: "hyperparameters_json")
        await expectStatus(.invalidArgument, "Configure", configure { $0.hyperparametersJson = #"{"backbone": "sasrec"}"# }, S, mentioning: "no atjt")
        await expectStatus(.invalidArgument, "Configure", configure { $0.numGroups = 3 }, S, mentioning: "num_groups")
        await expectStatus(.invalidArgument, "Configure", configure { $0.group = 2 }, S, mentioning: "group")
        await expectStatus(.notFound, "Configure", configure { $0.datasetID = "ds-missing" }, S, mentioning: "ds-missing")
        await expectStatus(.invalidArgument, "Configure", configure { $0.state = Foundation.Data([1, 2, 3]) }, S, mentioning: "state")
        XCTAssertEqual(workers.map { $0.status().groups.count }, [0, 0], "nothing hosted after refused configures")

        let status = try await call("Configure", configure { _ in }, S)
        XCTAssertEqual(status.groups.map(\.group), [0])
        let service = NoiseWorker.serviceName(job: "bad", group: 0)
        // a row of group 0 (the partition the job's own process makes)
        let data = try await data()
        let rec = try RecogniserPlan.group(0, of: try job(), data: data)
        let k = Int(rec.partition.members[0][0]), u = Int(rec.instances.users[k]), end = data.offsets[u] + Int(rec.instances.positions[k])
        var weigh = Winnow_V1_WeighRequest()
        weigh.jobID = "bad"; weigh.group = 0; weigh.batchID = 1
        var seq = Winnow_V1_ItemSequence(); seq.items = Array(data.items[max(data.offsets[u], end - 8)..<end])
        weigh.sequences = [seq]; weigh.targets = [data.items[end]]; weigh.instances = [Int32(k)]
        let W = Winnow_V1_WeighResponse.self
        await expectStatus(.notFound, "Weigh", { var r = weigh; r.jobID = "nobody"; return r }(), W, mentioning: "noise/nobody/g0")
        await expectStatus(.invalidArgument, "Weigh", { var r = weigh; r.sequences[0].items[0] = 999; return r }(), W, mentioning: "sequences[0].items[0]",
                           service: service)
        await expectStatus(.invalidArgument, "Weigh", { var r = weigh; r.targets = []; return r }(), W, mentioning: "targets", service: service)
        await expectStatus(.invalidArgument, "Weigh", { var r = weigh; r.instances = [1_000_000]; return r }(), W, mentioning: "instances[0]",
                           service: service)
        await expectStatus(.invalidArgument, "Weigh", { var r = weigh; r.rowSequences = [0]; r.rowPositions = [40]; return r }(), W,
                           mentioning: "row_positions[0]", service: service)
        let other = Int32(rec.partition.members[1][0])
        await expectStatus(.invalidArgument, "Weigh", { var r = weigh; r.instances = [other]; return r }(), W, mentioning: "group", service: service)
        var feedback = Winnow_V1_FeedbackRequest()
        feedback.jobID = "bad"; feedback.group = 0; feedback.batchID = 1; feedback.lossGradWrtWeights = [0.5]
        let F = Winnow_V1_FeedbackResponse.self
        await expectStatus(.failedPrecondition, "Feedback", feedback, F, mentioning: "without a matching weigh", service: service)
        await expectStatus(.invalidArgument, "Feedback", { var r = feedback; r.lossGradWrtWeights = [.nan]; return r }(), F,
                           mentioning: "loss_grad_wrt_weights[0]", service: service)

        // a good weigh, its feedback with a snapshot, and a repeated feedback answered the same
        let w = try await call("Weigh", weigh, W, service: service)
        XCTAssertEqual(w.weights.count, 1)
        XCTAssertTrue(w.weights[0] > 0 && w.weights[0] < 1)
        feedback.snapshot = true
        let f = try await call("Feedback", feedback, F, service: service)
        XCTAssertEqual(f.step, 1)
        XCTAssertFalse(f.state.isEmpty)
        let again = try await call("Feedback", feedback, F, service: service)
        XCTAssertEqual(again, f, "a retried feedback is not applied twice")
        // a weigh for a step not reached yet waits, and says so when it is never reached
        workers.forEach { $0.orderPatience = 0.2 }
        await expectStatus(.deadlineExceeded, "Weigh", { var r = weigh; r.batchID = 2; r.step = 5; return r }(), W, mentioning: "follows 5 feedbacks",
                           service: service)

        // its own task alone (on these short cycles it stays near chance: L_D falls from the
        // first steps' overshoot towards ln 2)
        var train = Winnow_V1_RecogniserTrainStepRequest(); train.jobID = "bad"; train.group = 0
        await expectStatus(.invalidArgument, "TrainStep", train, Winnow_V1_RecogniserTrainStepResponse.self, mentioning: "batches", service: service)
        train.batches = 3
        let first = try await call("TrainStep", train, Winnow_V1_RecogniserTrainStepResponse.self, service: service)
        train.batches = 600
        let later = try await call("TrainStep", train, Winnow_V1_RecogniserTrainStepResponse.self, service: service)
        XCTAssertLessThan(later.loss, first.loss, "L_D falls as it trains")
        print("recogniser's own task: L_D \(first.loss) -> \(later.loss), accuracy \(first.accuracy) -> \(later.accuracy)")

        var release = Winnow_V1_ReleaseRecogniserRequest(); release.jobID = "bad"; release.allGroups = true
        for w in workers { _ = w.release(release) }
        XCTAssertEqual(workers.map { $0.status().groups.count }, [0, 0])
    }
}
