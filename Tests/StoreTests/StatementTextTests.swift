import Foundation
import XCTest

/// Every SQL statement in the project takes its inputs as bind parameters: no string literal
/// that reads as SQL interpolates anything but the store's own integers and identifiers, named
/// here one by one with the reason they are not input. A new interpolation fails this test until
/// it becomes a parameter (or, for COPY, which takes none, a session setting the statement reads:
/// `Datasets.dataset`).
final class StatementTextTests: XCTestCase {
    /// Interpolations allowed in SQL text, and why each is not input.
    static let allowed: [String: String] = [
        "list": "load numbers the store assigned (integers), joined by commas",
        "table": "a staging table's name, interactions_load_<load number>",
        "loadNo": "a load number the store assigned (an integer)",
        "Self.stagingTable(loadNo)": "a staging table's name, interactions_load_<load number>",
        "Self.stagingTable(load.loadNo)": "a staging table's name, interactions_load_<load number>",
        "try conn.escapeIdentifier(configuration.database)": "the configured database name, escaped by libpq",
        "verifier": "the SCRAM verifier libpq computed from a password the embedded server drew (not the password)",
    ]
    /// Literals that read as SQL but are not statements.
    static let notStatements: [String: String] = [
        "COPY ABORTED BY THE CLIENT:": "the message PQputCopyEnd sends the server when a COPY is abandoned",
    ]
    static let keywords = ["SELECT", "INSERT", "UPDATE", "DELETE", "COPY", "CREATE", "ALTER", "DROP", "WITH", "TRUNCATE", "GRANT"]

    func testNoStatementSplicesInputIntoItsText() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var statements = 0, problems: [String] = []
        for dir in ["Shared", "Services"] {
            let walker = FileManager.default.enumerator(atPath: root.appendingPathComponent(dir).path)
            while let path = walker?.nextObject() as? String {
                guard path.hasSuffix(".swift"), !path.contains("WinnowProto/") else { continue }
                let source = try String(contentsOf: root.appendingPathComponent(dir).appendingPathComponent(path), encoding: .utf8)
                for literal in Self.stringLiterals(source) {
                    let head = literal.text.trimmingCharacters(in: .whitespacesAndNewlines).uppercased()
                    guard Self.keywords.contains(where: { head.hasPrefix($0 + " ") || head.hasPrefix($0 + "\n") }),
                          !Self.notStatements.keys.contains(where: { head.hasPrefix($0) }) else { continue }
                    statements += 1
                    for expression in literal.interpolations where Self.allowed[expression] == nil {
                        problems.append("\(dir)/\(path):\(literal.line): \\(\(expression)) in \(head.prefix(60))")
                    }
                }
            }
        }
        XCTAssertGreaterThan(statements, 40, "the scan found the project's statements")
        XCTAssertEqual(problems, [], "statements that splice text into SQL; pass it as a parameter instead")
    }

    /// The scanner itself: it finds interpolations in both literal forms, nested calls included,
    /// and would report one spliced into a statement.
    func testTheScannerSeesInterpolationsInBothLiteralForms() {
        let source = #"""
        let a = "SELECT 1 FROM t WHERE id = '\(request.id)'"
        let b = """
            DELETE FROM t WHERE x = \(f(g("y")))
            """
        let c = "not sql \(x)"
        """#
        let found = Self.stringLiterals(source).filter { !$0.interpolations.isEmpty }
        XCTAssertEqual(found.map(\.interpolations), [["request.id"], [#"f(g("y"))"#], ["x"]])
        XCTAssertEqual(found.map(\.line), [1, 2, 5])
    }

    /// String literals of Swift source: their text (interpolations left out) and the expressions
    /// interpolated, with the line each starts on. Enough of Swift's lexical rules for this
    /// project's sources: comments, single-line and multi-line literals, escapes, nested
    /// literals inside interpolations; raw strings are read as ordinary ones.
    static func stringLiterals(_ source: String) -> [(text: String, interpolations: [String], line: Int)] {
        let s = Array(source.unicodeScalars)
        var out: [(String, [String], Int)] = []
        var i = 0, line = 1
        func at(_ k: Int, _ text: String) -> Bool {
            let t = Array(text.unicodeScalars)
            return k + t.count <= s.count && Array(s[k..<(k + t.count)]) == t
        }
        /// Reads a literal whose opening delimiter ends before `k`; returns the index after its close.
        func literal(from start: Int, multiline: Bool) -> (Int, String, [String]) {
            var k = start, text = "", interpolations: [String] = []
            while k < s.count {
                if multiline ? at(k, "\"\"\"") : s[k] == "\"" { return (k + (multiline ? 3 : 1), text, interpolations) }
                if s[k] == "\n" { line += 1; if !multiline { return (k, text, interpolations) } }
                if s[k] == "\\" && k + 1 < s.count && s[k + 1] == "(" {
                    // the expression up to its matching parenthesis, nested literals skipped whole
                    var depth = 1, j = k + 2, expr = ""
                    while j < s.count && depth > 0 {
                        if s[j] == "\"" {
                            let m = at(j, "\"\"\"")
                            let (end, _, _) = literal(from: j + (m ? 3 : 1), multiline: m)
                            expr += String(String.UnicodeScalarView(s[j..<end])); j = end; continue
                        }
                        if s[j] == "(" { depth += 1 } else if s[j] == ")" { depth -= 1; if depth == 0 { break } }
                        expr.unicodeScalars.append(s[j]); j += 1
                    }
                    interpolations.append(expr.trimmingCharacters(in: .whitespaces))
                    k = j + 1; continue
                }
                if s[k] == "\\" && k + 1 < s.count { text.unicodeScalars.append(s[k + 1]); k += 2; continue }
                text.unicodeScalars.append(s[k]); k += 1
            }
            return (k, text, interpolations)
        }
        while i < s.count {
            if at(i, "//") { while i < s.count && s[i] != "\n" { i += 1 }; continue }
            if at(i, "/*") { while i < s.count && !at(i, "*/") { if s[i] == "\n" { line += 1 }; i += 1 }; i += 2; continue }
            if s[i] == "\n" { line += 1; i += 1; continue }
            if s[i] == "\"" {
                let multiline = at(i, "\"\"\""), first = line
                let (end, text, interpolations) = literal(from: i + (multiline ? 3 : 1), multiline: multiline)
                out.append((text, interpolations, first)); i = end; continue
            }
            i += 1
        }
        return out
    }
}
