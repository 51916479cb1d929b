import Foundation
import Logging
import RPC
import WinnowProto
import ZeroMQ

/// The broker process's socket loop: one ROUTER socket for callers and workers, driving a
/// `BrokerMachine`. Runs on its own thread from `start()` until `shutdown()`.
public final class Broker: @unchecked Sendable {
    public let configuration: BrokerConfiguration
    public var logger: Logger
    private let socket: ZMQSocket
    private let wakeup: ZMQWakeup
    private let lock = NSLock()
    private let stopped = DispatchSemaphore(value: 0)
    private var stopping = false
    private var machine: BrokerMachine
    private var snapshot = BrokerSnapshot()
    public let endpoint: String

    /// Counters, refreshed by the loop.
    public struct BrokerSnapshot: Sendable {
        public var workers = 0
        public var routed: UInt64 = 0
        public var malformed: UInt64 = 0
        public var lateReplies: UInt64 = 0
    }

    /// Binds `endpoint` (e.g. `tcp://127.0.0.1:5555`, or `tcp://127.0.0.1:*` for any port).
    public init(endpoint: String, configuration: BrokerConfiguration, logger: Logger = Logger(label: "winnow.broker")) throws {
        self.configuration = configuration
        self.logger = logger
        socket = try ZMQSocket(.router)
        try socket.setMaxMessageSize(Int64(configuration.maxPayloadBytes + WireProtocol.hardLimitSlack))
        try socket.setHighWaterMarks(send: 100_000, receive: 100_000)
        try socket.setRouterMandatory(true)
        try socket.setRouterHandover(true)
        try socket.bind(endpoint)
        self.endpoint = try socket.lastEndpoint
        wakeup = try ZMQWakeup()
        machine = BrokerMachine(configuration: configuration, now: WallClock.nowMicros())
    }

    public var stats: BrokerSnapshot { lock.withLock { snapshot } }

    public func start() {
        let thread = Thread { [self] in run() }
        thread.name = "broker"
        thread.start()
    }

    /// Stops the loop and closes the socket.
    public func shutdown() {
        lock.withLock { stopping = true }
        wakeup.signal()
        stopped.wait()
        stopped.signal()
    }

    private func run() {
        var poller = ZMQPoller([.socket(socket, .pollIn), .fileDescriptor(wakeup.fileDescriptor, .pollIn)])
        // Timers run at a tenth of the heartbeat, so a dead worker is noticed within liveness
        // intervals plus a tenth.
        let tickMicros = max(1_000, configuration.heartbeatMicros / 10)
        var nextTick = WallClock.nowMicros() + tickMicros
        while !lock.withLock({ stopping }) {
            let now = WallClock.nowMicros()
            let timeout = max(0, Int((nextTick - now + 999) / 1000))
            let events: [ZMQPollEvents]
            do { events = try poller.poll(timeoutMilliseconds: min(timeout, 1000)) } catch {
                logger.error("poll failed: \(error)")
                break
            }
            if events[1].contains(.pollIn) { wakeup.drain() }
            if events[0].contains(.pollIn) {
                for _ in 0..<4096 {
                    let frames: [Frame]?
                    do { frames = try socket.receiveMultipart(flags: .dontWait) } catch {
                        logger.error("receive failed: \(error)")
                        break
                    }
                    guard let frames else { break }
                    guard let event = BrokerEvent(frames: frames, maxPayloadBytes: configuration.maxPayloadBytes) else {
                        machine.malformedMessage()
                        continue
                    }
                    execute(machine.handle(event, now: WallClock.nowMicros()))
                }
            }
            let after = WallClock.nowMicros()
            if after >= nextTick {
                execute(machine.tick(now: after))
                nextTick = after + tickMicros
                lock.withLock {
                    snapshot = BrokerSnapshot(workers: machine.workers.count, routed: machine.routed,
                                              malformed: machine.malformed, lateReplies: machine.lateReplies)
                }
            }
        }
        try? socket.unbind(endpoint)
        socket.close()
        stopped.signal()
    }

    private func execute(_ actions: [BrokerAction]) {
        var pending = actions[...]
        while let action = pending.popFirst() {
            switch action {
            case let .reply(to, header, payload):
                send([to, WireProtocol.reply, WireProtocol.bytes(header), payload], to: to)
            case let .relay(to, headerBytes, payload):
                send([to, WireProtocol.reply, headerBytes, payload], to: to)
            case let .forward(worker, client, headerBytes, payload):
                if !send([worker, WireProtocol.forward, client, headerBytes, payload], to: worker) {
                    // The worker's connection is gone: let the machine drop it and re-route.
                    pending.append(contentsOf: machine.handle(.unreachable(worker), now: WallClock.nowMicros()))
                }
            case let .log(level, message):
                logger.log(level: level, "\(message)")
            }
        }
    }

    /// Sends without blocking; false when the peer has no connection or its queue is full.
    @discardableResult
    private func send(_ frames: [Frame], to peer: PeerID) -> Bool {
        do {
            return try socket.send(multipart: frames, flags: .dontWait)
        } catch let error as ZMQError where error.isHostUnreachable {
            return false
        } catch {
            logger.warning("send failed: \(error)")
            return false
        }
    }
}
