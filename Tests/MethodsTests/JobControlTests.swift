import XCTest
import Foundation
import Numerics
import Models
import Data
import Training
@testable import Methods
@testable import Jobs

/// A job's control: every stage reports events under its name, a cancellation stops it, and a
/// job continued from its stages' checkpoints ends where one that never stopped ends.
final class JobControlTests: XCTestCase {
    func job(_ methods: JobMethods) -> JobConfig {
        var j = JobConfig(backbone: .sasrec)
        j.dim = 8; j.blocks = 1
        j.loop.maxLength = 8; j.loop.batchSize = 16; j.loop.maxEpochs = 4; j.loop.patience = 4; j.loop.seed = 3
        j.methods = methods
        return j
    }

    func testEveryStageReportsEventsUnderItsName() throws {
        let data = cyclicDataset(users: 40, items: 20, length: 10)
        var csrec = CSRecConfig(); csrec.m = 2
        var stages: [String] = []
        let lock = NSLock()
        _ = try JobRunner.run(job(JobMethods(csrec: csrec)), data: data, control: JobControl(events: { p in
            guard p.event == .epoch else { return }
            lock.withLock { if stages.last != p.stage { stages.append(p.stage) } }
        }))
        XCTAssertEqual(stages, ["teacher 103", "teacher 203", "train"])
    }

    func testACancelledJobThrowsAndAContinuedOneEndsAsAnUninterruptedOne() throws {
        let data = cyclicDataset(users: 40, items: 20, length: 10)
        var csrec = CSRecConfig(); csrec.m = 2
        for methods in [JobMethods(), JobMethods(csrec: csrec), JobMethods(wslrec: WSLRecConfig())] {
            let j = job(methods)
            let whole = try JobRunner.run(j, data: data)
            let dir = NSTemporaryDirectory() + "winnow-control-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // cancel during the second epoch of the last stage
            let cancel = Cancellation()
            let file = dir + "/job.ckpt"
            let control = JobControl(events: { p in if p.stage != "pretrain", !p.stage.hasPrefix("teacher"), p.event == .step, p.epoch == 2 { cancel.cancel() } },
                                     cancellation: cancel, checkpoints: file)
            XCTAssertThrowsError(try JobRunner.run(j, data: data, control: control), methods.name) {
                guard case TrainingError.cancelled = $0 else { return XCTFail("\(methods.name): \($0)") }
            }
            XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, methods.name)
            let continued = try JobRunner.run(j, data: data, control: JobControl(checkpoints: file))
            XCTAssertEqual(continued.test, whole.test, methods.name)
            XCTAssertEqual(continued.valid, whole.valid, methods.name)
            XCTAssertEqual(continued.bestEpoch, whole.bestEpoch, methods.name)
        }
    }

    /// DSS and ATJT train their own epochs and checkpoint them: batch orders, the recognisers'
    /// states and UFNRec's records go into the file, so a job stopped after its second epoch and
    /// continued ends with every epoch's loss and the test metrics of one that never stopped.
    func testContinuedDSSAndATJTJobsEndAsUninterruptedOnes() throws {
        let data = cyclicDataset(users: 40, items: 20, length: 10)
        var dss = DSSJobConfig(); dss.interests = 2
        var u = UFNRecConfig(); u.negatives = 5; u.m = 1; u.maxWarmupEpochs = 1
        for methods in [JobMethods(dss: dss), JobMethods(atjt: ATJTJobConfig()), JobMethods(ufnrec: u, atjt: ATJTJobConfig())] {
            let j = job(methods)
            let whole = try JobRunner.run(j, data: data)
            let dir = NSTemporaryDirectory() + "winnow-aux-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let file = dir + "/job.ckpt", cancel = Cancellation()
            XCTAssertThrowsError(try JobRunner.run(j, data: data, control: JobControl(events: { p in
                if p.event == .epoch, p.epoch == 2 { cancel.cancel() }
            }, cancellation: cancel, checkpoints: file)), methods.name) {
                guard case TrainingError.cancelled(let e) = $0 else { return XCTFail("\(methods.name): \($0)") }
                XCTAssertEqual(e, 3, methods.name)
            }
            XCTAssertTrue(FileManager.default.fileExists(atPath: file), methods.name)
            var resumed = false
            let continued = try JobRunner.run(j, data: data, control: JobControl(events: { p in
                if p.event == .resumed { resumed = true; XCTAssertEqual(p.epoch, 2, methods.name) }
            }, checkpoints: file))
            XCTAssertTrue(resumed, methods.name)
            XCTAssertEqual(continued.log?.map(\.loss), whole.log?.map(\.loss), methods.name)
            XCTAssertEqual(continued.test, whole.test, methods.name)
            XCTAssertEqual(continued.bestEpoch, whole.bestEpoch, methods.name)
        }
    }

    func testAContinuedUFNRecJobKeepsItsWarmUpRecordsAndEMATeacher() throws {
        let data = cyclicDataset(users: 40, items: 20, length: 10)
        var u = UFNRecConfig(); u.negatives = 5; u.m = 1; u.maxWarmupEpochs = 1
        var j = job(JobMethods(ufnrec: u)); j.loop.maxEpochs = 6; j.loop.patience = 6
        let whole = try JobRunner.run(j, data: data)
        let dir = NSTemporaryDirectory() + "winnow-ufnrec-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/job.ckpt"
        // stopped in epoch 5: warm-up over since epoch 2, records and the EMA teacher built since
        let cancel = Cancellation()
        XCTAssertThrowsError(try JobRunner.run(j, data: data, control: JobControl(events: { p in
            if p.event == .step, p.epoch == 5 { cancel.cancel() }
        }, cancellation: cancel, checkpoints: file)))
        let continued = try JobRunner.run(j, data: data, control: JobControl(checkpoints: file))
        XCTAssertEqual(continued.log?.map(\.loss), whole.log?.map(\.loss))
        XCTAssertEqual(continued.test, whole.test)
    }

    func testTheResultJSONHasTheRunContractsKeys() throws {
        let r = try JobRunner.run(job(JobMethods()), data: cyclicDataset(users: 30, items: 16, length: 8))
        let obj = try JSONSerialization.jsonObject(with: JSONEncoder().encode(r)) as! [String: Any]
        for k in ["model", "seed", "epochs", "best_epoch", "valid", "test", "seconds", "framework", "threads", "scheme", "batch", "lr",
                  "history_masked", "max_len", "padding", "data", "log"] { XCTAssertNotNil(obj[k], k) }
        XCTAssertEqual(obj["model"] as? String, "sasrec", "the backbone as flags and job files name it")
        XCTAssertEqual(obj["scheme"] as? String, "all_positions", "the default scheme, named as job files name it")
        XCTAssertEqual((obj["log"] as? [Any])?.count, r.epochs)
        XCTAssertNotNil((obj["test"] as! [String: Double])["ndcg@10"])
        XCTAssertEqual((obj["data"] as! [String: Int])["train_instances"], LeaveOneOut(cyclicDataset(users: 30, items: 16, length: 8)).train.count)
    }
}
