// An experiment's output directory, kept so that a sweep of many fits that is stopped (a machine
// reclaimed, a session over) continues where it stopped when started again with the same
// command: finished fits are read back instead of trained again. settings.json pins what every
// stored result depends on (dataset, loop and method settings); a directory written under other
// settings is refused rather than mixed into one table.
import Foundation
import Methods

public enum ExperimentDirectoryError: Error, CustomStringConvertible, Equatable {
    case io(path: String, reason: String)
    /// The directory holds results made under other settings.
    case otherSettings(path: String, field: String, stored: String, current: String)
    /// A line other than the last cannot be read: the file was changed by hand or damaged.
    case damaged(path: String, line: Int, reason: String)

    public var description: String {
        switch self {
        case .io(let p, let r): return "\(p): \(r)"
        case .otherSettings(let p, let f, let s, let c):
            return "\(p): the results there were made with \(f) = \(s), this run has \(c); choose another --out or delete the directory"
        case .damaged(let p, let l, let r): return "\(p): line \(l) cannot be read (\(r))"
        }
    }
}

public struct ExperimentDirectory {
    public let path: String

    /// Opens (creating it if needed) `path`; writes `settings` to settings.json there, or checks
    /// them against the stored ones.
    public init(path: String, settings: [String: String]) throws(ExperimentDirectoryError) {
        self.path = path
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) }
        catch { throw .io(path: path, reason: "cannot create directory: \(error)") }
        let file = path + "/settings.json"
        if let data = fm.contents(atPath: file) {
            guard let stored = try? JSONDecoder().decode([String: String].self, from: data) else {
                throw .damaged(path: file, line: 1, reason: "not a settings object")
            }
            for key in Set(stored.keys).union(settings.keys).sorted() where stored[key] != settings[key] {
                throw .otherSettings(path: path, field: key, stored: stored[key] ?? "absent", current: settings[key] ?? "absent")
            }
        } else {
            try write(settings, to: file)
        }
    }

    /// The records of the JSON-lines file `name`, in order. A last line left incomplete by a stop
    /// while writing is dropped from the file; any other unreadable line is an error.
    public func records<T: Decodable>(_ name: String, as: T.Type) throws(ExperimentDirectoryError) -> [T] {
        let file = path + "/" + name
        guard let data = FileManager.default.contents(atPath: file) else { return [] }
        var lines = data.split(separator: 0x0A, omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        var out: [T] = []
        let decoder = JSONDecoder()
        for (i, line) in lines.enumerated() {
            do { out.append(try decoder.decode(T.self, from: Data(line))) }
            catch {
                let torn = i == lines.count - 1 && data.last != 0x0A
                guard torn else { throw .damaged(path: file, line: i + 1, reason: "\(error)") }
                // rewrite the file without the torn line, so appends start on a line of their own
                let kept = lines.dropLast().map { Data($0) + Data([0x0A]) }.reduce(Data(), +)
                do { try kept.write(to: URL(fileURLWithPath: file), options: .atomic) }
                catch { throw .io(path: file, reason: "cannot drop its incomplete last line: \(error)") }
            }
        }
        return out
    }

    /// Appends `record` as one line to the JSON-lines file `name`.
    public func append<T: Encodable>(_ record: T, to name: String) throws(ExperimentDirectoryError) {
        let file = path + "/" + name
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            var line = try encoder.encode(record)
            line.append(0x0A)
            if !FileManager.default.fileExists(atPath: file) { _ = FileManager.default.createFile(atPath: file, contents: nil) }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
            defer { try? handle.close() }
            try handle.seekToEnd()
            try handle.write(contentsOf: line)
        } catch { throw .io(path: file, reason: "cannot append: \(error)") }
    }

    /// The value stored at `relative`, if it is there and reads as a `T`.
    public func stored<T: Decodable>(_ relative: String, as: T.Type) -> T? {
        guard let data = FileManager.default.contents(atPath: path + "/" + relative) else { return nil }
        return try? JSONDecoder().decode(T.self, from: data)
    }

    /// Writes `value` to `relative` (directories created, the file replaced at once).
    public func store<T: Encodable>(_ value: T, at relative: String) throws(ExperimentDirectoryError) {
        try write(value, to: path + "/" + relative)
    }

    private func write<T: Encodable>(_ value: T, to file: String) throws(ExperimentDirectoryError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try encoder.encode(value).write(to: URL(fileURLWithPath: file), options: .atomic)
        } catch { throw .io(path: file, reason: "cannot write: \(error)") }
    }
}
