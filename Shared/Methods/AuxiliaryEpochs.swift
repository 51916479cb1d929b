// Epochs of the auxiliary-task trainers (DSS, ATJT — alone or composed with CSRec). The label
// methods' losses run inside the loop's own step; DSS and ATJT own their steps (two encodes per
// batch; a weigher between batch and loss), so an epoch here is a closure that
// `TrainingLoop.fit(model:validate:evaluated:epoch:)` calls, selecting on validation.
import Foundation
import Numerics
import Models
import Data
import Training

/// Right-padded batch rows with their instance indices, allocated once: targets and ids (B), or
/// (B, T) for batches of windows.
final class InstanceBatchBuffers {
    let items: UnsafeMutablePointer<Int32>, lengths: UnsafeMutablePointer<Int32>
    let targets: UnsafeMutablePointer<Int32>, ids: UnsafeMutablePointer<Int32>
    init(B: Int, T: Int, windows: Bool = false) {
        items = .allocate(capacity: B * T); lengths = .allocate(capacity: B)
        targets = .allocate(capacity: windows ? B * T : B); ids = .allocate(capacity: windows ? B * T : B)
    }
    deinit { items.deallocate(); lengths.deallocate(); targets.deallocate(); ids.deallocate() }
}

/// DSS's epochs: shuffled batches of the training instances, one `DSSTrainer.step` each.
public final class DSSEpochs {
    public let trainer: DSSTrainer
    private var batcher: Batcher
    private let buf: InstanceBatchBuffers
    private let T: Int

    public init(trainer: DSSTrainer, batchSize B: Int, seed: UInt64) {
        self.trainer = trainer
        T = trainer.config.encoder.maxLength
        batcher = Batcher(data: trainer.data, instances: trainer.instances, maxLength: T, batchSize: B, seed: seed)
        buf = InstanceBatchBuffers(B: B, T: T)
    }

    /// One epoch (0-based `epoch`, for the schedule); returns the mean batch loss.
    public func run(epoch: Int) throws -> Double {
        trainer.beginEpoch(epoch)
        batcher.shuffle()
        var sum = 0.0
        for i in 0..<batcher.batchCount {
            let n = batcher.fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids)
            sum += try trainer.step(SequenceBatch(items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids, B: n, T: T))
        }
        return sum / Double(max(batcher.batchCount, 1))
    }
}

/// ATJT's epochs: each group's shuffled batches in turn (a batch holds one group's sequences, so
/// it is weighed by the recogniser that never trained on it), one `ATJTTrainer.step` each; under
/// all positions a group's batches are windows of its users (groups split users, so a window
/// stays in its group).
public final class ATJTEpochs {
    public let trainer: ATJTTrainer
    public let weigher: ATJTWeigher
    private var batchers: [Batcher]
    private let buf: InstanceBatchBuffers
    private let T: Int
    /// Weight statistics and the recogniser loss of the last epoch, for logs.
    public private(set) var summary = ""

    public init(trainer: ATJTTrainer, weigher: ATJTWeigher, batchSize B: Int, seed: UInt64) {
        self.trainer = trainer; self.weigher = weigher
        T = weigher.config.recogniser.maxLength
        let windows = trainer.scheme == .allPositions, L = T
        batchers = (0..<weigher.groups).map { g in
            let mine = weigher.partition.instanceSet(g, of: weigher.instances)
            return windows ? Batcher(data: weigher.data, windowsOf: mine, maxLength: L, batchSize: B, seed: seed &+ UInt64(g))
                : Batcher(data: weigher.data, instances: mine, maxLength: L, batchSize: B, seed: seed &+ UInt64(g))
        }
        buf = InstanceBatchBuffers(B: B, T: T, windows: windows)
    }

    /// One epoch (0-based `epoch`); returns the mean of the batches' L_R. The loss's epoch hooks
    /// (UFNRec's warm-up) get the 1-based epoch and that mean, as `LabelLoop` gives them.
    public func run(epoch: Int) throws -> Double {
        trainer.sequenceLoss?.beginEpoch(epoch + 1)
        var sum = 0.0, count = 0
        var wSum = 0.0, wSq = 0.0, wMin = Float.infinity, wMax = -Float.infinity, wN = 0
        for g in 0..<batchers.count {
            batchers[g].shuffle()
            let members = weigher.partition.members[g]
            for i in 0..<batchers[g].batchCount {
                let n: Int
                if trainer.scheme == .allPositions {
                    n = batchers[g].fillWindows(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids)
                    for k in 0..<(n * T) where buf.ids[k] >= 0 { buf.ids[k] = members[Int(buf.ids[k])] }   // local -> global
                } else {
                    n = batchers[g].fill(batch: i, items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids)
                    for b in 0..<n { buf.ids[b] = members[Int(buf.ids[b])] }   // local -> global instance index
                }
                sum += try trainer.step(items: buf.items, lengths: buf.lengths, targets: buf.targets, instances: buf.ids, B: n, group: g)
                count += 1
                for b in 0..<trainer.rows {
                    let w = trainer.weights[b]
                    wSum += Double(w); wSq += Double(w) * Double(w); wMin = min(wMin, w); wMax = max(wMax, w); wN += 1
                }
            }
        }
        let mean = wSum / Double(max(wN, 1))
        summary = String(format: " w mean %.3f std %.3f min %.3f max %.3f, recogniser loss %.4f", mean,
                         (max(wSq / Double(max(wN, 1)) - mean * mean, 0)).squareRoot(), wMin, wMax, weigher.lastRecogniserLoss)
        let meanLoss = sum / Double(max(count, 1))
        trainer.sequenceLoss?.endEpoch(epoch + 1, meanLoss: meanLoss)
        return meanLoss
    }
}
