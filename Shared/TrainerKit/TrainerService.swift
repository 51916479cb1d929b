import Foundation
import RPC
import Store
import SwiftProtobuf
import WinnowProto

/// The trainer's rpcs over its jobs. Every request is checked; a bad one is answered with its
/// status (INVALID_ARGUMENT naming the field, NOT_FOUND, ALREADY_EXISTS), never a crash.
public final class TrainerService: Sendable {
    public let jobs: TrainerJobs

    public init(jobs: TrainerJobs) { self.jobs = jobs }

    /// Registers every trainer rpc except Health (the runtime answers that) on `server`.
    public func register(on server: RPCServer) {
        let jobs = self.jobs
        // handlers throw RPCError or the store's errors, which carry their status
        server.register("SubmitJob") { (r: Winnow_V1_SubmitJobRequest) in try await jobs.submit(r) }
        server.register("GetProgress") { (r: Winnow_V1_GetProgressRequest) in try jobs.progress(r.jobID) }
        server.register("CancelJob") { (r: Winnow_V1_CancelJobRequest) in try jobs.cancel(r.jobID) }
        server.register("ListJobs") { (_: Winnow_V1_ListJobsRequest) in jobs.list() }
    }
}
