import ArgumentParser
import Data
import Foundation

/// `winnow bench`: benchmarks, each beside a named reference measured in the same run.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Winnow beside a reference implementation in the same run.",
        subcommands: [BenchWire.self, BenchTrain.self, BenchItemCF.self, BenchIngest.self, BenchRetrieval.self, BenchJobs.self, BenchFuzz.self]
    )
}

/// One measured figure, written as `{name, unit, winnow, reference, ratio, goal}` (every key
/// present, null where it does not apply) plus `budget` and `met` where they apply.
/// `ratio` is Winnow's advantage: reference ÷ Winnow for times, Winnow ÷ reference for rates;
/// > 1 means Winnow is ahead. `goal` is the least acceptable ratio; `budget` an absolute bound on
/// the Winnow figure in `unit` (a ceiling for times, a floor for rates) where the issue states one.
struct BenchRow: Codable {
    var name: String
    var unit: String
    var winnow: Double
    var reference: Double?
    var ratio: Double?
    var goal: Double?
    var budget: Double?
    var lowerIsBetter: Bool

    /// Whether every stated goal and budget is met; nil when the row states none or lacks its reference.
    var met: Bool? {
        var verdicts: [Bool] = []
        if let goal {
            guard let ratio else { return nil }
            verdicts.append(ratio >= goal)
        }
        if let budget { verdicts.append(lowerIsBetter ? winnow <= budget : winnow >= budget) }
        return verdicts.isEmpty ? nil : !verdicts.contains(false)
    }

    private enum CodingKeys: String, CodingKey { case name, unit, winnow, reference, ratio, goal, budget, met }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(unit, forKey: .unit)
        try c.encode(winnow, forKey: .winnow)
        try c.encode(reference, forKey: .reference)   // Optional encodes as null
        try c.encode(ratio, forKey: .ratio)
        try c.encode(goal, forKey: .goal)
        try c.encodeIfPresent(budget, forKey: .budget)
        try c.encodeIfPresent(met, forKey: .met)
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        unit = try c.decode(String.self, forKey: .unit)
        winnow = try c.decode(Double.self, forKey: .winnow)
        reference = try c.decodeIfPresent(Double.self, forKey: .reference)
        ratio = try c.decodeIfPresent(Double.self, forKey: .ratio)
        goal = try c.decodeIfPresent(Double.self, forKey: .goal)
        budget = try c.decodeIfPresent(Double.self, forKey: .budget)
        lowerIsBetter = true
    }

    private init(name: String, unit: String, winnow: Double, reference: Double?, ratio: Double?,
                 goal: Double?, budget: Double?, lowerIsBetter: Bool) {
        self.name = name; self.unit = unit; self.winnow = winnow; self.reference = reference
        self.ratio = ratio; self.goal = goal; self.budget = budget; self.lowerIsBetter = lowerIsBetter
    }

    /// A time (smaller is better) row: ratio = reference ÷ winnow.
    static func time(_ name: String, winnow: Double, reference: Double?, goal: Double? = nil,
                     budget: Double? = nil, unit: String = "s") -> BenchRow {
        BenchRow(name: name, unit: unit, winnow: winnow, reference: reference,
                 ratio: reference.flatMap { winnow > 0 ? $0 / winnow : nil }, goal: goal, budget: budget,
                 lowerIsBetter: true)
    }

    /// A rate (larger is better) row: ratio = winnow ÷ reference.
    static func rate(_ name: String, unit: String, winnow: Double, reference: Double?, goal: Double? = nil,
                     budget: Double? = nil) -> BenchRow {
        BenchRow(name: name, unit: unit, winnow: winnow, reference: reference,
                 ratio: reference.flatMap { $0 > 0 ? winnow / $0 : nil }, goal: goal, budget: budget,
                 lowerIsBetter: false)
    }
}

enum BenchOutput {
    static func format(_ x: Double?) -> String {
        guard let x else { return "-" }
        if x == 0 { return "0" }
        return abs(x) >= 1000 || abs(x) < 0.001 ? String(format: "%.4g", x) : String(format: "%.4f", x)
    }

    /// Prints the rows as an aligned table.
    static func printTable(_ rows: [BenchRow]) {
        let header = ["name", "unit", "winnow", "reference", "ratio", "goal", "budget", ""]
        var cells = [header]
        for r in rows {
            let verdict: String
            switch r.met {
            case true?: verdict = "ok"
            case false?: verdict = "MISSES GOAL"
            case nil: verdict = r.goal != nil ? "no reference" : ""
            }
            cells.append([r.name, r.unit, format(r.winnow), format(r.reference), format(r.ratio), format(r.goal),
                          format(r.budget), verdict])
        }
        let widths = (0 ..< header.count).map { c in cells.map { $0[c].count }.max()! }
        for row in cells {
            print(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
    }

    /// Writes the rows as a JSON array.
    static func writeJSON(_ rows: [BenchRow], to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(rows).write(to: URL(fileURLWithPath: path))
    }
}

/// A child process's outcome.
struct ProcessResult {
    var status: Int32
    var stdout: String
}

enum BenchProcess {
    /// Runs `executable` with `arguments` (and extra `environment`); stdout is captured, stderr goes to ours.
    static func run(_ executable: String, _ arguments: [String],
                    environment: [String: String] = [:]) throws -> ProcessResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return ProcessResult(status: process.terminationStatus, stdout: String(decoding: data, as: UTF8.self))
    }

    /// The python of the private reference venv with `packages` installed (scripts/reference-venv).
    static func referencePython(_ packages: [String]) throws -> String {
        let result = try run("/usr/bin/env", ["bash", "scripts/reference-venv"] + packages)
        guard result.status == 0, let line = result.stdout.split(separator: "\n").last, !line.isEmpty else {
            throw ValidationError("scripts/reference-venv \(packages.joined(separator: " ")) failed (status \(result.status)); run from the repository root")
        }
        return String(line)
    }
}

/// Monotonic seconds since an arbitrary start.
func benchNow() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// Synthetic `.inter` files the benches share, generated once into DATA_DIR/synth under a name
/// that spells the spec, so `bench ingest` and `bench itemcf` reuse each other's files.
enum BenchSynthetic {
    /// The file's path, and what generating it took when this call generated it.
    static func file(_ spec: SyntheticSpec, dataDir: String) throws
        -> (path: String, generated: (interactions: Int, seconds: Double)?) {
        let folder = (dataDir as NSString).appendingPathComponent("synth")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let name = "synth-u\(spec.users)-i\(spec.items)-n\(spec.interactions)-noise\(spec.noiseRate)-seed\(spec.seed).inter"
        let path = (folder as NSString).appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: path) { return (path, nil) }
        print("generating \(path)")
        // Written under another name and moved, so an interrupted run never leaves a partial file
        // that the next run would take for the whole.
        let partial = path + ".partial"
        let start = benchNow()
        let summary = try Synthetic.write(spec, interPath: partial, noisePath: Synthetic.noisePath(forInter: path))
        try FileManager.default.moveItem(atPath: partial, toPath: path)
        return (path, (summary.interactions, benchNow() - start))
    }
}
