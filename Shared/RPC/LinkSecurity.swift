import Foundation
import Logging
import ZeroMQ

/// CurveZMQ on every link of a process: its own key pair, the public keys of the services it
/// dials, and the keys it admits. Loaded from a key directory that `winnow up --curve` (or
/// `winnow keys`) writes:
///
///     <dir>/<name>.key     "public <z85>\nsecret <z85>\n", mode 0600: one per service kind
///                          (broker, featurestore, teacher, …) and one for command-line clients
///     <dir>/allowed-keys   "<name> <z85>" per line: the peers every server admits, and the key
///                          a client expects of the service it dials
///
/// Replicas of a service (two teachers) share their kind's key pair. A process that has one
/// makes each server socket a CURVE server whose ZAP domain admits exactly the allow-list, and
/// each client socket a CURVE client of the peer's public key; without one, a server binds only
/// loopback (`RPCServer.bind`).
public final class LinkSecurity: Sendable {
    /// The key directory.
    public let directory: String
    /// Whose key pair this process uses.
    public let identity: String
    public let keys: CurveKeyPair
    /// Name → public key, from `allowed-keys`.
    public let members: [String: String]

    public static let allowedKeysFile = "allowed-keys"
    /// The identity of command-line clients (`winnow status`, `call`, `recommend`, …).
    public static let clientIdentity = "client"

    /// Reads `directory` as `identity`: its key file and the allow-list.
    public init(directory: String, identity: String) throws {
        self.directory = directory
        self.identity = identity
        keys = try Self.readKeyFile(directory + "/" + identity + ".key", identity: identity, directory: directory)
        members = try Self.readAllowList(directory)
        guard members[identity] == keys.publicKey else {
            throw LinkSecurityError.malformed("\(directory)/\(Self.allowedKeysFile) does not list \(identity)'s public key \(keys.publicKey)")
        }
    }

    /// A key file's pair; refused when others (not owner, not group) may read it. The group may:
    /// a Kubernetes Secret is mounted root-owned, readable by the pod's fsGroup.
    static func readKeyFile(_ keyPath: String, identity: String, directory: String) throws -> CurveKeyPair {
        guard let text = try? String(contentsOfFile: keyPath, encoding: .utf8) else {
            throw LinkSecurityError.missing("no key file \(keyPath) (winnow keys --dir \(directory) --names \(identity))")
        }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1].trimmingCharacters(in: .whitespaces) }
        }
        guard let pub = fields["public"], let sec = fields["secret"] else {
            throw LinkSecurityError.malformed("\(keyPath): expected lines \"public <z85>\" and \"secret <z85>\"")
        }
        // stat follows links: a Kubernetes Secret's files are links to the mounted data
        var info = stat()
        if stat(keyPath, &info) == 0, info.st_mode & 0o007 != 0 {
            throw LinkSecurityError.malformed("\(keyPath) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))): chmod 600 it")
        }
        do { return try CurveKeyPair(publicKey: pub, secretKey: sec) } catch {
            throw LinkSecurityError.malformed("\(keyPath): \(error)")
        }
    }

    private static func readAllowList(_ directory: String) throws -> [String: String] {
        let path = directory + "/" + allowedKeysFile
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw LinkSecurityError.missing("no allow-list \(path)")
        }
        var members: [String: String] = [:]
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let parts = trimmed.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard parts.count == 2, CurveKeyPair.isKey(parts[1]) else {
                throw LinkSecurityError.malformed("\(path) line \(n + 1): expected \"<name> <40-character z85 key>\", got \"\(trimmed.prefix(80))\"")
            }
            members[parts[0]] = parts[1]
        }
        return members
    }

    /// The public key of the service `peer` names (its kind: the part before the first `/`).
    public func serverKey(for peer: String) throws -> String {
        let kind = String(peer.split(separator: "/", maxSplits: 1).first ?? Substring(peer))
        guard let key = members[kind] else {
            throw LinkSecurityError.missing("\(directory)/\(Self.allowedKeysFile) has no key for \(kind), which this process dials")
        }
        return key
    }

    /// The ZAP domain of this directory's server sockets.
    public var domain: String { "winnow:" + directory }

    /// Binds a server socket at `endpoint`: a CURVE server admitting the allow-list when
    /// `security` is given; without it, loopback only (anything else throws, naming why).
    public static func bind(_ socket: ZMQSocket, _ endpoint: String, security: LinkSecurity?, logger: Logger? = nil) throws {
        if let security {
            if let logger {
                ZAPHandler.shared.onRefusal { _, address, key in
                    logger.warning("refused a CURVE client at \(address): key \(key) is not in the allow-list")
                }
            }
            try ZAPHandler.shared.allow(Array(security.members.values), domain: security.domain)
            try socket.makeCurveServer(security.keys, domain: security.domain)
        } else if !LinkSecurityError.isLoopback(endpoint) {
            throw LinkSecurityError.unauthenticatedBind(endpoint)
        }
        try socket.bind(endpoint)
    }

    /// Makes `socket` a CURVE client of the service `peer` (before it connects).
    func secureClient(_ socket: ZMQSocket, peer: String) throws {
        try socket.makeCurveClient(keys, serverKey: try serverKey(for: peer))
    }

    // MARK: the process's keys

    private static let installedLock = NSLock()
    nonisolated(unsafe) private static var installedValue: LinkSecurity?

    /// The keys this process's servers and clients use unless given others: set once at start
    /// by a service (`--curve-keys`) or the command line (`winnow … --curve-keys`); nil: none.
    public static var installed: LinkSecurity? {
        get { installedLock.withLock { installedValue } }
        set { installedLock.withLock { installedValue = newValue } }
    }

    // MARK: writing a key directory

    /// Makes a key pair for each of `names` that has none in `directory` (0600) and rewrites the
    /// allow-list with every key pair there. Existing pairs are kept, so running it again adds.
    @discardableResult
    public static func create(directory: String, names: [String]) throws -> [String: String] {
        guard CurveKeyPair.isSupported else { throw CurveError.unsupported("zmq_has(\"curve\") is false") }
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for name in names {
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw LinkSecurityError.malformed("key name \"\(name)\": letters, digits, - and _ only")
            }
            let path = directory + "/" + name + ".key"
            if fm.fileExists(atPath: path) { continue }
            let pair = try CurveKeyPair.generate()
            guard fm.createFile(atPath: path, contents: Data("public \(pair.publicKey)\nsecret \(pair.secretKey)\n".utf8),
                                attributes: [.posixPermissions: 0o600]) else {
                throw LinkSecurityError.missing("cannot write \(path)")
            }
        }
        var members: [String: String] = [:]
        for file in try fm.contentsOfDirectory(atPath: directory).sorted() where file.hasSuffix(".key") {
            let name = String(file.dropLast(4))
            members[name] = try readKeyFile(directory + "/" + file, identity: name, directory: directory).publicKey
        }
        let list = members.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: "\n") + "\n"
        try Data(("# name and CURVE public key of every peer the stack admits\n" + list).utf8)
            .write(to: URL(fileURLWithPath: directory + "/" + allowedKeysFile), options: .atomic)
        return members
    }
}

public enum LinkSecurityError: Error, CustomStringConvertible, Equatable {
    case missing(String)
    case malformed(String)
    /// A server asked to bind past loopback with no keys.
    case unauthenticatedBind(String)

    public var description: String {
        switch self {
        case .missing(let what): return "CURVE keys: \(what)"
        case .malformed(let what): return "CURVE keys: \(what)"
        case .unauthenticatedBind(let endpoint):
            return "refusing to bind \(endpoint) without CURVE keys: anything beyond loopback must authenticate its peers (give the service --curve-keys DIR or WINNOW_CURVE_KEYS, made by winnow up --curve or winnow keys; or bind tcp://127.0.0.1)"
        }
    }

    /// Whether an endpoint is reachable from this host only.
    public static func isLoopback(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        let rest = endpoint.dropFirst(6)
        return rest.hasPrefix("127.") || rest.hasPrefix("[::1]:")
    }
}
