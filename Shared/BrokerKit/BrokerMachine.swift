import Foundation
import Logging
import RPC
import SwiftProtobuf
import WinnowProto
import ZeroMQ

/// A routing id of a peer of the broker's ROUTER socket.
public typealias PeerID = Frame

/// What arrives at the broker, parsed from one multipart message of its ROUTER socket.
public enum BrokerEvent: Equatable {
    /// `[peer, WRQ1 RequestHeader, payload]`: a call, from a caller or from a worker to the
    /// broker's own rpcs.
    case request(from: PeerID, header: Winnow_V1_RequestHeader, headerBytes: Frame, payload: Frame)
    /// `[peer, WBK1 ReplyHeader, caller, payload]`: a worker answering a forwarded request.
    case workerReply(from: PeerID, client: PeerID, header: Winnow_V1_ReplyHeader, headerBytes: Frame, payload: Frame)
    /// A send to this peer failed because it has no connection (ROUTER_MANDATORY).
    case unreachable(PeerID)

    /// Parses a message; nil when it is malformed (count and drop it).
    public init?(frames: [Frame]) {
        guard frames.count >= 3, !frames[0].isEmpty else { return nil }
        if frames.count == 3, let headerBytes = WireProtocol.headerBytes(frames[1], tag: WireProtocol.request),
           let header = try? Winnow_V1_RequestHeader(serializedBytes: headerBytes) {
            self = .request(from: frames[0], header: header, headerBytes: headerBytes, payload: frames[2])
        } else if frames.count == 4, !frames[2].isEmpty, frames[2].count <= WireProtocol.maxRoutingIDBytes,
                  let headerBytes = WireProtocol.headerBytes(frames[1], tag: WireProtocol.workerReply),
                  let header = try? Winnow_V1_ReplyHeader(serializedBytes: headerBytes) {
            self = .workerReply(from: frames[0], client: frames[2], header: header, headerBytes: headerBytes,
                                payload: frames[3])
        } else {
            return nil
        }
    }
}

/// What the broker does in answer to an event. The socket loop executes actions in order.
public enum BrokerAction: Equatable {
    /// Send `[to, WRP1 header, payload]`: the broker's own answer (its rpcs, or a failure).
    case reply(to: PeerID, header: Winnow_V1_ReplyHeader, payload: Frame)
    /// Send `[to, WRP1 headerBytes, payload]`: a worker's answer passed through unchanged.
    case relay(to: PeerID, headerBytes: Frame, payload: Frame)
    /// Send `[worker, WFW1 headerBytes, client, payload]`: a request handed to a worker.
    case forward(worker: PeerID, client: PeerID, headerBytes: Frame, payload: Frame)
    /// Something worth a log line.
    case log(Logger.Level, String)
}

/// The broker's settings.
public struct BrokerConfiguration: Sendable {
    /// Heartbeat interval assumed for a worker that does not state its own.
    public var heartbeatMicros: Int64
    /// Missed heartbeats before a worker is declared dead.
    public var liveness: Int
    /// Requests waiting for a free worker, per service, beyond which new ones get RESOURCE_EXHAUSTED.
    public var maxQueuedPerService: Int
    public var maxPayloadBytes: Int
    public var instance: String
    public var version: String
    /// The broker's process id, reported by its Health.
    public var pid: Int32 = getpid()

    public init(heartbeatMicros: Int64 = 2_500_000, liveness: Int = 3, maxQueuedPerService: Int = 10_000,
                maxPayloadBytes: Int = WireProtocol.defaultMaxPayloadBytes, instance: String = "broker",
                version: String = "0") {
        self.heartbeatMicros = heartbeatMicros
        self.liveness = liveness
        self.maxQueuedPerService = maxQueuedPerService
        self.maxPayloadBytes = maxPayloadBytes
        self.instance = instance
        self.version = version
    }
}

/// The Majordomo-style broker protocol as a value: events in, actions out, no I/O.
///
/// One dictionary of workers (by routing id) is the truth about workers; each worker holds the
/// requests it is serving. Requests wait in a per-service queue only while every worker of the
/// service is at its concurrency. A worker is dead after `liveness` heartbeat intervals of
/// silence (any message counts) or when a send to it finds no connection; its requests are
/// re-routed when idempotent and still within their deadline, and failed with UNAVAILABLE
/// otherwise.
public struct BrokerMachine {
    public struct Request: Equatable {
        public var client: PeerID
        public var header: Winnow_V1_RequestHeader
        public var headerBytes: Frame
        public var payload: Frame
        var key: RequestKey { RequestKey(client: client, id: header.requestID) }
    }

    struct RequestKey: Hashable {
        var client: PeerID
        var id: UInt64
    }

    public struct Worker: Equatable {
        public var id: PeerID
        public var service: String
        public var instance: String
        public var directEndpoint: String
        public var pid: Int32
        public var concurrency: Int
        public var heartbeatMicros: Int64
        public var lastHeard: Int64
        public var lastHeartbeat: Int64
        public var registered: Int64
        /// Dispatch sequence number of the last request given to it (least recently used first).
        public var lastAssigned: UInt64
        public var served: UInt64
        /// Unregistered: takes no new requests, and leaves once its requests are answered.
        public var leaving: Bool
        var inFlight: [RequestKey: Request]
        public var inFlightCount: Int { inFlight.count }
    }

    public private(set) var configuration: BrokerConfiguration
    /// Every registered worker, by routing id.
    public private(set) var workers: [PeerID: Worker] = [:]
    /// Requests waiting for a free worker, per service name.
    private var waiting: [String: [Request]] = [:]
    public private(set) var routed: UInt64 = 0
    public private(set) var malformed: UInt64 = 0
    public private(set) var lateReplies: UInt64 = 0
    private var dispatchSequence: UInt64 = 0
    private let started: Int64

    public init(configuration: BrokerConfiguration, now: Int64) {
        self.configuration = configuration
        started = now
    }

    /// Requests waiting for `service`.
    public func queued(_ service: String) -> Int { waiting[service]?.count ?? 0 }

    /// A message that did not parse.
    public mutating func malformedMessage() { malformed += 1 }

    // MARK: events

    public mutating func handle(_ event: BrokerEvent, now: Int64) -> [BrokerAction] {
        var actions: [BrokerAction] = []
        switch event {
        case let .request(from, header, headerBytes, payload):
            workers[from]?.lastHeard = now
            let request = Request(client: from, header: header, headerBytes: headerBytes, payload: payload)
            if header.service == WireProtocol.brokerService {
                own(request, now: now, into: &actions)
            } else {
                route(request, now: now, into: &actions)
            }
        case let .workerReply(from, client, header, headerBytes, payload):
            guard var worker = workers[from] else {
                lateReplies += 1
                return actions
            }
            worker.lastHeard = now
            let key = RequestKey(client: client, id: header.requestID)
            if worker.inFlight.removeValue(forKey: key) != nil {
                worker.served += 1
                actions.append(.relay(to: client, headerBytes: headerBytes, payload: payload))
            } else {
                lateReplies += 1 // already re-routed, expired, or never ours
            }
            workers[from] = worker
            if worker.leaving && worker.inFlight.isEmpty {
                workers[from] = nil
                actions.append(.log(.info, "worker \(worker.instance) (\(worker.service)) left"))
            } else {
                dispatchWaiting(worker.service, now: now, into: &actions)
            }
        case let .unreachable(peer):
            if let worker = workers[peer] {
                remove(worker, now: now, reason: "its connection is gone", into: &actions)
            }
        }
        return actions
    }

    /// Runs timers: declares silent workers dead and expires requests past their deadline.
    public mutating func tick(now: Int64) -> [BrokerAction] {
        var actions: [BrokerAction] = []
        let liveness = Int64(configuration.liveness)
        let dead = workers.values.filter { now - $0.lastHeard > liveness * $0.heartbeatMicros }
        for worker in dead.sorted(by: { $0.registered < $1.registered }) {
            remove(worker, now: now, reason: "silent for \(configuration.liveness) heartbeats", into: &actions)
        }
        // Requests at workers or in queues past their deadline: the caller has given up; free the
        // slot and tell it (a late answer is harmless, the caller drops it).
        for (id, var worker) in workers {
            let expired = worker.inFlight.filter { isExpired($0.value, now: now) }
            guard !expired.isEmpty else { continue }
            for (key, request) in expired {
                worker.inFlight[key] = nil
                actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                    id: request.header.requestID, code: .deadlineExceeded,
                    message: "\(request.header.service).\(request.header.method) passed its deadline at worker \(worker.instance)"),
                    payload: []))
            }
            workers[id] = worker
            dispatchWaiting(worker.service, now: now, into: &actions)
        }
        for (service, queue) in waiting {
            let (expired, alive) = (queue.filter { isExpired($0, now: now) }, queue.filter { !isExpired($0, now: now) })
            guard !expired.isEmpty else { continue }
            waiting[service] = alive.isEmpty ? nil : alive
            for request in expired {
                actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                    id: request.header.requestID, code: .deadlineExceeded,
                    message: "no worker of \(service) was free before the deadline"), payload: []))
            }
        }
        return actions
    }

    private func isExpired(_ request: Request, now: Int64) -> Bool {
        request.header.deadlineUnixMicros != 0 && request.header.deadlineUnixMicros <= now
    }

    // MARK: routing

    private mutating func route(_ request: Request, now: Int64, into actions: inout [BrokerAction]) {
        let service = request.header.service
        if isExpired(request, now: now) {
            actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                id: request.header.requestID, code: .deadlineExceeded,
                message: "deadline of \(service).\(request.header.method) passed before routing"), payload: []))
            return
        }
        if request.payload.count > configuration.maxPayloadBytes {
            actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                id: request.header.requestID, code: .invalidArgument,
                message: "payload of \(service).\(request.header.method) is \(request.payload.count) bytes, over the cap of \(configuration.maxPayloadBytes)"),
                payload: []))
            return
        }
        guard workers.values.contains(where: { $0.service == service && !$0.leaving }) else {
            actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                id: request.header.requestID, code: .notFound,
                message: "no worker serves \(service.isEmpty ? "(empty service name)" : service)"), payload: []))
            return
        }
        if let worker = pickWorker(service) {
            assign(request, to: worker, into: &actions)
        } else if queued(service) >= configuration.maxQueuedPerService {
            actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                id: request.header.requestID, code: .resourceExhausted,
                message: "\(queued(service)) requests already wait for \(service)"), payload: []))
        } else {
            waiting[service, default: []].append(request)
        }
    }

    /// The least loaded worker of `service` with a free slot, least recently used among equals.
    private func pickWorker(_ service: String) -> PeerID? {
        var best: Worker?
        for worker in workers.values where worker.service == service && !worker.leaving
            && worker.inFlight.count < worker.concurrency {
            if let current = best {
                if (worker.inFlight.count, worker.lastAssigned) < (current.inFlight.count, current.lastAssigned) {
                    best = worker
                }
            } else {
                best = worker
            }
        }
        return best?.id
    }

    private mutating func assign(_ request: Request, to id: PeerID, into actions: inout [BrokerAction]) {
        dispatchSequence += 1
        routed += 1
        workers[id]!.lastAssigned = dispatchSequence
        workers[id]!.inFlight[request.key] = request
        actions.append(.forward(worker: id, client: request.client, headerBytes: request.headerBytes,
                                payload: request.payload))
    }

    private mutating func dispatchWaiting(_ service: String, now: Int64, into actions: inout [BrokerAction]) {
        while var queue = waiting[service], !queue.isEmpty, let worker = pickWorker(service) {
            let request = queue.removeFirst()
            waiting[service] = queue.isEmpty ? nil : queue
            if isExpired(request, now: now) {
                actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                    id: request.header.requestID, code: .deadlineExceeded,
                    message: "no worker of \(service) was free before the deadline"), payload: []))
                continue
            }
            assign(request, to: worker, into: &actions)
        }
    }

    private mutating func remove(_ worker: Worker, now: Int64, reason: String, into actions: inout [BrokerAction]) {
        workers[worker.id] = nil
        actions.append(.log(.warning, "worker \(worker.instance) (\(worker.service)) dropped: \(reason); \(worker.inFlight.count) requests in flight"))
        let survivors = workers.values.contains { $0.service == worker.service && !$0.leaving }
        // Oldest first, so re-routed requests keep their order.
        let requests = worker.inFlight.values.sorted { $0.header.requestID < $1.header.requestID }
        for request in requests {
            if request.header.idempotent && !isExpired(request, now: now) && survivors {
                if let next = pickWorker(worker.service) {
                    assign(request, to: next, into: &actions)
                } else {
                    waiting[worker.service, default: []].insert(request, at: 0)
                }
            } else {
                actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                    id: request.header.requestID, code: .unavailable,
                    message: "worker \(worker.instance) of \(worker.service) died serving \(request.header.method)"),
                    payload: []))
            }
        }
        if !survivors, let queue = waiting.removeValue(forKey: worker.service) {
            for request in queue {
                actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                    id: request.header.requestID, code: .unavailable,
                    message: "the last worker of \(worker.service) is gone"), payload: []))
            }
        }
    }

    // MARK: the broker's own rpcs

    /// The rpcs the broker answers itself (service "broker").
    public static let ownMethods = ["Health", "Register", "Heartbeat", "Unregister", "ListWorkers"]
    /// Largest payload of the broker's own rpcs (each is well under a kilobyte): a larger one is
    /// refused before decoding, which for a frame near the transport's cap cost seconds.
    public static let ownPayloadCap = 64 << 10

    private mutating func own(_ request: Request, now: Int64, into actions: inout [BrokerAction]) {
        let id = request.header.requestID
        let client = request.client
        func answer(_ message: some SwiftProtobuf.Message) {
            actions.append(.reply(to: client, header: WireProtocol.replyHeader(id: id, code: .ok),
                                  payload: WireProtocol.bytes(message)))
        }
        func fail(_ code: Winnow_V1_StatusCode, _ message: String) {
            actions.append(.reply(to: client, header: WireProtocol.replyHeader(id: id, code: code, message: message),
                                  payload: []))
        }
        func decode<M: SwiftProtobuf.Message>(_ type: M.Type) -> M? {
            do { return try M(serializedBytes: request.payload) } catch {
                fail(.invalidArgument, "cannot decode \(M.protoMessageName): \(error)")
                return nil
            }
        }
        guard request.payload.count <= Self.ownPayloadCap else {
            return fail(.invalidArgument, "payload of broker.\(request.header.method) is \(request.payload.count) bytes, over the cap of \(Self.ownPayloadCap)")
        }
        switch request.header.method {
        case "Health":
            var response = Winnow_V1_HealthResponse()
            response.status = .serving
            response.service = WireProtocol.brokerService
            response.instance = configuration.instance
            response.pid = configuration.pid
            response.version = configuration.version
            response.uptimeMicros = now - started
            response.detail = ["workers": "\(workers.count)", "routed": "\(routed)", "malformed": "\(malformed)",
                               "methods": Self.ownMethods.joined(separator: ",")]
            answer(response)
        case "Register":
            guard let register = decode(Winnow_V1_RegisterRequest.self) else { return }
            guard !register.service.isEmpty, register.service != WireProtocol.brokerService else {
                return fail(.invalidArgument, "Register needs a service name other than \"\(WireProtocol.brokerService)\"")
            }
            // The same process on a fresh socket replaces its old registration.
            if let stale = workers.values.first(where: { $0.instance == register.instance && $0.id != client }),
               !register.instance.isEmpty {
                remove(stale, now: now, reason: "it registered again from a new connection", into: &actions)
            }
            let interval = register.heartbeatIntervalMicros > 0 ? register.heartbeatIntervalMicros : configuration.heartbeatMicros
            let previous = workers[client]
            if let previous, previous.service != register.service {
                remove(previous, now: now, reason: "it re-registered as \(register.service)", into: &actions)
            }
            var worker = Worker(
                id: client, service: register.service, instance: register.instance,
                directEndpoint: register.directEndpoint, pid: register.pid,
                concurrency: max(1, Int(register.concurrency)), heartbeatMicros: interval,
                lastHeard: now, lastHeartbeat: now, registered: now, lastAssigned: 0, served: 0, leaving: false,
                inFlight: [:])
            if let previous, previous.service == register.service {
                worker.inFlight = previous.inFlight
                worker.served = previous.served
                worker.registered = previous.registered
                worker.lastAssigned = previous.lastAssigned
            }
            workers[client] = worker
            if previous == nil {
                actions.append(.log(.info, "worker \(worker.instance) registered as \(worker.service) (concurrency \(worker.concurrency))"))
            }
            var response = Winnow_V1_RegisterResponse()
            response.heartbeatIntervalMicros = interval
            response.liveness = Int32(configuration.liveness)
            answer(response)
            dispatchWaiting(worker.service, now: now, into: &actions)
        case "Heartbeat":
            guard let beat = decode(Winnow_V1_HeartbeatRequest.self) else { return }
            guard workers[client] != nil else {
                return fail(.notFound, "worker \(beat.instance) is not registered")
            }
            workers[client]!.lastHeartbeat = now
            answer(Winnow_V1_HeartbeatResponse())
        case "Unregister":
            guard decode(Winnow_V1_UnregisterRequest.self) != nil else { return }
            if let worker = workers[client] {
                if worker.inFlight.isEmpty {
                    workers[client] = nil
                    actions.append(.log(.info, "worker \(worker.instance) (\(worker.service)) unregistered"))
                } else {
                    workers[client]!.leaving = true
                }
                if !workers.values.contains(where: { $0.service == worker.service && !$0.leaving }),
                   let queue = waiting.removeValue(forKey: worker.service) {
                    for request in queue {
                        actions.append(.reply(to: request.client, header: WireProtocol.replyHeader(
                            id: request.header.requestID, code: .unavailable,
                            message: "the last worker of \(worker.service) left"), payload: []))
                    }
                }
            }
            answer(Winnow_V1_UnregisterResponse())
        case "ListWorkers":
            guard let list = decode(Winnow_V1_ListWorkersRequest.self) else { return }
            var response = Winnow_V1_ListWorkersResponse()
            response.workers = workers.values
                .filter { list.servicePrefix.isEmpty || $0.service.hasPrefix(list.servicePrefix) }
                .sorted { ($0.service, $0.registered, $0.instance) < ($1.service, $1.registered, $1.instance) }
                .map { worker in
                    var info = Winnow_V1_WorkerInfo()
                    info.service = worker.service
                    info.instance = worker.instance
                    info.directEndpoint = worker.directEndpoint
                    info.pid = worker.pid
                    info.inFlight = Int32(worker.inFlight.count)
                    info.concurrency = Int32(worker.concurrency)
                    info.lastHeartbeatUnixMicros = worker.lastHeartbeat
                    info.registeredUnixMicros = worker.registered
                    info.served = worker.served
                    return info
                }
            response.requestsRouted = routed
            response.malformedFrames = malformed
            answer(response)
        default:
            fail(.unimplemented, "broker has no method \(request.header.method.isEmpty ? "(empty)" : request.header.method)")
        }
    }
}
