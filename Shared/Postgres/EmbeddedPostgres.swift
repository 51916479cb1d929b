import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// A private Postgres server for development and tests, kept under a state directory:
///
///     <state>/postgres/data      the cluster (initdb), reused by every later start
///     <state>/postgres/run       the unix-socket directory
///     <state>/logs/postgres.log  the server's log
///
/// It runs Debian's server binaries (`/usr/lib/postgresql/<major>/bin`, the newest, or the
/// version that made an existing cluster) on a private port on 127.0.0.1 and a private socket
/// directory only, with password (SCRAM-SHA-256) authentication for the superuser `postgres`,
/// and creates the database named in the configuration. The password is drawn at random when
/// the cluster is made and kept only in `<state>/postgres/pgpass` (libpq's password file, mode
/// 0600), which every URL names (`passfile=`): it is never logged nor put on a command line. A
/// cluster made before (trust authentication) gets a password and SCRAM at its next start. Postgres refuses to run as root, so when this process
/// is root, `initdb` and `pg_ctl` run through `runuser -u postgres --`, and the directories the
/// server writes are handed to that user (the state directory's ancestors get the
/// search bit for others where the server could not otherwise reach them).
///
/// `initdb` runs with `--no-sync`: a development cluster lost to a power cut right after its
/// creation is simply made again, and syncing it costs seconds on slow disks. The running server
/// keeps Postgres' normal durability settings.
public final class EmbeddedPostgres: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The state directory; everything lives under `<state>/postgres` and `<state>/logs`.
        public var stateDirectory: String
        /// TCP port on 127.0.0.1 (and the socket file's number).
        public var port: Int
        /// The database created at start if missing.
        public var database: String
        /// The directory holding `initdb` and `pg_ctl`; `nil` searches `/usr/lib/postgresql/*/bin`.
        public var binDirectory: String?
        /// How long `start()` waits for the server to accept connections.
        public var startTimeout: Duration
        /// Extra server settings written to the cluster's `winnow.conf` at each start.
        public var settings: [String: String]

        public init(stateDirectory: String, port: Int, database: String = "winnow", binDirectory: String? = nil,
                    startTimeout: Duration = .seconds(60), settings: [String: String] = [:]) {
            self.stateDirectory = stateDirectory
            self.port = port
            self.database = database
            self.binDirectory = binDirectory
            self.startTimeout = startTimeout
            self.settings = settings
        }
    }

    /// Why the embedded server could not be set up, started or stopped.
    public enum Failure: Error, CustomStringConvertible, Equatable {
        /// No directory with both `initdb` and `pg_ctl` was found at these places.
        case binariesNotFound(searched: [String])
        /// The cluster was made by a major version whose binaries are not installed.
        case versionMismatch(dataDirectory: String, dataVersion: String, available: [String])
        /// Something else already listens on the port.
        case portInUse(port: Int)
        /// A server is already running on this data directory.
        case alreadyRunning(pid: Int32, dataDirectory: String)
        /// The directory cannot hold the cluster (not a cluster, not writable, ...).
        case unusableDirectory(path: String, reason: String)
        /// Running as root, but the `postgres` user or `runuser` is missing.
        case cannotDropPrivileges(reason: String)
        /// A helper command (`initdb`, `pg_ctl`) failed; `output` is what it printed.
        case commandFailed(command: String, status: Int32, output: String)
        /// `pg_ctl start` did not bring the server up; `logTail` is the end of the server log.
        case startFailed(reason: String, logTail: String)

        public var description: String {
            switch self {
            case .binariesNotFound(let searched):
                return "PostgreSQL server binaries (initdb, pg_ctl) not found in: \(searched.joined(separator: ", ")); install the Debian package 'postgresql' (scripts/bootstrap)"
            case .versionMismatch(let dir, let version, let available):
                return "the cluster in \(dir) was made by PostgreSQL \(version), but only \(available.isEmpty ? "no version" : available.joined(separator: ", ")) is installed; install postgresql-\(version) or remove the directory"
            case .portInUse(let port):
                return "port \(port) on 127.0.0.1 is already in use; choose another with --pg-port"
            case .alreadyRunning(let pid, let dir):
                return "a PostgreSQL server (pid \(pid)) is already running on \(dir); stop it first (winnow down, or pg_ctl stop -D \(dir))"
            case .unusableDirectory(let path, let reason):
                return "cannot use \(path) for the embedded PostgreSQL: \(reason)"
            case .cannotDropPrivileges(let reason):
                return "PostgreSQL refuses to run as root and cannot switch to the postgres user: \(reason)"
            case .commandFailed(let command, let status, let output):
                return "\(command) failed (exit \(status)): \(output.trimmingTrailingWhitespace())"
            case .startFailed(let reason, let logTail):
                return "PostgreSQL did not start: \(reason)\n--- end of server log ---\n\(logTail)"
            }
        }
    }

    public let configuration: Configuration
    private let logger: Logger
    private let lock = NSLock()
    /// `true` when the last `start()` had to run `initdb` (a fresh cluster).
    public private(set) var initializedCluster = false

    public init(_ configuration: Configuration, logger: Logger = Logger(label: "winnow.postgres.embedded")) {
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: Layout

    public var rootDirectory: String { (configuration.stateDirectory as NSString).appendingPathComponent("postgres") }
    public var dataDirectory: String { (rootDirectory as NSString).appendingPathComponent("data") }
    public var socketDirectory: String { (rootDirectory as NSString).appendingPathComponent("run") }
    public var logDirectory: String { (configuration.stateDirectory as NSString).appendingPathComponent("logs") }
    public var logFile: String { (logDirectory as NSString).appendingPathComponent("postgres.log") }

    /// Whether the socket file's path fits in `sun_path`; if not, the server listens on TCP only.
    public var usesUnixSocket: Bool {
        (socketDirectory + "/.s.PGSQL.\(configuration.port)").utf8.count <= 107
    }

    /// The superuser's password in libpq's password-file format (mode 0600, this process's
    /// user); URLs name the file, never the password.
    public var passwordFile: String { (rootDirectory as NSString).appendingPathComponent("pgpass") }

    /// The libpq URL of `database` (default: the configured one): through the private unix
    /// socket when its path is short enough, otherwise TCP on 127.0.0.1.
    public func url(database: String? = nil) -> String {
        let db = database ?? configuration.database
        guard usesUnixSocket else { return tcpURL(database: db) }
        return "postgresql:///\(percentEncoded(db))?host=\(percentEncoded(socketDirectory))&port=\(configuration.port)&user=postgres"
            + "&passfile=\(percentEncoded(passwordFile))"
    }

    /// The libpq URL over TCP on 127.0.0.1.
    public func tcpURL(database: String? = nil) -> String {
        "postgresql://postgres@127.0.0.1:\(configuration.port)/\(percentEncoded(database ?? configuration.database))"
            + "?passfile=\(percentEncoded(passwordFile))"
    }

    /// The libpq URL of the configured database (see ``url(database:)``).
    public var url: String { url() }

    // MARK: Lifecycle

    /// Initialises the cluster if there is none, starts the server, waits until it accepts
    /// connections, and creates the database if missing. A later start reuses the cluster.
    public func start() throws {
        lock.lock(); defer { lock.unlock() }
        let owner = try serverOwner()
        try prepareDirectories(owner: owner)
        let dataVersion = clusterVersion()
        let bin = try binaries(forClusterVersion: dataVersion)

        initializedCluster = false
        try clearStaleServer()
        guard LoopbackPort.isAvailable(configuration.port) else { throw Failure.portInUse(port: configuration.port) }
        if dataVersion == nil {
            try initialiseCluster(bin: bin, owner: owner)
            initializedCluster = true
        }
        try writeSettings(owner: owner)

        let secs = max(1, Int(configuration.startTimeout.components.seconds))
        let started = try run(bin, "pg_ctl", ["start", "-D", dataDirectory, "-l", logFile, "-w", "-t", "\(secs)", "-s"],
                              owner: owner)
        guard started.status == 0 else {
            let tail = logTail()
            // pg_ctl gives up waiting after the timeout but leaves a slow server starting: stop it.
            if runningServerPID() != nil {
                _ = try? run(bin, "pg_ctl", ["stop", "-D", dataDirectory, "-m", "immediate", "-w", "-s"], owner: owner)
            }
            if tail.contains("Address already in use") { throw Failure.portInUse(port: configuration.port) }
            throw Failure.startFailed(reason: "pg_ctl start exited with \(started.status): \(started.output.trimmingTrailingWhitespace())",
                                      logTail: tail)
        }
        do {
            try Connection.waitUntilReady(url: url(database: "postgres"), timeout: configuration.startTimeout)
            try requirePassword(bin: bin, owner: owner)
            try createDatabaseIfMissing()
        } catch {
            // Do not leave a half-started server behind.
            _ = try? run(bin, "pg_ctl", ["stop", "-D", dataDirectory, "-m", "immediate", "-w", "-s"], owner: owner)
            throw Failure.startFailed(reason: "\(error)", logTail: logTail())
        }
        logger.info("postgres ready", metadata: ["port": "\(configuration.port)", "data": "\(dataDirectory)",
                                                 "fresh": "\(initializedCluster)"])
    }

    /// How `stop` shuts the server down.
    public enum StopMode: String, Sendable {
        /// Disconnect clients, roll back open transactions, shut down cleanly.
        case fast
        /// Abort at once; the next start recovers from the WAL.
        case immediate
    }

    /// Stops the server if it runs (fast mode; immediate if fast does not finish in `timeout`).
    public func stop(mode: StopMode = .fast, timeout: Duration = .seconds(60)) throws {
        lock.lock(); defer { lock.unlock() }
        guard clusterVersion() != nil, runningServerPID() != nil else { return }
        let owner = try serverOwner()
        let bin = try binaries(forClusterVersion: clusterVersion())
        let secs = max(1, Int(timeout.components.seconds))
        let stopped = try run(bin, "pg_ctl", ["stop", "-D", dataDirectory, "-m", mode.rawValue, "-w", "-t", "\(secs)", "-s"],
                              owner: owner)
        if stopped.status == 0 || runningServerPID() == nil {
            logger.info("postgres stopped", metadata: ["data": "\(dataDirectory)"])
            return
        }
        guard mode == .fast else {
            throw Failure.commandFailed(command: "pg_ctl stop -m \(mode.rawValue)", status: stopped.status, output: stopped.output)
        }
        logger.warning("postgres did not stop in fast mode; stopping immediately")
        let forced = try run(bin, "pg_ctl", ["stop", "-D", dataDirectory, "-m", "immediate", "-w", "-t", "\(secs)", "-s"],
                             owner: owner)
        guard forced.status == 0 || runningServerPID() == nil else {
            throw Failure.commandFailed(command: "pg_ctl stop -m immediate", status: forced.status, output: forced.output)
        }
    }

    /// Whether a server runs on this data directory.
    public var isRunning: Bool { runningServerPID() != nil }

    /// The postmaster's pid, when a live Postgres process owns the data directory's lock file.
    public func runningServerPID() -> Int32? {
        guard let pid = postmasterPIDFromLockFile() else { return nil }
        return Self.isPostgresProcess(pid) ? pid : nil
    }

    // MARK: Throwaway servers for tests

    /// Starts a server in a fresh temporary state directory (`$TMPDIR/winnow-<label>-XXXXXX`) on
    /// a free port: what integration tests of the feature store need. Call ``destroy()`` after.
    public static func temporary(label: String = "pg", logger: Logger = Logger(label: "winnow.postgres.embedded")) throws -> EmbeddedPostgres {
        var template = Array((NSTemporaryDirectory() + "winnow-\(label)-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw Failure.unusableDirectory(path: NSTemporaryDirectory(), reason: "mkdtemp failed: \(String(cString: strerror(errno)))")
        }
        let dir = String(cString: made)
        let pg = EmbeddedPostgres(.init(stateDirectory: dir, port: try LoopbackPort.ephemeral()), logger: logger)
        do {
            try pg.start()
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
        return pg
    }

    /// Stops the server (immediately: nothing in it is kept) and removes its state directory.
    public func destroy() {
        try? stop(mode: .immediate)
        try? FileManager.default.removeItem(atPath: configuration.stateDirectory)
    }

    // MARK: Steps

    /// The user the server runs as: `postgres` when we are root, ourselves otherwise.
    struct Owner {
        let uid: uid_t
        let gid: gid_t
        /// `runuser -u postgres --` when switching users, empty otherwise.
        let prefix: [String]
        var switches: Bool { !prefix.isEmpty }
    }

    private func serverOwner() throws -> Owner {
        guard geteuid() == 0 else { return Owner(uid: geteuid(), gid: getegid(), prefix: []) }
        guard let pw = getpwnam("postgres") else {
            throw Failure.cannotDropPrivileges(reason: "no user named 'postgres' (install the Debian package 'postgresql')")
        }
        let candidates: [String] = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser", "/bin/runuser"]
        let runuser = candidates.first { access($0, X_OK) == 0 }
        guard let runuser else { throw Failure.cannotDropPrivileges(reason: "runuser not found (util-linux)") }
        return Owner(uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid, prefix: [runuser, "-u", "postgres", "--"])
    }

    private func prepareDirectories(owner: Owner) throws {
        let fm = FileManager.default
        for dir: String in [configuration.stateDirectory, rootDirectory, socketDirectory, logDirectory] {
            do {
                try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            } catch {
                throw Failure.unusableDirectory(path: dir, reason: "cannot create it: \(error.localizedDescription)")
            }
        }
        if !fm.fileExists(atPath: logFile) { fm.createFile(atPath: logFile, contents: nil) }
        chmod(logDirectory, 0o755)
        chmod(socketDirectory, 0o755)
        guard owner.switches else { return }
        try reachable(rootDirectory, by: owner)
        for path: String in [rootDirectory, socketDirectory, logFile] {
            guard chown(path, owner.uid, owner.gid) == 0 else {
                throw Failure.unusableDirectory(path: path, reason: "cannot hand it to the postgres user: \(String(cString: strerror(errno)))")
            }
        }
        chmod(rootDirectory, 0o755)
        var st = stat()
        if stat(dataDirectory, &st) == 0 && st.st_uid != owner.uid {
            throw Failure.unusableDirectory(path: dataDirectory, reason: "owned by uid \(st.st_uid), not the postgres user (uid \(owner.uid))")
        }
    }

    /// Gives `path`'s ancestors the search bit for others where the server's user could not
    /// otherwise pass through them (e.g. a state directory made by `mktemp -d`, mode 0700).
    private func reachable(_ path: String, by owner: Owner) throws {
        var prefix = ""
        for component in (path as NSString).standardizingPath.split(separator: "/") {
            prefix += "/" + component
            var st = stat()
            guard stat(prefix, &st) == 0 else { continue }
            let mode = st.st_mode
            let passes = (st.st_uid == owner.uid && mode & S_IXUSR != 0)
                || (st.st_gid == owner.gid && mode & S_IXGRP != 0)
                || (mode & S_IXOTH != 0)
            if passes { continue }
            guard chmod(prefix, (mode & 0o7777) | S_IXOTH) == 0 else {
                throw Failure.unusableDirectory(path: prefix, reason: "the postgres user cannot pass through it and chmod o+x failed: \(String(cString: strerror(errno)))")
            }
            logger.notice("gave \(prefix) the search bit for others so the postgres user can reach the state directory")
        }
    }

    /// The major version in `data/PG_VERSION`, if a cluster exists.
    private func clusterVersion() -> String? {
        let path = (dataDirectory as NSString).appendingPathComponent("PG_VERSION")
        guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let v = s.trimmingCharacters(in: .whitespacesAndNewlines)
        return v.isEmpty ? nil : v
    }

    struct Binaries {
        let directory: String
        let major: String
    }

    private static let debianRoot = "/usr/lib/postgresql"

    /// Picks the binaries: the configured directory, else the installed version that made the
    /// cluster, else the newest installed version.
    private func binaries(forClusterVersion dataVersion: String?) throws -> Binaries {
        let fm = FileManager.default
        func complete(_ dir: String) -> Bool {
            access(dir + "/initdb", X_OK) == 0 && access(dir + "/pg_ctl", X_OK) == 0
        }
        if let dir = configuration.binDirectory {
            guard complete(dir) else { throw Failure.binariesNotFound(searched: [dir]) }
            let version = (try? Subprocess.run([dir + "/pg_ctl", "--version"]).output) ?? ""
            // "pg_ctl (PostgreSQL) 15.4 (Debian 15.4-1)" -> "15"
            let major = version.split(separator: " ").dropFirst(2).first.map {
                String($0.split(separator: ".").first ?? Substring($0))
            } ?? ""
            if let dataVersion, !major.isEmpty, major != dataVersion {
                throw Failure.versionMismatch(dataDirectory: dataDirectory, dataVersion: dataVersion, available: [major])
            }
            return Binaries(directory: dir, major: major)
        }
        let versions = ((try? fm.contentsOfDirectory(atPath: Self.debianRoot)) ?? [])
            .filter { complete("\(Self.debianRoot)/\($0)/bin") }
            .sorted { $0.compare($1, options: .numeric) == .orderedDescending }
        guard let newest = versions.first else {
            throw Failure.binariesNotFound(searched: ["\(Self.debianRoot)/*/bin"])
        }
        if let dataVersion {
            guard versions.contains(dataVersion) else {
                throw Failure.versionMismatch(dataDirectory: dataDirectory, dataVersion: dataVersion, available: versions)
            }
            return Binaries(directory: "\(Self.debianRoot)/\(dataVersion)/bin", major: dataVersion)
        }
        return Binaries(directory: "\(Self.debianRoot)/\(newest)/bin", major: newest)
    }

    private func initialiseCluster(bin: Binaries, owner: Owner) throws {
        let fm = FileManager.default
        if let contents = try? fm.contentsOfDirectory(atPath: dataDirectory), !contents.isEmpty {
            throw Failure.unusableDirectory(path: dataDirectory, reason: "it is not empty but holds no cluster (no PG_VERSION)")
        }
        logger.info("initialising a new cluster", metadata: ["data": "\(dataDirectory)", "version": "\(bin.major)"])
        // the password reaches initdb in a file only the server's user reads, removed after
        let password = try writePasswordFile()
        let pwfile = (rootDirectory as NSString).appendingPathComponent("initdb.pw")
        defer { unlink(pwfile) }
        do { try (password + "\n").write(toFile: pwfile, atomically: false, encoding: .utf8) }
        catch { throw Failure.unusableDirectory(path: pwfile, reason: "cannot write the initial password: \(error.localizedDescription)") }
        chmod(pwfile, 0o600)
        if owner.switches { chown(pwfile, owner.uid, owner.gid) }
        let result = try run(bin, "initdb", ["-D", dataDirectory, "-U", "postgres", "--auth=scram-sha-256", "--pwfile=\(pwfile)",
                                             "-E", "UTF8", "--no-locale", "--no-instructions", "--no-sync"], owner: owner)
        guard result.status == 0 else {
            throw Failure.commandFailed(command: "initdb -D \(dataDirectory)", status: result.status, output: result.output)
        }
        let conf = (dataDirectory as NSString).appendingPathComponent("postgresql.conf")
        guard let handle = FileHandle(forWritingAtPath: conf) else {
            throw Failure.unusableDirectory(path: conf, reason: "cannot open it to add the include line")
        }
        defer { try? handle.close() }
        handle.seekToEndOfFile()
        handle.write(Data("\n# Settings of the embedded server, rewritten by winnow at each start.\ninclude_if_exists = 'winnow.conf'\n".utf8))
    }

    /// Draws a new password and writes it to `passwordFile` (0600); returns it.
    private func writePasswordFile() throws -> String {
        var g = SystemRandomNumberGenerator()
        let password = (0..<4).map { _ in String(format: "%016llx", g.next() as UInt64) }.joined()
        let path = passwordFile
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw Failure.unusableDirectory(path: path, reason: "cannot create the password file") }
        let line = Array("*:*:*:postgres:\(password)\n".utf8)
        let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fchmod(fd, 0o600)
        close(fd)
        guard written == line.count else { throw Failure.unusableDirectory(path: path, reason: "cannot write the password file") }
        return password
    }

    /// A cluster made before passwords (trust in pg_hba.conf, no password file): give the
    /// superuser a password (its SCRAM verifier, computed here), keep it in `passwordFile`, and
    /// switch every pg_hba.conf line to scram-sha-256. A cluster with a password is left alone.
    private func requirePassword(bin: Binaries, owner: Owner) throws {
        let hba = (dataDirectory as NSString).appendingPathComponent("pg_hba.conf")
        guard let text = try? String(contentsOfFile: hba, encoding: .utf8) else {
            throw Failure.unusableDirectory(path: hba, reason: "cannot read it")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let rule = { (l: Substring) in !l.trimmingCharacters(in: .whitespaces).hasPrefix("#") && l.split(separator: " ").last == "trust" }
        guard lines.contains(where: rule) || !FileManager.default.fileExists(atPath: passwordFile) else { return }
        logger.info("giving the embedded server's superuser a password (SCRAM); kept in \(passwordFile)")
        let password = try writePasswordFile()
        let conn = try Connection(url: url(database: "postgres"), logger: logger)
        defer { conn.close() }
        try conn.exec("SET password_encryption = 'scram-sha-256'")
        let verifier = try conn.passwordVerifier(password, user: "postgres")
        try conn.exec("ALTER ROLE postgres PASSWORD '\(verifier)'")
        let rewritten = lines.map { l -> Substring in
            guard rule(l) else { return l }
            return Substring(l.dropLast("trust".count) + "scram-sha-256")
        }.joined(separator: "\n")
        do { try rewritten.write(toFile: hba, atomically: true, encoding: .utf8) }
        catch { throw Failure.unusableDirectory(path: hba, reason: "cannot rewrite it: \(error.localizedDescription)") }
        if owner.switches { chown(hba, owner.uid, owner.gid) }
        chmod(hba, 0o600)
        _ = try conn.query("SELECT pg_reload_conf()")
    }

    /// Removes a `postmaster.pid` left by a server that is gone (crash, reboot, pid reused by
    /// another program), and the socket lock files beside it; throws if a server still runs.
    private func clearStaleServer() throws {
        guard let pid = postmasterPIDFromLockFile() else { return }
        if Self.isPostgresProcess(pid) {
            throw Failure.alreadyRunning(pid: pid, dataDirectory: dataDirectory)
        }
        logger.warning("removing a stale postmaster.pid (pid \(pid) is not a running postgres)")
        unlink((dataDirectory as NSString).appendingPathComponent("postmaster.pid"))
        for name in (try? FileManager.default.contentsOfDirectory(atPath: socketDirectory)) ?? [] where name.hasPrefix(".s.PGSQL.") {
            unlink((socketDirectory as NSString).appendingPathComponent(name))
        }
    }

    private func postmasterPIDFromLockFile() -> Int32? {
        let path = (dataDirectory as NSString).appendingPathComponent("postmaster.pid")
        guard let s = try? String(contentsOfFile: path, encoding: .utf8),
              let first = s.split(separator: "\n").first else { return nil }
        // The pid is negative when a single-user backend owns the directory.
        return Int32(first.trimmingCharacters(in: .whitespaces)).map { abs($0) }
    }

    /// Whether `pid` is alive and runs the postgres server binary.
    static func isPostgresProcess(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        // "pid (comm) state ..." — a zombie (state Z) is gone for our purposes.
        guard let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return false }
        let comm = stat[stat.index(after: open)..<close]
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return comm == "postgres" && state != "Z"
    }

    private func writeSettings(owner: Owner) throws {
        var settings: [String: String] = [
            "port": "\(configuration.port)",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": usesUnixSocket ? socketDirectory : "",
        ]
        for (k, v) in configuration.settings { settings[k] = v }
        var text = "# Written by winnow at each start of the embedded server; edits are overwritten.\n"
        for key in settings.keys.sorted() {
            let v = settings[key]!.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''")
            text += "\(key) = '\(v)'\n"
        }
        let path = (dataDirectory as NSString).appendingPathComponent("winnow.conf")
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw Failure.unusableDirectory(path: path, reason: "cannot write settings: \(error.localizedDescription)")
        }
        if owner.switches { chown(path, owner.uid, owner.gid) }
        chmod(path, 0o600)
    }

    private func createDatabaseIfMissing() throws {
        let conn = try Connection(url: url(database: "postgres"), logger: logger)
        defer { conn.close() }
        let exists = try conn.query("SELECT 1 FROM pg_database WHERE datname = $1", [configuration.database]).rowCount > 0
        guard !exists else { return }
        do {
            try conn.exec("CREATE DATABASE \(try conn.escapeIdentifier(configuration.database))")
            logger.info("created database", metadata: ["database": "\(configuration.database)"])
        } catch let error as PQError where error.sqlState == SQLState.duplicateDatabase {
            // Created concurrently by someone else: fine.
        }
    }

    private func run(_ bin: Binaries, _ tool: String, _ args: [String], owner: Owner) throws -> Subprocess.Outcome {
        var env = ProcessInfo.processInfo.environment
        for key in env.keys where key.hasPrefix("PG") { env[key] = nil }
        env["LC_ALL"] = "C"
        return try Subprocess.run(owner.prefix + [bin.directory + "/" + tool] + args,
                                  workingDirectory: rootDirectory, environment: env)
    }

    /// The last lines of the server log, for error messages.
    public func logTail(lines: Int = 20) -> String {
        guard let s = try? String(contentsOfFile: logFile, encoding: .utf8) else { return "(no server log at \(logFile))" }
        return s.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    private func percentEncoded(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }
}
