import ArgumentParser
import Foundation
import RPC
import SwiftProtobuf
import WinnowProto

/// `winnow recommend`: the top-k of a user, or of a list of recent items, from the retrieval
/// service of a running stack (the promoted student).
struct Recommend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Top-k items for a user or for recent items, from the retrieval service.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "A user id of the feature store (their history is the input).") var user: String?
    @Option(help: "Recent item ids, oldest first, comma-separated (instead of --user).") var items: String?
    @Option(name: .short, help: "How many items.") var k: Int32 = 10
    @Flag(name: .customLong("exclude-history"), help: "Do not return items of the history.") var excludeHistory = false
    @Option(help: "Titles to print beside the ids: a RecBole .item file, or ml-100k (the file scripts/fetch-ml100k keeps).")
    var titles: String?
    @Flag(help: "Print the response as JSON.") var json = false

    func validate() throws {
        guard (user == nil) != (items == nil) else { throw ValidationError("give exactly one of --user and --items") }
        if let items, parsedItems(items) == nil { throw ValidationError("--items: comma-separated integer ids, got '\(items)'") }
    }

    func parsedItems(_ s: String) -> [Int32]? {
        let parts = s.split(separator: ",").map { Int32($0.trimmingCharacters(in: .whitespaces)) }
        return parts.isEmpty || parts.contains(nil) ? nil : parts.map { $0! }
    }

    /// item id → title from a RecBole .item file (columns item_id and movie_title or title).
    static func loadTitles(_ spec: String) throws -> [Int32: String] {
        var path = spec
        if spec == "ml-100k" {
            let dir = ProcessInfo.processInfo.environment["WINNOW_DATA_DIR"] ?? (NSHomeDirectory() + "/.cache/winnow/data")
            path = dir + "/ml-100k/ml-100k.item"
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationError("--titles \(spec): cannot read \(path)" + (spec == "ml-100k" ? " (run scripts/fetch-ml100k)" : ""))
        }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: true).makeIterator()
        guard let header = lines.next()?.split(separator: "\t").map({ String($0.split(separator: ":").first ?? "") }),
              let id = header.firstIndex(of: "item_id"),
              let title = header.firstIndex(of: "movie_title") ?? header.firstIndex(of: "title") else {
            throw ValidationError("--titles \(path): the header names no item_id and movie_title (or title) column")
        }
        var out: [Int32: String] = [:]
        while let line = lines.next() {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false)
            if f.count > max(id, title), let i = Int32(f[id]) { out[i] = String(f[title]) }
        }
        return out
    }

    func run() async throws {
        var r = Winnow_V1_RecommendRequest()
        r.user = user ?? ""
        r.recentItems = items.flatMap(parsedItems) ?? []
        r.k = k
        r.excludeHistory = excludeHistory
        let client = try connection.client(for: "retrieval")
        defer { client.close() }
        let response: Winnow_V1_RecommendResponse
        do {
            response = try await client.call(service: "retrieval", method: "Recommend", r, as: Winnow_V1_RecommendResponse.self,
                                             timeout: connection.timeout, idempotent: true)
        } catch let e as RPCError {
            throw ValidationError("recommend: \(e)")
        }
        if json { print(try response.jsonString()); return }
        let names = try titles.map(Self.loadTitles) ?? [:]
        print("\(response.modelName) v\(response.modelVersion): top \(response.items.count) for " + (user.map { "user \($0)" } ?? "items \(items!)"))
        if !names.isEmpty {
            print("  recent: " + response.history.suffix(5).map { names[$0] ?? "\($0)" }.joined(separator: "; "))
        }
        for (rank, (item, score)) in zip(response.items, response.scores).enumerated() {
            print(String(format: "%3d. %6d  %8.4f", rank + 1, item, score) + (names[item].map { "  \($0)" } ?? ""))
        }
    }
}
