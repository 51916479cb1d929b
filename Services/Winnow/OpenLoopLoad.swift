import Foundation
import RPC
import WinnowProto

/// Recommend calls at a fixed arrival rate: open loop, each call sent at its scheduled time
/// whether or not earlier ones have answered (a closed loop would slow down with the server and
/// hide its queueing), and timed from that schedule. `bench retrieval` runs a fixed number of
/// calls and reads the latencies; `chaos` runs it until the job ends and reads when calls failed.
final class OpenLoopLoad: @unchecked Sendable {
    /// One call: when it was due (seconds since `zero`), how long it took from then, and its status.
    struct Call {
        let due: Double, latency: Double
        let code: Winnow_V1_StatusCode
        let message: String
    }

    private let client: RPCClient, rate: Double, zero: Date, timeout: Duration
    private let request: (Int) -> Winnow_V1_RecommendRequest
    private let lock = NSLock()
    private var running = true
    private var calls: [Call] = []
    private let done = DispatchSemaphore(value: 0)

    /// `request(i)` makes the i-th call's request (on the sending thread); `zero` is the clock
    /// the calls' due times are given against.
    init(client: RPCClient, rate: Double, zero: Date = Date(), timeout: Duration = .seconds(2),
         request: @escaping (Int) -> Winnow_V1_RecommendRequest) {
        self.client = client; self.rate = rate; self.zero = zero; self.timeout = timeout; self.request = request
    }

    /// Sends `count` calls on this thread (`before(i)` runs just before the i-th is sent) and
    /// returns them all once every one has answered.
    func run(count: Int, before: ((Int) -> Void)? = nil) -> [Call] {
        send(count: count, before: before)
        return lock.withLock { calls }
    }

    /// Sends on a thread of its own until `stop()`.
    func start() {
        let thread = Thread { [self] in
            send(count: nil, before: nil)
            done.signal()
        }
        thread.start()
    }

    /// Stops sending, waits for the calls in flight, and returns every call.
    func stop() -> [Call] {
        lock.withLock { running = false }
        done.wait()
        return lock.withLock { calls }
    }

    private func send(count: Int?, before: ((Int) -> Void)?) {
        let group = DispatchGroup()
        let first = Date().timeIntervalSince(zero)
        var i = 0
        while lock.withLock({ running }) && i < (count ?? .max) {
            let due = first + Double(i) / rate
            let wait = due - Date().timeIntervalSince(zero)
            if wait > 0 { usleep(useconds_t(wait * 1e6)) }
            before?(i)
            let r = request(i)
            group.enter()
            Task { [self] in
                var code = Winnow_V1_StatusCode.ok, message = ""
                do {
                    _ = try await client.call(service: "retrieval", method: "Recommend", r, as: Winnow_V1_RecommendResponse.self,
                                              timeout: timeout)
                } catch let e as RPCError { code = e.code; message = e.message } catch { code = .unknown; message = "\(error)" }
                let call = Call(due: due, latency: Date().timeIntervalSince(zero) - due, code: code, message: message)
                lock.withLock { calls.append(call) }
                group.leave()
            }
            i += 1
        }
        group.wait()
    }
}
