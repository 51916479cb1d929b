// DSS (dss.md §3.2): seq2item training with max over intentions plus latent seq2seq
// self-supervision against the encoded *reversed* future, keeping only the ⌈λ·B·K⌉ most
// confident (smallest-loss) seq2seq terms.
//
//   seq2item (Eq. 6):  ℓ_b = −max_k s(b, k, y_b) + log Σ_{j ∈ cand} Σ_k exp s(b, k, j),
//                      s(b, k, j) = h_j · φ_k(x_b) / τ; candidates = all N items (default, as the
//                      protocol's full softmax) or the batch's targets (the paper's in-batch form)
//   seq2seq (Eq. 3):   ℓ_{b,k} = −log softmax_{(b', k')}( ψ_{k'}(x_b') · φ_k(x_b) / τ )[(b, k)],
//                      ψ = the encoder on the reversed future with the label β set
//   (Eq. 4):           L_s2s = Σ over the ⌈λ·B·K⌉ smallest ℓ_{b,k}
//   L = (L_s2i + w_s2s · L_s2s) / B  (both as sums over the batch, as Eq. 7, divided by B)
//   DSS + CSRec:       seq2item becomes (1 − β)·ℓ_b + β·KL(r_b ‖ softmax_j max_k s(b, k, j)) with
//                      CSRec's soft labels r (Eq. 14 / 15), over all N items
// τ = √D as the paper. The future of a training instance (u, t) is the rest of u's *training*
// sequence from t on (the next item included), never validation or test items; reversed, it is
// truncated to the maxLength items nearest to t.
// Two schemes, as the loop's: prefixes (one instance per row, the paper's sampled (u, t)) and
// all positions (a window's every target is a row read out at its position; seq2item at every
// row, seq2seq on one row per window drawn uniformly, against that row's reversed future, so the
// in-batch softmax stays (B·K)² and each sequence contributes one (u, t) pair as in the paper).
// Under all positions seq2item is a mean over rows and seq2seq a mean over windows; under
// prefixes both are means over the B instances, as before.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Numerics
import Models
import Data
import Training

public struct DSSConfig: Sendable, Equatable {
    public enum Candidates: String, Sendable, Codable, CaseIterable {
        /// All N items (the protocol's full softmax, max over K in the numerator).
        case full
        /// The batch's targets (the paper's Eq. 6 as printed).
        case inBatch
    }
    /// How seq2item and seq2seq are scheduled.
    public enum Schedule: Sendable, Equatable {
        /// Both losses on every batch (the paper).
        case joint
        /// seq2seq alone for `pretrainEpochs` epochs, then seq2item alone (the public ports).
        case pretrainThenFinetune(pretrainEpochs: Int)
    }
    /// λ ∈ [0, 1]: the fraction of seq2seq terms kept (the paper's grid 0.05, 0.10, …, 1.0).
    public var lambda: Float = 0.5
    public var seq2seqWeight: Float = 1
    public var candidates: Candidates = .full
    public var schedule: Schedule = .joint
    public var learningRate: Float = 1e-3
    public var encoder: DSSEncoderConfig

    public init(itemCount: Int) { encoder = DSSEncoderConfig(itemCount: itemCount) }
}

public enum DSSLoss {
    /// The number of seq2seq terms kept: ⌈λ · B · K⌉ (clamped to 0...B·K). λ is a float32, so a
    /// product within 1e-6 of an integer counts as that integer (0.1 · 30 keeps 3, not 4).
    public static func keptCount(lambda: Float, B: Int, K: Int) -> Int {
        let n = (Double(lambda) * Double(B * K) - 1e-6).rounded(.up)
        return min(B * K, max(0, Int(n)))
    }

    /// Writes mask[i] = 1 for exactly `keep` terms with the smallest losses (ties to the lower
    /// index), 0 for the rest; returns the threshold τ (the largest kept loss, or −∞).
    @discardableResult
    public static func selectSmallest(losses: UnsafePointer<Float>, count n: Int, keep: Int, mask: Floats) -> Float {
        var order = Array(0..<n)
        order.sort { losses[$0] < losses[$1] || (losses[$0] == losses[$1] && $0 < $1) }
        mask.update(repeating: 0, count: n)
        var tau = -Float.infinity
        for i in order.prefix(keep) { mask[i] = 1; tau = max(tau, losses[i]) }
        return tau
    }

    /// Eq. 6 over M candidates: user (B, K, C), cand (M, C), positive column pos[b] ∈ 0..<M.
    /// losses (B) gets ℓ_b; the gradient of scale · Σ ℓ_b accumulates into dUser (B, K, C) and
    /// dCand (M, C). logits is a (B, K, M) work buffer. Returns scale · Σ ℓ_b.
    @discardableResult
    public static func seq2item(losses: Floats, dUser: Floats?, dCand: Floats?, user: UnsafePointer<Float>, cand: UnsafePointer<Float>,
                                pos: UnsafePointer<Int32>, logits: Floats, temperature: Float, scale: Float,
                                B: Int, K: Int, C: Int, M: Int) -> Double {
        let inv = 1 / temperature
        sgemm(transB: true, M: B * K, N: M, K: C, alpha: inv, A: user, lda: C, B: cand, ldb: C, C: logits, ldc: M)
        var total = 0.0
        for b in 0..<B {
            let row = logits + b * K * M, y = Int(pos[b])
            var mx = -Float.infinity
            for i in 0..<(K * M) { mx = max(mx, row[i]) }
            var s: Float = 0
            for i in 0..<(K * M) { s += expf(row[i] - mx) }
            let lse = mx + logf(s)
            var best = 0
            for k in 1..<K where row[k * M + y] > row[best * M + y] { best = k }
            losses[b] = lse - row[best * M + y]
            total += Double(losses[b])
            // gradient on the logits: softmax over (k, j) − onehot(best, y)
            for i in 0..<(K * M) { row[i] = expf(row[i] - lse) * scale }
            row[best * M + y] -= scale
        }
        if let dUser { sgemm(M: B * K, N: C, K: M, alpha: inv, A: logits, lda: M, B: cand, ldb: C, beta: 1, C: dUser, ldc: C) }
        if let dCand { sgemm(transA: true, M: M, N: C, K: B * K, alpha: inv, A: logits, lda: M, B: user, ldb: C, beta: 1, C: dCand, ldc: C) }
        return total * Double(scale)
    }

    /// CSRec's soft-label term on DSS's seq2item scores (DSS + CSRec): x_bj = max_k s(b, k, j),
    /// s = cand_j · user_{b,k} / temperature (the scores Eq. 6 uses, max over the K intentions as
    /// serving scores), ℓ_b = KL between softmax(x_b) and labels r_b (M) in `direction`. The
    /// gradient of scale · Σ ℓ_b reaches each (b, j) through its arg-max intention (ties to the
    /// lower k, as `FullSoftmaxHead`) and accumulates into dUser (B, K, C) and dCand (M, C).
    /// logits (B, K, M), scores and dScores (B, M) and argmax (B, M) are work buffers.
    /// Returns scale · Σ ℓ_b.
    @discardableResult
    public static func softLabelKL(losses: Floats, dUser: Floats?, dCand: Floats?, user: UnsafePointer<Float>, cand: UnsafePointer<Float>,
                                   labels: UnsafePointer<Float>, direction: KLDirection, logits: Floats, scores: Floats, dScores: Floats,
                                   argmax: UnsafeMutablePointer<Int32>, temperature: Float, scale: Float,
                                   B: Int, K: Int, C: Int, M: Int) -> Double {
        let inv = 1 / temperature
        sgemm(transB: true, M: B * K, N: M, K: C, alpha: inv, A: user, lda: C, B: cand, ldb: C, C: logits, ldc: M)
        for b in 0..<B {
            for j in 0..<M {
                var best = logits[b * K * M + j], arg: Int32 = 0
                for k in 1..<max(K, 1) { let v = logits[(b * K + k) * M + j]; if v > best { best = v; arg = Int32(k) } }
                scores[b * M + j] = best; argmax[b * M + j] = arg
            }
        }
        let total = softmaxKL(losses: losses, dlogits: dScores, logits: scores, target: labels, direction: direction,
                              weights: nil, scale: scale, B: B, V: M)
        guard dUser != nil || dCand != nil else { return total }
        // route d scores back to the arg-max intention of each (b, j)
        logits.update(repeating: 0, count: B * K * M)
        for b in 0..<B { for j in 0..<M { logits[(b * K + Int(argmax[b * M + j])) * M + j] = dScores[b * M + j] } }
        if let dUser { sgemm(M: B * K, N: C, K: M, alpha: inv, A: logits, lda: M, B: cand, ldb: C, beta: 1, C: dUser, ldc: C) }
        if let dCand { sgemm(transA: true, M: M, N: C, K: B * K, alpha: inv, A: logits, lda: M, B: user, ldb: C, beta: 1, C: dCand, ldc: C) }
        return total
    }

    /// Eq. 3–4: φ (B, K, C) inputs, ψ (B, K, C) encoded reversed futures. Keeps the
    /// ⌈λ·B·K⌉ smallest terms (mask (B·K) says which) and accumulates the gradient of
    /// scale · Σ_kept ℓ into dPhi, dPsi. losses (B·K); scores is a (B·K, B·K) work buffer.
    /// Returns scale · Σ_kept ℓ.
    @discardableResult
    public static func seq2seq(losses: Floats, mask: Floats, dPhi: Floats?, dPsi: Floats?, phi: UnsafePointer<Float>, psi: UnsafePointer<Float>,
                               scores: Floats, temperature: Float, lambda: Float, scale: Float, B: Int, K: Int, C: Int) -> Double {
        let n = B * K
        inBatchSoftmax(losses: losses, da: nil, db: nil, a: phi, bm: psi, scores: scores, temperature: temperature,
                       weights: nil, scale: 1, B: n, C: C)
        selectSmallest(losses: losses, count: n, keep: keptCount(lambda: lambda, B: B, K: K), mask: mask)
        return inBatchSoftmax(losses: losses, da: dPhi, db: dPsi, a: phi, bm: psi, scores: scores, temperature: temperature,
                              weights: mask, scale: scale, B: n, C: C)
    }
}

/// Reversed futures of training instances.
public struct DSSFutures: Sendable {
    /// (U) end of each user's training part: 1 + the largest training position (0 = no instance).
    public let trainEnd: [Int32]

    /// Every instance of `instances` (the training set) lies within its user's training part.
    public init(users: Int, instances: InstanceSet) {
        var e = [Int32](repeating: 0, count: users)
        for k in 0..<instances.count {
            let u = Int(instances.users[k])
            e[u] = max(e[u], instances.positions[k] + 1)
        }
        trainEnd = e
    }

    /// Writes the reversed future of instance `k` as a right-padded row of width L:
    /// [s[m−1], s[m−2], …, s[p]] with p = its position and m = min(trainEnd, p + L). Returns its length.
    @discardableResult
    public func fillReversed(instance k: Int, data: SequenceDataset, instances: InstanceSet, maxLength L: Int,
                             row: UnsafeMutablePointer<Int32>) -> Int {
        let u = Int(instances.users[k]), p = Int(instances.positions[k])
        let base = data.offsets[u]
        let m = min(Int(trainEnd[u]), p + L)
        let len = m - p
        precondition(len >= 1, "instance \(k) has no future inside the training part")
        for t in 0..<L { row[t] = t < len ? data.items[base + m - 1 - t] : 0 }
        return len
    }
}

/// One DSS optimisation step per batch (forward of inputs and reversed futures together,
/// both losses, backward, Adam).
public final class DSSTrainer {
    public let config: DSSConfig
    public let model: DSSEncoder
    public let optimizer: Adam
    public let futures: DSSFutures
    public let data: SequenceDataset
    public let instances: InstanceSet
    public let scheme: TrainingScheme
    /// Which losses the next steps use (`.joint`, or the two phases of pre-train-then-fine-tune).
    public enum Phase: Sendable { case joint, pretrain, finetune }
    public var phase: Phase
    /// Draws the row of each window whose future seq2seq contrasts (all positions); reset from
    /// the seed by `beginEpoch`, so an epoch's draws do not depend on earlier epochs.
    public private(set) var sampling: RNG
    private let capacity: Int
    private var rows: BatchRows
    private let items2: UnsafeMutablePointer<Int32>, lengths2: UnsafeMutablePointer<Int32>
    private let posCol: UnsafeMutablePointer<Int32>
    private let slab: Slab
    /// DSS + CSRec: CSRec's soft-label KL beside seq2item (nil: DSS alone).
    public let distillation: CSRecDistillation?
    // with `distillation`: labels, scores, dScores (R, N) | KL losses (R); arg-max intentions (R, N)
    private let kdSlab: Slab?, kdArgmax: UnsafeMutablePointer<Int32>?
    /// Losses of the last step: seq2item (with CSRec's KL when composed) and seq2seq (kept
    /// terms), each a mean (see the file's note); the KL part alone.
    public private(set) var lastSeq2Item = 0.0, lastSeq2Seq = 0.0, lastSoftLabelKL = 0.0

    public init(config: DSSConfig, data: SequenceDataset, instances: InstanceSet, maxBatch: Int = 256, scheme: TrainingScheme = .prefixes,
                distillation: CSRecDistillation? = nil) {
        // soft labels cover all N items; in-batch candidates score only the batch's targets
        precondition(distillation == nil || config.candidates == .full, "DSS + CSRec needs seq2item over all items (.full)")
        precondition(scheme == .prefixes || config.candidates == .full, "in-batch candidates are the prefix scheme's (B targets per batch)")
        self.config = config; self.data = data; self.instances = instances; self.distillation = distillation; self.scheme = scheme
        model = DSSEncoder(config.encoder)
        optimizer = Adam(parameters: model.parameters, learningRate: config.learningRate)
        futures = DSSFutures(users: data.userCount, instances: instances)
        if case .pretrainThenFinetune = config.schedule { phase = .pretrain } else { phase = .joint }
        sampling = RNG(seed: config.encoder.seed).derived(0x5E0)
        capacity = maxBatch
        let B = maxBatch, T = config.encoder.maxLength, K = config.encoder.interests, C = config.encoder.dim, N = config.encoder.itemCount
        let R = scheme == .allPositions ? B * T : B
        let M = config.candidates == .full ? N : B
        rows = BatchRows(capacity: R)
        items2 = .allocate(capacity: 2 * B * T); lengths2 = .allocate(capacity: 2 * B); posCol = .allocate(capacity: R)
        // dOut (R + B, K, C) | s2i losses (R) | logits (R, K, M) | cand (B, C) | dCand (B, C) | s2s losses (BK) | mask (BK)
        // | scores (BK)² | contrasted rows' φ and its gradient (B, K, C) ×2
        slab = Slab([(R + B) * K * C, R, R * K * M, B * C, B * C, B * K, B * K, B * K * B * K, B * K * C, B * K * C])
        kdSlab = distillation == nil ? nil : Slab([R * N, R * N, R * N, R])
        kdArgmax = distillation == nil ? nil : .allocate(capacity: R * N)
    }

    deinit { items2.deallocate(); lengths2.deallocate(); posCol.deallocate(); kdArgmax?.deallocate() }

    /// Updates the phase for `epoch` (0-based) under the configured schedule and resets the
    /// seq2seq draws for it.
    public func beginEpoch(_ epoch: Int) {
        switch config.schedule {
        case .joint: phase = .joint
        case .pretrainThenFinetune(let e): phase = epoch < e ? .pretrain : .finetune
        }
        sampling = RNG(seed: config.encoder.seed).derived(0x5E0 &+ UInt64(epoch))
    }

    /// One step on a batch of instances (prefixes; instances must index `instances`).
    @discardableResult
    public func step(_ batch: SequenceBatch) throws -> Double {
        try step(FilledBatch(items: batch.items, lengths: batch.lengths, targets: batch.targets, instances: batch.instances, B: batch.B))
    }

    /// One step on a batch as the loop's batcher fills it for this trainer's scheme (targets and
    /// instances per sequence, or per position for windows); returns the batch loss. Throws only
    /// what the soft-label source throws (DSS + CSRec).
    @discardableResult
    public func step(_ batch: FilledBatch) throws -> Double {
        let B = batch.B, T = config.encoder.maxLength, K = config.encoder.interests, C = config.encoder.dim, N = config.encoder.itemCount
        precondition(B <= capacity, "batch exceeds the trainer's shape")
        precondition(batch.instances != nil, "DSS needs the rows' instances (their futures)")
        let useS2S = phase != .finetune, useS2I = phase != .pretrain
        rows.gather(batch, scheme: scheme, T: T)
        let R = rows.count
        guard R > 0 else { return 0 }
        items2.update(from: batch.items, count: B * T)
        lengths2.update(from: batch.lengths, count: B)
        // readouts: every row at its position (input β set), then each contrasted future at its end
        var readRows = Array(rows.sequences.prefix(R)), readPositions = Array(rows.positions.prefix(R))
        var contrasted: [Int] = []   // the row (0..<R) whose future each seq2seq label encodes
        if useS2S {
            var r = 0
            while r < R {
                var end = r + 1
                while end < R && rows.sequences[end] == rows.sequences[r] { end += 1 }
                contrasted.append(scheme == .prefixes ? r : r + sampling.below(end - r))
                r = end
            }
            for (j, r) in contrasted.enumerated() {
                let len = futures.fillReversed(instance: Int(rows.instances[r]), data: data, instances: instances, maxLength: T, row: items2 + (B + j) * T)
                lengths2[B + j] = Int32(len)
                readRows.append(Int32(B + j)); readPositions.append(Int32(len - 1))
            }
        }
        let S = contrasted.count, Q = R + S
        let ps = model.parameters
        ps.zeroGrad()
        let out = model.forward(items: items2, lengths: lengths2, B: B + S, rows: readRows, positions: readPositions, labelFrom: R,
                                training: true)
        let v = slab.views
        let dOut = v[0]
        dOut.update(repeating: 0, count: Q * K * C)
        let tau = Float(C).squareRoot()
        var s2i = 0.0, s2s = 0.0, kl = 0.0
        if useS2I {
            let scale = 1 / Float(R)
            switch config.candidates {
            case .full:
                for r in 0..<R { posCol[r] = rows.targets[r] - 1 }
                // (1 − β)·seq2item + β·KL with CSRec; keep = 1 exactly for DSS alone
                let keep = distillation.map { 1 - $0.beta } ?? 1
                s2i = DSSLoss.seq2item(losses: v[1], dUser: dOut, dCand: model.itemTableGrad + C, user: out, cand: model.itemTable + C,
                                       pos: posCol, logits: v[2], temperature: tau, scale: scale * keep, B: R, K: K, C: C, M: N)
                if let d = distillation, let kd = kdSlab?.views, let argmax = kdArgmax {
                    try rows.targets.withUnsafeBufferPointer { tg in
                        try rows.sequences.withUnsafeBufferPointer { sq in try rows.positions.withUnsafeBufferPointer { pp in
                            let scored = scheme == .allPositions
                                ? ScoredRows(sequences: sq.baseAddress!, positions: pp.baseAddress!, count: R, batchSize: B) : nil
                            try d.source.softLabels(items: batch.items, lengths: batch.lengths, targets: tg.baseAddress!, B: B, T: T,
                                                    rows: scored, temperature: d.temperature, out: kd[0])
                        } }
                    }
                    kl = DSSLoss.softLabelKL(losses: kd[3], dUser: dOut, dCand: model.itemTableGrad + C, user: out,
                                             cand: model.itemTable + C, labels: kd[0], direction: d.direction, logits: v[2],
                                             scores: kd[1], dScores: kd[2], argmax: argmax, temperature: tau,
                                             scale: scale * d.beta, B: R, K: K, C: C, M: N)
                    s2i += kl
                }
            case .inBatch:
                let cand = v[3], dCand = v[4]
                for b in 0..<B {
                    (cand + b * C).update(from: model.itemTable + Int(batch.targets[b]) * C, count: C)
                    posCol[b] = Int32(b)
                }
                dCand.update(repeating: 0, count: B * C)
                s2i = DSSLoss.seq2item(losses: v[1], dUser: dOut, dCand: dCand, user: out, cand: cand, pos: posCol, logits: v[2],
                                       temperature: tau, scale: scale, B: B, K: K, C: C, M: B)
                let g = model.itemTableGrad
                for b in 0..<B { addInPlace(g + Int(batch.targets[b]) * C, dCand + b * C, C) }
            }
        }
        if useS2S {
            let KC = K * C, scale = 1 / Float(S) * config.seq2seqWeight
            let psi = out + R * KC, dPsi = dOut + R * KC
            if scheme == .prefixes {
                // row b is sequence b's only row: φ is the first B readouts as they stand
                s2s = DSSLoss.seq2seq(losses: v[5], mask: v[6], dPhi: dOut, dPsi: dPsi, phi: out, psi: psi, scores: v[7],
                                      temperature: tau, lambda: config.lambda, scale: scale, B: S, K: K, C: C)
            } else {
                let phi = v[8], dPhi = v[9]
                for (j, r) in contrasted.enumerated() { (phi + j * KC).update(from: out + r * KC, count: KC) }
                dPhi.update(repeating: 0, count: S * KC)
                s2s = DSSLoss.seq2seq(losses: v[5], mask: v[6], dPhi: dPhi, dPsi: dPsi, phi: phi, psi: psi, scores: v[7],
                                      temperature: tau, lambda: config.lambda, scale: scale, B: S, K: K, C: C)
                for (j, r) in contrasted.enumerated() { addInPlace(dOut + r * KC, dPhi + j * KC, KC) }
            }
        }
        model.backward(dUser: dOut)
        optimizer.update()
        lastSeq2Item = s2i; lastSeq2Seq = s2s; lastSoftLabelKL = kl
        return s2i + s2s
    }
}
