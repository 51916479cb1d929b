import Foundation
import RPC
import XCTest

/// `winnow call` and `winnow status` against a real broker and teacher.
final class CommandLineTests: XCTestCase {
    func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = try Products.executable("winnow")
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }

    func testCallAndStatusTalkToTheStack() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let broker = "tcp://127.0.0.1:\(try freePort())"
        let children = [
            try Child("broker", ["--endpoint", broker, "--heartbeat-ms", "200"], logDirectory: directory),
            try Child("teacher", ["--broker", broker, "--heartbeat-ms", "200", "--name", "teacher/job7/m0"],
                      logDirectory: directory),
        ]
        let client = try RPCClient(endpoint: broker)
        defer { client.close() }
        let worker = try await waitForWorkers(client, service: "teacher/job7/m0", count: 1, within: .seconds(20))[0]

        let health = try run(["call", "--broker", broker, "teacher/job7/m0", "Health", "{}"])
        XCTAssertEqual(health.status, 0, health.stderr)
        XCTAssertTrue(health.stdout.contains(#""status":"SERVING""#), health.stdout)
        XCTAssertTrue(health.stderr.contains("status: OK"), health.stderr)

        let direct = try run(["call", "--direct", worker.directEndpoint, "teacher", "Health"])
        XCTAssertEqual(direct.status, 0, direct.stderr)
        XCTAssertTrue(direct.stdout.contains(worker.instance), direct.stdout)

        // a teacher that serves no member yet says so, and the CLI prints the status
        let refused = try run(["call", "--broker", broker, "teacher/job7/m0", "MineTopK", #"{"k": 5}"#])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("FAILED_PRECONDITION") && refused.stderr.contains("serves no member"), refused.stderr)

        let badJSON = try run(["call", "--broker", broker, "teacher", "Health", "{not json"])
        XCTAssertNotEqual(badJSON.status, 0)
        XCTAssertTrue(badJSON.stderr.contains("HealthRequest"), badJSON.stderr)

        let missing = try run(["call", "--broker", broker, "--timeout-ms", "500", "featurestore", "Health"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("NOT_FOUND"), missing.stderr)

        let status = try run(["status", "--broker", broker])
        XCTAssertEqual(status.status, 0, status.stderr)
        XCTAssertTrue(status.stdout.contains("teacher/job7/m0"), status.stdout)
        XCTAssertTrue(status.stdout.contains("\(children[1].pid)"), status.stdout)
    }
}
