// Inner products of a few queries with items packed eight to a block (the retrieval index's
// small-batch path). Compiled twice, like Activations.swift: baseline x86-64 and AVX2.
//
// Packed layout: block j holds items 8j ..< 8j + 8, as C rows of eight lanes (component c of
// the eight items), so one multiply-add of a broadcast query component with a row scores eight
// items; a block (8 · C floats) stays in L1 while every query of the batch is scored against it,
// and the item table is read once per batch, unpacked by nobody.

/// out[b * 8 · blocks + 8j + l] = Σ_c queries[b * C + c] · packed[(j * C + c) * 8 + l] for
/// b < B, j < blocks. No fused multiply-adds: both builds give the same bits.
public func packedInnerProducts(out: UnsafeMutablePointer<Float>, queries: UnsafePointer<Float>, B: Int,
                                packed: UnsafePointer<Float>, blocks: Int, dim C: Int) {
    let width = 8 * blocks
    for j in 0..<blocks {
        let block = UnsafeRawPointer(packed + j * C * 8)
        var b = 0
        // two queries at a time share each loaded row
        while b + 2 <= B {
            let q0 = queries + b * C, q1 = q0 + C
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
            for c in 0..<C {
                let row = block.loadUnaligned(fromByteOffset: 32 * c, as: SIMD8<Float>.self)
                a0 += row * SIMD8(repeating: q0[c])
                a1 += row * SIMD8(repeating: q1[c])
            }
            UnsafeMutableRawPointer(out + b * width + 8 * j).storeBytes(of: a0, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(out + (b + 1) * width + 8 * j).storeBytes(of: a1, as: SIMD8<Float>.self)
            b += 2
        }
        if b < B {
            let q0 = queries + b * C
            var a0 = SIMD8<Float>()
            for c in 0..<C { a0 += block.loadUnaligned(fromByteOffset: 32 * c, as: SIMD8<Float>.self) * SIMD8(repeating: q0[c]) }
            UnsafeMutableRawPointer(out + b * width + 8 * j).storeBytes(of: a0, as: SIMD8<Float>.self)
        }
    }
}
