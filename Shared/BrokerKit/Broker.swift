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
    /// An in-process endpoint the ROUTER also binds, so `shutdown()` can wake a blocked receive.
    private let wakeEndpoint: String
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
    /// With `security`, callers and workers must be CURVE clients holding a key of its allow-list;
    /// without, only a loopback endpoint binds.
    public init(endpoint: String, configuration: BrokerConfiguration, logger: Logger = Logger(label: "winnow.broker"),
                security: LinkSecurity? = LinkSecurity.installed) throws {
        self.configuration = configuration
        self.logger = logger
        socket = try ZMQSocket(.router)
        try socket.setMaxMessageSize(Int64(configuration.maxPayloadBytes + WireProtocol.hardLimitSlack))
        try socket.setHighWaterMarks(send: 100_000, receive: 100_000)
        try socket.setRouterMandatory(true)
        try socket.setRouterHandover(true)
        try LinkSecurity.bind(socket, endpoint, security: security, logger: logger)
        self.endpoint = try socket.lastEndpoint
        wakeEndpoint = "inproc://winnow-broker-wake-\(UInt(bitPattern: ObjectIdentifier(socket).hashValue))"
        try socket.bind(wakeEndpoint)
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
        // Any message wakes the loop, which looks at `stopping` before parsing what it got.
        if let waker = try? ZMQSocket(.dealer) {
            try? waker.connect(wakeEndpoint)
            _ = try? waker.send([UInt8](), flags: .dontWait)
            waker.close()
        }
        stopped.wait()
        stopped.signal()
    }

    private func run() {
        // Timers run at a tenth of the heartbeat, so a dead worker is noticed within liveness
        // intervals plus a tenth.
        let tickMicros = max(1_000, configuration.heartbeatMicros / 10)
        var nextTick = WallClock.nowMicros() + tickMicros
        // The loop blocks in libzmq's own receive, bounded by the tick, rather than in zmq_poll:
        // a receive waits on the socket's mailbox once per message, where zmq_poll over the
        // socket and a wake-up pipe costs three polls and three getpid calls more. Syscalls are
        // what a relay hop is made of on a virtual machine.
        do { try socket.setReceiveTimeout(milliseconds: Int32(max(1, tickMicros / 1000))) } catch {
            logger.error("cannot set the receive timeout: \(error)")
        }
        while true {
            let frames: [Frame]?
            do { frames = try socket.receiveMultipart() } catch {
                logger.error("receive failed: \(error)")
                break
            }
            if lock.withLock({ stopping }) { break }
            if let frames {
                if let event = BrokerEvent(frames: frames) {
                    execute(machine.handle(event, now: WallClock.nowMicros()))
                } else {
                    machine.malformedMessage()
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
        try? socket.unbind(wakeEndpoint)
        socket.close()
        stopped.signal()
    }

    private func execute(_ actions: [BrokerAction]) {
        var pending = actions[...]
        while let action = pending.popFirst() {
            switch action {
            case let .reply(to, header, payload):
                send([to, WireProtocol.head(WireProtocol.reply, header), payload], to: to)
            case let .relay(to, headerBytes, payload):
                send([to, WireProtocol.head(WireProtocol.reply, headerBytes: headerBytes), payload], to: to)
            case let .forward(worker, client, headerBytes, payload):
                if !send([worker, WireProtocol.head(WireProtocol.forward, headerBytes: headerBytes), client, payload],
                         to: worker) {
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
