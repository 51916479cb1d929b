import Foundation
@testable import RPC
import WinnowProto
import XCTest
import ZeroMQ

/// CurveZMQ on the RPC layer: who is served, who is refused, and what may bind without keys.
final class LinkSecurityTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        try XCTSkipUnless(CurveKeyPair.isSupported, "libzmq without CURVE")
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("winnow-keys-\(UUID().uuidString)").path
        try LinkSecurity.create(directory: directory, names: ["echo", "client"])
    }

    override func tearDown() {
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }

    func echoServer(bind: String, security: LinkSecurity?) throws -> (RPCServer, String) {
        let server = try RPCServer(configuration: RPCServerConfiguration(name: "echo", workerThreads: 1, security: security))
        server.register("Echo") { (request: Winnow_V1_FloatTensor) in request }
        let endpoint = try server.bind(bind)
        server.start()
        return (server, endpoint)
    }

    /// The dialable form of a wildcard bind.
    func dialable(_ endpoint: String) -> String { RPCServer.advertised(endpoint, host: "127.0.0.1") }

    func echo(_ client: RPCClient, timeout: Duration = .seconds(5)) async throws -> [Int64] {
        try await client.call(service: "echo", method: "Echo", tensor([4, 2]), as: Winnow_V1_FloatTensor.self, timeout: timeout).shape
    }

    func testAClientWithTheRightKeyIsServedAndOthersAreRefused() async throws {
        let (server, endpoint) = try echoServer(bind: "tcp://0.0.0.0:*", security: LinkSecurity(directory: directory, identity: "echo"))
        defer { server.shutdown(grace: .milliseconds(200)) }
        let admittedBefore = ZAPHandler.shared.admitted, refusedBefore = ZAPHandler.shared.refused

        // Served: a key of the allow-list, dialing with the server's public key.
        let member = try RPCClient(endpoint: dialable(endpoint), peer: "echo",
                                   security: LinkSecurity(directory: directory, identity: "client"))
        defer { member.close() }
        let shape = try await echo(member)
        XCTAssertEqual(shape, [4, 2])
        XCTAssertGreaterThan(ZAPHandler.shared.admitted, admittedBefore)

        // Refused: a well-formed key pair that is not on the allow-list (it knows the server's key).
        let stranger = directory + "-stranger"
        defer { try? FileManager.default.removeItem(atPath: stranger) }
        try LinkSecurity.create(directory: stranger, names: ["client"])
        let allowList = try String(contentsOfFile: directory + "/" + LinkSecurity.allowedKeysFile, encoding: .utf8)
        let strangerKey = try String(contentsOfFile: stranger + "/" + LinkSecurity.allowedKeysFile, encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("client ") }!
        try (allowList.split(separator: "\n").filter { $0.hasPrefix("echo ") }.joined() + "\n" + strangerKey + "\n")
            .write(toFile: stranger + "/" + LinkSecurity.allowedKeysFile, atomically: true, encoding: .utf8)
        let outsider = try RPCClient(endpoint: dialable(endpoint), peer: "echo",
                                     security: LinkSecurity(directory: stranger, identity: "client"))
        defer { outsider.close() }
        outsider.retryPolicy = .none
        do {
            _ = try await echo(outsider, timeout: .milliseconds(700))
            XCTFail("a client outside the allow-list was served")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .deadlineExceeded)
        }
        XCTAssertGreaterThan(ZAPHandler.shared.refused, refusedBefore)

        // Refused: no CURVE at all.
        let plain = try RPCClient(endpoint: dialable(endpoint), peer: "echo", security: nil)
        defer { plain.close() }
        do {
            _ = try await echo(plain, timeout: .milliseconds(500))
            XCTFail("a client without CURVE was served")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .deadlineExceeded)
        }
        // The member is still served after the refusals.
        let again = try await echo(member)
        XCTAssertEqual(again, [4, 2])
    }

    func testABindBeyondLoopbackWithoutKeysIsRefusedNamingWhy() throws {
        let server = try RPCServer(configuration: RPCServerConfiguration(name: "echo", security: nil))
        for endpoint in ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://eth0:*"] {
            XCTAssertThrowsError(try server.bind(endpoint)) { error in
                XCTAssertEqual(error as? LinkSecurityError, .unauthenticatedBind(endpoint))
                XCTAssertTrue("\(error)".contains("without CURVE keys"), "\(error)")
            }
        }
        for endpoint in ["tcp://127.0.0.1:*", "ipc:///tmp/winnow-\(UUID().uuidString)"] {
            let loopback = try RPCServer(configuration: RPCServerConfiguration(name: "echo", security: nil))
            XCTAssertNoThrow(try loopback.bind(endpoint))
            loopback.shutdown(grace: .milliseconds(10))
        }
        server.shutdown(grace: .milliseconds(10))
    }

    func testKeyDirectoriesAreCheckedWhenRead() throws {
        // A key file others can read is refused; so is an allow-list line that is not a key.
        let keyFile = directory + "/echo.key"
        XCTAssertEqual(chmod(keyFile, 0o644), 0)
        XCTAssertThrowsError(try LinkSecurity(directory: directory, identity: "echo")) {
            XCTAssertTrue("\($0)".contains("readable by others"), "\($0)")
        }
        XCTAssertEqual(chmod(keyFile, 0o600), 0)
        XCTAssertThrowsError(try LinkSecurity(directory: directory, identity: "nobody")) {
            XCTAssertTrue("\($0)".contains("no key file"), "\($0)")
        }
        let security = try LinkSecurity(directory: directory, identity: "echo")
        XCTAssertThrowsError(try security.serverKey(for: "teacher/job1")) { XCTAssertTrue("\($0)".contains("no key for teacher"), "\($0)") }
        XCTAssertEqual(try security.serverKey(for: "echo/x"), security.keys.publicKey)
        let list = directory + "/" + LinkSecurity.allowedKeysFile
        let text = try String(contentsOfFile: list, encoding: .utf8)
        try (text + "mallory not-a-key\n").write(toFile: list, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LinkSecurity(directory: directory, identity: "echo")) {
            XCTAssertTrue("\($0)".contains("line"), "\($0)")
        }
        // Writing the directory again keeps every pair and repairs the list.
        let before = try String(contentsOfFile: keyFile, encoding: .utf8)
        try LinkSecurity.create(directory: directory, names: ["echo", "teacher"])
        XCTAssertEqual(try String(contentsOfFile: keyFile, encoding: .utf8), before)
        XCTAssertNotNil(try LinkSecurity(directory: directory, identity: "teacher").members["client"])
    }
}
