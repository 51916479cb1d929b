// The seam between a student and its teachers: soft labels and top-k mining for a batch of
// sequences. The in-process implementation runs teacher backbones here; a remote one (a teacher
// process behind the broker) implements the same protocol, and no method changes when it moves.
//
// Shapes: B batch, T positions, R rows, N items; logits and labels are (R, N), column j = item
// j + 1. A batch's rows are its sequences at their last positions (R = B), or, under
// all-position training, the `ScoredRows` a loss scores (a teacher reads each row's prefix).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Numerics
import Models
import Training

/// Why a soft-label source could not answer.
public struct SoftLabelError: Error, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "soft-label source: \(reason)" }
}

/// Teacher outputs for batches of right-padded sequences.
public protocol SoftLabelSource: AnyObject {
    /// Items N; every answer covers ids 1...N.
    var itemCount: Int { get }
    /// Announces what a later `logits` call for training batch `batch` will ask for (the same
    /// items, lengths and rows; pointers valid for this call only), before the trainer consumes
    /// the current batch: a remote source sends the request now, so its answer travels while the
    /// student computes. An in-process source may ignore it (the default).
    func prefetch(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                  batch: BatchID) throws
    /// The teacher's logits e (R, N) for sequences items (B, T), lengths (B), into `out`: one
    /// row per sequence (rows nil) or one per scored row. `batch` names the training batch, as
    /// announced to `prefetch` (nil outside training: mining, tests).
    func logits(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                batch: BatchID?, out: Floats) throws
    /// The top-k item ids by teacher logit (B, k), best first, ties to the lower id.
    func topK(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, k: Int,
              out: UnsafeMutablePointer<Int32>) throws
}

extension SoftLabelSource {
    public func prefetch(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                         batch: BatchID) throws {}

    /// The logits of one row per sequence, outside training.
    public func logits(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, out: Floats) throws {
        try logits(items: items, lengths: lengths, B: B, T: T, rows: nil, batch: nil, out: out)
    }

    /// CSRec's soft labels (Eq. 14) r = ½ (softmax(e / τ) + onehot(target)) into `out` (R, N);
    /// `targets` (R) are the rows' observed items.
    public func softLabels(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, targets: UnsafePointer<Int32>,
                           B: Int, T: Int, rows: ScoredRows? = nil, batch: BatchID? = nil, temperature: Float, out: Floats) throws {
        try logits(items: items, lengths: lengths, B: B, T: T, rows: rows, batch: batch, out: out)
        SoftLabels.fromLogits(out, logits: UnsafePointer(out), targets: targets, temperature: temperature,
                              B: rows?.count ?? B, N: itemCount)
    }
}

/// The soft-label formula, free of any teacher.
public enum SoftLabels {
    /// r (B, N) = ½ (softmax(e / τ) + onehot(target)); `r` may alias `logits`. A target ≤ 0
    /// leaves the row as softmax(e / τ) alone (no observed item).
    public static func fromLogits(_ r: Floats, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>?,
                                  temperature: Float, B: Int, N: Int) {
        precondition(temperature > 0, "temperature must be positive")
        for b in 0..<B {
            let x = logits + b * N, out = r + b * N
            var m = -Float.infinity
            for j in 0..<N { m = max(m, x[j]) }
            var s: Float = 0
            for j in 0..<N { let e = expf((x[j] - m) / temperature); out[j] = e; s += e }
            let target = targets.map { Int($0[b]) } ?? 0
            let half: Float = target >= 1 ? 0.5 : 1
            for j in 0..<N { out[j] = out[j] / s * half }
            if target >= 1 { out[target - 1] += 0.5 }
        }
    }

    /// Top-k of one row (best first; equal scores to the lower id): a k-sized selection.
    public static func topK(row: UnsafePointer<Float>, N: Int, k: Int, out: UnsafeMutablePointer<Int32>) {
        // insertion into a sorted list of k: fine for the k ≤ a few hundred used here
        var n = 0
        for j in 0..<N {
            let s = row[j].isNaN ? -Float.infinity : row[j]
            if n == k {
                let last = out[k - 1]
                let ls = row[Int(last) - 1].isNaN ? -Float.infinity : row[Int(last) - 1]
                if !(s > ls) { continue }
                n -= 1
            }
            var p = n
            while p > 0 {
                let prev = out[p - 1]
                let ps = row[Int(prev) - 1].isNaN ? -Float.infinity : row[Int(prev) - 1]
                if s > ps { out[p] = prev; p -= 1 } else { break }
            }
            out[p] = Int32(j + 1)
            n += 1
        }
    }
}

/// The mean of several sources' logits, e = Σ_k e_k / m (CSRec's ensembles, Algorithms 1–2),
/// member by member. In-process teachers and teacher processes both average here, so an
/// ensemble gives the same bits wherever its members run.
public final class SoftLabelEnsemble: SoftLabelSource {
    public let members: [SoftLabelSource]
    public var itemCount: Int { members[0].itemCount }
    private var scratch: [Float] = []

    public init(members: [SoftLabelSource]) {
        precondition(!members.isEmpty, "at least one member")
        precondition(members.allSatisfy { $0.itemCount == members[0].itemCount }, "members share the item set")
        self.members = members
    }

    /// out (count) = x / m when k = 0, else out += x / m: member k of m's share of the mean.
    public static func accumulate(_ out: Floats, member x: UnsafePointer<Float>, k: Int, of m: Int, count: Int) {
        let w = 1 / Float(m)
        if k == 0 { for i in 0..<count { out[i] = w * x[i] } } else { for i in 0..<count { out[i] += w * x[i] } }
    }

    public func prefetch(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                         batch: BatchID) throws {
        for s in members { try s.prefetch(items: items, lengths: lengths, B: B, T: T, rows: rows, batch: batch) }
    }

    public func logits(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                       batch: BatchID?, out: Floats) throws {
        let count = (rows?.count ?? B) * itemCount, m = members.count
        if m == 1 { return try members[0].logits(items: items, lengths: lengths, B: B, T: T, rows: rows, batch: batch, out: out) }
        if scratch.count < count { scratch = [Float](repeating: 0, count: count) }
        try scratch.withUnsafeMutableBufferPointer { x in
            for (k, s) in members.enumerated() {
                try s.logits(items: items, lengths: lengths, B: B, T: T, rows: rows, batch: batch, out: x.baseAddress!)
                SoftLabelEnsemble.accumulate(out, member: x.baseAddress!, k: k, of: m, count: count)
            }
        }
    }

    public func topK(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, k: Int,
                     out: UnsafeMutablePointer<Int32>) throws {
        try SoftLabels.topK(of: self, items: items, lengths: lengths, B: B, T: T, k: k, out: out)
    }
}

extension SoftLabels {
    /// The top-k item ids (B, k) of any source's logits, best first, ties to the lower id.
    public static func topK(of source: SoftLabelSource, items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>,
                            B: Int, T: Int, k: Int, out: UnsafeMutablePointer<Int32>) throws {
        let N = source.itemCount
        guard k >= 1 && k <= N else { throw SoftLabelError("top-k: k \(k) outside 1...\(N)") }
        let e = Floats.allocate(capacity: B * N)
        defer { e.deallocate() }
        try source.logits(items: items, lengths: lengths, B: B, T: T, out: e)
        for b in 0..<B { topK(row: e + b * N, N: N, k: k, out: out + b * k) }
    }
}

/// In-process teachers: one teacher backbone's logits, or the mean of several (as
/// `SoftLabelEnsemble` averages). Teachers run in eval mode (no dropout).
public final class ModelSoftLabelSource: SoftLabelSource {
    public let teachers: [Backbone]
    public var itemCount: Int { teachers[0].itemCount }
    /// A teacher's user vectors for one batch's rows (grows to the largest batch).
    private var users: [Float] = []
    /// One teacher's logits while an ensemble averages (grows to the largest batch).
    private var scratch: [Float] = []

    public init(teachers: [Backbone]) {
        precondition(!teachers.isEmpty, "at least one teacher")
        precondition(teachers.allSatisfy { $0.itemCount == teachers[0].itemCount && $0.interests == 1 },
                     "teachers share the item set and give one user vector")
        self.teachers = teachers
    }

    public func logits(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, rows: ScoredRows?,
                       batch: BatchID?, out: Floats) throws {
        let N = itemCount, R = rows?.count ?? B, m = teachers.count
        // what a request can get wrong is an error, checked before any teacher runs
        for (k, g) in teachers.enumerated() where g.maxLength != T {
            throw SoftLabelError("teacher \(k) reads \(g.maxLength) positions, the batch has \(T)")
        }
        for r in 0..<(rows?.count ?? 0) {
            let b = Int(rows!.sequences[r]), t = Int(rows!.positions[r])
            guard b >= 0 && b < B && t >= 0 && t < Int(lengths[b]) else {
                throw SoftLabelError("row \(r) reads sequence \(b) position \(t), outside the batch of \(B) sequences")
            }
        }
        if m > 1 && scratch.count < R * N { scratch = [Float](repeating: 0, count: R * N) }
        for (k, g) in teachers.enumerated() {
            if users.count < R * g.dim { users = [Float](repeating: 0, count: R * g.dim) }
            users.withUnsafeMutableBufferPointer { u in
                g.encode(items: items, lengths: lengths, B: B, rows: rows, into: u.baseAddress!)
                scratch.withUnsafeMutableBufferPointer { x in
                    // e (R, N) = user (R, C) · table[1...N]ᵀ, straight into `out` for a single teacher
                    let e = m == 1 ? out : x.baseAddress!
                    sgemm(transB: true, M: R, N: N, K: g.dim, A: u.baseAddress!, lda: g.dim, B: g.scoringTable, ldb: g.dim,
                          C: e, ldc: N)
                    if m > 1 { SoftLabelEnsemble.accumulate(out, member: e, k: k, of: m, count: R * N) }
                }
            }
        }
    }

    public func topK(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, T: Int, k: Int,
                     out: UnsafeMutablePointer<Int32>) throws {
        try SoftLabels.topK(of: self, items: items, lengths: lengths, B: B, T: T, k: k, out: out)
    }
}
