import Foundation
import Postgres
import WinnowProto

/// The model name the trainer publishes its students under; retrieval serves its promoted version.
public let studentModelName = "student"

extension FeatureStore {
    /// The largest chunk one PutModel or GetModel call carries.
    public static let maxModelChunk = 32 << 20
    /// GetModel's chunk size when the request leaves it at 0.
    public static let defaultModelChunk = 4 << 20

    /// Receives one chunk of an upload. Chunks come in order (`offset` = bytes received so far);
    /// a chunk already received is acknowledged again. The last chunk (with the meta) registers
    /// the artifact as the next version of its name, with its sha-256, in one transaction.
    /// Re-sending the last chunk of a registered upload returns the same version.
    public func putModel(_ request: Winnow_V1_PutModelRequest) throws -> Winnow_V1_PutModelResponse {
        guard !request.uploadID.isEmpty else { throw StoreError.invalidArgument("upload_id is empty") }
        guard request.chunk.count <= Self.maxModelChunk else {
            throw StoreError.invalidArgument("chunk of \(request.chunk.count) bytes is over the \(Self.maxModelChunk)-byte limit")
        }
        if request.last {
            guard !request.meta.name.isEmpty else { throw StoreError.invalidArgument("the last chunk must carry meta with a model name") }
            guard !request.meta.name.contains("/") || request.meta.name.count < 200 else {
                throw StoreError.invalidArgument("model name is too long")
            }
        }
        return try pool.withConnection { c in
            try c.transaction { c in
                var response = Winnow_V1_PutModelResponse()
                // A finished upload: answer as before.
                let done = try c.query("SELECT meta FROM models WHERE upload_id = $1", [request.uploadID], resultFormat: .binary)
                if done.rowCount > 0 {
                    response.meta = try Winnow_V1_ModelMeta(serializedBytes: try done.bytes(0, 0) ?? [])
                    response.meta.promoted = try isPromoted(c, response.meta.name, response.meta.version)
                    response.receivedBytes = response.meta.sizeBytes
                    return response
                }
                try c.query("INSERT INTO model_uploads (upload_id) VALUES ($1) ON CONFLICT DO NOTHING", [request.uploadID])
                try c.query("SELECT 1 FROM model_uploads WHERE upload_id = $1 FOR UPDATE", [request.uploadID])
                let received = UInt64(try c.query("SELECT coalesce(sum(length(data)), 0) FROM model_upload_chunks WHERE upload_id = $1",
                                                  [request.uploadID]).int(0, 0) ?? 0)
                if request.offset < received && request.offset + UInt64(request.chunk.count) <= received && !request.last {
                    response.receivedBytes = received // a retried chunk
                    return response
                }
                guard request.offset == received else {
                    throw StoreError.failedPrecondition("upload \(request.uploadID): chunk at offset \(request.offset), but \(received) bytes were received; send the chunk at \(received)")
                }
                if !request.chunk.isEmpty {
                    try c.query("INSERT INTO model_upload_chunks (upload_id, byte_offset, data) VALUES ($1, $2, $3)",
                                [request.uploadID, Int64(request.offset), [UInt8](request.chunk)])  // == received
                }
                response.receivedBytes = received + UInt64(request.chunk.count)
                guard request.last else { return response }

                // Register: hash the artifact, take the next version, move the chunks.
                var hasher = SHA256()
                let chunks = try c.query("SELECT data FROM model_upload_chunks WHERE upload_id = $1 ORDER BY byte_offset",
                                         [request.uploadID], resultFormat: .binary)
                for k in 0..<chunks.rowCount {
                    chunks.withUnsafeBytes(k, 0) { if let b = $0 { hasher.update(b) } }
                }
                let hash = hasher.finalizeHex()
                var meta = request.meta
                if !meta.contentHash.isEmpty && meta.contentHash.lowercased() != hash {
                    try c.query("DELETE FROM model_uploads WHERE upload_id = $1", [request.uploadID])
                    throw StoreError.invalidArgument("upload \(request.uploadID): sha-256 of the received bytes is \(hash), the meta says \(meta.contentHash); the upload is dropped")
                }
                try c.query("SELECT pg_advisory_xact_lock(hashtext('model:' || $1))", [meta.name])
                let version = UInt64(try c.query("SELECT coalesce(max(version), 0) + 1 FROM models WHERE name = $1", [meta.name]).int(0, 0)!)
                meta.version = version
                meta.contentHash = hash
                meta.sizeBytes = response.receivedBytes
                meta.createdUnixMicros = Int64(Date().timeIntervalSince1970 * 1_000_000)
                meta.promoted = false
                try c.query("""
                    INSERT INTO models (name, version, content_hash, size_bytes, dataset_id, upload_id, meta)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    """, [meta.name, Int64(version), hash, Int64(meta.sizeBytes), meta.datasetID, request.uploadID,
                          try meta.serializedBytes() as [UInt8]])
                try c.query("""
                    INSERT INTO model_chunks (name, version, byte_offset, data)
                    SELECT $1, $2, byte_offset, data FROM model_upload_chunks WHERE upload_id = $3
                    """, [meta.name, Int64(version), request.uploadID])
                try c.query("DELETE FROM model_uploads WHERE upload_id = $1", [request.uploadID])
                response.meta = meta
                return response
            }
        }
    }

    private func isPromoted(_ c: Connection, _ name: String, _ version: UInt64) throws -> Bool {
        try c.query("SELECT 1 FROM model_promotions WHERE name = $1 AND version = $2", [name, Int64(version)]).rowCount > 0
    }

    /// Meta and one chunk of a model version (0 = the promoted one). One statement reads both,
    /// so a call sees one version whole; a reader fetching several chunks pins the version the
    /// first reply names (see `ModelDownloader`).
    public func getModel(_ request: Winnow_V1_GetModelRequest) throws -> Winnow_V1_GetModelResponse {
        guard !request.name.isEmpty else { throw StoreError.invalidArgument("model name is empty") }
        let maxBytes = request.maxBytes == 0 ? Self.defaultModelChunk : min(Int(request.maxBytes), Self.maxModelChunk)
        return try pool.withConnection { c in
            try c.transaction(isolation: .repeatableRead) { c in
                let r: QueryResult
                if request.version == 0 {
                    r = try c.query("""
                        SELECT m.meta, m.version FROM model_promotions p JOIN models m USING (name, version) WHERE p.name = $1
                        """, [request.name], resultFormat: .binary)
                    guard r.rowCount > 0 else {
                        let any = try c.query("SELECT 1 FROM models WHERE name = $1", [request.name]).rowCount > 0
                        throw any ? StoreError.failedPrecondition("model \(request.name) has no promoted version; name a version or Promote one")
                                  : StoreError.notFound("no model named \(request.name)")
                    }
                } else {
                    r = try c.query("SELECT meta, version FROM models WHERE name = $1 AND version = $2",
                                    [request.name, try StoreError.bigint(request.version, "version")], resultFormat: .binary)
                    guard r.rowCount > 0 else { throw StoreError.notFound("no version \(request.version) of model \(request.name)") }
                }
                var response = Winnow_V1_GetModelResponse()
                response.meta = try Winnow_V1_ModelMeta(serializedBytes: try r.bytes(0, 0) ?? [])
                let version = response.meta.version
                response.meta.promoted = try isPromoted(c, request.name, version)
                guard request.offset <= response.meta.sizeBytes else {
                    throw StoreError.invalidArgument("offset \(request.offset) is past the end of model \(request.name) v\(version) (\(response.meta.sizeBytes) bytes)")
                }
                let end = min(response.meta.sizeBytes, request.offset + UInt64(maxBytes))
                let chunks = try c.query("""
                    SELECT byte_offset, data FROM model_chunks
                    WHERE name = $1 AND version = $2 AND byte_offset < $4 AND byte_offset + length(data) > $3
                    ORDER BY byte_offset
                    """, [request.name, Int64(version), Int64(request.offset), Int64(end)], resultFormat: .binary)
                var out = Foundation.Data()
                out.reserveCapacity(Int(end - request.offset))
                for k in 0..<chunks.rowCount {
                    let start = UInt64(try chunks.int(k, 0)!)
                    chunks.withUnsafeBytes(k, 1) { b in
                        guard let b else { return }
                        let lo = Int(max(start, request.offset) - start)
                        let hi = Int(min(start + UInt64(b.count), end) - start)
                        if hi > lo { out.append(contentsOf: b[lo..<hi]) }
                    }
                }
                response.chunk = out
                response.offset = request.offset
                response.last = end == response.meta.sizeBytes
                return response
            }
        }
    }

    public func listModels(_ request: Winnow_V1_ListModelsRequest) throws -> Winnow_V1_ListModelsResponse {
        try pool.withConnection { c in
            let r = try c.query("""
                SELECT m.meta, (p.name IS NOT NULL) FROM models m
                LEFT JOIN model_promotions p ON p.name = m.name AND p.version = m.version
                WHERE $1 = '' OR m.name = $1 ORDER BY m.name, m.version
                """, [request.name], resultFormat: .binary)
            var response = Winnow_V1_ListModelsResponse()
            for k in 0..<r.rowCount {
                var meta = try Winnow_V1_ModelMeta(serializedBytes: try r.bytes(k, 0) ?? [])
                meta.promoted = try r.bool(k, 1) ?? false
                response.models.append(meta)
            }
            return response
        }
    }

    /// Makes `version` the promoted version of `name`, atomically (one row update).
    public func promote(_ request: Winnow_V1_PromoteRequest) throws -> Winnow_V1_PromoteResponse {
        guard !request.name.isEmpty else { throw StoreError.invalidArgument("model name is empty") }
        guard request.version > 0 else { throw StoreError.invalidArgument("version must be >= 1") }
        let version = try StoreError.bigint(request.version, "version")
        let response: Winnow_V1_PromoteResponse = try pool.withConnection { c in
            try c.transaction { c in
                let m = try c.query("SELECT meta FROM models WHERE name = $1 AND version = $2",
                                    [request.name, version], resultFormat: .binary)
                guard m.rowCount > 0 else { throw StoreError.notFound("no version \(request.version) of model \(request.name)") }
                let previous = try c.query("SELECT version FROM model_promotions WHERE name = $1 FOR UPDATE", [request.name])
                var response = Winnow_V1_PromoteResponse()
                response.previousVersion = previous.rowCount > 0 ? UInt64(try previous.int(0, 0)!) : 0
                try c.query("""
                    INSERT INTO model_promotions (name, version) VALUES ($1, $2)
                    ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, promoted_at = clock_timestamp()
                    """, [request.name, version])
                response.promoted = try Winnow_V1_ModelMeta(serializedBytes: try m.bytes(0, 0) ?? [])
                response.promoted.promoted = true
                return response
            }
        }
        lock.withLock { promotedDataset = nil }
        return response
    }
}
