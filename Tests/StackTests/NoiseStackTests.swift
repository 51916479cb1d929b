import Foundation
import XCTest
@testable import Stack
#if canImport(Glibc)
import Glibc
#endif

/// ATJT across processes as a person runs it: `winnow up --noise 2`, an ATJT job whose two
/// recognisers live one per noise process. Mid-job the process of group 1 is killed with
/// SIGKILL: the supervisor restarts it, the trainer places group 1 again from its last snapshot
/// and replays the steps since. Later the trainer is killed: restarted, it continues from its
/// checkpoint (the recommender's weights and both recognisers' states after the last whole
/// epoch) and the job ends with the metrics of the same job in one process.
extension StackCommandTests {
    func testATJTThroughNoiseProcessesSurvivesAKilledRecogniserAndMatchesOneProcess() throws {
        let up = try winnow(try upArguments(teachers: 0, noise: 2))
        XCTAssertEqual(up.status, 0, up.output)
        let data = try cyclesFile(), s = state.path
        let job = #"{"backbone": "sasrec", "dim": 16, "blocks": 1, "loop": {"max_epochs": 10, "patience": 10, "batch_size": 32, "max_length": 20, "seed": 4}, "methods": {"atjt": {"alpha": 10}}}"#
        try job.write(toFile: s + "/atjt.json", atomically: true, encoding: .utf8)
        let submitted = try winnow(["job", "submit", s + "/atjt.json", "--dataset", data, "--name", "weighed", "--state-dir", s])
        XCTAssertEqual(submitted.status, 0, submitted.output)
        let layout = StackLayout(stateDirectory: s)
        func status() throws -> String { try winnow(["job", "status", "weighed", "--state-dir", s]).output }
        var st = ""
        XCTAssertTrue(try eventually(timeout: 240) { st = try status(); return st.contains("train epoch 2 ") || st.contains("train epoch 3 ") }, st)
        let host = try XCTUnwrap((StackRecord.load(layout)?.children ?? []).first { child in
            child.name.hasPrefix("noise") && ((try? String(contentsOfFile: layout.log(child.name), encoding: .utf8)) ?? "").contains("noise/weighed/g1: hosted")
        }, "a noise process hosts group 1")
        let pid = try XCTUnwrap(host.pid)
        XCTAssertEqual(kill(pid, SIGKILL), 0)
        XCTAssertTrue(eventually(timeout: 30) {
            let c = StackRecord.load(layout)?.children.first { $0.name == host.name }
            return c?.state == .ready && c?.pid != nil && c?.pid != pid
        }, "the supervisor restarted \(host.name)")
        XCTAssertTrue(try eventually(timeout: 240) { st = try status(); return ["5", "6", "7"].contains { st.contains("train epoch \($0) ") } || !st.contains("running") }, st)
        let trainer = try XCTUnwrap(StackRecord.load(layout)?.children.first { $0.name == "trainer" }?.pid)
        XCTAssertEqual(kill(trainer, SIGKILL), 0)
        XCTAssertTrue(eventually(timeout: 30) {
            let c = StackRecord.load(layout)?.children.first { $0.name == "trainer" }
            return c?.state == .ready && c?.pid != nil && c?.pid != trainer
        }, "the supervisor restarted the trainer")
        let final = try finalStatus(of: "weighed", timeout: 300)
        XCTAssertTrue(final.contains("succeeded"), final)
        let trainerLog = try String(contentsOfFile: layout.log("trainer"), encoding: .utf8)
        XCTAssertTrue(trainerLog.contains("noise/weighed/g1: placed again"), trainerLog)
        XCTAssertTrue(trainerLog.contains("job weighed: train: continuing from a checkpoint after epoch"), "resumed, not restarted:\n\(trainerLog)")
        XCTAssertTrue(trainerLog.contains("noise/weighed/g0: continued from a checkpoint"), trainerLog)

        // the same job, never disturbed, in this process
        try assertSameMetricsAsInProcess(final, config: s + "/atjt.json", dataset: data)
        // cancel frees the job's state in every noise process
        let listed = try winnow(["call", "noise", "GetStatus", "{}", "--state-dir", s])
        XCTAssertFalse(listed.output.contains("weighed"), listed.output)
    }
}
