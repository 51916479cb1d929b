import ArgumentParser
import Foundation
import Postgres
import RPC
import ServiceKit
import WinnowProto

/// `winnow bench wire`: round-trip latency and throughput of the RPC layer, direct and through the
/// broker, beside pyzmq REQ/REP with the same payloads in the same run.
///
/// The echo server and the broker run as their own processes (the broker is the real `broker`
/// executable; the echo server is this command with `--serve-echo`). Latency is measured one call
/// at a time (as REQ/REP must); throughput counts payload bytes both ways (request and echoed
/// reply), sequentially and with a window of calls in flight. CURVE's cost is a second echo
/// server whose link is CurveZMQ-authenticated and encrypted, timed in the same rounds
/// (`wire.curve.*` rows: the reference column is the same call without CURVE).
struct BenchWire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wire",
        abstract: "RPC round-trip latency and throughput, direct and via the broker, beside pyzmq REQ/REP.")

    @Option(help: "Also write the rows as JSON to this file.")
    var json: String?

    @Option(help: "Round trips timed for the 2 KB payload.")
    var smallCount = 5000

    @Option(help: "Round trips timed for the 200 KB payload.")
    var largeCount = 1000

    @Option(help: "Calls in flight for the pipelined throughput rows.")
    var window = 16

    @Option(help: "Rounds; Winnow and pyzmq alternate, and each row keeps its best round (this box is shared).")
    var rounds = 3

    @Option(help: "Python with pyzmq (default: the one `scripts/reference-venv pyzmq` prints).")
    var python: String?

    @Flag(help: "Skip the pyzmq reference.")
    var noReference = false

    @Flag(help: "Skip the CURVE rows.")
    var noCurve = false

    @Option(help: .hidden)
    var serveEcho: String?

    @Option(help: .hidden)
    var echoBroker: String?

    @Option(help: .hidden)
    var echoCurveKeys: String?

    /// Times only the sequential direct 2 KB calls against an echo server that is already running
    /// (scripts/reference/wire-transport `clients` compares this client with a C one).
    @Option(help: .hidden)
    var timeEchoAt: String?

    static let small = 2048
    static let large = 204_800
    /// Untimed calls before a sequential measurement (fewer when the count is smaller).
    static let warmupCalls = 500

    func validate() throws {
        guard smallCount >= 100, largeCount >= 100 else { throw ValidationError("counts must be at least 100") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
    }

    func run() async throws {
        if let serveEcho {
            try runEchoServer(endpoint: serveEcho, broker: echoBroker)
            return
        }
        if let timeEchoAt {
            try await timeEcho(at: timeEchoAt)
            return
        }
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let brokerEndpoint = "tcp://127.0.0.1:\(try LoopbackPort.ephemeral())"
        let broker = try spawn(bin.appendingPathComponent("broker"), ["--endpoint", brokerEndpoint, "--heartbeat-ms", "1000"])
        defer { stop(broker) }
        let echo = try spawn(bin.appendingPathComponent("winnow"),
                             ["bench", "wire", "--serve-echo", "tcp://127.0.0.1:*", "--echo-broker", brokerEndpoint])
        defer { stop(echo) }

        let viaBroker = try RPCClient(endpoint: brokerEndpoint)
        defer { viaBroker.close() }
        let worker = try await waitForEcho(viaBroker)
        let direct = try RPCClient(endpoint: worker.directEndpoint)
        defer { direct.close() }

        FileHandle.standardError.write(Data("bench wire: echo server at \(worker.directEndpoint), broker at \(brokerEndpoint)\n".utf8))
        var routes = [("direct", direct, "Echo"), ("broker", viaBroker, "Echo"), ("direct_pooled", direct, "EchoPooled")]
        // The same echo server behind CURVE: keys for it and for this client in a scratch directory.
        var curveEcho: Process?
        let keys = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-bench-wire-keys-\(getpid())").path
        defer { curveEcho.map(stop); try? FileManager.default.removeItem(atPath: keys) }
        if !noCurve {
            try LinkSecurity.create(directory: keys, names: ["bench-echo", LinkSecurity.clientIdentity])
            let endpoint = "tcp://127.0.0.1:\(try LoopbackPort.ephemeral())"
            curveEcho = try spawn(bin.appendingPathComponent("winnow"),
                                  ["bench", "wire", "--serve-echo", endpoint, "--echo-curve-keys", keys])
            let curve = try RPCClient(endpoint: endpoint, peer: "bench-echo",
                                      security: LinkSecurity(directory: keys, identity: LinkSecurity.clientIdentity))
            try await waitForAnswer(curve)
            routes.append(("curve", curve, "Echo"))
        }
        defer { for (route, client, _) in routes where route == "curve" { client.close() } }
        var winnow: [String: Measurement] = [:]
        var reference: Reference?
        for round in 1...rounds {
            FileHandle.standardError.write(Data("bench wire: round \(round) of \(rounds)\n".utf8))
            for (route, client, method) in routes {
                for (size, count) in [(Self.small, smallCount), (Self.large, largeCount)] {
                    // One call at a time from a task on the client's receiving thread: no thread
                    // hand-off between calls (see RPCClient.executor).
                    let sequential = try await withTaskExecutorPreference(client.executor) {
                        try await measureSequential(client, method: method, size: size, count: count)
                    }
                    let pipelined = try await measurePipelined(client, method: method, size: size, count: count)
                    let key = "\(route).\(size)"
                    Self.progress("\(route) \(size == Self.small ? "2KB" : "200KB")", sequential)
                    winnow[key] = Measurement(
                        sequential: Self.best(winnow[key]?.sequential, sequential),
                        pipelinedBytesPerSecond: max(winnow[key]?.pipelinedBytesPerSecond ?? 0, pipelined))
                }
            }
            if !noReference {
                let next = try runReference()
                for (size, result) in next.bySize.sorted(by: { $0.key < $1.key }) {
                    Self.progress("pyzmq direct \(size == Self.small ? "2KB" : "200KB")", result)
                }
                for (size, result) in next.relayBySize.sorted(by: { $0.key < $1.key }) {
                    Self.progress("pyzmq via zmq_proxy \(size == Self.small ? "2KB" : "200KB")", result)
                }
                var merged = next
                if let reference {
                    for (size, result) in next.bySize { merged.bySize[size] = Self.best(reference.bySize[size], result) }
                    for (size, result) in next.relayBySize {
                        merged.relayBySize[size] = Self.best(reference.relayBySize[size], result)
                    }
                }
                reference = merged
            }
        }
        let rows = makeRows(winnow, reference: reference)
        BenchOutput.printTable(rows)
        if let json { try BenchOutput.writeJSON(rows, to: json) }
    }

    // MARK: the echo server (a child process)

    private func runEchoServer(endpoint: String, broker: String?) throws {
        WinnowLogging.bootstrap()
        if let echoCurveKeys { LinkSecurity.installed = try LinkSecurity(directory: echoCurveKeys, identity: "bench-echo") }
        let shutdown = ShutdownSignal()
        let server = try RPCServer(configuration: RPCServerConfiguration(
            name: "bench-echo", workerThreads: 2, heartbeatInterval: .seconds(1)))
        // Echo runs inline on the receiving thread (the transport alone); EchoPooled goes through
        // the handler pool as a heavier handler would.
        server.registerRawInline("Echo") { $0 }
        server.registerRaw("EchoPooled") { $0 }
        let bound = try server.bind(endpoint)
        if let broker { server.attach(broker: broker) }
        server.start()
        print("ENDPOINT \(bound)")
        fflush(stdout)
        shutdown.wait()
        server.shutdown(grace: .seconds(1))
    }

    /// Prints `p50 X us` and the CPU time per call of this process's threads other than libzmq's
    /// (`cpu USER SYSTEM us`), read from /proc around the timed calls.
    private func timeEcho(at endpoint: String) async throws {
        let client = try RPCClient(endpoint: endpoint)
        defer { client.close() }
        let count = smallCount
        // A first pass out of the CPU window: connecting, starting threads and first touches of
        // memory cost hundreds of microseconds of system time once, not per call.
        _ = try await withTaskExecutorPreference(client.executor) {
            try await measureSequential(client, method: "Echo", size: Self.small, count: 100)
        }
        let before = ApplicationThreadTicks.read()
        let result = try await withTaskExecutorPreference(client.executor) {
            try await measureSequential(client, method: "Echo", size: Self.small, count: count)
        }
        let after = ApplicationThreadTicks.read()
        let perCall = 1e6 / Double(sysconf(Int32(_SC_CLK_TCK))) / Double(count + min(Self.warmupCalls, count))
        print("p50 \(String(format: "%.1f", result.p50)) us")
        print("cpu \(String(format: "%.2f", Double(after.user - before.user) * perCall)) "
              + "\(String(format: "%.2f", Double(after.system - before.system) * perCall)) us")
    }

    private func waitForEcho(_ client: RPCClient) async throws -> Winnow_V1_WorkerInfo {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            var request = Winnow_V1_ListWorkersRequest()
            request.servicePrefix = "bench-echo"
            if let list = try? await client.call(service: "broker", method: "ListWorkers", request,
                                                 as: Winnow_V1_ListWorkersResponse.self, timeout: .seconds(1)),
               let worker = list.workers.first {
                return worker
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ValidationError("the echo server did not register with the broker within 30 s")
    }

    /// Waits until an Echo at `client`'s endpoint comes back (the CURVE echo server's start).
    private func waitForAnswer(_ client: RPCClient) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if (try? await client.callRaw(service: "bench-echo", method: "Echo", payload: [1], timeout: .milliseconds(500))) != nil { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ValidationError("the CURVE echo server at \(client.endpoint) did not answer within 30 s")
    }

    // MARK: measuring

    /// One round's figures on stderr: how much rounds differ is the noise the best-of-rounds rule
    /// works against.
    static func progress(_ what: String, _ result: Sequential) {
        let line = "bench wire:   \(what): p50 \(String(format: "%.1f", result.p50)) us, "
            + "\(String(format: "%.3f", result.bytesPerSecond / 1e9)) GB/s\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    struct Sequential {
        var p50: Double // µs
        var p99: Double // µs
        var messagesPerSecond: Double
        var bytesPerSecond: Double
    }

    struct Measurement {
        var sequential: Sequential
        var pipelinedBytesPerSecond: Double
    }

    /// Each row's best round: lowest p50, lowest p99, highest rates (the same rule for pyzmq).
    static func best(_ a: Sequential?, _ b: Sequential) -> Sequential {
        guard let a else { return b }
        return Sequential(p50: min(a.p50, b.p50), p99: min(a.p99, b.p99),
                          messagesPerSecond: max(a.messagesPerSecond, b.messagesPerSecond),
                          bytesPerSecond: max(a.bytesPerSecond, b.bytesPerSecond))
    }

    private func measureSequential(_ client: RPCClient, method: String, size: Int, count: Int) async throws -> Sequential {
        let service = "bench-echo"
        let payload = [UInt8](repeating: 0, count: size)
        for _ in 0..<min(Self.warmupCalls, count) {
            _ = try await client.callRaw(service: service, method: method, payload: payload, timeout: .seconds(10))
        }
        var samples: [Double] = []
        samples.reserveCapacity(count)
        let clock = ContinuousClock()
        let start = clock.now
        for _ in 0..<count {
            let t0 = clock.now
            let reply = try await client.callRaw(service: service, method: method, payload: payload, timeout: .seconds(10))
            samples.append(Double((clock.now - t0).microsecondsDouble))
            precondition(reply.count == size, "echo returned \(reply.count) bytes, not \(size)")
        }
        let elapsed = (clock.now - start).secondsDouble
        samples.sort()
        return Sequential(p50: percentile(samples, 0.50), p99: percentile(samples, 0.99),
                          messagesPerSecond: Double(count) / elapsed,
                          bytesPerSecond: 2 * Double(size) * Double(count) / elapsed)
    }

    private func measurePipelined(_ client: RPCClient, method: String, size: Int, count: Int) async throws -> Double {
        let service = "bench-echo"
        let payload = [UInt8](repeating: 0, count: size)
        let window = self.window
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var launched = 0
            func launch() {
                group.addTask {
                    _ = try await client.callRaw(service: service, method: method, payload: payload, timeout: .seconds(30))
                }
                launched += 1
            }
            while launched < min(window, count) { launch() }
            for try await _ in group where launched < count { launch() }
        }
        return 2 * Double(size) * Double(count) / (clock.now - start).secondsDouble
    }

    private func percentile(_ sorted: [Double], _ q: Double) -> Double {
        sorted[min(sorted.count - 1, max(0, Int((q * Double(sorted.count - 1)).rounded()))) ]
    }

    // MARK: the pyzmq reference

    struct Reference {
        var version: String
        /// pyzmq REQ straight to a REP echo server.
        var bySize: [Int: Sequential]
        /// The same REQ through libzmq's `zmq_proxy` relay to a REP echo server: the floor of
        /// what any relaying broker adds on this machine.
        var relayBySize: [Int: Sequential]
    }

    private func runReference() throws -> Reference {
        let scripts = URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("scripts")
        let interpreter: String
        if let python {
            interpreter = python
        } else {
            let venv = scripts.appendingPathComponent("reference-venv").path
            guard FileManager.default.isExecutableFile(atPath: venv) else {
                throw ValidationError("run from the repository root (no \(venv)), or pass --python")
            }
            interpreter = try capture(venv, ["pyzmq"]).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let script = scripts.appendingPathComponent("reference/wire_pyzmq.py").path
        let output = try capture(interpreter, [script, "--sizes", "\(Self.small),\(Self.large)",
                                               "--counts", "\(smallCount),\(largeCount)"])
        guard let line = output.split(separator: "\n").last, let data = line.data(using: .utf8),
              let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let results = object["results"] as? [[String: Any]],
              let relayResults = object["relay_results"] as? [[String: Any]] else {
            throw ValidationError("wire_pyzmq.py printed no result: \(output)")
        }
        func bySize(_ results: [[String: Any]]) -> [Int: Sequential] {
            var bySize: [Int: Sequential] = [:]
            for result in results {
                guard let size = result["size"] as? Int, let p50 = result["p50_us"] as? Double,
                      let p99 = result["p99_us"] as? Double, let rate = result["msgs_per_s"] as? Double,
                      let bytes = result["bytes_per_s"] as? Double else { continue }
                bySize[size] = Sequential(p50: p50, p99: p99, messagesPerSecond: rate, bytesPerSecond: bytes)
            }
            return bySize
        }
        return Reference(version: "pyzmq \(object["pyzmq"] ?? "?") (libzmq \(object["libzmq"] ?? "?"))",
                         bySize: bySize(results), relayBySize: bySize(relayResults))
    }

    // MARK: rows

    private func makeRows(_ winnow: [String: Measurement], reference: Reference?) -> [BenchRow] {
        var rows: [BenchRow] = []
        func label(_ size: Int) -> String { size == Self.small ? "2KB" : "200KB" }
        // Direct rows compare with pyzmq REQ/REP direct; broker rows with the same REQ/REP through
        // libzmq's zmq_proxy, a relay that makes no decisions (the floor for any broker).
        for route in ["direct", "broker", "direct_pooled"] {
            for size in [Self.small, Self.large] {
                guard let measured = winnow["\(route).\(size)"] else { continue }
                let ref = route == "broker" ? reference?.relayBySize[size] : reference?.bySize[size]
                let name = "wire.\(route).\(label(size))"
                rows.append(.time("\(name).p50", winnow: measured.sequential.p50, reference: ref?.p50,
                                  goal: route == "direct" && size == Self.small ? 1.0 : nil, unit: "us"))
                rows.append(.time("\(name).p99", winnow: measured.sequential.p99, reference: ref?.p99, unit: "us"))
                rows.append(.rate("\(name).throughput.sequential", unit: "GB/s",
                                  winnow: measured.sequential.bytesPerSecond / 1e9,
                                  reference: ref.map { $0.bytesPerSecond / 1e9 },
                                  budget: size == Self.large ? 1.0 : nil))
                rows.append(.rate("\(name).throughput.window\(window)", unit: "GB/s",
                                  winnow: measured.pipelinedBytesPerSecond / 1e9, reference: nil))
            }
        }
        for size in [Self.small, Self.large] {
            if let direct = winnow["direct.\(size)"], let broker = winnow["broker.\(size)"] {
                var added: Double?
                if let direct = reference?.bySize[size], let relayed = reference?.relayBySize[size] {
                    added = relayed.p50 - direct.p50
                }
                rows.append(.time("wire.broker_hop.\(label(size)).p50_added",
                                  winnow: broker.sequential.p50 - direct.sequential.p50, reference: added,
                                  budget: size == Self.small ? 40 : nil, unit: "us"))
            }
        }
        // CURVE's cost: the same direct calls, authenticated and encrypted, against plain ones.
        for size in [Self.small, Self.large] {
            guard let curve = winnow["curve.\(size)"], let plain = winnow["direct.\(size)"] else { continue }
            let name = "wire.curve.\(label(size))"
            rows.append(.time("\(name).p50", winnow: curve.sequential.p50, reference: plain.sequential.p50, unit: "us"))
            rows.append(.time("\(name).p99", winnow: curve.sequential.p99, reference: plain.sequential.p99, unit: "us"))
            rows.append(.rate("\(name).throughput.sequential", unit: "GB/s", winnow: curve.sequential.bytesPerSecond / 1e9,
                              reference: plain.sequential.bytesPerSecond / 1e9))
            rows.append(.rate("\(name).throughput.window\(window)", unit: "GB/s", winnow: curve.pipelinedBytesPerSecond / 1e9,
                              reference: plain.pipelinedBytesPerSecond / 1e9))
        }
        if let reference { FileHandle.standardError.write(Data("bench wire: reference \(reference.version)\n".utf8)) }
        return rows
    }

    // MARK: processes

    private func spawn(_ executable: URL, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    private func stop(_ process: Process) {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    private func capture(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ValidationError("\(executable) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

extension Duration {
    var secondsDouble: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    var microsecondsDouble: Double { secondsDouble * 1e6 }
}

/// Clock ticks (user, system) of this process's threads other than libzmq's own ("ZMQbg/..."),
/// from /proc/self/task/*/stat (Linux; zero elsewhere).
struct ApplicationThreadTicks {
    var user = 0
    var system = 0

    static func read() -> ApplicationThreadTicks {
        var total = ApplicationThreadTicks()
        let tasks = "/proc/self/task"
        for task in (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? [] {
            guard let stat = try? String(contentsOfFile: "\(tasks)/\(task)/stat", encoding: .utf8),
                  let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")"),
                  !stat[stat.index(after: open)..<close].hasPrefix("ZMQbg/") else { continue }
            // After "comm) ": state is field 3; utime and stime are fields 14 and 15.
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { continue }
            total.user += user
            total.system += system
        }
        return total
    }
}
