// Helpers shared by the test targets: test-owned buffers for gradient checks, and the seeded
// generator of Shared/Data for reproducible random input.
@_exported import struct Data.SplitMix64
import Numerics
import XCTest

/// Test-owned float buffers (classes, so closures capture references, not arrays).
public final class Buf {
    public let p: Floats
    public let n: Int
    public init(_ n: Int, fill: Float = 0) {
        self.n = n; p = .allocate(capacity: max(n, 1)); p.initialize(repeating: fill, count: max(n, 1))
    }
    public init(random n: Int, rng: inout RNG, scale: Float = 1) {
        self.n = n; p = .allocate(capacity: max(n, 1))
        for i in 0..<n { p[i] = rng.normal() * scale }
    }
    deinit { p.deallocate() }
    public func zero() { p.update(repeating: 0, count: n) }
    public subscript(i: Int) -> Float { get { p[i] } set { p[i] = newValue } }
    /// Σ c[i] · self[i] in double.
    public func dot(_ c: Buf) -> Double { var s = 0.0; for i in 0..<n { s += Double(p[i]) * Double(c.p[i]) }; return s }
}

/// Test-owned Int32 buffers (item ids, targets).
public final class IntBuf {
    public let p: UnsafeMutablePointer<Int32>
    public let n: Int
    public init(_ values: [Int32]) {
        n = values.count; p = .allocate(capacity: max(n, 1)); for (i, v) in values.enumerated() { p[i] = v }
    }
    deinit { p.deallocate() }
}

/// Fails the test with the check's own report when a finite-difference check did not pass.
public func assertGradient(_ r: GradientCheckResult, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertTrue(r.passed, r.description, file: file, line: line)
}
