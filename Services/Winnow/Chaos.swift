import ArgumentParser
import Foundation
import Jobs
import Numerics
import Postgres
import RPC
import Stack
import WinnowProto
#if canImport(Glibc)
import Glibc
#endif

/// `winnow chaos`: faults during real work on a stack `winnow up` started (loopback only), and
/// the checks that nothing was lost. See scripts/chaos, which brings a stack up and runs it.
///
/// Work: a model is trained and promoted for retrieval first; then the job file (CSRec with
/// teachers in their own processes) runs through the trainer while an open-loop generator sends
/// Recommend calls at `--rate`. Faults, one at a time, each waited out before the next: SIGSTOP of
/// the broker for `--broker-stop` seconds, then SIGKILL of a service process every `--kill-every`
/// seconds (± a quarter), the processes in a random order, each once before any twice (the
/// supervisor restarts it), and once, after the first kill, a restart
/// of the embedded Postgres; all along, a writer appends events to the feature store. Afterwards: the job succeeded with the test metrics of the same job
/// run undisturbed in one process; every row the feature store's tables held before is still
/// there unchanged, every acknowledged event is stored, and rows were added only by the run
/// (those events, the job's models in the registry); every failed
/// Recommend fell inside a fault's window (from a call deadline before the fault until a call
/// deadline after its recovery); the report lists every fault and its recovery time.
struct Chaos: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Kill, stop and restart parts of a running stack during a training job and a retrieval load; check nothing is lost.")

    @Option(name: .customLong("state-dir"), help: "State directory of the stack (winnow up).")
    var stateDir = ".state"

    @Option(help: "A RecBole .inter file: the dataset of both jobs.")
    var dataset: String

    @Option(help: "The job file run under faults (as `winnow job submit` reads it).")
    var job: String

    @Option(help: "The job file of the model retrieval serves (trained and promoted first).")
    var serveJob: String

    @Option(help: "Seconds between SIGKILLs of random services.")
    var killEvery = 20.0

    @Option(help: "SIGKILLs at most (default: one every --kill-every until the job ends); a short schedule that lets a debug build's job finish.")
    var maxKills: Int?

    @Option(help: "Seconds the broker stays SIGSTOPped.")
    var brokerStop = 3.0

    @Option(help: "Recommend calls per second during the job (open loop).")
    var rate = 500.0

    @Option(help: "Longest the disturbed job may take, in seconds (the run is bounded).")
    var seconds = 900.0

    @Option(help: "Seed of the fault schedule and the load.")
    var seed: UInt64 = 1

    @Option(help: "Write the report as JSON here.")
    var report: String?

    struct Fault: Codable {
        var kind: String, target: String
        var at: Double, recoveredAfter: Double? = nil
    }

    struct Outcome: Codable {
        var faults: [Fault] = []
        var requests = 0, failed = 0, failedOutsideFaults = 0, shed = 0
        var eventsAcknowledged = 0, eventsMissing = 0
        var failedOutsideExamples: [String] = []
        var jobState = "", jobError = ""
        var test: [String: Double] = [:], undisturbed: [String: Double] = [:]
        var tables: [String: [String: Int]] = [:]
        var problems: [String] = []
    }

    func validate() throws {
        if let maxKills, maxKills < 1 { throw ValidationError("--max-kills: \(maxKills); the schedule kills at least once (Postgres restarts after the first kill)") }
        guard killEvery > 0 else { throw ValidationError("--kill-every: \(killEvery); give seconds > 0") }
    }

    func run() throws {
        let layout = StackLayout(stateDirectory: stateDir)
        guard let record = StackRecord.load(layout), record.phase == .ready else {
            throw ValidationError("no ready stack in \(layout.stateDirectory) (winnow up --state-dir \(stateDir) first)")
        }
        if FileManager.default.fileExists(atPath: layout.curveDirectory + "/" + LinkSecurity.allowedKeysFile) {
            LinkSecurity.installed = try LinkSecurity(directory: layout.curveDirectory, identity: LinkSecurity.clientIdentity)
        }
        let broker = try RPCClient(endpoint: record.brokerEndpoint)
        defer { broker.close() }
        let started = Date()
        func now() -> Double { Date().timeIntervalSince(started) }
        func say(_ s: String) { print(String(format: "chaos %6.1fs  ", now()) + s); fflush(stdout) }
        var out = Outcome()

        // 1. the served model, trained and promoted undisturbed
        say("training and promoting the served model (\(serveJob))")
        try winnow(["job", "submit", serveJob, "--dataset", dataset, "--publish", "--watch", "--state-dir", stateDir,
                    "--timeout-ms", "60000"])
        let items = try Self.itemIDs(dataset)
        var probe = Winnow_V1_RecommendRequest()
        probe.recentItems = Array(items.prefix(2)); probe.k = 5
        let q = probe
        func recommends() -> Bool {
            (try? blocking {
                try await broker.call(service: "retrieval", method: "Recommend", q, as: Winnow_V1_RecommendResponse.self,
                                      timeout: .seconds(2)) }) != nil
        }
        try waitFor("retrieval serves the promoted model", timeout: 120) {
            (try? blocking { try await broker.call(service: "retrieval", method: "Recommend", q, as: Winnow_V1_RecommendResponse.self,
                                                         timeout: .seconds(2)) }) != nil
        }

        // 2. the feature store's rows before
        guard let url = record.database?.url else { throw ValidationError("the stack record names no database") }
        let before = try Self.rowDigests(url: url)

        // 3. the job and the load, under faults
        let trainer = try TrainerClient(connectionOptions(record))
        let config = try JobConfig.load(path: job)
        let jobID = try blocking { try await trainer.submit(config, dataset: dataset, name: nil, publish: false) }
        say("submitted job \(jobID) (\(job)); load \(Int(rate))/s")
        var loadGenerator = RNG(seed: seed &+ 17)
        let load = OpenLoopLoad(client: broker, rate: rate, zero: started) { _ in
            var q = Winnow_V1_RecommendRequest()
            q.recentItems = (0..<5).map { _ in items[loadGenerator.below(items.count)] }
            q.k = 5
            return q
        }
        load.start()
        var windows: [(from: Double, to: Double)] = []
        let events = EventWriter(client: broker, items: items, prefix: "chaos-\(jobID)-")
        events.start()
        var rng = SystemRandomNumberGenerator()
        var generator = RNG(seed: seed)
        var nextFault = now() + 3
        var brokerStopped = false, postgresRestarted = false, kills = 0
        // victims in a random order, each process once before any twice
        var victims = (StackRecord.load(layout)?.children ?? []).map(\.name)
        for i in stride(from: victims.count - 1, to: 0, by: -1) { victims.swapAt(i, generator.below(i + 1)) }
        var final: Winnow_V1_JobProgress?
        while now() < seconds {
            if let p = try? blocking({ try await trainer.progress(jobID) }),
               p.state != Winnow_V1_JobState.running && p.state != Winnow_V1_JobState.queued {
                final = p
                break
            }
            let scheduleDone = brokerStopped && postgresRestarted && kills >= (maxKills ?? .max)
            guard now() >= nextFault, !scheduleDone else { usleep(200_000); continue }
            var fault: Fault
            let at = now()
            if !brokerStopped {
                brokerStopped = true
                let pid = try pidOf("broker", layout)
                say("SIGSTOP broker (pid \(pid)) for \(brokerStop) s")
                kill(pid, SIGSTOP)
                usleep(useconds_t(brokerStop * 1e6))
                kill(pid, SIGCONT)
                fault = Fault(kind: "sigstop", target: "broker", at: at)
                try waitFor("the broker answers", timeout: 60) { healthy("broker", broker) }
            } else if kills >= 1 && !postgresRestarted {
                postgresRestarted = true
                guard let port = record.database?.port, record.database?.embedded == true else {
                    throw ValidationError("the stack's Postgres is not the embedded one: cannot restart it")
                }
                say("restarting Postgres (port \(port))")
                let pg = EmbeddedPostgres(.init(stateDirectory: layout.stateDirectory, port: port))
                try pg.stop()
                try pg.start()
                fault = Fault(kind: "restart", target: "postgres", at: at)
                try waitFor("the feature store reads its database", timeout: 120) {
                    (try? blocking { try await broker.call(service: "featurestore", method: "ListModels", Winnow_V1_ListModelsRequest(),
                                                           as: Winnow_V1_ListModelsResponse.self, timeout: .seconds(2)) }) != nil
                }
            } else {
                let name = victims[kills % victims.count]
                kills += 1
                guard let victim = StackRecord.load(layout)?.children.first(where: { $0.name == name }), let pid = victim.pid else {
                    throw ValidationError("no running \(name) in the stack record")
                }
                say("SIGKILL \(victim.name) (pid \(pid))")
                kill(pid, SIGKILL)
                fault = Fault(kind: "sigkill", target: victim.name, at: at)
                try waitFor("\(victim.name) restarted and answering", timeout: 120) {
                    guard let c = StackRecord.load(layout)?.children.first(where: { $0.name == victim.name }),
                          c.state == .ready, let p = c.pid, p != pid else { return false }
                    // retrieval has recovered when it serves again (its model loaded), not at its Health
                    return healthy(victim.service, broker) && (victim.service != "retrieval" || recommends())
                }
            }
            fault.recoveredAfter = now() - at
            say("  recovered after \(String(format: "%.1f", fault.recoveredAfter!)) s")
            out.faults.append(fault)
            // a call sent up to its deadline (2 s) before the fault may be in flight when it strikes
            windows.append((at - 2, now() + 2))
            nextFault = now() + killEvery * Double.random(in: 0.75...1.25, using: &rng)
        }
        let calls = load.stop()
        let acknowledged = events.stop()
        let failed = calls.filter { $0.code != .ok }
        let outside = failed.filter { call in !windows.contains { call.due >= $0.from && call.due <= $0.to } }
        out.requests = calls.count; out.failed = failed.count
        out.shed = failed.filter { $0.code == .resourceExhausted }.count
        out.failedOutsideFaults = outside.count
        out.failedOutsideExamples = outside.prefix(5).map { String(format: "%.2fs %@: %@", $0.due, "\($0.code)", $0.message) }
        guard let final else {
            out.problems.append("the job did not end within \(seconds) s")
            return try finish(out)
        }
        out.jobState = TrainerClient.name(final.state); out.jobError = final.error
        out.test = final.test
        say("job \(jobID) \(out.jobState); \(out.requests) Recommend calls, \(out.failed) failed (\(out.failedOutsideFaults) outside fault windows), \(out.shed) shed")

        // 4. the feature store's rows after: every row kept, every acknowledged event written
        let after = try Self.rowDigests(url: url)
        let stored = try Self.eventIDs(url: url, prefix: events.prefix)
        out.eventsAcknowledged = acknowledged.count
        out.eventsMissing = acknowledged.subtracting(stored).count
        if out.eventsMissing > 0 { out.problems.append("\(out.eventsMissing) acknowledged events are not in the events table") }
        for (table, rows) in after.merging(before.mapValues { _ in [] }, uniquingKeysWith: { a, _ in a }) {
            let was = before[table] ?? [], now = Set(rows)
            let lost = was.subtracting(now).count, added = now.subtracting(was).count
            out.tables[table] = ["before": was.count, "after": now.count, "lost": lost, "added": added]
            if lost > 0 { out.problems.append("\(table): \(lost) rows lost or changed") }
            let written = table == "events" ? stored.count : 0   // the run's own events
            if added > written && !table.hasPrefix("model") {
                out.problems.append("\(table): \(added - written) rows added beyond the run's own writes")
            }
        }

        // 5. the same job undisturbed, in one process
        say("running the same job undisturbed in this machine's one process")
        let whole = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-chaos-\(getpid()).json").path
        defer { try? FileManager.default.removeItem(atPath: whole) }
        try winnow(["experiment", "job", "--config", job, "--dataset", dataset, "--threads", "1", "--json", whole, "--quiet"])
        let result = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: whole))) as? [String: Any]
        out.undisturbed = result?["test"] as? [String: Double] ?? [:]
        if final.state != .succeeded { out.problems.append("the job \(out.jobState): \(final.error)") }
        for (metric, value) in out.undisturbed where metric.hasSuffix("@10") {
            if let got = out.test[metric], abs(got - value) <= 5e-5 { continue }
            out.problems.append("test \(metric) \(out.test[metric].map { String(format: "%.4f", $0) } ?? "missing") against \(String(format: "%.4f", value)) undisturbed")
        }
        if out.failedOutsideFaults > 0 { out.problems.append("\(out.failedOutsideFaults) Recommend calls failed outside every fault window") }
        for kind in ["sigstop", "sigkill", "restart"] where !out.faults.contains(where: { $0.kind == kind }) {
            out.problems.append("the job ended before a \(kind) fault (lengthen the job or shorten --kill-every)")
        }
        try finish(out)
    }

    private func finish(_ out: Outcome) throws {
        print("\nfaults:")
        for f in out.faults {
            print(String(format: "  %6.1fs  %-8@ %-14@ recovered after %@", f.at, f.kind, f.target,
                         f.recoveredAfter.map { String(format: "%.1f s", $0) } ?? "never"))
        }
        print("events: \(out.eventsAcknowledged) appended and acknowledged during the run, \(out.eventsMissing) of them missing afterwards")
        print("retrieval: \(out.requests) calls, \(out.failed) failed, \(out.failedOutsideFaults) of them outside fault windows, \(out.shed) shed")
        for e in out.failedOutsideExamples { print("  outside: \(e)") }
        print("job: \(out.jobState); test " + ["ndcg@10", "hr@10", "mrr@10"].map {
            "\($0) \(String(format: "%.4f", out.test[$0] ?? .nan)) (undisturbed \(String(format: "%.4f", out.undisturbed[$0] ?? .nan)))"
        }.joined(separator: ", "))
        print("feature store tables (rows before → after, lost, added):")
        for (t, c) in out.tables.sorted(by: { $0.key < $1.key }) {
            print("  \(t): \(c["before"]!) → \(c["after"]!), lost \(c["lost"]!), added \(c["added"]!)")
        }
        if let report {
            let encoder = JSONEncoder(); encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(out).write(to: URL(fileURLWithPath: report))
        }
        if out.problems.isEmpty {
            print("chaos: nothing lost")
        } else {
            print("chaos: \(out.problems.count) problems:\n  " + out.problems.joined(separator: "\n  "))
            throw ExitCode(1)
        }
    }

    // MARK: helpers

    private func connectionOptions(_ record: StackRecord) throws -> ConnectionOptions {
        try ConnectionOptions.parse(["--broker", record.brokerEndpoint, "--timeout-ms", "5000"])
    }

    private func pidOf(_ name: String, _ layout: StackLayout) throws -> Int32 {
        guard let pid = StackRecord.load(layout)?.children.first(where: { $0.name == name })?.pid else {
            throw ValidationError("no running \(name) in the stack record")
        }
        return pid
    }

    private func healthy(_ service: String, _ broker: RPCClient) -> Bool {
        let reply = try? blocking {
            try await broker.call(service: service, method: "Health", Winnow_V1_HealthRequest(), as: Winnow_V1_HealthResponse.self,
                                  timeout: .seconds(1))
        }
        return reply?.status == .serving
    }

    private func waitFor(_ what: String, timeout: Double, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(100_000)
        }
        throw ValidationError("chaos: \(what): not within \(Int(timeout)) s")
    }

    /// Runs this executable with `arguments`, its output passed through; throws on failure.
    private func winnow(_ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: WinnowExecutable.path)
        p.arguments = arguments
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ValidationError("winnow \(arguments.joined(separator: " ")) exited with \(p.terminationStatus)")
        }
    }

    /// The ids of the stored events whose id starts with `prefix`.
    static func eventIDs(url: String, prefix: String) throws -> Set<String> {
        let c = try Connection(url: url)
        defer { c.close() }
        let r = try c.query("SELECT event_id FROM events WHERE starts_with(event_id, $1)", [prefix])
        return Set((0..<r.rowCount).compactMap { r.string($0, 0) })
    }

    /// Events appended one call at a time, 20 a second, each id once; a call that fails is
    /// retried with the same id (AppendEvents ignores a duplicate id) until acknowledged.
    final class EventWriter: @unchecked Sendable {
        let client: RPCClient, items: [Int32], prefix: String
        private let lock = NSLock()
        private var running = true
        private var acknowledged = Set<String>()
        private let done = DispatchSemaphore(value: 0)

        init(client: RPCClient, items: [Int32], prefix: String) {
            self.client = client; self.items = items; self.prefix = prefix
        }

        func start() {
            let thread = Thread { [self] in
                var n = 0
                while lock.withLock({ running }) {
                    var event = Winnow_V1_Event()
                    event.eventID = prefix + "\(n)"
                    event.user = "\(1 + n % 50)"
                    event.item = "\(items[n % items.count])"
                    event.timestamp = 1e9 + Double(n)
                    event.kind = "click"
                    var request = Winnow_V1_AppendEventsRequest()
                    request.events = [event]
                    let r = request
                    while lock.withLock({ running }) {
                        let ok = (try? blocking {
                            try await self.client.call(service: "featurestore", method: "AppendEvents", r,
                                                       as: Winnow_V1_AppendEventsResponse.self, timeout: .seconds(2), idempotent: true)
                        }) != nil
                        if ok { lock.withLock { _ = acknowledged.insert(event.eventID) }; break }
                        usleep(100_000)
                    }
                    n += 1
                    usleep(50_000)
                }
                done.signal()
            }
            thread.start()
        }

        /// Stops appending; returns the acknowledged ids.
        func stop() -> Set<String> {
            lock.withLock { running = false }
            done.wait()
            return lock.withLock { acknowledged }
        }
    }

    /// The item ids of a RecBole .inter file (its `item_id` column), which Recommend's recent
    /// items name; the load draws from them.
    static func itemIDs(_ path: String) throws -> [Int32] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var lines = text.split(separator: "\n").makeIterator()
        guard let header = lines.next()?.split(separator: "\t"),
              let column = header.firstIndex(where: { $0.hasPrefix("item_id:") }) else {
            throw ValidationError("\(path): no item_id column in its header")
        }
        var ids = Set<Int32>()
        while let line = lines.next() {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            if column < fields.count, let id = Int32(fields[column]) { ids.insert(id) }
        }
        guard !ids.isEmpty else { throw ValidationError("\(path): no integer item ids") }
        return ids.sorted()
    }

    /// Every table of the feature store's schema: the md5 of each row's text, as a set per table.
    /// One fixed statement (the table names come from the catalogue, quoted by format's %I).
    static func rowDigests(url: String) throws -> [String: Set<String>] {
        let c = try Connection(url: url)
        defer { c.close() }
        let r = try c.query("""
            SELECT t.table_name, xpath('/table/row/d/text()',
                   query_to_xml(format('SELECT md5(x::text) AS d FROM %I.%I x', t.table_schema, t.table_name), false, false, ''))::text[]
            FROM information_schema.tables t
            WHERE t.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
            """)
        var out: [String: Set<String>] = [:]
        for i in 0..<r.rowCount {
            let list = r.string(i, 1) ?? "{}"
            out[r.string(i, 0) ?? "?"] = Set(list.dropFirst().dropLast().split(separator: ",").map(String.init))
        }
        return out
    }
}
