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

    /// A client of `endpoint`, where the service `peer` (its kind: `broker`, `teacher`, …)
    /// listens; with `security`, the link is CURVE-authenticated both ways against that
    /// service's public key.
    public init(endpoint: String, peer: String = WireProtocol.brokerService, security: LinkSecurity? = LinkSecurity.installed) throws {
        self.endpoint = endpoint
        core = try ClientCore(endpoint: endpoint, peer: peer, security: security)
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

    /// An executor run by the client's receiving thread. A task that prefers it
    /// (`withTaskExecutorPreference(client.executor) { ... }`) resumes from each call on the very
    /// thread that received the reply, with no hand-off to another thread: the lowest latency for
    /// a loop of sequential calls. Keep such a task light; while it runs, no replies are received.
    public var executor: any TaskExecutor { core }

    /// Whether the current thread is the client's receiving thread (for tests).
    var isOnReceivingThread: Bool { core.isOnReceivingThread }

    /// Replies that arrived for no pending call (after their call's deadline) and were dropped.
    public var droppedReplies: UInt64 { core.droppedReplies }

    /// Fails calls in flight with CANCELLED, closes the socket and stops the I/O thread.
    public func close() { core.close() }
}

/// The socket side of a client. Callers send directly on the socket (under its lock); one thread
/// waits for replies, matches them to pending calls by request id, and expires deadlines.
final class ClientCore: TaskExecutor, @unchecked Sendable {
    typealias Completion = CheckedContinuation<Result<Frame, RPCError>, Never>

    private struct Pending {
        var continuation: Completion
        var deadline: Int64
        var label: String
    }

    let endpoint: String
    var maxPayloadBytes = WireProtocol.defaultMaxPayloadBytes

    private let socket: ZMQSharedSocket
    private let wakeup: ZMQWakeup
    private let lock = NSLock()
    private let finished = DispatchSemaphore(value: 0)
    // Guarded by `lock`:
    private var pending: [UInt64: Pending] = [:]
    private var deadlines = DeadlineHeap()
    private var plannedWake: Int64 = .max
    private var nextID: UInt64 = 1
    private var closed = false
    private var started = false
    private var dropped: UInt64 = 0
    private var jobs: [UnownedJob] = []
    private var receiverThread: pthread_t?
    private var receiverDone = false
    /// Receiving thread only: false after it sent without the readable check, until it has
    /// received again; it must not sleep before that.
    private var receivedSinceSend = true

    init(endpoint: String, peer: String, security: LinkSecurity?) throws {
        self.endpoint = endpoint
        socket = try WireProtocol.connectedDealer(endpoint, maxPayloadBytes: WireProtocol.defaultMaxPayloadBytes,
                                                  security: security, peer: peer)
        wakeup = try ZMQWakeup()
    }

    var droppedReplies: UInt64 { lock.withLock { dropped } }

    private func allocateID() -> UInt64 {
        lock.withLock {
            defer { nextID += 1 }
            return nextID
        }
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
        let frames = [WireProtocol.head(WireProtocol.request, header), payload]
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
                // Registered before it is sent, so the reply always finds it.
                pending[id] = Pending(continuation: continuation, deadline: header.deadlineUnixMicros, label: label)
                deadlines.push(deadline: header.deadlineUnixMicros, id: id)
                let wakeEarlier = header.deadlineUnixMicros < plannedWake
                startIfNeeded()
                let onReceiver = receiverThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
                lock.unlock()
                do {
                    // On the receiving thread the ZMQ_EVENTS query is skipped: that thread
                    // receives again before it sleeps (`receivedSinceSend`), which looks for
                    // input and re-arms the descriptor's edge at the same cost.
                    let (sent, readable) = try socket.send(multipart: frames, checkReadable: !onReceiver)
                    if !sent { finish(id: id, with: .failure(RPCError(.unavailable, "send queue to \(endpoint) is full"))) }
                    if onReceiver {
                        receivedSinceSend = false
                    } else if readable || wakeEarlier {
                        wakeup.signal()
                    }
                } catch {
                    finish(id: id, with: .failure(RPCError(.unavailable, "cannot send to \(endpoint): \(error)")))
                }
            }
        } onCancel: {
            lock.lock()
            let entry = pending.removeValue(forKey: id)
            lock.unlock()
            entry?.continuation.resume(returning: .failure(RPCError(.cancelled, "call \(label) was cancelled")))
        }
    }

    // MARK: the executor of the receiving thread

    var isOnReceivingThread: Bool {
        lock.withLock { receiverThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        lock.lock()
        if receiverDone {
            // The receiving thread has exited: run the late job (a task resuming after close)
            // on a thread of its own rather than lose it.
            lock.unlock()
            let executor = asUnownedTaskExecutor()
            Thread { job.runSynchronously(on: executor) }.start()
            return
        }
        jobs.append(job)
        startIfNeeded()
        let onReceiver = receiverThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
        lock.unlock()
        if !onReceiver { wakeup.signal() }
    }

    /// Runs the jobs queued for this executor (receiving thread only). Returns whether any ran.
    @discardableResult
    private func runJobs() -> Bool {
        var ranAny = false
        while true {
            let batch: [UnownedJob] = lock.withLock {
                defer { jobs.removeAll(keepingCapacity: true) }
                return jobs
            }
            if batch.isEmpty { return ranAny }
            ranAny = true
            let executor = asUnownedTaskExecutor()
            for job in batch { job.runSynchronously(on: executor) }
        }
    }

    /// Starts the receiving thread on first use (lock held).
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
        let onReceiver = receiverThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
        lock.unlock()
        if wasStarted {
            wakeup.signal()
            // From a task running on the receiving thread itself, waiting would deadlock: the
            // thread finishes closing once that task yields.
            if !onReceiver { finished.wait() }
        } else {
            socket.close()
        }
    }

    private func run() {
        lock.withLock { receiverThread = pthread_self() }
        var poller = ZMQPoller([.fileDescriptor(socket.fileDescriptor, .pollIn),
                                .fileDescriptor(wakeup.fileDescriptor, .pollIn)])
        while true {
            let now = WallClock.nowMicros()
            let timeout: Int? = lock.withLock {
                if closed { return nil }
                var timeout = 1000
                if let next = deadlines.peek {
                    timeout = max(0, min(1000, Int((next.deadline - now + 999) / 1000)))
                }
                if !jobs.isEmpty { timeout = 0 }
                plannedWake = now + Int64(timeout) * 1000
                return timeout
            }
            guard let timeout else { break }
            do { try poller.wait(timeoutMilliseconds: timeout) } catch { break }
            if poller.events(at: 1).contains(.pollIn) { wakeup.drain() }
            receiveAll()
            expire(now: WallClock.nowMicros())
            runJobs()
            if !receivedSinceSend { receiveAll() }
        }
        socket.close()
        lock.lock()
        let orphans = pending
        pending.removeAll()
        lock.unlock()
        for (_, entry) in orphans {
            entry.continuation.resume(returning: .failure(RPCError(.cancelled, "client for \(endpoint) closed during \(entry.label)")))
        }
        // Let tasks that prefer this executor finish what they were resumed for.
        while runJobs() {}
        lock.withLock { receiverDone = true }
        runJobs()
        finished.signal()
    }

    /// Receives replies one at a time, running the tasks each resumes (on this executor) before
    /// the next receive: a request such a task sends then needs no readable check, since the
    /// receive after it looks for input anyway; the one that ends on EAGAIN re-arms the
    /// edge-triggered descriptor.
    private func receiveAll() {
        while true {
            let frames: [Frame]?
            do { frames = try socket.receiveOne() } catch { frames = nil }
            receivedSinceSend = true
            guard let frames else { return }
            // [WRP1 ReplyHeader, payload]; anything else is not for us and is dropped.
            guard frames.count == 2, let headerBytes = WireProtocol.headerBytes(frames[0], tag: WireProtocol.reply),
                  let header = try? Winnow_V1_ReplyHeader(serializedBytes: headerBytes) else { continue }
            if header.code == .ok {
                finish(id: header.requestID, with: .success(frames[1]))
            } else {
                finish(id: header.requestID, with: .failure(RPCError(header.code, header.message)))
            }
            runJobs()
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
        var expired: [Pending] = []
        lock.withLock {
            // Answered calls leave their entry in the heap until it comes due; compact when
            // those outnumber the live ones.
            if deadlines.count > 4 * pending.count + 4096 {
                deadlines = DeadlineHeap()
                for (id, entry) in pending { deadlines.push(deadline: entry.deadline, id: id) }
            }
            while let next = deadlines.peek, next.deadline <= now {
                deadlines.pop()
                if let entry = pending.removeValue(forKey: next.id) { expired.append(entry) }
            }
        }
        for entry in expired {
            entry.continuation.resume(returning: .failure(
                RPCError(.deadlineExceeded, "\(entry.label) got no reply from \(endpoint) before its deadline")))
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
