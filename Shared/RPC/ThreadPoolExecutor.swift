import Foundation

/// A small pool of dedicated threads that runs Swift tasks which prefer it
/// (`Task(executorPreference:)`): an RPC server's handlers run here, off the cooperative pool, so
/// CPU-heavy handlers do not starve other async work and a busy handler never delays socket I/O.
public final class ThreadPoolExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var head = 0
    private var stopping = false
    private var threads: [Thread] = []
    private var running = 0
    public let threadCount: Int

    public init(threads count: Int, name: String) {
        precondition(count >= 1, "a pool needs at least one thread")
        threadCount = count
        running = count
        for index in 0..<count {
            let thread = Thread { self.runLoop() } // the threads keep the pool alive until shutdown()
            thread.name = "\(name)-\(index)"
            thread.stackSize = 4 << 20
            threads.append(thread)
            thread.start()
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        if running == 0 && stopping {
            // The pool has stopped: run the late job (a task resuming after shutdown) on a
            // thread of its own rather than lose it.
            condition.unlock()
            let executor = asUnownedTaskExecutor()
            Thread { job.runSynchronously(on: executor) }.start()
            return
        }
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the threads finish the jobs queued so far and exit. Jobs enqueued later still run
    /// (a task resuming after shutdown must not be lost), each on a short-lived thread.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    private func runLoop() {
        let executor = asUnownedTaskExecutor()
        while true {
            condition.lock()
            while head == jobs.count && !stopping { condition.wait() }
            if head == jobs.count && stopping {
                running -= 1
                condition.unlock()
                return
            }
            let job = jobs[head]
            head += 1
            if head > 1024 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            condition.unlock()
            job.runSynchronously(on: executor)
        }
    }
}
