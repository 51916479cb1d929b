import Foundation
import RPC
import WinnowProto
import XCTest
import ZeroMQ

/// The directory holding the executables `swift build` made (broker, teacher, winnow, ...).
enum Products {
    static let directory: URL? = {
        let fileManager = FileManager.default
        var candidates: [URL] = []
        let bundle = Bundle.main.bundleURL
        candidates.append(bundle.deletingLastPathComponent())
        candidates.append(bundle)
        if let executable = Bundle.main.executableURL { candidates.append(executable.deletingLastPathComponent()) }
        for test in Bundle.allBundles where test.bundlePath.hasSuffix(".xctest") {
            candidates.append(test.bundleURL.deletingLastPathComponent())
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug"))
        return candidates.first { fileManager.isExecutableFile(atPath: $0.appendingPathComponent("broker").path) }
    }()

    static func executable(_ name: String) throws -> URL {
        guard let directory else {
            throw ProcessTestError("executables not found next to the test bundle or in .build/debug; run swift build --build-tests")
        }
        let url = directory.appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: url.path) else {
            throw ProcessTestError("\(name) is not built in \(directory.path); run swift build --build-tests")
        }
        return url
    }
}

struct ProcessTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process whose stderr goes to a log file; killed at deinit if still running.
final class Child {
    let name: String
    let process = Process()
    let log: URL

    init(_ executable: String, _ arguments: [String], logDirectory: URL, environment: [String: String] = [:]) throws {
        guard Products.directory != nil else {
            throw ProcessTestError("executables not found next to the test bundle or in .build/debug; run swift build --build-tests")
        }
        name = executable
        process.executableURL = try Products.executable(executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["WINNOW_LOG_LEVEL"] = "debug"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        log = logDirectory.appendingPathComponent("\(executable)-\(UUID().uuidString.prefix(8)).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardError = handle
        process.standardOutput = handle
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for exit; returns the exit status, nil on timeout.
    func waitForExit(timeout: Duration) async throws -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { return nil }
            try await Task.sleep(for: .milliseconds(10))
        }
        return process.terminationStatus
    }

    var logText: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A loopback port free right now.
func freePort() throws -> Int {
    let socket = try ZMQSocket(.router)
    try socket.bind("tcp://127.0.0.1:*")
    let endpoint = try socket.lastEndpoint
    try socket.unbind(endpoint)
    socket.close()
    return Int(endpoint.split(separator: ":").last!)!
}

func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-test-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Lists the broker's workers (idempotent, short deadline).
func listWorkers(_ client: RPCClient, prefix: String = "") async throws -> Winnow_V1_ListWorkersResponse {
    var request = Winnow_V1_ListWorkersRequest()
    request.servicePrefix = prefix
    return try await client.call(service: "broker", method: "ListWorkers", request,
                                 as: Winnow_V1_ListWorkersResponse.self, timeout: .seconds(2), idempotent: true)
}

/// Waits until the broker lists `count` workers of `service`; returns them.
func waitForWorkers(_ client: RPCClient, service: String, count: Int, within: Duration) async throws -> [Winnow_V1_WorkerInfo] {
    let deadline = ContinuousClock.now + within
    var last: [Winnow_V1_WorkerInfo] = []
    while ContinuousClock.now < deadline {
        if let list = try? await listWorkers(client) {
            last = list.workers.filter { $0.service == service }
            if last.count == count { return last }
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw ProcessTestError("expected \(count) workers of \(service), saw \(last.count) after \(within)")
}

/// Health of a service through `client`.
func health(_ client: RPCClient, _ service: String, timeout: Duration = .seconds(3),
            idempotent: Bool = false) async throws -> Winnow_V1_HealthResponse {
    try await client.call(service: service, method: "Health", Winnow_V1_HealthRequest(),
                          as: Winnow_V1_HealthResponse.self, timeout: timeout, idempotent: idempotent)
}

/// The outcome of one call in a stream.
struct Outcome {
    var code: Winnow_V1_StatusCode
    var instance: String
    var elapsed: Duration
}

/// Runs up to `total` Health calls with `concurrency` in flight, launching no more once `keepGoing`
/// says no; `onProgress` sees the count finished.
func stream(_ client: RPCClient, service: String, total: Int, concurrency: Int, timeout: Duration,
            idempotent: @escaping @Sendable (Int) -> Bool = { _ in false },
            keepGoing: @escaping @Sendable () -> Bool = { true },
            onProgress: @escaping @Sendable (Int) -> Void = { _ in }) async -> [Outcome] {
    await withTaskGroup(of: Outcome.self) { group in
        var next = 0
        var outcomes: [Outcome] = []
        func launch(_ index: Int) {
            group.addTask {
                let start = ContinuousClock.now
                do {
                    let reply = try await health(client, service, timeout: timeout, idempotent: idempotent(index))
                    return Outcome(code: .ok, instance: reply.instance, elapsed: ContinuousClock.now - start)
                } catch let error as RPCError {
                    return Outcome(code: error.code, instance: "", elapsed: ContinuousClock.now - start)
                } catch {
                    return Outcome(code: .unknown, instance: "", elapsed: ContinuousClock.now - start)
                }
            }
        }
        while next < min(concurrency, total) {
            launch(next)
            next += 1
        }
        for await outcome in group {
            outcomes.append(outcome)
            onProgress(outcomes.count)
            if next < total && keepGoing() {
                launch(next)
                next += 1
            }
        }
        return outcomes
    }
}
