import SwiftProtobuf
import WinnowProto
import ZeroMQ

/// The frames of Winnow's wire protocol. Every message starts with a head frame: a 4-byte tag
/// naming its kind and protocol version, followed by the protobuf header. A ROUTER socket
/// additionally sees the sender's routing id before it.
///
///     request          caller -> server or broker   [WRQ1 RequestHeader, payload]
///     reply            server or broker -> caller   [WRP1 ReplyHeader, payload]
///     forwarded req.   broker -> worker             [WFW1 RequestHeader, caller routing id, payload]
///     worker reply     worker -> broker             [WBK1 ReplyHeader, caller routing id, payload]
///
/// (Tag and header share a frame because libzmq checks its command mailbox, a system call or
/// two, on every frame sent.)
///
/// The payload frame is always present (empty when the message is empty or the status is not OK).
/// Workers talk to the broker's own rpcs (Register, Heartbeat, ...) with plain requests addressed
/// to the service name `broker`. See docs/WIRE.md.
public enum WireProtocol {
    public static let request: Frame = Array("WRQ1".utf8)
    public static let reply: Frame = Array("WRP1".utf8)
    public static let forward: Frame = Array("WFW1".utf8)
    public static let workerReply: Frame = Array("WBK1".utf8)

    /// The service name the broker's own rpcs are addressed to.
    public static let brokerService = "broker"

    /// Default largest payload frame accepted (64 MiB); larger gets INVALID_ARGUMENT.
    public static let defaultMaxPayloadBytes = 64 << 20
    /// Largest header frame accepted; headers are small.
    public static let maxHeaderBytes = 64 << 10
    /// Slack above the payload cap at which libzmq itself drops the connection of the sender
    /// (ZMQ_MAXMSGSIZE), so a frame far over the cap is never even buffered whole.
    public static let hardLimitSlack = 1 << 20

    /// Longest routing id accepted in a forwarded request (libzmq ids are at most 255 bytes).
    public static let maxRoutingIDBytes = 255

    /// The head frame: `tag` followed by the serialised header.
    public static func head(_ tag: Frame, _ header: some SwiftProtobuf.Message) -> Frame {
        tag + bytes(header)
    }

    /// The head frame of a reply (or a worker's reply). A reply carrying only a request id and a
    /// status code, as almost every reply does, is encoded here directly: a serialiser pass
    /// costs a size pass, an allocation and a copy into the head frame on every message, while
    /// these are two varint fields. Any other reply goes through SwiftProtobuf; both give the
    /// same bytes (ReplyHeaderEncodingTests).
    public static func head(_ tag: Frame, _ header: Winnow_V1_ReplyHeader) -> Frame {
        guard header.message.isEmpty, header.metadata.isEmpty, header.unknownFields.data.isEmpty else {
            return tag + bytes(header)
        }
        var frame = tag
        frame.reserveCapacity(tag.count + 22) // two keys and two varints of at most ten bytes
        // proto3 leaves fields at their defaults out; field 1 (request_id, varint), field 2 (code, varint).
        if header.requestID != 0 {
            frame.append(0x08)
            appendVarint(header.requestID, to: &frame)
        }
        if header.code.rawValue != 0 {
            frame.append(0x10)
            // An enum is an int32 on the wire: a negative value takes ten bytes, sign-extended.
            appendVarint(UInt64(bitPattern: Int64(header.code.rawValue)), to: &frame)
        }
        return frame
    }

    private static func appendVarint(_ value: UInt64, to frame: inout Frame) {
        var value = value
        while value >= 0x80 {
            frame.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        frame.append(UInt8(value))
    }

    /// The head frame from a header already serialised.
    public static func head(_ tag: Frame, headerBytes: Frame) -> Frame { tag + headerBytes }

    /// The header bytes of a head frame that starts with `tag`; nil for another tag, a frame too
    /// short to hold one, or a header over `maxHeaderBytes`.
    public static func headerBytes(_ frame: Frame, tag: Frame) -> Frame? {
        guard frame.count >= tag.count, frame.count - tag.count <= maxHeaderBytes,
              frame[0..<tag.count].elementsEqual(tag) else { return nil }
        return Array(frame[tag.count...])
    }

    /// A DEALER connected to `endpoint` as clients and workers use one: libzmq drops a peer whose
    /// frame is far over `maxPayloadBytes`, queues are deep enough for pipelined callers, and a
    /// lost connection is retried quickly (50 ms, backing off to 500 ms). With `security`, a
    /// CURVE client of the service `peer`.
    static func connectedDealer(_ endpoint: String, maxPayloadBytes: Int, security: LinkSecurity?, peer: String) throws -> ZMQSharedSocket {
        let dealer = try ZMQSocket(.dealer)
        try dealer.setMaxMessageSize(Int64(maxPayloadBytes + hardLimitSlack))
        try dealer.setHighWaterMarks(send: 100_000, receive: 100_000)
        try dealer.setReconnectInterval(milliseconds: 50, max: 500)
        try security?.secureClient(dealer, peer: peer)
        try dealer.connect(endpoint)
        return try ZMQSharedSocket(dealer)
    }

    /// A reply header with no payload, for errors.
    public static func replyHeader(id: UInt64, code: Winnow_V1_StatusCode, message: String = "") -> Winnow_V1_ReplyHeader {
        var header = Winnow_V1_ReplyHeader()
        header.requestID = id
        header.code = code
        header.message = message
        return header
    }

    /// Serialises a message; generated messages only fail to serialise when a required field of
    /// proto2 is missing, which proto3 has none of, so a failure here is a programmer error.
    public static func bytes(_ message: some SwiftProtobuf.Message) -> Frame {
        do { return try message.serializedBytes() } catch {
            preconditionFailure("cannot serialise \(type(of: message)): \(error)")
        }
    }
}
