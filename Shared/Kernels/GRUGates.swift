// The GRU's gate arithmetic for the rows of one time step, forward and backward (PyTorch's gate
// order r | z | n; equations and cache layout in Numerics' GRU.swift, which runs the recurrence
// and the matrix products around these). Rows are consecutive: row b of a step starts b · 3H
// floats into g, hh, di, dg and b · H floats into hp, o, go, dh. Compiled twice (see
// VectorMath.swift): callers name the build, `Kernels.gruGatesForward` or
// `KernelsAVX2.gruGatesForward`. Only pointers and integers cross these two functions, never
// SIMD values, so code built for baseline x86-64 can call the AVX2 build (only where
// KernelChoice.current is .avx2).

/// Forward for `rows` rows: g holds the input pre-activations x·W_iᵀ + b_i and receives
/// r | z | n after activation; hh = h_{t−1}·W_hᵀ + b_h; hp = h_{t−1} (nil at t = 0, h₋₁ = 0);
/// o receives h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.
public func gruGatesForward(g: UnsafeMutablePointer<Float>, hh: UnsafePointer<Float>, hp: UnsafePointer<Float>?,
                            o: UnsafeMutablePointer<Float>, rows: Int, H: Int) {
    let H3 = 3 * H
    for b in 0..<rows {
        let g = g + b * H3, hh = hh + b * H3, o = o + b * H
        let prev = hp.map { $0 + b * H }
        var j = 0
        while j < H {
            let r = sigmoid8(load8(g, j, H) + load8(hh, j, H))
            let z = sigmoid8(load8(g + H, j, H) + load8(hh + H, j, H))
            let n = tanh8(load8(g + 2 * H, j, H) + r * load8(hh + 2 * H, j, H))
            let h = prev.map { load8($0, j, H) } ?? SIMD8<Float>()
            store8(g, j, H, r); store8(g + H, j, H, z); store8(g + 2 * H, j, H, n)
            store8(o, j, H, (1 - z) * n + z * h)
            j += 8
        }
    }
}

/// Backward for `rows` rows: from the step's gates g = r | z | n, hh, hp (nil at t = 0), the
/// output gradient go and the running gradient dh (both added: dh_t), writes the gradients of the
/// input pre-activations di = dr' | dz' | dn' and of hh, dg = dr' | dz' | dn' ⊙ r; replaces dh
/// with dh_t ⊙ z (the direct part of ∂h_t/∂h_{t−1}; the caller adds dg · W_hh); adds to
/// sums = Σ dr' | Σ dz' | Σ dn' | Σ dn' ⊙ r over the rows (the bias gradients).
public func gruGatesBackward(g: UnsafePointer<Float>, hh: UnsafePointer<Float>, hp: UnsafePointer<Float>?,
                             go: UnsafePointer<Float>, dh: UnsafeMutablePointer<Float>,
                             di: UnsafeMutablePointer<Float>, dg: UnsafeMutablePointer<Float>,
                             sums: UnsafeMutablePointer<Float>, rows: Int, H: Int) {
    let H3 = 3 * H
    for b in 0..<rows {
        let g = g + b * H3, hh = hh + b * H3, go = go + b * H, dhb = dh + b * H
        let di = di + b * H3, dg = dg + b * H3
        let prev = hp.map { $0 + b * H }
        var j = 0
        while j < H {
            let r = load8(g, j, H), z = load8(g + H, j, H), n = load8(g + 2 * H, j, H)
            let dht = load8(go, j, H) + load8(dhb, j, H)
            let hprev = prev.map { load8($0, j, H) } ?? SIMD8<Float>()
            let dn = dht * (1 - z), dz = dht * (hprev - n)
            let dnp = dn * (1 - n * n), dzp = dz * z * (1 - z)
            let drp = dnp * load8(hh + 2 * H, j, H) * r * (1 - r)
            store8(di, j, H, drp); store8(di + H, j, H, dzp); store8(di + 2 * H, j, H, dnp)
            store8(dg, j, H, drp); store8(dg + H, j, H, dzp); store8(dg + 2 * H, j, H, dnp * r)
            store8(dhb, j, H, dht * z)
            store8(sums, j, H, load8(sums, j, H) + drp); store8(sums + H, j, H, load8(sums + H, j, H) + dzp)
            store8(sums + 2 * H, j, H, load8(sums + 2 * H, j, H) + dnp)
            store8(sums + 3 * H, j, H, load8(sums + 3 * H, j, H) + dnp * r)
            j += 8
        }
    }
}
