import SwiftProtobuf
import WinnowProto
import ZeroMQ

/// The frames of Winnow's wire protocol. Every message starts with a tag frame naming its kind
/// and protocol version; a ROUTER socket additionally sees the sender's routing id before it.
///
///     request          caller -> server or broker   [WRQ1, RequestHeader, payload]
///     reply            server or broker -> caller   [WRP1, ReplyHeader, payload]
///     forwarded req.   broker -> worker             [WFW1, caller routing id, RequestHeader, payload]
///     worker reply     worker -> broker             [WBK1, caller routing id, ReplyHeader, payload]
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
