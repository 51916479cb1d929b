import Foundation
import Data
import RPC
import SwiftProtobuf
import WinnowProto

// Client-side helpers of the feature store: uploading a file as an ingest load, fetching and
// caching dataset snapshots, downloading and uploading models. The ingest and model helpers
// work against any `FeatureStoreEndpoint`: the store in this process or one over RPC.

/// Where ingest and model calls go: `FeatureStore` itself, or `RemoteFeatureStore` over RPC.
public protocol FeatureStoreEndpoint: Sendable {
    func callBeginIngest(_ r: Winnow_V1_BeginIngestRequest) async throws -> Winnow_V1_BeginIngestResponse
    func callIngestBatch(_ r: Winnow_V1_IngestBatchRequest) async throws -> Winnow_V1_IngestBatchResponse
    func callCommitIngest(_ r: Winnow_V1_CommitIngestRequest) async throws -> Winnow_V1_CommitIngestResponse
    func callAbortIngest(_ r: Winnow_V1_AbortIngestRequest) async throws
    func callGetSnapshot(_ r: Winnow_V1_GetSnapshotRequest) async throws -> Winnow_V1_SnapshotPage
    func callPutModel(_ r: Winnow_V1_PutModelRequest) async throws -> Winnow_V1_PutModelResponse
    func callGetModel(_ r: Winnow_V1_GetModelRequest) async throws -> Winnow_V1_GetModelResponse
    func callGetDataset(_ r: Winnow_V1_GetDatasetRequest) async throws -> Winnow_V1_DatasetInfo
    func callPromote(_ r: Winnow_V1_PromoteRequest) async throws -> Winnow_V1_PromoteResponse
    func callGetHistory(_ r: Winnow_V1_GetHistoryRequest) async throws -> Winnow_V1_GetHistoryResponse
}

extension FeatureStore: FeatureStoreEndpoint {
    public func callBeginIngest(_ r: Winnow_V1_BeginIngestRequest) async throws -> Winnow_V1_BeginIngestResponse { try beginIngest(r) }
    public func callIngestBatch(_ r: Winnow_V1_IngestBatchRequest) async throws -> Winnow_V1_IngestBatchResponse { try ingestBatch(r) }
    public func callCommitIngest(_ r: Winnow_V1_CommitIngestRequest) async throws -> Winnow_V1_CommitIngestResponse { try commitIngest(r) }
    public func callAbortIngest(_ r: Winnow_V1_AbortIngestRequest) async throws { try abortIngest(loadID: r.loadID) }
    public func callGetSnapshot(_ r: Winnow_V1_GetSnapshotRequest) async throws -> Winnow_V1_SnapshotPage { try snapshot(r) }
    public func callPutModel(_ r: Winnow_V1_PutModelRequest) async throws -> Winnow_V1_PutModelResponse { try putModel(r) }
    public func callGetModel(_ r: Winnow_V1_GetModelRequest) async throws -> Winnow_V1_GetModelResponse { try getModel(r) }
    public func callGetDataset(_ r: Winnow_V1_GetDatasetRequest) async throws -> Winnow_V1_DatasetInfo {
        guard !r.datasetID.isEmpty else { throw StoreError.invalidArgument("dataset_id is empty") }
        return try datasetInfo(r.datasetID, required: true)!
    }
    public func callPromote(_ r: Winnow_V1_PromoteRequest) async throws -> Winnow_V1_PromoteResponse { try promote(r) }
    public func callGetHistory(_ r: Winnow_V1_GetHistoryRequest) async throws -> Winnow_V1_GetHistoryResponse { try history(r) }
}

/// The feature store over RPC (through a broker or at its direct endpoint). Every call is
/// idempotent on the server side, so all are sent as idempotent (retried on UNAVAILABLE).
public struct RemoteFeatureStore: FeatureStoreEndpoint {
    public let client: RPCClient
    public let service: String
    public let timeout: Duration

    public init(client: RPCClient, service: String = "featurestore", timeout: Duration = .seconds(120)) {
        self.client = client; self.service = service; self.timeout = timeout
    }

    func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(_ method: String, _ r: Req, _ t: Res.Type) async throws -> Res {
        try await client.call(service: service, method: method, r, as: t, timeout: timeout, idempotent: true)
    }

    public func callBeginIngest(_ r: Winnow_V1_BeginIngestRequest) async throws -> Winnow_V1_BeginIngestResponse { try await call("BeginIngest", r, Winnow_V1_BeginIngestResponse.self) }
    public func callIngestBatch(_ r: Winnow_V1_IngestBatchRequest) async throws -> Winnow_V1_IngestBatchResponse { try await call("IngestBatch", r, Winnow_V1_IngestBatchResponse.self) }
    public func callCommitIngest(_ r: Winnow_V1_CommitIngestRequest) async throws -> Winnow_V1_CommitIngestResponse { try await call("CommitIngest", r, Winnow_V1_CommitIngestResponse.self) }
    public func callAbortIngest(_ r: Winnow_V1_AbortIngestRequest) async throws { _ = try await call("AbortIngest", r, Winnow_V1_AbortIngestResponse.self) }
    public func callGetSnapshot(_ r: Winnow_V1_GetSnapshotRequest) async throws -> Winnow_V1_SnapshotPage { try await call("GetSnapshot", r, Winnow_V1_SnapshotPage.self) }
    public func callPutModel(_ r: Winnow_V1_PutModelRequest) async throws -> Winnow_V1_PutModelResponse { try await call("PutModel", r, Winnow_V1_PutModelResponse.self) }
    public func callGetModel(_ r: Winnow_V1_GetModelRequest) async throws -> Winnow_V1_GetModelResponse { try await call("GetModel", r, Winnow_V1_GetModelResponse.self) }
    public func callGetDataset(_ r: Winnow_V1_GetDatasetRequest) async throws -> Winnow_V1_DatasetInfo { try await call("GetDataset", r, Winnow_V1_DatasetInfo.self) }
    public func callPromote(_ r: Winnow_V1_PromoteRequest) async throws -> Winnow_V1_PromoteResponse { try await call("Promote", r, Winnow_V1_PromoteResponse.self) }
    public func callGetHistory(_ r: Winnow_V1_GetHistoryRequest) async throws -> Winnow_V1_GetHistoryResponse { try await call("GetHistory", r, Winnow_V1_GetHistoryResponse.self) }
}

// MARK: - File ingest

/// Progress of a file ingest, for a progress bar.
public struct IngestProgress: Sendable {
    public var bytesDone: Int
    public var bytesTotal: Int
    /// Rows sent so far (batches in flight included); the committed count at the end.
    public var rows: Int
    public var seconds: Double
    public var rowsPerSecond: Double { seconds > 0 ? Double(rows) / seconds : 0 }
    /// Seconds left at the current byte rate.
    public var eta: Double {
        guard bytesDone > 0, seconds > 0 else { return .infinity }
        return Double(bytesTotal - bytesDone) / (Double(bytesDone) / seconds)
    }
}

/// Sends a file as one ingest load: BeginIngest with its header, raw batches of whole lines
/// (each with its first line number and a batch id = its index), CommitIngest. Re-running it on
/// the same file with the same load id resumes or is a no-op. A rejected batch aborts the load
/// and rethrows the store's error (which names the file, line, column and reason).
public struct FileIngest: Sendable {
    public var path: String
    public var format: Winnow_V1_InputFormat
    public var columns: Winnow_V1_ColumnMapping
    /// Default: `file:<absolute path>:<size>:<mtime>`, so re-ingesting an unchanged file is a no-op.
    public var loadID: String?
    /// Bytes per batch (whole lines; a longer line makes a larger batch).
    public var batchBytes: Int

    public init(path: String, format: Winnow_V1_InputFormat, columns: Winnow_V1_ColumnMapping = .init(),
                loadID: String? = nil, batchBytes: Int = 4 << 20) {
        self.path = path; self.format = format; self.columns = columns; self.loadID = loadID; self.batchBytes = batchBytes
    }

    /// The format a file name suggests: `.inter` RecBole, `.csv`, `.tsv`.
    public static func format(forPath path: String) -> Winnow_V1_InputFormat? {
        switch (path as NSString).pathExtension.lowercased() {
        case "inter": return .recboleInter
        case "csv": return .csv
        case "tsv", "tab": return .tsv
        default: return nil
        }
    }

    public func defaultLoadID() throws -> String {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
        let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
        let mtime = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        return "file:\(url.path):\(size):\(Int64(mtime * 1000))"
    }

    /// Runs the load; `parallel` batches are in flight at once.
    @discardableResult
    public func run(on store: FeatureStoreEndpoint, parallel: Int = 2,
                    progress: (@Sendable (IngestProgress) -> Void)? = nil) async throws -> Winnow_V1_CommitIngestResponse {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw StoreError.invalidArgument("\(path): cannot open for reading")
        }
        defer { try? handle.close() }
        let total = Int((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)??.intValue ?? 0)
        let loadID = try loadID ?? defaultLoadID()
        let started = Date()

        // Header line.
        var pending = [UInt8]()
        var eof = false
        func fill(_ minimum: Int) throws {
            while !eof && pending.count < minimum {
                let data = try handle.read(upToCount: max(batchBytes, 1 << 16)) ?? Foundation.Data()
                if data.isEmpty { eof = true } else { pending.append(contentsOf: data) }
            }
        }
        try fill(1 << 16)
        while !eof && !pending.contains(0x0A) { try fill(pending.count + (1 << 16)) }
        guard let nl = pending.firstIndex(of: 0x0A) else {
            throw StoreError.invalidArgument("\(path):1: no complete header line")
        }
        var header = String(decoding: pending[..<nl], as: UTF8.self)
        if header.hasSuffix("\r") { header.removeLast() }
        pending.removeSubrange(...nl)
        var done = nl + 1

        var begin = Winnow_V1_BeginIngestRequest()
        begin.source = path
        begin.format = format
        begin.columns = columns
        begin.loadID = loadID
        begin.header = header
        let begun = try await store.callBeginIngest(begin)
        if begun.alreadyCommitted {
            var commit = Winnow_V1_CommitIngestRequest()
            commit.loadID = loadID
            return try await store.callCommitIngest(commit)
        }

        var line: UInt64 = 2
        var batchID: UInt64 = 0
        var rows = 0, sent = 0
        do {
            try await withThrowingTaskGroup(of: Int.self) { group in
                var inFlight = 0
                while true {
                    try fill(batchBytes)
                    if pending.isEmpty { break }
                    var cut = pending.count
                    if !eof || pending.count > batchBytes {
                        // Cut after the last newline within the batch size (or the first one after it).
                        let limit = min(batchBytes, pending.count)
                        if let k = pending[..<limit].lastIndex(of: 0x0A) { cut = k + 1 }
                        else if let k = pending.firstIndex(of: 0x0A) { cut = k + 1 }
                        else if !eof { try fill(pending.count + batchBytes); continue }
                    }
                    let raw = Array(pending[..<cut])
                    pending.removeSubrange(..<cut)
                    let lines = raw.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) } + (raw.last == 0x0A ? 0 : 1)
                    var request = Winnow_V1_IngestBatchRequest()
                    request.loadID = loadID
                    request.batchID = batchID
                    request.firstLine = line
                    request.raw = Foundation.Data(raw)
                    batchID += 1
                    line += UInt64(lines)
                    sent += lines
                    done += raw.count
                    if inFlight >= parallel {
                        rows += try await group.next() ?? 0
                        inFlight -= 1
                    }
                    group.addTask { Int(try await store.callIngestBatch(request).rowsAccepted) }
                    inFlight += 1
                    progress?(IngestProgress(bytesDone: done, bytesTotal: total, rows: sent, seconds: Date().timeIntervalSince(started)))
                }
                while let n = try await group.next() { rows += n }
            }
        } catch {
            var abort = Winnow_V1_AbortIngestRequest()
            abort.loadID = loadID
            try? await store.callAbortIngest(abort)
            throw error
        }
        var commit = Winnow_V1_CommitIngestRequest()
        commit.loadID = loadID
        let response = try await store.callCommitIngest(commit)
        progress?(IngestProgress(bytesDone: total, bytesTotal: total, rows: Int(response.rows), seconds: Date().timeIntervalSince(started)))
        return response
    }
}

// MARK: - Snapshots

/// A dataset snapshot (one shard) assembled from its pages: what trainers, teachers and the
/// noise recogniser batch from locally.
public struct DatasetSnapshot: Sendable {
    public var datasetID: String
    public var numItems: Int
    /// Dense user ids of this shard, ascending.
    public var userIDs: [Int64] = []
    /// (users + 1) offsets into `items`/`timestamps`/`ratings`.
    public var offsets: [Int] = [0]
    public var items: [Int32] = []
    public var timestamps: [Double] = []
    public var ratings: [Float] = []
    public var roles: [UInt32] = []
    /// Shard 0 only: (N + 1) popularity, index 0 = 0.
    public var itemPopularity: [UInt64] = []
    /// Shard 0 only: (N) the external id of dense item i at index i − 1.
    public var itemIDs: [Int64] = []
    /// Shard 0 only: ItemCF neighbours, row i at neighbourOffsets[i] ..< neighbourOffsets[i + 1].
    public var neighbourOffsets: [Int] = []
    public var neighbourItems: [Int32] = []
    public var neighbourScores: [Float] = []

    mutating func add(_ page: Winnow_V1_SnapshotPage) {
        if !page.itemPopularity.isEmpty { itemPopularity = page.itemPopularity }
        if !page.itemIds.isEmpty { itemIDs = page.itemIds }
        if page.hasNeighbours {
            neighbourOffsets = page.neighbours.offsets.map { Int($0) }
            neighbourItems = page.neighbours.items
            neighbourScores = page.neighbours.scores
        }
        let s = page.sequences
        let base = items.count
        userIDs.append(contentsOf: s.userIds)
        for k in 1..<max(s.offsets.count, 1) { offsets.append(base + Int(s.offsets[k])) }
        items.append(contentsOf: s.items)
        timestamps.append(contentsOf: s.timestamps)
        ratings.append(contentsOf: s.ratings)
        roles.append(contentsOf: s.roles)
    }

    /// Items of the k-th user of this shard.
    public func sequence(_ k: Int) -> ArraySlice<Int32> { items[offsets[k] ..< offsets[k + 1]] }

    /// The shard's users as the dataset a trainer batches from: user k's items in time order,
    /// items 1...N as the store numbered them. For shard 0 of 1 this is the dataset the store
    /// built, user for user (the same users, in the same order, as `SequenceDataset` over the
    /// same interactions and k-core).
    public var sequenceDataset: SequenceDataset {
        SequenceDataset(sequences: (0..<userIDs.count).map { Array(sequence($0)) }, itemCount: numItems)
    }
}

/// Fetches snapshots page by page and keeps them, in memory and under `directory`, keyed by the
/// dataset id (a content hash, so a cached snapshot never goes stale).
public final class SnapshotCache: @unchecked Sendable {
    public let directory: String?
    private let lock = NSLock()
    private var memory: [String: DatasetSnapshot] = [:]
    public private(set) var fetches = 0

    public init(directory: String? = nil) { self.directory = directory }

    public func snapshot(_ datasetID: String, shard: Int = 0, of shards: Int = 1,
                         from store: FeatureStoreEndpoint) async throws -> DatasetSnapshot {
        let key = "\(datasetID)-\(shard)of\(shards)"
        if let s = lock.withLock({ memory[key] }) { return s }
        let file = directory.map { ($0 as NSString).appendingPathComponent(key + ".snapshot") }
        var pages: [Winnow_V1_SnapshotPage] = []
        if let file, let data = FileManager.default.contents(atPath: file), let read = Self.decode(data) {
            pages = read
        } else {
            var request = Winnow_V1_GetSnapshotRequest()
            request.datasetID = datasetID
            request.shard = UInt32(shard)
            request.numShards = UInt32(shards)
            while true {
                let page = try await store.callGetSnapshot(request)
                pages.append(page)
                if page.nextPageToken == 0 { break }
                request.pageToken = page.nextPageToken
            }
            lock.withLock { fetches += 1 }
            if let file, let dir = directory {
                try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let tmp = file + ".tmp.\(getpid())"
                if FileManager.default.createFile(atPath: tmp, contents: try Self.encode(pages)) {
                    _ = try? FileManager.default.replaceItemAt(URL(fileURLWithPath: file), withItemAt: URL(fileURLWithPath: tmp))
                    if !FileManager.default.fileExists(atPath: file) { try? FileManager.default.moveItem(atPath: tmp, toPath: file) }
                }
            }
        }
        var snapshot = DatasetSnapshot(datasetID: datasetID, numItems: Int(pages.first?.numItems ?? 0))
        for p in pages { snapshot.add(p) }
        lock.withLock { memory[key] = snapshot }
        return snapshot
    }

    /// Pages as length-prefixed serialized messages.
    static func encode(_ pages: [Winnow_V1_SnapshotPage]) throws -> Foundation.Data {
        var out = Foundation.Data()
        for p in pages {
            let bytes: [UInt8] = try p.serializedBytes()
            var n = UInt64(bytes.count).littleEndian
            withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
            out.append(contentsOf: bytes)
        }
        return out
    }

    static func decode(_ data: Foundation.Data) -> [Winnow_V1_SnapshotPage]? {
        let bytes = [UInt8](data)
        var pages: [Winnow_V1_SnapshotPage] = []
        var i = 0
        while i < bytes.count {
            guard i + 8 <= bytes.count else { return nil }
            var n: UInt64 = 0
            for k in 0..<8 { n |= UInt64(bytes[i + k]) << (8 * UInt64(k)) }
            i += 8
            guard n <= UInt64(bytes.count - i), let p = try? Winnow_V1_SnapshotPage(serializedBytes: Array(bytes[i..<(i + Int(n))])) else { return nil }
            pages.append(p)
            i += Int(n)
        }
        return pages.isEmpty || pages.last!.nextPageToken != 0 ? nil : pages
    }
}

// MARK: - Models

/// Uploads and downloads model artifacts in chunks.
public enum ModelTransfer {
    /// Uploads `bytes` under `meta.name` as its next version; returns the registered meta.
    public static func upload(_ bytes: [UInt8], meta: Winnow_V1_ModelMeta, to store: FeatureStoreEndpoint,
                              uploadID: String = UUID().uuidString, chunkBytes: Int = 4 << 20) async throws -> Winnow_V1_ModelMeta {
        var offset = 0
        repeat {
            let end = min(bytes.count, offset + max(chunkBytes, 1))
            var request = Winnow_V1_PutModelRequest()
            request.uploadID = uploadID
            request.offset = UInt64(offset)
            request.chunk = Foundation.Data(bytes[offset..<end])
            request.last = end == bytes.count
            if request.last { request.meta = meta }
            let response = try await store.callPutModel(request)
            if request.last { return response.meta }
            offset = end
        } while true
    }

    /// Downloads a model version (0 = the promoted one). The first reply pins the version, so a
    /// Promote during the download cannot mix two versions; the bytes are checked against the
    /// sha-256 in the meta.
    public static func download(name: String, version: UInt64 = 0, from store: FeatureStoreEndpoint,
                                chunkBytes: Int = 4 << 20) async throws -> (meta: Winnow_V1_ModelMeta, bytes: [UInt8]) {
        var request = Winnow_V1_GetModelRequest()
        request.name = name
        request.version = version
        request.maxBytes = UInt32(chunkBytes)
        var bytes: [UInt8] = []
        var meta: Winnow_V1_ModelMeta?
        while true {
            let response = try await store.callGetModel(request)
            if meta == nil {
                meta = response.meta
                request.version = response.meta.version
                bytes.reserveCapacity(Int(response.meta.sizeBytes))
            }
            bytes.append(contentsOf: response.chunk)
            if response.last { break }
            guard !response.chunk.isEmpty else {
                throw RPCError(.dataLoss, "model \(name) v\(request.version): empty chunk at offset \(bytes.count) before the end")
            }
            request.offset = UInt64(bytes.count)
        }
        let hash = SHA256.hex(SHA256.hash(bytes))
        guard hash == meta!.contentHash else {
            throw RPCError(.dataLoss, "model \(name) v\(meta!.version): sha-256 \(hash) does not match the registry's \(meta!.contentHash)")
        }
        return (meta!, bytes)
    }
}
