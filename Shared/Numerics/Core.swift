// Core numerics: flat float32 buffers, slabs carved into views, BLAS and thread settings.
//
// Shape legend used throughout Numerics and Models (llm.c style):
//   B batch (sequences), T positions, C channels, H heads, hs = C / H head size,
//   F feed-forward inner size, N items (ids 1...N; id 0 is padding), K user vectors per sequence.
// Buffers are row-major; a comment on each gives its shape.
import CBLAS
import Dispatch
import Kernels
import KernelsAVX2
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// Whether this process runs the AVX2 build of the element-wise kernels (see KernelChoice).
let avx2Kernels = KernelChoice.current == .avx2

/// A pointer to float32 storage; every layer function takes and returns these.
public typealias Floats = UnsafeMutablePointer<Float>

/// One allocation carved into views, freed when the slab goes away. Activations, workspaces and
/// optimiser state are slabs; views never escape the object that owns the slab.
public final class Slab {
    public let base: Floats
    public let count: Int
    public private(set) var views: [Floats] = []

    /// Allocates `sizes.reduce(0, +)` floats (zeroed) and carves one view per size, in order.
    public init(_ sizes: [Int]) {
        precondition(sizes.allSatisfy { $0 >= 0 }, "negative slab size")
        count = sizes.reduce(0, +)
        base = Floats.allocate(capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
        var offset = 0
        views.reserveCapacity(sizes.count)
        for n in sizes { views.append(base + offset); offset += n }
    }

    public func zero() { base.update(repeating: 0, count: count) }

    deinit { base.deallocate() }
}

/// Thread count of Winnow's parallel loops and products. Results are reproducible for a fixed
/// thread count (every parallel loop and every split product uses fixed, disjoint chunks).
///
/// OpenBLAS itself always runs single-threaded: Winnow splits large products across its own
/// threads (see `sgemm`). OpenBLAS's worker threads spin in `sched_yield` for about 0.1 s after
/// each threaded call (its THREAD_TIMEOUT, settable only through the environment before the
/// library loads), and on a machine with as many threads as cores they took the cores that the
/// next parallel loop's chunks needed: GRU4Rec training ran about 15 % faster without them.
public enum Threads {
    nonisolated(unsafe) public private(set) static var count = 1

    /// Sets Winnow's thread count; call before building models.
    public static func set(_ n: Int) {
        precondition(n >= 1, "thread count must be >= 1")
        count = n
        _ = serialBLAS
    }

    /// OpenBLAS at one thread, once per process (also for processes that never call `set`).
    static let serialBLAS: Void = { openblas_set_num_threads(1) }()

    /// Runs `body(chunk, lo, hi)` over `0..<n` split into at most `Threads.count` contiguous
    /// chunks of at least `minPerChunk`; the chunk index runs 0..<chunks(n, minPerChunk:).
    /// Products inside a chunk run on that chunk's thread.
    @inline(__always)
    public static func parallelFor(_ n: Int, minPerChunk: Int = 1, _ body: (_ chunk: Int, _ lo: Int, _ hi: Int) -> Void) {
        let chunks = chunks(n, minPerChunk: minPerChunk)
        if chunks <= 1 || ParallelRegion.inside { body(0, 0, n); return }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let range = chunk(c, of: chunks, n)
            if !range.isEmpty { ParallelRegion.enter { body(c, range.lowerBound, range.upperBound) } }
        }
    }

    /// Runs `body(lo, hi)` over `0..<n` split as `parallelFor(_:minPerChunk:_:)` splits it.
    @inline(__always)
    public static func parallelFor(_ n: Int, minPerChunk: Int = 1, _ body: (_ lo: Int, _ hi: Int) -> Void) {
        parallelFor(n, minPerChunk: minPerChunk) { (_: Int, lo: Int, hi: Int) in body(lo, hi) }
    }

    /// How many chunks `parallelFor` splits `0..<n` into.
    public static func chunks(_ n: Int, minPerChunk: Int = 1) -> Int { min(count, max(1, n / max(minPerChunk, 1))) }

    /// The part of `0..<n` that chunk `c` of `chunks` covers in `parallelFor` (for code that
    /// must lay data out to match its split).
    @inline(__always)
    public static func chunk(_ c: Int, of chunks: Int, _ n: Int) -> Range<Int> { (n * c / chunks)..<(n * (c + 1) / chunks) }
}

/// Marks threads while they run a chunk of a parallel loop, so that work nested in a chunk
/// (a product, another loop) stays on that thread instead of splitting again.
enum ParallelRegion {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
        return key
    }()

    static var inside: Bool { pthread_getspecific(key) != nil }

    @inline(__always)
    static func enter(_ body: () -> Void) {
        let outer = pthread_getspecific(key)
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1))
        body()
        pthread_setspecific(key, outer)
    }
}

/// p[0..<n] = 0, on all threads when n is large (zeroing a batch's activations is a memory
/// pass that would otherwise leave the other threads idle).
public func zeroFill(_ p: Floats, _ n: Int) {
    Threads.parallelFor(n, minPerChunk: 1 << 16) { lo, hi in (p + lo).update(repeating: 0, count: hi - lo) }
}

/// C (M, N) = alpha · op(A) · op(B) + beta · C, row-major; op transposes when the flag is set.
/// A is (M, K) or, transposed, (K, M) with leading dimension lda; likewise B (K, N) / (N, K).
///
/// Outside a parallel loop, a product of at least 2^20 multiply-adds is split into one block of
/// rows (or of columns, when N > M) per thread, each block an OpenBLAS call of its own. Every
/// element of C is still computed by one call over the whole K, in a split fixed by the thread
/// count.
/// y (M) = A (M, N, row-major, leading dimension lda) · x (N), one OpenBLAS call on this thread:
/// the product of one query with a block of vectors, which sgemm with one row does slowly.
@inline(__always)
public func sgemv(M: Int, N: Int, A: UnsafePointer<Float>, lda: Int, x: UnsafePointer<Float>, y: Floats) {
    if M == 0 { return }
    _ = Threads.serialBLAS
    cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(M), Int32(N), 1, A, Int32(lda), x, 1, 0, y, 1)
}

@inline(__always)
public func sgemm(transA: Bool = false, transB: Bool = false, M: Int, N: Int, K: Int,
                  alpha: Float = 1, A: UnsafePointer<Float>, lda: Int,
                  B: UnsafePointer<Float>, ldb: Int,
                  beta: Float = 0, C: Floats, ldc: Int) {
    if M == 0 || N == 0 { return }
    if K == 0 {
        if beta == 0 { for i in 0..<M { (C + i * ldc).update(repeating: 0, count: N) } }
        else if beta != 1 { for i in 0..<M { for j in 0..<N { C[i * ldc + j] *= beta } } }
        return
    }
    _ = Threads.serialBLAS
    let blocks = Threads.count
    if blocks > 1 && M * N * K >= 1 << 20 && max(M, N) >= 16 * blocks && !ParallelRegion.inside {
        let splitRows = M >= N, length = splitRows ? M : N
        DispatchQueue.concurrentPerform(iterations: blocks) { c in
            // block edges on multiples of 8 so that every block but the last fills whole kernel tiles
            let lo = (length * c / blocks) & ~7, hi = c == blocks - 1 ? length : (length * (c + 1) / blocks) & ~7
            guard lo < hi else { return }
            if splitRows {
                let a = transA ? A + lo : A + lo * lda
                blasSgemm(transA, transB, hi - lo, N, K, alpha, a, lda, B, ldb, beta, C + lo * ldc, ldc)
            } else {
                let b = transB ? B + lo * ldb : B + lo
                blasSgemm(transA, transB, M, hi - lo, K, alpha, A, lda, b, ldb, beta, C + lo, ldc)
            }
        }
        return
    }
    blasSgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
}

@inline(__always)
private func blasSgemm(_ transA: Bool, _ transB: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
                       _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
                       _ beta: Float, _ C: Floats, _ ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), beta, C, Int32(ldc))
}

/// Σ x[i]² in double precision.
public func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    var s = 0.0
    for i in 0..<n { s += Double(x[i]) * Double(x[i]) }
    return s
}

/// Σ a[i] · b[i] with eight independent SIMD lanes (float reductions do not auto-vectorise).
@inline(__always)
public func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>()
    var i = 0
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    while i + 8 <= n {
        acc += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    var s = acc.sum()
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// Σ a[i] with SIMD lanes.
@inline(__always)
public func sum(_ a: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>()
    var i = 0
    let ra = UnsafeRawPointer(a)
    while i + 8 <= n { acc += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self); i += 8 }
    var s = acc.sum()
    while i < n { s += a[i]; i += 1 }
    return s
}

/// max_i x[i] (SIMD lanes).
@inline(__always)
public func maxElement(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var i = 0
    var acc = SIMD8<Float>(repeating: -.infinity)
    let rx = UnsafeRawPointer(x)
    // a compare and select, not pointwiseMax (lane by lane: it orders NaNs)
    while i + 8 <= n {
        let v = rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        acc.replace(with: v, where: v .> acc)
        i += 8
    }
    var m = acc.max()
    while i < n { m = Swift.max(m, x[i]); i += 1 }
    return m
}

/// out[i] = e^(x[i] − shift) (out may alias x, or be nil to only sum); returns Σ out[i].
@inline(__always)
public func expShifted(out: Floats?, _ x: UnsafePointer<Float>, shift: Float, _ n: Int) -> Float {
    avx2Kernels ? KernelsAVX2.expShiftedSum(out: out, x: x, shift: shift, n: n)
        : Kernels.expShiftedSum(out: out, x: x, shift: shift, n: n)
}

/// Inner products of B queries (B, C) with items packed eight to a block (`packedInnerProducts`
/// in Kernels): out (B, 8 · blocks).
@inline(__always)
public func packedInnerProducts(out: Floats, queries: UnsafePointer<Float>, B: Int, packed: UnsafePointer<Float>, blocks: Int, dim: Int) {
    if avx2Kernels { KernelsAVX2.packedInnerProducts(out: out, queries: queries, B: B, packed: packed, blocks: blocks, dim: dim) }
    else { Kernels.packedInnerProducts(out: out, queries: queries, B: B, packed: packed, blocks: blocks, dim: dim) }
}

/// x[i] *= k (SIMD lanes).
@inline(__always)
public func scaleInPlace(_ x: Floats, _ k: Float, _ n: Int) {
    var i = 0
    let rx = UnsafeMutableRawPointer(x)
    while i + 8 <= n {
        rx.storeBytes(of: rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * k, toByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n { x[i] *= k; i += 1 }
}

/// √x for eight lanes. SIMD8's `squareRoot()` goes lane by lane through libm's sqrtf (errno
/// semantics keep it from vectorising); on x86-64 this is two SSE sqrtps, which are exactly
/// rounded like sqrtf.
@inline(__always)
public func sqrt8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    #if arch(x86_64)
    return SIMD8(lowHalf: _mm_sqrt_ps(x.lowHalf), highHalf: _mm_sqrt_ps(x.highHalf))
    #else
    return x.squareRoot()
    #endif
}
