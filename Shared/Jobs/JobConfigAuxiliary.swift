// The auxiliary-task methods in a job: DSS or ATJT, alone or composed with CSRec.
//
//   {"backbone": "sasrec", "methods": {"atjt": {"alpha": 10}, "csrec": {"beta": 0.5}}}
//   {"backbone": "sasrec", "methods": {"dss": {"lambda": 0.5, "interests": 4}, "csrec": {}}}
//
// Supported: dss, atjt, dss + csrec (CSRec's KL beside DSS's seq2item, scores = max over the K
// intentions), atjt + csrec (the recogniser's w scales CSRec's per-sequence student loss),
// atjt + ufnrec (w scales UFNRec's row loss) and atjt + ufnrec + csrec (w scales CSRec's student
// loss around UFNRec's, as `ufnrec + csrec` composes them without ATJT). Refused, with the reason
// (`MethodComposition.whyNot`): dss + atjt, atjt + wslrec, dss + wslrec, dss + ufnrec. Both
// run under leave-one-out (the robustness protocol).
import Foundation
import Numerics
import Models
import Data
import Training
import Methods

/// DSS's settings in a job (`"dss": {...}`); the encoder is the protocol's SASRec with one head.
public struct DSSJobConfig: Sendable, Codable, Equatable {
    /// λ ∈ [0, 1]: fraction of seq2seq terms kept (grid 0.05 … 1.0).
    public var lambda: Float = 0.5
    /// K, the number of intentions (grid 1 … 8).
    public var interests = 4
    /// seq2item candidates: "full" (all items, default) or "in_batch" (Eq. 6 as printed).
    public var candidates = "full"
    public var seq2seqWeight: Float = 1
    /// 0 = joint training (the paper); e > 0 = seq2seq alone for e epochs, then seq2item alone.
    public var pretrainEpochs = 0
    public init() {}
    enum CodingKeys: String, CodingKey {
        case lambda, interests, candidates, seq2seqWeight = "seq2seq_weight", pretrainEpochs = "pretrain_epochs"
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        lambda = try c.decodeIfPresent(Float.self, forKey: .lambda) ?? 0.5
        interests = try c.decodeIfPresent(Int.self, forKey: .interests) ?? 4
        candidates = try c.decodeIfPresent(String.self, forKey: .candidates) ?? "full"
        seq2seqWeight = try c.decodeIfPresent(Float.self, forKey: .seq2seqWeight) ?? 1
        pretrainEpochs = try c.decodeIfPresent(Int.self, forKey: .pretrainEpochs) ?? 0
    }
    public func validate() throws {
        func bad(_ k: String, _ r: String) -> JobConfigError { .invalid(key: "dss.\(k)", reason: r) }
        if !(lambda >= 0 && lambda <= 1) { throw bad("lambda", "must be in [0, 1], got \(lambda)") }
        if interests < 1 { throw bad("interests", "must be at least 1, got \(interests)") }
        if candidates != "full" && candidates != "in_batch" { throw bad("candidates", "must be full or in_batch, got \(candidates)") }
        if !(seq2seqWeight >= 0) { throw bad("seq2seq_weight", "must be non-negative, got \(seq2seqWeight)") }
        if pretrainEpochs < 0 { throw bad("pretrain_epochs", "must be non-negative, got \(pretrainEpochs)") }
    }
    /// The trainer's configuration for a job's loop.
    func trainerConfig(itemCount: Int, loop: LoopConfig, dim: Int? = nil, blocks: Int? = nil) -> DSSConfig {
        var c = DSSConfig(itemCount: itemCount)
        c.lambda = lambda; c.seq2seqWeight = seq2seqWeight; c.learningRate = loop.learningRate
        c.candidates = candidates == "in_batch" ? .inBatch : .full
        c.schedule = pretrainEpochs > 0 ? .pretrainThenFinetune(pretrainEpochs: pretrainEpochs) : .joint
        c.encoder.maxLength = loop.maxLength; c.encoder.interests = interests; c.encoder.seed = loop.seed
        if let dim { c.encoder.dim = dim; c.encoder.inner = 4 * dim }
        if let blocks { c.encoder.blocks = blocks }
        return c
    }
}

/// ATJT's settings in a job (`"atjt": {...}`); the recommender is the job's backbone.
public struct ATJTJobConfig: Sendable, Codable, Equatable {
    /// Groups N of the cross-fitting (>= 2).
    public var groups = 2
    /// Weight α of the recogniser's own loss (grid 1, 10, 100).
    public var alpha: Float = 10
    /// Items replaced in a noisy recogniser sequence.
    public var replaced = 1
    /// Adagrad learning rate of the recogniser (grid 0.1 … 0.0001).
    public var recogniserLearningRate: Float = 0.01
    public init() {}
    enum CodingKeys: String, CodingKey { case groups, alpha, replaced, recogniserLearningRate = "recogniser_lr" }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        groups = try c.decodeIfPresent(Int.self, forKey: .groups) ?? 2
        alpha = try c.decodeIfPresent(Float.self, forKey: .alpha) ?? 10
        replaced = try c.decodeIfPresent(Int.self, forKey: .replaced) ?? 1
        recogniserLearningRate = try c.decodeIfPresent(Float.self, forKey: .recogniserLearningRate) ?? 0.01
    }
    public func validate() throws {
        func bad(_ k: String, _ r: String) -> JobConfigError { .invalid(key: "atjt.\(k)", reason: r) }
        if groups < 2 { throw bad("groups", "must be at least 2, got \(groups)") }
        if !(alpha >= 0) { throw bad("alpha", "must be non-negative, got \(alpha)") }
        if replaced < 1 { throw bad("replaced", "must be at least 1, got \(replaced)") }
        if !(recogniserLearningRate > 0) { throw bad("recogniser_lr", "must be positive, got \(recogniserLearningRate)") }
    }
    func trainerConfig(itemCount: Int, loop: LoopConfig) -> ATJTConfig {
        var c = ATJTConfig(itemCount: itemCount, maxLength: loop.maxLength)
        c.groups = groups; c.alpha = alpha; c.replaced = replaced; c.recogniserLearningRate = recogniserLearningRate
        // a self-supervised batch as large as a recommender batch's rows: under all positions a
        // batch of windows holds up to batchSize · maxLength (history, target) rows, and
        // Algorithm 1 pairs each recommender batch with one recogniser update
        c.seed = loop.seed; c.recogniserBatch = loop.batchSize * (loop.scheme == .allPositions ? loop.maxLength : 1)
        return c
    }
}

/// Which methods compose, and why the others do not: the one table every command, job file and
/// sweep is checked against.
public enum MethodComposition {
    /// Pairs of job keys that are not composed, with the reason.
    public static let refused: [(a: String, b: String, why: String)] = [
        ("wslrec", "ufnrec", "both replace the hard labels (WSLRec with weak positive sets, UFNRec with reversed negatives)"),
        ("dss", "atjt", "ATJT weighs one loss per sequence, while DSS's seq2seq terms are per (sequence, intention) pair and are "
            + "already filtered by its own confidence selection (Eq. 4); the two ways of discounting noise are not combined"),
        ("dss", "wslrec", "WSLRec pre-trains and fine-tunes a K = 1 backbone on sets of weak positives in three stages; DSS trains its "
            + "own K-intention encoder with seq2seq supervision, and no stage of one is defined in the other"),
        ("dss", "ufnrec", "UFNRec's loss is a BCE over sampled negatives with an EMA teacher of the same backbone and reversed "
            + "negatives per instance; DSS's seq2item is a softmax over all items with max over K, and the EMA teacher "
            + "would need DSS's whole encoder"),
        ("atjt", "wslrec", "the recogniser judges a (history, next item) pair, but WSLRec's rows learn from weak positive sets "
            + "(BR / ItemCF / mined top-k), so a recogniser weight has no meaning for them"),
    ]

    /// The reason methods `a` and `b` (job keys) are not composed.
    public static func whyNot(_ a: String, _ b: String) -> String {
        refused.first { Set([$0.a, $0.b]) == Set([a, b]) }?.why ?? "not a supported composition"
    }

    /// Throws naming the first refused pair among `methods`.
    static func check(_ methods: JobMethods) throws {
        let present = methods.keys
        for r in refused where present.contains(r.a) && present.contains(r.b) {
            throw JobConfigError.invalid(key: "methods", reason: "\(r.a) and \(r.b) cannot be composed: \(r.why)")
        }
    }

    /// What the auxiliary-task methods need of the rest of the job.
    static func checkAuxiliary(_ job: JobConfig) throws {
        let m = job.methods
        guard m.dss != nil || m.atjt != nil else { return }
        if job.protocol != .loo {
            throw JobConfigError.invalid(key: "protocol", reason: "\(m.keys[0]) runs under loo (the robustness protocol), got \(job.protocol.rawValue)")
        }
        if m.dss != nil && job.backbone != .sasrec {
            throw JobConfigError.invalid(key: "backbone", reason: "dss needs sasrec (its encoder is a single-head SASRec), got \(job.backbone.rawValue)")
        }
        if let d = m.dss, job.loop.scheme == .allPositions, d.candidates != "full" {
            throw JobConfigError.invalid(key: "dss.candidates",
                                         reason: "all_positions needs full (in_batch scores a batch's B targets, the prefix scheme's rows)")
        }
        if let d = m.dss, m.csrec != nil, d.candidates != "full" {
            throw JobConfigError.invalid(key: "dss.candidates",
                                         reason: "dss + csrec needs full (soft labels cover all items, in_batch scores only the batch's targets)")
        }
    }
}

/// Trains a job's auxiliary-task method (with CSRec's soft labels from `source` when the job
/// names csrec, with UFNRec's loss when it names ufnrec) and returns the trained recommender and
/// its fit.
enum AuxiliaryJob {
    /// ATJT weighs through `recognisers` when given (the noise processes), else here.
    static func train(_ job: JobConfig, data: SequenceDataset, instances: InstanceSet, source: SoftLabelSource?,
                      validate: @escaping ModelEvaluation, progress: ((String) -> Void)?,
                      control: JobControl = JobControl(), recognisers: RecogniserProvider? = nil)
        throws -> (model: Backbone, fit: FitResult, recogniser: ATJTWeigher?) {
        let loop = job.loop, N = data.itemCount
        var distillation: CSRecDistillation? = nil
        if let c = job.methods.csrec, let source {
            distillation = CSRecDistillation(source: source, beta: c.beta, temperature: c.temperature, direction: c.direction.direction)
        }
        let epochLoop = TrainingLoop(data: data, config: loop)
        epochLoop.cancellation = control.cancellation
        var note: () -> String = { "" }   // ATJT: the epoch's weight statistics
        if progress != nil || control.events != nil {
            epochLoop.progress = { p in
                control.events?(p)
                if p.event == .resumed { progress?(p.line) }
                guard p.event == .epoch, let progress else { return }
                progress(String(format: "epoch %d  loss %.4f  valid %@ %.4f", p.epoch, p.loss, loop.selectMetric, p.valid[loop.selectMetric] ?? 0))
                let extra = note()
                if !extra.isEmpty { progress("  " + extra) }
            }
        }
        if let d = job.methods.dss {
            let trainer = DSSTrainer(config: d.trainerConfig(itemCount: N, loop: loop, dim: job.dim, blocks: job.blocks), data: data, instances: instances,
                                     maxBatch: loop.batchSize, scheme: loop.scheme, distillation: distillation)
            let epochs = DSSEpochs(trainer: trainer, batchSize: loop.batchSize, seed: loop.seed)
            let fit = try epochLoop.fit(model: trainer.model, validate: validate,
                                        checkpoint: try checkpoint(control, trainer.optimizer, epochs, instances)) {
                try epochs.run(epoch: $0 - 1)
            }
            return (trainer.model, fit, nil)
        }
        guard let a = job.methods.atjt else { preconditionFailure("no auxiliary-task method in the job") }
        let model = job.makeBackbone(itemCount: N)
        let config = a.trainerConfig(itemCount: N, loop: loop)
        let partition = GroupPartition(users: data.userCount, instances: instances, groups: config.groups, seed: config.seed)
        var local: ATJTWeigher? = nil
        let weighers: [SequenceWeigher]
        if let recognisers {
            progress?("ATJT: \(config.groups) recognisers in the noise processes")
            weighers = try recognisers.weighers(for: job, data: data)
        } else {
            let w = ATJTWeigher(config: config, data: data, instances: instances)
            local = w; weighers = w.weighers
        }
        // ℓ_b: UFNRec's row loss or the next-item CE, inside CSRec's student loss when the job names csrec
        var hard: WeightedSequenceLoss? = nil, ufnrec: UFNRecObjective? = nil
        if let u = job.methods.ufnrec {
            ufnrec = UFNRecObjective(config: u, student: model, teacher: job.makeBackbone(itemCount: N),
                                     seed: loop.seed, history: TrainingSequences(data: data, instances: instances))
            hard = ufnrec
        }
        var loss = hard
        if let d = distillation {
            loss = WeightedCSRecStudent(source: d.source, hard: hard ?? WeightedCrossEntropy(), beta: d.beta, temperature: d.temperature,
                                        direction: d.direction)
        }
        let trainer = ATJTTrainer(model: model, weighers: weighers, learningRate: loop.learningRate, maxBatch: loop.batchSize, loss: loss,
                                  scheme: loop.scheme)
        let epochs = ATJTEpochs(trainer: trainer, data: data, instances: instances, partition: partition, batchSize: loop.batchSize,
                                seed: loop.seed, recogniserLoss: { local?.lastRecogniserLoss })
        note = { epochs.summary }
        epochs.lossState = ufnrec
        // UFNRec's EMA teacher is the model validated and kept after its warm-up
        let fit = try epochLoop.fit(model: model, validate: validate, evaluated: ufnrec.map { u in { u.evaluated } },
                                    checkpoint: try checkpoint(control, trainer.optimizer, epochs, instances)) {
            try epochs.run(epoch: $0 - 1)
        }
        return (model, fit, local)
    }

    /// The final stage's checkpoint, where the job's control names one ("train").
    private static func checkpoint(_ control: JobControl, _ optimizer: Adam, _ state: CheckpointedState, _ instances: InstanceSet)
        throws -> (path: String, optimizer: Adam, state: CheckpointedState, instances: InstanceSet)? {
        guard let path = control.checkpoint("train") else { return nil }
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        return (path, optimizer, state, instances)
    }
}

/// Where a job's ATJT recognisers live when not in the job's own process: the noise processes.
/// Each weigher answers as `RecogniserPlan.group` would in the job's own process.
public protocol RecogniserProvider: AnyObject {
    /// One weigher per group of `job` (weighers[g] weighs group g).
    func weighers(for job: JobConfig, data: SequenceDataset) throws -> [SequenceWeigher]
}

/// ATJT's recognisers of a job, wherever they run: a noise process builds group g's exactly as
/// the job's own process does (same training instances, partition, settings and seeds).
public enum RecogniserPlan {
    /// ATJT's settings of `job` on `data` (a job without atjt is refused, naming the key).
    public static func config(_ job: JobConfig, data: SequenceDataset) throws -> ATJTConfig {
        try job.validate()
        guard let a = job.methods.atjt else { throw JobConfigError.invalid(key: "methods", reason: "the job has no recognisers (no atjt)") }
        return a.trainerConfig(itemCount: data.itemCount, loop: job.loop)
    }

    /// Group g's recogniser of `job`, fresh.
    public static func group(_ g: Int, of job: JobConfig, data: SequenceDataset) throws -> GroupRecogniser {
        let config = try config(job, data: data)
        guard (0..<config.groups).contains(g) else {
            throw JobConfigError.invalid(key: "group", reason: "\(g) outside the job's groups 0..<\(config.groups)")
        }
        let train = JobSplit(job, data: data).train
        let partition = GroupPartition(users: data.userCount, instances: train, groups: config.groups, seed: config.seed)
        return GroupRecogniser(config: config, data: data, instances: train, partition: partition, group: g)
    }
}
