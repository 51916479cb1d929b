import ArgumentParser

/// `winnow bench ...`: benchmarks, each beside its reference implementation in the same run.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run a benchmark beside its reference implementation.",
        subcommands: [BenchWire.self]
    )
}
