import Foundation

/// Waits for SIGINT or SIGTERM (or a programmatic request): the start of every graceful shutdown.
public final class ShutdownSignal: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private var sources: [DispatchSourceSignal] = []
    private let lock = NSLock()
    private var requested = false

    /// Takes over SIGINT and SIGTERM from the default handlers.
    public init() {
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { [weak self] in self?.request() }
            source.resume()
            sources.append(source)
        }
    }

    /// Asks for shutdown, as a signal does.
    public func request() {
        let first = lock.withLock { () -> Bool in
            defer { requested = true }
            return !requested
        }
        if first { semaphore.signal() }
    }

    public var isRequested: Bool { lock.withLock { requested } }

    /// Blocks until shutdown is requested.
    public func wait() {
        semaphore.wait()
        semaphore.signal()
    }
}
