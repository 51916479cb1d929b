// The baseline x86-64 build of the element-wise kernels: the entry points Numerics calls when
// the process runs the baseline copy (KernelChoice), and e^x for Numerics' own loops.

/// e^x for eight lanes (see exp8), inlined into the caller (transparent: as `@inlinable` the
/// optimiser left it a call per eight lanes in Numerics' softmax loops).
@_transparent
public func expLanes(_ x: SIMD8<Float>) -> SIMD8<Float> { exp8(x) }

/// The GRU gates forward for `rows` consecutive rows of one step (see gateRowsForward).
public func gruGatesForward(g: UnsafeMutablePointer<Float>, hh: UnsafePointer<Float>, hp: UnsafePointer<Float>?,
                            o: UnsafeMutablePointer<Float>, rows: Int, H: Int) {
    gateRowsForward(g: g, hh: hh, hp: hp, o: o, rows: rows, H: H)
}

/// The GRU gates backward for `rows` consecutive rows of one step (see gateRowsBackward).
public func gruGatesBackward(g: UnsafePointer<Float>, hh: UnsafePointer<Float>, hp: UnsafePointer<Float>?,
                             go: UnsafePointer<Float>, dh: UnsafeMutablePointer<Float>,
                             di: UnsafeMutablePointer<Float>, dg: UnsafeMutablePointer<Float>,
                             sums: UnsafeMutablePointer<Float>, rows: Int, H: Int) {
    gateRowsBackward(g: g, hh: hh, hp: hp, go: go, dh: dh, di: di, dg: dg, sums: sums, rows: rows, H: H)
}
