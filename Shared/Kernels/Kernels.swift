// The baseline x86-64 build of the element-wise kernels (VectorMath.swift, GRUGates.swift;
// KernelsAVX2 is the AVX2 build of the same files), and e^x for Numerics' own loops.

/// e^x for eight lanes (see exp8), inlined into the caller (transparent: as `@inlinable` the
/// optimiser left it a call per eight lanes in Numerics' softmax loops).
@_transparent
public func expLanes(_ x: SIMD8<Float>) -> SIMD8<Float> { exp8(x) }
