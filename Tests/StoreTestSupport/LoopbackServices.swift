import BrokerKit
import Data
import Foundation
import Numerics
import RPC
import ServiceKit
import Store
import SwiftProtobuf
import WinnowProto
import XCTest

/// 60 users walking item cycles (learnable: each steps by 1 + u mod 3), as a RecBole file.
public func itemCyclesFile(seed: UInt64, name: String, rating: Bool = false) throws -> String {
    var rng = RNG(seed: seed)
    var text = "user_id:token\titem_id:token\t" + (rating ? "rating:float\t" : "") + "timestamp:float\n"
    for u in 0..<60 {
        var x = rng.below(30)
        for t in 0..<12 {
            text += "\(u + 1)\t\(101 + x)\t" + (rating ? "1\t" : "") + "\(1000 * u + t)\n"
            x = (x + 1 + u % 3) % 30
        }
    }
    return try writeFile(text, name: name)
}

/// A broker on loopback and the feature store registered with it as its process wires it, with
/// the services a test adds beside it. `file`, when given, is ingested and built into `datasetID`.
public final class LoopbackServices {
    public let store: FeatureStore
    public let broker: Broker
    public let client: RPCClient
    public let databaseURL: String
    public private(set) var datasetID = ""
    /// The runtimes served, the feature store's first.
    public private(set) var runtimes: [ServiceRuntime] = []
    private var stopped: [DispatchSemaphore] = []

    public init(label: String, file: String? = nil) async throws {
        databaseURL = try TestDatabase.fresh(label)
        store = try FeatureStore(url: databaseURL, poolSize: 4)
        if let file {
            _ = try await FileIngest(path: file, format: .recboleInter).run(on: store)
            datasetID = try store.buildDataset(interSpec(k: 0)).dataset.datasetID
        }
        broker = try Broker(endpoint: "tcp://127.0.0.1:*", configuration: BrokerConfiguration(heartbeatMicros: 100_000, liveness: 3))
        broker.start()
        client = try RPCClient(endpoint: broker.endpoint)
        let fs = try runtime(kind: "featurestore", databaseURL: databaseURL)
        FeatureStoreService(store: store).register(on: fs.server)
        try await serve(fs)
    }

    /// A runtime of `kind` that registers with the broker, heartbeating every 100 ms.
    public func runtime(kind: String, databaseURL: String? = nil) throws -> ServiceRuntime {
        try ServiceRuntime(kind: kind, options: ServiceOptions(broker: broker.endpoint, name: kind, databaseURL: databaseURL,
                                                               heartbeatMilliseconds: 100))
    }

    /// Runs `runtime` on its own thread and returns once the broker knows it.
    public func serve(_ runtime: ServiceRuntime) async throws {
        let done = DispatchSemaphore(value: 0)
        stopped.append(done)
        runtimes.append(runtime)
        Thread { _ = runtime.run(grace: .milliseconds(200)); done.signal() }.start()
        let deadline = ContinuousClock.now + .seconds(10)
        while !runtime.server.isRegistered {
            guard ContinuousClock.now < deadline else { throw RPCError(code: .unavailable, message: "\(runtime.kind) did not register") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The built dataset, as a job reads it.
    public func data() async throws -> SequenceDataset {
        try await SnapshotCache().snapshot(datasetID, from: store).sequenceDataset
    }

    /// Stops every runtime (the last served first), then the broker and the store.
    public func stop() {
        for r in runtimes.reversed() { r.requestShutdown() }
        for s in stopped { s.wait() }
        client.close()
        broker.shutdown()
        store.close()
    }
}

/// Fails unless `call` throws an `RPCError` with `code` whose message mentions `text`.
public func expectRPCStatus(_ code: Winnow_V1_StatusCode, mentioning text: String, file: StaticString = #filePath, line: UInt = #line,
                            _ call: () async throws -> Void) async {
    do {
        try await call()
        XCTFail("succeeded; expected \(code) mentioning \(text)", file: file, line: line)
    } catch let e as RPCError {
        XCTAssertEqual(e.code, code, "\(e)", file: file, line: line)
        XCTAssertTrue(e.message.contains(text), "\(e.message) should mention \(text)", file: file, line: line)
    } catch {
        XCTFail("\(error)", file: file, line: line)
    }
}
