import Data
import Foundation
import Postgres
import SwiftProtobuf
import WinnowProto

/// A built dataset as the store holds it in memory: dense per-user sequences (users 0..<U in
/// the order of `SequenceDataset`, items 1...N, 0 = padding), split roles, popularity and ItemCF
/// neighbours, with the external ids of both.
public struct StoredDataset: Sendable {
    public var info: Winnow_V1_DatasetInfo
    /// (U) external user id of dense user u.
    public var userIDs: [Int64]
    /// (U + 1) user u's interactions are at offsets[u] ..< offsets[u + 1].
    public var offsets: [Int]
    public var items: [Int32]
    public var timestamps: [Double]
    public var ratings: [Float]?
    /// (U) 0 train, 1 validation, 2 test (user split); all 0 for the other protocols.
    public var roles: [UInt32]
    /// (N) external item id of dense item i at index i - 1.
    public var itemIDs: [Int64]
    /// (N + 1) interactions per item over all users after filtering; index 0 = 0.
    public var popularity: [UInt64]
    /// Top-K neighbours from the training part only; nil when the spec asks for none.
    public var neighbours: ItemNeighbours?

    public var userCount: Int { userIDs.count }
    public var itemCount: Int { itemIDs.count }
}

extension FeatureStore {
    /// Fills defaults and checks the spec; two specs that build the same dataset normalise equal.
    public static func normalised(_ spec: Winnow_V1_DatasetSpec) throws -> Winnow_V1_DatasetSpec {
        var s = spec
        guard s.ratingThreshold.isFinite, s.ratingThreshold >= 0 else {
            throw StoreError.invalidArgument("rating_threshold must be a finite number >= 0, got \(s.ratingThreshold)")
        }
        guard s.kCore >= 0 else { throw StoreError.invalidArgument("k_core must be >= 0, got \(s.kCore)") }
        guard s.maxLength >= 0 else { throw StoreError.invalidArgument("max_length must be >= 0, got \(s.maxLength)") }
        guard (0...1000).contains(s.itemcfTopK) else {
            throw StoreError.invalidArgument("itemcf_top_k must be in 0...1000, got \(s.itemcfTopK)")
        }
        switch s.split {
        case .unspecified, .leaveOneOut:
            s.split = .leaveOneOut
            s.timeCutoff = 0; s.groundTruthFraction = 0; s.seed = 0
        case .userSplit811:
            if s.groundTruthFraction == 0 { s.groundTruthFraction = 0.2 }
            guard s.groundTruthFraction == 0.2 else {
                throw StoreError.invalidArgument("ground_truth_fraction: the user split holds out the last 20 % (0.2); got \(s.groundTruthFraction)")
            }
            s.timeCutoff = 0
        case .timeCutoff:
            guard s.timeCutoff.isFinite, s.timeCutoff != 0 else {
                throw StoreError.invalidArgument("time_cutoff must be set (a finite timestamp) for TIME_CUTOFF")
            }
            s.groundTruthFraction = 0; s.seed = 0
        case .UNRECOGNIZED(let v):
            throw StoreError.invalidArgument("split protocol \(v) is unknown")
        }
        return s
    }

    /// Builds (or finds) the dataset of `spec` over the committed interactions. The id is a
    /// content hash of the normalised spec and the committed loads it reads, so the same spec over
    /// the same input is built once.
    public func buildDataset(_ request: Winnow_V1_BuildDatasetRequest) throws -> Winnow_V1_BuildDatasetResponse {
        let spec = try Self.normalised(request.spec)
        // Input: the committed loads of the source, in order.
        let loads: [(no: Int, id: String, rows: Int)] = try pool.withConnection { c in
            let r = try c.query("""
                SELECT load_no, load_id, rows FROM ingest_loads
                WHERE state = 'committed' AND ($1 = '' OR source = $1) ORDER BY load_no
                """, [spec.source])
            return try (0..<r.rowCount).map { (try r.int($0, 0)!, r.string($0, 1)!, try r.int($0, 2)!) }
        }
        guard !loads.isEmpty else {
            throw StoreError.failedPrecondition(spec.source.isEmpty ? "no committed interactions to build a dataset from; ingest first"
                                                : "no committed load has source \"\(spec.source)\"")
        }
        var hasher = SHA256()
        hasher.update("winnow.dataset.v1\n")
        hasher.update(try spec.serializedBytes() as [UInt8])
        for l in loads { hasher.update("\n\(l.id)\t\(l.rows)") }
        let datasetID = "ds-" + String(hasher.finalizeHex().prefix(32))

        var response = Winnow_V1_BuildDatasetResponse()
        if let existing = try datasetInfo(datasetID, required: false) {
            response.dataset = existing
            response.alreadyExisted = true
            return response
        }
        let started = Date()
        let built = try materialise(spec: spec, datasetID: datasetID, loads: loads.map(\.no))
        let stored: Bool = try pool.withConnection { c in
            try c.transaction { c in
                try c.query("SELECT pg_advisory_xact_lock(hashtext($1))", [datasetID])
                if try c.query("SELECT 1 FROM datasets WHERE dataset_id = $1", [datasetID]).rowCount > 0 { return false }
                try write(built, spec: spec, to: c)
                return true
            }
        }
        let info = try datasetInfo(datasetID, required: true)!
        var data = built
        data.info = info
        cache(data)
        response.dataset = info
        response.alreadyExisted = !stored
        logger.info("dataset built", metadata: ["dataset": "\(datasetID)", "users": "\(info.users)", "items": "\(info.items)",
                                                "seconds": "\(String(format: "%.2f", Date().timeIntervalSince(started)))"])
        return response
    }

    public func datasetInfo(_ datasetID: String, required: Bool = true) throws -> Winnow_V1_DatasetInfo? {
        let info: Winnow_V1_DatasetInfo? = try pool.withConnection { c in
            let r = try c.query("""
                SELECT dataset_id, spec, users, items, interactions,
                       (extract(epoch FROM created_at) * 1000000)::bigint
                FROM datasets WHERE dataset_id = $1
                """, [datasetID], resultFormat: .binary)
            guard r.rowCount > 0 else { return nil }
            return try Self.info(r, 0)
        }
        if info == nil && required { throw StoreError.notFound("no dataset \(datasetID)") }
        return info
    }

    public func listDatasets() throws -> Winnow_V1_ListDatasetsResponse {
        try pool.withConnection { c in
            let r = try c.query("""
                SELECT dataset_id, spec, users, items, interactions,
                       (extract(epoch FROM created_at) * 1000000)::bigint
                FROM datasets ORDER BY created_at, dataset_id
                """, resultFormat: .binary)
            var response = Winnow_V1_ListDatasetsResponse()
            response.datasets = try (0..<r.rowCount).map { try Self.info(r, $0) }
            return response
        }
    }

    static func info(_ r: QueryResult, _ k: Int) throws -> Winnow_V1_DatasetInfo {
        var info = Winnow_V1_DatasetInfo()
        info.datasetID = r.string(k, 0) ?? ""
        info.spec = try Winnow_V1_DatasetSpec(serializedBytes: try r.bytes(k, 1) ?? [])
        info.users = UInt64(try r.int(k, 2) ?? 0)
        info.items = UInt64(try r.int(k, 3) ?? 0)
        info.interactions = UInt64(try r.int(k, 4) ?? 0)
        info.createdUnixMicros = Int64(try r.int(k, 5) ?? 0)
        return info
    }

    // MARK: building

    /// Reads the input rows, filters, k-cores, remaps, splits and computes neighbours.
    func materialise(spec: Winnow_V1_DatasetSpec, datasetID: String, loads: [Int]) throws -> StoredDataset {
        var userOf: [Int64: Int32] = [:], itemOf: [Int64: Int32] = [:]
        var userTokens = TokenTable(), itemTokens = TokenTable()
        var users: [Int32] = [], items: [Int32] = [], times: [Double] = [], ratings: [Float] = []
        var anyRating = false
        // load numbers are the store's own integers; the spec's rating threshold is applied here,
        // not spelled into the statement (COPY takes no bind parameters)
        let list = loads.map(String.init).joined(separator: ",")
        let threshold = spec.ratingThreshold
        try pool.withConnection { c in
            try c.copyOut("""
                COPY (SELECT i.user_id, i.item_id, i.ts, i.rating FROM interactions i
                      WHERE i.load_no IN (\(list)) ORDER BY i.load_no, i.line) TO STDOUT
                """) { row in
                var f = TextRow(row)
                let u = f.int64(), v = f.int64(), t = f.double(), r = f.optionalFloat()
                // rows without a rating, or below the threshold, are left out when there is one
                if threshold > 0, !(r.map { $0 >= threshold } ?? false) { return }
                if let k = userOf[u] { users.append(k) } else {
                    let k = userTokens.intern(String(u)); userOf[u] = k; users.append(k)
                }
                if let k = itemOf[v] { items.append(k) } else {
                    let k = itemTokens.intern(String(v)); itemOf[v] = k; items.append(k)
                }
                times.append(t)
                ratings.append(r ?? .nan)
                if r != nil { anyRating = true }
            }
        }
        let interactions = Interactions(users: users, items: items, timestamps: times, ratings: anyRating ? ratings : nil,
                                        userTokens: userTokens, itemTokens: itemTokens)
        let k = Int(spec.kCore)
        let data = SequenceDataset(interactions, userK: k, itemK: k)
        guard data.userCount > 0, data.itemCount > 0 else {
            throw StoreError.failedPrecondition("the spec leaves no interactions (k_core \(k), rating_threshold \(spec.ratingThreshold))")
        }
        // Roles and the training part that ItemCF sees.
        var roles = [UInt32](repeating: 0, count: data.userCount)
        var trainItems: [Int32] = [], trainOffsets = [0]
        switch spec.split {
        case .userSplit811:
            let split = UserSplit(data, seed: spec.seed)
            for u in split.validationUsers { roles[Int(u)] = 1 }
            for u in split.testUsers { roles[Int(u)] = 2 }
            for u in 0..<data.userCount {
                if roles[u] == 0 { trainItems.append(contentsOf: data.sequence(u)) }
                trainOffsets.append(trainItems.count)
            }
        case .timeCutoff:
            for u in 0..<data.userCount {
                for p in data.offsets[u]..<data.offsets[u + 1] where data.timestamps[p] < spec.timeCutoff {
                    trainItems.append(data.items[p])
                }
                trainOffsets.append(trainItems.count)
            }
        default: // leave-one-out: all but the last two of sequences of >= 3 (as LeaveOneOut)
            for u in 0..<data.userCount {
                let n = data.length(u)
                let end = n >= 3 ? n - 2 : n
                trainItems.append(contentsOf: data.sequence(u).prefix(end))
                trainOffsets.append(trainItems.count)
            }
        }
        var neighbours: ItemNeighbours?
        if spec.itemcfTopK > 0 {
            do {
                neighbours = try ItemCF.neighbours(items: trainItems, offsets: trainOffsets, itemCount: data.itemCount,
                                                   k: Int(spec.itemcfTopK))
            } catch {
                throw StoreError.internalError("ItemCF failed: \(error)")
            }
        }
        var info = Winnow_V1_DatasetInfo()
        info.datasetID = datasetID
        info.spec = spec
        info.users = UInt64(data.userCount)
        info.items = UInt64(data.itemCount)
        info.interactions = UInt64(data.interactionCount)
        return StoredDataset(
            info: info,
            userIDs: (0..<data.userCount).map { Int64(data.userToken(Int32($0)))! },
            offsets: data.offsets, items: data.items, timestamps: data.timestamps, ratings: data.ratings,
            roles: roles,
            itemIDs: (1...data.itemCount).map { Int64(data.itemToken(Int32($0)))! },
            popularity: data.itemPopularity().map { UInt64($0) },
            neighbours: neighbours)
    }

    private func write(_ d: StoredDataset, spec: Winnow_V1_DatasetSpec, to c: Connection) throws {
        let id = d.info.datasetID
        try c.query("""
            INSERT INTO datasets (dataset_id, spec, spec_text, users, items, interactions)
            VALUES ($1, $2, $3, $4, $5, $6)
            """, [id, try spec.serializedBytes() as [UInt8], try spec.jsonString(), d.userCount, d.itemCount, d.items.count])
        try c.copyIn("COPY dataset_users (dataset_id, user_idx, user_id, role, items, timestamps, ratings) FROM STDIN") { w in
            var line = ""
            for u in 0..<d.userCount {
                let range = d.offsets[u]..<d.offsets[u + 1]
                line.removeAll(keepingCapacity: true)
                line += "\(id)\t\(u)\t\(d.userIDs[u])\t\(d.roles[u])\t{"
                line += d.items[range].map { String($0) }.joined(separator: ",")
                line += "}\t{"
                line += d.timestamps[range].map { "\($0)" }.joined(separator: ",")
                line += "}\t"
                if let rs = d.ratings { line += "{" + rs[range].map { $0.isNaN ? "NULL" : "\($0)" }.joined(separator: ",") + "}" } else { line += "\\N" }
                line += "\n"
                try w.write(line)
            }
        }
        try c.copyIn("COPY dataset_items (dataset_id, item_idx, item_id, popularity, neighbours, scores) FROM STDIN") { w in
            var line = ""
            for i in 1...d.itemCount {
                line.removeAll(keepingCapacity: true)
                line += "\(id)\t\(i)\t\(d.itemIDs[i - 1])\t\(d.popularity[i])\t{"
                if let nb = d.neighbours {
                    let (items, scores) = nb.neighbours(of: i)
                    line += items.map { String($0) }.joined(separator: ",") + "}\t{" + scores.map { "\($0)" }.joined(separator: ",") + "}\n"
                } else {
                    line += "}\t{}\n"
                }
                try w.write(line)
            }
        }
    }

    // MARK: loading and snapshots

    func cache(_ d: StoredDataset) {
        lock.withLock {
            loadedDatasets.removeAll { $0.id == d.info.datasetID }
            loadedDatasets.append((d.info.datasetID, d))
            if loadedDatasets.count > Self.datasetCacheSize { loadedDatasets.removeFirst() }
        }
    }

    /// The dataset, from memory or read back from the database.
    public func dataset(_ datasetID: String) throws -> StoredDataset {
        if let d = lock.withLock({ loadedDatasets.first { $0.id == datasetID }?.data }) { return d }
        guard let info = try datasetInfo(datasetID, required: true) else { throw StoreError.notFound("no dataset \(datasetID)") }
        var userIDs: [Int64] = [], offsets = [0], items: [Int32] = [], times: [Double] = [], roles: [UInt32] = []
        var ratings: [Float] = [], anyRating = false
        var itemIDs: [Int64] = [], popularity: [UInt64] = [0]
        var nbOffsets = [0, 0], nbItems: [Int32] = [], nbScores: [Float] = []
        try pool.withConnection { c in
            // COPY takes no bind parameters: the id travels as one, into a session setting that
            // the COPY's query reads, so no request text becomes statement text
            try c.query("SELECT set_config('winnow.copy_dataset', $1, false)", [datasetID])
            try c.copyOut("COPY (SELECT user_id, role, items, timestamps, ratings FROM dataset_users WHERE dataset_id = current_setting('winnow.copy_dataset') ORDER BY user_idx) TO STDOUT") { row in
                var f = TextRow(row)
                userIDs.append(f.int64())
                roles.append(UInt32(f.int64()))
                f.intArray { items.append(Int32($0)) }
                f.doubleArray { times.append($0) }
                if f.isNull() { f.skip() } else { anyRating = true; f.doubleArray { ratings.append($0.isNaN ? .nan : Float($0)) } }
                offsets.append(items.count)
                if ratings.count < items.count { ratings += [Float](repeating: .nan, count: items.count - ratings.count) }
            }
            try c.copyOut("COPY (SELECT item_id, popularity, neighbours, scores FROM dataset_items WHERE dataset_id = current_setting('winnow.copy_dataset') ORDER BY item_idx) TO STDOUT") { row in
                var f = TextRow(row)
                itemIDs.append(f.int64())
                popularity.append(UInt64(f.int64()))
                f.intArray { nbItems.append(Int32($0)) }
                f.doubleArray { nbScores.append(Float($0)) }
                nbOffsets.append(nbItems.count)
            }
        }
        let k = Int(info.spec.itemcfTopK)
        let d = StoredDataset(
            info: info, userIDs: userIDs, offsets: offsets, items: items, timestamps: times,
            ratings: anyRating ? ratings : nil, roles: roles, itemIDs: itemIDs, popularity: popularity,
            neighbours: k > 0 ? ItemNeighbours(itemCount: itemIDs.count, k: k, offsets: nbOffsets, items: nbItems, scores: nbScores) : nil)
        cache(d)
        return d
    }

    /// Byte budget of one snapshot page's sequences (well under the 64 MiB frame cap).
    public static let snapshotPageBudget = 24 << 20
    /// The most bytes the neighbour lists may take on the first page (the frame cap is 64 MiB).
    public static let snapshotNeighbourLimit = 56 << 20

    /// One page of shard `shard` of `num_shards` (users u with u % num_shards == shard, in order).
    /// The first page of shard 0 also carries popularity and neighbours.
    public func snapshot(_ request: Winnow_V1_GetSnapshotRequest) throws -> Winnow_V1_SnapshotPage {
        let shards = Int(max(request.numShards, 1))
        let shard = Int(request.shard)
        guard shard < shards else { throw StoreError.invalidArgument("shard \(shard) is outside 0..<\(shards)") }
        guard !request.datasetID.isEmpty else { throw StoreError.invalidArgument("dataset_id is empty") }
        guard request.pageToken <= UInt64(Int32.max) * 64 else {
            throw StoreError.invalidArgument("page_token \(request.pageToken) is not one this store issued")
        }
        let d = try dataset(request.datasetID)
        let start = request.pageToken == 0 ? shard : Int(request.pageToken)
        guard start % shards == shard, start >= 0 else {
            throw StoreError.invalidArgument("page_token \(request.pageToken) does not belong to shard \(shard) of \(shards)")
        }
        let maxUsers = request.maxUsers == 0 ? 50_000 : Int(request.maxUsers)
        var page = Winnow_V1_SnapshotPage()
        page.datasetID = d.info.datasetID
        page.numItems = UInt64(d.itemCount)
        var budget = Self.snapshotPageBudget
        if request.pageToken == 0 && shard == 0 {
            page.itemPopularity = d.popularity
            page.itemIds = d.itemIDs
            if let nb = d.neighbours {
                var n = Winnow_V1_ItemNeighbours()
                n.offsets = nb.offsets.map { UInt64($0) }
                n.items = nb.items
                n.scores = nb.scores
                let bytes = n.serializedDataSizeEstimate
                guard bytes <= Self.snapshotNeighbourLimit else {
                    throw StoreError.failedPrecondition("the neighbour lists of \(d.info.datasetID) take \(bytes) bytes, over the \(Self.snapshotNeighbourLimit)-byte limit of one snapshot page; build the dataset with a smaller itemcf_top_k")
                }
                page.neighbours = n
                budget -= bytes
            }
        }
        var seq = Winnow_V1_PackedSequences()
        seq.offsets = [0]
        var u = start, used = 0
        while u < d.userCount && seq.userIds.count < maxUsers {
            let range = d.offsets[u]..<d.offsets[u + 1]
            let cost = range.count * 17 + 24
            if !seq.userIds.isEmpty && used + cost > budget { break }
            used += cost
            seq.userIds.append(Int64(u))
            seq.items.append(contentsOf: d.items[range])
            seq.timestamps.append(contentsOf: d.timestamps[range])
            if let rs = d.ratings { seq.ratings.append(contentsOf: rs[range]) }
            seq.roles.append(d.roles[u])
            seq.offsets.append(UInt64(seq.items.count))
            u += shards
        }
        page.sequences = seq
        page.nextPageToken = u < d.userCount ? UInt64(u) : 0
        return page
    }
}

extension Winnow_V1_ItemNeighbours {
    /// Bytes of the packed fields, from the largest varint each value can take.
    var serializedDataSizeEstimate: Int {
        offsets.reduce(0) { $0 + varintSize($1) } + items.reduce(0) { $0 + varintSize(UInt64(UInt32(bitPattern: $1))) } + scores.count * 4 + 32
    }
}

private func varintSize(_ v: UInt64) -> Int { v < 1 << 7 ? 1 : v < 1 << 14 ? 2 : v < 1 << 21 ? 3 : v < 1 << 28 ? 4 : 5 + (v >= 1 << 35 ? 5 : 0) }

/// Reads the fields of one row of COPY's text format (tab-separated, `\N` for NULL, numbers and
/// numeric arrays only).
struct TextRow {
    let p: UnsafeRawBufferPointer
    var i = 0
    init(_ p: UnsafeRawBufferPointer) { self.p = p }

    private mutating func field() -> (Int, Int) {
        let s = i
        while i < p.count && p[i] != 0x09 && p[i] != 0x0A { i += 1 }
        let e = i
        if i < p.count { i += 1 }
        return (s, e)
    }

    mutating func isNull() -> Bool { i + 1 < p.count && p[i] == 0x5C && p[i + 1] == 0x4E }
    mutating func skip() { _ = field() }

    mutating func int64() -> Int64 {
        let (s, e) = field()
        return Self.int(p, s, e)
    }

    static func int(_ p: UnsafeRawBufferPointer, _ s: Int, _ e: Int) -> Int64 {
        var v: Int64 = 0, k = s, neg = false
        if k < e && p[k] == 0x2D { neg = true; k += 1 }
        while k < e { v = v &* 10 &+ Int64(p[k] &- 0x30); k += 1 }
        return neg ? -v : v
    }

    static func double(_ p: UnsafeRawBufferPointer, _ s: Int, _ e: Int) -> Double {
        // Integral values (most timestamps) without strtod.
        var k = s, neg = false, v: Double = 0, plain = true
        if k < e && p[k] == 0x2D { neg = true; k += 1 }
        var digits = 0
        while k < e {
            let c = p[k]
            if c >= 0x30 && c <= 0x39 && digits < 15 { v = v * 10 + Double(c - 0x30); digits += 1 } else { plain = false; break }
            k += 1
        }
        if plain && digits > 0 { return neg ? -v : v }
        var text = [CChar](repeating: 0, count: e - s + 1)
        for j in s..<e { text[j - s] = CChar(bitPattern: p[j]) }
        if e - s == 4 && String(cString: text) == "NULL" { return .nan }
        return strtod(text, nil)
    }

    mutating func double() -> Double {
        let (s, e) = field()
        return Self.double(p, s, e)
    }

    mutating func optionalFloat() -> Float? {
        if isNull() { _ = field(); return nil }
        return Float(double())
    }

    /// Calls `body` for each element of a `{a,b,c}` array field.
    mutating func intArray(_ body: (Int64) -> Void) {
        let (s, e) = field()
        var k = s + 1
        while k < e - 1 {
            var j = k
            while j < e - 1 && p[j] != 0x2C { j += 1 }
            body(Self.int(p, k, j))
            k = j + 1
        }
    }

    mutating func doubleArray(_ body: (Double) -> Void) {
        let (s, e) = field()
        var k = s + 1
        while k < e - 1 {
            var j = k
            while j < e - 1 && p[j] != 0x2C { j += 1 }
            body(Self.double(p, k, j))
            k = j + 1
        }
    }
}
