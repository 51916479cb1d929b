import Foundation
import Logging
import Postgres
import WinnowProto

/// The feature store over one Postgres database: ingest, online events, history, datasets and
/// snapshots (Datasets.swift), and the model registry (ModelRegistry.swift). Every method is
/// blocking, thread-safe, and throws `StoreError`. The service process wraps it in rpcs
/// (`FeatureStoreService`); tests and tools may use it directly.
public final class FeatureStore: @unchecked Sendable {
    public let pool: StorePool
    let logger: Logger
    let lock = NSLock()
    // Guarded by `lock`:
    var histories: [Int64: [String: [(item: Int32, ts: Double)]]] = [:]
    var itemMaps: [String: [Int64: Int32]] = [:]
    var promotedDataset: String??
    var loadedDatasets: [(id: String, data: StoredDataset)] = []

    /// The longest history kept per user in memory.
    public static let historyCacheLength = 1000
    /// Datasets kept loaded for snapshots.
    public static let datasetCacheSize = 2

    /// Connects (lazily, through the pool) and brings the schema up to date.
    public init(url: String, poolSize: Int = 8, logger: Logger = Logger(label: "winnow.featurestore")) throws {
        self.logger = logger
        pool = StorePool(url: url, capacity: poolSize, logger: logger)
        let (from, to) = try pool.withConnection { try Schema.migrate($0) }
        if from != to { logger.info("schema migrated from version \(from) to \(to)") }
    }

    public func close() { pool.close() }

    // MARK: Ingest

    static func stagingTable(_ loadNo: Int) -> String { "interactions_load_\(loadNo)" }

    public struct LoadState: Sendable {
        public var loadNo: Int
        public var alreadyCommitted: Bool
    }

    /// Starts a load (or resumes an open one with the same id). A load id that was committed
    /// before is reported as such and nothing happens.
    @discardableResult
    public func beginIngest(_ request: Winnow_V1_BeginIngestRequest) throws -> Winnow_V1_BeginIngestResponse {
        guard !request.loadID.isEmpty else { throw StoreError.invalidArgument("load_id is empty; choose one per load (e.g. a content hash of the file)") }
        let source = request.source.isEmpty ? request.loadID : request.source
        let format = try IngestFormat(source: source, format: request.format, header: request.header, columns: request.columns)
        var response = Winnow_V1_BeginIngestResponse()
        response.loadID = request.loadID
        try pool.withConnection { c in
            try c.transaction { c in
                try c.exec("SELECT pg_advisory_xact_lock(730105)")
                let existing = try c.query("SELECT load_no, state, format, header, columns FROM ingest_loads WHERE load_id = $1", [request.loadID])
                if existing.rowCount > 0 {
                    let row = existing[0]
                    if try row.string("state") == "committed" { response.alreadyCommitted = true; return }
                    guard try row.string("format") == format.kind.rawValue, try row.string("header") == request.header,
                          try row.string("columns") == format.columnsText else {
                        throw StoreError.failedPrecondition("load \(request.loadID) is open with another format, header or column mapping; abort it or choose another load id")
                    }
                    return
                }
                let loadNo = try c.query("SELECT coalesce(max(load_no), 0) + 1 FROM ingest_loads").int(0, 0)!
                try c.query("""
                    INSERT INTO ingest_loads (load_no, load_id, source, format, header, columns, state)
                    VALUES ($1, $2, $3, $4, $5, $6, 'open')
                    """, [loadNo, request.loadID, source, format.kind.rawValue, request.header, format.columnsText])
                let table = Self.stagingTable(loadNo)
                try c.exec("""
                    CREATE TABLE \(table) (LIKE interactions);
                    ALTER TABLE \(table) ALTER COLUMN load_no SET DEFAULT \(loadNo);
                    ALTER TABLE \(table) ADD CONSTRAINT \(table)_load CHECK (load_no = \(loadNo));
                    """)
            }
        }
        return response
    }

    struct OpenLoad {
        var loadNo: Int
        var committed: Bool
        var format: IngestFormat?
        var source: String
    }

    private func findLoad(_ c: Connection, _ loadID: String) throws -> OpenLoad {
        let r = try c.query("SELECT load_no, state, source, format, header, columns FROM ingest_loads WHERE load_id = $1", [loadID])
        guard r.rowCount > 0 else { throw StoreError.notFound("no load with id \(loadID); call BeginIngest first") }
        let row = r[0]
        let committed = try row.string("state") == "committed"
        let source = try row.string("source") ?? loadID
        var format: IngestFormat?
        if !committed {
            let cols = (try row.string("columns") ?? "").split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            var mapping = Winnow_V1_ColumnMapping()
            if cols.count == 4 { mapping.user = cols[0]; mapping.item = cols[1]; mapping.timestamp = cols[2]; mapping.rating = cols[3] }
            let stored = try row.string("format")
            let kind: Winnow_V1_InputFormat = stored == "csv" ? .csv : stored == "tsv" ? .tsv : .recboleInter
            format = try IngestFormat(source: source, format: kind, header: try row.string("header") ?? "", columns: mapping)
        }
        return OpenLoad(loadNo: try row.int("load_no")!, committed: committed, format: format, source: source)
    }

    /// Stages one batch of an open load. A batch id seen before is a no-op. A bad row aborts the
    /// whole load (nothing of it stays in the database) and is reported with file, line, column
    /// and reason.
    public func ingestBatch(_ request: Winnow_V1_IngestBatchRequest) throws -> Winnow_V1_IngestBatchResponse {
        guard !request.loadID.isEmpty else { throw StoreError.invalidArgument("load_id is empty") }
        guard request.raw.isEmpty || request.rows.isEmpty else {
            throw StoreError.invalidArgument("batch \(request.batchID) of load \(request.loadID) has both raw lines and parsed rows; send one")
        }
        let load = try pool.withConnection { try findLoad($0, request.loadID) }
        var response = Winnow_V1_IngestBatchResponse()
        if load.committed { response.duplicate = true; return response }
        guard request.firstLine < 1 << 48 else {
            throw StoreError.invalidArgument("batch \(request.batchID): first_line \(request.firstLine) is not a line number")
        }
        let firstLine = request.firstLine == 0 ? 2 : request.firstLine
        let rows: IngestRows
        do {
            if !request.rows.isEmpty {
                rows = try IngestRows(request.rows, source: load.source, firstLine: firstLine)
            } else {
                rows = try load.format!.parse(raw: Array(request.raw), firstLine: firstLine)
            }
        } catch {
            // A bad row stops the load: drop what was staged so the database is as before.
            try? abortIngest(loadID: request.loadID)
            throw error
        }
        try pool.withConnection { c in
            try c.transaction { c in
                let inserted = try c.execute("""
                    INSERT INTO ingest_batches (load_no, batch_id, rows) VALUES ($1, $2, $3)
                    ON CONFLICT DO NOTHING
                    """, [load.loadNo, Int64(bitPattern: request.batchID), rows.count])
                if inserted == 0 { response.duplicate = true; return }
                let bytes = rows.copyBinary()
                try c.copyIn("COPY \(Self.stagingTable(load.loadNo)) (line, user_id, item_id, ts, rating) FROM STDIN (FORMAT binary)") { w in
                    try w.write(bytes)
                }
                response.rowsAccepted = UInt64(rows.count)
            }
        }
        return response
    }

    /// Makes a load's rows visible, all at once: its staging table becomes a partition of
    /// `interactions` in one transaction. Committing again reports the first commit's counts.
    public func commitIngest(_ request: Winnow_V1_CommitIngestRequest) throws -> Winnow_V1_CommitIngestResponse {
        guard !request.loadID.isEmpty else { throw StoreError.invalidArgument("load_id is empty") }
        let response: Winnow_V1_CommitIngestResponse = try pool.withConnection { c in
            try c.transaction { c in
                var response = Winnow_V1_CommitIngestResponse()
                let r = try c.query("SELECT load_no, state FROM ingest_loads WHERE load_id = $1 FOR UPDATE", [request.loadID])
                guard r.rowCount > 0 else { throw StoreError.notFound("no load with id \(request.loadID)") }
                let loadNo = try r.int(0, 0)!
                let table = Self.stagingTable(loadNo)
                let counts = "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT user_id FROM \(table)) u), (SELECT count(*) FROM (SELECT DISTINCT item_id FROM \(table)) i) FROM \(table)"
                if r.string(0, 1) == "committed" {
                    let n = try c.query(counts)
                    response.rows = UInt64(try n.int(0, 0) ?? 0)
                    response.users = UInt64(try n.int(0, 1) ?? 0)
                    response.items = UInt64(try n.int(0, 2) ?? 0)
                    response.alreadyCommitted = true
                    return response
                }
                let n = try c.query(counts)
                response.rows = UInt64(try n.int(0, 0) ?? 0)
                response.users = UInt64(try n.int(0, 1) ?? 0)
                response.items = UInt64(try n.int(0, 2) ?? 0)
                try c.exec("ALTER TABLE interactions ATTACH PARTITION \(table) FOR VALUES IN (\(loadNo))")
                try c.query("UPDATE ingest_loads SET state = 'committed', rows = $2, committed_at = now() WHERE load_no = $1",
                            [loadNo, Int(response.rows)])
                try c.query("DELETE FROM ingest_batches WHERE load_no = $1", [loadNo])
                return response
            }
        }
        if !response.alreadyCommitted {
            lock.withLock { histories.removeAll() }
            logger.info("load committed", metadata: ["load": "\(request.loadID)", "rows": "\(response.rows)"])
        }
        return response
    }

    /// Drops an open load and everything staged for it. Unknown load ids are a no-op; a committed
    /// load cannot be aborted.
    public func abortIngest(loadID: String) throws {
        guard !loadID.isEmpty else { throw StoreError.invalidArgument("load_id is empty") }
        try pool.withConnection { c in
            try c.transaction { c in
                let r = try c.query("SELECT load_no, state FROM ingest_loads WHERE load_id = $1 FOR UPDATE", [loadID])
                guard r.rowCount > 0 else { return }
                if r.string(0, 1) == "committed" {
                    throw StoreError.failedPrecondition("load \(loadID) is committed; it cannot be aborted")
                }
                let loadNo = try r.int(0, 0)!
                try c.exec("DROP TABLE IF EXISTS \(Self.stagingTable(loadNo))")
                try c.query("DELETE FROM ingest_loads WHERE load_no = $1", [loadNo])
            }
        }
    }

    // MARK: Online events

    /// Appends online events; an event id seen before is counted as a duplicate and skipped.
    public func appendEvents(_ request: Winnow_V1_AppendEventsRequest) throws -> Winnow_V1_AppendEventsResponse {
        var ids: [String] = [], users: [Int64] = [], items: [Int64] = [], times: [Double] = [], kinds: [String] = []
        for (k, e) in request.events.enumerated() {
            guard !e.eventID.isEmpty else { throw StoreError.invalidArgument("event \(k): event_id is empty") }
            guard let u = Int64(e.user) else { throw StoreError.invalidArgument("event \(k) (\(e.eventID)): user id is not an integer: \"\(e.user.prefix(40))\"") }
            guard let i = Int64(e.item) else { throw StoreError.invalidArgument("event \(k) (\(e.eventID)): item id is not an integer: \"\(e.item.prefix(40))\"") }
            guard e.timestamp.isFinite else { throw StoreError.invalidArgument("event \(k) (\(e.eventID)): timestamp is not a finite number") }
            ids.append(e.eventID); users.append(u); items.append(i); times.append(e.timestamp); kinds.append(e.kind.isEmpty ? "event" : e.kind)
        }
        var response = Winnow_V1_AppendEventsResponse()
        guard !ids.isEmpty else { return response }
        let appended = try pool.withConnection { c in
            try c.execute("""
                INSERT INTO events (event_id, user_id, item_id, ts, kind)
                SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[], $5::text[])
                ON CONFLICT (event_id) DO NOTHING
                """, [arrayLiteral(ids), arrayLiteral(users.map(String.init)), arrayLiteral(items.map(String.init)),
                      arrayLiteral(times.map { "\($0)" }), arrayLiteral(kinds)])
        }
        response.appended = UInt64(appended)
        response.duplicates = UInt64(ids.count - appended)
        lock.withLock { for u in Set(users) { histories[u] = nil } }
        return response
    }

    // MARK: History

    /// The `n` most recent items of `user` (oldest first), interactions and online events
    /// together, in the item ids of `datasetID` ("" = the dataset of the most recently promoted
    /// model). Items the dataset does not know are left out; an unknown user has an empty history.
    public func history(_ request: Winnow_V1_GetHistoryRequest) throws -> Winnow_V1_GetHistoryResponse {
        guard let user = Int64(request.user) else {
            throw StoreError.invalidArgument("user id is not an integer: \"\(request.user.prefix(40))\"")
        }
        guard request.n > 0 else { throw StoreError.invalidArgument("n must be >= 1, got \(request.n)") }
        let n = min(Int(request.n), Self.historyCacheLength)
        let datasetID = request.datasetID.isEmpty ? try promotedDatasetID() : request.datasetID
        var response = Winnow_V1_GetHistoryResponse()
        if let cached = lock.withLock({ histories[user]?[datasetID] }) {
            fill(&response, cached, n)
            return response
        }
        let map = try itemMap(datasetID)
        let rows: [(Int64, Double)] = try pool.withConnection { c in
            let r = try c.query("""
                SELECT item_id, ts FROM (
                    SELECT item_id, ts, 0 AS src, line AS ord FROM interactions WHERE user_id = $1
                    UNION ALL
                    SELECT item_id, ts, 1 AS src, 0 AS ord FROM events WHERE user_id = $1) h
                ORDER BY ts DESC, src DESC, ord DESC LIMIT $2
                """, [user, Self.historyCacheLength])
            return try (0..<r.rowCount).map { (Int64(try r.int($0, 0)!), try r.double($0, 1)!) }
        }
        var history: [(item: Int32, ts: Double)] = []
        history.reserveCapacity(rows.count)
        for (item, ts) in rows.reversed() { if let id = map[item] { history.append((id, ts)) } }
        lock.withLock { histories[user, default: [:]][datasetID] = history }
        fill(&response, history, n)
        return response
    }

    private func fill(_ response: inout Winnow_V1_GetHistoryResponse, _ history: [(item: Int32, ts: Double)], _ n: Int) {
        let tail = history.suffix(n)
        response.items = tail.map(\.item)
        response.timestamps = tail.map(\.ts)
    }

    /// The dataset of the most recently promoted model.
    func promotedDatasetID() throws -> String {
        if let cached = lock.withLock({ promotedDataset }), let id = cached { return id }
        let id: String? = try pool.withConnection { c in
            let r = try c.query("""
                SELECT m.dataset_id FROM model_promotions p JOIN models m USING (name, version)
                ORDER BY p.promoted_at DESC LIMIT 1
                """)
            return r.rowCount > 0 ? r.string(0, 0) : nil
        }
        guard let id, !id.isEmpty else {
            throw StoreError.failedPrecondition("no promoted model names a dataset; pass dataset_id")
        }
        lock.withLock { promotedDataset = .some(id) }
        return id
    }

    /// External item id -> dense item id of a dataset (datasets are immutable, so cached for good).
    func itemMap(_ datasetID: String) throws -> [Int64: Int32] {
        if let m = lock.withLock({ itemMaps[datasetID] }) { return m }
        let map: [Int64: Int32] = try pool.withConnection { c in
            let exists = try c.query("SELECT 1 FROM datasets WHERE dataset_id = $1", [datasetID])
            guard exists.rowCount > 0 else { throw StoreError.notFound("no dataset \(datasetID)") }
            let r = try c.query("SELECT item_id, item_idx FROM dataset_items WHERE dataset_id = $1", [datasetID])
            var m: [Int64: Int32] = [:]
            m.reserveCapacity(r.rowCount)
            for k in 0..<r.rowCount { m[Int64(try r.int(k, 0)!)] = Int32(try r.int(k, 1)!) }
            return m
        }
        lock.withLock { itemMaps[datasetID] = map }
        return map
    }
}

/// A Postgres array literal of strings (`{"a","b"}`), every element quoted.
func arrayLiteral(_ values: [String]) -> String {
    var s = "{"
    for (k, v) in values.enumerated() {
        if k > 0 { s += "," }
        s += "\""
        for ch in v.unicodeScalars {
            if ch == "\"" || ch == "\\" { s += "\\" }
            s.unicodeScalars.append(ch)
        }
        s += "\""
    }
    return s + "}"
}
