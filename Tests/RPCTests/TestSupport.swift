import Foundation
import RPC
import WinnowProto
import XCTest
import ZeroMQ

/// A server on an ephemeral loopback port with the test methods below, stopped at tearDown.
final class TestServer {
    let server: RPCServer
    let endpoint: String

    init(name: String = "echo", workers: Int = 2, maxPayloadBytes: Int = WireProtocol.defaultMaxPayloadBytes,
         configure: (RPCServer) -> Void = { _ in }) throws {
        server = try RPCServer(configuration: RPCServerConfiguration(
            name: name, workerThreads: workers, maxPayloadBytes: maxPayloadBytes))
        // Echo: returns the tensor it was given.
        server.register("Echo") { (request: Winnow_V1_FloatTensor) in request }
        // Sleep: waits shape[0] milliseconds, then echoes.
        server.register("Sleep") { (request: Winnow_V1_FloatTensor) in
            try await Task.sleep(for: .milliseconds(request.shape.first ?? 0))
            return request
        }
        // Deadline: reports the deadline the handler sees, in shape[0].
        server.register("Deadline") { (_: Winnow_V1_FloatTensor) in
            var reply = Winnow_V1_FloatTensor()
            reply.shape = [RPCContext.deadlineMicros ?? -1]
            return reply
        }
        configure(server)
        endpoint = try server.bind("tcp://127.0.0.1:*")
        server.start()
    }

    func stop() { server.shutdown(grace: .seconds(1)) }
}

func tensor(_ values: [Int64], data: [UInt8] = []) -> Winnow_V1_FloatTensor {
    var message = Winnow_V1_FloatTensor()
    message.shape = values
    message.data = Data(data)
    return message
}

/// Runs `body` and returns the RPCError it threw, failing when it threw nothing or something else.
func rpcError<T>(_ body: () async throws -> T, file: StaticString = #filePath, line: UInt = #line) async -> RPCError? {
    do {
        _ = try await body()
        XCTFail("expected an RPCError", file: file, line: line)
        return nil
    } catch let error as RPCError {
        return error
    } catch {
        XCTFail("expected an RPCError, got \(error)", file: file, line: line)
        return nil
    }
}

/// A raw DEALER socket for sending hand-made frames.
func rawDealer(_ endpoint: String) throws -> ZMQSocket {
    let socket = try ZMQSocket(.dealer)
    try socket.connect(endpoint)
    return socket
}

/// Receives one message within `milliseconds`, nil when none came.
func receive(_ socket: ZMQSocket, within milliseconds: Int) throws -> [Frame]? {
    var poller = ZMQPoller([.socket(socket, .pollIn)])
    let deadline = WallClock.nowMicros() + Int64(milliseconds) * 1000
    while WallClock.nowMicros() < deadline {
        let left = Int((deadline - WallClock.nowMicros()) / 1000)
        if try poller.poll(timeoutMilliseconds: max(1, left))[0].contains(.pollIn) {
            return try socket.receiveMultipart()
        }
    }
    return nil
}

func requestHeader(id: UInt64, service: String = "echo", method: String, timeoutMs: Int64 = 5000) -> Frame {
    var header = Winnow_V1_RequestHeader()
    header.requestID = id
    header.service = service
    header.method = method
    header.deadlineUnixMicros = WallClock.nowMicros() + timeoutMs * 1000
    return WireProtocol.bytes(header)
}
