import Foundation
import XCTest
@testable import Stack
#if canImport(Glibc)
import Glibc
#endif

/// CSRec across processes as a person runs it: `winnow up --teachers 3`, a CSRec-M job with two
/// members (the third process becomes a replica of the first). While the members train, the
/// trainer is killed (restarted, it adopts them where they train rather than waiting for idle
/// processes that do not exist). Mid-job the replica is killed
/// with SIGKILL (the broker routes its requests to the member's other process), then the only
/// process of the second member (the supervisor restarts it and the trainer loads the member
/// onto an idle process), then the trainer (restarted, it resumes from its checkpoint and finds
/// its teachers serving): the job ends with the metrics of the same job run in one process.
extension StackCommandTests {
    func testCSRecThroughTeacherProcessesSurvivesKilledTeachersAndMatchesOneProcess() throws {
        let up = try winnow(try upArguments(teachers: 3))
        XCTAssertEqual(up.status, 0, up.output)
        let data = try cyclesFile(), s = state.path
        let job = #"{"backbone": "gru4rec", "loop": {"max_epochs": 16, "patience": 16, "batch_size": 32, "seed": 6}, "methods": {"csrec": {"teachers": "model", "m": 2}}}"#
        try job.write(toFile: s + "/csrec.json", atomically: true, encoding: .utf8)
        let submitted = try winnow(["job", "submit", s + "/csrec.json", "--dataset", data, "--name", "faults", "--state-dir", s])
        XCTAssertEqual(submitted.status, 0, submitted.output)
        let layout = StackLayout(stateDirectory: s)
        func status() throws -> String { try winnow(["job", "status", "faults", "--state-dir", s]).output }
        /// The teacher process whose log says `text`, with its pid now.
        func teacher(saying text: String) throws -> (name: String, pid: Int32)? {
            for child in StackRecord.load(layout)?.children ?? [] where child.name.hasPrefix("teacher") {
                let log = (try? String(contentsOfFile: layout.log(child.name), encoding: .utf8)) ?? ""
                if log.contains(text), let pid = child.pid { return (child.name, pid) }
            }
            return nil
        }
        func restarted(_ name: String, from pid: Int32) -> Bool {
            let c = StackRecord.load(layout)?.children.first { $0.name == name }
            return c?.state == .ready && c?.pid != nil && c?.pid != pid
        }
        var st = ""
        // the trainer dies while the members train: restarted, it adopts them where they train
        XCTAssertTrue(try eventually(timeout: 120) { try teacher(saying: "teacher/faults/m1: training (") != nil }, "m1 began training")
        let early = try XCTUnwrap(StackRecord.load(layout)?.children.first { $0.name == "trainer" }?.pid)
        XCTAssertEqual(kill(early, SIGKILL), 0)
        XCTAssertNil(try teacher(saying: "teacher/faults/m1: trained"), "m1 still trains when the trainer dies")
        XCTAssertTrue(eventually(timeout: 30) { restarted("trainer", from: early) }, "the supervisor restarted the trainer")
        XCTAssertTrue(try eventually(timeout: 240) { st = try status(); return st.contains("train epoch 2 ") || st.contains("train epoch 3 ") }, st)

        // a replica dies: its member's other process answers
        let replica = try XCTUnwrap(try teacher(saying: "replica of teacher/faults/m0"), "a third process became a replica")
        XCTAssertEqual(kill(replica.pid, SIGKILL), 0)
        XCTAssertTrue(eventually(timeout: 30) { restarted(replica.name, from: replica.pid) }, "the supervisor restarted \(replica.name)")
        XCTAssertTrue(try eventually(timeout: 240) { st = try status(); return st.contains("train epoch 5 ") || st.contains("train epoch 6 ") || !st.contains("running") }, st)

        // the only process of m1 dies: the trainer loads m1 onto an idle process
        let only = try XCTUnwrap(try teacher(saying: "teacher/faults/m1: trained"))
        XCTAssertEqual(kill(only.pid, SIGKILL), 0)
        XCTAssertTrue(try eventually(timeout: 240) { st = try status(); return ["8", "9", "10"].contains { st.contains("train epoch \($0) ") } || !st.contains("running") }, st)

        // the trainer dies: restarted, it continues from its checkpoint with the teachers that still serve
        let trainer = try XCTUnwrap(StackRecord.load(layout)?.children.first { $0.name == "trainer" }?.pid)
        XCTAssertEqual(kill(trainer, SIGKILL), 0)
        XCTAssertTrue(eventually(timeout: 30) { restarted("trainer", from: trainer) }, "the supervisor restarted the trainer")
        let final = try finalStatus(of: "faults", timeout: 300)
        XCTAssertTrue(final.contains("succeeded"), final)
        let trainerLog = try String(contentsOfFile: layout.log("trainer"), encoding: .utf8)
        XCTAssertTrue(trainerLog.contains("teacher/faults/m1: no process serves it; loading it again"), trainerLog)
        XCTAssertTrue(trainerLog.contains("job faults: train: continuing from a checkpoint after epoch"), "resumed, not restarted:\n\(trainerLog)")
        XCTAssertEqual(trainerLog.components(separatedBy: "teacher/faults/m0: training on").count, 2, "the resumed job found m0 serving:\n\(trainerLog)")
        XCTAssertEqual(trainerLog.components(separatedBy: "teacher/faults/m1: training on").count, 2, "m1 was placed once:\n\(trainerLog)")
        XCTAssertTrue(trainerLog.contains("teacher/faults/m1: still training on"), "the restarted trainer adopted m1 mid-training:\n\(trainerLog)")

        // the same job, never disturbed, in this process
        try assertSameMetricsAsInProcess(final, config: s + "/csrec.json", dataset: data)
    }
}
