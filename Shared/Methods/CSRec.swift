// CSRec (csrec.md §3): confident teachers give soft labels r = ½ (softmax(e/τ) + onehot(i))
// (Eq. 14); the student minimises (1 − β)·CE + β·KL (Eq. 15).
//
// Teachers (all the student's architecture, trained with softmax CE on the training instances):
//   model-level  (CSRec-M, Alg. 1): m seeds on all data, e = mean of their logits;
//   data-level   (CSRec-D, Alg. 2): m subsets of a fraction p of the users (all of each sampled
//     user's instances), e = mean;
//   training-level (CSRec-T, Alg. 3): side teacher g2 pre-trained on such a subset, then the
//     main teacher g1 trained with CE + α·KL(P_g2‖P_g1) + (1−α)·KL(P_g1‖P_g2) − Σ_j log h_ij·P_g1(j)
//     (Eq. 12–13), h a learned low-rank noise matrix (Eq. 10–11); e = g1's logits.
//
// KL direction of Eq. 15: the paper writes KL(P_f ‖ r); the official code computes
// KL(r ‖ P_f) (F.kl_div(log_softmax(pred), soft_target)). Both are offered; the default is the
// official KL(r ‖ P_f): it is the standard distillation loss whose gradient P_f − r is bounded,
// and it is the variant the paper's reported numbers come from.
//
// Shapes: B batch, N items, d the noise matrix's rank.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Numerics
import Models
import Data
import Training

/// Which teacher module CSRec builds.
public enum CSRecTeacherKind: String, Sendable, Codable, CaseIterable {
    /// CSRec-M: m models, different seeds, all data.
    case model
    /// CSRec-D: m models on m subsets of a fraction p of the users.
    case data
    /// CSRec-T: main teacher trained against a pre-trained side teacher and a noise matrix.
    case training
}

/// CSRec's hyper-parameters (defaults: the paper's setting where it gives one; grids in docs).
public struct CSRecConfig: Sendable, Codable, Equatable {
    public var teachers: CSRecTeacherKind = .model
    /// Teachers in the M/D ensembles (paper: 2; any m ≥ 2).
    public var m = 2
    /// Fraction of users in CSRec-D's subsets and in CSRec-T's side teacher's.
    public var p: Float = 0.8
    /// Weight of the KL term in the student loss (Eq. 15); grid {0.25, 0.5, 0.75}.
    public var beta: Float = 0.5
    /// Soft-label temperature τ (Eq. 14); grid {1, 3, 6, 9}.
    public var temperature: Float = 1
    /// CSRec-T: weight α of KL(P_g2‖P_g1) against (1 − α)·KL(P_g1‖P_g2) (Eq. 12); grid {0.25, 0.5, 0.75}.
    public var alpha: Float = 0.5
    /// CSRec-T: rank d of the noise matrix h = M·N (paper: 64).
    public var noiseRank = 64
    /// Eq. 15's KL: `targetToModel` = KL(r ‖ P_f) (official code, default), `modelToTarget` = KL(P_f ‖ r) (paper).
    public var direction: KLDirectionChoice = .targetToModel
    public init() {}

    enum CodingKeys: String, CodingKey {
        case teachers, m, p, beta, temperature, alpha, direction
        case noiseRank = "noise_rank"
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        teachers = try c.decodeIfPresent(CSRecTeacherKind.self, forKey: .teachers) ?? .model
        m = try c.decodeIfPresent(Int.self, forKey: .m) ?? 2
        p = try c.decodeIfPresent(Float.self, forKey: .p) ?? 0.8
        beta = try c.decodeIfPresent(Float.self, forKey: .beta) ?? 0.5
        temperature = try c.decodeIfPresent(Float.self, forKey: .temperature) ?? 1
        alpha = try c.decodeIfPresent(Float.self, forKey: .alpha) ?? 0.5
        noiseRank = try c.decodeIfPresent(Int.self, forKey: .noiseRank) ?? 64
        direction = try c.decodeIfPresent(KLDirectionChoice.self, forKey: .direction) ?? .targetToModel
    }

    /// Checks ranges; the error names the key.
    public func validate() throws {
        func bad(_ key: String, _ why: String) -> JobConfigError { .invalid(key: "csrec.\(key)", reason: why) }
        if m < 2 && teachers != .training { throw bad("m", "needs at least 2 teachers, got \(m)") }
        if !(p > 0 && p <= 1) { throw bad("p", "must be in (0, 1], got \(p)") }
        if !(beta >= 0 && beta <= 1) { throw bad("beta", "must be in [0, 1], got \(beta)") }
        if !(temperature > 0) { throw bad("temperature", "must be positive, got \(temperature)") }
        if !(alpha >= 0 && alpha <= 1) { throw bad("alpha", "must be in [0, 1], got \(alpha)") }
        if noiseRank < 1 { throw bad("noise_rank", "must be at least 1, got \(noiseRank)") }
    }
}

/// A `KLDirection` as a config value ("target_to_model" | "model_to_target").
public enum KLDirectionChoice: String, Sendable, Codable, CaseIterable {
    case targetToModel = "target_to_model"
    case modelToTarget = "model_to_target"
    public var direction: KLDirection { self == .targetToModel ? .targetToModel : .modelToTarget }
}

// MARK: - Student

/// The student loss (Eq. 15): (1 − β)·hard + β·KL(·) against soft labels from `source`, where
/// `hard` is the next-item CE — or any hard-label objective (e.g. WSLRec's fine-tuning positives).
public final class CSRecStudentObjective: LabelObjective {
    public let source: SoftLabelSource
    public let hard: LabelObjective
    public let beta: Float, temperature: Float
    public let direction: KLDirection
    private var labels: [Float] = [], klGrad: [Float] = [], losses: [Float] = []

    public init(source: SoftLabelSource, hard: LabelObjective = CrossEntropyObjective(), beta: Float,
                temperature: Float, direction: KLDirection = .targetToModel) {
        self.source = source; self.hard = hard; self.beta = beta; self.temperature = temperature; self.direction = direction
    }

    public func beginEpoch(_ epoch: Int) { hard.beginEpoch(epoch) }
    /// The hard-label objective's state (UFNRec's records and EMA teacher); the teachers are frozen.
    public func checkpointState() -> [UInt64] { hard.checkpointState() }
    public func restore(checkpointState state: [UInt64]) -> Bool { hard.restore(checkpointState: state) }
    public func afterUpdate() { hard.afterUpdate() }
    public func endEpoch(_ epoch: Int, meanLoss: Double) { hard.endEpoch(epoch, meanLoss: meanLoss) }
    public var evaluatedModel: Backbone? { hard.evaluatedModel }
    public func prefetch(_ batch: LabelBatch) throws {
        try hard.prefetch(batch)
        try source.prefetch(items: batch.items, lengths: batch.lengths, B: batch.sequenceCount, T: batch.T, rows: batch.rows, batch: batch.id)
    }

    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double {
        let B = batch.B, N = batch.N
        if labels.count < B * N { labels = [Float](repeating: 0, count: B * N); klGrad = labels }
        if losses.count < B { losses = [Float](repeating: 0, count: B) }
        let h = try hard.loss(batch: batch, logits: logits, dlogits: dlogits)
        return try labels.withUnsafeMutableBufferPointer { r -> Double in
            try source.softLabels(items: batch.items, lengths: batch.lengths, targets: batch.targets, B: batch.sequenceCount,
                                  T: batch.T, rows: batch.rows, batch: batch.id, temperature: temperature, out: r.baseAddress!)
            return CSRecStudentObjective.combine(hardLoss: h, dlogits: dlogits, logits: logits, labels: r.baseAddress!,
                                                 beta: beta, direction: direction, losses: &losses, B: B, N: N)
        }
    }

    /// (1 − β)·hardLoss + β·mean KL, given the hard loss's gradient already in `dlogits`
    /// (scaled here by 1 − β) and soft labels (B, N). With `weights` (ATJT's), the KL term is
    /// Σ_b w_b KL_b / norm instead of the mean, as the hard loss then is.
    public static func combine(hardLoss: Double, dlogits: Floats, logits: UnsafePointer<Float>, labels: UnsafePointer<Float>,
                               beta: Float, direction: KLDirection, losses: UnsafeMutablePointer<Float>, B: Int, N: Int,
                               weights: UnsafePointer<Float>? = nil, norm: Float? = nil) -> Double {
        let keep = 1 - beta
        for i in 0..<(B * N) { dlogits[i] *= keep }
        let kl = softmaxKL(losses: losses, dlogits: dlogits, logits: logits, target: labels, direction: direction,
                           weights: weights, scale: beta / (norm ?? Float(B)), accumulate: true, B: B, V: N)
        return Double(keep) * hardLoss + kl
    }
}

/// CSRec's soft-label term as another method's trainer takes it (DSS + CSRec): soft labels r from
/// `source` (Eq. 14, temperature τ), weight β and KL direction of Eq. 15.
public struct CSRecDistillation {
    public var source: SoftLabelSource
    public var beta: Float, temperature: Float
    public var direction: KLDirection
    public init(source: SoftLabelSource, beta: Float, temperature: Float, direction: KLDirection = .targetToModel) {
        self.source = source; self.beta = beta; self.temperature = temperature; self.direction = direction
    }
}

// MARK: - Training-level teacher

/// The noise matrix h of Eq. 10–11: h(i | j) = softmax over observed items i of z_{·j}, with
/// z = M·Nᵀ, M and N (items, d). Columns are distributions, as P(i | j) must be. Each step costs
/// O(N² d): practical up to catalogues of some ten thousand items.
public final class NoiseMatrix {
    public let itemCount: Int, rank: Int
    /// "noise_m" (N, d), "noise_n" (N, d)
    public let parameters: ParameterSet
    private var z: [Float] = []       // (N, N) z, then column softmax S
    private var lse: [Float] = []     // (N) column log Σ exp
    private var dz: [Float] = []      // (N, N)

    public init(itemCount N: Int, rank d: Int, seed: UInt64) {
        itemCount = N; rank = d
        parameters = ParameterSet([("noise_m", [N, d]), ("noise_n", [N, d])])
        var rng = RNG(seed: seed).derived(0x4015E)
        Init.normal(parameters.values, parameters.count, std: 0.02, rng: &rng)
    }

    /// Recomputes z and the column log-normalisers from the current parameters.
    private func refresh() {
        let N = itemCount, d = rank
        if z.count != N * N { z = [Float](repeating: 0, count: N * N); dz = z; lse = [Float](repeating: 0, count: N) }
        let M = parameters.value("noise_m"), Nm = parameters.value("noise_n")
        z.withUnsafeMutableBufferPointer { zb in
            sgemm(transB: true, M: N, N: N, K: d, A: M, lda: d, B: Nm, ldb: d, C: zb.baseAddress!, ldc: N)
        }
        for j in 0..<N {
            var m = -Float.infinity
            for i in 0..<N { m = max(m, z[i * N + j]) }
            var s: Float = 0
            for i in 0..<N { s += expf(z[i * N + j] - m) }
            lse[j] = m + logf(s)
        }
    }

    /// log h(i | j) for the current parameters (tests).
    public func logH(_ i: Int, _ j: Int) -> Float {
        refresh()
        return z[i * itemCount + j] - lse[j]
    }

    /// The regulariser −Σ_j log h(target_b | j)·softmax(logits_b)_j, averaged over rows and
    /// weighted by `weight`. Accumulates the gradient into `dlogits` (B, N) and into this
    /// matrix's parameter gradients (which the caller zeroes and steps). Targets are ids 1...N.
    public func regulariser(logits: UnsafePointer<Float>, dlogits: Floats?, targets: UnsafePointer<Int32>,
                            weight: Float, B: Int) -> Double {
        refresh()
        let N = itemCount, d = rank, scale = weight / Float(B)
        var total = 0.0
        dz.withUnsafeMutableBufferPointer { dzb in
            let g = dzb.baseAddress!
            g.update(repeating: 0, count: N * N)
            var qsum = [Float](repeating: 0, count: N)
            var q = [Float](repeating: 0, count: N), a = [Float](repeating: 0, count: N)
            for b in 0..<B {
                let x = logits + b * N, i = Int(targets[b]) - 1
                var m = -Float.infinity
                for j in 0..<N { m = max(m, x[j]) }
                var s: Float = 0
                for j in 0..<N { q[j] = expf(x[j] - m); s += q[j] }
                var l: Float = 0
                for j in 0..<N {
                    q[j] /= s
                    a[j] = -(z[i * N + j] - lse[j])
                    l += q[j] * a[j]
                }
                total += Double(l)
                if let dlogits { for j in 0..<N { dlogits[b * N + j] += scale * q[j] * (a[j] - l) } }
                for j in 0..<N { qsum[j] += q[j]; g[i * N + j] -= scale * q[j] }
            }
            // dz_{i'j} += scale · Qsum_j · softmax_{i'}(z_{·j})
            for i in 0..<N { for j in 0..<N { g[i * N + j] += scale * qsum[j] * expf(z[i * N + j] - lse[j]) } }
            let M = parameters.value("noise_m"), Nm = parameters.value("noise_n")
            // dM += dz · N ; dN += dzᵀ · M
            sgemm(M: N, N: d, K: N, A: g, lda: N, B: Nm, ldb: d, beta: 1, C: parameters.grad("noise_m"), ldc: d)
            sgemm(transA: true, M: N, N: d, K: N, A: g, lda: N, B: M, ldb: d, beta: 1, C: parameters.grad("noise_n"), ldc: d)
        }
        return total * Double(scale)
    }
}

/// CSRec-T's main-teacher loss (Eq. 13): CE + α·KL(P_g2‖P_g1) + (1−α)·KL(P_g1‖P_g2) − Σ_j log h_ij·P_g1(j).
/// The side teacher g2 is fixed; h learns with its own Adam.
public final class CSRecTeacherObjective: LabelObjective {
    public let side: SoftLabelSource
    public let noise: NoiseMatrix
    public let alpha: Float
    private let ce = CrossEntropyObjective()
    private let noiseAdam: Adam
    private var g2: [Float] = [], losses: [Float] = []

    public init(side: SoftLabelSource, noise: NoiseMatrix, alpha: Float, learningRate: Float = 1e-3) {
        self.side = side; self.noise = noise; self.alpha = alpha
        noiseAdam = Adam(parameters: noise.parameters, learningRate: learningRate)
    }

    public func prefetch(_ batch: LabelBatch) throws {
        try side.prefetch(items: batch.items, lengths: batch.lengths, B: batch.sequenceCount, T: batch.T, rows: batch.rows, batch: batch.id)
    }

    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double {
        let B = batch.B, N = batch.N
        if g2.count < B * N { g2 = [Float](repeating: 0, count: B * N) }
        if losses.count < B { losses = [Float](repeating: 0, count: B) }
        var total = try ce.loss(batch: batch, logits: logits, dlogits: dlogits)
        try g2.withUnsafeMutableBufferPointer { pb in
            let p = pb.baseAddress!
            try side.logits(items: batch.items, lengths: batch.lengths, B: batch.sequenceCount, T: batch.T, rows: batch.rows,
                            batch: batch.id, out: p)
            SoftLabels.fromLogits(p, logits: UnsafePointer(p), targets: nil, temperature: 1, B: B, N: N)
            total += CSRecTeacherObjective.consistency(logits: logits, dlogits: dlogits, side: p, alpha: alpha,
                                                       losses: &losses, B: B, N: N)
        }
        noise.parameters.zeroGrad()
        total += noise.regulariser(logits: logits, dlogits: dlogits, targets: batch.targets, weight: 1, B: B)
        noiseAdam.update()
        return total
    }

    /// α·KL(P_g2 ‖ P_g1) + (1 − α)·KL(P_g1 ‖ P_g2), means over rows; gradients accumulate.
    public static func consistency(logits: UnsafePointer<Float>, dlogits: Floats?, side: UnsafePointer<Float>, alpha: Float,
                                   losses: UnsafeMutablePointer<Float>, B: Int, N: Int) -> Double {
        let a = softmaxKL(losses: losses, dlogits: dlogits, logits: logits, target: side, direction: .targetToModel,
                          weights: nil, scale: alpha / Float(B), accumulate: true, B: B, V: N)
        let b = softmaxKL(losses: losses, dlogits: dlogits, logits: logits, target: side, direction: .modelToTarget,
                          weights: nil, scale: (1 - alpha) / Float(B), accumulate: true, B: B, V: N)
        return a + b
    }
}

// MARK: - Building teachers

/// Trains CSRec's teacher module and returns it as a soft-label source.
public enum CSRecTeachers {

    /// A data-level subset (Alg. 2 line 1 and Alg. 3 line 1, "randomly sample p percent of D",
    /// where D holds the users' sequences s_u): round(p · U) of the U users with training
    /// instances (at least one), uniform without replacement and seeded, each with all of their
    /// instances, in the original order. The authors' `_sample_from_dataset` draws int(p · #users)
    /// users the same way. Sampling instances instead kept nearly every user's history nearly
    /// whole in every subset, so the teachers saw almost the same data.
    public static func subsample(_ instances: InstanceSet, p: Float, seed: UInt64) -> InstanceSet {
        var rng = SplitMix64(seed: seed ^ 0xC5EC)
        var users = Array(Set(instances.users)).sorted()
        rng.shuffle(&users)
        let keep = Set(users.prefix(max(1, Int((Float(users.count) * p).rounded()))))
        return instances.subset((0..<instances.count).filter { keep.contains(instances.users[$0]) })
    }

    /// Builds the teachers of `config` for a backbone kind on `instances`, each trained by
    /// `loop` with early stopping on `validate`. Teacher k uses seed `seed + 100·(k+1)`.
    public static func build(_ config: CSRecConfig, kind: ModelKind, loop: LabelLoop, instances: InstanceSet,
                             validate: ModelEvaluation?, seed: UInt64) throws -> ModelSoftLabelSource {
        let N = loop.data.itemCount, T = loop.config.maxLength
        return try build(config, make: { kind.make(itemCount: N, maxLength: T, seed: $0) }, loop: loop, instances: instances,
                         validate: validate, seed: seed)
    }

    /// The same with any backbone factory (`make(seed)`).
    public static func build(_ config: CSRecConfig, make: (UInt64) -> Backbone, loop: LabelLoop, instances: InstanceSet,
                             validate: ModelEvaluation?, seed: UInt64, side: Backbone? = nil) throws -> ModelSoftLabelSource {
        try module(config, make: make, loop: loop, instances: instances, validate: validate, seed: seed, side: side).source
    }

    /// The teacher module and, for CSRec-T, its side teacher g2 with the seconds it took. `side`
    /// is a g2 already trained for this seed and p (g2 depends on neither α nor the noise
    /// rank); nil trains one.
    public static func module(_ config: CSRecConfig, make: (UInt64) -> Backbone, loop: LabelLoop, instances: InstanceSet,
                              validate: ModelEvaluation?, seed: UInt64,
                              side: Backbone? = nil) throws -> (source: ModelSoftLabelSource, side: Backbone?, sideSeconds: Double) {
        func train(_ member: CSRecMember, side: Backbone? = nil) throws -> Backbone {
            try CSRecTeachers.train(member, config, make: make, loop: loop, instances: instances, validate: validate, seed: seed, side: side)
        }
        switch config.teachers {
        case .model, .data:
            return (ModelSoftLabelSource(teachers: try CSRecMember.plan(config).map { try train($0) }), nil, 0)
        case .training:
            let t0 = Date()
            let g2 = try side ?? train(.side)
            let sideSeconds = side == nil ? Date().timeIntervalSince(t0) : 0
            return (ModelSoftLabelSource(teachers: [try train(.main, side: g2)]), g2, sideSeconds)
        }
    }

    /// Trains one member of the module, as `module` does wherever it runs (a teacher process
    /// trains one): an ensemble member on all instances (CSRec-M) or on its seeded subset
    /// (CSRec-D), the side teacher g2 on its subset, or the main teacher g1 against `side`.
    public static func train(_ member: CSRecMember, _ config: CSRecConfig, make: (UInt64) -> Backbone, loop: LabelLoop,
                             instances: InstanceSet, validate: ModelEvaluation?, seed: UInt64, side: Backbone? = nil) throws -> Backbone {
        let s = member.seed(jobSeed: seed)
        let g = make(s)
        let sub = loop.sub(stage: "teacher \(s)", seed: s)
        // a teacher trains as base training does (the fused cross-entropy) unless it has an objective of its own
        switch member {
        case .ensemble:
            let set = config.teachers == .data ? subsample(instances, p: config.p, seed: s) : instances
            try sub.fit(model: g, instances: set, loss: CrossEntropyLoss(seed: s), validate: validate)
        case .side:
            try sub.fit(model: g, instances: subsample(instances, p: config.p, seed: s), loss: CrossEntropyLoss(seed: s), validate: validate)
        case .main:
            guard let side else { throw JobConfigError.invalid(key: "csrec.teachers", reason: "the main teacher needs its side teacher") }
            let noise = NoiseMatrix(itemCount: loop.data.itemCount, rank: config.noiseRank, seed: seed + 300)
            let objective = CSRecTeacherObjective(side: ModelSoftLabelSource(teachers: [side]), noise: noise,
                                                  alpha: config.alpha, learningRate: loop.config.learningRate)
            try sub.fit(model: g, instances: instances, objective: objective, validate: validate)
        }
        return g
    }
}

/// One member of CSRec's teacher module: where it sits decides its seed, its data and its loss.
public enum CSRecMember: Hashable, Sendable, CustomStringConvertible {
    /// Member k of CSRec-M's or CSRec-D's ensemble (seed + 100·(k+1)).
    case ensemble(Int)
    /// CSRec-T's side teacher g2 (seed + 200), on a subset of a fraction p of the users.
    case side
    /// CSRec-T's main teacher g1 (seed + 100), trained against g2 and the noise matrix.
    case main

    /// The members a configuration trains, in order (the side teacher before the main one).
    public static func plan(_ config: CSRecConfig) -> [CSRecMember] {
        config.teachers == .training ? [.side, .main] : (0..<config.m).map { .ensemble($0) }
    }

    /// The members whose logits the student reads (the side teacher only trains g1).
    public static func served(_ config: CSRecConfig) -> [CSRecMember] { plan(config).filter { $0 != .side } }

    public func seed(jobSeed seed: UInt64) -> UInt64 {
        switch self {
        case .ensemble(let k): return seed + 100 * UInt64(k + 1)
        case .side: return seed + 200
        case .main: return seed + 100
        }
    }

    /// "m0", "m1", …, "side", "main": the member's part of its teacher name.
    public var description: String {
        switch self {
        case .ensemble(let k): return "m\(k)"
        case .side: return "side"
        case .main: return "main"
        }
    }

    /// The member a name spells, nil for none.
    public init?(name: String) {
        switch name {
        case "side": self = .side
        case "main": self = .main
        default:
            guard name.hasPrefix("m"), let k = Int(name.dropFirst()), k >= 0, String(k) == String(name.dropFirst()) else { return nil }
            self = .ensemble(k)
        }
    }
}
