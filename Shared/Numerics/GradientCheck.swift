// Central finite-difference checking of backward passes (used by the tests of every layer and
// model, and available to later methods).

/// The outcome of comparing an analytic gradient with central finite differences.
public struct GradientCheckResult: CustomStringConvertible, Sendable {
    public let name: String
    /// Largest |analytic − numeric| / max(|analytic| + |numeric|, floor) over checked entries.
    public let maxError: Double
    public let worstIndex: Int
    public let analytic: Double
    public let numeric: Double
    public let checked: Int
    public let tolerance: Double
    /// ‖analytic − numeric‖₂ / (‖analytic‖₂ + ‖numeric‖₂) over the checked entries.
    public let normError: Double
    public var passed: Bool { maxError <= tolerance && maxError.isFinite && normError <= tolerance / 2 }
    public var description: String {
        "\(name): max error \(maxError) at \(worstIndex) (analytic \(analytic), numeric \(numeric)), norm error \(normError), \(checked) entries, tolerance \(tolerance)"
    }
}

public enum GradientCheck {
    /// Perturbs `x[i]` by ±eps for up to `maxEntries` indices (all when count ≤ maxEntries, else an
    /// evenly strided subset), evaluates `f` (a scalar computed in double from the forward pass),
    /// and compares (f(x+eps) − f(x−eps)) / 2eps with `analytic[i]`. The error of an entry is
    /// |a − n| / max(|a| + |n|, floorFraction · max|n|, 1e-7) — relative, with a floor for entries
    /// that are ~0 against the gradient's scale (where float32 rounding in f dominates the
    /// difference quotient). It passes when the worst entry's error is ≤ tolerance and the
    /// whole tensor's norm error ≤ tolerance / 2.
    public static func check(_ name: String, x: Floats, analytic: UnsafePointer<Float>, count: Int,
                             eps: Float = 1e-2, tolerance: Double = 1e-2, floorFraction: Double = 1e-2, maxEntries: Int = 256,
                             f: () -> Double) -> GradientCheckResult {
        let stride = max(1, count / maxEntries)
        var indices: [Int] = []
        var i = 0
        while i < count { indices.append(i); i += stride }
        var numeric = [Double](repeating: 0, count: indices.count)
        for (k, idx) in indices.enumerated() {
            let orig = x[idx]
            x[idx] = orig + eps
            let fp = f()
            x[idx] = orig - eps
            let fm = f()
            x[idx] = orig
            // the actual step taken in float32
            let h = Double(orig + eps) - Double(orig - eps)
            numeric[k] = (fp - fm) / h
        }
        let scale = numeric.map(abs).max() ?? 0
        let floor = max(floorFraction * scale, 1e-7)
        var worst = 0.0, wi = 0, wa = 0.0, wn = 0.0
        var diff2 = 0.0, a2 = 0.0, n2 = 0.0
        for (k, idx) in indices.enumerated() {
            let a = Double(analytic[idx]), n = numeric[k]
            diff2 += (a - n) * (a - n); a2 += a * a; n2 += n * n
            let err = abs(a - n) / max(abs(a) + abs(n), floor)
            if err > worst || err.isNaN { worst = err.isNaN ? .infinity : err; wi = idx; wa = a; wn = n }
        }
        return GradientCheckResult(name: name, maxError: worst, worstIndex: wi, analytic: wa, numeric: wn,
                                   checked: indices.count, tolerance: tolerance,
                                   normError: diff2 == 0 ? 0 : diff2.squareRoot() / (a2.squareRoot() + n2.squareRoot()))
    }
}
