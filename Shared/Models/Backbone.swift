// Backbones encode a batch of item sequences into K user vectors per sequence; an item's score is
// the maximum over the K vectors of the inner product with its embedding (K = 1 for SASRec and
// GRU4Rec; the DSS encoder and multi-interest models use K > 1).
//
// Sequences are right-padded (RecBole's layout): items (B, T) holds each sequence's items from
// position 0, then padding id 0; lengths (B) counts the real items (1 ≤ length ≤ T).
import Numerics

public protocol Backbone: AnyObject {
    /// Paper casing, e.g. "SASRec".
    var name: String { get }
    var parameters: ParameterSet { get }
    /// Items are 1...itemCount; 0 is padding.
    var itemCount: Int { get }
    /// Channels of user vectors and item embeddings (C).
    var dim: Int { get }
    /// User vectors per sequence (K).
    var interests: Int { get }
    /// Positions per sequence (T).
    var maxLength: Int { get }
    /// The item table (itemCount + 1, C); row 0 is padding. Scores use rows 1...itemCount.
    var itemTable: Floats { get }
    /// The gradient view of `itemTable`; heads accumulate into it.
    var itemTableGrad: Floats { get }
    /// The generator dropout draws from (seeded by the model's config; reproducible).
    var rng: RNG { get set }
    /// Encodes B sequences: with `.last`, into user vectors (B, K, C); with `.every`, into the
    /// output at every position (B, T, C) (K = 1 only). The pointer stays valid until the next
    /// forward. `training` turns dropout on and keeps what `backward` needs.
    func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool,
                 readout: Readout) -> UnsafePointer<Float>
    /// Accumulates parameter gradients for the last training forward, given the gradient on what
    /// it returned: (B, K, C) after `.last`, (B, T, C) after `.every` (zero at padding positions).
    func backward(dUser: UnsafePointer<Float>)
}

/// Which positions a forward returns.
public enum Readout: String, Sendable, Equatable {
    /// Each sequence's user vectors at its last real position, (B, K, C): scoring, and training
    /// on one target per sequence (the prefix scheme).
    case last
    /// The output at every position, (B, T, C), K = 1: position p of a causal encoder has seen
    /// items 0...p and predicts item p + 1 (all-position training). Padding positions hold
    /// values no loss may read.
    case every
}

extension Backbone {
    /// User vectors (B, K, C) at each sequence's last real position.
    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool) -> UnsafePointer<Float> {
        forward(items: items, lengths: lengths, B: B, training: training, readout: .last)
    }

    /// Eval-mode user vectors of a batch into `out`: (B, K, C) at each sequence's last position,
    /// or with `rows` (K = 1) the (R, C) outputs at each row's sequence and position, from one
    /// `.every` forward. A causal encoder's output at position p of a sequence equals the
    /// `.last` output of its prefix 0...p, so a row scores as its prefix would.
    public func encode(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, rows: ScoredRows?, into out: Floats) {
        guard let rows else {
            out.update(from: forward(items: items, lengths: lengths, B: B, training: false), count: B * interests * dim)
            return
        }
        precondition(interests == 1, "\(name) gives \(interests) user vectors per sequence, not one per position")
        let every = forward(items: items, lengths: lengths, B: B, training: false, readout: .every)
        let T = maxLength, C = dim
        for r in 0..<rows.count {
            let b = Int(rows.sequences[r]), t = Int(rows.positions[r])
            precondition(b >= 0 && b < B && t >= 0 && t < Int(lengths[b]), "row \(r) reads sequence \(b) position \(t) outside the batch")
            (out + r * C).update(from: every + (b * T + t) * C, count: C)
        }
    }

    /// Rows 1...N of the item table: the (N, C) matrix scores are taken against.
    public var scoringTable: UnsafePointer<Float> { UnsafePointer(itemTable + dim) }
}

/// The rows a loss scores in a batch when they are not one per sequence (all-position
/// training): row r reads sequence `sequences[r]` up to position `positions[r]` and predicts the
/// item after it. Pointers are valid for the call they are passed to.
public struct ScoredRows {
    public let sequences: UnsafePointer<Int32>
    public let positions: UnsafePointer<Int32>
    /// Rows R.
    public let count: Int
    /// The batch's sequences B, which `sequences` index.
    public let batchSize: Int
    public init(sequences: UnsafePointer<Int32>, positions: UnsafePointer<Int32>, count: Int, batchSize: Int) {
        self.sequences = sequences; self.positions = positions; self.count = count; self.batchSize = batchSize
    }
}

/// Grows-only storage for per-batch activations: allocated for the largest batch seen, reused by
/// every later batch of that size or smaller (nothing is allocated per step).
/// Shared with the methods' own layers.
public final class Workspace {
    public private(set) var capacity = 0
    public private(set) var slab: Slab? = nil
    public init() {}
    /// Returns true when it (re)allocated: the caller then re-carves its views.
    public func ensure(_ B: Int, sizes: (Int) -> [Int]) -> Bool {
        if B <= capacity, slab != nil { return false }
        capacity = B
        slab = Slab(sizes(B))
        return true
    }
}
