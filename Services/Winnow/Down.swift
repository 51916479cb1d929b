import ArgumentParser
import Foundation
import Stack

/// `winnow down`: stop the stack `winnow up` started on a state directory.
struct Down: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop the local stack (every service, the broker and the embedded Postgres) and wait until all are gone.")

    @Option(name: .customLong("state-dir"), help: "State directory (env WINNOW_STATE_DIR, default ./.state).")
    var stateDir: String?

    @Option(help: "Seconds to wait for the supervisor before killing it.")
    var timeout: Int = 90

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive, got \(timeout)") }
    }

    func run() async throws {
        let layout = StackLayout(stateDirectory: stateDir ?? ProcessInfo.processInfo.environment["WINNOW_STATE_DIR"] ?? ".state")
        let report = await StackControl.down(layout, timeout: .seconds(timeout))
        if report.wasDown {
            print("winnow: the stack is not up on \(layout.stateDirectory)")
            return
        }
        if let pid = report.supervisorPID {
            print(report.supervisorKilled ? "supervisor (pid \(pid)) did not stop in \(timeout)s; killed it"
                                          : "supervisor (pid \(pid)) stopped every service and Postgres")
        }
        if !report.orphansStopped.isEmpty {
            print("stopped services left without a supervisor: \(report.orphansStopped.joined(separator: ", "))")
        }
        if report.postgresStopped { print("stopped the embedded Postgres") }
        print("winnow: the stack is down (\(layout.stateDirectory))")
    }
}
