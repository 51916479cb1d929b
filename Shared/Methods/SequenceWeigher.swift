// The seam between a recommender and whatever weighs its training sequences (ATJT's noise
// recognisers, in process today; a noise service per group later). A weigher is asked for one
// weight per training sequence of a batch and is then told dL/dw for that batch, so that it can
// learn from the recommender's loss (ATJT's joint training) as well as from its own task.
//
// One weigher serves one group of ATJT's cross-fitting: every training sequence belongs to one of
// N groups, the trainer holds one weigher per group and asks group g's weigher about group g's
// batches only, and a weigher must never weigh a sequence with a model trained on it. A batch id
// (the training step's) ties an early `prefetch` to its `weigh`, and a `weigh` to its `feedback`,
// so that a remote weigher can have the next batch's weights on the way while a step computes.
import Numerics
import Models
import Training

/// Why a weigher could not weigh or learn.
public enum SequenceWeigherError: Error, Equatable, CustomStringConvertible {
    /// The group index is outside 0..<groups (the trainer's weighers).
    case unknownGroup(Int, groups: Int)
    /// Instance `instance` was said to be in group `said` but belongs to group `actual`.
    case wrongGroup(instance: Int, said: Int, actual: Int)
    /// `feedback` for a batch that is not the last one weighed, or of another size.
    case feedbackWithoutWeigh(batch: BatchID, rows: Int)
    /// The batch cannot be weighed as sent (its shape or instance ids), and why.
    case invalidBatch(String)
    /// The remote side failed (message from it).
    case remote(String)

    public var description: String {
        switch self {
        case let .unknownGroup(g, n): return "sequence weigher: group \(g) outside 0..<\(n)"
        case let .wrongGroup(i, s, a): return "sequence weigher: instance \(i) is in group \(a), not \(s)"
        case let .feedbackWithoutWeigh(id, b): return "sequence weigher: feedback for batch \(id) (\(b) rows) without a matching weigh"
        case let .invalidBatch(why): return "sequence weigher: invalid batch: \(why)"
        case let .remote(m): return "sequence weigher: \(m)"
        }
    }
}

/// One batch of training sequences as the trainer holds it (right-padded, as `Batcher` writes).
public struct SequenceBatch {
    /// (B, T) input item ids, 0 = padding.
    public var items: UnsafePointer<Int32>
    /// (B) real items per row.
    public var lengths: UnsafePointer<Int32>
    /// (B) target item ids.
    public var targets: UnsafePointer<Int32>
    /// (B) indices of the rows' instances in the training `InstanceSet`.
    public var instances: UnsafePointer<Int32>
    public var B: Int
    public var T: Int
    /// Under all positions, the windows the rows were cut from: `items` (count, T) right-padded
    /// with their `lengths`, and row b's window and position in `rows` (row b's history is its
    /// window up to that position). A weigher in another process sends these, a fraction of the
    /// B histories' bytes. nil: the rows are the sequences.
    public var windows: (items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, count: Int, rows: ScoredRows)?

    public init(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                instances: UnsafePointer<Int32>, B: Int, T: Int,
                windows: (items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, count: Int, rows: ScoredRows)? = nil) {
        self.items = items; self.lengths = lengths; self.targets = targets; self.instances = instances
        self.B = B; self.T = T; self.windows = windows
    }
}

/// Weighs one group's training sequences and learns from dL/dw.
public protocol SequenceWeigher: AnyObject {
    /// Announces a batch that a later `weigh` with the same `id` will pass (pointers valid for
    /// this call only), before the trainer weighs the current one. `behindCurrent`: the batch the
    /// trainer steps now is this weigher's too, so the announced one follows its feedback (a
    /// weigher that learns must not weigh it before). The default does nothing.
    func prefetch(_ batch: SequenceBatch, id: BatchID, behindCurrent: Bool) throws
    /// Writes one weight per row into `weights` (B) for batch `id`.
    func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws
    /// Gives dL/dw (B) for batch `id`, the last one weighed; the weigher updates itself.
    func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws
}

extension SequenceWeigher {
    public func prefetch(_ batch: SequenceBatch, id: BatchID, behindCurrent: Bool) throws {}
}

/// A weigher whose state goes into the trainer's checkpoint after an epoch (ATJT's recognisers,
/// here or in a noise process), so a stopped job continues with the weigher it had.
public protocol CheckpointedWeigher: SequenceWeigher {
    /// The next feedback is the last before a checkpoint (a remote weigher asks for its state
    /// with it).
    func checkpointDue()
    /// The state after the last feedback.
    func checkpointBytes() throws -> [UInt8]
    /// Continues from what `checkpointBytes` returned.
    func restore(checkpointBytes: [UInt8]) throws
}

/// w ≡ c for every sequence; learns nothing. With c = 1 a weighted trainer is base training.
public final class ConstantWeigher: SequenceWeigher {
    public let value: Float
    /// Number of `feedback` calls received (tests check the trainer calls back).
    public private(set) var feedbackCalls = 0

    public init(value: Float = 1) { self.value = value }

    public func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws {
        weights.update(repeating: value, count: batch.B)
    }

    public func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws { feedbackCalls += 1 }
}
