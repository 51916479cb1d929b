import ArgumentParser
import Foundation
import RPC
import Store
import WinnowProto

/// Input formats `winnow ingest` accepts.
enum IngestFileFormat: String, ExpressibleByArgument, CaseIterable {
    case inter, csv, tsv

    var proto: Winnow_V1_InputFormat {
        switch self {
        case .inter: return .recboleInter
        case .csv: return .csv
        case .tsv: return .tsv
        }
    }
}

/// `winnow ingest FILE ...`: loads interaction files into the feature store, each as one
/// all-or-nothing load.
struct Ingest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Load RecBole .inter or CSV/TSV interaction files into the feature store.",
        discussion: """
        Each file is one load: its lines go to the feature store in batches (COPY into a staging \
        table), and become visible together when the load commits. A bad row (missing column, \
        non-numeric id, bad timestamp, truncated last line, wrong encoding) stops the load with \
        the file, line, column and reason, and leaves the database as it was. The load id \
        defaults to the file's path, size and modification time, so ingesting an unchanged file \
        again is a no-op, and an interrupted ingest resumes where it stopped. CSV/TSV need \
        --user, --item and --timestamp (column names from the header); .inter files default to \
        user_id, item_id, timestamp and rating. User and item ids must be integers.
        Through the broker by default; --database-url writes to Postgres from this process.
        """)

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "Files to ingest.") var files: [String]
    @Option(help: "Input format (default: from the file extension).") var format: IngestFileFormat?
    @Option(help: "User column.") var user: String?
    @Option(help: "Item column.") var item: String?
    @Option(help: "Timestamp column (a number, e.g. Unix seconds).") var timestamp: String?
    @Option(help: "Rating column (optional).") var rating: String?
    @Option(name: .customLong("load-id"), help: "Load id (one file only).") var loadID: String?
    @Option(name: .customLong("batch-mb"), help: "Batch size in MiB.") var batchMB: Int = 4
    @Option(help: "Batches in flight at once.") var parallel: Int = 2
    @Option(name: .customLong("database-url"), help: "Write to this database directly instead of through the featurestore service (env WINNOW_DATABASE_URL is not used).")
    var databaseURL: String?
    @Flag(name: .customLong("no-progress"), help: "Do not draw the progress bar.") var noProgress = false

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("name at least one file") }
        guard batchMB >= 1 && batchMB <= 32 else { throw ValidationError("--batch-mb must be in 1...32") }
        guard parallel >= 1 else { throw ValidationError("--parallel must be >= 1") }
        if loadID != nil && files.count > 1 { throw ValidationError("--load-id names one load; give one file") }
        for f in files where format == nil && FileIngest.format(forPath: f) == nil {
            throw ValidationError("\(f): cannot tell the format from the extension; pass --format inter|csv|tsv")
        }
    }

    func run() async throws {
        let endpoint: FeatureStoreEndpoint
        var local: FeatureStore?
        var client: RPCClient?
        if let databaseURL {
            let store = try FeatureStore(url: databaseURL)
            local = store
            endpoint = store
        } else {
            let c = try connection.client(for: "featurestore")
            client = c
            endpoint = RemoteFeatureStore(client: c, timeout: max(connection.timeout, .seconds(600)))
        }
        defer { local?.close(); client?.close() }
        var failed = false
        for file in files {
            var columns = Winnow_V1_ColumnMapping()
            columns.user = user ?? ""; columns.item = item ?? ""; columns.timestamp = timestamp ?? ""; columns.rating = rating ?? ""
            let kind = format?.proto ?? FileIngest.format(forPath: file)!
            let job = FileIngest(path: file, format: kind, columns: columns, loadID: loadID, batchBytes: batchMB << 20)
            let bar = ProgressBar(label: (file as NSString).lastPathComponent, enabled: !noProgress)
            do {
                let result = try await job.run(on: endpoint, parallel: parallel) { bar.update($0) }
                bar.finish()
                if result.alreadyCommitted {
                    print("\(file): already ingested (\(result.rows) rows, \(result.users) users, \(result.items) items); nothing changed")
                } else {
                    print("\(file): \(result.rows) rows, \(result.users) users, \(result.items) items in \(String(format: "%.2f", bar.elapsed)) s (\(ProgressBar.rate(Double(result.rows) / max(bar.elapsed, 1e-9))) rows/s)")
                }
            } catch {
                bar.finish()
                let message = (error as? StoreError)?.description ?? (error as? RPCError)?.message ?? "\(error)"
                FileHandle.standardError.write(Data("winnow ingest: \(message)\n".utf8))
                failed = true
            }
        }
        if failed { throw ExitCode(1) }
    }
}

/// A one-line progress bar on stderr: bar, percent, rows, rate and ETA, redrawn at most 10 times a second.
final class ProgressBar: @unchecked Sendable {
    let label: String
    let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var drawn = false
    private let lock = NSLock()

    init(label: String, enabled: Bool) { self.label = label; self.enabled = enabled }

    var elapsed: Double { Date().timeIntervalSince(start) }

    static func rate(_ x: Double) -> String {
        x >= 1e6 ? String(format: "%.2fM", x / 1e6) : x >= 1e3 ? String(format: "%.1fk", x / 1e3) : String(format: "%.0f", x)
    }

    func update(_ p: IngestProgress) {
        guard enabled else { return }
        lock.withLock {
            let now = Date()
            guard now.timeIntervalSince(lastDraw) >= 0.1 || p.bytesDone >= p.bytesTotal else { return }
            lastDraw = now
            let fraction = p.bytesTotal > 0 ? min(1, Double(p.bytesDone) / Double(p.bytesTotal)) : 0
            let width = 30, filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let eta = p.eta.isFinite ? String(format: "%.0fs", p.eta) : "?"
            let rate = p.seconds > 0 ? Double(p.bytesDone) / p.seconds : 0
            let line = "\r\(label) [\(bar)] \(String(format: "%3.0f", fraction * 100))% \(p.rows) rows \(ProgressBar.rate(p.rowsPerSecond)) rows/s \(ProgressBar.rate(rate))B/s ETA \(eta)   "
            FileHandle.standardError.write(Data(line.utf8))
            drawn = true
        }
    }

    func finish() {
        lock.withLock { if drawn { FileHandle.standardError.write(Data("\n".utf8)); drawn = false } }
    }
}
