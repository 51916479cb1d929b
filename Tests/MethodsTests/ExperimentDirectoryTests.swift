import XCTest
import Foundation
@testable import Methods
@testable import Jobs

/// A stopped sweep continues from its directory: records survive, a torn last line is dropped,
/// results made under other settings are refused instead of mixed into the table.
final class ExperimentDirectoryTests: XCTestCase {
    struct Record: Codable, Equatable { var method: String; var seed: Int }
    var path: String!

    override func setUp() { path = NSTemporaryDirectory() + "winnow-experiment-\(UUID().uuidString)" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: path) }

    func testRecordsSurviveReopeningAndATornLastLineIsDropped() throws {
        let settings = ["epochs": "200", "data": "ml-100k"]
        let first = try ExperimentDirectory(path: path, settings: settings)
        try first.append(Record(method: "base", seed: 1), to: "runs.jsonl")
        try first.append(Record(method: "dss", seed: 1), to: "runs.jsonl")
        // a stop in the middle of the third write
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: path + "/runs.jsonl"))
        try handle.seekToEnd(); try handle.write(contentsOf: Data(#"{"method":"atjt","se"#.utf8)); try handle.close()
        let again = try ExperimentDirectory(path: path, settings: settings)
        XCTAssertEqual(try again.records("runs.jsonl", as: Record.self), [Record(method: "base", seed: 1), Record(method: "dss", seed: 1)])
        try again.append(Record(method: "atjt", seed: 1), to: "runs.jsonl")
        XCTAssertEqual(try again.records("runs.jsonl", as: Record.self).map(\.method), ["base", "dss", "atjt"],
                       "the append after the dropped line starts a line of its own")
    }

    func testADamagedLineInTheMiddleIsAnErrorNamingIt() throws {
        let dir = try ExperimentDirectory(path: path, settings: [:])
        try dir.append(Record(method: "base", seed: 1), to: "runs.jsonl")
        let file = path + "/runs.jsonl"
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try ("garbage\n" + text).write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try dir.records("runs.jsonl", as: Record.self)) { error in
            guard case .damaged(_, let line, _) = error as? ExperimentDirectoryError else { return XCTFail("\(error)") }
            XCTAssertEqual(line, 1)
        }
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "garbage\n" + text, "nothing dropped")
    }

    func testOtherSettingsAreRefusedNamingTheField() throws {
        _ = try ExperimentDirectory(path: path, settings: ["epochs": "200", "data": "ml-100k"])
        XCTAssertThrowsError(try ExperimentDirectory(path: path, settings: ["epochs": "50", "data": "ml-100k"])) { error in
            XCTAssertEqual(error as? ExperimentDirectoryError,
                           .otherSettings(path: path, field: "epochs", stored: "200", current: "50"))
        }
        XCTAssertThrowsError(try ExperimentDirectory(path: path, settings: ["epochs": "200", "data": "ml-100k", "lr": "0.001"]),
                             "a setting the stored results did not record is a difference too")
    }

    func testStoredValuesReadBackAndMissingOrUnreadableOnesAreAbsent() throws {
        let dir = try ExperimentDirectory(path: path, settings: [:])
        try dir.store(Record(method: "csrec-m", seed: 2), at: "runs/gru4rec/csrec-m/seed2.json")
        XCTAssertEqual(dir.stored("runs/gru4rec/csrec-m/seed2.json", as: Record.self), Record(method: "csrec-m", seed: 2))
        XCTAssertNil(dir.stored("runs/gru4rec/csrec-m/seed3.json", as: Record.self))
        try "{".write(toFile: path + "/bad.json", atomically: true, encoding: .utf8)
        XCTAssertNil(dir.stored("bad.json", as: Record.self), "an unreadable result is trained again")
    }
}
