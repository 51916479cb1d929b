import CZeroMQ
import Foundation

/// A CurveZMQ key pair (Curve25519), both keys in Z85 text: 40 characters for 32 bytes.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) throws {
        guard CurveKeyPair.isKey(publicKey) else { throw CurveError.badKey("public key \"\(publicKey.prefix(48))\"") }
        guard CurveKeyPair.isKey(secretKey) else { throw CurveError.badKey("a secret key") }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A fresh key pair from libzmq (libsodium's random source).
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else {
            throw CurveError.unsupported("zmq_curve_keypair: \(ZMQError(code: zmq_errno(), function: "zmq_curve_keypair"))")
        }
        return try CurveKeyPair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    /// Whether `text` is a Z85-encoded 32-byte key.
    public static func isKey(_ text: String) -> Bool { text.utf8.count == 40 && decode(text) != nil }

    /// The 32 bytes of a Z85 key; nil when `text` is not one.
    public static func decode(_ text: String) -> [UInt8]? {
        guard text.utf8.count == 40 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, text) == nil ? nil : out
    }

    /// The Z85 text of 32 key bytes.
    public static func encode(_ bytes: [UInt8]) -> String {
        precondition(bytes.count == 32, "a CURVE key is 32 bytes")
        var out = [CChar](repeating: 0, count: 41)
        _ = zmq_z85_encode(&out, bytes, 32)
        return String(cString: out)
    }

    /// Whether this libzmq was built with CURVE (libsodium).
    public static var isSupported: Bool { zmq_has("curve") == 1 }
}

public enum CurveError: Error, CustomStringConvertible, Equatable {
    case badKey(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .badKey(let what): return "not a Z85 CURVE key (40 characters): \(what)"
        case .unsupported(let why): return "this libzmq has no CURVE support: \(why)"
        }
    }
}

extension ZMQSocket {
    /// Makes this socket the CURVE server side of its connections: peers must know `keys.publicKey`,
    /// and each connecting peer's key goes to the context's ZAP handler, under `domain`, to admit.
    public func makeCurveServer(_ keys: CurveKeyPair, domain: String) throws {
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8))
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(keys.secretKey.utf8))
    }

    /// Makes this socket a CURVE client of a server whose public key is `serverKey`, identifying
    /// itself with `keys`. Set before `connect`.
    public func makeCurveClient(_ keys: CurveKeyPair, serverKey: String) throws {
        guard CurveKeyPair.isKey(serverKey) else { throw CurveError.badKey("server key \"\(serverKey.prefix(48))\"") }
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: Array(serverKey.utf8))
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: Array(keys.publicKey.utf8))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(keys.secretKey.utf8))
    }
}

/// libzmq's authentication hook (ZAP, RFC 27) for a context: a thread answering the handshakes of
/// every CURVE server socket of the context, admitting a client only when its public key is in
/// the allow-list of the socket's ZAP domain. Without a handler libzmq admits any client that
/// knows the server's key, so the handler must be running before the first CURVE server socket
/// binds (`ZAPHandler.shared` starts it on first use).
public final class ZAPHandler: @unchecked Sendable {
    public static let endpoint = "inproc://zeromq.zap.01"

    /// The handler of the shared context.
    public static let shared: ZAPHandler = {
        do { return try ZAPHandler(context: .shared) } catch {
            preconditionFailure("cannot bind \(ZAPHandler.endpoint) in the shared context: \(error)")
        }
    }()

    private let socket: ZMQSocket
    private let lock = NSLock()
    private var allowed: [String: Set<[UInt8]>] = [:]
    private var tallies = (admitted: 0, refused: 0)
    private var refusalObserver: (@Sendable (_ domain: String, _ address: String, _ key: String) -> Void)?

    /// Calls `observer` with the domain, the peer's address and its Z85 key for each refused client.
    public func onRefusal(_ observer: @escaping @Sendable (_ domain: String, _ address: String, _ key: String) -> Void) {
        lock.withLock { refusalObserver = observer }
    }

    /// Binds the ZAP endpoint of `context` and starts answering; one per context, for its life.
    public init(context: ZMQContext) throws {
        socket = try ZMQSocket(.rep, context: context)
        try socket.bind(Self.endpoint)
        let thread = Thread { [self] in serve() }
        thread.name = "zap"
        thread.start()
    }

    /// Admits exactly `keys` (Z85) on server sockets whose ZAP domain is `domain`.
    public func allow(_ keys: [String], domain: String) throws {
        let bytes = Set(try keys.map { key in
            guard let b = CurveKeyPair.decode(key) else { throw CurveError.badKey("allow-list entry \"\(key.prefix(48))\"") }
            return b
        })
        lock.withLock { allowed[domain] = bytes }
    }

    /// Handshakes admitted and refused so far.
    public var admitted: Int { lock.withLock { tallies.admitted } }
    public var refused: Int { lock.withLock { tallies.refused } }

    private func serve() {
        while true {
            guard let frames = try? socket.receiveMultipart(), !frames.isEmpty else { continue }
            let (status, text) = decide(frames)
            lock.withLock { if status == "200" { tallies.admitted += 1 } else { tallies.refused += 1 } }
            let requestID = frames.count > 1 ? frames[1] : []
            _ = try? socket.send(multipart: [Array("1.0".utf8), requestID, Array(status.utf8), Array(text.utf8), [], []])
        }
    }

    /// ZAP request: version, request id, domain, address, routing id, mechanism, credentials.
    private func decide(_ frames: [Frame]) -> (String, String) {
        guard frames.count >= 6, String(decoding: frames[0], as: UTF8.self) == "1.0" else { return ("400", "malformed ZAP request") }
        let domain = String(decoding: frames[2], as: UTF8.self)
        let mechanism = String(decoding: frames[5], as: UTF8.self)
        guard mechanism == "CURVE", frames.count >= 7 else { return ("400", "mechanism \(mechanism) is not admitted") }
        let key = frames[6]
        guard let keys = lock.withLock({ allowed[domain] }) else { return ("400", "no allow-list for domain \(domain)") }
        if keys.contains(key) { return ("200", "OK") }
        lock.withLock { refusalObserver }?(domain, String(decoding: frames[3], as: UTF8.self),
                                           key.count == 32 ? CurveKeyPair.encode(key) : "(\(key.count) bytes)")
        return ("400", "client key not in the allow-list")
    }
}
