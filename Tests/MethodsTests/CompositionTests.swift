import XCTest
import Foundation
import Numerics
import Models
import Data
import Training
@testable import Methods
@testable import Jobs

/// DSS and ATJT composed with CSRec: each composition reduces exactly to its parts at the edges
/// (β = 0, w ≡ 1), the new gradient matches finite differences, unsupported ones are refused.
final class CompositionTests: XCTestCase {
    /// An untrained teacher is enough: these tests check arithmetic, not distillation quality.
    func teacher(items: Int, T: Int) -> ModelSoftLabelSource {
        ModelSoftLabelSource(teachers: [tinySASRec(items: items, T: T, seed: 77)])
    }

    func assertSameParameters(_ a: ParameterSet, _ b: ParameterSet, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        XCTAssertEqual(memcmp(a.values, b.values, a.count * 4), 0, "\(what): parameters differ bitwise", file: file, line: line)
    }

    /// β = 0: ATJT + CSRec is ATJT alone. Bit for bit against ATJT's cross-entropy through the same
    /// seam (`WeightedCrossEntropy`, the arithmetic the composition shares); against the trainer's
    /// default head path to rounding (today also bit for bit; a fused head may sum in another order).
    func testATJTWithCSRecAtBetaZeroEqualsATJTAloneBitForBit() throws {
        let world = AuxWorld(users: 30, items: 40, perUser: 12, noise: 0.1)
        let inst = world.split.train, T = 8, B = 16
        var c = ATJTConfig(itemCount: 40, maxLength: T)
        c.recogniser.dim = 8; c.recogniser.attentionHidden = 8; c.recogniser.outputHidden = [16]; c.recogniserBatch = 16
        let source = teacher(items: 40, T: T)
        let runs: [(name: String, loss: WeightedSequenceLoss?)] = [
            ("ATJT + CSRec (β = 0)", WeightedCSRecStudent(source: source, beta: 0, temperature: 3)),
            ("ATJT (cross-entropy seam)", WeightedCrossEntropy()),
            ("ATJT (head)", nil),
        ]
        var models: [Backbone] = [], weighers: [ATJTWeigher] = [], losses: [[Double]] = [], rows: [[Float]] = []
        for run in runs {
            let model = tinySASRec(items: 40, T: T, seed: 3)
            let weigher = ATJTWeigher(config: c, data: world.data, instances: inst)
            let trainer = ATJTTrainer(model: model, weighers: weigher.weighers, maxBatch: B, loss: run.loss)
            let buf = AuxBatches(B: B, T: T)
            var l: [Double] = [], r: [Float] = []
            for s in 0..<6 {
                let g = s % 2, members = weigher.partition.members[g]
                let ids = (0..<B).map { members[($0 * 5 + s * 11) % members.count] }
                l.append(try trainer.step(buf.fill(world.data, inst, ids[...]), group: g))
                r += (0..<B).map { trainer.losses[$0] }
            }
            models.append(model); weighers.append(weigher); losses.append(l); rows.append(r)
        }
        XCTAssertEqual(losses[0], losses[1], "L_R per step")
        XCTAssertEqual(rows[0], rows[1], "ℓ per row")
        assertSameParameters(models[0].parameters, models[1].parameters, "recommender")
        for g in 0..<2 { assertSameParameters(weighers[0].recognisers[g].parameters, weighers[1].recognisers[g].parameters, "recogniser \(g)") }
        for (x, y) in zip(losses[0], losses[2]) { XCTAssertEqual(x, y, accuracy: 1e-6 * abs(y)) }
        let p = models[0].parameters, q = models[2].parameters
        var worst: Float = 0
        for i in 0..<p.count { worst = max(worst, abs(p.values[i] - q.values[i])) }
        XCTAssertLessThan(worst, 1e-5, "the head's path")
    }

    func testATJTWithCSRecUnderUnitWeightsEqualsTheCSRecStudentAlone() throws {
        let data = cyclicDataset(users: 30, items: 24, length: 10)
        let T = 8, inst = LeaveOneOut(data).train
        let loop = quickLoop(data, epochs: 1, maxLength: T)
        let source = teacher(items: 24, T: T)
        // the CSRec student as `JobRunner` trains it: one epoch of the label loop
        let reference = labelsSASRec(items: 24, maxLength: T, seed: 5)
        let objective = CSRecStudentObjective(source: source, beta: 0.4, temperature: 2)
        let fit = try loop.fit(model: reference, instances: inst, objective: objective, validate: nil)
        // ATJT + CSRec with w ≡ 1 (α is then irrelevant: the weigher learns nothing), fed the loop's batches
        let model = labelsSASRec(items: 24, maxLength: T, seed: 5)
        let weigher = ConstantWeigher(value: 1)
        let trainer = ATJTTrainer(model: model, weighers: [weigher], learningRate: loop.config.learningRate, maxBatch: loop.config.batchSize,
                                  loss: WeightedCSRecStudent(source: source, beta: 0.4, temperature: 2))
        var batcher = Batcher(data: data, instances: inst, maxLength: T, batchSize: loop.config.batchSize, padding: .right, seed: loop.config.seed)
        batcher.shuffle()
        let buf = AuxBatches(B: loop.config.batchSize, T: T)
        var sum = 0.0
        for i in 0..<batcher.batchCount {
            let n = batcher.fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids)
            sum += try trainer.step(SequenceBatch(items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids, B: n, T: T), group: 0)
        }
        XCTAssertEqual(weigher.feedbackCalls, batcher.batchCount)
        XCTAssertEqual(sum / Double(batcher.batchCount), fit.losses[0], accuracy: 1e-12)
        assertSameParameters(reference.parameters, model.parameters, "ATJT+CSRec (w ≡ 1) vs CSRec student")
    }

    func testATJTWithCSRecWeightGradientIsTheDerivativeOfTheWeightedStudentLoss() throws {
        // dL_R/dw_b = (ℓ_b − L_R)/Σw with ℓ_b = (1 − β)·CE_b + β·KL_b, checked against Σ w ℓ / Σ w
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0)
        let T = 6, B = 6
        let weights: [Float] = [0.9, 0.1, 0.5, 0.7, 0.3, 1.0]
        let weigher = FixedWeigher(weights)
        let source = teacher(items: 30, T: T)
        var c = SASRecConfig(itemCount: 30); c.maxLength = T; c.dim = 8; c.blocks = 1; c.heads = 2; c.inner = 16
        c.hiddenDropout = 0; c.attentionDropout = 0
        let model = SASRec(c)
        let trainer = ATJTTrainer(model: model, weighers: [weigher], maxBatch: B, loss: WeightedCSRecStudent(source: source, beta: 0.5, temperature: 2))
        let buf = AuxBatches(B: B, T: T)
        let batch = buf.fill(world.data, world.split.train, Array(0..<Int32(B))[...])
        // ℓ_b before the step, computed independently: CE and KL of the model's scores
        let user = model.forward(items: batch.items, lengths: batch.lengths, B: B, training: false)
        let head = FullSoftmaxHead(itemCount: 30, dim: 8)
        head.scores(user: user, table: model.itemTable, B: B)
        let logits = AuxFloats(B * 30), labels = AuxFloats(B * 30), ce = AuxFloats(B), kl = AuxFloats(B)
        logits.p.update(from: head.logits, count: B * 30)
        try source.softLabels(items: batch.items, lengths: batch.lengths, targets: batch.targets, B: B, T: T, temperature: 2, out: labels.p)
        let cols = AuxInts((0..<B).map { batch.targets[$0] - 1 })
        softmaxCrossEntropy(losses: ce.p, dlogits: nil, logits: logits.p, targets: cols.p, weights: nil, scale: 1, B: B, V: 30)
        softmaxKL(losses: kl.p, dlogits: nil, logits: logits.p, target: labels.p, direction: .targetToModel, weights: nil, scale: 1, B: B, V: 30)
        let l = (0..<B).map { 0.5 * Double(ce.p[$0]) + 0.5 * Double(kl.p[$0]) }
        let loss = try trainer.step(batch, group: 0)
        assertNormalisedWeightGradient(loss: loss, dW: weigher.dW, weights: weights, rowLosses: l,
                                       lossAccuracy: 1e-4, gradientAccuracy: 1e-3)
    }

    func testDSSSoftLabelKLGradientMatchesCentralFiniteDifferences() {
        let B = 3, K = 3, C = 5, M = 7
        var r = RNG(seed: 11)
        let user = AuxFloats(random: B * K * C, rng: &r), cand = AuxFloats(random: M * C, rng: &r)
        // soft labels as CSRec makes them: rows summing to 1, half the mass on the target
        let labels = AuxFloats(random: B * M, rng: &r), targets = AuxInts([2, 7, 4])
        SoftLabels.fromLogits(labels.p, logits: UnsafePointer(labels.p), targets: targets.p, temperature: 1.5, B: B, N: M)
        let losses = AuxFloats(B), logits = AuxFloats(B * K * M), scores = AuxFloats(B * M), dScores = AuxFloats(B * M)
        let argmax = AuxInts([Int32](repeating: 0, count: B * M))
        for direction in KLDirection.allCases {
            let dUser = AuxFloats(B * K * C), dCand = AuxFloats(M * C)
            let f: () -> Double = {
                DSSLoss.softLabelKL(losses: losses.p, dUser: nil, dCand: nil, user: user.p, cand: cand.p, labels: labels.p,
                                    direction: direction, logits: logits.p, scores: scores.p, dScores: dScores.p, argmax: argmax.p,
                                    temperature: 1.3, scale: 0.4, B: B, K: K, C: C, M: M)
            }
            let total = DSSLoss.softLabelKL(losses: losses.p, dUser: dUser.p, dCand: dCand.p, user: user.p, cand: cand.p, labels: labels.p,
                                            direction: direction, logits: logits.p, scores: scores.p, dScores: dScores.p, argmax: argmax.p,
                                            temperature: 1.3, scale: 0.4, B: B, K: K, C: C, M: M)
            XCTAssertGreaterThan(total, 0)
            // the scores are the max over K of the scaled inner products
            for b in 0..<B {
                for j in 0..<M {
                    var best = -Float.infinity
                    for k in 0..<K {
                        var s: Float = 0
                        for ch in 0..<C { s += user.p[(b * K + k) * C + ch] * cand.p[j * C + ch] }
                        best = max(best, s / 1.3)
                    }
                    XCTAssertEqual(scores.p[b * M + j], best, accuracy: 1e-5)
                }
            }
            for (name, x, d) in [("user", user, dUser), ("cand", cand, dCand)] {
                let res = GradientCheck.check("softLabelKL \(direction) d\(name)", x: x.p, analytic: d.p, count: x.n, eps: 1e-2, tolerance: 2e-2, f: f)
                XCTAssertTrue(res.passed, res.description)
            }
        }
    }

    func dssConfig(items: Int, T: Int) -> DSSConfig {
        var config = DSSConfig(itemCount: items)
        config.encoder.maxLength = T; config.encoder.dim = 8; config.encoder.blocks = 1; config.encoder.inner = 16
        config.encoder.interests = 2; config.learningRate = 5e-3
        return config
    }

    func testDSSWithCSRecAtBetaZeroEqualsDSSAloneBitForBit() throws {
        let world = AuxWorld(users: 30, items: 30, perUser: 10, noise: 0.1)
        let inst = world.split.train, T = 6, B = 12
        let alone = DSSTrainer(config: dssConfig(items: 30, T: T), data: world.data, instances: inst, maxBatch: B)
        let composed = DSSTrainer(config: dssConfig(items: 30, T: T), data: world.data, instances: inst, maxBatch: B,
                                  distillation: CSRecDistillation(source: teacher(items: 30, T: T), beta: 0, temperature: 3))
        let buf = AuxBatches(B: B, T: T)
        for s in 0..<4 {
            let ids = (0..<Int32(B)).map { Int32((Int($0) * 7 + s * 13) % inst.count) }
            let la = try alone.step(buf.fill(world.data, inst, ids[...]))
            let lc = try composed.step(buf.fill(world.data, inst, ids[...]))
            XCTAssertEqual(la, lc, "step \(s)")
            XCTAssertGreaterThan(composed.lastSoftLabelKL, -1e-12)
        }
        assertSameParameters(alone.model.parameters, composed.model.parameters, "DSS+CSRec (β = 0) vs DSS")
    }

    func testDSSWithCSRecAddsTheWeightedKLToSeq2Item() throws {
        // with β > 0 the step's seq2item is (1 − β)·Eq. 6 + β·KL; the KL part is positive and the
        // Eq. 6 part equals DSS alone's on the same first batch (same initial weights, same dropout)
        let world = AuxWorld(users: 30, items: 30, perUser: 10, noise: 0.1)
        let inst = world.split.train, T = 6, B = 12, beta: Float = 0.3
        let alone = DSSTrainer(config: dssConfig(items: 30, T: T), data: world.data, instances: inst, maxBatch: B)
        let composed = DSSTrainer(config: dssConfig(items: 30, T: T), data: world.data, instances: inst, maxBatch: B,
                                  distillation: CSRecDistillation(source: teacher(items: 30, T: T), beta: beta, temperature: 3))
        let buf = AuxBatches(B: B, T: T)
        let ids = Array(0..<Int32(B))
        try alone.step(buf.fill(world.data, inst, ids[...]))
        try composed.step(buf.fill(world.data, inst, ids[...]))
        XCTAssertGreaterThan(composed.lastSoftLabelKL, 0)
        XCTAssertEqual(composed.lastSeq2Item - composed.lastSoftLabelKL, Double(1 - beta) * alone.lastSeq2Item, accuracy: 1e-6)
        XCTAssertEqual(composed.lastSeq2Seq, alone.lastSeq2Seq)
    }

    func testUnsupportedCompositionsAreRejectedNamingTheKeys() {
        func message(_ json: String) -> String {
            do { _ = try JobConfig.parse(Data(json.utf8)); return "" } catch { return "\(error)" }
        }
        // one table refuses a pair, whether a job file or a name spells it
        for (a, b, _) in MethodComposition.refused {
            let m = message(#"{"backbone": "sasrec", "methods": {"\#(a)": {}, "\#(b)": {}}}"#)
            XCTAssertTrue(m.contains("methods") && m.contains(a) && m.contains(b) && m.contains("cannot be composed"), m)
            XCTAssertThrowsError(try JobMethods(parsing: "\(a)+\(b)")) {
                XCTAssertTrue("\($0)".contains("\(a) and \(b) cannot be composed"), "\($0)")
            }
        }
        XCTAssertTrue(message(#"{"backbone": "gru4rec", "methods": {"dss": {}}}"#).contains("backbone"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"dss": {"candidates": "in_batch"}, "csrec": {}}}"#).contains("dss.candidates"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "protocol": "user_split", "methods": {"atjt": {}}}"#).contains("protocol"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"atjt": {"groups": 1}}}"#).contains("atjt.groups"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "methods": {"dss": {"lambda": 2}}}"#).contains("dss.lambda"))
        XCTAssertTrue(message(#"{"backbone": "sasrec", "dim": 0}"#).contains("dim"))
        XCTAssertThrowsError(try JobMethods(parsing: "atjt+bert")) { XCTAssertTrue("\($0)".contains("unknown method 'bert'"), "\($0)") }
        XCTAssertEqual(try JobMethods(parsing: "CSRec+ATJT").name, "ATJT+CSRec-M")
        XCTAssertEqual(try JobMethods(parsing: "dss+csrec-d").name, "DSS+CSRec-D")
        XCTAssertEqual(try JobMethods(parsing: "ufnrec+atjt+csrec-t").name, "ATJT+CSRec-T+UFNRec")
        for name in JobMethods.names { XCTAssertNoThrow(try JobMethods(parsing: name), name) }
        XCTAssertEqual(try JobMethods(parsing: "base"), JobMethods())
        XCTAssertThrowsError(try JobMethods(parsing: "base+csrec")) { XCTAssertTrue("\($0)".contains("base composes with nothing"), "\($0)") }
        XCTAssertThrowsError(try JobMethods(parsing: "csrec-m+csrec-d")) { XCTAssertTrue("\($0)".contains("one CSRec"), "\($0)") }
        XCTAssertThrowsError(try JobMethods(parsing: "atjt+")) { XCTAssertTrue("\($0)".contains("empty"), "\($0)") }
        XCTAssertEqual(message(#"{"backbone": "sasrec", "loop": {"scheme": "prefixes"}, "methods": {"atjt": {}, "ufnrec": {}, "csrec": {}}}"#), "")
    }

    func testJobsNamingDSSOrATJTWithCSRecParseAndRun() throws {
        let job = try JobConfig.parse(Data(#"""
        {"backbone": "sasrec", "loop": {"scheme": "prefixes"}, "methods": {"atjt": {"alpha": 5, "recogniser_lr": 0.1}, "csrec": {"beta": 0.25}}}
        """#.utf8))
        XCTAssertEqual(job.methods.name, "ATJT+CSRec-M")
        XCTAssertEqual(job.methods.atjt?.alpha, 5); XCTAssertEqual(job.methods.atjt?.groups, 2)
        XCTAssertEqual(job.methods.atjt?.recogniserLearningRate, 0.1)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for (file, name) in [("atjt-csrec-example-job.json", "ATJT+CSRec-M"), ("dss-csrec-example-job.json", "DSS+CSRec-M")] {
            let example = try JobConfig.load(path: root.appendingPathComponent("scripts/experiments/" + file).path)
            XCTAssertEqual(example.methods.name, name, file)
        }
        // a job without the new keys encodes as before (no "dss" / "atjt")
        let plain = try JSONSerialization.jsonObject(with: JSONEncoder().encode(JobConfig(backbone: .sasrec))) as! [String: Any]
        XCTAssertEqual(Set((plain["methods"] as! [String: Any]).keys), [])

        let data = cyclicDataset(users: 30, items: 16, length: 10)
        for methods in [JobMethods(csrec: CSRecConfig(), atjt: ATJTJobConfig()), JobMethods(csrec: CSRecConfig(), dss: {
            var d = DSSJobConfig(); d.interests = 2; return d }()), JobMethods(csrec: CSRecConfig(), ufnrec: UFNRecConfig(), atjt: ATJTJobConfig())] {
            var j = JobConfig(backbone: methods.dss != nil ? .sasrec : .gru4rec)
            j.loop.maxEpochs = 1; j.loop.maxLength = 6; j.loop.batchSize = 64; j.loop.scheme = .prefixes
            j.methods = methods
            let r = try JobRunner.run(j, data: data)
            XCTAssertEqual(r.method, methods.dss != nil ? "DSS+CSRec-M" : methods.ufnrec != nil ? "ATJT+CSRec-M+UFNRec" : "ATJT+CSRec-M")
            XCTAssertEqual(r.model, methods.dss != nil ? "sasrec" : "gru4rec", "the backbone as the job names it (DSS: its SASRec encoder)")
            XCTAssertEqual(r.epochs, 1)
            XCTAssertGreaterThan(r.teacherSeconds, 0)
            XCTAssertNotNil(r.test["ndcg@10"])
        }
    }

    func testRobustnessRunsEveryCompositionThroughTheJobRunnerOnSharedTeachersAndChargesTheirTime() throws {
        let data = cyclicDataset(users: 30, items: 16, length: 10)
        let split = LeaveOneOut(data)
        let groups = RobustnessData.popularityGroups(data, split: split)
        var template = JobConfig(backbone: .sasrec)
        template.loop.maxLength = 6; template.loop.batchSize = 64; template.loop.maxEpochs = 1; template.dim = 8; template.blocks = 1
        var noisy = [Bool](repeating: false, count: data.interactionCount)
        noisy[data.offsets[3] + 2] = true   // one corrupted target: the recogniser's AUC is defined
        let cache = TeacherCache()
        var teacherSeconds: Double? = nil
        for name in ["csrec", "atjt+csrec", "dss+csrec", "ufnrec", "atjt+ufnrec", "atjt+ufnrec+csrec", "dss"] {
            var methods = try JobMethods(parsing: name)
            if methods.dss != nil { methods.dss!.interests = 2 }
            let job = template.with(methods, seed: 1)
            XCTAssertEqual(job.loop.scheme, .allPositions, name)
            let r = try RobustnessSuite.run(job, name: name, data: data, corruption: 0.1, noisy: noisy, groups: groups, cache: cache)
            XCTAssertEqual(r.method, name)
            XCTAssertEqual(r.epochs, 1)
            if methods.csrec != nil {
                // the copy's teachers are trained once and charged to every run that uses them
                XCTAssertNotNil(r.teacherSeconds, name)
                if let t = teacherSeconds { XCTAssertEqual(r.teacherSeconds, t, name) } else { teacherSeconds = r.teacherSeconds }
            } else {
                XCTAssertNil(r.teacherSeconds, name)
            }
            XCTAssertGreaterThanOrEqual(r.seconds, r.teacherSeconds ?? 0)
            XCTAssertEqual(r.recogniserAUC != nil, methods.atjt != nil, name)
            XCTAssertNotNil(r.test["ndcg@10"]); XCTAssertNotNil(r.popular["ndcg@10"]); XCTAssertNotNil(r.niche["ndcg@10"])
        }
        // runs without CSRec keep their JSON shape: no teacher time
        let base = try RobustnessSuite.run(template.with(JobMethods(), seed: 1), name: "base", data: data, corruption: 0, noisy: noisy,
                                           groups: groups, cache: cache)
        let object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(base)) as! [String: Any]
        XCTAssertNil(object["teacherSeconds"])
        XCTAssertEqual(Set(object.keys), ["method", "model", "corruption", "seed", "epochs", "bestEpoch", "seconds", "valid", "test", "popular", "niche"])
    }

    func testBothCompositionsLowerTheirLossOverEpochs() throws {
        let world = AuxWorld(users: 40, items: 30, perUser: 10, noise: 0.1)
        let inst = world.split.train, T = 8, B = 32
        let source = teacher(items: 30, T: T)
        var config = dssConfig(items: 30, T: T)
        config.encoder.hiddenDropout = 0.1; config.encoder.attentionDropout = 0.1
        let dss = DSSEpochs(trainer: DSSTrainer(config: config, data: world.data, instances: inst, maxBatch: B,
                                                distillation: CSRecDistillation(source: source, beta: 0.5, temperature: 2)),
                            batchSize: B, seed: 1)
        var c = ATJTConfig(itemCount: 30, maxLength: T)
        c.recogniser.dim = 8; c.recogniser.attentionHidden = 8; c.recogniser.outputHidden = [16]; c.recogniserBatch = B
        let weigher = ATJTWeigher(config: c, data: world.data, instances: inst)
        let model = labelsSASRec(items: 30, maxLength: T, seed: 2)
        let atjt = ATJTEpochs(trainer: ATJTTrainer(model: model, weighers: weigher.weighers, learningRate: 5e-3, maxBatch: B,
                                                   loss: WeightedCSRecStudent(source: source, beta: 0.5, temperature: 2)),
                              weigher: weigher, batchSize: B, seed: 1)
        for (name, run) in [("DSS+CSRec", dss.run), ("ATJT+CSRec", atjt.run)] {
            var losses: [Double] = []
            for e in 0..<5 { losses.append(try run(e)) }
            XCTAssertLessThan(losses.last!, losses.first! - 0.05, "\(name): \(losses)")
        }
        XCTAssertGreaterThan(dss.trainer.lastSoftLabelKL, 0)
        XCTAssertTrue(atjt.summary.contains("w mean"))
    }

    func testATJTWithUFNRecUnderUnitWeightsEqualsUFNRecAloneThroughWarmupRecordsAndTeacher() throws {
        let data = cyclicDataset(users: 30, items: 24, length: 10)
        let T = 8, inst = LeaveOneOut(data).train
        let loop = quickLoop(data, epochs: 3, maxLength: T)
        // warm-up ends after epoch 1, every negative above the positive is reversed at once (m = 0):
        // epoch 2 records, epoch 3 trains on reversed items with the EMA teacher's soft labels
        var u = UFNRecConfig(); u.negatives = 8; u.m = 0; u.maxWarmupEpochs = 1; u.decay = 0.9
        let reference = labelsSASRec(items: 24, maxLength: T, seed: 5)
        let alone = UFNRecObjective(config: u, student: reference, teacher: labelsSASRec(items: 24, maxLength: T, seed: 5), seed: 4)
        let fit = try loop.fit(model: reference, instances: inst, objective: alone, validate: nil)
        XCTAssertFalse(alone.warmingUp)
        XCTAssertTrue((0..<Int32(inst.count)).contains { !alone.records.reversedItems($0).isEmpty }, "some items were reversed")
        let model = labelsSASRec(items: 24, maxLength: T, seed: 5)
        let composed = UFNRecObjective(config: u, student: model, teacher: labelsSASRec(items: 24, maxLength: T, seed: 5), seed: 4)
        let trainer = ATJTTrainer(model: model, weighers: [ConstantWeigher(value: 1)], learningRate: loop.config.learningRate,
                                  maxBatch: loop.config.batchSize, loss: composed)
        // `LabelLoop`'s batches and hooks, with the weighted trainer's step
        var batcher = Batcher(data: data, instances: inst, maxLength: T, batchSize: loop.config.batchSize, padding: .right, seed: loop.config.seed)
        let buf = AuxBatches(B: loop.config.batchSize, T: T)
        for epoch in 1...3 {
            batcher.shuffle()
            composed.beginEpoch(epoch)
            var total = 0.0
            for i in 0..<batcher.batchCount {
                let n = batcher.fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids)
                total += try trainer.step(SequenceBatch(items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids, B: n, T: T), group: 0)
            }
            let mean = total / Double(batcher.batchCount)
            XCTAssertEqual(mean, fit.losses[epoch - 1], "epoch \(epoch) mean loss")
            composed.endEpoch(epoch, meanLoss: mean)
        }
        assertSameParameters(reference.parameters, model.parameters, "ATJT+UFNRec (w ≡ 1) vs UFNRec, student")
        assertSameParameters(alone.teacher.parameters, composed.teacher.parameters, "EMA teacher")
    }

    func testUFNRecRowLossWeightedByWIsEachRowScaledByWOverNorm() {
        let B = 4, N = 20
        let data = cyclicDataset(users: 10, items: N, length: 8)
        let inst = LeaveOneOut(data).train
        let buf = AuxBatches(B: B, T: 6)
        let batch = buf.fill(data, inst, Array(0..<Int32(B))[...])
        let lb = LabelBatch(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: batch.instances, B: B, T: 6, N: N)
        var r = RNG(seed: 2)
        let logits = AuxFloats(random: B * N, rng: &r), d1 = AuxFloats(B * N), d2 = AuxFloats(B * N), l1 = AuxFloats(B), l2 = AuxFloats(B)
        let w = AuxFloats(B)
        for b in 0..<B { w.p[b] = [0.2, 0.9, 0.5, 0.05][b] }
        let norm: Float = 1.65
        var u = UFNRecConfig(); u.negatives = 6
        // two objectives with one seed draw the same negatives
        let a = UFNRecObjective(config: u, student: labelsSASRec(items: N, maxLength: 6), teacher: labelsSASRec(items: N, maxLength: 6), seed: 9)
        let b = UFNRecObjective(config: u, student: labelsSASRec(items: N, maxLength: 6), teacher: labelsSASRec(items: N, maxLength: 6), seed: 9)
        let weighted = a.rowLoss(batch: lb, logits: logits.p, dlogits: d1.p, weights: w.p, norm: norm, losses: l1.p)
        let plain = b.rowLoss(batch: lb, logits: logits.p, dlogits: d2.p, weights: nil, norm: 1, losses: l2.p)
        XCTAssertEqual(l1.array, l2.array)
        XCTAssertEqual(plain, (0..<B).map { Double(l2.p[$0]) }.reduce(0, +), accuracy: 1e-5)
        XCTAssertEqual(weighted, (0..<B).map { Double(w.p[$0]) * Double(l2.p[$0]) }.reduce(0, +) / Double(norm), accuracy: 1e-5)
        for row in 0..<B { for j in 0..<N {
            XCTAssertEqual(d1.p[row * N + j], w.p[row] / norm * d2.p[row * N + j], accuracy: 1e-6)
        } }
    }

    func testATJTEpochsRunTheLossHooksAsTheLabelLoopDoes() throws {
        final class Spy: WeightedSequenceLoss {
            let ce = WeightedCrossEntropy()
            var calls: [String] = []
            func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats, weights: UnsafePointer<Float>,
                      norm: Float, losses: Floats) throws -> Double {
                calls.append("loss")
                return try ce.loss(batch: batch, logits: logits, dlogits: dlogits, weights: weights, norm: norm, losses: losses)
            }
            func beginEpoch(_ epoch: Int) { calls.append("begin \(epoch)") }
            func afterUpdate() { calls.append("update") }
            func endEpoch(_ epoch: Int, meanLoss: Double) { calls.append("end \(epoch)") }
        }
        let world = AuxWorld(users: 20, items: 30, perUser: 10, noise: 0)
        var c = ATJTConfig(itemCount: 30, maxLength: 6)
        c.recogniser.dim = 8; c.recogniser.attentionHidden = 8; c.recogniser.outputHidden = [16]; c.recogniserBatch = 32
        let weigher = ATJTWeigher(config: c, data: world.data, instances: world.split.train)
        let spy = Spy()
        let epochs = ATJTEpochs(trainer: ATJTTrainer(model: tinySASRec(items: 30, T: 6, seed: 1), weighers: weigher.weighers, maxBatch: 32, loss: spy),
                                weigher: weigher, batchSize: 32, seed: 1)
        _ = try epochs.run(epoch: 0)
        let steps = spy.calls.filter { $0 == "loss" }.count
        XCTAssertGreaterThan(steps, 1)
        XCTAssertEqual(spy.calls, ["begin 1"] + Array(repeating: ["loss", "update"], count: steps).flatMap { $0 } + ["end 1"])
    }
}
