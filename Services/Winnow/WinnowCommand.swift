import ArgumentParser

/// `winnow`: the command line of the Winnow stack. Each subcommand lives in its own file.
@main
struct WinnowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "winnow",
        abstract: "Train sequential recommenders on noisy implicit feedback and serve them.",
        subcommands: [Up.self, Down.self, Supervise.self, Status.self, Call.self, Ingest.self, Train.self, Job.self, Recommend.self, Report.self, Synth.self,
                      Bench.self, Experiment.self, Keys.self, Chaos.self]
    )
}
