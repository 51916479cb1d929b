// Optimisers: one flat loop over every parameter of a ParameterSet (llm.c style).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Learning-rate schedules, indexed by epoch (0-based).
public enum LearningRateSchedule: Sendable, Equatable {
    case constant(Float)
    /// lr · gamma^(epoch / stepSize)
    case step(initial: Float, stepSize: Int, gamma: Float)

    public func rate(epoch: Int) -> Float {
        switch self {
        case .constant(let lr): return lr
        case .step(let lr, let size, let gamma): return lr * powf(gamma, Float(epoch / max(size, 1)))
        }
    }
}

/// Adam as PyTorch's `torch.optim.Adam` (weight decay added to the gradient, L2) or, with
/// `decoupled`, AdamW (weight decay applied to the weights).
public final class Adam {
    public var learningRate: Float
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decoupled: Bool
    public private(set) var step = 0
    private let state: Slab    // m (count) | v (count)
    public let parameters: ParameterSet

    public init(parameters: ParameterSet, learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0, decoupled: Bool = false) {
        self.parameters = parameters
        self.learningRate = learningRate; self.beta1 = beta1; self.beta2 = beta2
        self.eps = eps; self.weightDecay = weightDecay; self.decoupled = decoupled
        state = Slab([parameters.count, parameters.count])
    }

    /// One update from the gradients in `parameters.grads`.
    public func update() {
        step += 1
        let lr = learningRate, b1 = beta1, b2 = beta2, eps = eps, wd = weightDecay, dec = decoupled
        let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
        let p = parameters.values, g = parameters.grads, m = state.views[0], v = state.views[1]
        let stepSize = lr / c1, c2s = c2.squareRoot()
        // weight decay is decided once, outside the loop, so the loop is straight-line SIMD
        let mode: Adam.Decay = wd == 0 ? .none : dec ? .decoupled : .l2
        Threads.parallelFor(parameters.count, minPerChunk: 1 << 16) { lo, hi in
            switch mode {
            case .none: Adam.kernel(p, g, m, v, lo, hi, lr: lr, wd: 0, b1: b1, b2: b2, eps: eps, stepSize: stepSize, c2s: c2s, mode: .none)
            case .l2: Adam.kernel(p, g, m, v, lo, hi, lr: lr, wd: wd, b1: b1, b2: b2, eps: eps, stepSize: stepSize, c2s: c2s, mode: .l2)
            case .decoupled: Adam.kernel(p, g, m, v, lo, hi, lr: lr, wd: wd, b1: b1, b2: b2, eps: eps, stepSize: stepSize, c2s: c2s, mode: .decoupled)
            }
        }
    }

    enum Decay { case none, l2, decoupled }

    /// torch.optim.Adam's update for elements lo..<hi, eight lanes at a time; the same
    /// operations in the same order per element as the scalar tail, so lanes and tail agree
    /// bit for bit.
    @inline(__always)
    static func kernel(_ p: Floats, _ g: Floats, _ m: Floats, _ v: Floats, _ lo: Int, _ hi: Int,
                       lr: Float, wd: Float, b1: Float, b2: Float, eps: Float, stepSize: Float, c2s: Float, mode: Decay) {
        @inline(__always) func ld(_ x: Floats, _ i: Int) -> SIMD8<Float> {
            UnsafeRawPointer(x).loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        }
        @inline(__always) func st(_ x: Floats, _ i: Int, _ y: SIMD8<Float>) {
            UnsafeMutableRawPointer(x).storeBytes(of: y, toByteOffset: 4 * i, as: SIMD8<Float>.self)
        }
        var i = lo
        while i + 8 <= hi {
            var gi = ld(g, i), pi = ld(p, i)
            switch mode {
            case .none: break
            case .l2: gi += wd * pi
            case .decoupled: pi -= lr * wd * pi
            }
            let mi = b1 * ld(m, i) + (1 - b1) * gi
            let vi = b2 * ld(v, i) + (1 - b2) * gi * gi
            st(m, i, mi); st(v, i, vi)
            st(p, i, pi - stepSize * mi / (sqrt8(vi) / c2s + eps))
            i += 8
        }
        while i < hi {
            var gi = g[i], pi = p[i]
            switch mode {
            case .none: break
            case .l2: gi += wd * pi
            case .decoupled: pi -= lr * wd * pi
            }
            let mi = b1 * m[i] + (1 - b1) * gi
            let vi = b2 * v[i] + (1 - b2) * gi * gi
            m[i] = mi; v[i] = vi
            p[i] = pi - stepSize * mi / (vi.squareRoot() / c2s + eps)
            i += 1
        }
    }

    public func reset() { step = 0; state.zero() }

    /// The moments m and v in the parameter file format (entries "m" and "v", each of the
    /// parameter count), for checkpoints; the step count is kept by the caller.
    public func momentsSerialized() -> [UInt8] {
        let moments = ParameterSet([("m", [parameters.count]), ("v", [parameters.count])])
        moments.values.update(from: state.base, count: 2 * parameters.count)
        return moments.serialized()
    }

    /// Puts back moments from `momentsSerialized()` and the step count they were taken at.
    public func restore(moments bytes: [UInt8], step: Int) throws(ParameterFileError) {
        let moments = ParameterSet([("m", [parameters.count]), ("v", [parameters.count])])
        try moments.load(bytes: bytes)
        state.base.update(from: moments.values, count: 2 * parameters.count)
        self.step = step
    }
}

/// Adagrad as PyTorch's `torch.optim.Adagrad` (no lr decay, accumulator starts at `initialAccumulator`).
public final class Adagrad {
    public var learningRate: Float
    public let eps: Float, weightDecay: Float
    private let state: Slab   // sum of squares (count)
    public let parameters: ParameterSet

    /// The running sums of squared gradients (count), saved and restored with the parameters.
    public var accumulators: Floats { state.base }

    public init(parameters: ParameterSet, learningRate: Float = 1e-2, eps: Float = 1e-10, weightDecay: Float = 0,
                initialAccumulator: Float = 0) {
        self.parameters = parameters
        self.learningRate = learningRate; self.eps = eps; self.weightDecay = weightDecay
        state = Slab([parameters.count])
        state.base.update(repeating: initialAccumulator, count: parameters.count)
    }

    public func update() {
        let p = parameters.values, g = parameters.grads, s = state.views[0]
        for i in 0..<parameters.count {
            var gi = g[i]
            if weightDecay != 0 { gi += weightDecay * p[i] }
            s[i] += gi * gi
            p[i] -= learningRate * gi / (s[i].squareRoot() + eps)
        }
    }
}
