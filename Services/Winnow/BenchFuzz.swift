import ArgumentParser
import Foundation
import RPC
import WinnowProto
#if canImport(Glibc)
import Glibc
#endif

/// `winnow bench fuzz`: malformed requests to every rpc of every service of a running stack, on
/// each service's direct endpoint. Each service is asked for its methods (Health), then sent, in
/// turn: bytes that cannot decode as any message (a valid prefix, then a field with wire type 7),
/// random bytes, random well-formed messages of random fields, those truncated and bit-flipped,
/// one method's payload to another method, and now and then a frame past the payload bound.
/// Rows per service: requests sent, undecodable requests not answered INVALID_ARGUMENT, requests
/// answered INTERNAL or UNKNOWN (a server fault, where the request was at fault), calls with no
/// answer within their deadline, whether the process is the same one and still
/// answers Health afterwards, and its resident memory before and after.
struct BenchFuzz: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuzz",
        abstract: "Malformed requests to every rpc of every service of a running stack (winnow up); no crash, no hang, flat memory.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Requests in all, spread evenly over the services.")
    var requests = 1_000_000

    @Option(help: "Seed of the generator.")
    var seed: UInt64 = 1

    @Option(help: "Requests in flight per service.")
    var inFlight = 16

    @Option(help: "Write the rows as JSON to this file.")
    var json: String?

    func run() throws {
        let broker = try RPCClient(endpoint: connection.resolvedBroker)
        defer { broker.close() }
        let workers = try blocking {
            try await broker.call(service: "broker", method: "ListWorkers", Winnow_V1_ListWorkersRequest(),
                                  as: Winnow_V1_ListWorkersResponse.self, timeout: .seconds(5))
        }.workers
        // one process of each service kind (the pool's registered names: teacher, noise, …)
        var targets: [(service: String, endpoint: String)] = []
        for w in workers.sorted(by: { $0.service < $1.service }) where !targets.contains(where: { $0.service == w.service }) {
            targets.append((w.service, w.directEndpoint))
        }
        guard !targets.isEmpty else { throw ValidationError("no service is registered with \(connection.resolvedBroker) (winnow up first)") }
        targets.insert(("broker", connection.resolvedBroker), at: 0)   // its own rpcs, at its own endpoint
        let each = max(1, requests / targets.count)
        print("fuzz: \(targets.map(\.service).joined(separator: ", ")); \(each) requests each, \(inFlight) in flight")
        var rows: [BenchRow] = []
        for (k, t) in targets.enumerated() {
            let r = try fuzz(service: t.service, endpoint: t.endpoint, count: each, seed: seed &+ UInt64(k))
            print(String(format: "  %@: %d requests in %.1f s; undecodable not INVALID_ARGUMENT %d, no answer %d, same process alive %@, RSS %.1f → %.1f MB; codes %@",
                         t.service, r.sent, r.seconds, r.wrongCode, r.hangs, r.alive ? "yes" : "NO", r.rssBefore, r.rssAfter,
                         r.codes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))
            for fault in r.serverFaults { print("    answered as a server fault: \(fault)") }
            let name = "fuzz_" + t.service.replacingOccurrences(of: "/", with: "_")
            rows.append(.rate(name + "_requests", unit: "requests", winnow: Double(r.sent), reference: nil))
            rows.append(.time(name + "_undecodable_not_invalid_argument", winnow: Double(r.wrongCode), reference: nil, budget: 0, unit: "requests"))
            rows.append(.time(name + "_server_faults", winnow: Double(r.faults), reference: nil, budget: 0, unit: "requests"))
            rows.append(.time(name + "_no_answer", winnow: Double(r.hangs), reference: nil, budget: 0, unit: "requests"))
            rows.append(.time(name + "_crashed", winnow: r.alive ? 0 : 1, reference: nil, budget: 0, unit: "bool"))
            rows.append(.time(name + "_rss_growth", winnow: r.rssAfter - r.rssBefore, reference: nil, budget: 64, unit: "MB"))
        }
        print("")
        BenchOutput.printTable(rows)
        if let json { try BenchOutput.writeJSON(rows, to: json) }
    }

    struct Outcome {
        var sent = 0, wrongCode = 0, hangs = 0, alive = true
        var rssBefore = 0.0, rssAfter = 0.0, seconds = 0.0
        var codes: [String: Int] = [:]
        /// The first answers that blame the server (INTERNAL, UNKNOWN) to a malformed request.
        var serverFaults: [String] = []
        var faults = 0
    }

    private func fuzz(service: String, endpoint: String, count: Int, seed: UInt64) throws -> Outcome {
        let client = try RPCClient(endpoint: endpoint, peer: service)
        defer { client.close() }
        client.maxPayloadBytes = WireProtocol.defaultMaxPayloadBytes * 2
        func health() throws -> Winnow_V1_HealthResponse {
            try blocking {
                try await client.call(service: service, method: "Health", Winnow_V1_HealthRequest(), as: Winnow_V1_HealthResponse.self,
                                      timeout: .seconds(10))
            }
        }
        let before = try health()
        let methods = (before.detail["methods"] ?? "").split(separator: ",").map(String.init).filter { $0 != "Health" }
        guard !methods.isEmpty else { throw ValidationError("\(service) lists no methods in its Health (an older build?)") }
        let rssBefore = Self.residentMB(before.pid)
        let start = Date(), inFlight = self.inFlight
        var out = try blocking { try await Self.send(count: count, inFlight: inFlight, methods: methods, service: service, client: client, seed: seed) }
        out.rssBefore = rssBefore
        out.seconds = Date().timeIntervalSince(start)
        if let after = try? health(), after.pid == before.pid, after.instance == before.instance {
            out.rssAfter = Self.residentMB(after.pid)
        } else {
            out.alive = false
        }
        return out
    }

    /// Sends `count` payloads, `inFlight` at a time, cycling through `methods`; tallies answers.
    static func send(count: Int, inFlight: Int, methods: [String], service: String, client: RPCClient, seed: UInt64) async throws -> Outcome {
        var o = Outcome()
        var generator = Payloads(seed: seed)
        var next = 0
        try await withThrowingTaskGroup(of: (Bool, Winnow_V1_StatusCode?, Bool, String?).self) { group in
            while o.sent < count {
                while next < count && next - o.sent < inFlight {
                    let method = methods[next % methods.count]
                    let (payload, undecodable) = generator.next(index: next)
                    next += 1
                    // an oversized frame may be dropped by the server's socket: its deadline is short
                    let oversized = payload.count > WireProtocol.defaultMaxPayloadBytes
                    let timeout: Duration = oversized ? .seconds(2) : .seconds(20)
                    group.addTask {
                        do {
                            _ = try await client.callRaw(service: service, method: method, payload: payload, timeout: timeout)
                            return (undecodable, nil, oversized, nil)
                        } catch let e as RPCError {
                            return (undecodable, e.code, oversized, e.code == .internal || e.code == .unknown ? "\(method): \(e.message)" : nil)
                        }
                    }
                }
                guard let (undecodable, code, oversized, fault) = try await group.next() else { break }
                if let fault {
                    o.faults += 1
                    if o.serverFaults.count < 3 { o.serverFaults.append(fault) }
                }
                o.sent += 1
                let label = code.map { $0.name } ?? "ok"
                o.codes[label, default: 0] += 1
                if undecodable && code != .invalidArgument { o.wrongCode += 1 }
                if code == .deadlineExceeded && !oversized { o.hangs += 1 }
            }
        }
        return o
    }

    /// VmRSS of a local process, in MB (0 when it cannot be read: another host).
    static func residentMB(_ pid: Int32) -> Double {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb / 1024
    }
}

/// Malformed payloads, seeded.
struct Payloads {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }

    mutating func word() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func below(_ n: Int) -> Int { Int(word() % UInt64(max(n, 1))) }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: word()) } }

    mutating func varint(_ v: UInt64) -> [UInt8] {
        var v = v, out: [UInt8] = []
        repeat { out.append(UInt8(v & 0x7F) | (v > 0x7F ? 0x80 : 0)); v >>= 7 } while v > 0
        return out
    }

    /// A well-formed message of random fields 1...20 (varints, fixed64/32, length-delimited).
    mutating func message(depth: Int = 0) -> [UInt8] {
        var out: [UInt8] = []
        for _ in 0..<(1 + below(8)) {
            let field = UInt64(1 + below(20))
            switch below(4) {
            case 0: out += varint(field << 3 | 0) + varint(word() >> UInt64(below(64)))
            case 1: out += varint(field << 3 | 1) + bytes(8)
            case 2: out += varint(field << 3 | 5) + bytes(4)
            default:
                let body = depth < 2 && below(2) == 0 ? message(depth: depth + 1) : bytes(below(64))
                out += varint(field << 3 | 2) + varint(UInt64(body.count)) + body
            }
        }
        return out
    }

    /// The `index`-th payload and whether it cannot decode as any message.
    mutating func next(index: Int) -> (payload: [UInt8], undecodable: Bool) {
        if index % 2500 == 2499 {
            return ([UInt8](repeating: 0x0A, count: WireProtocol.defaultMaxPayloadBytes + 1), false)   // past the bound
        }
        switch index % 5 {
        case 0: return (message() + varint(UInt64(1 + below(20)) << 3 | 7), true)   // wire type 7 does not exist
        case 1: return (bytes(below(256)), false)
        case 2: let m = message(); return (Array(m.prefix(below(max(m.count, 1)))), false)   // truncated
        case 3:
            var m = message()
            for _ in 0..<(1 + below(3)) where !m.isEmpty { m[below(m.count)] ^= UInt8(1 << below(8)) }
            return (m, false)
        default: return (message(), false)   // well-formed, for whichever method it reaches
        }
    }
}
