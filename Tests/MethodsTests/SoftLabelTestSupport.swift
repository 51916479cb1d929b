import XCTest
import Numerics
import Models
import Data
import Training
@testable import Methods

/// Test-owned float buffer (a class, so closures capture a reference).
final class FBuf {
    let p: Floats
    let n: Int
    init(_ n: Int, fill: Float = 0) { self.n = n; p = .allocate(capacity: max(n, 1)); p.initialize(repeating: fill, count: max(n, 1)) }
    init(random n: Int, seed: UInt64, scale: Float = 1) {
        self.n = n; p = .allocate(capacity: max(n, 1))
        var rng = RNG(seed: seed)
        for i in 0..<n { p[i] = rng.normal() * scale }
    }
    deinit { p.deallocate() }
    var array: [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
}

/// A small SASRec (fast in debug builds).
func labelsSASRec(items: Int, maxLength: Int = 8, seed: UInt64 = 1) -> SASRec {
    var c = SASRecConfig(itemCount: items)
    c.maxLength = maxLength; c.dim = 16; c.blocks = 1; c.heads = 2; c.inner = 32
    c.hiddenDropout = 0.1; c.attentionDropout = 0.1; c.seed = seed
    return SASRec(c)
}

/// Users walking one of a few fixed cycles over the items, with some noise: learnable.
func cyclicDataset(users: Int = 60, items: Int = 24, length: Int = 14, seed: UInt64 = 7) -> SequenceDataset {
    var rng = SplitMix64(seed: seed)
    var seqs: [[Int32]] = []
    for u in 0..<users {
        let stride = 1 + u % 3, start = rng.bounded(items)
        var s: [Int32] = []
        for t in 0..<length {
            if rng.bounded(10) == 0 { s.append(Int32(1 + rng.bounded(items))) }
            else { s.append(Int32(1 + (start + t * stride) % items)) }
        }
        seqs.append(s)
    }
    return SequenceDataset(sequences: seqs, itemCount: items)
}

/// A loop configured for quick tests.
func quickLoop(_ data: SequenceDataset, epochs: Int, maxLength: Int = 8, lr: Float = 5e-3) -> LabelLoop {
    var c = LoopConfig()
    c.maxEpochs = epochs; c.batchSize = 32; c.maxLength = maxLength; c.learningRate = lr; c.seed = 3
    c.scheme = .prefixes   // the label methods' objectives read one row per sequence
    return LabelLoop(data: data, config: c)
}

/// A weigher that hands out fixed weights and records the gradient it gets back (one group).
final class FixedWeigher: SequenceWeigher {
    let w: [Float]
    var dW: [Float] = []
    init(_ w: [Float]) { self.w = w }
    func weigh(_ batch: SequenceBatch, id: BatchID, weights: Floats) throws { for b in 0..<batch.B { weights[b] = w[b] } }
    func feedback(dWeights: UnsafePointer<Float>, B: Int, id: BatchID) throws {
        dW = Array(UnsafeBufferPointer(start: dWeights, count: B))
    }
}

/// Checks a weighted step against L(w) = Σ w_b ℓ_b / Σ w_b over the rows' own losses ℓ: the loss
/// itself, and each dL/dw_b the weigher got back against central differences of L.
func assertNormalisedWeightGradient(loss: Double, dW: [Float], weights: [Float], rowLosses l: [Double],
                                    lossAccuracy: Double, gradientAccuracy: Double,
                                    file: StaticString = #filePath, line: UInt = #line) {
    func L(_ w: [Double]) -> Double { zip(w, l).map(*).reduce(0, +) / w.reduce(0, +) }
    XCTAssertEqual(loss, L(weights.map(Double.init)), accuracy: lossAccuracy, file: file, line: line)
    for b in 0..<weights.count {
        var wp = weights.map(Double.init), wm = wp
        wp[b] += 1e-4; wm[b] -= 1e-4
        XCTAssertEqual(Double(dW[b]), (L(wp) - L(wm)) / 2e-4, accuracy: gradientAccuracy, "dL/dw[\(b)]",
                       file: file, line: line)
    }
}
