import SwiftProtobuf
import WinnowProto

/// Every rpc of every Winnow service: service kind -> method -> (request type, response type), as
/// declared in proto/winnow/v1/*.proto (a test reads the .proto files and checks this table covers
/// every rpc). `winnow call` uses it to map JSON to protobuf; services use it to answer the rpcs
/// they do not implement yet with UNIMPLEMENTED.
public enum ServiceCatalogue {
    /// One rpc.
    public struct Method: Sendable {
        public let name: String
        public let request: any SwiftProtobuf.Message.Type
        public let response: any SwiftProtobuf.Message.Type

        init(_ name: String, _ request: any SwiftProtobuf.Message.Type, _ response: any SwiftProtobuf.Message.Type) {
            self.name = name
            self.request = request
            self.response = response
        }
    }

    /// One service of the contracts.
    public struct ServiceKind: Sendable {
        /// The kind: the service name before the first "/" (`teacher` for `teacher/job42/m0`).
        public let name: String
        /// The proto service, e.g. `winnow.v1.Teacher`.
        public let protoService: String
        public let methods: [Method]

        public func method(_ name: String) -> Method? { methods.first { $0.name == name } }
    }

    public static let kinds: [ServiceKind] = [
        ServiceKind(name: "broker", protoService: "winnow.v1.Broker", methods: [
            Method("Health", Winnow_V1_HealthRequest.self, Winnow_V1_HealthResponse.self),
            Method("Register", Winnow_V1_RegisterRequest.self, Winnow_V1_RegisterResponse.self),
            Method("Heartbeat", Winnow_V1_HeartbeatRequest.self, Winnow_V1_HeartbeatResponse.self),
            Method("Unregister", Winnow_V1_UnregisterRequest.self, Winnow_V1_UnregisterResponse.self),
            Method("ListWorkers", Winnow_V1_ListWorkersRequest.self, Winnow_V1_ListWorkersResponse.self),
        ]),
        ServiceKind(name: "featurestore", protoService: "winnow.v1.FeatureStore", methods: [
            Method("Health", Winnow_V1_HealthRequest.self, Winnow_V1_HealthResponse.self),
            Method("BeginIngest", Winnow_V1_BeginIngestRequest.self, Winnow_V1_BeginIngestResponse.self),
            Method("IngestBatch", Winnow_V1_IngestBatchRequest.self, Winnow_V1_IngestBatchResponse.self),
            Method("CommitIngest", Winnow_V1_CommitIngestRequest.self, Winnow_V1_CommitIngestResponse.self),
            Method("AbortIngest", Winnow_V1_AbortIngestRequest.self, Winnow_V1_AbortIngestResponse.self),
            Method("AppendEvents", Winnow_V1_AppendEventsRequest.self, Winnow_V1_AppendEventsResponse.self),
            Method("BuildDataset", Winnow_V1_BuildDatasetRequest.self, Winnow_V1_BuildDatasetResponse.self),
            Method("GetDataset", Winnow_V1_GetDatasetRequest.self, Winnow_V1_DatasetInfo.self),
            Method("ListDatasets", Winnow_V1_ListDatasetsRequest.self, Winnow_V1_ListDatasetsResponse.self),
            Method("GetSnapshot", Winnow_V1_GetSnapshotRequest.self, Winnow_V1_SnapshotPage.self),
            Method("GetHistory", Winnow_V1_GetHistoryRequest.self, Winnow_V1_GetHistoryResponse.self),
            Method("PutModel", Winnow_V1_PutModelRequest.self, Winnow_V1_PutModelResponse.self),
            Method("GetModel", Winnow_V1_GetModelRequest.self, Winnow_V1_GetModelResponse.self),
            Method("ListModels", Winnow_V1_ListModelsRequest.self, Winnow_V1_ListModelsResponse.self),
            Method("Promote", Winnow_V1_PromoteRequest.self, Winnow_V1_PromoteResponse.self),
        ]),
        ServiceKind(name: "noise", protoService: "winnow.v1.NoiseRecogniser", methods: [
            Method("Health", Winnow_V1_HealthRequest.self, Winnow_V1_HealthResponse.self),
            Method("Configure", Winnow_V1_ConfigureRecogniserRequest.self, Winnow_V1_RecogniserStatus.self),
            Method("Weigh", Winnow_V1_WeighRequest.self, Winnow_V1_WeighResponse.self),
            Method("Feedback", Winnow_V1_FeedbackRequest.self, Winnow_V1_FeedbackResponse.self),
            Method("TrainStep", Winnow_V1_RecogniserTrainStepRequest.self, Winnow_V1_RecogniserTrainStepResponse.self),
            Method("GetStatus", Winnow_V1_RecogniserStatusRequest.self, Winnow_V1_RecogniserStatus.self),
            Method("Release", Winnow_V1_ReleaseRecogniserRequest.self, Winnow_V1_RecogniserStatus.self),
        ]),
        ServiceKind(name: "retrieval", protoService: "winnow.v1.Retrieval", methods: [
            Method("Health", Winnow_V1_HealthRequest.self, Winnow_V1_HealthResponse.self),
            Method("Recommend", Winnow_V1_RecommendRequest.self, Winnow_V1_RecommendResponse.self),
            Method("Reload", Winnow_V1_ReloadRequest.self, Winnow_V1_ReloadResponse.self),
            Method("GetStats", Winnow_V1_RetrievalStatsRequest.self, Winnow_V1_RetrievalStats.self),
        ]),
        ServiceKind(name: "teacher", protoService: "winnow.v1.Teacher", methods: [
            Method("Health", Winnow_V1_HealthRequest.self, Winnow_V1_HealthResponse.self),
            Method("Train", Winnow_V1_TrainTeacherRequest.self, Winnow_V1_TrainTeacherResponse.self),
            Method("GetStatus", Winnow_V1_TeacherStatusRequest.self, Winnow_V1_TeacherStatus.self),
            Method("Load", Winnow_V1_LoadTeacherRequest.self, Winnow_V1_TeacherStatus.self),
            Method("SoftLabels", Winnow_V1_SoftLabelsRequest.self, Winnow_V1_SoftLabelsResponse.self),
            Method("MineTopK", Winnow_V1_MineTopKRequest.self, Winnow_V1_MineTopKResponse.self),
            Method("Release", Winnow_V1_ReleaseTeacherRequest.self, Winnow_V1_TeacherStatus.self),
        ]),
        ServiceKind(name: "trainer", protoService: "winnow.v1.Trainer", methods: [
            Method("Health", Winnow_V1_HealthRequest.self, Winnow_V1_HealthResponse.self),
            Method("SubmitJob", Winnow_V1_SubmitJobRequest.self, Winnow_V1_SubmitJobResponse.self),
            Method("GetProgress", Winnow_V1_GetProgressRequest.self, Winnow_V1_JobProgress.self),
            Method("CancelJob", Winnow_V1_CancelJobRequest.self, Winnow_V1_CancelJobResponse.self),
            Method("ListJobs", Winnow_V1_ListJobsRequest.self, Winnow_V1_ListJobsResponse.self),
        ]),
    ]

    /// The kind of a service name: the part before the first "/".
    public static func kindName(of service: String) -> String {
        String(service.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
    }

    /// The kind a service name belongs to (`teacher/job42/m0` -> teacher), nil when unknown.
    public static func kind(of service: String) -> ServiceKind? {
        let name = kindName(of: service)
        return kinds.first { $0.name == name }
    }
}
