import Foundation
import RPC
import SwiftProtobuf
import WinnowProto

/// Retrieval's rpcs over a `RetrievalServer`. Every request is checked; a bad one gets its
/// status (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION without a model, RESOURCE_EXHAUSTED
/// past the queue bound, DEADLINE_EXCEEDED), never a crash or a wait without end.
public final class RetrievalService: Sendable {
    public let server: RetrievalServer
    /// The model name Reload loads when the request names none (the trainer's students).
    public let defaultModel: String

    public init(server: RetrievalServer, defaultModel: String) { self.server = server; self.defaultModel = defaultModel }

    public func register(on rpc: RPCServer) {
        let server = self.server, name = defaultModel
        rpc.register("Recommend") { (r: Winnow_V1_RecommendRequest) in try await server.recommend(r) }
        rpc.register("Reload") { (r: Winnow_V1_ReloadRequest) -> Winnow_V1_ReloadResponse in
            let (previous, loaded) = try await server.load(name: r.modelName.isEmpty ? name : r.modelName, version: r.modelVersion)
            var response = Winnow_V1_ReloadResponse()
            response.previousVersion = previous; response.loadedVersion = loaded
            return response
        }
        rpc.register("GetStats") { (_: Winnow_V1_RetrievalStatsRequest) in server.stats() }
    }
}
