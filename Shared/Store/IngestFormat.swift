import Data
import WinnowProto

/// How the raw lines of one load are laid out: the format, the header's column names, and which
/// columns hold the user, item, timestamp and (optionally) rating. Built once per load from
/// BeginIngest's header and column mapping; parses each batch into `IngestRows`.
///
/// Every format goes through the RecBole `.inter` reader of the Data library: TSV lines are
/// already its layout, CSV lines are re-delimited (quotes honoured) line by line, and CSV/TSV
/// headers get RecBole types (`:token`, `:float`) from the column mapping. Line numbers stay
/// those of the source file.
public struct IngestFormat: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case inter, csv, tsv
    }

    public let kind: Kind
    public let source: String
    /// Column names in header order.
    public let names: [String]
    public let user: String
    public let item: String
    public let timestamp: String
    /// nil when the source has no rating column.
    public let rating: String?
    /// The header as the `.inter` reader sees it.
    let interHeader: String

    /// Validates the header against the mapping. Errors name the source, line 1 and the column.
    public init(source: String, format: Winnow_V1_InputFormat, header: String, columns: Winnow_V1_ColumnMapping) throws {
        self.source = source
        let header = header.hasSuffix("\r") ? String(header.dropLast()) : header
        guard !header.isEmpty else {
            throw StoreError.invalidArgument("\(source):1: no header line; raw batches need the source's header")
        }
        switch format {
        case .recboleInter: kind = .inter
        case .csv: kind = .csv
        case .tsv: kind = .tsv
        case .unspecified, .UNRECOGNIZED:
            throw StoreError.invalidArgument("\(source): input format is not set (RECBOLE_INTER, CSV or TSV)")
        }
        func pick(_ given: String, _ fallback: String) -> String { given.isEmpty ? fallback : given }
        switch kind {
        case .inter:
            let fields = header.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            names = fields.map { String($0.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? "") }
            user = pick(columns.user, "user_id")
            item = pick(columns.item, "item_id")
            timestamp = pick(columns.timestamp, "timestamp")
            let r = pick(columns.rating, "rating")
            rating = names.contains(r) ? r : (columns.rating.isEmpty ? nil : r)
            interHeader = header
        case .csv, .tsv:
            let fields: [String]
            if kind == .csv {
                guard let split = try? CSV.split(Array(header.utf8)) else {
                    throw StoreError.invalidArgument("\(source):1: header is not valid CSV (unbalanced quotes)")
                }
                fields = split
            } else {
                fields = header.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            }
            names = fields
            guard !columns.user.isEmpty, !columns.item.isEmpty, !columns.timestamp.isEmpty else {
                throw StoreError.invalidArgument("\(source): CSV/TSV needs a column mapping naming the user, item and timestamp columns")
            }
            user = columns.user; item = columns.item; timestamp = columns.timestamp
            rating = columns.rating.isEmpty ? nil : columns.rating
            var typed: [String] = []
            for (i, name) in fields.enumerated() {
                if name.isEmpty || name.contains(":") || name.contains("\t") {
                    throw StoreError.invalidArgument("\(source):1: header column \(i + 1) (\"\(name)\") is empty or contains ':' or a tab")
                }
                let type = (name == columns.timestamp || name == columns.rating) ? "float" : "token"
                typed.append("\(name):\(type)")
            }
            interHeader = typed.joined(separator: "\t")
        }
        var seen = Set<String>()
        for n in names where !seen.insert(n).inserted {
            throw StoreError.invalidArgument("\(source):1: column \(n): the header names it twice")
        }
        for (role, name) in [("user", user), ("item", item), ("timestamp", timestamp)] + (rating.map { [("rating", $0)] } ?? [])
        where !names.contains(name) {
            throw StoreError.invalidArgument("\(source):1: column \(name): the \(role) column is not in the header (\(names.joined(separator: ", ")))")
        }
        // Let the reader check the header's types now, so a bad header fails at BeginIngest.
        _ = try parse(raw: [], firstLine: 2)
    }

    /// Fields on 1-based line `line` of `contents`.
    static func fieldCount(_ contents: [UInt8], line: Int) -> Int {
        var current = 1, fields = 1, i = 0
        while i < contents.count && current < line { if contents[i] == 0x0A { current += 1 }; i += 1 }
        while i < contents.count && contents[i] != 0x0A { if contents[i] == 0x09 { fields += 1 }; i += 1 }
        return fields
    }

    /// The column mapping as stored with the load.
    var columnsText: String { [user, item, timestamp, rating ?? ""].joined(separator: ",") }

    /// Parses raw lines (no header) whose first line is line `firstLine` of the source. Every line
    /// must end with a newline: an unterminated last line is reported as truncated.
    public func parse(raw: [UInt8], firstLine: UInt64) throws -> IngestRows {
        var contents = Array(interHeader.utf8)
        contents.append(0x0A)
        switch kind {
        case .inter, .tsv:
            contents.append(contentsOf: raw)
        case .csv:
            try CSV.toTabs(raw, into: &contents, source: source, firstLine: firstLine)
        }
        let reader = InterReader(columns: .init(user: user, item: item, timestamp: timestamp, rating: rating),
                                 requireFinalNewline: true)
        let parsed: Interactions
        do {
            parsed = try reader.parse(contents: contents, name: source)
        } catch let e as InterError {
            let line = e.line >= 2 ? Int(firstLine) + e.line - 2 : e.line
            var message = "\(source):\(line)"
            if let column = e.column { message += ": column \(column)" }
            var reason = e.reason
            if e.column == nil && (e.kind == .wrongFieldCount || e.kind == .truncatedLastLine) {
                // Name the first missing (or the first extra) column.
                let fields = Self.fieldCount(contents, line: e.line)
                if fields < names.count { message += ": column \(names[fields])"; reason = "missing (" + reason + ")" }
                else if fields > names.count { message += ": column \(fields)"; reason = "extra field (" + reason + ")" }
            }
            if e.kind == .truncatedLastLine && !reason.contains("truncated") { reason += " (truncated last line?)" }
            throw StoreError.invalidArgument(message + ": " + reason)
        }
        // Ids must be integers: resolve each distinct token once.
        func ids(_ tokens: TokenTable, _ rows: [Int32], _ column: String) throws -> [Int64] {
            var values = [Int64](repeating: 0, count: tokens.count)
            for t in 0..<tokens.count {
                guard let v = Int64(tokens[t]) else {
                    let row = rows.firstIndex(of: Int32(t)) ?? 0
                    throw StoreError.invalidArgument("\(source):\(Int(firstLine) + row): column \(column): id is not an integer: \"\(tokens[t].prefix(40))\"")
                }
                values[t] = v
            }
            return values
        }
        let userIDs = try ids(parsed.userTokens, parsed.users, user)
        let itemIDs = try ids(parsed.itemTokens, parsed.items, item)
        var rows = IngestRows()
        rows.reserve(parsed.count)
        let times = parsed.timestamps ?? []
        for r in 0..<parsed.count {
            rows.lines.append(Int64(firstLine) + Int64(r))
            rows.users.append(userIDs[Int(parsed.users[r])])
            rows.items.append(itemIDs[Int(parsed.items[r])])
            rows.timestamps.append(times[r])
        }
        rows.ratings = parsed.ratings
        return rows
    }
}

/// Parsed rows of one batch, columnar.
public struct IngestRows: Sendable, Equatable {
    public var lines: [Int64] = []
    public var users: [Int64] = []
    public var items: [Int64] = []
    public var timestamps: [Double] = []
    public var ratings: [Float]?

    public init() {}
    public var count: Int { users.count }

    mutating func reserve(_ n: Int) {
        lines.reserveCapacity(n); users.reserveCapacity(n); items.reserveCapacity(n); timestamps.reserveCapacity(n)
    }

    /// Rows from already-parsed `Interaction` messages; `firstLine` numbers them for errors.
    public init(_ messages: [Winnow_V1_Interaction], source: String, firstLine: UInt64) throws {
        var anyRating = false
        for (k, m) in messages.enumerated() {
            let line = Int64(firstLine) + Int64(k)
            guard let u = Int64(m.user) else {
                throw StoreError.invalidArgument("\(source):\(line): column user: id is not an integer: \"\(m.user.prefix(40))\"")
            }
            guard let i = Int64(m.item) else {
                throw StoreError.invalidArgument("\(source):\(line): column item: id is not an integer: \"\(m.item.prefix(40))\"")
            }
            guard m.timestamp.isFinite else {
                throw StoreError.invalidArgument("\(source):\(line): column timestamp: not a finite number")
            }
            lines.append(line); users.append(u); items.append(i); timestamps.append(m.timestamp)
            anyRating = anyRating || m.hasRating_p
        }
        if anyRating { ratings = messages.map { $0.hasRating_p ? $0.rating : .nan } }
    }

    /// The rows in COPY's binary format for `(line, user_id, item_id, ts, rating)`.
    func copyBinary() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(19 + count * 50 + 2)
        out.append(contentsOf: Array("PGCOPY\n".utf8)); out.append(0xFF); out.append(0x0D); out.append(0x0A); out.append(0)
        func be32(_ v: UInt32) { out.append(UInt8(v >> 24)); out.append(UInt8((v >> 16) & 0xFF)); out.append(UInt8((v >> 8) & 0xFF)); out.append(UInt8(v & 0xFF)) }
        func be64(_ v: UInt64) { be32(UInt32(v >> 32)); be32(UInt32(v & 0xFFFF_FFFF)) }
        be32(0); be32(0)
        for r in 0..<count {
            out.append(0); out.append(5)
            be32(8); be64(UInt64(bitPattern: lines[r]))
            be32(8); be64(UInt64(bitPattern: users[r]))
            be32(8); be64(UInt64(bitPattern: items[r]))
            be32(8); be64(timestamps[r].bitPattern)
            if let ratings, !ratings[r].isNaN { be32(4); be32(ratings[r].bitPattern) } else { be32(0xFFFF_FFFF) }
        }
        out.append(0xFF); out.append(0xFF)
        return out
    }
}

/// Minimal RFC 4180 CSV: comma-separated fields, optionally in double quotes with `""` for a quote.
enum CSV {
    struct Unbalanced: Error {}

    /// Splits one line (no terminator) into fields.
    static func split(_ line: [UInt8]) throws -> [String] {
        var fields: [String] = []
        var field: [UInt8] = []
        var i = 0, quoted = false
        while i < line.count {
            let c = line[i]
            if quoted {
                if c == 0x22 {
                    if i + 1 < line.count && line[i + 1] == 0x22 { field.append(0x22); i += 1 } else { quoted = false }
                } else { field.append(c) }
            } else if c == 0x22 && field.isEmpty {
                quoted = true
            } else if c == 0x2C {
                fields.append(String(decoding: field, as: UTF8.self)); field = []
            } else { field.append(c) }
            i += 1
        }
        if quoted { throw Unbalanced() }
        fields.append(String(decoding: field, as: UTF8.self))
        return fields
    }

    /// Re-delimits CSV lines with tabs, line by line (a quoted field may not span lines, nor hold a tab).
    static func toTabs(_ raw: [UInt8], into out: inout [UInt8], source: String, firstLine: UInt64) throws {
        var line = Int(firstLine)
        var quoted = false, fieldStart = true
        var i = 0
        out.reserveCapacity(out.count + raw.count)
        while i < raw.count {
            let c = raw[i]
            if quoted {
                if c == 0x22 {
                    if i + 1 < raw.count && raw[i + 1] == 0x22 { out.append(0x22); i += 1 } else { quoted = false }
                } else if c == 0x0A || c == 0x09 {
                    throw StoreError.invalidArgument("\(source):\(line): a quoted field holds a \(c == 0x09 ? "tab" : "line break"), which Winnow's CSV ingest does not accept")
                } else { out.append(c) }
                fieldStart = false
            } else if c == 0x22 && fieldStart {
                quoted = true; fieldStart = false
            } else if c == 0x2C {
                out.append(0x09); fieldStart = true
            } else if c == 0x09 {
                throw StoreError.invalidArgument("\(source):\(line): a tab inside a CSV field is not accepted")
            } else {
                out.append(c)
                if c == 0x0A { line += 1; fieldStart = true } else if c != 0x0D { fieldStart = false }
            }
            i += 1
        }
        if quoted { throw StoreError.invalidArgument("\(source):\(line): unbalanced quotes (truncated last line?)") }
    }
}
