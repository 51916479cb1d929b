// What a method's settings say when they are out of range: the key and the reason. Job files
// (Jobs) report their own keys the same way.

/// Bad job configuration; names the key.
public enum JobConfigError: Error, CustomStringConvertible, Equatable {
    /// A value is out of range or inconsistent.
    case invalid(key: String, reason: String)
    /// The file could not be read or parsed.
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .invalid(let k, let r): return "job config: \(k): \(r)"
        case .unreadable(let p, let r): return "job config \(p): \(r)"
        }
    }
}

