import Foundation
import Logging
import RPC
import SwiftProtobuf
import WinnowProto

/// The featurestore rpcs over a `FeatureStore`: each handler runs the blocking store call on the
/// server's handler thread and turns a `StoreError` into its status (INVALID_ARGUMENT,
/// NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE, INTERNAL).
public final class FeatureStoreService: Sendable {
    public let store: FeatureStore

    public init(store: FeatureStore) { self.store = store }

    /// Registers every featurestore rpc except Health (the runtime answers that) on `server`.
    public func register(on server: RPCServer) {
        let store = self.store
        func handle<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
            _ method: String, _ body: @escaping @Sendable (Req) throws -> Res
        ) {
            server.register(method) { (request: Req) async throws -> Res in
                do { return try body(request) } catch {
                    throw StoreError.from(error).rpcError
                }
            }
        }
        handle("BeginIngest") { (r: Winnow_V1_BeginIngestRequest) in try store.beginIngest(r) }
        handle("IngestBatch") { (r: Winnow_V1_IngestBatchRequest) in try store.ingestBatch(r) }
        handle("CommitIngest") { (r: Winnow_V1_CommitIngestRequest) in try store.commitIngest(r) }
        handle("AbortIngest") { (r: Winnow_V1_AbortIngestRequest) -> Winnow_V1_AbortIngestResponse in
            try store.abortIngest(loadID: r.loadID); return Winnow_V1_AbortIngestResponse()
        }
        handle("AppendEvents") { (r: Winnow_V1_AppendEventsRequest) in try store.appendEvents(r) }
        handle("BuildDataset") { (r: Winnow_V1_BuildDatasetRequest) in try store.buildDataset(r) }
        server.register("GetDataset") { (r: Winnow_V1_GetDatasetRequest) async throws -> Winnow_V1_DatasetInfo in
            do { return try await store.callGetDataset(r) } catch { throw StoreError.from(error).rpcError }
        }
        handle("ListDatasets") { (_: Winnow_V1_ListDatasetsRequest) in try store.listDatasets() }
        handle("GetSnapshot") { (r: Winnow_V1_GetSnapshotRequest) in try store.snapshot(r) }
        handle("GetHistory") { (r: Winnow_V1_GetHistoryRequest) in try store.history(r) }
        handle("PutModel") { (r: Winnow_V1_PutModelRequest) in try store.putModel(r) }
        handle("GetModel") { (r: Winnow_V1_GetModelRequest) in try store.getModel(r) }
        handle("ListModels") { (r: Winnow_V1_ListModelsRequest) in try store.listModels(r) }
        handle("Promote") { (r: Winnow_V1_PromoteRequest) in try store.promote(r) }
    }
}
