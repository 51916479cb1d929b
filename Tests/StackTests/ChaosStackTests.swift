import Foundation
import XCTest
@testable import Stack
#if canImport(Glibc)
import Glibc
#endif

/// scripts/chaos on a short schedule with the executables beside the test runner: a CSRec job
/// through teacher processes and a Recommend load while the broker is stopped for 3 s, services
/// are killed every 6 s (± a quarter, three kills) and Postgres is restarted once. The script fails on anything lost: a job
/// that does not match the undisturbed one, a feature-store row lost or changed, an acknowledged
/// event missing, a Recommend failure outside a fault's window, or a kind of fault not reached.
extension StackCommandTests {
    func testChaosOnAShortScheduleLosesNothing() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let report = state.path + "/chaos.json"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [root.appendingPathComponent("scripts/chaos").path, "--kill-every", "6", "--max-kills", "3", "--rate", "100",
                       "--seconds", "600", "--report", report]
        var environment = ProcessInfo.processInfo.environment
        environment["WINNOW_BIN"] = binDirectory
        environment["CHAOS_USERS"] = "1500"
        p.environment = environment
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("chaos: nothing lost"), text)
        let outcome = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        let kinds = Set((outcome["faults"] as? [[String: Any]] ?? []).compactMap { $0["kind"] as? String })
        XCTAssertEqual(kinds, ["sigstop", "sigkill", "restart"], text)
        XCTAssertGreaterThan(outcome["eventsAcknowledged"] as? Int ?? 0, 0, text)
        XCTAssertEqual(outcome["eventsMissing"] as? Int, 0, text)
        XCTAssertEqual(outcome["failedOutsideFaults"] as? Int, 0, text)
        XCTAssertEqual(outcome["jobState"] as? String, "succeeded", text)
    }
}
