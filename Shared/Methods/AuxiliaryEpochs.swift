// Epochs of the auxiliary-task trainers (DSS, ATJT — alone or composed with CSRec). The label
// methods' losses run inside the loop's own step; DSS and ATJT own their steps (two encodes per
// batch; a weigher between batch and loss), so an epoch here is a closure that
// `TrainingLoop.fit(model:validate:evaluated:epoch:)` calls, selecting on validation.
import Foundation
import Numerics
import Models
import Data
import Training

/// DSS's epochs: shuffled batches of the training instances (prefixes) or of windows over them
/// (all positions), one `DSSTrainer.step` each.
public final class DSSEpochs: CheckpointedState {
    public let trainer: DSSTrainer
    private var batcher: Batcher
    private let buf: BatchBuffers

    public init(trainer: DSSTrainer, batchSize B: Int, seed: UInt64) {
        self.trainer = trainer
        let T = trainer.config.encoder.maxLength, windows = trainer.scheme == .allPositions
        batcher = windows ? Batcher(data: trainer.data, windowsOf: trainer.instances, maxLength: T, batchSize: B, seed: seed)
            : Batcher(data: trainer.data, instances: trainer.instances, maxLength: T, batchSize: B, seed: seed)
        buf = BatchBuffers(B: B, T: T, perPosition: windows)
    }

    /// One epoch (0-based `epoch`, for the schedule); returns the mean batch loss. (The phase
    /// and seq2seq's draws follow from the epoch; the batch order is the only state carried.)
    public func run(epoch: Int) throws -> Double {
        trainer.beginEpoch(epoch)
        batcher.shuffle()
        var sum = 0.0
        for i in 0..<batcher.batchCount {
            buf.fill(batcher, batch: i)
            sum += try trainer.step(buf.filled)
        }
        return sum / Double(max(batcher.batchCount, 1))
    }

    public var fingerprint: String { "dss-\(trainer.scheme.rawValue)" }
    public func checkpointState() -> [UInt64] { batcher.checkpointWords }
    public func restore(checkpointState words: [UInt64]) -> Bool { batcher.restore(checkpointWords: words) }
}

/// ATJT's epochs: each group's shuffled batches in turn (a batch holds one group's sequences, so
/// it is weighed by the recogniser that never trained on it), one `ATJTTrainer.step` each; under
/// all positions a group's batches are windows of its users (groups split users, so a window
/// stays in its group).
public final class ATJTEpochs: CheckpointedState {
    public let trainer: ATJTTrainer
    public let partition: GroupPartition
    private var batchers: [Batcher]
    /// this step's batch and the next
    private var buffers: (BatchBuffers, BatchBuffers)
    private let T: Int
    /// The recognisers' last L_D, when they are in this process (for the summary).
    private let recogniserLoss: () -> Double?
    /// A loss with state of its own (UFNRec's records and EMA teacher), kept in checkpoints.
    public var lossState: LabelObjective?
    /// Weight statistics and the recogniser loss of the last epoch, for logs.
    public private(set) var summary = ""

    public init(trainer: ATJTTrainer, data: SequenceDataset, instances: InstanceSet, partition: GroupPartition, batchSize B: Int,
                seed: UInt64, recogniserLoss: @escaping () -> Double? = { nil }) {
        self.trainer = trainer; self.partition = partition; self.recogniserLoss = recogniserLoss
        T = trainer.model.maxLength
        let windows = trainer.scheme == .allPositions, L = T
        batchers = (0..<partition.groups).map { g in
            let mine = partition.instanceSet(g, of: instances)
            return windows ? Batcher(data: data, windowsOf: mine, maxLength: L, batchSize: B, seed: seed &+ UInt64(g))
                : Batcher(data: data, instances: mine, maxLength: L, batchSize: B, seed: seed &+ UInt64(g))
        }
        buffers = (BatchBuffers(B: B, T: T, perPosition: windows), BatchBuffers(B: B, T: T, perPosition: windows))
    }

    /// The in-process recognisers' epochs (tests, robustness).
    public convenience init(trainer: ATJTTrainer, weigher: ATJTWeigher, batchSize B: Int, seed: UInt64) {
        self.init(trainer: trainer, data: weigher.data, instances: weigher.instances, partition: weigher.partition, batchSize: B,
                  seed: seed, recogniserLoss: { weigher.lastRecogniserLoss })
    }

    /// One epoch (0-based `epoch`); returns the mean of the batches' L_R. The loss's epoch hooks
    /// (UFNRec's warm-up) get the 1-based epoch and that mean, as `LabelLoop` gives them. Each
    /// step announces the next batch (the next of its group, or the next group's first) to the
    /// weigher that will weigh it.
    public func run(epoch: Int) throws -> Double {
        trainer.sequenceLoss?.beginEpoch(epoch + 1)
        for g in 0..<batchers.count { batchers[g].shuffle() }
        let order = (0..<batchers.count).flatMap { g in (0..<batchers[g].batchCount).map { (group: g, batch: $0) } }
        var sum = 0.0
        var wSum = 0.0, wSq = 0.0, wMin = Float.infinity, wMax = -Float.infinity, wN = 0
        func fill(_ k: Int, into buf: BatchBuffers) {
            let (g, i) = order[k]
            let n = buf.fill(batchers[g], batch: i)
            let ids = buf.instances, members = partition.members[g]
            for j in 0..<(buf.perPosition ? n * T : n) where ids[j] >= 0 { ids[j] = members[Int(ids[j])] }   // local -> global
        }
        if !order.isEmpty { fill(0, into: buffers.0) }
        // each group's last batch of the epoch: its feedback brings the weigher's state for the checkpoint
        var last: [Int: Int] = [:]
        for (k, o) in order.enumerated() { last[o.group] = k }
        for k in 0..<order.count {
            if last[order[k].group] == k, let w = trainer.weighers[order[k].group] as? CheckpointedWeigher { w.checkpointDue() }
            let hasNext = k + 1 < order.count
            if hasNext { fill(k + 1, into: buffers.1) }
            sum += try trainer.step(buffers.0.filled, group: order[k].group,
                                    next: hasNext ? (buffers.1.filled, order[k + 1].group) : nil)
            buffers = (buffers.1, buffers.0)
            for b in 0..<trainer.rows {
                let w = trainer.weights[b]
                wSum += Double(w); wSq += Double(w) * Double(w); wMin = min(wMin, w); wMax = max(wMax, w); wN += 1
            }
        }
        let count = order.count
        let mean = wSum / Double(max(wN, 1))
        summary = String(format: " w mean %.3f std %.3f min %.3f max %.3f", mean,
                         (max(wSq / Double(max(wN, 1)) - mean * mean, 0)).squareRoot(), wMin, wMax)
            + (recogniserLoss().map { String(format: ", recogniser loss %.4f", $0) } ?? "")
        let meanLoss = sum / Double(max(count, 1))
        trainer.sequenceLoss?.endEpoch(epoch + 1, meanLoss: meanLoss)
        return meanLoss
    }

    public var fingerprint: String {
        "atjt-\(trainer.scheme.rawValue)-\(batchers.count) groups" + (lossState.map { "-" + String(describing: type(of: $0)) } ?? "")
    }

    /// Every group's batch order, every weigher's state after the epoch's last feedback, and
    /// the loss's own state.
    public func checkpointState() throws -> [UInt64] {
        var parts = batchers.map(\.checkpointWords)
        for (g, w) in trainer.weighers.enumerated() {
            guard let c = w as? CheckpointedWeigher else { throw SequenceWeigherError.remote("group \(g)'s weigher keeps no checkpoint") }
            parts.append(CheckpointWords.pack(try c.checkpointBytes()))
        }
        parts.append(lossState?.checkpointState() ?? [])
        return CheckpointWords.join(parts)
    }

    public func restore(checkpointState words: [UInt64]) throws -> Bool {
        let G = batchers.count
        guard let parts = CheckpointWords.split(words), parts.count == 2 * G + 1, trainer.weighers.count == G else { return false }
        var restored = batchers
        for g in 0..<G where !restored[g].restore(checkpointWords: parts[g]) { return false }
        guard lossState?.restore(checkpointState: parts[2 * G]) ?? parts[2 * G].isEmpty else { return false }
        for g in 0..<G {
            guard let c = trainer.weighers[g] as? CheckpointedWeigher, let bytes = CheckpointWords.unpack(parts[G + g]) else { return false }
            try c.restore(checkpointBytes: bytes)
        }
        batchers = restored
        return true
    }
}
