// Where fetched datasets live, and the one-call loader local runs use.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum DatasetLocation {
    /// `$WINNOW_DATA_DIR`, else `$HOME/.cache/winnow/data` (the directory scripts/fetch-ml100k fills).
    public static var dataDirectory: String {
        if let d = getenv("WINNOW_DATA_DIR"), d.pointee != 0 { return String(cString: d) }
        let home = getenv("HOME").map { String(cString: $0) } ?? "."
        return home + "/.cache/winnow/data"
    }

    /// The cached atomic file of a named dataset: `<dataDirectory>/<name>/<name>.inter`.
    public static func cachedPath(of name: String) -> String { "\(dataDirectory)/\(name)/\(name).inter" }

    /// Resolves a dataset argument: a name like `ml-100k` maps to its cached file, which must
    /// exist (the error says how to fetch it); anything ending in `.inter` is a path.
    public static func resolve(_ nameOrPath: String) throws -> String {
        if nameOrPath.hasSuffix(".inter") {
            guard access(nameOrPath, R_OK) == 0 else {
                throw InterError(.io, file: nameOrPath, line: 0, reason: "cannot read: " + String(cString: strerror(errno)))
            }
            return nameOrPath
        }
        let path = cachedPath(of: nameOrPath)
        guard access(path, R_OK) == 0 else {
            let hint = nameOrPath == "ml-100k" ? "run scripts/fetch-ml100k first" : "place the RecBole atomic file there"
            throw InterError(.io, file: path, line: 0, reason: "dataset \(nameOrPath) is not fetched; \(hint)")
        }
        return path
    }
}

extension SequenceDataset {
    /// Reads a `.inter` file (or a named dataset, see `DatasetLocation.resolve`), applies
    /// iterative k-core and builds the sequences.
    public static func load(_ nameOrPath: String, userK: Int = 5, itemK: Int = 5,
                            reader: InterReader = InterReader()) throws -> SequenceDataset {
        let path = try DatasetLocation.resolve(nameOrPath)
        return SequenceDataset(try reader.read(path: path), userK: userK, itemK: itemK)
    }
}
