// DSS's sequence encoder φ (dss.md §3.3): a single-head SASRec whose outputs at every position
// (not only the last) feed the intention-disentanglement layer, giving K vectors per sequence.
// The transformer part is `Models.SASRec` itself (post-LN blocks, GELU, dropout, learned
// positions, shared item table) with one head, built to return every position; the layer's
// parameters live in the same set, so one optimiser trains both. Serving score = max over the
// K vectors (the `Backbone` contract), through the *input* β set.
// Shapes: B batch, T = maxLength, C = dim, K = interests, N = itemCount, BT = B·T.
import Numerics
import Models

public struct DSSEncoderConfig: Sendable, Equatable, Codable {
    public var itemCount: Int
    public var maxLength = 50
    public var dim = 64
    public var blocks = 2
    public var inner = 256
    /// K, the number of intentions (the paper's grid: 1...8).
    public var interests = 4
    public var hiddenDropout: Float = 0.5
    public var attentionDropout: Float = 0.5
    public var layerNormEps: Float = 1e-12
    public var initStd: Float = 0.02
    public var seed: UInt64 = 1
    public init(itemCount: Int) { self.itemCount = itemCount }

    /// The transformer's configuration: the protocol's SASRec with one head.
    var transformer: SASRecConfig {
        var c = SASRecConfig(itemCount: itemCount)
        c.maxLength = maxLength; c.dim = dim; c.blocks = blocks; c.heads = 1; c.inner = inner
        c.hiddenDropout = hiddenDropout; c.attentionDropout = attentionDropout
        c.layerNormEps = layerNormEps; c.initStd = initStd; c.seed = seed
        return c
    }
}

public final class DSSEncoder: Backbone {
    public let config: DSSEncoderConfig
    /// z₁…z_t: SASRec read out at every position, its parameter set holding the layer's too.
    public let transformer: SASRec
    public let disentangle: DisentangleLayer
    public var parameters: ParameterSet { transformer.parameters }
    public var rng: RNG {
        get { transformer.rng }
        set { transformer.rng = newValue }
    }
    public var name: String { "DSS-SASRec" }
    public var itemCount: Int { config.itemCount }
    public var dim: Int { config.dim }
    public var interests: Int { config.interests }
    public var maxLength: Int { config.maxLength }
    public var itemTable: Floats { transformer.itemTable }
    public var itemTableGrad: Floats { transformer.itemTableGrad }

    private let work = Workspace()
    private var dz: Floats! = nil          // (B, T, C) gradient on the transformer's outputs
    private var z: UnsafePointer<Float>? = nil, lastB = 0

    public init(_ config: DSSEncoderConfig) {
        self.config = config
        let C = config.dim, T = config.maxLength
        transformer = SASRec(config.transformer, extraParameters: DisentangleLayer.parameterSpecs(dim: C, interests: config.interests, maxLength: T))
        disentangle = DisentangleLayer(parameters: transformer.parameters, dim: C, interests: config.interests, maxLength: T,
                                       eps: config.layerNormEps)
        var r = RNG(seed: config.seed).derived(0xD55)
        disentangle.resetParameters(initStd: config.initStd, rng: &r)
    }

    /// SASRec's initialisation (normal(0, initStd), biases 0, LayerNorm 1 / 0) and the layer's.
    public func resetParameters() {
        transformer.resetParameters()
        var r = RNG(seed: config.seed).derived(0xD55)
        disentangle.resetParameters(initStd: config.initStd, rng: &r)
    }

    /// The per-position outputs z (B, T, C) of the transformer for the last forward.
    public var positionOutputs: UnsafePointer<Float> {
        guard let z else { preconditionFailure("no forward yet") }
        return z
    }

    /// φ (B, K, C); there is no per-position readout (K vectors summarise the whole sequence).
    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, training: Bool,
                        readout: Readout) -> UnsafePointer<Float> {
        precondition(readout == .last, "the DSS encoder reads out K intention vectors per sequence, not every position")
        return forward(items: items, lengths: lengths, labelFrom: B, B: B, training: training)
    }

    /// Encodes B sequences into φ (B, K, C), each read out at its last position; rows b >=
    /// labelFrom are encoded as seq2seq labels (the label β set).
    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, labelFrom: Int, B: Int, training: Bool) -> UnsafePointer<Float> {
        let rows = (0..<B).map { Int32($0) }, positions = (0..<B).map { lengths[$0] - 1 }
        return forward(items: items, lengths: lengths, B: B, rows: rows, positions: positions, labelFrom: labelFrom, training: training)
    }

    /// One causal forward of B sequences read out at Q places: readout q is row `rows[q]` at
    /// `positions[q]`, the prefix ending there (all-position training reads every target's
    /// position). Readouts q >= labelFrom use the label β set. Returns φ (Q, K, C).
    public func forward(items: UnsafePointer<Int32>, lengths: UnsafePointer<Int32>, B: Int, rows: [Int32], positions: [Int32],
                        labelFrom: Int, training: Bool) -> UnsafePointer<Float> {
        let T = config.maxLength, C = config.dim
        if work.ensure(B, sizes: { B in [B * T * C] }) { dz = work.slab!.views[0] }
        let out = transformer.forward(items: items, lengths: lengths, B: B, training: training, readout: .every)
        z = out; lastB = B
        return disentangle.forward(z: out, lengths: lengths, B: B, rows: rows, positions: positions, labelFrom: labelFrom)
    }

    /// dUser (Q, K, C): the gradient on the last forward's readouts.
    public func backward(dUser: UnsafePointer<Float>) {
        precondition(z != nil, "backward before forward")
        let T = config.maxLength, C = config.dim
        dz.update(repeating: 0, count: lastB * T * C)
        disentangle.backward(dOut: dUser, dz: dz)
        transformer.backward(dUser: dz)
    }
}
