// The seam between a recommender and whatever weighs its training sequences (ATJT's noise
// recogniser today, in process; a remote noise service later). A weigher is asked for one weight
// per training sequence of a batch and is then told dL/dw for that batch, so that it can learn
// from the recommender's loss (ATJT's joint training) as well as from its own task.
//
// Group protocol (ATJT's cross-fitting): every training sequence belongs to one of N groups; the
// trainer says which group a batch comes from, and a weigher must never weigh a sequence with a
// model that was trained on that sequence.
import Numerics

/// Why a weigher could not weigh or learn.
public enum SequenceWeigherError: Error, Equatable, CustomStringConvertible {
    /// The group index is outside 0..<groups.
    case unknownGroup(Int, groups: Int)
    /// Instance `instance` was said to be in group `said` but belongs to group `actual`.
    case wrongGroup(instance: Int, said: Int, actual: Int)
    /// `feedback` for a group that has no outstanding `weigh` of that size.
    case feedbackWithoutWeigh(group: Int, rows: Int)
    /// The remote side failed (message from it).
    case remote(String)

    public var description: String {
        switch self {
        case let .unknownGroup(g, n): return "sequence weigher: group \(g) outside 0..<\(n)"
        case let .wrongGroup(i, s, a): return "sequence weigher: instance \(i) is in group \(a), not \(s)"
        case let .feedbackWithoutWeigh(g, b): return "sequence weigher: feedback for group \(g) (\(b) rows) without a matching weigh"
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

    public init(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                instances: UnsafePointer<Int32>, B: Int, T: Int) {
        self.items = items; self.lengths = lengths; self.targets = targets; self.instances = instances
        self.B = B; self.T = T
    }
}

/// Weighs training sequences and learns from dL/dw.
public protocol SequenceWeigher: AnyObject {
    /// Number of groups N the training instances are partitioned into.
    var groups: Int { get }
    /// The group of training instance `instance`.
    func group(ofInstance instance: Int) -> Int
    /// Writes one weight per row into `weights` (B) for a batch drawn from group `group`.
    func weigh(_ batch: SequenceBatch, group: Int, weights: Floats) throws
    /// Gives dL/dw (B) for the last `weigh` of `group`; the weigher updates itself.
    func feedback(dWeights: UnsafePointer<Float>, B: Int, group: Int) throws
}

/// w ≡ c for every sequence; learns nothing. With c = 1 a weighted trainer is base training.
public final class ConstantWeigher: SequenceWeigher {
    public let value: Float
    public let groups: Int
    private let groupOf: (Int) -> Int
    /// Number of `feedback` calls received (tests check the trainer calls back).
    public private(set) var feedbackCalls = 0

    public init(value: Float = 1, groups: Int = 1, groupOf: @escaping (Int) -> Int = { _ in 0 }) {
        self.value = value; self.groups = groups; self.groupOf = groupOf
    }

    public func group(ofInstance instance: Int) -> Int { groupOf(instance) }

    public func weigh(_ batch: SequenceBatch, group: Int, weights: Floats) throws {
        guard group >= 0 && group < groups else { throw SequenceWeigherError.unknownGroup(group, groups: groups) }
        weights.update(repeating: value, count: batch.B)
    }

    public func feedback(dWeights: UnsafePointer<Float>, B: Int, group: Int) throws {
        guard group >= 0 && group < groups else { throw SequenceWeigherError.unknownGroup(group, groups: groups) }
        feedbackCalls += 1
    }
}
