import Kernels
import KernelsAVX2
import Numerics
import WinnowTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The two builds of the element-wise kernels, and how a process chooses between them.
final class KernelChoiceTests: XCTestCase {
    private func copy(_ b: Buf) -> Buf { let c = Buf(b.n); c.p.update(from: b.p, count: b.n); return c }

    private func assertSameBits(_ a: Buf, _ b: Buf, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        var differing = 0
        for i in 0..<a.n where a[i].bitPattern != b[i].bitPattern { differing += 1 }
        XCTAssertEqual(differing, 0, "\(what): \(differing) of \(a.n) values differ between the builds", file: file, line: line)
    }

    /// The AVX2 build runs the same arithmetic (no fused multiply-adds), so training gives the
    /// same figures whichever build a machine picks. H = 20 leaves a partial group of lanes.
    func testAVX2GateKernelsGiveTheBaselineBits() throws {
        try XCTSkipUnless(KernelChoice.machineAllowsAVX2, "this CPU cannot run the AVX2 build")
        var rng = RNG(seed: 41)
        for (H, rows) in [(20, 5), (128, 33)] {
            let H3 = 3 * H
            let g = Buf(random: rows * H3, rng: &rng, scale: 2), hh = Buf(random: rows * H3, rng: &rng, scale: 2)
            let hp = Buf(random: rows * H, rng: &rng)
            for withPrevious in [false, true] {
                let g1 = copy(g), g2 = copy(g), o1 = Buf(rows * H), o2 = Buf(rows * H)
                let prev = withPrevious ? UnsafePointer(hp.p) : nil
                Kernels.gruGatesForward(g: g1.p, hh: hh.p, hp: prev, o: o1.p, rows: rows, H: H)
                KernelsAVX2.gruGatesForward(g: g2.p, hh: hh.p, hp: prev, o: o2.p, rows: rows, H: H)
                assertSameBits(g1, g2, "gates, H \(H)"); assertSameBits(o1, o2, "outputs, H \(H)")

                let go = Buf(random: rows * H, rng: &rng), dh = Buf(random: rows * H, rng: &rng)
                let dh1 = copy(dh), dh2 = copy(dh), sums1 = Buf(random: 4 * H, rng: &rng), sums2 = copy(sums1)
                let di1 = Buf(rows * H3), di2 = Buf(rows * H3), dg1 = Buf(rows * H3), dg2 = Buf(rows * H3)
                Kernels.gruGatesBackward(g: g1.p, hh: hh.p, hp: prev, go: go.p, dh: dh1.p, di: di1.p, dg: dg1.p, sums: sums1.p, rows: rows, H: H)
                KernelsAVX2.gruGatesBackward(g: g1.p, hh: hh.p, hp: prev, go: go.p, dh: dh2.p, di: di2.p, dg: dg2.p, sums: sums2.p, rows: rows, H: H)
                for (a, b, what) in [(dh1, dh2, "dh"), (sums1, sums2, "bias sums"), (di1, di2, "d inputs"), (dg1, dg2, "d hh")] {
                    assertSameBits(a, b, "\(what), H \(H)")
                }
                // the kernels did something: a partial lane group is written too
                XCTAssertNotEqual(o1[rows * H - 1], 0); XCTAssertNotEqual(di1[rows * H3 - 1], 0)
            }
        }
    }

    /// GELU forward and backward and the shifted exponential sum, on n = 1,003 values (a partial
    /// lane group) spanning both tails.
    func testAVX2ActivationKernelsGiveTheBaselineBits() throws {
        try XCTSkipUnless(KernelChoice.machineAllowsAVX2, "this CPU cannot run the AVX2 build")
        var rng = RNG(seed: 43)
        let n = 1003
        let x = Buf(random: n, rng: &rng, scale: 6), dout = Buf(random: n, rng: &rng)
        let o1 = Buf(n), o2 = Buf(n), c1 = Buf(n), c2 = Buf(n)
        Kernels.geluForward(out: o1.p, inp: x.p, cdf: c1.p, n: n)
        KernelsAVX2.geluForward(out: o2.p, inp: x.p, cdf: c2.p, n: n)
        assertSameBits(o1, o2, "gelu"); assertSameBits(c1, c2, "Φ")
        for cached in [true, false] {
            let d1 = Buf(random: n, rng: &rng), d2 = copy(d1)
            Kernels.geluBackward(dinp: d1.p, dout: dout.p, inp: x.p, cdf: cached ? UnsafePointer(c1.p) : nil, n: n)
            KernelsAVX2.geluBackward(dinp: d2.p, dout: dout.p, inp: x.p, cdf: cached ? UnsafePointer(c1.p) : nil, n: n)
            assertSameBits(d1, d2, "gelu backward, Φ cached \(cached)")
        }
        let e1 = Buf(n), e2 = Buf(n)
        let s1 = Kernels.expShiftedSum(out: e1.p, x: x.p, shift: 2, n: n), s2 = KernelsAVX2.expShiftedSum(out: e2.p, x: x.p, shift: 2, n: n)
        assertSameBits(e1, e2, "e^(x − shift)")
        XCTAssertEqual(s1.bitPattern, s2.bitPattern, "Σ e^(x − shift)")
        XCTAssertNotEqual(o1[n - 1], 0); XCTAssertNotEqual(e1[n - 1], 0)
    }

    /// The packed inner products of the retrieval index: same bits in both builds, and the dot
    /// products they stand for (odd B leaves one query alone; C = 24 is three lane rows).
    func testPackedInnerProductsGiveTheBaselineBitsAndTheDots() throws {
        var rng = RNG(seed: 43)
        let B = 3, blocks = 5, C = 24
        let packed = Buf(random: blocks * 8 * C, rng: &rng), q = Buf(random: B * C, rng: &rng)
        let o1 = Buf(B * 8 * blocks), o2 = Buf(B * 8 * blocks)
        Kernels.packedInnerProducts(out: o1.p, queries: q.p, B: B, packed: packed.p, blocks: blocks, dim: C)
        for b in 0..<B {
            for item in 0..<(8 * blocks) {
                var dot: Float = 0
                for c in 0..<C { dot += q[b * C + c] * packed[(item / 8 * C + c) * 8 + item % 8] }
                XCTAssertEqual(o1[b * 8 * blocks + item], dot, accuracy: 1e-4, "query \(b) item \(item)")
            }
        }
        try XCTSkipUnless(KernelChoice.machineAllowsAVX2, "this CPU cannot run the AVX2 build")
        KernelsAVX2.packedInnerProducts(out: o2.p, queries: q.p, B: B, packed: packed.p, blocks: blocks, dim: C)
        assertSameBits(o1, o2, "packed inner products")
    }

    /// The rational erf behind GELU stays within 6e-7 of libm's erff over [−10, 10], read back through Φ (and GELU
    /// within 2e-6 of its libm form, x · ½ (1 + erff(x / √2))); Φ's derivative is the normal density.
    func testGELUsErfMatchesLibm() {
        let n = 200_001
        let x = Buf(n), out = Buf(n), cdf = Buf(n)
        for i in 0..<n { x[i] = -10 + 20 * Float(i) / Float(n - 1) }
        Kernels.geluForward(out: out.p, inp: x.p, cdf: cdf.p, n: n)
        var worstErf: Float = 0, worstGELU: Float = 0
        for i in 0..<n {
            let erfLibm = erff(x[i] * 0.70710678118654752)
            worstErf = max(worstErf, abs((2 * cdf[i] - 1) - erfLibm))
            worstGELU = max(worstGELU, abs(out[i] - x[i] * 0.5 * (1 + erfLibm)))
        }
        XCTAssertLessThan(worstErf, 6e-7)
        XCTAssertLessThan(worstGELU, 2e-6)
        // backward: dGELU/dx = Φ(x) + x·φ(x), against the formula with libm
        let d = Buf(n), ones = Buf(n)
        for i in 0..<n { ones[i] = 1 }
        Kernels.geluBackward(dinp: d.p, dout: ones.p, inp: x.p, cdf: nil, n: n)
        var worstGrad: Float = 0
        for i in 0..<n {
            let v = x[i], expected = 0.5 * (1 + erff(v * 0.70710678118654752)) + v * 0.3989422804014327 * expf(-0.5 * v * v)
            worstGrad = max(worstGrad, abs(d[i] - expected))
        }
        XCTAssertLessThan(worstGrad, 2e-6)
    }

    func testCpuinfoFlagsDecideWhetherTheAVX2BuildMayRun() {
        let all = KernelChoice.avx2Flags.joined(separator: " ")
        XCTAssertTrue(KernelChoice.cpuinfoAllowsAVX2("processor\t: 0\nflags\t\t: fpu sse2 \(all) avx512f\nbugs\t\t: none\n"))
        for missing in ["avx2", "fma", "movbe"] {
            let flags = KernelChoice.avx2Flags.filter { $0 != missing }.joined(separator: " ")
            XCTAssertFalse(KernelChoice.cpuinfoAllowsAVX2("flags\t\t: \(flags)\n"), "without \(missing)")
        }
        // "avx2" must be a whole flag, not a prefix of another
        let prefixOnly = KernelChoice.avx2Flags.map { $0 == "avx2" ? "avx2x" : $0 }.joined(separator: " ")
        XCTAssertFalse(KernelChoice.cpuinfoAllowsAVX2("flags\t: \(prefixOnly)\n"))
        XCTAssertFalse(KernelChoice.cpuinfoAllowsAVX2("processor\t: 0\n"))
    }

    func testTheSettingChoosesTheBuildAndRejectsWhatCannotRun() {
        XCTAssertEqual(try KernelChoice.resolve(nil, machineAllowsAVX2: true).get(), .avx2)
        XCTAssertEqual(try KernelChoice.resolve("auto", machineAllowsAVX2: false).get(), .baseline)
        XCTAssertEqual(try KernelChoice.resolve("baseline", machineAllowsAVX2: true).get(), .baseline)
        XCTAssertEqual(try KernelChoice.resolve("avx2", machineAllowsAVX2: true).get(), .avx2)
        XCTAssertThrowsError(try KernelChoice.resolve("avx2", machineAllowsAVX2: false).get()) {
            XCTAssertEqual($0 as? KernelChoiceError, .avx2Unavailable)
        }
        XCTAssertThrowsError(try KernelChoice.resolve("sse9", machineAllowsAVX2: true).get()) {
            XCTAssertEqual($0 as? KernelChoiceError, .unknown("sse9"))
            XCTAssertTrue("\($0)".contains("WINNOW_KERNELS=sse9"))
        }
    }
}
