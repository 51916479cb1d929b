import Foundation

/// What the supervisor tells the world about the stack, kept in `<state>/stack.json` and
/// rewritten (atomically) on every change. `winnow up` waits on it, `winnow down` and
/// `winnow status` read it.
public struct StackRecord: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// Postgres and the children are being started.
        case starting
        /// Every child answered its health probe.
        case ready
        /// Stopping children and Postgres.
        case stopping
        /// Everything stopped.
        case stopped
        /// Start failed; `message` says why. Everything started was stopped again.
        case failed
    }

    public struct Database: Codable, Sendable, Equatable {
        /// The libpq URL the feature store uses (password redacted).
        public var url: String
        /// `true` for the embedded server under the state directory.
        public var embedded: Bool
        public var pid: Int32?
        public var port: Int?
        public var ready: Bool
    }

    public var phase: Phase
    public var supervisorPID: Int32
    public var stateDirectory: String
    public var brokerEndpoint: String
    public var database: Database?
    public var children: [ChildStatus]
    public var message: String?
    public var updated: Date

    public init(phase: Phase, supervisorPID: Int32, stateDirectory: String, brokerEndpoint: String,
                database: Database? = nil, children: [ChildStatus] = [], message: String? = nil, updated: Date = Date()) {
        self.phase = phase
        self.supervisorPID = supervisorPID
        self.stateDirectory = stateDirectory
        self.brokerEndpoint = brokerEndpoint
        self.database = database
        self.children = children
        self.message = message
        self.updated = updated
    }

    /// Reads `<state>/stack.json`; `nil` when there is none or it cannot be read.
    public static func load(_ layout: StackLayout) -> StackRecord? {
        guard let data = FileManager.default.contents(atPath: layout.recordFile) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(StackRecord.self, from: data)
    }

    /// Writes `<state>/stack.json` atomically (write a temporary file, rename).
    public func save(_ layout: StackLayout) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        let data = try encoder.encode(self)
        let tmp = layout.recordFile + ".tmp-\(getpid())"
        try data.write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, layout.recordFile) == 0 else {
            unlink(tmp)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: layout.recordFile])
        }
    }

    /// The table `winnow up` prints: one row for Postgres, one per child.
    public func table() -> String {
        var rows: [[String]] = [["NAME", "PID", "ENDPOINT", "STATUS", "RESTARTS"]]
        if let db = database {
            rows.append(["postgres", db.pid.map(String.init) ?? "-",
                         db.embedded ? "127.0.0.1:\(db.port ?? 0) (embedded)" : db.url,
                         db.ready ? "ready" : "starting", "-"])
        }
        for c in children {
            rows.append([c.name, c.pid.map(String.init) ?? "-", c.endpoint.isEmpty ? "-" : c.endpoint,
                         c.state.rawValue, "\(c.restarts)"])
        }
        let widths = (0..<rows[0].count).map { col in rows.map { $0[col].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
