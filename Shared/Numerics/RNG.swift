// Seeded randomness: xoshiro256** seeded through SplitMix64. Same seed, same sequence, on every
// machine; no global state.

/// A reproducible pseudo-random generator (xoshiro256**).
public struct RNG: RandomNumberGenerator, Sendable {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64
    private var spareNormal: Float? = nil

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix(); s1 = splitmix(); s2 = splitmix(); s3 = splitmix()
    }

    /// The generator's whole state (four words, then 1 and the spare normal's bits when one is
    /// held, else 0 and 0), for checkpoints: `RNG(state:)` continues the sequence exactly.
    public var state: [UInt64] {
        [s0, s1, s2, s3, spareNormal == nil ? 0 : 1, UInt64(spareNormal?.bitPattern ?? 0)]
    }

    /// A generator that continues from a `state` taken earlier; nil if the words are not one.
    public init?(state: [UInt64]) {
        guard state.count == 6, state[4] <= 1, state[0...3].contains(where: { $0 != 0 }) else { return nil }
        s0 = state[0]; s1 = state[1]; s2 = state[2]; s3 = state[3]
        spareNormal = state[4] == 1 ? Float(bitPattern: UInt32(truncatingIfNeeded: state[5])) : nil
    }

    /// A generator for a named sub-stream, independent of how much this one has been used.
    public func derived(_ stream: UInt64) -> RNG {
        RNG(seed: (s0 ^ (stream &* 0xD1B5_4A32_D192_ED03)) &+ s3)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t
        s3 = (s3 << 45) | (s3 >> 19)
        return result
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    @inline(__always)
    public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Uniform integer in 0..<n (n > 0): the high word of a 64×64-bit product (Lemire), whose
    /// bias is below n / 2^64.
    @inline(__always)
    public mutating func below(_ n: Int) -> Int { Int(next().multipliedFullWidth(by: UInt64(n)).high) }

    /// Standard normal (Box–Muller, both values used).
    public mutating func normal() -> Float {
        if let z = spareNormal { spareNormal = nil; return z }
        var u1 = Double(uniform()); let u2 = Double(uniform())
        if u1 < 1e-12 { u1 = 1e-12 }
        let r = (-2 * log(u1)).squareRoot()
        spareNormal = Float(r * sin(2 * Double.pi * u2))
        return Float(r * cos(2 * Double.pi * u2))
    }

    /// Fisher–Yates shuffle of a buffer.
    public mutating func shuffle<T>(_ a: UnsafeMutableBufferPointer<T>) {
        var i = a.count - 1
        while i > 0 { let j = below(i + 1); a.swapAt(i, j); i -= 1 }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Initialisers (fill a parameter view in place).
public enum Init {
    public static func normal(_ p: Floats, _ n: Int, std: Float, rng: inout RNG) {
        for i in 0..<n { p[i] = rng.normal() * std }
    }
    public static func uniform(_ p: Floats, _ n: Int, bound: Float, rng: inout RNG) {
        for i in 0..<n { p[i] = (rng.uniform() * 2 - 1) * bound }
    }
    /// Xavier/Glorot uniform for a (fanOut, fanIn) matrix: U(±√(6 / (fanIn + fanOut))).
    public static func xavierUniform(_ p: Floats, fanOut: Int, fanIn: Int, rng: inout RNG) {
        uniform(p, fanOut * fanIn, bound: (6.0 / Float(fanIn + fanOut)).squareRoot(), rng: &rng)
    }
    /// Xavier/Glorot normal for a (fanOut, fanIn) matrix: N(0, 2 / (fanIn + fanOut)).
    public static func xavierNormal(_ p: Floats, fanOut: Int, fanIn: Int, rng: inout RNG) {
        normal(p, fanOut * fanIn, std: (2.0 / Float(fanIn + fanOut)).squareRoot(), rng: &rng)
    }
    public static func constant(_ p: Floats, _ n: Int, _ value: Float) { p.update(repeating: value, count: n) }
}
