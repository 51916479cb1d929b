import XCTest
@testable import Data

final class InterReaderTests: XCTestCase {
    let reader = InterReader()

    func testColumnsAreFoundByNameWhateverTheirOrder() throws {
        let text = "rating:float\textra:token_seq\ttimestamp:float\titem_id:token\tuser_id:token\n" +
            "4\ta b\t100\ti1\tu1\n" +
            "3.5\t\t99.5\ti2\tu2\n" +
            "5\tx\t101\ti1\tu2\n"
        let x = try reader.parse(text: text, name: "t.inter")
        XCTAssertEqual(x.count, 3)
        XCTAssertEqual(x.users, [0, 1, 1])
        XCTAssertEqual(x.items, [0, 1, 0])
        XCTAssertEqual(x.timestamps!, [100, 99.5, 101])
        XCTAssertEqual(x.ratings!, [4, 3.5, 5])
        XCTAssertEqual(x.userTokens[1], "u2")
        XCTAssertEqual(x.itemTokens.index(of: "i2"), 1)
        XCTAssertNil(x.itemTokens.index(of: "i3"))
    }

    func testTokenTableKeepsShortLongAndPrefixSharingTokensApartAcrossGrowth() {
        var t = TokenTable()
        var tokens: [String] = []
        for i in 0..<5000 {
            tokens += ["\(i)", "shared-prefix-\(i)", "shared-p", "shared-pr\(i % 7)", "é\(i)", ""]
        }
        var ids: [Int32] = []
        for s in tokens { ids.append(t.intern(s)) }
        var first: [String: Int32] = [:]
        for (s, id) in zip(tokens, ids) {
            if let f = first[s] { XCTAssertEqual(f, id, s) } else { first[s] = id }
        }
        XCTAssertEqual(t.count, first.count)
        for (s, id) in first {
            XCTAssertEqual(t[Int(id)], s)
            XCTAssertEqual(t.index(of: s), id)
        }
        XCTAssertNil(t.index(of: "shared-prefix-5000"))
        XCTAssertNil(t.index(of: "shared-"))
    }

    func testCRLFAndMissingFinalNewlineAreAccepted() throws {
        let text = "user_id:token\titem_id:token\ttimestamp:float\r\nA\tB\t1\r\nA\tC\t2"
        let x = try reader.parse(text: text, name: "t.inter")
        XCTAssertEqual(x.count, 2)
        XCTAssertEqual(x.itemTokens[1], "C")
        XCTAssertEqual(x.timestamps!, [1, 2])
        XCTAssertNil(x.ratings)
    }

    func testNumbersParseExactlyLikeStrtod() throws {
        let values = ["881250949", "0.1", "-3.25", "1e3", "2.5E-2", "123456789012345678", "0.000000000000000000000001",
                      "+7", "1.7976931348623157e308", "3.14159265358979", "00012.50"]
        for v in values {
            let bytes = Array(v.utf8)
            let parsed = bytes.withUnsafeBufferPointer { parseDouble($0.baseAddress!, $0.count) }
            XCTAssertEqual(parsed, strtod(v, nil), v)
        }
        for bad in ["", "-", ".", "1.2.3", "12a", "nan", "inf", " 1", "1 "] {
            let bytes = Array(bad.utf8)
            let parsed = bytes.withUnsafeBufferPointer { b in b.count == 0 ? nil : parseDouble(b.baseAddress!, b.count) }
            XCTAssertNil(parsed, bad)
        }
    }

    func testSmallBufferGivesTheSameResultAsALargeOne() throws {
        var text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        var rng = SplitMix64(seed: 7)
        for _ in 0..<2000 {
            text += "user\(rng.bounded(50))\titem-\(rng.bounded(300))-with-a-longer-token\t\(rng.bounded(5) + 1)\t\(rng.bounded(1_000_000))\n"
        }
        let big = try reader.parse(text: text, name: "t")
        let small = try InterReader(bufferSize: 64).parse(text: text, name: "t")
        XCTAssertEqual(big.count, 2000)
        XCTAssertEqual(big.users, small.users)
        XCTAssertEqual(big.items, small.items)
        XCTAssertEqual(big.timestamps!, small.timestamps!)
        XCTAssertEqual(big.ratings!, small.ratings!)
        XCTAssertEqual((0..<big.itemTokens.count).map { big.itemTokens[$0] },
                       (0..<small.itemTokens.count).map { small.itemTokens[$0] })
    }

    func testReadsAFileFromDisk() throws {
        let path = NSTemporaryDirectory() + "winnow-reader-\(getpid()).inter"
        try "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        let x = try reader.read(path: path)
        XCTAssertEqual(x.count, 1)
        XCTAssertEqual(x.userTokens[0], "1")
    }

    private func assertError(_ text: String, _ kind: InterError.Kind, line: Int, column: String?,
                             reader r: InterReader? = nil, file: StaticString = #filePath, lineNo: UInt = #line) {
        XCTAssertThrowsError(try (r ?? reader).parse(text: text, name: "bad.inter"), file: file, line: lineNo) { e in
            guard let e = e as? InterError else { return XCTFail("not an InterError: \(e)", file: file, line: lineNo) }
            XCTAssertEqual(e.kind, kind, "\(e)", file: file, line: lineNo)
            XCTAssertEqual(e.line, line, "\(e)", file: file, line: lineNo)
            XCTAssertEqual(e.column, column, "\(e)", file: file, line: lineNo)
            XCTAssertEqual(e.file, "bad.inter", file: file, line: lineNo)
            XCTAssertTrue(e.description.hasPrefix("bad.inter:"), e.description, file: file, line: lineNo)
        }
    }

    let header = "user_id:token\titem_id:token\ttimestamp:float\n"

    func testErrorsNameTheLineColumnAndReason() {
        assertError(header + "1\t2\t3\n1\t2\n", .wrongFieldCount, line: 3, column: nil)
        assertError(header + "1\t2\t3\n1\t2\t3\t4\n", .wrongFieldCount, line: 3, column: nil)
        assertError(header + "1\t2\t3\n1\t2\t3\n1\t2\tabc\n", .notANumber, line: 4, column: "timestamp")
        assertError(header + "1\t2\t1e999\n", .notANumber, line: 2, column: "timestamp")
        assertError(header + "1\t\t3\n", .emptyToken, line: 2, column: "item_id")
        assertError(header + "\t2\t3\n", .emptyToken, line: 2, column: "user_id")
        assertError(header + "1\t2\t3\n\n1\t2\t3\n", .wrongFieldCount, line: 3, column: nil)
        assertError(header + "1\t2\t3\n1\t2", .truncatedLastLine, line: 3, column: nil)
        assertError(header + "1\t2\t3\n1\t2\t3", .truncatedLastLine, line: 3, column: nil,
                    reader: InterReader(requireFinalNewline: true))
        assertError("", .emptyFile, line: 1, column: nil)
        assertError("user_id:token\titem_id:token\n1\t2\n", .missingColumn, line: 1, column: "timestamp")
        assertError("user_id:float\titem_id:token\ttimestamp:float\n", .missingColumn, line: 1, column: "user_id")
        assertError("user_id:token\titem_id\ttimestamp:float\n", .badHeader, line: 1, column: "item_id")
        assertError("user_id:token\titem_id:blob\ttimestamp:float\n", .badHeader, line: 1, column: "item_id:blob")
        assertError("user_id:token\titem_id:token\tuser_id:token\ttimestamp:float\n", .badHeader, line: 1, column: "user_id")
    }

    func testInvalidUTF8IsRejected() {
        var bytes = Array((header + "1\t").utf8)
        bytes += [0xC3, 0x28]
        bytes += Array("\t5\n".utf8)
        XCTAssertThrowsError(try reader.parse(contents: bytes, name: "bad.inter")) { e in
            XCTAssertEqual((e as? InterError)?.kind, .invalidUTF8)
            XCTAssertEqual((e as? InterError)?.line, 2)
            XCTAssertEqual((e as? InterError)?.column, "item_id")
        }
    }

    func testTimestampCanBeOptional() throws {
        let r = InterReader(columns: .init(timestamp: nil))
        let x = try r.parse(text: "user_id:token\titem_id:token\n1\t2\n", name: "t")
        XCTAssertNil(x.timestamps)
        XCTAssertEqual(x.count, 1)
    }

    func testMissingFileIsAnIOError() {
        XCTAssertThrowsError(try reader.read(path: "/nonexistent/winnow.inter")) { e in
            XCTAssertEqual((e as? InterError)?.kind, .io)
            XCTAssertTrue("\(e)".contains("/nonexistent/winnow.inter"))
        }
    }
}
