import CPostgres

/// The format the server returns column values in.
public enum ResultFormat: Int32, Sendable {
    /// Each value as its text representation (the default).
    case text = 0
    /// Each value in the type's binary send format (big-endian integers, raw `bytea`).
    case binary = 1
}

/// Type OIDs of the built-in types the typed getters decode in binary format.
public enum PostgresType {
    public static let bool: UInt32 = 16
    public static let bytea: UInt32 = 17
    public static let int8: UInt32 = 20
    public static let int2: UInt32 = 21
    public static let int4: UInt32 = 23
    public static let text: UInt32 = 25
    public static let oid: UInt32 = 26
    public static let float4: UInt32 = 700
    public static let float8: UInt32 = 701
    public static let varchar: UInt32 = 1043
}

/// The rows of one statement's result. It owns the libpq `PGresult` and frees it when released.
///
/// Reading is safe from any thread (a `PGresult` is immutable). Row and column indices are
/// 0-based; an index out of range is a programmer error and traps. Typed getters return `nil`
/// for SQL NULL and throw ``PQError`` (function `decode`) when a value cannot be read as the
/// type asked for.
public final class QueryResult: @unchecked Sendable {
    let handle: OpaquePointer

    init(handle: OpaquePointer) { self.handle = handle }
    deinit { PQclear(handle) }

    public var rowCount: Int { Int(PQntuples(handle)) }
    public var columnCount: Int { Int(PQnfields(handle)) }

    /// Rows a command touched (`INSERT`, `UPDATE`, `DELETE`, `COPY`, `SELECT`, ...), when it says.
    public var rowsAffected: Int? {
        guard let p = PQcmdTuples(handle) else { return nil }
        return Int(String(cString: p))
    }

    /// The command tag, e.g. `INSERT 0 3` or `CREATE TABLE`.
    public var commandTag: String {
        guard let p = PQcmdStatus(handle) else { return "" }
        return String(cString: p)
    }

    public var columnNames: [String] { (0..<columnCount).map(columnName) }

    public func columnName(_ column: Int) -> String {
        precondition(column >= 0 && column < columnCount, "column \(column) out of range 0..<\(columnCount)")
        return String(cString: PQfname(handle, Int32(column)))
    }

    /// The index of the column with this name, if any.
    public func columnIndex(_ name: String) -> Int? {
        let i = Int(PQfnumber(handle, name))
        return i < 0 ? nil : i
    }

    /// The column's type OID (see ``PostgresType``).
    public func columnType(_ column: Int) -> UInt32 {
        checkIndex(0, column, rowCheck: false)
        return UInt32(PQftype(handle, Int32(column)))
    }

    public func format(_ column: Int) -> ResultFormat {
        checkIndex(0, column, rowCheck: false)
        return PQfformat(handle, Int32(column)) == 1 ? .binary : .text
    }

    public func isNull(_ row: Int, _ column: Int) -> Bool {
        checkIndex(row, column)
        return PQgetisnull(handle, Int32(row), Int32(column)) == 1
    }

    /// Calls `body` with the value's bytes as the server sent them (text or binary form), or
    /// `nil` for SQL NULL. The buffer is valid only inside `body` and must not escape.
    public func withUnsafeBytes<T>(_ row: Int, _ column: Int,
                                   _ body: (UnsafeRawBufferPointer?) throws -> T) rethrows -> T {
        checkIndex(row, column)
        let r = Int32(row), c = Int32(column)
        if PQgetisnull(handle, r, c) == 1 { return try body(nil) }
        let p = PQgetvalue(handle, r, c)!
        return try body(UnsafeRawBufferPointer(start: p, count: Int(PQgetlength(handle, r, c))))
    }

    /// The value as a string: the text form, or the raw bytes as UTF-8 for binary text columns.
    public func string(_ row: Int, _ column: Int) -> String? {
        withUnsafeBytes(row, column) { b in b.map { String(decoding: $0, as: UTF8.self) } }
    }

    public func int(_ row: Int, _ column: Int) throws -> Int? {
        try withUnsafeBytes(row, column) { b -> Int? in
            guard let b else { return nil }
            if format(column) == .binary {
                switch (columnType(column), b.count) {
                case (PostgresType.int8, 8): return Int(Int64(bigEndian: b.loadUnaligned(as: Int64.self)))
                case (PostgresType.int4, 4): return Int(Int32(bigEndian: b.loadUnaligned(as: Int32.self)))
                case (PostgresType.int2, 2): return Int(Int16(bigEndian: b.loadUnaligned(as: Int16.self)))
                case (PostgresType.oid, 4): return Int(UInt32(bigEndian: b.loadUnaligned(as: UInt32.self)))
                default: throw decodeError(row, column, "a binary value of type \(columnType(column))", "Int")
                }
            }
            let s = String(decoding: b, as: UTF8.self)
            guard let v = Int(s) else { throw decodeError(row, column, "'\(s.prefix(64))'", "Int") }
            return v
        }
    }

    public func double(_ row: Int, _ column: Int) throws -> Double? {
        try withUnsafeBytes(row, column) { b -> Double? in
            guard let b else { return nil }
            if format(column) == .binary {
                switch (columnType(column), b.count) {
                case (PostgresType.float8, 8): return Double(bitPattern: UInt64(bigEndian: b.loadUnaligned(as: UInt64.self)))
                case (PostgresType.float4, 4): return Double(Float(bitPattern: UInt32(bigEndian: b.loadUnaligned(as: UInt32.self))))
                default:
                    if let i = try int(row, column) { return Double(i) }
                    throw decodeError(row, column, "a binary value of type \(columnType(column))", "Double")
                }
            }
            let s = String(decoding: b, as: UTF8.self)
            switch s {
            case "NaN": return .nan
            case "Infinity": return .infinity
            case "-Infinity": return -.infinity
            default:
                guard let v = Double(s) else { throw decodeError(row, column, "'\(s.prefix(64))'", "Double") }
                return v
            }
        }
    }

    public func bool(_ row: Int, _ column: Int) throws -> Bool? {
        try withUnsafeBytes(row, column) { b -> Bool? in
            guard let b else { return nil }
            if format(column) == .binary, b.count == 1 { return b[0] != 0 }
            switch String(decoding: b, as: UTF8.self) {
            case "t", "true": return true
            case "f", "false": return false
            case let s: throw decodeError(row, column, "'\(s.prefix(64))'", "Bool")
            }
        }
    }

    /// A `bytea` value's bytes: raw in binary format, unescaped from the text (`\x..`) form.
    public func bytes(_ row: Int, _ column: Int) throws -> [UInt8]? {
        try withUnsafeBytes(row, column) { b -> [UInt8]? in
            guard let b else { return nil }
            if format(column) == .binary { return Array(b) }
            var n = 0
            let p = PQgetvalue(handle, Int32(row), Int32(column))!
            guard let out = p.withMemoryRebound(to: UInt8.self, capacity: b.count + 1, { PQunescapeBytea($0, &n) }) else {
                throw decodeError(row, column, "a text value", "bytes")
            }
            defer { PQfreemem(out) }
            return Array(UnsafeBufferPointer(start: out, count: n))
        }
    }

    /// A view of one row, reading columns by name or index.
    public subscript(row: Int) -> Row {
        precondition(row >= 0 && row < rowCount, "row \(row) out of range 0..<\(rowCount)")
        return Row(result: self, index: row)
    }

    /// All rows, in order.
    public var rows: [Row] { (0..<rowCount).map { Row(result: self, index: $0) } }

    public struct Row {
        public let result: QueryResult
        public let index: Int

        func column(_ name: String) throws -> Int {
            guard let c = result.columnIndex(name) else {
                throw PQError(function: "decode", message: "no column named '\(name)' (columns: \(result.columnNames.joined(separator: ", ")))")
            }
            return c
        }
        public func string(_ name: String) throws -> String? { result.string(index, try column(name)) }
        public func int(_ name: String) throws -> Int? { try result.int(index, try column(name)) }
        public func double(_ name: String) throws -> Double? { try result.double(index, try column(name)) }
        public func bool(_ name: String) throws -> Bool? { try result.bool(index, try column(name)) }
        public func bytes(_ name: String) throws -> [UInt8]? { try result.bytes(index, try column(name)) }
        public func isNull(_ name: String) throws -> Bool { result.isNull(index, try column(name)) }
    }

    private func checkIndex(_ row: Int, _ column: Int, rowCheck: Bool = true) {
        precondition(column >= 0 && column < columnCount, "column \(column) out of range 0..<\(columnCount)")
        if rowCheck { precondition(row >= 0 && row < rowCount, "row \(row) out of range 0..<\(rowCount)") }
    }

    private func decodeError(_ row: Int, _ column: Int, _ what: String, _ type: String) -> PQError {
        PQError(function: "decode", message: "row \(row), column '\(columnName(column))': cannot read \(what) as \(type)")
    }
}
