// Retrieval's serving state: the loaded student (swapped whole on reload, so a batch in flight
// finishes on the model it started with), a bounded queue of requests that one thread drains in
// micro-batches (one encoder pass and one product per batch), users' histories from the feature
// store through a bounded cache, deadlines, load shedding and statistics.
import Foundation
import Logging
import Models
import RPC
import Store
import WinnowProto

public struct RetrievalConfig: Sendable {
    /// Requests waiting at most; past it a request is shed at once with RESOURCE_EXHAUSTED.
    public var queueCapacity = 1024
    /// Requests ranked together at most.
    public var maxBatch = 256
    /// How long the batcher waits for more requests after the first of a batch.
    public var batchWindowMicros: Int64 = 0
    /// Users whose histories are kept.
    public var historyCacheUsers = 100_000
    /// Items of a history read from the feature store (the model reads its last maxLength).
    public var historyLength: Int32 = 200
    public init() {}
}

public final class RetrievalServer: @unchecked Sendable {
    public let config: RetrievalConfig
    /// Where models, catalogues and histories come from; nil serves only models given to `serve`
    /// and recent-item requests (benchmarks).
    public let store: FeatureStoreEndpoint?
    let logger: Logger
    private let lock = NSLock()
    private let wake = NSCondition()
    private var model: ServedModel?
    private struct Pending {
        let request: RankRequest
        let deadline: Int64
        let enqueued: Int64
        let respond: (Result<(ServedModel, [(item: Int32, score: Float)]), Error>) -> Void
    }
    private var queue: [Pending] = []
    private var histories: [String: [Int32]] = [:]
    private var historiesOf = ""
    private var thread: Thread?
    private var stopping = false
    // statistics
    private var requests: UInt64 = 0, shed: UInt64 = 0, batches: UInt64 = 0, batchedRows: UInt64 = 0
    private var latencies: [Int64] = []
    private var latencyCursor = 0
    private let started = Date()

    public init(config: RetrievalConfig = RetrievalConfig(), store: FeatureStoreEndpoint?,
                logger: Logger = Logger(label: "winnow.retrieval")) {
        self.config = config; self.store = store; self.logger = logger
    }

    public var current: ServedModel? { lock.withLock { model } }

    // MARK: - Models

    /// Loads `name` at `version` (0 = its promoted version) from the registry, with its dataset's
    /// catalogue, and swaps it in; requests already batched finish on the previous one.
    @discardableResult
    public func load(name: String, version: UInt64 = 0) async throws -> (previous: UInt64, loaded: UInt64) {
        let store = try self.registry()
        let (meta, bytes) = try await ModelTransfer.download(name: name, version: version, from: store)
        let backbone: Backbone
        do { backbone = try ModelArtifact(decoding: bytes).backbone() }
        catch { throw RPCError(.failedPrecondition, "model \(name) v\(meta.version) cannot be served: \(error)") }
        let snapshot = try await SnapshotCache().snapshot(meta.datasetID, from: store)
        let served: ServedModel
        do {
            served = try ServedModel(name: name, version: meta.version, datasetID: meta.datasetID, backbone: backbone,
                                     itemIDs: snapshot.itemIDs)
        } catch { throw RPCError(.failedPrecondition, "\(error)") }
        let previous = serve(served)
        logger.info("serving \(name) v\(meta.version) (dataset \(meta.datasetID), \(served.itemCount) items)")
        return (previous, meta.version)
    }

    /// Swaps `served` in; returns the version it replaced (0: none).
    @discardableResult
    public func serve(_ served: ServedModel) -> UInt64 {
        lock.withLock { () -> UInt64 in
            let p = model?.version ?? 0
            model = served
            if historiesOf != served.datasetID { histories = [:]; historiesOf = served.datasetID }
            return p
        }
    }

    private func registry() throws -> FeatureStoreEndpoint {
        guard let store else { throw RPCError(.failedPrecondition, "this retrieval server has no feature store") }
        return store
    }

    /// The promoted version of `name`, 0 when none is promoted.
    public func promotedVersion(_ name: String) async throws -> UInt64 {
        var r = Winnow_V1_GetModelRequest(); r.name = name; r.version = 0; r.maxBytes = 1
        do { return try await registry().callGetModel(r).meta.version }
        catch let e as RPCError where e.code == .notFound { return 0 }
        catch let e as StoreError { if case .notFound = e { return 0 }; throw e }
    }

    /// Reloads when the promoted version of `name` differs from the one served (a Promote
    /// anywhere in the stack reaches every replica this way); returns whether it did.
    @discardableResult
    public func follow(_ name: String) async throws -> Bool {
        let promoted = try await promotedVersion(name)
        guard promoted != 0, promoted != current.map({ $0.name == name ? $0.version : 0 }) else { return false }
        try await load(name: name, version: promoted)
        return true
    }

    // MARK: - Requests

    /// Answers one Recommend: checks it, resolves the history (the caller's recent items, or the
    /// user's from the feature store), queues it for the next batch and waits for its ranking.
    public func recommend(_ r: Winnow_V1_RecommendRequest, deadlineMicros: Int64? = nil) async throws -> Winnow_V1_RecommendResponse {
        let arrived = WallClock.nowMicros()
        guard let served = current else {
            throw RPCError(.failedPrecondition, "no model loaded: publish a student (`winnow job submit --publish`) or call Reload")
        }
        let N = served.itemCount
        guard r.k >= 1 && Int(r.k) <= N else { throw RPCError(.invalidArgument, "k must be in 1...\(N) (the catalogue), got \(r.k)") }
        guard r.user.isEmpty || r.recentItems.isEmpty else {
            throw RPCError(.invalidArgument, "give user or recent_items, not both")
        }
        var history: [Int32]
        if !r.user.isEmpty {
            history = try await self.history(of: r.user, dataset: served.datasetID)
            guard !history.isEmpty else { throw RPCError(.notFound, "user \(r.user.prefix(64)) has no history in dataset \(served.datasetID)") }
        } else {
            guard !r.recentItems.isEmpty else { throw RPCError(.invalidArgument, "empty history: give user or recent_items") }
            var unknown: [Int32] = []
            history = r.recentItems.compactMap { id in
                guard let d = served.dense(Int64(id)) else { unknown.append(id); return nil }
                return d
            }
            guard unknown.isEmpty else {
                throw RPCError(.invalidArgument, "recent_items: \(unknown.prefix(10).map(String.init).joined(separator: ", "))"
                               + (unknown.count > 10 ? " and \(unknown.count - 10) more" : "") + " not in the catalogue of \(served.name) v\(served.version)")
            }
        }
        var exclude = Set(r.excludeItems.compactMap { served.dense(Int64($0)) })
        if r.excludeHistory { exclude.formUnion(history) }
        guard N - exclude.count >= Int(r.k) else {
            throw RPCError(.invalidArgument, "k \(r.k) exceeds the \(N - exclude.count) items left after the exclusions")
        }
        let deadline = deadlineMicros ?? RPCContext.deadlineMicros ?? (arrived + 1_000_000)
        let (model, ranked) = try await withCheckedThrowingContinuation { (c: CheckedContinuation<(ServedModel, [(item: Int32, score: Float)]), Error>) in
            enqueue(Pending(request: RankRequest(history: history, k: Int(r.k), exclude: exclude), deadline: deadline,
                            enqueued: arrived, respond: { c.resume(with: $0) }))
        }
        var response = Winnow_V1_RecommendResponse()
        response.items = ranked.map { Int32(model.external($0.item)) }
        response.scores = ranked.map(\.score)
        response.modelName = model.name
        response.modelVersion = model.version
        response.history = history.map { Int32(model.external($0)) }
        return response
    }

    /// A user's history in the served dataset's item ids, through the bounded cache.
    func history(of user: String, dataset: String) async throws -> [Int32] {
        if let h = lock.withLock({ historiesOf == dataset ? histories[user] : nil }) { return h }
        var q = Winnow_V1_GetHistoryRequest(); q.user = user; q.n = config.historyLength; q.datasetID = dataset
        let items: [Int32]
        do { items = try await registry().callGetHistory(q).items }
        catch let e as StoreError {
            if case .invalidArgument(let m) = e { throw RPCError(.invalidArgument, "user: \(m)") }
            throw e.rpcError
        }
        lock.withLock {
            guard historiesOf == dataset else { return }
            if histories.count >= config.historyCacheUsers { histories.removeAll(keepingCapacity: true) }
            histories[user] = items
        }
        return items
    }

    private func enqueue(_ p: Pending) {
        let accepted = lock.withLock { () -> Bool in
            requests += 1
            guard queue.count < config.queueCapacity, !stopping else { shed += 1; return false }
            queue.append(p)
            return true
        }
        guard accepted else {
            p.respond(.failure(RPCError(.resourceExhausted, "retrieval is at its queue bound (\(config.queueCapacity) waiting); retry later")))
            return
        }
        wake.lock(); wake.signal(); wake.unlock()
        startIfNeeded()
    }

    private func startIfNeeded() {
        lock.withLock {
            guard thread == nil, !stopping else { return }
            let t = Thread { [weak self] in self?.drain() }
            t.name = "retrieval batches"
            t.stackSize = 8 << 20
            thread = t
            t.start()
        }
    }

    public func stop() {
        let left = lock.withLock { () -> [Pending] in stopping = true; let q = queue; queue = []; return q }
        for p in left { p.respond(.failure(RPCError(.unavailable, "retrieval is shutting down"))) }
        wake.lock(); wake.broadcast(); wake.unlock()
    }

    /// The batcher: take what waits (after a short window for more, when a batch is not full),
    /// fail what is past its deadline, rank the rest together on one model.
    private func drain() {
        while true {
            wake.lock()
            while lock.withLock({ queue.isEmpty && !stopping }) { _ = wake.wait(until: Date().addingTimeInterval(0.5)) }
            wake.unlock()
            if lock.withLock({ stopping }) { return }
            if lock.withLock({ queue.count < config.maxBatch }) && config.batchWindowMicros > 0 {
                usleep(useconds_t(config.batchWindowMicros))
            }
            let (batch, served) = lock.withLock { () -> ([Pending], ServedModel?) in
                let n = min(queue.count, config.maxBatch)
                let b = Array(queue.prefix(n)); queue.removeFirst(n)
                return (b, model)
            }
            let now = WallClock.nowMicros()
            var live: [Pending] = []
            for p in batch {
                if p.deadline <= now { p.respond(.failure(RPCError(.deadlineExceeded, "deadline passed while queued"))) }
                else { live.append(p) }
            }
            guard !live.isEmpty else { continue }
            guard let served else {
                for p in live { p.respond(.failure(RPCError(.failedPrecondition, "no model loaded"))) }
                continue
            }
            do {
                let ranked = try served.rank(live.map(\.request))
                let done = WallClock.nowMicros()
                lock.withLock {
                    batches += 1; batchedRows += UInt64(live.count)
                    for p in live { record(done - p.enqueued) }
                }
                for (p, r) in zip(live, ranked) { p.respond(.success((served, r))) }
            } catch {
                // a bad request fails alone: rank the others without it
                for p in live {
                    do { p.respond(.success((served, try served.rank([p.request])[0]))) }
                    catch { p.respond(.failure(RPCError(.invalidArgument, "\(error)"))) }
                }
            }
        }
    }

    private func record(_ micros: Int64) {
        if latencies.count < 8192 { latencies.append(micros) } else { latencies[latencyCursor] = micros; latencyCursor = (latencyCursor + 1) % 8192 }
    }

    public func stats() -> Winnow_V1_RetrievalStats {
        lock.withLock {
            var s = Winnow_V1_RetrievalStats()
            s.modelName = model?.name ?? ""; s.modelVersion = model?.version ?? 0
            s.requests = requests; s.shed = shed
            s.meanBatchSize = batches > 0 ? Double(batchedRows) / Double(batches) : 0
            let sorted = latencies.sorted()
            func q(_ p: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(p * Double(sorted.count)))]) }
            s.p50Micros = q(0.5); s.p99Micros = q(0.99)
            return s
        }
    }
}
