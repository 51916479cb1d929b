import Foundation
import Logging
import SwiftProtobuf
import WinnowProto
import ZeroMQ

/// How an `RPCServer` runs.
public struct RPCServerConfiguration: Sendable {
    /// The service name: what it registers with the broker under and answers to directly
    /// (`teacher`, `teacher/job42/m0`, ...). Direct requests may name the full name, its kind
    /// (the part before the first `/`), or nothing.
    public var name: String
    /// Unique per process; reported to the broker and by Health.
    public var instance: String
    /// Threads that run handlers.
    public var workerThreads: Int
    /// Requests the server holds at once (running or waiting for a thread); more get RESOURCE_EXHAUSTED.
    public var maxInFlight: Int
    /// Requests the broker may hand this worker at once (advertised at registration).
    public var brokerConcurrency: Int
    /// Largest request payload accepted; larger gets INVALID_ARGUMENT.
    public var maxPayloadBytes: Int
    /// Interval of heartbeats to the broker; the broker is presumed gone after `liveness` silent ones.
    public var heartbeatInterval: Duration
    public var liveness: Int
    /// CURVE keys of the direct endpoint and the broker link; nil: loopback binds only.
    public var security: LinkSecurity?

    public init(name: String, instance: String? = nil, workerThreads: Int = 4, maxInFlight: Int = 1024,
                brokerConcurrency: Int? = nil, maxPayloadBytes: Int = WireProtocol.defaultMaxPayloadBytes,
                heartbeatInterval: Duration = .milliseconds(2500), liveness: Int = 3,
                security: LinkSecurity? = LinkSecurity.installed) {
        self.name = name
        self.instance = instance ?? RPCServerConfiguration.makeInstance()
        self.workerThreads = workerThreads
        self.maxInFlight = maxInFlight
        self.brokerConcurrency = brokerConcurrency ?? max(workerThreads, 1) * 2
        self.maxPayloadBytes = maxPayloadBytes
        self.heartbeatInterval = heartbeatInterval
        self.liveness = liveness
        self.security = security
    }

    /// `host:pid:start-micros`.
    public static func makeInstance() -> String {
        "\(ProcessInfo.processInfo.hostName):\(getpid()):\(WallClock.nowMicros())"
    }
}

/// Counters of a running server.
public struct RPCServerStats: Sendable {
    public var served: UInt64 = 0
    public var malformed: UInt64 = 0
    public var rejected: UInt64 = 0
    public var registrations: UInt64 = 0
    public var brokerReconnects: UInt64 = 0
}

/// Serves rpcs of one service: at a direct endpoint (ROUTER) and, when given a broker, as a
/// Majordomo-style worker (DEALER) that registers, heartbeats and reconnects with a fresh socket
/// when the broker goes silent.
///
/// Handlers are plain async functions from request to response, registered by method name before
/// `start()`. They run on a small pool of threads; a handler sees the caller's deadline and
/// metadata through `RPCContext`, so nested calls inherit the deadline. A thrown `RPCError` becomes
/// the reply's status; any other error becomes INTERNAL. Malformed frames are counted and dropped;
/// a request whose header parses but whose payload is over the cap or undecodable gets
/// INVALID_ARGUMENT. One thread receives; handlers send their replies straight onto the socket.
/// Cheap, non-blocking handlers (Health, an echo) may be registered `inline`: they then run on the
/// receiving thread with no hand-off at all.
public final class RPCServer: @unchecked Sendable {
    public typealias RawHandler = @Sendable (Frame) async throws -> Frame
    public typealias InlineHandler = (Frame) throws -> Frame

    enum Handler {
        case pooled(RawHandler)
        case inline(InlineHandler)
    }

    public let configuration: RPCServerConfiguration
    public var logger: Logger
    /// The service's kind (its name before the first `/`), which direct requests may name.
    private let kind: String

    private let pool: ThreadPoolExecutor
    private let wakeup: ZMQWakeup
    private var handlers: [String: Handler] = [:]
    private var router: ZMQSharedSocket?
    private var brokerLink: BrokerLink?
    private var boundEndpoint: String?

    private let lock = NSLock()
    private let stopped = DispatchSemaphore(value: 0)
    // Guarded by `lock`:
    private var outstanding: [UInt64: Route] = [:]
    private var brokerSocket: (generation: Int, socket: ZMQSharedSocket)?
    private var drainDeadline: Int64?
    private var started = false
    private var statsValue = RPCServerStats()
    private var registeredValue = false
    /// A send found input waiting on the router / broker socket (it may have consumed the
    /// descriptor's edge): the receiving thread must drain that socket before sleeping.
    private var routerInputPending = true
    private var brokerInputPending = true
    private var receiverThread: pthread_t?
    // Receiving thread only:
    private var nextToken: UInt64 = 1

    enum Route {
        case direct(peer: Frame, requestID: UInt64)
        case broker(client: Frame, requestID: UInt64, generation: Int)

        var requestID: UInt64 {
            switch self {
            case let .direct(_, id), let .broker(_, id, _): return id
            }
        }
    }

    public init(configuration: RPCServerConfiguration, logger: Logger = Logger(label: "winnow.rpc")) throws {
        self.configuration = configuration
        self.logger = logger
        kind = configuration.name.split(separator: "/", maxSplits: 1).first.map(String.init) ?? configuration.name
        pool = ThreadPoolExecutor(threads: max(1, configuration.workerThreads), name: "rpc-worker")
        wakeup = try ZMQWakeup()
    }

    deinit { pool.shutdown() }

    // MARK: set-up (before start)

    /// Registers a typed handler for `method`, run on the handler pool.
    public func register<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
        _ method: String, _ handler: @escaping @Sendable (Req) async throws -> Res
    ) {
        registerRaw(method) { bytes in
            try Self.encode(try await handler(Self.decode(bytes, method)), method)
        }
    }

    /// Registers a typed handler that runs on the receiving thread itself: for cheap handlers that
    /// never block (no I/O, no locks held long, microseconds of work).
    public func registerInline<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
        _ method: String, _ handler: @escaping (Req) throws -> Res
    ) {
        registerRawInline(method) { bytes in try Self.encode(try handler(Self.decode(bytes, method)), method) }
    }

    /// Registers a handler on serialised payloads, run on the handler pool.
    public func registerRaw(_ method: String, _ handler: @escaping RawHandler) {
        lock.withLock { precondition(!started, "register handlers before start()") }
        handlers[method] = .pooled(handler)
    }

    /// Registers a handler on serialised payloads that runs on the receiving thread (see `registerInline`).
    public func registerRawInline(_ method: String, _ handler: @escaping InlineHandler) {
        lock.withLock { precondition(!started, "register handlers before start()") }
        handlers[method] = .inline(handler)
    }

    private static func decode<Req: SwiftProtobuf.Message>(_ bytes: Frame, _ method: String) throws -> Req {
        do { return try Req(serializedBytes: bytes) } catch {
            throw RPCError(.invalidArgument, "cannot decode \(Req.protoMessageName) for \(method): \(error)")
        }
    }

    private static func encode<Res: SwiftProtobuf.Message>(_ response: Res, _ method: String) throws -> Frame {
        do { return try response.serializedBytes() } catch {
            throw RPCError(.internal, "cannot serialise \(Res.protoMessageName) from \(method): \(error)")
        }
    }

    /// The methods registered so far.
    public var methods: [String] { handlers.keys.sorted() }

    /// Binds the direct endpoint (e.g. `tcp://127.0.0.1:*`); returns it with the port resolved.
    @discardableResult
    public func bind(_ endpoint: String) throws -> String {
        let socket = try ZMQSocket(.router)
        try socket.setMaxMessageSize(Int64(configuration.maxPayloadBytes + WireProtocol.hardLimitSlack))
        try socket.setHighWaterMarks(send: 100_000, receive: 100_000)
        try LinkSecurity.bind(socket, endpoint, security: configuration.security, logger: logger)
        let resolved = try socket.lastEndpoint
        router = try ZMQSharedSocket(socket)
        boundEndpoint = resolved
        return resolved
    }

    /// The bound direct endpoint, if any.
    public var endpoint: String? { boundEndpoint }

    /// The direct endpoint registered with the broker, which peers dial (set before `start`);
    /// nil: `RPCServer.advertised(bound, host: this host's name)`.
    public var advertisedEndpoint: String?

    /// What peers on other hosts dial for a server bound at `bound`: a wildcard host (`0.0.0.0`,
    /// `*`, `[::]`) is replaced by `host`; any other endpoint is itself.
    public static func advertised(_ bound: String, host: String) -> String {
        for wildcard in ["tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"] where bound.hasPrefix(wildcard) {
            return "tcp://\(host):" + bound.dropFirst(wildcard.count)
        }
        return bound
    }

    private var registered: String {
        if let advertisedEndpoint { return advertisedEndpoint }
        guard let bound = boundEndpoint else { return "" }
        return Self.advertised(bound, host: ProcessInfo.processInfo.hostName)
    }

    /// Serves through the broker at `endpoint` too (registers once started).
    public func attach(broker endpoint: String) {
        brokerLink = BrokerLink(endpoint: endpoint, configuration: configuration, directEndpoint: registered)
    }

    // MARK: running

    /// Starts the receiving thread.
    public func start() {
        lock.withLock {
            precondition(!started, "start() once")
            started = true
        }
        brokerLink?.directEndpoint = registered
        let thread = Thread { [self] in run() }
        thread.name = "rpc-server"
        thread.start()
    }

    /// Stops taking requests (new ones get UNAVAILABLE), leaves the broker, lets handlers in flight
    /// finish for up to `grace`, fails the rest with UNAVAILABLE, closes the sockets, and returns.
    public func shutdown(grace: Duration = .seconds(5)) {
        let wasStarted: Bool = lock.withLock {
            if drainDeadline == nil { drainDeadline = WallClock.nowMicros() + grace.microseconds }
            return started
        }
        guard wasStarted else {
            router?.close()
            return
        }
        wakeup.signal()
        stopped.wait()
        stopped.signal() // let further callers through
    }

    public var stats: RPCServerStats { lock.withLock { statsValue } }
    /// Whether the broker has acknowledged registration (and not lost it since).
    public var isRegistered: Bool { lock.withLock { registeredValue } }

    private func run() {
        lock.withLock { receiverThread = pthread_self() }
        var lastLinkGeneration = -1
        var poller = ZMQPoller([])
        var linkDone = false
        while true {
            let now = WallClock.nowMicros()
            let (drainAt, busy) = lock.withLock { (drainDeadline, outstanding.count) }
            if let drainAt {
                if !linkDone {
                    brokerLink?.leave(now: now)
                    linkDone = true
                }
                // Done when every request is answered and the broker acknowledged our leaving
                // (so it routes nothing more here), or when the grace is over.
                let left = brokerLink.map { $0.hasLeft(now: now) } ?? true
                if (busy == 0 && left) || now >= drainAt { break }
            }

            if let link = brokerLink, !linkDone {
                let registered = link.tick(now: now, logger: logger)
                lock.withLock {
                    registeredValue = registered
                    statsValue.registrations = link.registrations
                    statsValue.brokerReconnects = link.reconnects
                    if let socket = link.socket {
                        brokerSocket = (link.generation, socket)
                    } else {
                        brokerSocket = nil
                    }
                }
            }
            if brokerLink?.generation ?? 0 != lastLinkGeneration {
                lastLinkGeneration = brokerLink?.generation ?? 0
                lock.withLock { brokerInputPending = true }
                var items: [ZMQPoller.Item] = [.fileDescriptor(wakeup.fileDescriptor, .pollIn)]
                if let router { items.append(.fileDescriptor(router.fileDescriptor, .pollIn)) }
                if let socket = brokerLink?.socket { items.append(.fileDescriptor(socket.fileDescriptor, .pollIn)) }
                poller = ZMQPoller(items)
            }
            var timeout = 250
            if let link = brokerLink, !linkDone {
                timeout = min(timeout, max(0, Int((link.nextTimer - now + 999) / 1000)))
            }
            // The link's own sends (heartbeats, Unregister) may have consumed the descriptor's edge.
            if let link = brokerLink, link.takeInputPending() { lock.withLock { brokerInputPending = true } }
            if let drainAt { timeout = min(timeout, 10, max(0, Int((drainAt - now + 999) / 1000))) }
            if lock.withLock({ routerInputPending || brokerInputPending }) { timeout = 0 }
            do { try poller.wait(timeoutMilliseconds: timeout) } catch {
                logger.error("poll failed: \(error)")
                break
            }
            if poller.events(at: 0).contains(.pollIn) { wakeup.drain() }
            // Drain a socket when its descriptor fired or a send may have consumed its edge.
            let (routerDue, brokerDue) = lock.withLock { () -> (Bool, Bool) in
                defer { routerInputPending = false; brokerInputPending = false }
                return (routerInputPending, brokerInputPending)
            }
            var index = 1
            if let router {
                if routerDue || poller.events(at: index).contains(.pollIn) { drain(router) { self.receiveDirect($0) } }
                index += 1
            }
            if let link = brokerLink, let socket = link.socket,
               brokerDue || (index < poller.itemCount && poller.events(at: index).contains(.pollIn)) {
                drain(socket) { self.receiveBroker(link, $0) }
            }
        }
        // Fail what is still running; close.
        let left = lock.withLock { () -> [Route] in
            defer { outstanding.removeAll() }
            return Array(outstanding.values)
        }
        for route in left {
            send(route, WireProtocol.replyHeader(id: route.requestID, code: .unavailable,
                                                 message: "\(configuration.name) shut down before finishing"), [])
        }
        router?.close()
        lock.withLock { brokerSocket = nil }
        brokerLink?.close()
        pool.shutdown()
        stopped.signal()
    }

    /// Handles each message before receiving the next: a reply sent while handling (inline
    /// handlers, rejections) then needs no `ZMQ_EVENTS` query, because the receive after it looks
    /// for input anyway, and the one that ends on EAGAIN re-arms the edge-triggered descriptor.
    private func drain(_ socket: ZMQSharedSocket, _ handle: ([Frame]) -> Void) {
        while let frames = try? socket.receiveOne() { handle(frames) }
    }

    private func receiveDirect(_ frames: [Frame]) {
        // [peer, WRQ1 RequestHeader, payload]
        guard frames.count == 3, let headerBytes = WireProtocol.headerBytes(frames[1], tag: WireProtocol.request),
              let header = try? Winnow_V1_RequestHeader(serializedBytes: headerBytes) else {
            return countMalformed(frames)
        }
        handle(header: header, payload: frames[2], route: .direct(peer: frames[0], requestID: header.requestID))
    }

    private func receiveBroker(_ link: BrokerLink, _ frames: [Frame]) {
        link.heard(now: WallClock.nowMicros())
        // [WFW1 RequestHeader, caller, payload] or, for our own calls to the broker, [WRP1 ReplyHeader, payload]
        if frames.count == 3, frames[1].count <= WireProtocol.maxRoutingIDBytes,
           let headerBytes = WireProtocol.headerBytes(frames[0], tag: WireProtocol.forward),
           let header = try? Winnow_V1_RequestHeader(serializedBytes: headerBytes) {
            handle(header: header, payload: frames[2],
                   route: .broker(client: frames[1], requestID: header.requestID, generation: link.generation))
        } else if frames.count == 2, let headerBytes = WireProtocol.headerBytes(frames[0], tag: WireProtocol.reply),
                  let header = try? Winnow_V1_ReplyHeader(serializedBytes: headerBytes) {
            link.reply(header, payload: frames[1], logger: logger)
        } else {
            countMalformed(frames)
        }
    }

    private func countMalformed(_ frames: [Frame]) {
        lock.withLock { statsValue.malformed += 1 }
        logger.debug("dropped a malformed message of \(frames.count) frames")
    }

    private func handle(header: Winnow_V1_RequestHeader, payload: Frame, route: Route) {
        let id = header.requestID
        let name = configuration.name
        // Called from `drain` on the receiving thread: replies sent here skip the readable check.
        func reject(_ code: Winnow_V1_StatusCode, _ message: String) {
            lock.withLock { statsValue.rejected += 1 }
            send(route, WireProtocol.replyHeader(id: id, code: code, message: message), [], inDrain: true)
        }
        if !header.service.isEmpty && header.service != name && header.service != kind {
            return reject(.notFound, "this endpoint serves \(name), not \(header.service)")
        }
        guard let handler = handlers[header.method] else {
            return reject(.unimplemented, "\(name) has no method \(header.method.isEmpty ? "(empty)" : header.method)")
        }
        let (draining, busy) = lock.withLock { (drainDeadline != nil, outstanding.count) }
        if draining {
            return reject(.unavailable, "\(name) is shutting down")
        }
        if payload.count > configuration.maxPayloadBytes {
            return reject(.invalidArgument,
                          "payload of \(header.method) is \(payload.count) bytes, over the cap of \(configuration.maxPayloadBytes)")
        }
        let deadline = header.deadlineUnixMicros
        if deadline != 0 && deadline <= WallClock.nowMicros() {
            return reject(.deadlineExceeded, "deadline of \(header.method) passed before it was served")
        }
        let method = header.method
        let metadata = header.metadata
        switch handler {
        case .inline(let run):
            var reply = WireProtocol.replyHeader(id: id, code: .ok)
            var body: Frame = []
            do {
                body = try RPCContext.$deadlineMicros.withValue(deadline == 0 ? nil : deadline) {
                    try RPCContext.$metadata.withValue(metadata) { try run(payload) }
                }
            } catch {
                Self.fail(&reply, &body, error, method)
            }
            lock.withLock { statsValue.served += 1 }
            send(route, reply, body, inDrain: true)
        case .pooled(let run):
            if busy >= configuration.maxInFlight {
                return reject(.resourceExhausted, "\(name) already holds \(busy) requests")
            }
            let token = nextToken
            nextToken += 1
            lock.withLock { outstanding[token] = route }
            Task(executorPreference: pool) { [self] in
                var reply = WireProtocol.replyHeader(id: id, code: .ok)
                var body: Frame = []
                do {
                    body = try await RPCContext.$deadlineMicros.withValue(deadline == 0 ? nil : deadline) {
                        try await RPCContext.$metadata.withValue(metadata) { try await run(payload) }
                    }
                } catch {
                    Self.fail(&reply, &body, error, method)
                }
                complete(token: token, reply, body)
            }
        }
    }

    /// Notes that a socket has input its descriptor may no longer announce; wakes the receiving
    /// thread unless this is it (it checks the flag before sleeping).
    private func inputPending(router: Bool) {
        let onReceiver = lock.withLock { () -> Bool in
            if router { routerInputPending = true } else { brokerInputPending = true }
            return receiverThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
        }
        if !onReceiver { wakeup.signal() }
    }

    private static func fail(_ reply: inout Winnow_V1_ReplyHeader, _ body: inout Frame, _ error: Error, _ method: String) {
        body = []
        if let error = (error as? RPCError) ?? (error as? RPCStatusConvertible)?.rpcError {
            reply.code = error.code
            reply.message = error.message
        } else {
            reply.code = .internal
            reply.message = "\(method) failed: \(error)"
        }
    }

    /// A pooled handler finished: send its reply from this thread, unless shutdown already failed it.
    private func complete(token: UInt64, _ reply: Winnow_V1_ReplyHeader, _ body: Frame) {
        guard let route = lock.withLock({ outstanding[token] }) else { return }
        // Still counted as outstanding while it is sent, so a draining server does not close
        // the socket under it.
        send(route, reply, body)
        let draining = lock.withLock { () -> Bool in
            outstanding[token] = nil
            statsValue.served += 1
            return drainDeadline != nil
        }
        if draining { wakeup.signal() } // let a draining loop see it
    }

    /// `inDrain`: sent by the receiving thread while draining, which receives again right after.
    private func send(_ route: Route, _ header: Winnow_V1_ReplyHeader, _ payload: Frame, inDrain: Bool = false) {
        var header = header
        if header.code == .ok, payload.count > configuration.maxPayloadBytes {
            header.code = .resourceExhausted
            header.message = "reply is \(payload.count) bytes, over the cap of \(configuration.maxPayloadBytes)"
            return send(route, header, [], inDrain: inDrain)
        }
        do {
            switch route {
            case let .direct(peer, _):
                guard let router else { return }
                let result = try router.send(multipart: [peer, WireProtocol.head(WireProtocol.reply, header), payload],
                                             checkReadable: !inDrain)
                if result.readable { inputPending(router: true) }
            case let .broker(client, _, generation):
                // A reply for a broker connection we have since replaced is dropped: that broker
                // already failed or re-routed the request.
                guard let current = lock.withLock({ brokerSocket }), current.generation == generation else { return }
                // A request that came through the broker is answered on the broker socket, the
                // one being drained when `inDrain` is set.
                let result = try current.socket.send(multipart: [WireProtocol.head(WireProtocol.workerReply, header),
                                                                 client, payload],
                                                     checkReadable: !inDrain)
                if result.readable { inputPending(router: false) }
            }
        } catch {
            logger.debug("reply \(header.requestID) not sent: \(error)")
        }
    }
}

/// The worker side of the broker protocol, driven by the server's I/O thread: register, heartbeat
/// (the broker answers each, which is its heartbeat to us), re-register when the broker forgot us,
/// and reconnect with a fresh socket after `liveness` intervals of silence.
final class BrokerLink {
    let endpoint: String
    let configuration: RPCServerConfiguration
    var directEndpoint: String
    private(set) var socket: ZMQSharedSocket?
    private(set) var generation = 0
    private(set) var registered = false
    private(set) var registrations: UInt64 = 0
    private(set) var reconnects: UInt64 = 0
    private var lastHeard: Int64 = 0
    private var nextSend: Int64 = 0
    private var nextID: UInt64 = 1
    private var registerID: UInt64 = 0
    private var inputPending = false
    private var unregisterID: UInt64 = 0
    private var unregistered = false
    private var leaveDeadline: Int64 = 0
    private var interval: Int64

    init(endpoint: String, configuration: RPCServerConfiguration, directEndpoint: String) {
        self.endpoint = endpoint
        self.configuration = configuration
        self.directEndpoint = directEndpoint
        interval = max(1_000, configuration.heartbeatInterval.microseconds)
    }

    /// When the link next needs the I/O thread.
    var nextTimer: Int64 { min(nextSend, lastHeard + Int64(configuration.liveness) * interval) }

    func heard(now: Int64) { lastHeard = now }

    /// Whether one of the link's own sends found input waiting (and may have consumed the edge).
    func takeInputPending() -> Bool {
        defer { inputPending = false }
        return inputPending
    }

    /// Runs timers; returns whether the worker is registered.
    func tick(now: Int64, logger: Logger) -> Bool {
        if socket == nil || now - lastHeard > Int64(configuration.liveness) * interval {
            if socket != nil {
                logger.warning("broker \(endpoint) silent for \(configuration.liveness) heartbeats; reconnecting")
                reconnects += 1
            }
            reconnect(now: now, logger: logger)
        }
        if now >= nextSend {
            if registered {
                var beat = Winnow_V1_HeartbeatRequest()
                beat.instance = configuration.instance
                sendRequest("Heartbeat", beat)
            } else {
                sendRegister()
            }
            nextSend = now + interval
        }
        return registered
    }

    private func reconnect(now: Int64, logger: Logger) {
        socket?.close()
        socket = nil
        registered = false
        generation += 1
        lastHeard = now
        nextSend = now
        do {
            socket = try WireProtocol.connectedDealer(endpoint, maxPayloadBytes: configuration.maxPayloadBytes,
                                                      security: configuration.security, peer: WireProtocol.brokerService)
        } catch {
            logger.error("cannot connect to broker \(endpoint): \(error)")
        }
    }

    private func sendRegister() {
        var request = Winnow_V1_RegisterRequest()
        request.service = configuration.name
        request.instance = configuration.instance
        request.directEndpoint = directEndpoint
        request.pid = Int32(getpid())
        request.concurrency = Int32(configuration.brokerConcurrency)
        request.heartbeatIntervalMicros = interval
        registerID = sendRequest("Register", request)
    }

    @discardableResult
    private func sendRequest(_ method: String, _ message: some SwiftProtobuf.Message) -> UInt64 {
        let id = nextID
        nextID += 1
        var header = Winnow_V1_RequestHeader()
        header.service = WireProtocol.brokerService
        header.method = method
        header.requestID = id
        header.deadlineUnixMicros = WallClock.nowMicros() + interval * Int64(configuration.liveness)
        if let result = try? socket?.send(multipart: [WireProtocol.head(WireProtocol.request, header),
                                                      WireProtocol.bytes(message)]), result.readable {
            inputPending = true
        }
        return id
    }

    /// A reply from the broker to one of our own requests.
    func reply(_ header: Winnow_V1_ReplyHeader, payload: Frame, logger: Logger) {
        if unregisterID != 0 && header.requestID == unregisterID {
            unregistered = true
        } else if header.requestID == registerID && header.code == .ok {
            if !registered {
                registrations += 1
                logger.info("registered with broker \(endpoint) as \(configuration.name)")
            }
            registered = true
        } else if header.code == .notFound && registered {
            // The broker does not know us (it restarted, or it declared us dead): register again now.
            logger.warning("broker \(endpoint) forgot this worker (\(header.message)); registering again")
            registered = false
            nextSend = 0
        } else if header.code != .ok && header.requestID == registerID {
            logger.warning("registration refused by broker \(endpoint): \(header.code.name) \(header.message)")
        }
    }

    /// Tells the broker we are leaving (no more requests will be routed here).
    func leave(now: Int64) {
        guard socket != nil, registered else {
            unregistered = true
            return
        }
        var request = Winnow_V1_UnregisterRequest()
        request.instance = configuration.instance
        unregisterID = sendRequest("Unregister", request)
        leaveDeadline = now + min(interval, 1_000_000)
        registered = false
        // Do not register again while draining.
        nextSend = .max
    }

    /// Whether the broker acknowledged Unregister, or waiting for it is no longer worth it.
    func hasLeft(now: Int64) -> Bool { unregistered || now >= leaveDeadline }

    func close() {
        socket?.close()
        socket = nil
    }
}
