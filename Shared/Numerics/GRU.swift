// One GRU layer (PyTorch's gate order r | z | n and equations), time-major:
//   r = σ(x·W_irᵀ + b_ir + h·W_hrᵀ + b_hr)     z = σ(x·W_izᵀ + b_iz + h·W_hzᵀ + b_hz)
//   n = tanh(x·W_inᵀ + b_in + r ⊙ (h·W_hnᵀ + b_hn))   h' = (1 − z) ⊙ n + z ⊙ h,   h₀ = 0
// Shapes: inp (T, B, I); wih (3H, I); whh (3H, H); bih, bhh (3H) or nil; out (T, B, H);
// caches gates (T, B, 3H) = r | z | n after activation, gh (T, B, 3H) = h·W_hᵀ + b_h.
// Time-major because the recurrence walks the batch one step at a time: a step's rows are
// then one contiguous block, which the hardware prefetcher streams, where batch-first rows lie
// T·3H floats apart and every row of every step starts cold (on ML-100K's GRU4Rec shapes the
// gate loops spent most of their time waiting for such loads).
// Only the first `steps` positions are computed (steps = longest sequence in a right-padded
// batch); later outputs stay 0. With `lengths`, row b stops after its own lengths[b] positions
// (its later outputs stay 0 and get no gradient): the padding after a right-padded sequence
// never reaches its last real position, so this skips work (a fifth of it on ML-100K's prefixes)
// without changing any used output. Rows must then be ordered so that lengths do not increase
// within each thread's chunk of the batch (`GRUBatchOrder` arranges a batch so); the rows still
// running at a step are a prefix of the chunk, and one product serves them.
// Multi-layer GRUs chain layers (out of one is inp of the next).
//
// Rows of the batch never mix in the recurrence, so forward and backward split the batch into
// one contiguous chunk per thread, and each thread runs every time step of its chunk on its
// own: one small sgemm per step (on the chunk's thread, see Threads.parallelFor)
// and the gate arithmetic, with no synchronisation between steps. Everything that mixes rows
// is done outside the recurrence, over all steps at once: the input projections (forward),
// and the weight and bias gradients (backward: one sgemm for W_hh over all steps instead of
// one per step). The gate arithmetic of a step is in Kernels (GRUGates.swift), built twice, for
// baseline x86-64 and for AVX2; a process runs the AVX2 build where the CPU has it (KernelChoice),
// with the same bits either way.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Kernels
import KernelsAVX2

/// Rows of a chunk [lo, hi) still running at step t (a prefix of the chunk); `rows` is the
/// count at the step before.
@inline(__always)
private func runningRows(_ rows: Int, lo: Int, t: Int, lengths: UnsafePointer<Int32>?) -> Int {
    guard let lengths else { return rows }
    var n = rows
    while n > 0 && Int(lengths[lo + n - 1]) <= t { n -= 1 }
    return n
}

/// Checks the order `lengths` must have: non-increasing within each chunk `parallelFor` makes.
private func checkChunkOrder(_ lengths: UnsafePointer<Int32>?, B: Int) {
    guard let lengths else { return }
    let chunks = Threads.chunks(B, minPerChunk: GRUBatchOrder.minRowsPerChunk)
    for c in 0..<chunks {
        for b in Threads.chunk(c, of: chunks, B).dropFirst() {
            precondition(lengths[b] <= lengths[b - 1], "GRU rows must be ordered by length within a chunk (see GRUBatchOrder)")
        }
    }
}

public func gruForward(out: Floats, gates: Floats, gh: Floats, inp: UnsafePointer<Float>,
                       wih: UnsafePointer<Float>, whh: UnsafePointer<Float>,
                       bih: UnsafePointer<Float>?, bhh: UnsafePointer<Float>?,
                       steps: Int, lengths: UnsafePointer<Int32>? = nil, B: Int, T: Int, I: Int, H: Int) {
    let H3 = 3 * H
    checkChunkOrder(lengths, B: B)
    // input projections for every position that runs, at once (rows mix here)
    linearForward(out: gates, inp: inp, weight: wih, bias: bih, N: steps * B, C: I, OC: H3)
    Threads.parallelFor(B, minPerChunk: GRUBatchOrder.minRowsPerChunk) { _, lo, hi in
        var rows = hi - lo
        for t in 0..<T {
            rows = t < steps ? runningRows(rows, lo: lo, t: t, lengths: lengths) : 0
            // positions this chunk's rows do not run output 0
            (out + (t * B + lo + rows) * H).update(repeating: 0, count: (hi - lo - rows) * H)
            if rows == 0 { continue }
            // gh_t = b_hh + h_{t−1} · W_hhᵀ for this chunk's running rows (h_{−1} = 0)
            let ght = gh + (t * B + lo) * H3
            for b in 0..<rows {
                if let bhh { (ght + b * H3).update(from: bhh, count: H3) } else { (ght + b * H3).update(repeating: 0, count: H3) }
            }
            if t > 0 {
                sgemm(transB: true, M: rows, N: H3, K: H, A: out + ((t - 1) * B + lo) * H, lda: H, B: whh, ldb: H,
                      beta: 1, C: ght, ldc: H3)
            }
            let g = gates + (t * B + lo) * H3, o = out + (t * B + lo) * H
            let hp = t > 0 ? UnsafePointer(out + ((t - 1) * B + lo) * H) : nil
            if avx2Kernels {
                KernelsAVX2.gruGatesForward(g: g, hh: ght, hp: hp, o: o, rows: rows, H: H)
            } else {
                Kernels.gruGatesForward(g: g, hh: ght, hp: hp, o: o, rows: rows, H: H)
            }
        }
    }
}

/// Floats `gruBackward` needs in its `biasSums` work buffer for a batch of B rows: one 4H block
/// per thread chunk, at most B / GRUBatchOrder.minRowsPerChunk chunks whatever the thread count.
public func gruBiasSumsCount(B: Int, H: Int) -> Int { max(1, B / GRUBatchOrder.minRowsPerChunk) * 4 * H }

/// Accumulates dinp (may be nil), dwih, dwhh, dbih, dbhh from dout (T, B, H). Work buffers:
/// dgi (T, B, 3H), dgh (T, B, 3H), dh (B, H), biasSums (gruBiasSumsCount(B:H:)), overwritten.
public func gruBackward(dinp: Floats?, dwih: Floats, dwhh: Floats, dbih: Floats?, dbhh: Floats?,
                        dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, out: UnsafePointer<Float>,
                        gates: UnsafePointer<Float>, gh: UnsafePointer<Float>,
                        wih: UnsafePointer<Float>, whh: UnsafePointer<Float>,
                        dgi: Floats, dgh: Floats, dh: Floats, biasSums: Floats,
                        steps: Int, lengths: UnsafePointer<Int32>? = nil, B: Int, T: Int, I: Int, H: Int) {
    let H3 = 3 * H
    checkChunkOrder(lengths, B: B)
    dh.update(repeating: 0, count: B * H)
    // Bias gradients are summed per chunk inside the recurrence (while the gate gradients are in
    // registers) and the chunk sums added in chunk order, instead of two more passes over all
    // steps · B rows on one thread: r, z and n parts of dgi, then the n part of dgh (its r and z
    // parts equal dgi's).
    let chunks = Threads.chunks(B, minPerChunk: GRUBatchOrder.minRowsPerChunk)
    biasSums.update(repeating: 0, count: chunks * 4 * H)
    // the recurrence, per chunk of rows: dgi = d(input pre-activations), dgh = d(gh), and
    // dh ← dh_t · ∂h_t/∂h_{t−1} = dh_t ⊙ z + dgh_t · W_hh; a row joins at its last position.
    // Positions a row does not run get zero gradients (the products below read all steps · B
    // rows; positions from `steps` on are not read at all).
    Threads.parallelFor(B, minPerChunk: GRUBatchOrder.minRowsPerChunk) { c, lo, hi in
        let sums = biasSums + c * 4 * H
        var t = steps - 1
        while t >= 0 {
            let rows = runningRows(hi - lo, lo: lo, t: t, lengths: lengths)
            if rows < hi - lo {
                (dgi + (t * B + lo + rows) * H3).update(repeating: 0, count: (hi - lo - rows) * H3)
                (dgh + (t * B + lo + rows) * H3).update(repeating: 0, count: (hi - lo - rows) * H3)
            }
            // this step's rows of the chunk in each buffer
            let g = gates + (t * B + lo) * H3, hh = gh + (t * B + lo) * H3, go = dout + (t * B + lo) * H
            let di = dgi + (t * B + lo) * H3, dg = dgh + (t * B + lo) * H3, dhc = dh + lo * H
            let hp = t > 0 ? out + ((t - 1) * B + lo) * H : nil
            if avx2Kernels {
                KernelsAVX2.gruGatesBackward(g: g, hh: hh, hp: hp, go: go, dh: dhc, di: di, dg: dg, sums: sums, rows: rows, H: H)
            } else {
                Kernels.gruGatesBackward(g: g, hh: hh, hp: hp, go: go, dh: dhc, di: di, dg: dg, sums: sums, rows: rows, H: H)
            }
            if t > 0 && rows > 0 {
                sgemm(M: rows, N: H, K: H3, A: dg, lda: H3, B: whh, ldb: H, beta: 1, C: dhc, ldc: H)
            }
            t -= 1
        }
    }
    for c in 0..<chunks {
        let sums = biasSums + c * 4 * H
        if let dbih { for k in 0..<H3 { dbih[k] += sums[k] } }
        if let dbhh {
            for k in 0..<(2 * H) { dbhh[k] += sums[k] }
            for k in 0..<H { dbhh[2 * H + k] += sums[3 * H + k] }
        }
    }
    // dW_hh = Σ_{t ≥ 1, b} dgh(t, b)ᵀ · h(t − 1, b) in one product: row (t, b) of dgh is B rows
    // after row (t − 1, b) of out (h_{−1} = 0 adds nothing, so step 0 is left out)
    if steps > 1 {
        sgemm(transA: true, M: H3, N: H, K: (steps - 1) * B, A: dgh + B * H3, lda: H3, B: out, ldb: H, beta: 1, C: dwhh, ldc: H)
    }
    linearBackward(dinp: dinp, dweight: dwih, dbias: nil, dout: dgi, inp: inp, weight: wih, N: steps * B, C: I, OC: H3)
}

/// Arranges a batch for `gruForward`'s `lengths`: a permutation of the rows such that each
/// thread's chunk holds rows of non-increasing length, with long and short rows dealt evenly
/// over the chunks (so that threads finish together). `order[p]` is the original row placed at
/// position p. Ties keep their original order, so the arrangement is a function of the lengths
/// and the thread count alone.
public enum GRUBatchOrder {
    /// Fewest rows a GRU thread chunk takes (smaller batches run on fewer threads).
    public static let minRowsPerChunk = 16

    public static func order(lengths: UnsafePointer<Int32>, B: Int) -> [Int] {
        let byLength = (0..<B).sorted { lengths[$0] != lengths[$1] ? lengths[$0] > lengths[$1] : $0 < $1 }
        let chunks = Threads.chunks(B, minPerChunk: minRowsPerChunk)
        var next = (0..<chunks).map { Threads.chunk($0, of: chunks, B).lowerBound }   // next free position per chunk
        let end = (0..<chunks).map { Threads.chunk($0, of: chunks, B).upperBound }
        var order = [Int](repeating: 0, count: B)
        var c = 0
        for row in byLength {
            while next[c] == end[c] { c = (c + 1) % chunks }           // a full chunk takes no more
            order[next[c]] = row
            next[c] += 1
            c = (c + 1) % chunks
        }
        return order
    }
}
