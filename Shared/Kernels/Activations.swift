// GELU and the shifted exponential sum, element-wise over a flat array, forward and backward
// side by side. Compiled twice (see VectorMath.swift): Numerics' geluForward, geluBackward and
// expShifted pick the build. Only pointers, integers and a Float cross these functions.

/// erf(x) for eight lanes: a rational function x · P(x²) / Q(x²) on x clamped to [−4, 4], where
/// erf is ±1 in single precision (the minimax form XLA and Eigen use; absolute error below
/// 4e-7 against libm's erff; KernelChoiceTests pins it). libm's erff is a call per element and kept
/// the GELU loops scalar: they were 18 % of an all-position SASRec step.
@_transparent
func erf8(_ a: SIMD8<Float>) -> SIMD8<Float> {
    var x = a.replacing(with: 4, where: a .> 4)
    x.replace(with: -4, where: x .< -4)
    let x2 = x * x
    var p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08
    p = x2 * p + -2.10102402082508e-06
    p = x2 * p + -5.69250639462346e-05
    p = x2 * p + -7.34990630326855e-04
    p = x2 * p + -2.95459980854025e-03
    p = x2 * p + -1.60960333262415e-02
    var q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04
    q = x2 * q + -1.68282697438203e-03
    q = x2 * q + -7.37332916720468e-03
    q = x2 * q + -1.42647390514189e-02
    return x * p / q
}

/// Exact-form GELU x · Φ(x), Φ(x) = ½ (1 + erf(x / √2)); Φ is written to `cdf` when given.
public func geluForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                        cdf: UnsafeMutablePointer<Float>?, n: Int) {
    var j = 0
    while j < n {
        let x = load8(inp, j, n)
        let phi = 0.5 * (1 + erf8(x * 0.70710678118654752))
        if let cdf { store8(cdf, j, n, phi) }
        store8(out, j, n, x * phi)
        j += 8
    }
}

/// dinp += dout · (Φ(x) + x · φ(x)), φ the standard normal density; `cdf` is the forward's Φ,
/// or nil to recompute it.
public func geluBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                         cdf: UnsafePointer<Float>?, n: Int) {
    var j = 0
    while j < n {
        let x = load8(inp, j, n)
        let phi = cdf.map { load8($0, j, n) } ?? 0.5 * (1 + erf8(x * 0.70710678118654752))
        let pdf = 0.3989422804014327 * exp8(-0.5 * x * x)
        store8(dinp, j, n, load8(dinp, j, n) + load8(dout, j, n) * (phi + x * pdf))
        j += 8
    }
}

/// out[i] = e^(x[i] − shift) (out may alias x, or be nil to only sum); returns Σ out[i].
public func expShiftedSum(out: UnsafeMutablePointer<Float>?, x: UnsafePointer<Float>, shift: Float, n: Int) -> Float {
    var acc = SIMD8<Float>()
    var j = 0
    while j + 8 <= n {
        let e = exp8(load8(x, j, n) - shift)
        if let out { store8(out, j, n, e) }
        acc += e
        j += 8
    }
    if j < n {
        // missing lanes load as 0; shift them to −∞ so they add nothing
        var t = load8(x, j, n) - shift
        for l in (n - j)..<8 { t[l] = -.infinity }
        let e = exp8(t)
        if let out { store8(out, j, n, e) }
        acc += e
    }
    return acc.sum()
}
