// UFNRec (ufnrec.md §3): BCE with n sampled negatives (Eq. 2–4); after a warm-up that ends when
// the basic loss plateaus, the negatives scoring above the positive at a training instance
// (user, position) are re-fed at its next visit (the next epoch) with n − |N_rec| fresh random
// ones (Eq. 5); a negative recorded more than m times is reversed into a positive (FMR); an EMA
// copy of the student (decay d, Eq. 6) gives soft labels ŷ = σ(teacher score) for the reversed
// items, and a consistency BCE weighted α applies to those entries only (FCR, Eq. 7–9). The loss
// is normalised as the authors' code (`rowLoss`), and after warm-up the teacher is the model that
// is validated and tested (`evaluated`: the loop selects on it and keeps its weights).
// Official defaults: n = 100, m = 5, d = 0.999, α = 0.3.
//
// Shapes: B batch, n negatives per row, N items (score column j = item j + 1).
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

/// UFNRec's hyper-parameters.
public struct UFNRecConfig: Sendable, Codable, Equatable {
    /// Negatives per positive (n).
    public var negatives = 100
    /// Reversal threshold m: recorded more than m times → positive. Grid {1, 2, 3, 4, 6, 8, 10}.
    public var m = 5
    /// EMA decay d of the teacher. Grid {0.9, 0.99, 0.995, 0.999}.
    public var decay: Float = 0.999
    /// Weight α of the consistency loss, on the authors' scale (mean consistency BCE against twice
    /// the mean basic BCE, `rowLoss`). Grid {0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5}.
    public var alpha: Float = 0.3
    /// Warm-up ends after the first epoch whose mean loss fell by less than this fraction.
    public var plateau: Float = 0.01
    /// ... or after this many epochs, whichever comes first.
    public var maxWarmupEpochs = 50
    public init() {}
    enum CodingKeys: String, CodingKey {
        case negatives, m, decay, alpha, plateau, maxWarmupEpochs = "max_warmup_epochs"
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        negatives = try c.decodeIfPresent(Int.self, forKey: .negatives) ?? 100
        m = try c.decodeIfPresent(Int.self, forKey: .m) ?? 5
        decay = try c.decodeIfPresent(Float.self, forKey: .decay) ?? 0.999
        alpha = try c.decodeIfPresent(Float.self, forKey: .alpha) ?? 0.3
        plateau = try c.decodeIfPresent(Float.self, forKey: .plateau) ?? 0.01
        maxWarmupEpochs = try c.decodeIfPresent(Int.self, forKey: .maxWarmupEpochs) ?? 50
    }
    public func validate() throws {
        func bad(_ k: String, _ r: String) -> JobConfigError { .invalid(key: "ufnrec.\(k)", reason: r) }
        if negatives < 1 { throw bad("negatives", "must be at least 1, got \(negatives)") }
        if m < 0 { throw bad("m", "must be at least 0, got \(m)") }
        if !(decay >= 0 && decay <= 1) { throw bad("decay", "must be in [0, 1], got \(decay)") }
        if !(alpha >= 0) { throw bad("alpha", "must be non-negative, got \(alpha)") }
        if !(plateau >= 0) { throw bad("plateau", "must be non-negative, got \(plateau)") }
        if maxWarmupEpochs < 0 { throw bad("max_warmup_epochs", "must be non-negative, got \(maxWarmupEpochs)") }
    }
}

/// Per-instance records of FMR (§3.2): N_rec, the negatives that outscored the positive the last
/// time the instance was trained on (re-fed at its next visit, one epoch later: "we record [them]
/// ... and retrain them ... in the next epoch", Eq. 5); how many times each negative has outscored
/// it over the run; and N_false, the items reversed into positives. A candidate that stops
/// outscoring the positive leaves N_rec (the authors rebuild `hard_items[(user, position)]` from
/// each step's scores); its count stays, as "recorded over m times" counts over the run and the
/// authors' `cnt_items` is never reset, so it can add to it again only when drawn again at random.
public struct FalseNegativeRecords: Sendable {
    public let m: Int
    /// instance → the negatives that outscored the positive at its last visit, in draw order (N_rec)
    public private(set) var last: [Int32: [Int32]] = [:]
    /// instance → item → times it scored above the positive over the run (not yet reversed)
    public private(set) var counts: [Int32: [Int32: Int]] = [:]
    /// instance → reversed items (now positives)
    public private(set) var reversed: [Int32: [Int32]] = [:]

    public init(m: Int) { self.m = m }

    /// Records put back from a checkpoint.
    init(m: Int, last: [Int32: [Int32]], counts: [Int32: [Int32: Int]], reversed: [Int32: [Int32]]) {
        self.m = m; self.last = last; self.counts = counts; self.reversed = reversed
    }

    /// Records one visit of instance `k`: the negatives whose score exceeds the positive's replace
    /// N_rec(k) and are counted; one counted more than m times moves to the reversed set instead.
    public mutating func observe(instance k: Int32, positiveScore: Float, negatives: [(item: Int32, score: Float)]) {
        var hard: [Int32] = []
        for (item, s) in negatives where s > positiveScore {
            let c = (counts[k]?[item] ?? 0) + 1
            if c > m {
                counts[k]?[item] = nil
                reversed[k, default: []].append(item)
            } else {
                counts[k, default: [:]][item] = c
                hard.append(item)
            }
        }
        last[k] = hard.isEmpty ? nil : hard
    }

    /// N_rec of instance `k`: the negatives that outscored its positive at its last visit, in draw
    /// order (at most the n negatives of that visit).
    public func recorded(_ k: Int32) -> [Int32] { last[k] ?? [] }
    /// Times `item` has outscored the positive of instance `k` (0 once reversed).
    public func count(_ k: Int32, _ item: Int32) -> Int { counts[k]?[item] ?? 0 }
    /// Reversed items of instance `k`, in reversal order.
    public func reversedItems(_ k: Int32) -> [Int32] { reversed[k] ?? [] }
    public func isReversed(_ k: Int32, _ item: Int32) -> Bool { reversed[k]?.contains(item) ?? false }
    public var reversedCount: Int { reversed.values.reduce(0) { $0 + $1.count } }
}

/// Each user's training items, which UFNRec never draws as negatives: the authors' sampler draws
/// a user's negatives from outside `set(user_train[user])`, the whole training sequence (items
/// after the instance's position included), not only the input before the target.
public struct TrainingSequences: Sendable {
    /// (instances) user of each training instance
    private let users: [Int32]
    /// user u's distinct training items are items[offsets[u] ..< offsets[u + 1]]
    private let offsets: [Int]
    private let items: [Int32]

    /// A user's training sequence ends at the target of their last instance in `instances`.
    public init(data: SequenceDataset, instances: InstanceSet) {
        var end = [Int](repeating: 0, count: data.userCount)
        for k in 0..<instances.count {
            let u = Int(instances.users[k])
            end[u] = max(end[u], Int(instances.positions[k]) + 1)
        }
        var offsets = [0], items: [Int32] = []
        var seen = [Int](repeating: -1, count: data.itemCount + 1)
        for u in 0..<data.userCount {
            for i in data.sequence(u).prefix(end[u]) where seen[Int(i)] != u {
                seen[Int(i)] = u
                items.append(i)
            }
            offsets.append(items.count)
        }
        self.users = instances.users; self.offsets = offsets; self.items = items
    }

    /// The distinct training items of the user of training instance `k`.
    public func items(ofInstance k: Int32) -> ArraySlice<Int32> {
        let u = Int(users[Int(k)])
        return items[offsets[u] ..< offsets[u + 1]]
    }
}

/// ω' ← d·ω' + (1 − d)·ω over a whole parameter set (Eq. 6).
public final class ExponentialMovingAverage {
    public let average: ParameterSet
    public let decay: Float
    public init(average: ParameterSet, decay: Float) { self.average = average; self.decay = decay }
    /// Starts the average at the current values of `source`.
    public func reset(to source: ParameterSet) { average.copyValues(from: source) }
    public func update(from source: ParameterSet) {
        precondition(source.entries == average.entries, "parameter sets differ")
        let a = average.values, w = source.values, d = decay
        for i in 0..<average.count { a[i] = d * a[i] + (1 - d) * w[i] }
    }
}

/// UFNRec's loss on a batch; `teacher` is a second instance of the student's architecture that
/// holds the EMA weights. Negatives are never the user's own items: those of the row's input
/// always, and with `history` every item of the user's training sequence, as the authors draw them.
public final class UFNRecObjective: LabelObjective {
    public let config: UFNRecConfig
    public let student: Backbone
    public let teacher: Backbone
    public let history: TrainingSequences?
    public let ema: ExponentialMovingAverage
    public internal(set) var records: FalseNegativeRecords
    /// True until the basic loss plateaus.
    public internal(set) var warmingUp = true
    public internal(set) var warmupEpochs = 0
    var previousLoss: Double? = nil
    var rng: RNG
    /// (N + 1) item → the row whose draw excludes it (the positive, reversed items, the user's
    /// items, negatives already taken); a row is a new `stamp`, so nothing is cleared per row.
    private var excluded: [UInt32] = []
    private var stamp: UInt32 = 0
    /// A batch's reversed items and negatives, row b's ending at positiveEnds[b] / negativeEnds[b].
    private var positives: [Int32] = [], negatives: [Int32] = []
    private var positiveEnds: [Int] = [], negativeEnds: [Int] = []
    /// The EMA teacher's user vectors of a batch's rows.
    private let teacherUsers = Workspace()

    public init(config: UFNRecConfig, student: Backbone, teacher: Backbone, seed: UInt64,
                history: TrainingSequences? = nil) {
        precondition(student.parameters.entries == teacher.parameters.entries, "teacher must share the student's architecture")
        self.config = config; self.student = student; self.teacher = teacher; self.history = history
        ema = ExponentialMovingAverage(average: teacher.parameters, decay: config.decay)
        records = FalseNegativeRecords(m: config.m)
        rng = RNG(seed: seed).derived(0xF4E)
    }

    public func beginEpoch(_ epoch: Int) {}
    public func afterUpdate() { if !warmingUp { ema.update(from: student.parameters) } }
    /// The EMA teacher is in process: nothing to ask ahead.
    public func prefetch(_ batch: LabelBatch) throws {}

    public func endEpoch(_ epoch: Int, meanLoss: Double) {
        guard warmingUp else { return }
        warmupEpochs = epoch
        if let prev = previousLoss, prev > 0,
           (prev - meanLoss) / prev < Double(config.plateau) || epoch >= config.maxWarmupEpochs {
            warmingUp = false
            ema.reset(to: student.parameters)
        }
        previousLoss = meanLoss
    }

    /// Ends the warm-up now (tests; a job that resumes from a warmed-up model).
    public func endWarmup() { warmingUp = false; ema.reset(to: student.parameters) }

    /// The model UFNRec validates, tests and serves: the student during warm-up, the EMA teacher
    /// after it (the authors evaluate `with ema.average_parameters()` once warm-up has ended).
    public var evaluated: Backbone { warmingUp ? student : teacher }
    /// The loop validates, keeps and restores `evaluated` (its best weights end in the student).
    public var evaluatedModel: Backbone? { evaluated }

    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats) throws -> Double {
        rowLoss(batch: batch, logits: logits, dlogits: dlogits, weights: nil, norm: Float(batch.B), losses: nil)
    }

    /// The loss with row b weighted w_b / norm (nil weights: 1): returns Σ_b w_b ℓ_b / norm, writes
    /// its gradient over `dlogits` and the unweighted ℓ_b into `losses` (ATJT + UFNRec).
    ///
    /// Normalised as the authors' code, so that α means what the paper's grid means: the basic
    /// BCE is 2 × its mean over the batch's E entries (each row's positive, reversed items and
    /// negatives: `2 * BCEWithLogitsLoss()(logits, labels)`), the consistency BCE its mean over the
    /// batch's R reversed entries (`lbd * BCEWithLogitsLoss()(logits[reversed], σ(teacher))`):
    ///   L = 2/E · Σ basic + α/R · Σ consistency.
    /// A row's share is ℓ_b = 2B/E · basic_b + αB/R · consistency_b, so that L = Σ_b ℓ_b / B.
    func rowLoss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats, weights: UnsafePointer<Float>?,
                 norm: Float, losses: Floats?) -> Double {
        let B = batch.B, T = batch.T, N = batch.N, n = config.negatives
        dlogits.update(repeating: 0, count: B * N)
        let inv = 1 / norm
        // Pass 1: every row's reversed items and negatives, for the batch's counts E and R.
        positives.removeAll(keepingCapacity: true); negatives.removeAll(keepingCapacity: true)
        positiveEnds.removeAll(keepingCapacity: true); negativeEnds.removeAll(keepingCapacity: true)
        for b in 0..<B {
            let k = batch.instances[b], pos = batch.targets[b]
            let rev = warmingUp ? [] : records.reversedItems(k)
            positives.append(contentsOf: rev); positiveEnds.append(positives.count)
            // Negatives: recorded ones first (Eq. 5), then random; never the positive, a reversed
            // item or one of the user's own items.
            if excluded.count != N + 1 || stamp == .max { excluded = [UInt32](repeating: 0, count: N + 1); stamp = 0 }
            stamp += 1
            excluded[Int(pos)] = stamp
            for i in rev { excluded[Int(i)] = stamp }
            // the row's input: its sequence up to its position
            let (s, end) = batch.rows.map { (Int($0.sequences[b]), Int($0.positions[b]) + 1) } ?? (b, Int(batch.lengths[b]))
            for t in 0..<end { excluded[Int(batch.items[s * T + t])] = stamp }
            if let history { for i in history.items(ofInstance: k) { excluded[Int(i)] = stamp } }
            let first = negatives.count
            if !warmingUp {
                for i in records.recorded(k) where excluded[Int(i)] != stamp { excluded[Int(i)] = stamp; negatives.append(i) }
            }
            var draws = 0
            while negatives.count - first < n && draws < 20 * n {
                draws += 1
                let i = Int32(1 + rng.below(N))
                if excluded[Int(i)] == stamp { continue }
                excluded[Int(i)] = stamp; negatives.append(i)
            }
            negativeEnds.append(negatives.count)
        }
        let R = positives.count, E = B + R + negatives.count
        let basicScale = 2 * Float(B) / Float(E)
        let consistencyScale = R > 0 ? config.alpha * Float(B) / Float(R) : 0
        // Teacher scores are needed only when some row has reversed items.
        var teacherUser: UnsafePointer<Float>? = nil
        if R > 0 {
            _ = teacherUsers.ensure(B) { [$0 * self.teacher.dim] }
            let u = teacherUsers.slab!.views[0]
            teacher.encode(items: batch.items, lengths: batch.lengths, B: batch.sequenceCount, rows: batch.rows, into: u)
            teacherUser = UnsafePointer(u)
        }
        // Pass 2: loss and gradient per row.
        var total = 0.0
        var p0 = 0, n0 = 0
        for b in 0..<B {
            let k = batch.instances[b], pos = batch.targets[b]
            let x = logits + b * N, d = dlogits + b * N
            let w = weights?[b] ?? 1, scale = w * inv
            let rev = positives[p0 ..< positiveEnds[b]], negs = negatives[n0 ..< negativeEnds[b]]
            p0 = positiveEnds[b]; n0 = negativeEnds[b]
            // basic loss (Eq. 4) with the reversed items as positives
            let sp = x[Int(pos) - 1]
            var basic = softplus(-sp)
            d[Int(pos) - 1] += (sigmoid(sp) - 1) * basicScale * scale
            for i in rev {
                let s = x[Int(i) - 1]
                basic += softplus(-s); d[Int(i) - 1] += (sigmoid(s) - 1) * basicScale * scale
            }
            for i in negs {
                let s = x[Int(i) - 1]
                basic += softplus(s); d[Int(i) - 1] += sigmoid(s) * basicScale * scale
            }
            var l = basicScale * basic
            // consistency (Eq. 7–8) on reversed entries: BCE(ŷ, σ(s)) = softplus(s) − ŷ·s
            if let tu = teacherUser, !rev.isEmpty {
                let C = teacher.dim, u = tu + b * C
                for i in rev {
                    let e = teacher.itemTable + Int(i) * C
                    var ts: Float = 0
                    for c in 0..<C { ts += u[c] * e[c] }
                    let yHat = sigmoid(ts), s = x[Int(i) - 1]
                    l += consistencyScale * (softplus(s) - yHat * s)
                    d[Int(i) - 1] += consistencyScale * (sigmoid(s) - yHat) * scale
                }
            }
            total += Double(l) * Double(w)
            losses?[b] = l
            if !warmingUp {
                records.observe(instance: k, positiveScore: sp, negatives: negs.map { ($0, x[Int($0) - 1]) })
            }
        }
        return total * Double(inv)
    }
}

/// What a checkpoint keeps of UFNRec between epochs: the warm-up's progress, the negatives'
/// generator, the false-negative records and the EMA teacher's weights — so that a job continued
/// from its checkpoint re-feeds, reverses and distils as the run that never stopped.
struct UFNRecState: Codable {
    var warmingUp: Bool
    var warmupEpochs: Int
    var previousLoss: Double?
    var rng: [UInt64]
    var last: [Int32: [Int32]]
    var counts: [Int32: [Int32: Int]]
    var reversed: [Int32: [Int32]]
    var teacher: [Float]
}

extension UFNRecObjective {
    public func checkpointState() -> [UInt64] {
        let p = teacher.parameters
        let state = UFNRecState(warmingUp: warmingUp, warmupEpochs: warmupEpochs, previousLoss: previousLoss, rng: rng.state,
                                last: records.last, counts: records.counts, reversed: records.reversed,
                                teacher: Array(UnsafeBufferPointer(start: p.values, count: p.count)))
        guard let bytes = try? JSONEncoder().encode(state) else { return [] }
        return CheckpointWords.pack([UInt8](bytes))
    }

    public func restore(checkpointState words: [UInt64]) -> Bool {
        guard let bytes = CheckpointWords.unpack(words) else { return false }
        guard let state = try? JSONDecoder().decode(UFNRecState.self, from: Data(bytes)), let r = RNG(state: state.rng),
              state.teacher.count == teacher.parameters.count else { return false }
        warmingUp = state.warmingUp; warmupEpochs = state.warmupEpochs; previousLoss = state.previousLoss; rng = r
        records = FalseNegativeRecords(m: config.m, last: state.last, counts: state.counts, reversed: state.reversed)
        state.teacher.withUnsafeBufferPointer { teacher.parameters.values.update(from: $0.baseAddress!, count: $0.count) }
        return true
    }
}

/// ATJT + UFNRec: the recogniser's w scales UFNRec's row loss; the warm-up, records and EMA
/// teacher run through the hooks as in `LabelLoop`.
extension UFNRecObjective: WeightedSequenceLoss {
    public func loss(batch: LabelBatch, logits: UnsafePointer<Float>, dlogits: Floats, weights: UnsafePointer<Float>,
                     norm: Float, losses: Floats) throws -> Double {
        rowLoss(batch: batch, logits: logits, dlogits: dlogits, weights: weights, norm: norm, losses: losses)
    }
}
