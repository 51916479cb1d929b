// Named parameters in one flat allocation (values) beside one for their gradients, carved into
// views from a single list of (name, shape). Serialised to a versioned, checksummed binary file.
import Foundation

/// A named tensor's place in a `ParameterSet`.
public struct ParameterEntry: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// Named parameters and gradients. Sizes and offsets derive from the one list given to `init`.
public final class ParameterSet {
    public let entries: [ParameterEntry]
    public let count: Int
    /// All parameter values, (count)
    public let values: Floats
    /// All gradients, (count); layers accumulate into views of it.
    public let grads: Floats
    private let index: [String: Int]

    public init(_ specs: [(name: String, shape: [Int])]) {
        var entries: [ParameterEntry] = []
        var index: [String: Int] = [:]
        var offset = 0
        for (name, shape) in specs {
            precondition(index[name] == nil, "duplicate parameter name \(name)")
            precondition(shape.allSatisfy { $0 > 0 }, "parameter \(name) has an empty dimension")
            index[name] = entries.count
            let e = ParameterEntry(name: name, shape: shape, offset: offset)
            entries.append(e)
            offset += e.count
        }
        self.entries = entries
        self.index = index
        count = offset
        values = Floats.allocate(capacity: max(count, 1))
        values.initialize(repeating: 0, count: max(count, 1))
        grads = Floats.allocate(capacity: max(count, 1))
        grads.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { values.deallocate(); grads.deallocate() }

    public func entry(_ name: String) -> ParameterEntry {
        guard let i = index[name] else { preconditionFailure("no parameter named \(name)") }
        return entries[i]
    }
    public func contains(_ name: String) -> Bool { index[name] != nil }
    /// The view of parameter `name`'s values.
    public func value(_ name: String) -> Floats { values + entry(name).offset }
    /// The view of parameter `name`'s gradient.
    public func grad(_ name: String) -> Floats { grads + entry(name).offset }

    public func zeroGrad() { grads.update(repeating: 0, count: count) }

    /// Copies values from a set with the same entries (e.g. to keep the best weights).
    public func copyValues(from other: ParameterSet) {
        precondition(other.entries == entries, "parameter sets differ")
        values.update(from: other.values, count: count)
    }

    /// A new set with the same entries and a copy of the values (gradients zero).
    public func clone() -> ParameterSet {
        let p = ParameterSet(entries.map { ($0.name, $0.shape) })
        p.values.update(from: values, count: count)
        return p
    }

    /// Global L2 norm of the gradients.
    public func gradNorm() -> Double { sumOfSquares(grads, count).squareRoot() }

    /// Scales gradients so their global norm is at most `maxNorm`; returns the norm before.
    @discardableResult
    public func clipGradNorm(_ maxNorm: Float) -> Double {
        let norm = gradNorm()
        if norm > Double(maxNorm) && norm > 0 {
            let s = Float(Double(maxNorm) / (norm + 1e-6))
            for i in 0..<count { grads[i] *= s }
        }
        return norm
    }

    // MARK: - Serialisation
    //
    // Layout (all integers little-endian):
    //   "WNWP" | version u32 (= 1) | tensors u32 |
    //   per tensor: name length u32, UTF-8 name, rank u32, dims u64 × rank |
    //   values: float32 × Σ counts, in entry order | CRC-32 (IEEE) of all preceding bytes, u32

    public static let fileMagic: [UInt8] = Array("WNWP".utf8)
    public static let fileVersion: UInt32 = 1

    /// The serialised bytes of names, shapes and values.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + count * 4 + entries.count * 64)
        out += Self.fileMagic
        out.appendLE(Self.fileVersion)
        out.appendLE(UInt32(entries.count))
        for e in entries {
            let name = Array(e.name.utf8)
            out.appendLE(UInt32(name.count)); out += name
            out.appendLE(UInt32(e.shape.count))
            for d in e.shape { out.appendLE(UInt64(d)) }
        }
        let start = out.count
        out += [UInt8](repeating: 0, count: count * 4)
        out.withUnsafeMutableBytes { raw in
            for i in 0..<count { raw.storeBytes(of: values[i].bitPattern.littleEndian, toByteOffset: start + 4 * i, as: UInt32.self) }
        }
        out.appendLE(CRC32.checksum(out))
        return out
    }

    /// Loads values from serialised bytes; names, shapes and order must equal this set's.
    public func load(bytes: [UInt8]) throws(ParameterFileError) {
        var r = ByteReader(bytes)
        guard bytes.count >= 16 else { throw .truncated(at: bytes.count) }
        let stored = bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: bytes.count - 4, as: UInt32.self)) }
        let actual = CRC32.checksum(bytes[0..<(bytes.count - 4)])
        guard Array(bytes[0..<4]) == Self.fileMagic else { throw .badMagic }
        r.offset = 4
        let version = try r.u32()
        guard version == Self.fileVersion else { throw .unsupportedVersion(version) }
        guard stored == actual else { throw .checksumMismatch(stored: stored, computed: actual) }
        let n = Int(try r.u32())
        guard n == entries.count else { throw .tensorCountMismatch(expected: entries.count, found: n) }
        for (i, e) in entries.enumerated() {
            let len = Int(try r.u32())
            let nameBytes = try r.bytes(len)
            let name = String(decoding: nameBytes, as: UTF8.self)
            guard name == e.name else { throw .nameMismatch(index: i, expected: e.name, found: name) }
            let rank = Int(try r.u32())
            guard rank <= 8 else { throw .shapeMismatch(name: name, expected: e.shape, found: []) }
            var shape: [Int] = []
            for _ in 0..<rank { shape.append(Int(truncatingIfNeeded: try r.u64())) }
            guard shape == e.shape else { throw .shapeMismatch(name: name, expected: e.shape, found: shape) }
        }
        guard r.offset + count * 4 + 4 == bytes.count else { throw .truncated(at: r.offset) }
        let start = r.offset
        bytes.withUnsafeBytes { raw in
            for i in 0..<count {
                values[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: start + 4 * i, as: UInt32.self)))
            }
        }
    }

    public func save(to path: String) throws {
        let data = Data(serialized())
        do { try data.write(to: URL(fileURLWithPath: path), options: .atomic) }
        catch { throw ParameterFileError.io(path: path, reason: "\(error)") }
    }

    /// Loads values from a file written by `save`; errors say what is wrong and where.
    public func load(from path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ParameterFileError.io(path: path, reason: "cannot read file")
        }
        do { try load(bytes: [UInt8](data)) }
        catch { throw ParameterFileError.inFile(path: path, error) }
    }
}

/// Why a parameter file could not be loaded.
public indirect enum ParameterFileError: Error, CustomStringConvertible, Equatable {
    /// The file does not start with "WNWP".
    case badMagic
    /// The file's format version is not one this build reads.
    case unsupportedVersion(UInt32)
    /// The stored CRC-32 differs from the content's: the file is corrupt.
    case checksumMismatch(stored: UInt32, computed: UInt32)
    /// The file ends before its header or values do (byte offset).
    case truncated(at: Int)
    /// The file holds a different number of tensors.
    case tensorCountMismatch(expected: Int, found: Int)
    /// Tensor `index` has another name.
    case nameMismatch(index: Int, expected: String, found: String)
    /// Tensor `name` has another shape.
    case shapeMismatch(name: String, expected: [Int], found: [Int])
    /// Reading or writing the file failed.
    case io(path: String, reason: String)
    /// One of the above, in the file at `path`.
    case inFile(path: String, ParameterFileError)

    public var description: String {
        switch self {
        case .badMagic: return "not a Winnow parameter file (bad magic)"
        case .unsupportedVersion(let v): return "unsupported parameter file version \(v) (expected \(ParameterSet.fileVersion))"
        case .checksumMismatch(let s, let c): return "parameter file is corrupt: checksum \(String(s, radix: 16)) stored, \(String(c, radix: 16)) computed"
        case .truncated(let at): return "parameter file is truncated or has trailing bytes (at byte \(at))"
        case .tensorCountMismatch(let e, let f): return "parameter file holds \(f) tensors, the model has \(e)"
        case .nameMismatch(let i, let e, let f): return "tensor \(i) is named '\(f)' in the file, the model expects '\(e)'"
        case .shapeMismatch(let n, let e, let f): return "tensor '\(n)' has shape \(f) in the file, the model expects \(e)"
        case .io(let p, let r): return "\(p): \(r)"
        case .inFile(let p, let e): return "\(p): \(e)"
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib).
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }
    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        return c ^ 0xFFFF_FFFF
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE(_ v: UInt32) { Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) } }
    mutating func appendLE(_ v: UInt64) { Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) } }
}

struct ByteReader {
    let bytes: [UInt8]
    var offset = 0
    init(_ b: [UInt8]) { bytes = b }
    mutating func bytes(_ n: Int) throws(ParameterFileError) -> ArraySlice<UInt8> {
        guard n >= 0, offset + n <= bytes.count - 4 else { throw .truncated(at: offset) }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }
    mutating func u32() throws(ParameterFileError) -> UInt32 {
        var v: UInt32 = 0
        for (i, b) in try bytes(4).enumerated() { v |= UInt32(b) << (8 * UInt32(i)) }
        return v
    }
    mutating func u64() throws(ParameterFileError) -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in try bytes(8).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
}
