import Foundation

/// Where the local stack keeps its files under a state directory:
///
///     <state>/stack.json         what runs: phase, children, pids, endpoints (rewritten on change)
///     <state>/supervisor.pid     the supervisor's pid
///     <state>/supervisor.lock    held (flock) by the live supervisor
///     <state>/logs/<name>.log    each child's output; supervisor.log, postgres.log
///     <state>/postgres/{data,run} the embedded Postgres cluster and its socket directory
///     <state>/curve/             CURVE key pairs and the allow-list (`winnow up --curve`)
public struct StackLayout: Sendable, Equatable {
    public let stateDirectory: String

    /// `stateDirectory` is made absolute against the current directory.
    public init(stateDirectory: String) {
        var path = (stateDirectory as NSString).expandingTildeInPath
        if !path.hasPrefix("/") {
            path = (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(path)
        }
        self.stateDirectory = (path as NSString).standardizingPath
    }

    public var recordFile: String { path("stack.json") }
    public var pidFile: String { path("supervisor.pid") }
    public var lockFile: String { path("supervisor.lock") }
    public var logDirectory: String { path("logs") }
    public var supervisorLog: String { (logDirectory as NSString).appendingPathComponent("supervisor.log") }

    /// The CURVE key directory of a stack brought up with `--curve` (`LinkSecurity`).
    public var curveDirectory: String { path("curve") }

    public func log(_ name: String) -> String { (logDirectory as NSString).appendingPathComponent("\(name).log") }

    private func path(_ name: String) -> String { (stateDirectory as NSString).appendingPathComponent(name) }
}
