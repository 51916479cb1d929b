import WinnowTestSupport
import XCTest
@testable import Numerics

/// Products large enough to be split over threads must equal the product they split, for every
/// transpose, for row and column splits, with accumulation into C and padded leading dimensions.
final class ThreadsTests: XCTestCase {
    override func tearDown() { Threads.set(1) }

    func naive(transA: Bool, transB: Bool, M: Int, N: Int, K: Int, alpha: Float, A: [Float], lda: Int,
               B: [Float], ldb: Int, beta: Float, C: [Float], ldc: Int) -> [Float] {
        var out = C
        for i in 0..<M {
            for j in 0..<N {
                var s = 0.0
                for k in 0..<K {
                    let a = transA ? A[k * lda + i] : A[i * lda + k]
                    let b = transB ? B[j * ldb + k] : B[k * ldb + j]
                    s += Double(a) * Double(b)
                }
                out[i * ldc + j] = Float(Double(alpha) * s + Double(beta) * Double(C[i * ldc + j]))
            }
        }
        return out
    }

    func testSplitProductsEqualTheWholeProduct() {
        var rng = RNG(seed: 3)
        // (M, N, K): rows split (M >= N) and columns split (N > M), sizes not multiples of 8
        for (M, N, K) in [(301, 67, 70), (45, 1_003, 50)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    let lda = (transA ? M : K) + 3, ldb = (transB ? K : N) + 5, ldc = N + 2
                    let A = (0..<((transA ? K : M) * lda)).map { _ in rng.normal() }
                    let B = (0..<((transB ? N : K) * ldb)).map { _ in rng.normal() }
                    let C0 = (0..<(M * ldc)).map { _ in rng.normal() }
                    XCTAssertGreaterThanOrEqual(M * N * K, 1 << 20, "large enough to be split")
                    let want = naive(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5, A: A, lda: lda,
                                     B: B, ldb: ldb, beta: 2, C: C0, ldc: ldc)
                    for threads in [1, 2, 3] {
                        Threads.set(threads)
                        var C = C0
                        C.withUnsafeMutableBufferPointer { c in
                            sgemm(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5, A: A, lda: lda,
                                  B: B, ldb: ldb, beta: 2, C: c.baseAddress!, ldc: ldc)
                        }
                        var worst: Float = 0
                        for i in 0..<M {
                            for j in 0..<N { worst = max(worst, abs(C[i * ldc + j] - want[i * ldc + j])) }
                            for j in N..<ldc { XCTAssertEqual(C[i * ldc + j], C0[i * ldc + j], "padding of C untouched") }
                        }
                        XCTAssertLessThan(worst, 1e-3, "M \(M) N \(N) K \(K) tA \(transA) tB \(transB) threads \(threads)")
                    }
                }
            }
        }
    }

    /// The memory passes that run on all threads: swapping the leading axes of (rows, cols, block)
    /// moves every block to (col, row) and back, and zeroFill clears all of a buffer, for sizes
    /// below and above their split thresholds, on 1, 2 and 3 threads.
    func testAxisSwapAndZeroFillCoverEveryElementOnAnyThreadCount() {
        for threads in [1, 2, 3] {
            Threads.set(threads)
            for (rows, cols, block) in [(3, 4, 5), (256, 50, 64), (7, 33, 1)] {
                let n = rows * cols * block
                let inp = Buf(n), swapped = Buf(n, fill: -1), back = Buf(n, fill: -1)
                for i in 0..<n { inp[i] = Float(i) }
                swapLeadingAxes(out: swapped.p, inp: inp.p, rows: rows, cols: cols, block: block)
                var wrong = 0
                for r in 0..<rows { for c in 0..<cols { for k in 0..<block where swapped[(c * rows + r) * block + k] != inp[(r * cols + c) * block + k] { wrong += 1 } } }
                XCTAssertEqual(wrong, 0, "swap \(rows)×\(cols)×\(block), \(threads) threads")
                swapLeadingAxes(out: back.p, inp: swapped.p, rows: cols, cols: rows, block: block)
                XCTAssertTrue((0..<n).allSatisfy { back[$0] == inp[$0] }, "swap back \(rows)×\(cols)×\(block), \(threads) threads")
                zeroFill(back.p, n)
                XCTAssertTrue((0..<n).allSatisfy { back[$0] == 0 }, "zeroFill \(n), \(threads) threads")
            }
        }
    }

    func testLoopsNestedInAChunkRunOnItsThread() {
        Threads.set(2)
        let inner = UnsafeMutablePointer<Int>.allocate(capacity: 2)
        defer { inner.deallocate() }
        inner.initialize(repeating: 0, count: 2)
        Threads.parallelFor(2) { chunk, _, _ in
            var calls = 0
            Threads.parallelFor(1_000) { _, lo, hi in
                calls += 1
                XCTAssertEqual(lo, 0); XCTAssertEqual(hi, 1_000)
            }
            inner[chunk] = calls
        }
        XCTAssertEqual([inner[0], inner[1]], [1, 1], "one inline call per chunk, no second split")
    }
}
