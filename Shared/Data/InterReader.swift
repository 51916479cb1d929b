// RecBole atomic `.inter` files: a header of tab-separated `name:type` fields (types token,
// token_seq, float, float_seq), then one interaction per line. Columns are found by name; the
// reader streams the file through a fixed buffer and interns tokens in a byte-keyed hash table,
// so a 20M-line file never becomes 20M Swift strings.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error in an interaction file, naming the file, the 1-based line (0 when the error is not
/// about a line), the column when one is concerned, and the reason.
public struct InterError: Error, Equatable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Equatable, Sendable {
        /// The file could not be opened or read (the errno text is in `reason`).
        case io
        /// The file has no header line.
        case emptyFile
        /// A header field is not `name:type` with a RecBole type, or a name repeats.
        case badHeader
        /// A column the caller needs is not in the header, or has the wrong type.
        case missingColumn
        /// A line has more or fewer fields than the header.
        case wrongFieldCount
        /// A float column holds something that is not a finite number.
        case notANumber
        /// A user or item token is empty.
        case emptyToken
        /// A token is not valid UTF-8.
        case invalidUTF8
        /// The file does not end with a newline and the reader was told to require one.
        case truncatedLastLine
    }

    public let kind: Kind
    public let file: String
    public let line: Int
    public let column: String?
    public let reason: String

    public init(_ kind: Kind, file: String, line: Int, column: String? = nil, reason: String) {
        self.kind = kind; self.file = file; self.line = line; self.column = column; self.reason = reason
    }

    public var description: String {
        var s = file
        if line > 0 { s += ":\(line)" }
        if let column { s += ": column \(column)" }
        return s + ": " + reason
    }
}

/// Field types of RecBole atomic files.
public enum InterFieldType: String, Sendable {
    case token, tokenSeq = "token_seq", float, floatSeq = "float_seq"
}

/// Distinct tokens in order of first appearance, with byte-keyed lookup. Index i is the i-th
/// distinct token seen.
public struct TokenTable: Sendable {
    /// An open-addressing slot. For tokens of up to 8 bytes one slot read decides equality
    /// (one cache miss per lookup on large tables); longer tokens also compare the arena.
    private struct Slot {
        var key: UInt64     // the token's first 8 bytes, little-endian, zero-padded
        var meta: UInt64    // 0 = empty; else hash tag (bits 40..63) | length (32..39, 255 = longer) | id + 1 (0..31)
    }
    private var bytes: [UInt8] = []
    private var starts: [Int] = [0]            // token i is bytes[starts[i] ..< starts[i+1]]
    private var slots: [Slot] = Array(repeating: Slot(key: 0, meta: 0), count: 1024)

    public init() {}

    public init<S: Sequence>(_ tokens: S) where S.Element == String {
        for t in tokens { _ = intern(t) }
    }

    /// Returns the index of `token`, adding it when new.
    @discardableResult
    public mutating func intern(_ token: String) -> Int32 {
        var t = token
        return t.withUTF8 { u in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(u.count, 1)) { tmp in
                if u.count > 0 { tmp.baseAddress!.update(from: u.baseAddress!, count: u.count) }
                return intern(tmp.baseAddress!, u.count).id
            }
        }
    }

    /// Number of distinct tokens.
    public var count: Int { starts.count - 1 }

    /// The i-th distinct token.
    public subscript(i: Int) -> String {
        String(decoding: bytes[starts[i] ..< starts[i + 1]], as: UTF8.self)
    }

    /// The index of `token`, or nil when it never appeared.
    public func index(of token: String) -> Int32? {
        var t = token
        return t.withUTF8 { u in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(u.count, 1)) { tmp in
                if u.count > 0 { tmp.baseAddress!.update(from: u.baseAddress!, count: u.count) }
                let r = probe(tmp.baseAddress!, u.count)
                return r.id >= 0 ? r.id : nil
            }
        }
    }

    @inline(__always)
    static func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for i in 0..<n { h = (h ^ UInt64(p[i])) &* 0x0000_0100_0000_01B3 }
        // FNV's low bits are weak for short keys such as decimal ids; finish with murmur3's
        // 64-bit mixer so the table index (low bits) depends on every byte.
        h ^= h >> 33; h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33; h = h &* 0xC4CE_B9FE_1A85_EC53
        return h ^ (h >> 33)
    }

    @inline(__always)
    private static func prefixKey(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
        var k: UInt64 = 0
        for i in 0..<min(n, 8) { k |= UInt64(p[i]) << (8 * UInt64(i)) }
        return k
    }

    @inline(__always)
    private static func meta(hash h: UInt64, length n: Int, id: Int32) -> UInt64 {
        (h & 0xFFFF_FF00_0000_0000) | (UInt64(min(n, 255)) << 32) | UInt64(UInt32(id) &+ 1)
    }

    /// Finds `token`: (id, slot) when present, (-1, free slot) when absent.
    @inline(__always)
    private func probe(_ p: UnsafePointer<UInt8>, _ n: Int) -> (id: Int32, slot: Int) {
        let h = Self.hash(p, n)
        let key = Self.prefixKey(p, n)
        let want = Self.meta(hash: h, length: n, id: 0) & 0xFFFF_FFFF_0000_0000
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        return slots.withUnsafeBufferPointer { sl in
            while true {
                let s = sl[i]
                if s.meta == 0 { return (-1, i) }
                if s.meta & 0xFFFF_FFFF_0000_0000 == want && s.key == key {
                    let id = Int32(truncatingIfNeeded: (s.meta & 0xFFFF_FFFF) - 1)
                    if n <= 8 || longEqual(Int(id), p, n) { return (id, i) }
                }
                i = (i + 1) & mask
            }
        }
    }

    private func longEqual(_ id: Int, _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        let s = starts[id]
        guard starts[id + 1] - s == n else { return false }
        return bytes.withUnsafeBufferPointer { memcmp($0.baseAddress! + s, p, n) == 0 }
    }

    /// Calls `body` with token i's bytes (not to escape the closure).
    func withBytes<R>(_ i: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        let n = starts[i + 1] - starts[i]
        if n == 0 { return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1) { body($0.baseAddress!, 0) } }
        return bytes.withUnsafeBufferPointer { body($0.baseAddress! + starts[i], n) }
    }

    /// Returns the token's index, adding it when new (`isNew` true).
    @inline(__always)
    mutating func intern(_ p: UnsafePointer<UInt8>, _ n: Int) -> (id: Int32, isNew: Bool) {
        let found = probe(p, n)
        if found.id >= 0 { return (found.id, false) }
        let id = Int32(count)
        bytes.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
        starts.append(bytes.count)
        slots[found.slot] = Slot(key: Self.prefixKey(p, n), meta: Self.meta(hash: Self.hash(p, n), length: n, id: id))
        if count * 2 > slots.count { grow() }
        return (id, true)
    }

    private mutating func grow() {
        let size = slots.count * 2, mask = size - 1
        var fresh = [Slot](repeating: Slot(key: 0, meta: 0), count: size)
        for id in 0..<count {
            withBytes(id) { p, n in
                let h = Self.hash(p, n)
                var i = Int(truncatingIfNeeded: h) & mask
                while fresh[i].meta != 0 { i = (i + 1) & mask }
                fresh[i] = Slot(key: Self.prefixKey(p, n), meta: Self.meta(hash: h, length: n, id: Int32(id)))
            }
        }
        slots = fresh
    }
}

/// Interactions in file order, columnar. `users[r]` and `items[r]` index `userTokens` and
/// `itemTokens` (order of first appearance in the file).
public struct Interactions: Sendable {
    public var users: [Int32]
    public var items: [Int32]
    /// Timestamps, or nil when the file has no timestamp column (file order is then the time).
    public var timestamps: [Double]?
    /// Ratings when the file has a rating column.
    public var ratings: [Float]?
    public var userTokens: TokenTable
    public var itemTokens: TokenTable

    public var count: Int { users.count }

    public init(users: [Int32], items: [Int32], timestamps: [Double]?, ratings: [Float]?,
                userTokens: TokenTable, itemTokens: TokenTable) {
        precondition(users.count == items.count, "users and items differ in length")
        precondition(timestamps == nil || timestamps!.count == users.count, "timestamps length")
        precondition(ratings == nil || ratings!.count == users.count, "ratings length")
        self.users = users; self.items = items; self.timestamps = timestamps; self.ratings = ratings
        self.userTokens = userTokens; self.itemTokens = itemTokens
    }

    /// Interactions from token strings (tests, synthetic data, online events).
    public init(users: [String], items: [String], timestamps: [Double]? = nil, ratings: [Float]? = nil) {
        var ut = TokenTable(), it = TokenTable()
        var u = [Int32](), i = [Int32]()
        u.reserveCapacity(users.count); i.reserveCapacity(items.count)
        for s in users { u.append(ut.intern(s)) }
        for s in items { i.append(it.intern(s)) }
        self.init(users: u, items: i, timestamps: timestamps, ratings: ratings, userTokens: ut, itemTokens: it)
    }
}

/// Reads RecBole atomic `.inter` files.
///
/// The user and item columns (type `token`) are required; the timestamp column (type `float`)
/// is required unless `columns.timestamp` is nil; the rating column (type `float`) is read when
/// present. Other columns are checked for count only. Lines may end in `\n` or `\r\n`; a last
/// line without a newline is accepted unless `requireFinalNewline` is set.
public struct InterReader: Sendable {
    public struct Columns: Sendable {
        public var user: String
        public var item: String
        public var timestamp: String?
        public var rating: String?
        public init(user: String = "user_id", item: String = "item_id",
                    timestamp: String? = "timestamp", rating: String? = "rating") {
            self.user = user; self.item = item; self.timestamp = timestamp; self.rating = rating
        }
    }

    public var columns: Columns
    public var requireFinalNewline: Bool
    /// Read buffer size in bytes (lines longer than this grow it).
    public var bufferSize: Int

    public init(columns: Columns = Columns(), requireFinalNewline: Bool = false, bufferSize: Int = 1 << 20) {
        self.columns = columns; self.requireFinalNewline = requireFinalNewline; self.bufferSize = bufferSize
    }

    /// Reads the file at `path`.
    public func read(path: String) throws -> Interactions {
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw InterError(.io, file: path, line: 0, reason: "cannot open: " + errnoText()) }
        defer { close(fd) }
        return try parse(name: path) { buf, n in
            while true {
                let r = Glibc.read(fd, buf, n)
                if r >= 0 { return r }
                if errno == EINTR { continue }
                throw InterError(.io, file: path, line: 0, reason: "read failed: " + errnoText())
            }
        }
    }

    /// Parses file contents held in memory; `name` stands for the file in errors.
    public func parse(contents: [UInt8], name: String) throws -> Interactions {
        var offset = 0
        return try parse(name: name) { buf, n in
            let m = min(n, contents.count - offset)
            _ = contents.withUnsafeBufferPointer { memcpy(buf, $0.baseAddress! + offset, m) }
            offset += m
            return m
        }
    }

    /// Parses `text` (tests).
    public func parse(text: String, name: String) throws -> Interactions {
        try parse(contents: Array(text.utf8), name: name)
    }

    private func errnoText() -> String { String(cString: strerror(errno)) }

    /// The streaming core. `fill(buffer, capacity)` returns bytes read, 0 at end of file.
    private func parse(name: String, fill: (UnsafeMutableRawPointer, Int) throws -> Int) throws -> Interactions {
        var cap = max(bufferSize, 64)
        var buf = UnsafeMutablePointer<UInt8>.allocate(capacity: cap)
        defer { buf.deallocate() }
        var len = 0          // bytes valid in buf
        var pos = 0          // start of the current line
        var eof = false
        var lineNo = 0

        // Returns the next line as (start, end) in buf without its terminator, nil at end of file.
        // `terminated` tells whether it ended with a newline.
        var terminated = true
        func nextLine() throws -> (Int, Int)? {
            while true {
                if pos < len, let nl = memchr(buf + pos, 0x0A, len - pos) {
                    let end = buf.distance(to: nl.assumingMemoryBound(to: UInt8.self))
                    let start = pos
                    pos = end + 1
                    lineNo += 1
                    terminated = true
                    let e = end > start && buf[end - 1] == 0x0D ? end - 1 : end
                    return (start, e)
                }
                if eof {
                    if pos < len {
                        let start = pos
                        pos = len
                        lineNo += 1
                        terminated = false
                        let e = buf[len - 1] == 0x0D ? len - 1 : len
                        return (start, e)
                    }
                    return nil
                }
                // Move the partial line to the front, grow when it fills the buffer, read more.
                if pos > 0 {
                    if len > pos { memmove(buf, buf + pos, len - pos) }
                    len -= pos; pos = 0
                }
                if len == cap {
                    let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: cap * 2)
                    bigger.update(from: buf, count: len)
                    buf.deallocate()
                    buf = bigger; cap *= 2
                }
                let r = try fill(buf + len, cap - len)
                if r == 0 { eof = true } else { len += r }
            }
        }

        // Header.
        guard let (hs, he) = try nextLine(), he > hs else {
            throw InterError(.emptyFile, file: name, line: 1, reason: "no header line")
        }
        let headerText = String(decoding: UnsafeBufferPointer(start: buf + hs, count: he - hs), as: UTF8.self)
        var names: [String] = [], types: [InterFieldType] = []
        for (i, field) in headerText.split(separator: "\t", omittingEmptySubsequences: false).enumerated() {
            let parts = field.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, let type = InterFieldType(rawValue: String(parts[1])) else {
                throw InterError(.badHeader, file: name, line: 1, column: String(field),
                                 reason: "header field \(i + 1) is not name:type with type token, token_seq, float or float_seq")
            }
            if names.contains(String(parts[0])) {
                throw InterError(.badHeader, file: name, line: 1, column: String(parts[0]), reason: "column name repeats")
            }
            names.append(String(parts[0])); types.append(type)
        }
        func column(_ wanted: String?, type: InterFieldType, required: Bool) throws -> Int {
            guard let wanted else { return -1 }
            guard let i = names.firstIndex(of: wanted) else {
                if !required { return -1 }
                throw InterError(.missingColumn, file: name, line: 1, column: wanted,
                                 reason: "no such column in the header (\(headerText.replacingTabs()))")
            }
            guard types[i] == type else {
                throw InterError(.missingColumn, file: name, line: 1, column: wanted,
                                 reason: "has type \(types[i].rawValue), expected \(type.rawValue)")
            }
            return i
        }
        let ui = try column(columns.user, type: .token, required: true)
        let ii = try column(columns.item, type: .token, required: true)
        let ti = try column(columns.timestamp, type: .float, required: true)
        let ri = try column(columns.rating, type: .float, required: false)
        let nFields = names.count

        var users: [Int32] = [], items: [Int32] = []
        var times: [Double] = [], ratings: [Float] = []
        var ut = TokenTable(), it = TokenTable()
        var fs = [Int](repeating: 0, count: nFields), fe = [Int](repeating: 0, count: nFields)

        while let (s, e) = try nextLine() {
            if s == e && terminated { // an empty line: only tolerated as trailing whitespace
                throw InterError(.wrongFieldCount, file: name, line: lineNo, reason: "empty line")
            }
            // Split into fields.
            var f = 0, start = s, p = s
            while p < e {
                if buf[p] == 0x09 {
                    if f < nFields { fs[f] = start; fe[f] = p }
                    f += 1; start = p + 1
                }
                p += 1
            }
            if f < nFields { fs[f] = start; fe[f] = e }
            f += 1
            if f != nFields {
                if !terminated {
                    throw InterError(.truncatedLastLine, file: name, line: lineNo,
                                     reason: "last line has \(f) fields, header has \(nFields) (truncated file?)")
                }
                throw InterError(.wrongFieldCount, file: name, line: lineNo,
                                 reason: "\(f) fields, header has \(nFields)")
            }
            if !terminated && requireFinalNewline {
                throw InterError(.truncatedLastLine, file: name, line: lineNo, reason: "file does not end with a newline")
            }
            let un = fe[ui] - fs[ui], inn = fe[ii] - fs[ii]
            if un == 0 {
                throw InterError(.emptyToken, file: name, line: lineNo, column: names[ui], reason: "empty token")
            }
            if inn == 0 {
                throw InterError(.emptyToken, file: name, line: lineNo, column: names[ii], reason: "empty token")
            }
            let u = ut.intern(buf + fs[ui], un)
            if u.isNew && !validUTF8(buf + fs[ui], un) {
                throw InterError(.invalidUTF8, file: name, line: lineNo, column: names[ui], reason: "token is not valid UTF-8")
            }
            let v = it.intern(buf + fs[ii], inn)
            if v.isNew && !validUTF8(buf + fs[ii], inn) {
                throw InterError(.invalidUTF8, file: name, line: lineNo, column: names[ii], reason: "token is not valid UTF-8")
            }
            users.append(u.id); items.append(v.id)
            if ti >= 0 {
                guard let v = parseDouble(buf + fs[ti], fe[ti] - fs[ti]) else {
                    throw InterError(.notANumber, file: name, line: lineNo, column: names[ti],
                                     reason: "not a number: \(quoted(buf + fs[ti], fe[ti] - fs[ti]))")
                }
                times.append(v)
            }
            if ri >= 0 {
                guard let v = parseDouble(buf + fs[ri], fe[ri] - fs[ri]) else {
                    throw InterError(.notANumber, file: name, line: lineNo, column: names[ri],
                                     reason: "not a number: \(quoted(buf + fs[ri], fe[ri] - fs[ri]))")
                }
                ratings.append(Float(v))
            }
        }
        return Interactions(users: users, items: items, timestamps: ti >= 0 ? times : nil,
                            ratings: ri >= 0 ? ratings : nil, userTokens: ut, itemTokens: it)
    }
}

private extension String {
    func replacingTabs() -> String { split(separator: "\t").joined(separator: " ") }
}

private func quoted(_ p: UnsafePointer<UInt8>, _ n: Int) -> String {
    let s = String(decoding: UnsafeBufferPointer(start: p, count: min(n, 40)), as: UTF8.self)
    return "\"" + s + (n > 40 ? "…" : "") + "\""
}

private func validUTF8(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    var allASCII = true
    for i in 0..<n where p[i] >= 0x80 { allASCII = false; break }
    if allASCII { return true }
    // Decode strictly; String(validating:) is not available on every toolchain we target.
    var it = UnsafeBufferPointer(start: p, count: n).makeIterator()
    var decoder = UTF8()
    while true {
        switch decoder.decode(&it) {
        case .scalarValue: continue
        case .emptyInput: return true
        case .error: return false
        }
    }
}

private let exactPowersOfTen: [Double] = (0...22).map { i in
    var v = 1.0
    for _ in 0..<i { v *= 10 }
    return v
}

/// Parses a finite decimal number. Plain forms (`-12`, `3.5`, `881250949`) with at most 15
/// significant digits take an exact fast path (an integer mantissa and one correctly rounded
/// division by an exact power of ten); anything else goes through strtod. Nil when the whole
/// field is not one finite number.
@inline(__always)
func parseDouble(_ p: UnsafePointer<UInt8>, _ n: Int) -> Double? {
    if n == 0 { return nil }
    var i = 0, negative = false
    if p[0] == 0x2D { negative = true; i = 1 } else if p[0] == 0x2B { i = 1 }
    var mantissa: UInt64 = 0, digits = 0, fraction = 0, sawDot = false, simple = true
    while i < n {
        let c = p[i]
        if c >= 0x30 && c <= 0x39 {
            if digits < 15 {
                mantissa = mantissa * 10 + UInt64(c - 0x30)
                if mantissa != 0 { digits += 1 }
                if sawDot { fraction += 1; if fraction > 22 { simple = false; break } }
            } else { simple = false; break }
        } else if c == 0x2E && !sawDot {
            sawDot = true
        } else { simple = false; break }
        i += 1
    }
    let hasDigit = (0..<n).contains { p[$0] >= 0x30 && p[$0] <= 0x39 }
    if simple && hasDigit {
        let v = Double(mantissa) / exactPowersOfTen[fraction]
        return negative ? -v : v
    }
    // General path: strtod on a NUL-terminated copy; it must consume the whole field.
    if n > 256 { return nil }
    return withUnsafeTemporaryAllocation(of: CChar.self, capacity: n + 1) { tmp -> Double? in
        for k in 0..<n { tmp[k] = CChar(bitPattern: p[k]) }
        tmp[n] = 0
        var end: UnsafeMutablePointer<CChar>? = nil
        let v = strtod(tmp.baseAddress!, &end)
        guard let end, tmp.baseAddress!.distance(to: end) == n, v.isFinite else { return nil }
        if p[0] == 0x20 || p[0] == 0x09 { return nil }   // strtod skips leading space; we do not
        return v
    }
}
