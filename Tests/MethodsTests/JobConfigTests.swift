import XCTest
import Foundation
import Data
import Numerics
import Training
@testable import Methods
@testable import Jobs

final class JobConfigTests: XCTestCase {
    func testParsesAJobWithComposedMethodsAndDefaults() throws {
        let json = """
        {"backbone": "gru4rec", "protocol": "user_split",
         "loop": {"max_epochs": 3, "seed": 2, "select_metric": "recall@50", "scheme": "prefixes"},
         "methods": {"wslrec": {"sources": ["br"]}, "csrec": {"teachers": "data", "temperature": 6,
                     "direction": "model_to_target"}}}
        """
        let job = try JobConfig.parse(Data(json.utf8))
        XCTAssertEqual(job.backbone, .gru4rec)
        XCTAssertEqual(job.protocol, .userSplit)
        XCTAssertEqual(job.loop.maxEpochs, 3)
        XCTAssertEqual(job.loop.patience, 10)
        XCTAssertEqual(job.methods.wslrec?.sources, [.br])
        XCTAssertEqual(job.methods.wslrec?.miningK, 20)
        XCTAssertEqual(job.methods.csrec?.teachers, .data)
        XCTAssertEqual(job.methods.csrec?.p, 0.8)
        XCTAssertEqual(job.methods.csrec?.direction, .modelToTarget)
        XCTAssertNil(job.methods.ufnrec)
        XCTAssertEqual(job.methods.name, "WSLRec+CSRec-D")
        XCTAssertEqual(try JobConfig.parse(Data(#"{"backbone": "sasrec"}"#.utf8)).methods.name, "base")
        XCTAssertEqual(UFNRecConfig(), try JSONDecoder().decode(UFNRecConfig.self, from: Data("{}".utf8)))
    }

    /// All-position training is the default for every method, DSS included; DSS's in-batch
    /// candidates (a batch's B targets) are the prefix scheme's and are refused under all
    /// positions with the key to change, before anything trains.
    func testAllPositionsIsTheDefaultForEveryMethod() throws {
        let base = try JobConfig.parse(Data(#"{"backbone": "sasrec"}"#.utf8))
        XCTAssertEqual(base.loop.scheme, .allPositions)
        XCTAssertEqual(try JobConfig.parse(Data(#"{"backbone": "sasrec", "methods": {"dss": {}}}"#.utf8)).loop.scheme, .allPositions)
        XCTAssertThrowsError(try JobConfig.parse(Data(#"{"backbone": "sasrec", "methods": {"dss": {"candidates": "in_batch"}}}"#.utf8))) { error in
            XCTAssertEqual(error as? JobConfigError,
                           .invalid(key: "dss.candidates",
                                    reason: "all_positions needs full (in_batch scores a batch's B targets, the prefix scheme's rows)"))
        }
        let prefixes = #"{"backbone": "sasrec", "loop": {"scheme": "prefixes"}, "methods": {"dss": {"candidates": "in_batch"}}}"#
        XCTAssertEqual(try JobConfig.parse(Data(prefixes.utf8)).loop.scheme, .prefixes)
        XCTAssertEqual(try JobConfig.parse(Data(#"{"backbone": "sasrec", "methods": {"atjt": {}}}"#.utf8)).loop.scheme, .allPositions)
        XCTAssertThrowsError(try JobConfig.parse(Data(#"{"backbone": "sasrec", "loop": {"scheme": "every"}}"#.utf8))) { error in
            XCTAssertTrue("\(error)".contains("loop.scheme"), "\(error)")
        }
        // base, every label method and ATJT (with UFNRec) train under either scheme
        let data = cyclicDataset(users: 30, items: 16, length: 10)
        var small = CSRecConfig(); small.m = 2
        var ufn = UFNRecConfig(); ufn.negatives = 8; ufn.maxWarmupEpochs = 1
        var wsl = WSLRecConfig(); wsl.sources = [.br]
        let atjt = ATJTJobConfig()
        for methods in [JobMethods(), JobMethods(csrec: small), JobMethods(ufnrec: ufn), JobMethods(wslrec: wsl),
                        JobMethods(ufnrec: ufn, atjt: atjt)] {
            for scheme in TrainingScheme.allCases {
                var job = JobConfig(backbone: .gru4rec)
                job.loop.maxEpochs = 2; job.loop.maxLength = 6; job.loop.batchSize = 16; job.loop.scheme = scheme
                job.methods = methods
                try job.validate()
                let r = try JobRunner.run(job, data: data)
                XCTAssertEqual(r.stages["final"]?.scheme, scheme, methods.name)
                XCTAssertEqual(r.epochs, 2, methods.name)
                XCTAssertTrue(r.test.values.allSatisfy(\.isFinite), "\(methods.name) under \(scheme.rawValue)")
            }
        }
    }

    /// The loop stops after `patience` epochs without a better validation score and leaves the
    /// best epoch's weights in the model.
    func testLoopStopsOnPatienceAndRestoresTheBestWeights() throws {
        let data = cyclicDataset(users: 30, items: 16, length: 10)
        var c = LoopConfig(); c.maxEpochs = 10; c.patience = 2; c.batchSize = 64; c.maxLength = 6; c.scheme = .prefixes
        let loop = LabelLoop(data: data, config: c)
        let model = labelsSASRec(items: data.itemCount, maxLength: 6)
        let scripted = [0.1, 0.3, 0.2, 0.25, 0.9]
        var epoch = 0
        var snapshots: [ParameterSet] = []
        let fit = try loop.fit(model: model, instances: LeaveOneOut(data).train, objective: CrossEntropyObjective(),
                               validate: { m in
                                   snapshots.append(m.parameters.clone())
                                   defer { epoch += 1 }
                                   return ["ndcg@10": scripted[epoch]]
                               })
        XCTAssertEqual(fit.epochs, 4, "epochs 3 and 4 are not better than 2")
        XCTAssertEqual(fit.bestEpoch, 2)
        XCTAssertEqual(fit.bestValid["ndcg@10"], 0.3)
        let best = snapshots[1], last = snapshots[3]
        var sameAsBest = true, sameAsLast = true
        for i in 0..<best.count {
            if model.parameters.values[i] != best.values[i] { sameAsBest = false }
            if model.parameters.values[i] != last.values[i] { sameAsLast = false }
        }
        XCTAssertTrue(sameAsBest)
        XCTAssertFalse(sameAsLast)
    }

    func testTheDocumentedExampleJobParses() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let job = try JobConfig.load(path: root.appendingPathComponent("scripts/experiments/labels-example-job.json").path)
        XCTAssertEqual(job.methods.name, "WSLRec+CSRec-M")
        XCTAssertEqual(job.methods.csrec?.temperature, 3)
        XCTAssertThrowsError(try JobConfig.load(path: root.appendingPathComponent("no-such-job.json").path)) {
            XCTAssertTrue("\($0)".contains("no-such-job.json"))
        }
    }

    func testBadJobsNameTheKey() {
        func message(_ json: String) -> String {
            do { _ = try JobConfig.parse(Data(json.utf8), path: "job.yaml"); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message(#"{"backbone": "bert"}"#).contains("backbone"))
        XCTAssertTrue(message(#"{"protocol": "loo"}"#).contains("backbone"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"csrec": {"beta": 2}}}"#).contains("csrec.beta"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"csrec": {"m": 1}}}"#).contains("csrec.m"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"wslrec": {}, "ufnrec": {}}}"#).contains("cannot be composed"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "loop": {"max_epochs": "x"}}"#).contains("loop.max_epochs"))
        XCTAssertTrue(message("backbone: sasrec").contains("job.yaml"))
        // a key the job does not read is named, never silently defaulted
        XCTAssertEqual(message(#"{"backbone": "sasrec", "methods": {"bert4rec": {}}}"#),
                       "job config: methods.bert4rec: unknown key (known here: atjt, csrec, dss, ufnrec, wslrec)")
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methdos": {}}"#).contains("methdos: unknown key"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "loop": {"batchsize": 8}}"#).contains("loop.batchsize: unknown key"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"csrec": {"beeta": 0.5}}}"#).contains("methods.csrec.beeta: unknown key"))
    }

    func testRunsAComposedJobUnderEachProtocol() throws {
        let data = cyclicDataset(users: 40, items: 20, length: 12)
        var job = JobConfig(backbone: .gru4rec)
        job.loop.maxEpochs = 2; job.loop.maxLength = 8; job.loop.batchSize = 64; job.loop.scheme = .prefixes
        var w = WSLRecConfig(); w.weakK = 3; w.miningK = 5
        var c = CSRecConfig(); c.m = 2
        job.methods = JobMethods(wslrec: w, csrec: c)
        let r = try JobRunner.run(job, data: data)
        XCTAssertEqual(r.method, "WSLRec+CSRec-M")
        XCTAssertEqual(r.model, "gru4rec")
        XCTAssertNotNil(r.test["ndcg@10"]); XCTAssertNotNil(r.valid["mrr@10"])
        XCTAssertEqual(Set(r.stages.keys), ["pretrain", "final"])
        let encoded = try JSONEncoder().encode(r)
        let object = try JSONSerialization.jsonObject(with: encoded) as! [String: Any]
        for key in ["model", "seed", "epochs", "best_epoch", "valid", "test", "seconds"] { XCTAssertNotNil(object[key], key) }

        job.protocol = .userSplit; job.loop.selectMetric = "recall@50"
        job.methods = JobMethods(wslrec: w)
        let s = try JobRunner.run(job, data: data)
        XCTAssertEqual(s.protocol, "user_split")
        XCTAssertNotNil(s.test["recall@50"]); XCTAssertNotNil(s.test["f1@20"])
        XCTAssertEqual(s.testLists?.count, UserSplit(data, seed: 0).test.count)
        XCTAssertEqual(s.testLists?.first?.count, 20, "top-min(50, N) lists")
        XCTAssertNil(r.testLists)
    }

    /// A β/τ grid reuses one teacher module: the second job trains no teacher and reports the
    /// first one's teacher time; a different seed trains its own.
    func testTeacherCacheSharesTeachersAcrossStudentSettingsOnly() throws {
        let data = cyclicDataset(users: 30, items: 16, length: 10)
        var job = JobConfig(backbone: .gru4rec)
        job.loop.maxEpochs = 1; job.loop.maxLength = 6; job.loop.batchSize = 64; job.loop.scheme = .prefixes
        var c = CSRecConfig(); c.beta = 0.25
        job.methods = JobMethods(csrec: c)
        let cache = TeacherCache()
        var lines: [String] = []
        let r1 = try JobRunner.run(job, data: data, cache: cache, progress: { lines.append($0) })
        XCTAssertEqual(lines.filter { $0.contains("training model-level teachers") }.count, 1)
        job.methods.csrec!.beta = 0.75; job.methods.csrec!.temperature = 6
        let r2 = try JobRunner.run(job, data: data, cache: cache, progress: { lines.append($0) })
        XCTAssertEqual(lines.filter { $0.contains("training model-level teachers") }.count, 1, "reused")
        XCTAssertEqual(r2.teacherSeconds, r1.teacherSeconds)
        XCTAssertGreaterThanOrEqual(r2.seconds, r2.teacherSeconds)
        job.loop.seed = 2
        _ = try JobRunner.run(job, data: data, cache: cache, progress: { lines.append($0) })
        XCTAssertEqual(lines.filter { $0.contains("training model-level teachers") }.count, 2, "another seed, other teachers")

        // CSRec-T: α changes the main teacher g1 (seed + 100) but not the side teacher g2 (seed + 200)
        lines = []
        job.loop.seed = 1
        var t = CSRecConfig(); t.teachers = .training; t.noiseRank = 2; t.alpha = 0.25
        job.methods = JobMethods(csrec: t)
        let a = try JobRunner.run(job, data: data, cache: cache, progress: { lines.append($0) })
        job.methods.csrec!.alpha = 0.75
        let b = try JobRunner.run(job, data: data, cache: cache, progress: { lines.append($0) })
        XCTAssertEqual(lines.filter { $0.contains("teacher 201:") }.count, 1, "g2 trained once: \(lines)")
        XCTAssertEqual(lines.filter { $0.contains("teacher 101:") }.count, 2, "g1 trained per α")
        XCTAssertGreaterThan(b.teacherSeconds, 0); XCTAssertGreaterThan(a.teacherSeconds, 0)
    }
}
