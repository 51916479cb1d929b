import Foundation
import Postgres
import Store
import WinnowProto

/// One embedded Postgres per test process, and a fresh database per test.
public enum TestDatabase {
    nonisolated(unsafe) static var server: EmbeddedPostgres?
    nonisolated(unsafe) static var state: String?
    nonisolated(unsafe) static var counter = 0
    static let lock = NSLock()

    public static func shared() throws -> EmbeddedPostgres {
        try lock.withLock {
            if let server { return server }
            let template = NSTemporaryDirectory() + "winnow-store-XXXXXX"
            var bytes = Array(template.utf8CString)
            guard bytes.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
                throw StoreError.internalError("mkdtemp failed")
            }
            let dir = String(cString: bytes)
            let pg = EmbeddedPostgres(.init(stateDirectory: dir, port: try LoopbackPort.ephemeral()))
            try pg.start()
            server = pg
            state = dir
            atexit {
                try? TestDatabase.server?.stop(mode: .immediate)
                if let s = TestDatabase.state { try? FileManager.default.removeItem(atPath: s) }
            }
            return pg
        }
    }

    /// A new empty database; returns its URL.
    public static func fresh(_ label: String) throws -> String {
        let pg = try shared()
        let name = lock.withLock { counter += 1; return "store_\(label.lowercased())_\(counter)" }
        let admin = try Connection(url: pg.url(database: "postgres"))
        defer { admin.close() }
        try admin.exec("CREATE DATABASE \(name)")
        return pg.url(database: name)
    }
}

/// Every table of the public schema, each as its COPY text in physical order, for byte-for-byte
/// comparisons.
public func dumpTables(_ url: String) throws -> [String: [UInt8]] {
    let c = try Connection(url: url)
    defer { c.close() }
    let r = try c.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    var out: [String: [UInt8]] = [:]
    for k in 0..<r.rowCount {
        let t = r.string(k, 0)!
        out[t] = try c.copyOut("COPY (SELECT * FROM \(try c.escapeIdentifier(t))) TO STDOUT")
    }
    return out
}

public func writeFile(_ contents: [UInt8], name: String) throws -> String {
    let dir = NSTemporaryDirectory() + "winnow-store-files-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = dir + "/" + name
    FileManager.default.createFile(atPath: path, contents: Foundation.Data(contents))
    return path
}

public func writeFile(_ text: String, name: String) throws -> String { try writeFile(Array(text.utf8), name: name) }

/// scripts/fetch-ml100k's file (fetching it when absent); nil only if the script fails.
public func ml100kPath() throws -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["bash", root.appendingPathComponent("scripts/fetch-ml100k").path]
    process.currentDirectoryURL = root
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0,
          let path = String(decoding: data, as: UTF8.self).split(separator: "\n").last.map(String.init) else {
        throw StoreError.internalError("scripts/fetch-ml100k failed with status \(process.terminationStatus)")
    }
    return path
}

public func interSpec(k: Int32 = 0, split: Winnow_V1_SplitProtocol = .leaveOneOut, topK: Int32 = 0) -> Winnow_V1_BuildDatasetRequest {
    var r = Winnow_V1_BuildDatasetRequest()
    r.spec.kCore = k
    r.spec.split = split
    r.spec.itemcfTopK = topK
    return r
}
