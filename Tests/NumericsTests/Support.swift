import XCTest
import Numerics

/// Test-owned float buffers (classes, so closures capture references, not arrays).
final class Buf {
    let p: Floats
    let n: Int
    init(_ n: Int, fill: Float = 0) { self.n = n; p = .allocate(capacity: max(n, 1)); p.initialize(repeating: fill, count: max(n, 1)) }
    init(random n: Int, rng: inout RNG, scale: Float = 1) {
        self.n = n; p = .allocate(capacity: max(n, 1))
        for i in 0..<n { p[i] = rng.normal() * scale }
    }
    deinit { p.deallocate() }
    func zero() { p.update(repeating: 0, count: n) }
    subscript(i: Int) -> Float { get { p[i] } set { p[i] = newValue } }
    /// Σ c[i] · self[i] in double.
    func dot(_ c: Buf) -> Double { var s = 0.0; for i in 0..<n { s += Double(p[i]) * Double(c.p[i]) }; return s }
}

final class IntBuf {
    let p: UnsafeMutablePointer<Int32>
    let n: Int
    init(_ values: [Int32]) { n = values.count; p = .allocate(capacity: max(n, 1)); for (i, v) in values.enumerated() { p[i] = v } }
    deinit { p.deallocate() }
}

func assertGradient(_ r: GradientCheckResult, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertTrue(r.passed, r.description, file: file, line: line)
}
