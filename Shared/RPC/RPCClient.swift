import Foundation
import SwiftProtobuf
import WinnowProto
import ZeroMQ

/// How `RPCClient` retries idempotent calls that fail with UNAVAILABLE: exponential backoff with
/// jitter, never past the call's deadline.
public struct RPCRetryPolicy: Sendable {
    public var maxAttempts: Int
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    public var multiplier: Double

    public init(maxAttempts: Int = 6, initialBackoff: Duration = .milliseconds(20),
                maxBackoff: Duration = .seconds(1), multiplier: Double = 2) {
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.multiplier = multiplier
    }

    public static let `default` = RPCRetryPolicy()
    public static let none = RPCRetryPolicy(maxAttempts: 1)
}

/// A client of Winnow services: one DEALER socket connected to a broker or to a service's direct
/// endpoint, shared by any number of concurrent calls.
///
/// Calls are pipelined: each gets a request id, goes out at once, and its reply is matched by id,
/// so many calls can be in flight together. A call that reaches its deadline fails with
/// DEADLINE_EXCEEDED and forgets its id; a reply that arrives later is dropped, never handed to
/// another call. The deadline is `timeout` from now, or the deadline of the call being served when
/// that is earlier (see `RPCContext`). Idempotent calls are retried on UNAVAILABLE (`retryPolicy`).
/// The socket lives on one I/O thread; the client is safe to use from any thread or task.
public final class RPCClient: @unchecked Sendable {
    public let endpoint: String
    /// Largest request payload this client sends; larger fails with INVALID_ARGUMENT at once.
    public var maxPayloadBytes: Int {
        get { core.maxPayloadBytes }
        set { core.maxPayloadBytes = newValue }
    }
    /// Retries for idempotent calls.
    public var retryPolicy: RPCRetryPolicy = .default

    private let core: ClientCore

    public init(endpoint: String) throws {
        self.endpoint = endpoint
        core = try ClientCore(endpoint: endpoint)
    }

    deinit { core.close() }

    /// Calls `service.method` with `request`, decoding the reply as `Res`. Throws `RPCError`.
    public func call<Req: SwiftProtobuf.Message, Res: SwiftProtobuf.Message>(
        service: String, method: String, _ request: Req, as: Res.Type,
        timeout: Duration, idempotent: Bool = false
    ) async throws -> Res {
        let payload: Frame
        do { payload = try request.serializedBytes() } catch {
            throw RPCError(.invalidArgument, "cannot serialise \(Req.protoMessageName): \(error)")
        }
        let reply = try await callRaw(service: service, method: method, payload: payload,
                                      timeout: timeout, idempotent: idempotent)
        do {
            return try Res(serializedBytes: reply)
        } catch {
            throw RPCError(.internal, "cannot decode \(Res.protoMessageName) from the reply of \(service).\(method): \(error)")
        }
    }

    /// As `call`, with the payload already serialised; returns the reply payload.
    public func callRaw(service: String, method: String, payload: Frame, timeout: Duration,
                        idempotent: Bool = false, metadata: [String: String] = [:]) async throws -> Frame {
        var deadline = WallClock.nowMicros() + max(0, timeout.microseconds)
        if let inherited = RPCContext.deadlineMicros { deadline = min(deadline, inherited) }
        var header = Winnow_V1_RequestHeader()
        header.service = service
        header.method = method
        header.deadlineUnixMicros = deadline
        header.idempotent = idempotent
        header.metadata = metadata
        let policy = idempotent ? retryPolicy : .none
        var backoff = Double(policy.initialBackoff.microseconds)
        var attempt = 0
        while true {
            attempt += 1
            let result = await core.send(header: header, payload: payload)
            switch result {
            case .success(let reply):
                return reply
            case .failure(let error) where error.code == .unavailable && attempt < policy.maxAttempts:
                let left = deadline - WallClock.nowMicros()
                let pause = Int64(backoff * Double.random(in: 0.5...1.0))
                if left <= pause { throw error }
                try? await Task.sleep(for: .microseconds(pause))
                if Task.isCancelled { throw RPCError(.cancelled, "call \(service).\(method) was cancelled") }
                backoff = min(backoff * policy.multiplier, Double(policy.maxBackoff.microseconds))
            case .failure(let error):
                throw error
            }
        }
    }

    /// Replies that arrived for no pending call (after their call's deadline) and were dropped.
    public var droppedReplies: UInt64 { core.droppedReplies }

    /// Fails calls in flight with CANCELLED, closes the socket and stops the I/O thread.
    public func close() { core.close() }
}

/// The I/O side of a client: owns the socket on its own thread.
final class ClientCore: @unchecked Sendable {
    typealias Completion = CheckedContinuation<Result<Frame, RPCError>, Never>

    private struct Pending {
        var continuation: Completion
        var deadline: Int64
        var label: String
    }

    let endpoint: String
    var maxPayloadBytes = WireProtocol.defaultMaxPayloadBytes

    private let socket: ZMQSocket
    private let wakeup: ZMQWakeup
    private let lock = NSLock()
    private let finished = DispatchSemaphore(value: 0)
    // Guarded by `lock`:
    private var outbox: [(id: UInt64, frames: [Frame])] = []
    private var pending: [UInt64: Pending] = [:]
    private var nextID: UInt64 = 1
    private var closed = false
    private var started = false
    private var dropped: UInt64 = 0
    // I/O thread only:
    private var deadlines = DeadlineHeap()

    init(endpoint: String) throws {
        self.endpoint = endpoint
        socket = try ZMQSocket(.dealer)
        try socket.setMaxMessageSize(Int64(WireProtocol.defaultMaxPayloadBytes + WireProtocol.hardLimitSlack))
        try socket.setHighWaterMarks(send: 100_000, receive: 100_000)
        try socket.setReconnectInterval(milliseconds: 50, max: 500)
        try socket.connect(endpoint)
        wakeup = try ZMQWakeup()
    }

    func send(header: Winnow_V1_RequestHeader, payload: Frame) async -> Result<Frame, RPCError> {
        let label = "\(header.service).\(header.method)"
        if payload.count > maxPayloadBytes {
            return .failure(RPCError(.invalidArgument,
                "request payload of \(label) is \(payload.count) bytes, over the cap of \(maxPayloadBytes)"))
        }
        if header.deadlineUnixMicros <= WallClock.nowMicros() {
            return .failure(RPCError(.deadlineExceeded, "deadline of \(label) passed before it was sent"))
        }
        var header = header
        let id = allocateID()
        header.requestID = id
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: Completion) in
                lock.lock()
                if closed {
                    lock.unlock()
                    continuation.resume(returning: .failure(RPCError(.cancelled, "client for \(endpoint) is closed")))
                    return
                }
                if Task.isCancelled {
                    lock.unlock()
                    continuation.resume(returning: .failure(RPCError(.cancelled, "call \(label) was cancelled")))
                    return
                }
                pending[id] = Pending(continuation: continuation, deadline: header.deadlineUnixMicros, label: label)
                outbox.append((id, [WireProtocol.request, WireProtocol.bytes(header), payload]))
                startIfNeeded()
                lock.unlock()
                wakeup.signal()
            }
        } onCancel: {
            lock.lock()
            let entry = pending.removeValue(forKey: id)
            lock.unlock()
            entry?.continuation.resume(returning: .failure(RPCError(.cancelled, "call \(label) was cancelled")))
        }
    }

    var droppedReplies: UInt64 { lock.withLock { dropped } }

    private func allocateID() -> UInt64 {
        lock.withLock {
            defer { nextID += 1 }
            return nextID
        }
    }

    /// Starts the I/O thread on first use (lock held).
    private func startIfNeeded() {
        guard !started else { return }
        started = true
        let thread = Thread { [self] in run() }
        thread.name = "rpc-client"
        thread.start()
    }

    func close() {
        lock.lock()
        if closed {
            lock.unlock()
            return
        }
        closed = true
        let wasStarted = started
        lock.unlock()
        if wasStarted {
            wakeup.signal()
            finished.wait()
        } else {
            socket.close()
        }
    }

    private func run() {
        var poller = ZMQPoller([.socket(socket, .pollIn), .fileDescriptor(wakeup.fileDescriptor, .pollIn)])
        while true {
            lock.lock()
            let stop = closed
            let toSend = outbox
            outbox.removeAll(keepingCapacity: true)
            lock.unlock()
            if stop { break }
            for (id, frames) in toSend { transmit(id: id, frames: frames) }

            var timeout = 1000
            if let next = deadlines.peek {
                let left = next.deadline - WallClock.nowMicros()
                timeout = max(0, min(1000, Int((left + 999) / 1000)))
            }
            let events: [ZMQPollEvents]
            do { events = try poller.poll(timeoutMilliseconds: timeout) } catch { break }
            if events[1].contains(.pollIn) { wakeup.drain() }
            if events[0].contains(.pollIn) { receiveAll() }
            expire(now: WallClock.nowMicros())
        }
        socket.close()
        lock.lock()
        let orphans = pending
        pending.removeAll()
        lock.unlock()
        for (_, entry) in orphans {
            entry.continuation.resume(returning: .failure(RPCError(.cancelled, "client for \(endpoint) closed during \(entry.label)")))
        }
        finished.signal()
    }

    private func transmit(id: UInt64, frames: [Frame]) {
        lock.lock()
        let deadline = pending[id]?.deadline
        lock.unlock()
        guard let deadline else { return } // cancelled before it went out
        let failure: RPCError?
        do {
            failure = try socket.send(multipart: frames, flags: .dontWait)
                ? nil : RPCError(.unavailable, "send queue to \(endpoint) is full")
        } catch {
            failure = RPCError(.unavailable, "cannot send to \(endpoint): \(error)")
        }
        if let failure {
            finish(id: id, with: .failure(failure))
        } else {
            deadlines.push(deadline: deadline, id: id)
        }
    }

    private func receiveAll() {
        for _ in 0..<4096 {
            let frames: [Frame]?
            do { frames = try socket.receiveMultipart(flags: .dontWait) } catch { return }
            guard let frames else { return }
            // [WRP1, ReplyHeader, payload]; anything else is not for us and is dropped.
            guard frames.count == 3, frames[0] == WireProtocol.reply,
                  frames[1].count <= WireProtocol.maxHeaderBytes,
                  let header = try? Winnow_V1_ReplyHeader(serializedBytes: frames[1]) else { continue }
            if header.code == .ok {
                finish(id: header.requestID, with: .success(frames[2]))
            } else {
                finish(id: header.requestID, with: .failure(RPCError(header.code, header.message)))
            }
        }
    }

    /// Completes a pending call; a reply whose id is no longer pending (late, or duplicate) is dropped.
    private func finish(id: UInt64, with result: Result<Frame, RPCError>) {
        lock.lock()
        let entry = pending.removeValue(forKey: id)
        if entry == nil { dropped += 1 }
        lock.unlock()
        entry?.continuation.resume(returning: result)
    }

    private func expire(now: Int64) {
        while let next = deadlines.peek, next.deadline <= now {
            deadlines.pop()
            lock.lock()
            let entry = pending[next.id]
            if entry != nil { pending[next.id] = nil }
            lock.unlock()
            if let entry {
                entry.continuation.resume(returning: .failure(
                    RPCError(.deadlineExceeded, "\(entry.label) got no reply from \(endpoint) before its deadline")))
            }
        }
    }
}

/// A binary min-heap of (deadline, request id).
struct DeadlineHeap {
    private var items: [(deadline: Int64, id: UInt64)] = []

    var peek: (deadline: Int64, id: UInt64)? { items.first }
    var count: Int { items.count }

    mutating func push(deadline: Int64, id: UInt64) {
        items.append((deadline, id))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent].deadline <= items[child].deadline { break }
            items.swapAt(parent, child)
            child = parent
        }
    }

    @discardableResult
    mutating func pop() -> (deadline: Int64, id: UInt64)? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count && items[left].deadline < items[smallest].deadline { smallest = left }
            if right < items.count && items[right].deadline < items[smallest].deadline { smallest = right }
            if smallest == parent { break }
            items.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
