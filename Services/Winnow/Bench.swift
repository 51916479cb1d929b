import ArgumentParser
import Foundation

/// `winnow bench`: benchmarks, each beside a named reference measured in the same run.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Winnow beside a reference implementation in the same run.",
        subcommands: [BenchWire.self, BenchTrain.self, BenchItemCF.self]
    )
}

/// One measured figure. `ratio` is Winnow's advantage: reference ÷ Winnow for times, Winnow ÷
/// reference for rates; > 1 means Winnow is ahead. `reference`/`ratio` are null when the
/// reference could not run.
struct BenchRow: Codable {
    var name: String
    var unit: String
    var winnow: Double
    var reference: Double?
    var ratio: Double?
    var goal: Double

    /// Every key is always present; a missing reference is written as null.
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(unit, forKey: .unit)
        try c.encode(winnow, forKey: .winnow)
        if let reference { try c.encode(reference, forKey: .reference) } else { try c.encodeNil(forKey: .reference) }
        if let ratio { try c.encode(ratio, forKey: .ratio) } else { try c.encodeNil(forKey: .ratio) }
        try c.encode(goal, forKey: .goal)
    }

    /// A time row: ratio = reference ÷ winnow.
    static func time(_ name: String, winnow: Double, reference: Double?, goal: Double, unit: String = "s") -> BenchRow {
        BenchRow(name: name, unit: unit, winnow: winnow, reference: reference,
                 ratio: reference.map { $0 / winnow }, goal: goal)
    }

    /// A rate (or any larger-is-better) row: ratio = winnow ÷ reference.
    static func rate(_ name: String, unit: String, winnow: Double, reference: Double?, goal: Double) -> BenchRow {
        BenchRow(name: name, unit: unit, winnow: winnow, reference: reference,
                 ratio: reference.map { winnow / $0 }, goal: goal)
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
        let header = ["name", "unit", "winnow", "reference", "ratio", "goal", ""]
        var cells = [header]
        for r in rows {
            let met = r.ratio.map { $0 >= r.goal ? "ok" : "BELOW GOAL" } ?? "no reference"
            cells.append([r.name, r.unit, format(r.winnow), format(r.reference), format(r.ratio), format(r.goal), met])
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
