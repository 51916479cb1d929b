// Eight-lane transcendental functions for the numerics' element-wise kernels.
//
// This file and GRUGates.swift are compiled twice: here for baseline x86-64 and, through the
// links in Shared/KernelsAVX2, for AVX2 (see KernelChoice). Each module gets its own copy under
// its own symbol names, so a baseline caller can never be linked to an AVX2 body. The functions
// here take and return SIMD8 values, whose calling convention differs between the two builds
// (two SSE registers or one AVX register), so they stay internal to each build; modules above
// call the kernels of GRUGates.swift, or expLanes (Kernels only).

/// e^x for eight lanes (Cephes expf: range reduction by ln 2, degree-6 polynomial; relative
/// error ~1 ulp); lanes below −87.3 (including −∞) give 0.
///
/// Written with adds, multiplies, compares and selects only, so it compiles to straight-line
/// vector code on baseline x86-64: the standard library's `clamped`, `rounded(.down)` and
/// `SIMD8<Int32>(_:rounding:)` go lane by lane through generic conversions (they were most of
/// the time of a full softmax). Floor and float → int use the 1.5 · 2²³ trick, exact for the
/// clamped range, so results equal the lane-wise version bit for bit. No fused multiply-adds:
/// the baseline and AVX2 copies give the same bits.
@_transparent @usableFromInline
func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let lo = SIMD8<Float>(repeating: -87.3), hi = SIMD8<Float>(repeating: 88.3)
    let magic = SIMD8<Float>(repeating: 12_582_912)   // 1.5 · 2²³: adding it rounds to an integer
    var xc = x.replacing(with: lo, where: x .< lo)
    xc.replace(with: hi, where: xc .> hi)
    // fx = floor(xc · log2 e + 0.5): round to nearest, then step down where that rounded up
    let v = xc * 1.44269504088896341 + 0.5
    var fx = (v + magic) - magic
    fx.replace(with: fx - 1, where: fx .> v)
    var r = xc - fx * 0.693359375
    r = r - fx * -2.12194440e-4
    let z = r * r
    var y = SIMD8<Float>(repeating: 1.9875691500e-4)
    y = y * r + 1.3981999507e-3
    y = y * r + 8.3334519073e-3
    y = y * r + 4.1665795894e-2
    y = y * r + 1.6666665459e-1
    y = y * r + 5.0000001201e-1
    y = y * z + r + 1
    // fx + 1.5 · 2²³ holds fx in its low mantissa bits: 2^fx = ((fx + 127) << 23) as float bits
    let n = unsafeBitCast(fx + magic, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127
    let pow2 = unsafeBitCast(n &<< 23, to: SIMD8<Float>.self)
    return (y * pow2).replacing(with: 0, where: x .< lo)
}

// exp8, sigmoid8 and tanh8 are @_transparent, not @inline(__always): under the latter the
// optimiser kept one of them out of line (a call per eight lanes, with the constants reloaded:
// 8 % of a GRU4Rec training step in a profile).

/// σ(x) for eight lanes.
@_transparent
func sigmoid8(_ x: SIMD8<Float>) -> SIMD8<Float> { 1 / (1 + exp8(-x)) }

/// tanh(x) = 1 − 2 / (1 + e^(2x)) for eight lanes (absolute error ~1e-7; exp8 saturates for
/// large |x|, giving ±1).
@_transparent
func tanh8(_ x: SIMD8<Float>) -> SIMD8<Float> { 1 - 2 / (1 + exp8(x + x)) }

/// Eight lanes from p[j...] (fewer when j + 8 > n; missing lanes are 0).
@inline(__always)
func load8(_ p: UnsafePointer<Float>, _ j: Int, _ n: Int) -> SIMD8<Float> {
    if j + 8 <= n { return UnsafeRawPointer(p).loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self) }
    var v = SIMD8<Float>()
    for l in 0..<(n - j) { v[l] = p[j + l] }
    return v
}

/// Stores the lanes of v to p[j...] (only those below n).
@inline(__always)
func store8(_ p: UnsafeMutablePointer<Float>, _ j: Int, _ n: Int, _ v: SIMD8<Float>) {
    if j + 8 <= n { UnsafeMutableRawPointer(p).storeBytes(of: v, toByteOffset: 4 * j, as: SIMD8<Float>.self); return }
    for l in 0..<(n - j) { p[j + l] = v[l] }
}
