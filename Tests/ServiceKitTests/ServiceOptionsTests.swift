import ServiceKit
import RPC
import XCTest

final class ServiceOptionsTests: XCTestCase {
    func testDefaultsFollowTheContract() throws {
        let options = try ServiceOptions.parse([], environment: [:], defaultName: "teacher")
        XCTAssertEqual(options, ServiceOptions(broker: "tcp://127.0.0.1:5555", name: "teacher", endpoint: "tcp://127.0.0.1:*",
                                               stateDir: "./.state", databaseURL: nil, heartbeatMilliseconds: 2500))
    }

    func testEnvironmentOverridesDefaultsAndFlagsOverrideEnvironment() throws {
        let environment = ["WINNOW_BROKER": "tcp://127.0.0.1:7000", "WINNOW_SERVICE_NAME": "teacher/j1/m0",
                           "WINNOW_ENDPOINT": "tcp://127.0.0.1:7001", "WINNOW_STATE_DIR": "/tmp/s",
                           "WINNOW_DATABASE_URL": "postgres://x", "WINNOW_HEARTBEAT_MS": "100"]
        let fromEnvironment = try ServiceOptions.parse([], environment: environment, defaultName: "teacher")
        XCTAssertEqual(fromEnvironment.broker, "tcp://127.0.0.1:7000")
        XCTAssertEqual(fromEnvironment.name, "teacher/j1/m0")
        XCTAssertEqual(fromEnvironment.endpoint, "tcp://127.0.0.1:7001")
        XCTAssertEqual(fromEnvironment.stateDir, "/tmp/s")
        XCTAssertEqual(fromEnvironment.databaseURL, "postgres://x")
        XCTAssertEqual(fromEnvironment.heartbeatMilliseconds, 100)
        let flags = try ServiceOptions.parse(
            ["--broker", "tcp://127.0.0.1:8000", "--name=teacher/j2/m1", "--heartbeat-ms", "250", "--database-url", "postgres://y"],
            environment: environment, defaultName: "teacher")
        XCTAssertEqual(flags.broker, "tcp://127.0.0.1:8000")
        XCTAssertEqual(flags.name, "teacher/j2/m1")
        XCTAssertEqual(flags.heartbeatMilliseconds, 250)
        XCTAssertEqual(flags.databaseURL, "postgres://y")
        XCTAssertEqual(flags.endpoint, "tcp://127.0.0.1:7001", "unset flags keep the environment's value")
    }

    /// A service bound on every interface (a container's 0.0.0.0) registers an endpoint its
    /// peers can dial: the one `--advertise` / WINNOW_ADVERTISE names (a pod's address), or the
    /// bound one with the wildcard host replaced by this host's name.
    func testTheAdvertisedEndpointIsOnePeersCanDial() throws {
        XCTAssertNil(try ServiceOptions.parse([], environment: [:], defaultName: "teacher").advertise)
        let env = try ServiceOptions.parse([], environment: ["WINNOW_ADVERTISE": "tcp://10.1.2.3:7000"], defaultName: "teacher")
        XCTAssertEqual(env.advertise, "tcp://10.1.2.3:7000")
        let flag = try ServiceOptions.parse(["--advertise", "tcp://10.9.9.9:7000"], environment: ["WINNOW_ADVERTISE": "tcp://10.1.2.3:7000"],
                                            defaultName: "teacher")
        XCTAssertEqual(flag.advertise, "tcp://10.9.9.9:7000")
        XCTAssertEqual(RPCServer.advertised("tcp://0.0.0.0:7000", host: "teacher-2"), "tcp://teacher-2:7000")
        XCTAssertEqual(RPCServer.advertised("tcp://*:7000", host: "h"), "tcp://h:7000")
        XCTAssertEqual(RPCServer.advertised("tcp://[::]:7000", host: "h"), "tcp://h:7000")
        XCTAssertEqual(RPCServer.advertised("tcp://127.0.0.1:40000", host: "h"), "tcp://127.0.0.1:40000")
    }

    /// Beyond loopback a service needs CURVE keys (--curve-keys / WINNOW_CURVE_KEYS) or it does
    /// not start: the runtime refuses before the service's own setup, naming the endpoint.
    func testAServiceAskedToBindBeyondLoopbackWithoutKeysRefusesToStart() throws {
        let open = try ServiceOptions.parse(["--endpoint", "tcp://0.0.0.0:7000"], environment: [:], defaultName: "teacher")
        XCTAssertNil(open.curveKeys)
        XCTAssertThrowsError(try ServiceRuntime(kind: "teacher", options: open)) {
            XCTAssertEqual($0 as? LinkSecurityError, .unauthenticatedBind("tcp://0.0.0.0:7000"))
            XCTAssertTrue("\($0)".contains("refusing to bind tcp://0.0.0.0:7000 without CURVE keys"), "\($0)")
        }
        XCTAssertEqual(ServiceRuntime.main(kind: "teacher", arguments: ["--endpoint", "tcp://0.0.0.0:7000"]), 1)
        let keyed = try ServiceOptions.parse(["--curve-keys", "/k2"], environment: ["WINNOW_CURVE_KEYS": "/k1"], defaultName: "teacher")
        XCTAssertEqual(keyed.curveKeys, "/k2")
        XCTAssertEqual(try ServiceOptions.parse([], environment: ["WINNOW_CURVE_KEYS": "/k1"], defaultName: "teacher").curveKeys, "/k1")
        // A key directory that is not there stops the start too.
        var missing = open
        missing.curveKeys = "/nonexistent/winnow-keys"
        XCTAssertThrowsError(try ServiceRuntime(kind: "teacher", options: missing)) {
            XCTAssertTrue("\($0)".contains("no key file /nonexistent/winnow-keys/teacher.key"), "\($0)")
        }
    }

    func testBadCommandLinesNameTheFlag() {
        XCTAssertThrowsError(try ServiceOptions.parse(["--bogus", "1"], environment: [:], defaultName: "x")) {
            XCTAssertEqual($0 as? ServiceOptionsError, .unknownFlag("--bogus"))
        }
        XCTAssertThrowsError(try ServiceOptions.parse(["--broker"], environment: [:], defaultName: "x")) {
            XCTAssertEqual($0 as? ServiceOptionsError, .missingValue(flag: "--broker"))
        }
        XCTAssertThrowsError(try ServiceOptions.parse(["--heartbeat-ms", "soon"], environment: [:], defaultName: "x")) {
            XCTAssertEqual($0 as? ServiceOptionsError,
                           .invalidValue(flag: "--heartbeat-ms", value: "soon", expected: "a positive integer"))
        }
        XCTAssertThrowsError(try ServiceOptions.parse([], environment: ["WINNOW_HEARTBEAT_MS": "-5"], defaultName: "x"))
        XCTAssertThrowsError(try ServiceOptions.parse(["--help"], environment: [:], defaultName: "x")) {
            XCTAssertEqual($0 as? ServiceOptionsError, .help)
        }
    }
}
