import Foundation
import XCTest
@testable import Stack
import Postgres
#if canImport(Glibc)
import Glibc
#endif

/// `winnow bench fuzz` against a whole stack brought up by `winnow up`: every rpc of every
/// service (the broker's own included) gets undecodable bytes, random bytes, truncated and
/// bit-flipped messages, other methods' payloads and frames past the payload bound.
extension StackCommandTests {
    func testEveryServiceAnswersTenThousandMalformedRequestsWithoutCrashHangOrGrowth() throws {
        let commands = self
        let state = commands.state.path
        let brokerPort = try LoopbackPort.ephemeral()
        var pgPort = try LoopbackPort.ephemeral()
        while pgPort == brokerPort { pgPort = try LoopbackPort.ephemeral() }
        let up = try commands.winnow(["up", "--state-dir", state, "--teachers", "1", "--broker-port", "\(brokerPort)",
                                      "--pg-port", "\(pgPort)", "--ready-timeout", "60", "--stop-grace", "5"])
        XCTAssertEqual(up.status, 0, up.output)
        let pidsBefore = StackRecord.load(StackLayout(stateDirectory: state))?.children.compactMap(\.pid) ?? []

        let rowsFile = state + "/fuzz.json"
        let fuzz = try commands.winnow(["bench", "fuzz", "--broker", "tcp://127.0.0.1:\(brokerPort)",
                                        "--requests", "60000", "--seed", "7", "--json", rowsFile], timeout: 600)
        XCTAssertEqual(fuzz.status, 0, fuzz.output)
        let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: rowsFile))) as? [[String: Any]])
        let services = ["broker", "featurestore", "noise", "retrieval", "teacher", "trainer"]
        for service in services {
            let sent = rows.first { $0["name"] as? String == "fuzz_\(service)_requests" }?["winnow"] as? Double
            XCTAssertEqual(sent, 10_000, "\(service) was sent 10,000 requests:\n\(fuzz.output)")
            for check in ["undecodable_not_invalid_argument", "server_faults", "no_answer", "crashed", "rss_growth"] {
                let row = rows.first { $0["name"] as? String == "fuzz_\(service)_\(check)" }
                XCTAssertEqual(row?["met"] as? Bool, true, "\(service) \(check): \(String(describing: row))\n\(fuzz.output)")
            }
        }
        // No process was restarted behind the bench's back.
        let pidsAfter = StackRecord.load(StackLayout(stateDirectory: state))?.children.compactMap(\.pid) ?? []
        XCTAssertEqual(pidsAfter, pidsBefore)
        XCTAssertEqual(try commands.winnow(["down", "--state-dir", state]).status, 0)
    }
}
