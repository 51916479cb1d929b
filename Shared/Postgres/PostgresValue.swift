/// A parameter value as it is sent to the server: SQL NULL, text in the server's text format,
/// or raw bytes in binary format (used for `bytea`, where text would double the size).
public enum PostgresValue: Sendable, Equatable {
    case null
    case text(String)
    case binary([UInt8])
}

/// A Swift value that can be bound to a `$n` placeholder.
public protocol PostgresBindable {
    var postgresValue: PostgresValue { get }
}

extension PostgresValue: PostgresBindable {
    public var postgresValue: PostgresValue { self }
}

extension String: PostgresBindable {
    public var postgresValue: PostgresValue { .text(self) }
}

extension Substring: PostgresBindable {
    public var postgresValue: PostgresValue { .text(String(self)) }
}

extension Int: PostgresBindable {
    public var postgresValue: PostgresValue { .text(String(self)) }
}

extension Int64: PostgresBindable {
    public var postgresValue: PostgresValue { .text(String(self)) }
}

extension Int32: PostgresBindable {
    public var postgresValue: PostgresValue { .text(String(self)) }
}

extension Int16: PostgresBindable {
    public var postgresValue: PostgresValue { .text(String(self)) }
}

extension UInt32: PostgresBindable {
    public var postgresValue: PostgresValue { .text(String(self)) }
}

extension Double: PostgresBindable {
    /// Non-finite values use Postgres' spellings (`NaN`, `Infinity`, `-Infinity`).
    public var postgresValue: PostgresValue {
        if isNaN { return .text("NaN") }
        if isInfinite { return .text(self < 0 ? "-Infinity" : "Infinity") }
        return .text("\(self)")
    }
}

extension Float: PostgresBindable {
    public var postgresValue: PostgresValue { Double(self).postgresValue }
}

extension Bool: PostgresBindable {
    public var postgresValue: PostgresValue { .text(self ? "t" : "f") }
}

extension Array: PostgresBindable where Element == UInt8 {
    /// Bytes bind as `bytea` in binary format.
    public var postgresValue: PostgresValue { .binary(self) }
}

extension Optional: PostgresBindable where Wrapped: PostgresBindable {
    public var postgresValue: PostgresValue { self?.postgresValue ?? .null }
}

/// Parameters laid out for `PQexecParams`/`PQexecPrepared`: one buffer holding every value,
/// with the pointer, length and format arrays libpq wants.
struct BoundParameters {
    private var storage: [UInt8] = []
    private var offsets: [Int] = []
    private(set) var lengths: [Int32] = []
    private(set) var formats: [Int32] = []

    init(_ params: [any PostgresBindable]) throws {
        for (i, p) in params.enumerated() {
            switch p.postgresValue {
            case .null:
                offsets.append(-1); lengths.append(0); formats.append(0)
            case .text(let s):
                let utf8 = Array(s.utf8)
                if utf8.contains(0) {
                    throw PQError(function: "bind", message: "parameter $\(i + 1) contains a NUL byte, which Postgres text cannot hold")
                }
                offsets.append(storage.count)
                storage.append(contentsOf: utf8)
                storage.append(0)
                lengths.append(Int32(utf8.count)); formats.append(0)
            case .binary(let b):
                guard b.count <= Int(Int32.max) else {
                    throw PQError(function: "bind", message: "parameter $\(i + 1) is \(b.count) bytes; the protocol limit is \(Int32.max)")
                }
                offsets.append(storage.count)
                storage.append(contentsOf: b)
                lengths.append(Int32(b.count)); formats.append(1)
            }
        }
        if storage.isEmpty { storage.append(0) }
    }

    var count: Int32 { Int32(offsets.count) }

    /// Calls `body` with libpq's four parameter arrays. The pointers are valid only inside `body`.
    func withArrays<T>(_ body: (UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?,
                                UnsafePointer<Int32>?) throws -> T) rethrows -> T {
        try storage.withUnsafeBufferPointer { base in
            let raw = UnsafeRawPointer(base.baseAddress!)
            let pointers: [UnsafePointer<CChar>?] = offsets.map {
                $0 < 0 ? nil : (raw + $0).assumingMemoryBound(to: CChar.self)
            }
            return try pointers.withUnsafeBufferPointer { p in
                try lengths.withUnsafeBufferPointer { l in
                    try formats.withUnsafeBufferPointer { f in
                        try body(p.baseAddress, l.baseAddress, f.baseAddress)
                    }
                }
            }
        }
    }
}
