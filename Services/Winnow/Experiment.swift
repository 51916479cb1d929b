import ArgumentParser

/// `winnow experiment`: experiment runners; each subcommand lives in its own file.
struct Experiment: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experiment",
        abstract: "Run an experiment: train methods over seeds and write JSON, tables and plots.",
        subcommands: [ExperimentLabels.self, ExperimentJob.self, ExperimentRobustness.self]
    )
}
