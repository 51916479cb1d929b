import RPC
import SwiftProtobuf
import WinnowProto
import XCTest

/// A reply's head frame is encoded by hand when it holds only a request id and a code; it must be
/// byte for byte what SwiftProtobuf writes, for every id width and every code, known or not.
final class ReplyHeaderEncodingTests: XCTestCase {
    func testHandEncodedReplyHeadIsWhatSwiftProtobufWrites() throws {
        let ids: [UInt64] = [0, 1, 127, 128, 300, 16_383, 16_384, 1 << 32, UInt64.max]
        let codes = Winnow_V1_StatusCode.allCases + [.UNRECOGNIZED(99), .UNRECOGNIZED(-5), .UNRECOGNIZED(Int(Int32.min))]
        for tag in [WireProtocol.reply, WireProtocol.workerReply] {
            for id in ids {
                for code in codes {
                    let header = WireProtocol.replyHeader(id: id, code: code)
                    let expected = tag + (try header.serializedBytes() as [UInt8])
                    XCTAssertEqual(WireProtocol.head(tag, header), expected, "id \(id), code \(code)")
                    let decoded = try Winnow_V1_ReplyHeader(
                        serializedBytes: XCTUnwrap(WireProtocol.headerBytes(WireProtocol.head(tag, header), tag: tag)))
                    XCTAssertEqual(decoded, header)
                }
            }
        }
    }

    func testRepliesWithAMessageOrMetadataKeepThemInTheHead() throws {
        var withMessage = WireProtocol.replyHeader(id: 7, code: .notFound, message: "no worker serves teacher")
        var withMetadata = WireProtocol.replyHeader(id: 8, code: .ok)
        withMetadata.metadata = ["trace": "abc"]
        for header in [withMessage, withMetadata] {
            let head = WireProtocol.head(WireProtocol.reply, header)
            XCTAssertEqual(head, WireProtocol.reply + (try header.serializedBytes() as [UInt8]))
            let decoded = try Winnow_V1_ReplyHeader(
                serializedBytes: XCTUnwrap(WireProtocol.headerBytes(head, tag: WireProtocol.reply)))
            XCTAssertEqual(decoded, header)
        }
        withMessage.message = ""
        XCTAssertEqual(WireProtocol.head(WireProtocol.reply, withMessage).count, 4 + 2 + 2)
    }
}
