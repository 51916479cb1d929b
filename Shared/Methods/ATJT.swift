// ATJT (atjt.md §3): a recommender trained with per-sequence weights from a noise recogniser that
// is trained jointly, on a self-supervised task, on other sequences.
//
// - The training instances are split into N groups by user (seeded, balanced); recogniser g is
//   trained only on the other groups' sequences and weighs only group g's (cross-fitting; the
//   paper's N = 2 default; a recogniser never weighs what it was trained on). A round is one pass
//   over group g as the recommender's data (Algorithm 1, lines 5–18); recogniser g starts every
//   round from its initial weights and a fresh Adagrad (line 4, "Initialize g(·; Θ_D)").
// - Recommender loss on a batch of group g:  L_R = Σ_b w_b ℓ_b / Σ_b w_b  (the official code's
//   normalisation); ℓ_b is any backbone's per-sequence loss (here the full-softmax head's).
// - Recogniser g's loss per recommender batch: L_R + α · (1/(N−1)) Σ_{j<N−1} L_D(b_j), where
//   each b_j is a batch drawn from the other groups, half of its rows with r history items
//   replaced by uniformly random ones, the target kept (label noisy = 0), the rest original
//   (label clean = 1); L_D is the
//   mean binary cross-entropy (Eq. 2). dL_R/dw_b = (ℓ_b − L_R) / Σ w reaches the recogniser
//   through the weights. The recogniser learns with Adagrad, the recommender with Adam.
import Foundation
import Numerics
import Models
import Data
import Training

public struct ATJTConfig: Sendable, Equatable {
    /// Number of groups N (>= 2).
    public var groups = 2
    /// Weight α of the recogniser's own loss. The recommender's loss alone drives w towards the
    /// easiest (lowest-loss) sequences; α must be large enough to keep the recogniser a
    /// recogniser (a smoke run collapsed with α = 1 and trained with α = 10: docs/METHODS-AUX.md).
    public var alpha: Float = 10
    /// History items replaced in a noisy sequence (paper's Table 3: 1 is best).
    public var replaced = 1
    /// Fraction of a recogniser batch made noisy (paper: 1:1).
    public var noisyFraction: Float = 0.5
    /// Adagrad learning rate of the recogniser (paper's grid {0.1, 0.01, 0.001, 0.0001}).
    public var recogniserLearningRate: Float = 0.01
    /// Rows per recogniser batch.
    public var recogniserBatch = 256
    public var recogniser: NoiseRecogniserConfig
    public var seed: UInt64 = 1
    /// Keep the sets of instances each recogniser trained on and weighed (tests, audits).
    public var audit = false

    public init(itemCount: Int, maxLength: Int = 50) {
        recogniser = NoiseRecogniserConfig(itemCount: itemCount)
        recogniser.maxLength = maxLength
    }
}

/// Balanced, seeded assignment of users to N groups, and the instances of each group.
public struct GroupPartition: Sendable {
    public let groups: Int
    /// (U) group of each user.
    public let userGroup: [Int32]
    /// Instance indices (into the training `InstanceSet`) of each group, ascending.
    public let members: [[Int32]]

    public init(users: Int, instances: InstanceSet, groups: Int, seed: UInt64) {
        precondition(groups >= 1, "at least one group")
        var order = (0..<users).map { Int32($0) }
        var rng = SplitMix64(seed: seed ^ 0xA7_17)
        rng.shuffle(&order)
        var ug = [Int32](repeating: 0, count: users)
        for (k, u) in order.enumerated() { ug[Int(u)] = Int32(k % groups) }
        var m = [[Int32]](repeating: [], count: groups)
        for k in 0..<instances.count { m[Int(ug[Int(instances.users[k])])].append(Int32(k)) }
        self.groups = groups; userGroup = ug; members = m
    }

    /// The instances of group g as an `InstanceSet` (its index k is `members[g][k]` globally).
    public func instanceSet(_ g: Int, of instances: InstanceSet) -> InstanceSet {
        InstanceSet(users: members[g].map { instances.users[Int($0)] }, positions: members[g].map { instances.positions[Int($0)] })
    }
}

/// Writes instances `ids` as right-padded rows (as `Batcher` does): items (n, L), lengths, targets.
public func fillInstanceRows(data: SequenceDataset, instances: InstanceSet, ids: UnsafePointer<Int32>, n: Int, maxLength L: Int,
                             items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>,
                             targets: UnsafeMutablePointer<Int32>) {
    data.items.withUnsafeBufferPointer { all in
        for b in 0..<n {
            let k = Int(ids[b]), u = Int(instances.users[k])
            let start = data.offsets[u], end = start + Int(instances.positions[k])
            let lo = max(start, end - L), len = end - lo
            let row = items + b * L
            for t in 0..<L { row[t] = t < len ? all[lo + t] : 0 }
            lengths[b] = Int32(len); targets[b] = all[end]
        }
    }
}

public enum ATJTNoise {
    /// Makes the recogniser's self-supervised batch in place: exactly round(noisyFraction · B) rows,
    /// chosen at random, get min(r, len) distinct history positions replaced by uniformly random
    /// different items and label `NoiseLabel.noisy`; the other rows stay original with label
    /// `NoiseLabel.clean`. The target is never replaced: the paper replaces "historical click
    /// items" of the input (§3.1's s'_j = (v_1, …, v'_n, …, v_N), Table 3's 1…10 replaced items),
    /// and the authors' `make_weak_labels` writes a history column, keeping the target item.
    /// Needs itemCount >= 2.
    public static func corrupt(items: UnsafeMutablePointer<Int32>, lengths: UnsafePointer<Int32>, labels: Floats,
                               B: Int, T: Int, replaced r: Int, noisyFraction: Float, itemCount N: Int, rng: inout RNG) {
        precondition(N >= 2 && r >= 1, "replacement needs two items and r >= 1")
        let noisyRows = min(B, Int((noisyFraction * Float(B)).rounded()))
        var rows = (0..<B).map { $0 }
        rows.withUnsafeMutableBufferPointer { rng.shuffle($0) }
        for b in 0..<B { labels[b] = NoiseLabel.clean }
        for q in 0..<noisyRows {
            let b = rows[q], len = Int(lengths[b])
            labels[b] = NoiseLabel.noisy
            // min(r, len) distinct history positions, each drawn from those not yet picked
            var positions = Array(0..<len)
            for _ in 0..<min(r, len) {
                let j = rng.below(positions.count), p = positions[j]
                positions.swapAt(j, positions.count - 1); positions.removeLast()
                let old = items[b * T + p]
                var v = old
                while v == old { v = Int32(1 + rng.below(N)) }
                items[b * T + p] = v
            }
        }
    }
}

/// ATJT's recogniser of one group g as a weigher: it weighs group g's batches only, and learns
/// from the recommender's dL_R/dw on them plus its own task on batches drawn from the other
/// groups. It owns everything that changes as it learns (its model, Adagrad, round, the order
/// and cursor of its pool, its generator), so that a group can live in its own process and give
/// the same bits as in the trainer's (`snapshot` / `restore` carry that state between them).
public final class GroupRecogniser: CheckpointedWeigher {
    public let config: ATJTConfig
    public let data: SequenceDataset
    public let instances: InstanceSet
    public let partition: GroupPartition
    /// The group this recogniser weighs (it trains on every other group).
    public let group: Int
    public let recogniser: NoiseRecogniser
    private var optimizer: Adagrad
    /// Rounds started, and the rows of the group weighed in the current round.
    public private(set) var rounds = 0
    private var roundRows = 0
    /// The instances of the other groups, in the order of the current pass, and the next one's place.
    private var pool: [Int32]
    private var cursor = 0
    private var rng: RNG
    /// The batch weighed and not yet fed back, and its rows.
    private var pending: (id: BatchID, rows: Int)?
    /// Feedbacks applied: the recogniser's steps.
    public private(set) var steps = 0
    // recogniser batch buffers (recogniserBatch rows)
    private let dItems: UnsafeMutablePointer<Int32>, dLengths: UnsafeMutablePointer<Int32>, dTargets: UnsafeMutablePointer<Int32>
    private let dIds: UnsafeMutablePointer<Int32>, dUsers: UnsafeMutablePointer<Int32>, dLabels: Floats
    /// The users of the weighed batch's rows, kept from `weigh` to `feedback`'s backward.
    private var wUsers: UnsafeMutablePointer<Int32>, wCapacity: Int
    /// With `config.audit`: the instances it was trained on, and those it weighed.
    public private(set) var trainedOn: Set<Int32> = []
    public private(set) var weighed: Set<Int32> = []
    /// Mean of the recogniser losses L_D of the last feedback.
    public private(set) var lastRecogniserLoss = 0.0

    public init(config: ATJTConfig, data: SequenceDataset, instances: InstanceSet, partition: GroupPartition, group g: Int) {
        precondition(config.groups >= 2 && (0..<config.groups).contains(g), "ATJT needs at least two groups, and g one of them")
        precondition(config.recogniser.itemCount == data.itemCount, "recogniser item count differs from the data's")
        self.config = config; self.data = data; self.instances = instances; self.partition = partition; group = g
        var c = config.recogniser; c.seed = config.seed &+ UInt64(g) &* 7919; c.userCount = data.userCount
        recogniser = NoiseRecogniser(c)
        optimizer = Adagrad(parameters: recogniser.parameters, learningRate: config.recogniserLearningRate)
        pool = (0..<config.groups).filter { $0 != g }.flatMap { partition.members[$0] }
        rng = RNG(seed: config.seed).derived(0xA7 &+ UInt64(g) &* 0x1_0000)
        let B = config.recogniserBatch, L = config.recogniser.maxLength
        dItems = .allocate(capacity: B * L); dLengths = .allocate(capacity: B); dTargets = .allocate(capacity: B)
        dIds = .allocate(capacity: B); dUsers = .allocate(capacity: B); dLabels = .allocate(capacity: B)
        wCapacity = B; wUsers = .allocate(capacity: B)
    }

    deinit {
        dItems.deallocate(); dLengths.deallocate(); dTargets.deallocate(); dIds.deallocate(); dUsers.deallocate()
        dLabels.deallocate(); wUsers.deallocate()
    }

    public func group(ofInstance instance: Int) -> Int { Int(partition.userGroup[Int(instances.users[instance])]) }

    public func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws {
        let g = group
        guard batch.T == config.recogniser.maxLength else {
            throw SequenceWeigherError.invalidBatch("\(batch.T) positions per row, the recogniser reads \(config.recogniser.maxLength)")
        }
        for b in 0..<batch.B where !(batch.instances[b] >= 0 && Int(batch.instances[b]) < instances.count) {
            throw SequenceWeigherError.invalidBatch("row \(b) names instance \(batch.instances[b]), outside 0..<\(instances.count)")
        }
        for b in 0..<batch.B {
            let k = Int(batch.instances[b]), actual = group(ofInstance: k)
            guard actual == g else { throw SequenceWeigherError.wrongGroup(instance: k, said: g, actual: actual) }
        }
        // A round of group g is one pass over its rows; its first weighing starts it.
        if roundRows == 0 { startRound() }
        roundRows += batch.B
        if roundRows >= partition.members[g].count { roundRows = 0 }
        if batch.B > wCapacity { wUsers.deallocate(); wCapacity = batch.B; wUsers = .allocate(capacity: batch.B) }
        for b in 0..<batch.B { wUsers[b] = instances.users[Int(batch.instances[b])] }
        let w = recogniser.forward(users: wUsers, items: batch.items, lengths: batch.lengths, targets: batch.targets,
                                   B: batch.B, training: true)
        weights.update(from: w, count: batch.B)
        pending = (id, batch.B)
        if config.audit { for b in 0..<batch.B { weighed.insert(batch.instances[b]) } }
    }

    public func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws {
        guard let p = pending, p.id == id, p.rows == B else { throw SequenceWeigherError.feedbackWithoutWeigh(batch: id, rows: B) }
        pending = nil
        recogniser.parameters.zeroGrad()
        recogniser.backward(dWeights: dWeights)                 // L_R through w (last forward = the weighed batch)
        var lossSum = 0.0
        let draws = config.groups - 1
        if config.alpha != 0 {
            for _ in 0..<draws {
                let n = drawRecogniserBatch()
                recogniser.forward(users: dUsers, items: dItems, lengths: dLengths, targets: dTargets, B: n, training: true)
                lossSum += recogniser.binaryCrossEntropy(labels: dLabels, scale: config.alpha / Float(draws) / Float(n), backward: true)
            }
        }
        lastRecogniserLoss = config.alpha != 0 ? lossSum / Double(config.alpha) : 0
        optimizer.update()
        steps += 1
    }

    /// One step of the recogniser's own task alone: L_D on a batch drawn from the other groups
    /// and one Adagrad update (a warm-up, or a check that it learns). Returns the batch's mean
    /// L_D and the share of rows on the right side of w = 0.5.
    public func trainOwnTask() throws -> (loss: Double, accuracy: Double) {
        guard pending == nil else { throw SequenceWeigherError.invalidBatch("batch \(pending!.id) is weighed and waits for its feedback") }
        recogniser.parameters.zeroGrad()
        let n = drawRecogniserBatch()
        let w = recogniser.forward(users: dUsers, items: dItems, lengths: dLengths, targets: dTargets, B: n, training: true)
        var right = 0
        for b in 0..<n where (w[b] >= 0.5) == (dLabels[b] == NoiseLabel.clean) { right += 1 }
        let loss = recogniser.binaryCrossEntropy(labels: dLabels, scale: 1 / Float(n), backward: true)
        optimizer.update()
        return (loss, Double(right) / Double(n))
    }

    /// Algorithm 1 initialises the recogniser for every round (line 4) while the recommender
    /// carries on: the recogniser goes back to its initial weights (the first round starts from
    /// them already) with a fresh Adagrad, so it weighs each pass over its group having trained
    /// only alongside that pass, and what it fitted to the recommender in earlier rounds is dropped.
    private func startRound() {
        if rounds > 0 {
            recogniser.resetParameters()
            optimizer = Adagrad(parameters: recogniser.parameters, learningRate: config.recogniserLearningRate)
        }
        rounds += 1
    }

    /// Fills the recogniser batch from the other groups; returns its rows.
    private func drawRecogniserBatch() -> Int {
        let B = config.recogniserBatch, L = config.recogniser.maxLength
        precondition(!pool.isEmpty, "group \(group) has no other-group instances to train its recogniser on")
        let n = min(B, pool.count)
        for b in 0..<n {
            if cursor == 0 {
                // a new pass over the pool in a fresh order
                pool.withUnsafeMutableBufferPointer { rng.shuffle($0) }
            }
            dIds[b] = pool[cursor]
            cursor = (cursor + 1) % pool.count
        }
        fillInstanceRows(data: data, instances: instances, ids: dIds, n: n, maxLength: L, items: dItems, lengths: dLengths, targets: dTargets)
        for b in 0..<n { dUsers[b] = instances.users[Int(dIds[b])] }
        if config.audit { for b in 0..<n { trainedOn.insert(dIds[b]) } }
        ATJTNoise.corrupt(items: dItems, lengths: dLengths, labels: dLabels, B: n, T: L, replaced: config.replaced,
                          noisyFraction: config.noisyFraction, itemCount: data.itemCount, rng: &rng)
        return n
    }

    /// Weights of instances of this group, without dropout and without learning (evaluation).
    public func evaluate(ids: [Int32], batch: Int = 256) -> [Float] {
        let L = config.recogniser.maxLength
        var out = [Float](repeating: 0, count: ids.count)
        let items = UnsafeMutablePointer<Int32>.allocate(capacity: batch * L), lengths = UnsafeMutablePointer<Int32>.allocate(capacity: batch)
        let targets = UnsafeMutablePointer<Int32>.allocate(capacity: batch), users = UnsafeMutablePointer<Int32>.allocate(capacity: batch)
        defer { items.deallocate(); lengths.deallocate(); targets.deallocate(); users.deallocate() }
        var start = 0
        ids.withUnsafeBufferPointer { all in
            while start < ids.count {
                let n = min(batch, ids.count - start)
                fillInstanceRows(data: data, instances: instances, ids: all.baseAddress! + start, n: n, maxLength: L, items: items,
                                 lengths: lengths, targets: targets)
                for b in 0..<n { users[b] = instances.users[Int(all[start + b])] }
                let w = recogniser.forward(users: users, items: items, lengths: lengths, targets: targets, B: n, training: false)
                for b in 0..<n { out[start + b] = w[b] }
                start += n
            }
        }
        return out
    }

    // MARK: Snapshot

    /// What must match for a snapshot to be restored here.
    private var fingerprint: String {
        "group \(group)/\(config.groups), seed \(config.seed), items \(data.itemCount), users \(data.userCount), "
            + "instances \(instances.count), parameters \(recogniser.parameters.count)"
    }

    private struct State: Codable {
        var fingerprint: String
        var steps: Int, rounds: Int, roundRows: Int, cursor: Int
        var rng: [String], dropoutRNG: [String]
        var lastRecogniserLoss: Double
    }

    /// Everything the recogniser's next steps depend on, between a feedback and the next weigh:
    /// weights, Adagrad's sums, round, pool order and cursor, both generators (the checkpoint
    /// file's framing and checksum).
    public func snapshot() throws -> [UInt8] {
        guard pending == nil else { throw SequenceWeigherError.invalidBatch("a snapshot is taken between a feedback and the next weigh") }
        let hex: (RNG) -> [String] = { $0.state.map { String($0, radix: 16) } }
        let state = State(fingerprint: fingerprint, steps: steps, rounds: rounds, roundRows: roundRows, cursor: cursor,
                          rng: hex(rng), dropoutRNG: hex(recogniser.rng), lastRecogniserLoss: lastRecogniserLoss)
        let floats: (UnsafePointer<Float>, Int) -> [UInt8] = { p, n in Array(UnsafeRawBufferPointer(start: p, count: n * 4)) }
        let order = pool.withUnsafeBytes { Array($0) }
        return CheckpointFormat.encode([Array(try JSONEncoder().encode(state)), floats(recogniser.parameters.values, recogniser.parameters.count),
                                        floats(optimizer.accumulators, recogniser.parameters.count), order])
    }

    public func checkpointDue() {}
    public func checkpointBytes() throws -> [UInt8] { try snapshot() }
    public func restore(checkpointBytes bytes: [UInt8]) throws { try restore(bytes) }

    /// Continues from a snapshot of a recogniser of the same group, job and data.
    public func restore(_ bytes: [UInt8]) throws {
        let what = "recogniser snapshot of group \(group)"
        let sections = try CheckpointFormat.decode(bytes, path: what)
        let P = recogniser.parameters.count
        guard sections.count == 4, sections[1].count == P * 4, sections[2].count == P * 4, sections[3].count == pool.count * 4 else {
            throw CheckpointError.corrupt(path: what, reason: "sections do not fit this recogniser")
        }
        let state: State
        do { state = try JSONDecoder().decode(State.self, from: Foundation.Data(sections[0])) }
        catch { throw CheckpointError.corrupt(path: what, reason: "state: \(error)") }
        guard state.fingerprint == fingerprint else {
            throw CheckpointError.mismatch(path: what, field: "recogniser", stored: state.fingerprint, current: fingerprint)
        }
        let words: ([String]) -> [UInt64] = { $0.compactMap { UInt64($0, radix: 16) } }
        guard let r = RNG(state: words(state.rng)), let d = RNG(state: words(state.dropoutRNG)) else {
            throw CheckpointError.corrupt(path: what, reason: "generator state")
        }
        var order = [Int32](repeating: 0, count: pool.count)
        order.withUnsafeMutableBytes { $0.copyBytes(from: sections[3]) }
        guard order.sorted() == pool.sorted() else { throw CheckpointError.corrupt(path: what, reason: "pool holds other instances") }
        sections[1].withUnsafeBytes { memcpy(recogniser.parameters.values, $0.baseAddress!, P * 4) }
        sections[2].withUnsafeBytes { memcpy(optimizer.accumulators, $0.baseAddress!, P * 4) }
        pool = order; rng = r; recogniser.rng = d
        steps = state.steps; rounds = state.rounds; roundRows = state.roundRows; cursor = state.cursor
        lastRecogniserLoss = state.lastRecogniserLoss; pending = nil
    }
}

/// ATJT's noise recognisers in process: one `GroupRecogniser` per group, each trained on the
/// other groups; `weighers[g]` weighs group g.
public final class ATJTWeigher {
    public let config: ATJTConfig
    public let data: SequenceDataset
    public let instances: InstanceSet
    public let partition: GroupPartition
    public let groupRecognisers: [GroupRecogniser]

    public var groups: Int { config.groups }
    /// recognisers[g] weighs group g and is trained on every other group.
    public var recognisers: [NoiseRecogniser] { groupRecognisers.map(\.recogniser) }
    /// The weigher of each group, for the trainer.
    public var weighers: [SequenceWeigher] { groupRecognisers }
    public var rounds: [Int] { groupRecognisers.map(\.rounds) }
    /// With `config.audit`: per group, the instances its recogniser trained on and weighed.
    public var trainedOn: [Set<Int32>] { groupRecognisers.map(\.trainedOn) }
    public var weighed: [Set<Int32>] { groupRecognisers.map(\.weighed) }
    /// Mean over the groups of their last recogniser loss L_D.
    public var lastRecogniserLoss: Double { groupRecognisers.map(\.lastRecogniserLoss).reduce(0, +) / Double(groups) }

    public init(config: ATJTConfig, data: SequenceDataset, instances: InstanceSet) {
        precondition(config.groups >= 2, "ATJT needs at least two groups")
        self.config = config; self.data = data; self.instances = instances
        let partition = GroupPartition(users: data.userCount, instances: instances, groups: config.groups, seed: config.seed)
        self.partition = partition
        groupRecognisers = (0..<config.groups).map {
            GroupRecogniser(config: config, data: data, instances: instances, partition: partition, group: $0)
        }
    }

    public func group(ofInstance instance: Int) -> Int { Int(partition.userGroup[Int(instances.users[instance])]) }

    /// Weights of arbitrary instances by the recogniser of each instance's group, without
    /// dropout and without learning (evaluation: AUC against known noise).
    public func evaluate(ids: [Int32], batch: Int = 256) -> [Float] {
        var out = [Float](repeating: 0, count: ids.count)
        for g in 0..<groups {
            let mine = ids.indices.filter { group(ofInstance: Int(ids[$0])) == g }
            let w = groupRecognisers[g].evaluate(ids: mine.map { ids[$0] }, batch: batch)
            for (k, i) in mine.enumerated() { out[i] = w[k] }
        }
        return out
    }
}

/// The recommender side of ATJT: one Adam step on Σ w ℓ / Σ w with w from the batch's group's
/// `SequenceWeigher`, then dL/dw back to it. Works with any backbone (full-softmax head; K >= 1
/// under the prefix scheme, K = 1 under all positions). ℓ_r is the next-item cross-entropy, or
/// any `WeightedSequenceLoss` (ATJT + CSRec: CSRec's student loss). A weight belongs to a row,
/// one (history, target) pair: under all positions each target of a window is a row, and the
/// weigher sees its history, the window up to the row's position, as under the prefix scheme.
public final class ATJTTrainer {
    public let model: Backbone
    public let optimizer: Adam
    /// weighers[g] weighs group g's batches.
    public let weighers: [SequenceWeigher]
    /// The per-row loss w multiplies; nil = the next-item cross-entropy of the head.
    public let sequenceLoss: WeightedSequenceLoss?
    public let scheme: TrainingScheme
    private let loss: WeighedLoss
    private let maxBatch: Int
    private var trainStep: TrainStep? = nil

    public init(model: Backbone, weighers: [SequenceWeigher], learningRate: Float = 1e-3, maxBatch: Int = 256,
                loss: WeightedSequenceLoss? = nil, scheme: TrainingScheme = .prefixes) {
        precondition(!weighers.isEmpty, "at least one group's weigher")
        self.model = model; self.weighers = weighers; sequenceLoss = loss; self.scheme = scheme
        optimizer = Adam(parameters: model.parameters, learningRate: learningRate)
        self.maxBatch = maxBatch
        self.loss = WeighedLoss(weighers: weighers, sequenceLoss: loss, model: model,
                                maxRows: scheme == .allPositions ? maxBatch * model.maxLength : maxBatch)
    }

    /// Rows R of the last step.
    public var rows: Int { loss.rows }
    /// The weights of the last step (R).
    public var weights: UnsafePointer<Float> { UnsafePointer(loss.w) }
    /// Per-row losses ℓ (R) of the last step.
    public var losses: UnsafePointer<Float> { loss.losses }

    /// One joint step on a prefix batch of group `group`; returns L_R = Σ w ℓ / Σ w.
    @discardableResult
    public func step(_ batch: SequenceBatch, group: Int) throws -> Double {
        precondition(scheme == .prefixes, "a trainer of windows steps with step(_:group:next:)")
        return try step(FilledBatch(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: batch.instances,
                                    B: batch.B), group: group)
    }

    /// One joint step on a batch of group `group` in `TrainStep`'s layout; `next`, the batch the
    /// following step trains and its group, is announced to that group's weigher (and the loss's
    /// teachers) first. Returns L_R.
    @discardableResult
    public func step(_ batch: FilledBatch, group: Int, next: (batch: FilledBatch, group: Int)? = nil) throws -> Double {
        for g in [group] + (next.map { [$0.group] } ?? []) where g < 0 || g >= weighers.count {
            throw SequenceWeigherError.unknownGroup(g, groups: weighers.count)
        }
        if trainStep == nil {
            trainStep = try TrainStep(model: model, loss: loss, optimizer: optimizer, scheme: scheme, batchSize: maxBatch)
        }
        loss.group = group; loss.nextGroup = next?.group ?? group
        return try trainStep!.step(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: batch.instances,
                                   B: batch.B, next: next?.batch)
    }
}

/// ATJT's L_R as the step's loss: the rows weighed by their group's weigher, the weighted loss
/// and its gradient, then dL_R/dw_r = (ℓ_r − L_R) / Σ w to the weigher (its update touches only
/// its own parameters, so it may run before the recommender's backward).
final class WeighedLoss: RowLoss {
    let weighers: [SequenceWeigher]
    let sequenceLoss: WeightedSequenceLoss?
    /// The groups of the batch being stepped and of the one announced.
    var group = 0, nextGroup = 0
    private(set) var rows = 0
    private let head: FullSoftmaxHead
    let w: Floats
    private let dW: Floats
    private let scores: Floats?, rowLosses: Floats?   // (R, N), (R): only with a `sequenceLoss`
    // each row's history for the weigher under all positions, for this batch and the announced
    // one: (R, T) right-padded, (R) lengths
    private let histories: (BatchBuffers, BatchBuffers)
    private let maxRows: Int, T: Int

    init(weighers: [SequenceWeigher], sequenceLoss: WeightedSequenceLoss?, model: Backbone, maxRows: Int) {
        self.weighers = weighers; self.sequenceLoss = sequenceLoss; self.maxRows = maxRows; T = model.maxLength
        head = FullSoftmaxHead(itemCount: model.itemCount, dim: model.dim, interests: model.interests)
        w = .allocate(capacity: maxRows); dW = .allocate(capacity: maxRows)
        scores = sequenceLoss == nil ? nil : .allocate(capacity: maxRows * model.itemCount)
        rowLosses = sequenceLoss == nil ? nil : .allocate(capacity: maxRows)
        histories = (BatchBuffers(B: maxRows, T: T), BatchBuffers(B: maxRows, T: T))
    }

    deinit { w.deallocate(); dW.deallocate(); scores?.deallocate(); rowLosses?.deallocate() }

    var fingerprint: String { "atjt-" + (sequenceLoss.map { String(describing: type(of: $0)) } ?? "cross-entropy") }
    var losses: UnsafePointer<Float> { UnsafePointer(rowLosses ?? head.losses) }
    func beginEpoch(_ epoch: Int) { sequenceLoss?.beginEpoch(epoch) }
    func afterUpdate() { sequenceLoss?.afterUpdate() }
    func endEpoch(_ epoch: Int, meanLoss: Double) { sequenceLoss?.endEpoch(epoch, meanLoss: meanLoss) }

    /// The rows as the weigher sees them: (history, target) pairs, each row's history its
    /// sequence (prefixes) or its window up to its position (all positions, written into `into`).
    private func pairs(_ batch: TrainingBatch, into buffer: BatchBuffers) -> SequenceBatch {
        precondition(batch.R <= maxRows, "\(batch.R) rows, more than the \(maxRows) allocated")
        guard batch.scheme == .allPositions else {
            return SequenceBatch(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: batch.instances,
                                 B: batch.R, T: batch.T)
        }
        for r in 0..<batch.R {
            let len = Int(batch.positions[r]) + 1, row = buffer.items + r * T
            row.update(from: batch.items + Int(batch.sequences[r]) * T, count: len)
            (row + len).update(repeating: 0, count: T - len)
            buffer.lengths[r] = Int32(len)
        }
        return SequenceBatch(items: buffer.items, lengths: buffer.lengths, targets: batch.targets, instances: batch.instances,
                             B: batch.R, T: batch.T,
                             windows: (batch.items, batch.lengths, batch.B,
                                       ScoredRows(sequences: batch.sequences, positions: batch.positions, count: batch.R, batchSize: batch.B)))
    }

    func prefetch(_ batch: TrainingBatch) throws {
        try weighers[nextGroup].prefetch(pairs(batch, into: histories.1), id: batch.id, behindCurrent: nextGroup == group)
        try sequenceLoss?.prefetch(LabelBatch(batch))
    }

    func loss(_ batch: TrainingBatch, user: UnsafePointer<Float>, model: Backbone, dUser: Floats,
              weights: UnsafePointer<Float>?) throws -> Double {
        let R = batch.R
        rows = R
        try weighers[group].weigh(pairs(batch, into: histories.0), id: batch.id, weights: w)
        var sum: Float = 0
        for r in 0..<R { sum += w[r] }
        let S = max(sum, 1e-12)
        let total: Double
        if let sequenceLoss, let scores, let rowLosses {
            // as `ObjectiveLoss`: scores copied, the loss's gradient written over the head's logits
            let N = model.itemCount
            head.scores(user: user, table: model.itemTable, B: R)
            scores.update(from: head.logits, count: R * N)
            total = try sequenceLoss.loss(batch: LabelBatch(batch), logits: scores, dlogits: head.logits, weights: w, norm: S,
                                          losses: rowLosses)
            head.backward(user: user, table: model.itemTable, tableGrad: model.itemTableGrad, B: R)
        } else {
            total = head.crossEntropy(user: user, table: model.itemTable, tableGrad: model.itemTableGrad, targets: batch.targets,
                                      weights: w, scale: 1 / S, B: R)
        }
        dUser.update(from: head.dUser, count: R * model.interests * model.dim)
        let l = losses
        for r in 0..<R { dW[r] = (l[r] - Float(total)) / S }
        try weighers[group].feedback(dWeights: dW, B: R, id: batch.id)
        return total
    }
}
