import ArgumentParser
import Foundation
import RPC
import WinnowProto

/// `winnow status`: the live workers the broker knows, as a table.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "List the live workers registered with the broker.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Only services whose name starts with this.")
    var prefix: String = ""

    func run() async throws {
        let client = try RPCClient(endpoint: connection.target)
        defer { client.close() }
        var request = Winnow_V1_ListWorkersRequest()
        request.servicePrefix = prefix
        let list: Winnow_V1_ListWorkersResponse
        do {
            list = try await client.call(service: "broker", method: "ListWorkers", request,
                                         as: Winnow_V1_ListWorkersResponse.self,
                                         timeout: connection.timeout, idempotent: true)
        } catch let error as RPCError {
            FileHandle.standardError.write(Data("winnow status: broker at \(connection.target): \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(Status.table(list, now: WallClock.nowMicros()))
    }

    static func table(_ list: Winnow_V1_ListWorkersResponse, now: Int64) -> String {
        var rows = [["SERVICE", "PID", "ENDPOINT", "IN-FLIGHT", "SERVED", "HEARTBEAT", "INSTANCE"]]
        for worker in list.workers {
            let age = Double(now - worker.lastHeartbeatUnixMicros) / 1_000_000
            rows.append([worker.service, "\(worker.pid)", worker.directEndpoint,
                         "\(worker.inFlight)/\(worker.concurrency)", "\(worker.served)",
                         String(format: "%.1fs ago", age), worker.instance])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        var lines = rows.map { row in
            zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        lines.append("\(list.workers.count) workers; \(list.requestsRouted) requests routed; \(list.malformedFrames) malformed messages dropped")
        return lines.joined(separator: "\n")
    }
}
