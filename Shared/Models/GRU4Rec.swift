// GRU4Rec (Hidasi et al.; RecBole's sequential variant): item embeddings, embedding dropout,
// L GRU layers, a dense layer from the hidden size back to the embedding size; the user vector
// is dense(last layer's hidden state at the last real position), or with `Readout.every` the
// dense layer at every real position (zeros past a row's length).
// Shapes: B batch, T = maxLength, E = embedding size, Hd = hidden size, N = itemCount.
import Numerics

public struct GRU4RecConfig: Sendable, Equatable, Codable {
    public var itemCount: Int
    public var maxLength = 50
    public var embedding = 64
    public var hidden = 128
    public var layers = 1
    public var embeddingDropout: Float = 0.3
    /// GRU biases (b_ih, b_hh), initialised to 0 (the protocol; PyTorch's nn.GRU default).
    /// RecBole's own GRU4Rec builds its GRU with bias=False: set false to match it.
    public var gruBias = true
    public var seed: UInt64 = 1
    public init(itemCount: Int) { self.itemCount = itemCount }
}

public final class GRU4Rec: Backbone {
    public let config: GRU4RecConfig
    public let parameters: ParameterSet
    public var rng: RNG
    public var name: String { "GRU4Rec" }
    public var itemCount: Int { config.itemCount }
    public var dim: Int { config.embedding }
    public var interests: Int { 1 }
    public var maxLength: Int { config.maxLength }
    public var itemTable: Floats { parameters.value("item_embedding") }
    public var itemTableGrad: Floats { parameters.grad("item_embedding") }

    private let work = Workspace()
    private var emb: Floats! = nil, mask: Floats! = nil     // (B, T, E)
    private var seq: Floats! = nil, dSeq: Floats! = nil     // (T, B, E): emb time-major, as the GRU runs
    private var outs: [Floats] = [], gates: [Floats] = [], ghs: [Floats] = []   // per layer (T, B, Hd), (T, B, 3Hd) ×2
    private var last: Floats! = nil, user: Floats! = nil     // (B, Hd), (B, E); (B, T, ·) when read out at every position
    private var dLast: Floats! = nil, dOut: Floats! = nil, dIn: Floats! = nil, dEmb: Floats! = nil
    private var dgi: Floats! = nil, dgh: Floats! = nil, dh: Floats! = nil, biasSums: Floats! = nil
    // The batch as the GRU runs it: rows arranged by GRUBatchOrder (order[p] = caller's row at
    // position p), so that each row stops at its own length.
    private var order: [Int] = [], rowItems: [Int32] = [], rowLengths: [Int32] = []
    private var lastB = 0, lastSteps = 0, ready = false, lastReadout = Readout.last

    public init(_ config: GRU4RecConfig) {
        self.config = config
        let E = config.embedding, Hd = config.hidden
        var specs: [(name: String, shape: [Int])] = [("item_embedding", [config.itemCount + 1, E])]
        for l in 0..<config.layers {
            specs += [("gru.\(l).weight_ih", [3 * Hd, l == 0 ? E : Hd]), ("gru.\(l).weight_hh", [3 * Hd, Hd])]
            if config.gruBias { specs += [("gru.\(l).bias_ih", [3 * Hd]), ("gru.\(l).bias_hh", [3 * Hd])] }
        }
        specs += [("dense.weight", [E, Hd]), ("dense.bias", [E])]
        parameters = ParameterSet(specs)
        rng = RNG(seed: config.seed)
        resetParameters()
    }

    /// RecBole: xavier_normal for the item table, xavier_uniform for GRU and dense weights, biases 0.
    public func resetParameters() {
        var r = RNG(seed: config.seed).derived(0x6E0)
        let E = config.embedding, Hd = config.hidden
        Init.xavierNormal(itemTable, fanOut: config.itemCount + 1, fanIn: E, rng: &r)
        for l in 0..<config.layers {
            Init.xavierUniform(parameters.value("gru.\(l).weight_ih"), fanOut: 3 * Hd, fanIn: l == 0 ? E : Hd, rng: &r)
            Init.xavierUniform(parameters.value("gru.\(l).weight_hh"), fanOut: 3 * Hd, fanIn: Hd, rng: &r)
            if config.gruBias {
                Init.constant(parameters.value("gru.\(l).bias_ih"), 3 * Hd, 0)
                Init.constant(parameters.value("gru.\(l).bias_hh"), 3 * Hd, 0)
            }
        }
        Init.xavierUniform(parameters.value("dense.weight"), fanOut: E, fanIn: Hd, rng: &r)
        Init.constant(parameters.value("dense.bias"), E, 0)
    }

    private func allocate(_ B: Int) {
        let T = config.maxLength, E = config.embedding, Hd = config.hidden, L = config.layers, BT = B * T
        guard work.ensure(B, sizes: { _ in
            [BT * E, BT * E, BT * E, BT * E] + Array([[Int]](repeating: [BT * Hd, BT * 3 * Hd, BT * 3 * Hd], count: L).joined())
                + [BT * Hd, BT * E, BT * Hd, BT * Hd, BT * Hd, BT * E, BT * 3 * Hd, BT * 3 * Hd, B * Hd, gruBiasSumsCount(B: B, H: Hd)]
        }) else { return }
        let v = work.slab!.views
        emb = v[0]; mask = v[1]; seq = v[2]; dSeq = v[3]
        outs = (0..<L).map { v[4 + 3 * $0] }; gates = (0..<L).map { v[5 + 3 * $0] }; ghs = (0..<L).map { v[6 + 3 * $0] }
        let k = 4 + 3 * L
        last = v[k]; user = v[k + 1]; dLast = v[k + 2]; dOut = v[k + 3]; dIn = v[k + 4]; dEmb = v[k + 5]
        dgi = v[k + 6]; dgh = v[k + 7]; dh = v[k + 8]; biasSums = v[k + 9]
    }

    private func bias(_ name: String, _ view: (String) -> Floats) -> Floats? { config.gruBias ? view(name) : nil }

    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool,
                        readout: Readout) -> UnsafePointer<Float> {
        allocate(B)
        let T = config.maxLength, E = config.embedding, Hd = config.hidden, BT = B * T
        var steps = 0
        for b in 0..<B {
            let n = Int(lengths[b])
            precondition(n >= 1 && n <= T, "sequence length must be in 1...maxLength")
            steps = max(steps, n)
        }
        order = GRUBatchOrder.order(lengths: lengths, B: B)
        if rowItems.count < BT { rowItems = [Int32](repeating: 0, count: BT); rowLengths = [Int32](repeating: 0, count: B) }
        rowItems.withUnsafeMutableBufferPointer { ri in
            for p in 0..<B {
                (ri.baseAddress! + p * T).update(from: items + order[p] * T, count: T)
                rowLengths[p] = lengths[order[p]]
            }
        }
        embeddingForward(out: emb, ids: rowItems, table: itemTable, N: BT, C: E)
        dropoutForward(out: emb, mask: mask, inp: emb, p: training ? config.embeddingDropout : 0, n: BT * E, rng: &rng)
        swapLeadingAxes(out: seq, inp: emb, rows: B, cols: T, block: E)
        var inp: Floats = seq, I = E
        rowLengths.withUnsafeBufferPointer { rl in
            for l in 0..<config.layers {
                let ps = parameters
                gruForward(out: outs[l], gates: gates[l], gh: ghs[l], inp: inp, wih: ps.value("gru.\(l).weight_ih"),
                           whh: ps.value("gru.\(l).weight_hh"), bih: bias("gru.\(l).bias_ih", ps.value), bhh: bias("gru.\(l).bias_hh", ps.value),
                           steps: steps, lengths: rl.baseAddress!, B: B, T: T, I: I, H: Hd)
                inp = outs[l]; I = Hd
            }
        }
        // the rows the dense layer reads, in the caller's order: (B, Hd) or (B, T, Hd)
        let rows = readout == .last ? B : BT
        if readout == .last {
            for p in 0..<B { (last + order[p] * Hd).update(from: inp + ((Int(rowLengths[p]) - 1) * B + p) * Hd, count: Hd) }
        } else {
            zeroFill(last, BT * Hd)
            for p in 0..<B {
                let row = order[p] * T
                for t in 0..<Int(rowLengths[p]) {
                    let from: Int = (t * B + p) * Hd, to: Int = (row + t) * Hd
                    (last + to).update(from: inp + from, count: Hd)
                }
            }
        }
        linearForward(out: user, inp: last, weight: parameters.value("dense.weight"), bias: parameters.value("dense.bias"), N: rows, C: Hd, OC: E)
        lastB = B; lastSteps = steps; ready = true; lastReadout = readout
        return UnsafePointer(user)
    }

    public func backward(dUser: UnsafePointer<Float>) {
        precondition(ready, "backward before forward")
        let B = lastB, T = config.maxLength, E = config.embedding, Hd = config.hidden, BT = B * T
        let ps = parameters
        let rows = lastReadout == .last ? B : BT
        dLast.update(repeating: 0, count: rows * Hd)
        linearBackward(dinp: dLast, dweight: ps.grad("dense.weight"), dbias: ps.grad("dense.bias"), dout: dUser, inp: last,
                       weight: ps.value("dense.weight"), N: rows, C: Hd, OC: E)
        zeroFill(dOut, BT * Hd)
        if lastReadout == .last {
            for p in 0..<B { (dOut + ((Int(rowLengths[p]) - 1) * B + p) * Hd).update(from: dLast + order[p] * Hd, count: Hd) }
        } else {
            for p in 0..<B {
                let row = order[p] * T
                for t in 0..<Int(rowLengths[p]) {
                    let from: Int = (row + t) * Hd, to: Int = (t * B + p) * Hd
                    (dOut + to).update(from: dLast + from, count: Hd)
                }
            }
        }
        rowLengths.withUnsafeBufferPointer { rl in
            for l in stride(from: config.layers - 1, through: 0, by: -1) {
                let inp: Floats = l == 0 ? seq : outs[l - 1], I = l == 0 ? E : Hd
                let dinp: Floats = l == 0 ? dSeq : dIn
                zeroFill(dinp, BT * I)
                gruBackward(dinp: dinp, dwih: ps.grad("gru.\(l).weight_ih"), dwhh: ps.grad("gru.\(l).weight_hh"),
                            dbih: bias("gru.\(l).bias_ih", ps.grad), dbhh: bias("gru.\(l).bias_hh", ps.grad),
                            dout: dOut, inp: inp, out: outs[l], gates: gates[l], gh: ghs[l],
                            wih: ps.value("gru.\(l).weight_ih"), whh: ps.value("gru.\(l).weight_hh"),
                            dgi: dgi, dgh: dgh, dh: dh, biasSums: biasSums, steps: lastSteps, lengths: rl.baseAddress!, B: B, T: T, I: I, H: Hd)
                if l > 0 { swap(&dOut, &dIn) }
            }
        }
        // dSeq holds d(dropped embeddings), time-major; back to the batch's order, through the
        // dropout mask into the table
        swapLeadingAxes(out: dEmb, inp: dSeq, rows: T, cols: B, block: E)
        for i in 0..<(BT * E) { dEmb[i] *= mask[i] }
        embeddingBackward(dtable: itemTableGrad, dout: dEmb, ids: rowItems, N: BT, C: E)
    }
}
