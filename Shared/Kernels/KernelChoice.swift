// Which copy of the element-wise kernels a process runs: the baseline x86-64 build (SSE2, four
// lanes) that runs everywhere, or the AVX2 build (KernelsAVX2, eight lanes), which needs the
// instruction set of `-target-cpu haswell`. Chosen once per process from the CPU's flags, so
// one binary runs on any x86-64 machine and uses AVX2 where there is one. Both copies compile
// the same source without fused multiply-adds, so they give the same bits.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum KernelChoice: String, Sendable {
    case baseline, avx2

    /// Linux /proc/cpuinfo flag names of the features LLVM's `haswell` CPU lets the compiler
    /// use in generated code.
    public static let avx2Flags: [String] = ["avx", "avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "f16c", "popcnt",
                                             "sse4_1", "sse4_2", "ssse3"]

    /// Whether a /proc/cpuinfo text lists every flag the AVX2 copy needs (on its first `flags` line).
    public static func cpuinfoAllowsAVX2(_ cpuinfo: String) -> Bool {
        guard let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return false }
        let flags = Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
        return avx2Flags.allSatisfy(flags.contains)
    }

    /// Whether this machine can run the AVX2 copy (false off x86-64, where it is not built for AVX2).
    public static let machineAllowsAVX2: Bool = {
        #if arch(x86_64) && os(Linux)
        guard let f = fopen("/proc/cpuinfo", "r") else { return false }
        defer { fclose(f) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        // the first processor's block holds its flags line
        while fgets(&buffer, Int32(buffer.count), f) != nil {
            let line = String(cString: buffer)
            if line == "\n" { break }
            text += line
        }
        return cpuinfoAllowsAVX2(text)
        #else
        return false
        #endif
    }()

    /// `WINNOW_KERNELS` (auto, baseline or avx2; unset = auto) against what the machine allows.
    public static func resolve(_ setting: String?, machineAllowsAVX2: Bool) -> Result<KernelChoice, KernelChoiceError> {
        switch setting ?? "auto" {
        case "", "auto": return .success(machineAllowsAVX2 ? .avx2 : .baseline)
        case "baseline": return .success(.baseline)
        case "avx2": return machineAllowsAVX2 ? .success(.avx2) : .failure(.avx2Unavailable)
        case let other: return .failure(.unknown(other))
        }
    }

    /// The process's choice, made on first use. Both builds give the same bits, so the setting
    /// changes speed only: one that cannot be honoured is reported on standard error, once, and
    /// the baseline build runs (a library does not end its process).
    public static let current: KernelChoice = {
        let setting = getenv("WINNOW_KERNELS").map { String(cString: $0) }
        switch resolve(setting, machineAllowsAVX2: machineAllowsAVX2) {
        case .success(let choice): return choice
        case .failure(let error):
            fputs("\(error); running the baseline build\n", stderr)
            return .baseline
        }
    }()
}

public enum KernelChoiceError: Error, Equatable, CustomStringConvertible {
    case unknown(String), avx2Unavailable
    public var description: String {
        switch self {
        case .unknown(let s): "WINNOW_KERNELS=\(s): expected auto, baseline or avx2"
        case .avx2Unavailable: "WINNOW_KERNELS=avx2, but this CPU lacks one of \(KernelChoice.avx2Flags.joined(separator: ", "))"
        }
    }
}
