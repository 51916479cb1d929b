import Foundation
import XCTest
@testable import Stack
#if canImport(Glibc)
import Glibc
#endif

/// Training and serving across the stack as a person runs it: `winnow up`, then `winnow train`
/// without `--local` (the file ingested, the dataset built, the job run by the trainer process)
/// writes the result `--local` writes; a trainer killed with SIGKILL mid-job is restarted by the
/// supervisor and its job ends with the metrics of a run that was never interrupted; a published
/// student is served by the retrieval process to `winnow recommend`.
extension StackCommandTests {
    /// 300 users walking item cycles, as a RecBole file with integer ids.
    func cyclesFile() throws -> String {
        var text = "user_id:token\titem_id:token\ttimestamp:float\n"
        for u in 0..<300 {
            var x = (u * 7) % 40
            for t in 0..<30 { text += "\(u + 1)\t\(1001 + x)\t\(100 * u + t)\n"; x = (x + 1 + u % 3) % 40 }
        }
        let path = state.path + "/cycles.inter"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func jsonObject(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    /// Waits until job `name` of the stack has ended and returns its last status text.
    func finalStatus(of name: String, timeout: TimeInterval) throws -> String {
        var final = ""
        XCTAssertTrue(try eventually(timeout: timeout) {
            final = try winnow(["job", "status", name, "--state-dir", state.path]).output
            return !final.contains("running") && !final.contains("queued")
        }, final)
        return final
    }

    /// Runs the job file `config` undisturbed in this process and checks that the stack's job
    /// (its final status text) reports the same test NDCG@10.
    func assertSameMetricsAsInProcess(_ final: String, config: String, dataset: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = config + ".whole.json"
        let whole = try winnow(["experiment", "job", "--config", config, "--dataset", dataset, "--threads", "1", "--json", result, "--quiet"])
        XCTAssertEqual(whole.status, 0, whole.output, file: file, line: line)
        let ndcg = try XCTUnwrap((try jsonObject(result)["test"] as? [String: Double])?["ndcg@10"], file: file, line: line)
        XCTAssertTrue(final.contains(String(format: "test ndcg@10 %.4f", ndcg)), "\(final) vs \(ndcg)", file: file, line: line)
    }

    func testTrainingThroughTheTrainerMatchesLocalSurvivesAKilledTrainerAndIsServed() throws {
        let up = try winnow(try upArguments(teachers: 0))
        XCTAssertEqual(up.status, 0, up.output)
        let data = try cyclesFile(), s = state.path
        let flags = ["--model", "gru4rec", "--dataset", data, "--epochs", "3", "--batch-size", "32", "--seed", "4"]

        // the same flags through the trainer and in this process: the same result
        let remote = try winnow(["train"] + flags + ["--state-dir", s, "--json", s + "/remote.json", "--quiet"])
        XCTAssertEqual(remote.status, 0, remote.output)
        let local = try winnow(["train", "--local"] + flags + ["--threads", "1", "--json", s + "/local.json", "--quiet"])
        XCTAssertEqual(local.status, 0, local.output)
        let r = try jsonObject(s + "/remote.json"), l = try jsonObject(s + "/local.json")
        XCTAssertEqual(r["test"] as? [String: Double], l["test"] as? [String: Double])
        XCTAssertEqual(r["best_epoch"] as? Int, l["best_epoch"] as? Int)
        XCTAssertEqual(r["model"] as? String, "gru4rec")
        XCTAssertTrue(remote.output.contains("succeeded"), remote.output)

        // a longer job; the trainer dies with SIGKILL once it has checkpointed an epoch
        let job = #"{"backbone": "gru4rec", "loop": {"max_epochs": 40, "patience": 40, "batch_size": 32, "seed": 5}}"#
        try job.write(toFile: s + "/job.json", atomically: true, encoding: .utf8)
        let submitted = try winnow(["job", "submit", s + "/job.json", "--dataset", data, "--name", "killed", "--state-dir", s])
        XCTAssertEqual(submitted.status, 0, submitted.output)
        XCTAssertTrue(try eventually(timeout: 60) {
            let st = try winnow(["job", "status", "killed", "--state-dir", s]).output
            return st.contains("running") && st.contains("epoch ") && !st.contains("epoch 0 ") && !st.contains("epoch 1 ")
        }, "the job reached epoch 2")
        let layout = StackLayout(stateDirectory: s)
        let trainer = try XCTUnwrap(StackRecord.load(layout)?.children.first { $0.name == "trainer" }?.pid)
        XCTAssertEqual(kill(trainer, SIGKILL), 0)
        XCTAssertTrue(try eventually(timeout: 30) {
            let t = StackRecord.load(layout)?.children.first { $0.name == "trainer" }
            return t?.state == .ready && t?.pid != nil && t?.pid != trainer
        }, "the supervisor restarted the trainer")
        let final = try finalStatus(of: "killed", timeout: 180)
        XCTAssertTrue(final.contains("succeeded"), final)
        let trainerLog = try String(contentsOfFile: layout.log("trainer"), encoding: .utf8)
        XCTAssertTrue(trainerLog.contains("job killed: train: continuing from a checkpoint after epoch"), "resumed, not restarted:\n\(trainerLog)")
        // the same job, never interrupted, in this process
        try assertSameMetricsAsInProcess(final, config: s + "/job.json", dataset: data)
        let list = try winnow(["job", "list", "--state-dir", s])
        XCTAssertEqual(list.output.split(separator: "\n").count, 2, list.output)

        // a published student is what retrieval serves (it follows promotions)
        let published = try winnow(["job", "submit", s + "/job.json", "--dataset", data, "--name", "served", "--publish", "--watch",
                                    "--state-dir", s])
        XCTAssertEqual(published.status, 0, published.output)
        XCTAssertTrue(published.output.contains("served: succeeded, published student v3"), published.output)  // every succeeded job publishes a version
        var answer = try winnow(["recommend", "--user", "1", "-k", "5", "--state-dir", s])
        XCTAssertTrue(try eventually(timeout: 30) {
            answer = try winnow(["recommend", "--user", "1", "-k", "5", "--state-dir", s])
            return answer.status == 0
        }, answer.output)
        XCTAssertTrue(answer.output.contains("student v3: top 5 for user 1"), answer.output)
        XCTAssertEqual(answer.output.split(separator: "\n").count, 6, answer.output)
        // the same call from Python: clients/python (protoc's messages, the wire's framing, pyzmq)
        let json = try winnow(["recommend", "--user", "1", "-k", "5", "--json", "--state-dir", s])
        XCTAssertEqual(json.status, 0, json.output)
        let fromSwift = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as! [String: Any]
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/python3")   // Debian's, with python3-zmq and python3-protobuf
        python.arguments = [root.appendingPathComponent("clients/python/winnow/client.py").path,
                            "--endpoint", try XCTUnwrap(StackRecord.load(layout)?.brokerEndpoint), "--user", "1", "-k", "5"]
        python.environment = ["PYTHONPATH": root.appendingPathComponent("clients/python").path]
        let pipe = Pipe()
        python.standardOutput = pipe; python.standardError = pipe
        try python.run()
        let pythonOutput = pipe.fileHandleForReading.readDataToEndOfFile()
        python.waitUntilExit()
        XCTAssertEqual(python.terminationStatus, 0, String(decoding: pythonOutput, as: UTF8.self))
        let fromPython = try JSONSerialization.jsonObject(with: pythonOutput) as! [String: Any]
        XCTAssertEqual(fromPython["items"] as? [Int], fromSwift["items"] as? [Int])
        XCTAssertEqual(fromPython["version"] as? Int, 3)

        let bad = try winnow(["recommend", "--items", "1001,999999", "--state-dir", s])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("INVALID_ARGUMENT") && bad.output.contains("999999"), bad.output)
    }
}
