import BrokerKit
import Foundation
import RPC
import SwiftProtobuf
import ServiceKit
@testable import Store
import StoreTestSupport
import WinnowProto
import XCTest

/// The featurestore rpcs over real loopback sockets: a broker, the service registered with it,
/// and a client calling through the broker.
final class FeatureStoreServiceTests: XCTestCase {
    var broker: Broker!
    var runtime: ServiceRuntime!
    var stopped: DispatchSemaphore!
    var store: FeatureStore!
    var client: RPCClient!

    override func setUp() async throws {
        let url = try TestDatabase.fresh("service")
        store = try FeatureStore(url: url, poolSize: 4)
        broker = try Broker(endpoint: "tcp://127.0.0.1:*", configuration: BrokerConfiguration(heartbeatMicros: 100_000, liveness: 3))
        broker.start()
        // The service as its process wires it: ServiceKit's runtime (Health, broker registration).
        let options = ServiceOptions(broker: broker.endpoint, name: "featurestore", databaseURL: url, heartbeatMilliseconds: 100)
        runtime = try ServiceRuntime(kind: "featurestore", options: options)
        FeatureStoreService(store: store).register(on: runtime.server)
        let done = DispatchSemaphore(value: 0)
        stopped = done
        let r = runtime!
        Thread { _ = r.run(grace: .milliseconds(200)); done.signal() }.start()
        let deadline = ContinuousClock.now + .seconds(10)
        while !runtime.server.isRegistered {
            XCTAssertLessThan(ContinuousClock.now, deadline, "featurestore did not register")
            try await Task.sleep(for: .milliseconds(10))
        }
        client = try RPCClient(endpoint: broker.endpoint)
    }

    override func tearDown() async throws {
        client?.close()
        runtime?.requestShutdown()
        stopped?.wait()
        broker?.shutdown()
        store?.close()
    }

    func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ method: String, _ r: Req, _ t: Res.Type) async throws -> Res {
        try await client.call(service: "featurestore", method: method, r, as: t, timeout: .seconds(30))
    }

    func expectStatus<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
        _ code: Winnow_V1_StatusCode, _ method: String, _ r: Req, _ t: Res.Type, mentioning text: String,
        file: StaticString = #filePath, line: UInt = #line
    ) async {
        await expectRPCStatus(code, mentioning: text, file: file, line: line) { _ = try await self.call(method, r, t) }
    }

    func testIngestHistoryAndModelRoundTripsThroughTheBroker() async throws {
        let health = try await call("Health", Winnow_V1_HealthRequest(), Winnow_V1_HealthResponse.self)
        XCTAssertEqual(health.status, .serving)
        XCTAssertEqual(health.service, "featurestore")
        let remote = RemoteFeatureStore(client: client)
        var text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        for k in 0..<500 { text += "\(k % 20)\t\(k % 30 + 1)\t4\t\(k)\n" }
        let path = try writeFile(text, name: "service.inter")
        let committed = try await FileIngest(path: path, format: .recboleInter, batchBytes: 1024).run(on: remote)
        XCTAssertEqual(committed.rows, 500)
        XCTAssertEqual(committed.users, 20)

        let built = try await call("BuildDataset", interSpec(k: 2, topK: 4), Winnow_V1_BuildDatasetResponse.self)
        XCTAssertEqual(built.dataset.interactions, 500)
        let info = try await call("GetDataset", { var r = Winnow_V1_GetDatasetRequest(); r.datasetID = built.dataset.datasetID; return r }(),
                                  Winnow_V1_DatasetInfo.self)
        XCTAssertEqual(info.users, 20)

        // History: user 3's items are k = 3, 23, 43, ... -> items k % 30 + 1, most recent last.
        var h = Winnow_V1_GetHistoryRequest()
        h.user = "3"; h.n = 4; h.datasetID = built.dataset.datasetID
        let history = try await call("GetHistory", h, Winnow_V1_GetHistoryResponse.self)
        XCTAssertEqual(history.timestamps, [423, 443, 463, 483])
        let snapshot = try await SnapshotCache().snapshot(built.dataset.datasetID, from: remote)
        XCTAssertEqual(snapshot.items.count, 500)

        // Models: upload in chunks, promote, download version 0.
        let artifact = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var meta = Winnow_V1_ModelMeta()
        meta.name = "sasrec"; meta.datasetID = built.dataset.datasetID; meta.specJson = "{}"
        let registered = try await ModelTransfer.upload(artifact, meta: meta, to: remote, chunkBytes: 30_000)
        var promote = Winnow_V1_PromoteRequest()
        promote.name = "sasrec"; promote.version = registered.version
        _ = try await call("Promote", promote, Winnow_V1_PromoteResponse.self)
        let (got, bytes) = try await ModelTransfer.download(name: "sasrec", from: remote, chunkBytes: 25_000)
        XCTAssertEqual(bytes, artifact)
        XCTAssertTrue(got.promoted)
        // With a promoted model, "" names its dataset.
        h.datasetID = ""
        let viaPromoted = try await call("GetHistory", h, Winnow_V1_GetHistoryResponse.self)
        XCTAssertEqual(viaPromoted.items, history.items)
    }

    func testBadRequestsGetAStatusAndAClearMessage() async throws {
        var h = Winnow_V1_GetHistoryRequest()
        h.user = "alice"; h.n = 5; h.datasetID = "ds-x"
        await expectStatus(.invalidArgument, "GetHistory", h, Winnow_V1_GetHistoryResponse.self, mentioning: "not an integer")
        h.user = "1"
        await expectStatus(.notFound, "GetHistory", h, Winnow_V1_GetHistoryResponse.self, mentioning: "ds-x")
        var m = Winnow_V1_GetModelRequest()
        m.name = "missing"
        await expectStatus(.notFound, "GetModel", m, Winnow_V1_GetModelResponse.self, mentioning: "missing")
        await expectStatus(.failedPrecondition, "BuildDataset", interSpec(), Winnow_V1_BuildDatasetResponse.self, mentioning: "ingest first")
        var b = Winnow_V1_BeginIngestRequest()
        b.loadID = "x"; b.format = .csv; b.header = "a,b,c"
        await expectStatus(.invalidArgument, "BeginIngest", b, Winnow_V1_BeginIngestResponse.self, mentioning: "column mapping")
        var s = Winnow_V1_GetSnapshotRequest()
        s.datasetID = "ds-x"
        await expectStatus(.notFound, "GetSnapshot", s, Winnow_V1_SnapshotPage.self, mentioning: "ds-x")
        var put = Winnow_V1_PutModelRequest()
        put.uploadID = "u"; put.offset = UInt64.max; put.chunk = Foundation.Data([1, 2])
        await expectStatus(.failedPrecondition, "PutModel", put, Winnow_V1_PutModelResponse.self, mentioning: "send the chunk at 0")
        s.pageToken = UInt64.max
        await expectStatus(.invalidArgument, "GetSnapshot", s, Winnow_V1_SnapshotPage.self, mentioning: "page_token")
        var spec = interSpec()
        spec.spec.kCore = -1
        await expectStatus(.invalidArgument, "BuildDataset", spec, Winnow_V1_BuildDatasetResponse.self, mentioning: "k_core")
    }
}
