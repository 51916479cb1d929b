import CPostgres

/// An error from libpq or from the server, keeping what Postgres said about it.
///
/// `sqlState` is the five-character SQLSTATE of a server error (`23505` for a unique violation,
/// see ``SQLState``); it is `nil` for errors raised on the client side (connection refused,
/// a broken connection, a value that cannot be decoded). `function` names the libpq call (or the
/// wrapper step) that failed, as NIO's `IOError` names its syscall.
public struct PQError: Error, CustomStringConvertible, Sendable {
    /// The libpq function or wrapper step that failed, e.g. `PQexecParams`, `PQconnectdb`, `decode`.
    public let function: String
    /// The SQLSTATE code of a server error; `nil` for client-side errors.
    public let sqlState: String?
    /// The primary message (server's `M` field, or libpq's error message).
    public let message: String
    /// `ERROR`, `FATAL`, `PANIC` (non-localised severity) for server errors.
    public let severity: String?
    /// The server's optional detail line.
    public let detail: String?
    /// The server's optional hint.
    public let hint: String?
    /// Where the error happened inside the server, e.g. `COPY items, line 3, column user_id: "x"`.
    public let context: String?
    /// 1-based character position in the statement text, when the server gave one.
    public let position: Int?

    public init(function: String, sqlState: String? = nil, message: String, severity: String? = nil,
                detail: String? = nil, hint: String? = nil, context: String? = nil, position: Int? = nil) {
        self.function = function
        self.sqlState = sqlState
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint
        self.context = context
        self.position = position
    }

    /// Builds the error from a failed `PGresult`, falling back to the connection's message.
    init(function: String, result: OpaquePointer?, connection: OpaquePointer?) {
        func field(_ code: UInt8) -> String? {
            guard let result, let p = PQresultErrorField(result, Int32(code)) else { return nil }
            let s = String(cString: p)
            return s.isEmpty ? nil : s
        }
        var message = field(UInt8(ascii: "M"))
        if message == nil, let result, let p = PQresultErrorMessage(result) {
            message = String(cString: p).trimmingTrailingWhitespace()
        }
        if message == nil || message!.isEmpty, let connection, let p = PQerrorMessage(connection) {
            message = String(cString: p).trimmingTrailingWhitespace()
        }
        self.init(function: function,
                  sqlState: field(UInt8(ascii: "C")),
                  message: (message?.isEmpty ?? true) ? "unknown error" : message!,
                  severity: field(UInt8(ascii: "V")) ?? field(UInt8(ascii: "S")),
                  detail: field(UInt8(ascii: "D")),
                  hint: field(UInt8(ascii: "H")),
                  context: field(UInt8(ascii: "W")) ?? field(UInt8(ascii: "w")),
                  position: field(UInt8(ascii: "P")).flatMap { Int($0) })
    }

    /// Builds a client-side error from the connection's current error message.
    init(function: String, connection: OpaquePointer?) {
        var message = "unknown error"
        if let connection, let p = PQerrorMessage(connection) {
            let s = String(cString: p).trimmingTrailingWhitespace()
            if !s.isEmpty { message = s }
        }
        self.init(function: function, message: message)
    }

    public var description: String {
        var s = "\(function): "
        if let severity { s += "\(severity): " }
        s += message
        if let sqlState { s += " (SQLSTATE \(sqlState))" }
        if let detail { s += "; detail: \(detail)" }
        if let hint { s += "; hint: \(hint)" }
        if let context { s += "; context: \(context)" }
        return s
    }
}

/// SQLSTATE codes Winnow reacts to by name. The full list is in the Postgres manual, appendix A.
public enum SQLState {
    public static let uniqueViolation = "23505"
    public static let foreignKeyViolation = "23503"
    public static let notNullViolation = "23502"
    public static let checkViolation = "23514"
    public static let invalidTextRepresentation = "22P02"
    public static let badCopyFileFormat = "22P04"
    public static let characterNotInRepertoire = "22021"
    public static let numericValueOutOfRange = "22003"
    public static let syntaxError = "42601"
    public static let undefinedTable = "42P01"
    public static let undefinedColumn = "42703"
    public static let duplicateTable = "42P07"
    public static let duplicateDatabase = "42P04"
    public static let serializationFailure = "40001"
    public static let deadlockDetected = "40P01"
    public static let queryCanceled = "57014"
    public static let adminShutdown = "57P01"
    public static let cannotConnectNow = "57P03"
    public static let inFailedTransaction = "25P02"
}

extension String {
    func trimmingTrailingWhitespace() -> String {
        var s = Substring(self)
        while let last = s.last, last == "\n" || last == " " || last == "\r" || last == "\t" { s.removeLast() }
        return String(s)
    }
}
