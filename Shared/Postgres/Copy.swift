import CPostgres

extension Connection {
    /// Runs `COPY ... FROM STDIN` and streams what `body` writes to the server
    /// (`PQputCopyData`/`PQputCopyEnd`). Returns the number of rows copied.
    ///
    /// The statement is all or nothing: when the server rejects a row the whole COPY fails
    /// with a ``PQError`` whose `context` names the line and column (SQLSTATE `22P02`, ...); when
    /// `body` throws, the COPY is aborted on the server and the error is rethrown. The writer is
    /// valid only inside `body`.
    @discardableResult
    public func copyIn(_ sql: String, _ body: (CopyInWriter) throws -> Void) throws -> Int {
        try withLockedConnection { conn in
            guard let start = PQexec(conn, sql) else { throw PQError(function: "PQexec", connection: conn) }
            guard PQresultStatus(start) == PGRES_COPY_IN else {
                throw unexpectedStart(start, conn: conn, wanted: "COPY ... FROM STDIN", sql: sql)
            }
            PQclear(start)

            let writer = CopyInWriter(conn: conn)
            defer { writer.invalidate() }
            do {
                try body(writer)
                try writer.flush()
            } catch {
                _ = PQputCopyEnd(conn, "COPY aborted by the client: \(error)")
                drainResults(conn)
                throw error
            }
            guard PQputCopyEnd(conn, nil) == 1 else {
                let error = PQError(function: "PQputCopyEnd", connection: conn)
                drainResults(conn)
                throw error
            }
            guard let end = PQgetResult(conn) else { throw PQError(function: "PQgetResult", connection: conn) }
            let result: QueryResult
            do {
                result = try check(end, function: "PQputCopyEnd", conn: conn)
            } catch {
                drainResults(conn)
                throw error
            }
            drainResults(conn)
            return result.rowsAffected ?? 0
        }
    }

    /// Runs `COPY ... TO STDOUT` and hands each chunk (one row in text format) to `body`.
    /// The buffer is valid only inside `body`. Returns the number of rows copied.
    @discardableResult
    public func copyOut(_ sql: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        try withLockedConnection { conn in
            guard let start = PQexec(conn, sql) else { throw PQError(function: "PQexec", connection: conn) }
            guard PQresultStatus(start) == PGRES_COPY_OUT else {
                throw unexpectedStart(start, conn: conn, wanted: "COPY ... TO STDOUT", sql: sql)
            }
            PQclear(start)
            var bodyError: Error?
            var buffer: UnsafeMutablePointer<CChar>?
            while true {
                let n = PQgetCopyData(conn, &buffer, 0)
                if n > 0 {
                    defer { PQfreemem(buffer) }
                    // After a failure in `body` keep draining so the connection stays usable.
                    if bodyError == nil {
                        do { try body(UnsafeRawBufferPointer(start: buffer, count: Int(n))) } catch { bodyError = error }
                    }
                } else if n == -1 {
                    break
                } else {
                    let error = PQError(function: "PQgetCopyData", connection: conn)
                    drainResults(conn)
                    throw error
                }
            }
            guard let end = PQgetResult(conn) else { throw PQError(function: "PQgetResult", connection: conn) }
            let result: QueryResult
            do {
                result = try check(end, function: "PQgetCopyData", conn: conn)
            } catch {
                drainResults(conn)
                throw error
            }
            drainResults(conn)
            if let bodyError { throw bodyError }
            return result.rowsAffected ?? 0
        }
    }

    /// The error for a statement that did not start the COPY direction asked for; frees `start`
    /// and leaves the connection idle.
    private func unexpectedStart(_ start: OpaquePointer, conn: OpaquePointer, wanted: String, sql: String) -> PQError {
        let status = PQresultStatus(start)
        defer { PQclear(start) }
        switch status {
        case PGRES_FATAL_ERROR, PGRES_NONFATAL_ERROR, PGRES_BAD_RESPONSE:
            let error = PQError(function: "PQexec", result: start, connection: conn)
            drainResults(conn)
            return error
        case PGRES_COPY_IN:
            _ = PQputCopyEnd(conn, "wrong COPY direction")
        case PGRES_COPY_OUT:
            var buffer: UnsafeMutablePointer<CChar>?
            while PQgetCopyData(conn, &buffer, 0) > 0 { PQfreemem(buffer) }
        default:
            break
        }
        drainResults(conn)
        return PQError(function: "copy", message: "statement is not \(wanted): \(sql.prefix(120))")
    }

    /// Runs `COPY ... TO STDOUT` and returns everything it wrote.
    public func copyOut(_ sql: String) throws -> [UInt8] {
        var out: [UInt8] = []
        try copyOut(sql) { out.append(contentsOf: $0) }
        return out
    }
}

/// Writes COPY data for ``Connection/copyIn(_:_:)``. It buffers writes and sends them in chunks
/// of 256 KiB. Rows in the text format end with `\n`; ``writeRow(_:)`` escapes fields for it.
public final class CopyInWriter {
    private var conn: OpaquePointer?
    private var buffer: [UInt8] = []
    private let chunk = 256 * 1024
    /// Bytes handed to the server so far (not counting what is still buffered).
    public private(set) var bytesSent = 0

    init(conn: OpaquePointer) {
        self.conn = conn
        buffer.reserveCapacity(chunk)
    }

    func invalidate() { conn = nil }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        buffer.append(contentsOf: bytes)
        if buffer.count >= chunk { try flush() }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    public func write(_ string: String) throws {
        var s = string
        try s.withUTF8 { try write(UnsafeRawBufferPointer($0)) }
    }

    /// Appends one row in COPY's text format: fields separated by tabs, `nil` as `\N`, with
    /// backslash, tab, newline and carriage return escaped.
    public func writeRow(_ fields: [String?]) throws {
        for (i, field) in fields.enumerated() {
            if i > 0 { buffer.append(0x09) }
            guard let field else { buffer.append(0x5C); buffer.append(0x4E); continue }
            for b in field.utf8 {
                switch b {
                case 0x5C: buffer.append(0x5C); buffer.append(0x5C)
                case 0x09: buffer.append(0x5C); buffer.append(0x74)
                case 0x0A: buffer.append(0x5C); buffer.append(0x6E)
                case 0x0D: buffer.append(0x5C); buffer.append(0x72)
                default: buffer.append(b)
                }
            }
        }
        buffer.append(0x0A)
        if buffer.count >= chunk { try flush() }
    }

    /// Sends what is buffered.
    public func flush() throws {
        guard let conn else {
            throw PQError(function: "PQputCopyData", message: "COPY writer used outside its copyIn block")
        }
        guard !buffer.isEmpty else { return }
        var offset = 0
        while offset < buffer.count {
            let n = min(buffer.count - offset, Int(Int32.max))
            let rc = buffer.withUnsafeBufferPointer { p in
                (UnsafeRawPointer(p.baseAddress!) + offset).withMemoryRebound(to: CChar.self, capacity: n) {
                    PQputCopyData(conn, $0, Int32(n))
                }
            }
            guard rc == 1 else { throw PQError(function: "PQputCopyData", connection: conn) }
            offset += n
        }
        bytesSent += buffer.count
        buffer.removeAll(keepingCapacity: true)
    }
}
