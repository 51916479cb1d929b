import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs short helper commands (`initdb`, `pg_ctl`) to completion, capturing their output in a
/// file rather than a pipe: `pg_ctl start` leaves a server running that must not hold our pipe.
enum Subprocess {
    struct Outcome {
        let status: Int32       // exit code, or 128 + signal
        let output: String
    }

    static func run(_ argv: [String], workingDirectory: String? = nil,
                    environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Outcome {
        precondition(!argv.isEmpty, "argv must name an executable")
        let outPath = NSTemporaryDirectory() + "winnow-cmd-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).out"
        defer { unlink(outPath) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        SpawnExtensions.closeFrom(&actions, 3)
        if let workingDirectory { SpawnExtensions.changeDirectory(&actions, workingDirectory) }

        var pid: pid_t = 0
        let rc = withCStrings(argv) { cargv in
            withCStrings(environment.map { "\($0.key)=\($0.value)" }) { cenv in
                posix_spawn(&pid, argv[0], &actions, nil, cargv, cenv)
            }
        }
        guard rc == 0 else {
            throw EmbeddedPostgres.Failure.commandFailed(command: argv.joined(separator: " "), status: -1,
                                                         output: "cannot start: \(String(cString: strerror(rc)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { break }
        }
        let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        return Outcome(status: exitCode(status), output: output)
    }

    /// The exit code of a `waitpid` status, or 128 + the signal for a killed process.
    static func exitCode(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    static func withCStrings<T>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) throws -> T) rethrows -> T {
        let cstrings = strings.map { strdup($0) }
        defer { cstrings.forEach { free($0) } }
        return try body(cstrings + [nil])
    }
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` and `..._addchdir_np` (glibc 2.34 and
/// 2.29) are declared only under `_GNU_SOURCE`, which Swift's Glibc module does not set; they are
/// looked up by name instead. Where missing, spawned children inherit descriptors not marked
/// close-on-exec, and start in our working directory. Shared with the stack's supervisor.
public enum SpawnExtensions {
    /// `POSIX_SPAWN_SETSID` (glibc 2.26).
    public static let setsidFlag: Int32 = 0x80

    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private typealias ChangeDirectory = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32

    private static let closeFromFunction: CloseFrom? = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np")
        .map { unsafeBitCast($0, to: CloseFrom.self) }
    private static let changeDirectoryFunction: ChangeDirectory? = dlsym(nil, "posix_spawn_file_actions_addchdir_np")
        .map { unsafeBitCast($0, to: ChangeDirectory.self) }

    public static func closeFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ fd: Int32) {
        _ = closeFromFunction?(actions, fd)
    }

    public static func changeDirectory(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ path: String) {
        _ = changeDirectoryFunction?(actions, path)
    }
}
