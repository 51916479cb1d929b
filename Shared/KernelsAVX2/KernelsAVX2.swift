// The AVX2 build of the element-wise kernels: VectorMath.swift and GRUGates.swift here are links
// to Kernels' files, and this module compiles with `-target-cpu haswell` on x86-64 (see
// Package.swift). Only pointers and integers cross these entry points, never SIMD values, so
// callers built for baseline x86-64 can call them. Call only where KernelChoice.current is .avx2.

/// The GRU gates forward, AVX2 build (see gateRowsForward).
public func gruGatesForwardAVX2(g: UnsafeMutablePointer<Float>, hh: UnsafePointer<Float>, hp: UnsafePointer<Float>?,
                                o: UnsafeMutablePointer<Float>, rows: Int, H: Int) {
    gateRowsForward(g: g, hh: hh, hp: hp, o: o, rows: rows, H: H)
}

/// The GRU gates backward, AVX2 build (see gateRowsBackward).
public func gruGatesBackwardAVX2(g: UnsafePointer<Float>, hh: UnsafePointer<Float>, hp: UnsafePointer<Float>?,
                                 go: UnsafePointer<Float>, dh: UnsafeMutablePointer<Float>,
                                 di: UnsafeMutablePointer<Float>, dg: UnsafeMutablePointer<Float>,
                                 sums: UnsafeMutablePointer<Float>, rows: Int, H: Int) {
    gateRowsBackward(g: g, hh: hh, hp: hp, go: go, dh: dh, di: di, dg: dg, sums: sums, rows: rows, H: H)
}
