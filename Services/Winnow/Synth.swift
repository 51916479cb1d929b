import ArgumentParser
import Data
import Foundation

/// `winnow synth`: a seeded synthetic `.inter` file with the ground-truth noise flags beside it.
struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a seeded synthetic RecBole .inter file and its ground-truth .noise file.",
        discussion: """
        Zipf item popularity, users mixing a few latent topics (intentions) and drifting between \
        them, strictly increasing timestamps per user, and a chosen rate of injected noise \
        (uniformly random items). FILE.noise (FILE without .inter, plus .noise) lists every \
        interaction with is_noise 0/1; formats in docs/DATA.md. Same options and seed -> the \
        same bytes.
        """
    )

    @Option(help: "Number of users (tokens 1...U).") var users: Int
    @Option(help: "Number of items (tokens 1...I).") var items: Int
    @Option(help: "Total interactions (>= users).") var interactions: Int
    @Option(help: "Rate of injected noise, 0...1.") var noise: Double = 0
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Output .inter file.") var out: String
    @Option(name: .customLong("noise-out"), help: "Ground-truth file (default: beside --out, .noise).")
    var noiseOut: String?
    @Option(help: "Zipf exponent of item popularity.") var zipf: Double = 1.0
    @Option(help: "Number of latent topics.") var topics: Int = 100
    @Option(help: "Most intentions (topics) a user mixes.") var intentions: Int = 3
    @Option(help: "Probability per interaction of switching intention.") var drift: Double = 0.1
    @Option(name: .customLong("min-length"), help: "Shortest sequence (capped at interactions / users).")
    var minLength: Int = 5

    var spec: SyntheticSpec {
        SyntheticSpec(users: users, items: items, interactions: interactions, noiseRate: noise, seed: seed,
                      zipfExponent: zipf, topics: topics, intentionsPerUser: intentions, driftRate: drift,
                      minLength: minLength)
    }

    func validate() throws {
        do { try spec.validate() } catch { throw ValidationError("\(error)") }
    }

    func run() throws {
        let noisePath = noiseOut ?? Synthetic.noisePath(forInter: out)
        let start = DispatchTime.now()
        let summary = try Synthetic.write(spec, interPath: out, noisePath: noisePath)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        print("""
        wrote \(out) (\(summary.interactions) interactions, \(summary.users) users, \(summary.interBytes) bytes)
        wrote \(noisePath) (\(summary.noisy) noisy, \(String(format: "%.4f", Double(summary.noisy) / Double(summary.interactions))) of all)
        \(String(format: "%.2f", seconds)) s, \(String(format: "%.2f", Double(summary.interactions) / seconds / 1e6)) M interactions/s
        """)
    }
}
