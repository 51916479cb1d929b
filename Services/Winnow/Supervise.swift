import ArgumentParser
import Foundation
import Logging
import RPC
import Stack
#if canImport(Glibc)
import Glibc
#endif

/// `winnow supervise`: the supervisor itself, as `winnow up` starts it detached (and as
/// `winnow up --foreground` runs it). Not meant to be typed.
struct Supervise: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the stack's supervisor in the foreground (what `winnow up` starts detached).",
        shouldDisplay: false)

    @OptionGroup var stack: StackOptions

    func run() async throws {
        try await Self.supervise(stack)
    }

    /// Starts the stack, prints its table, and supervises until SIGINT/SIGTERM; then stops it all.
    static func supervise(_ options: StackOptions) async throws {
        signal(SIGPIPE, SIG_IGN)
        let signals = TerminationSignals()
        let configuration = options.configuration
        if configuration.curve {
            // The probe is a client of every service: it dials with the clients' key.
            let directory = configuration.layout.curveDirectory
            try LinkSecurity.create(directory: directory, names: StackConfiguration.curveIdentities)
            LinkSecurity.installed = try LinkSecurity(directory: directory, identity: LinkSecurity.clientIdentity)
        }
        let health = RPCHealthProbe(broker: configuration.brokerEndpoint)
        defer { health.close() }
        let stack = LocalStack(configuration: configuration, probe: health.probe,
                               logger: Logger(label: "winnow.supervisor"))
        let starting = Task { try await stack.start() }
        let canceller = Task {
            _ = await signals.wait()
            starting.cancel()
        }
        do {
            try await starting.value
        } catch is CancellationError {
            return
        } catch {
            canceller.cancel()
            FileHandle.standardError.write(Data("winnow supervise: \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(stack.currentRecord().table())
        fflush(stdout)
        let sig = await signals.wait()
        canceller.cancel()
        Logger(label: "winnow.supervisor").info("received signal \(sig); stopping the stack")
        await stack.stop()
    }
}
