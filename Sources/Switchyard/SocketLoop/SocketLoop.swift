import CSocketLoop
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One thread of the data path's own event loop: an epoll set, the thread that waits on it, and the way other
/// threads hand it work (an eventfd and a locked queue of tasks).
///
/// The loop's state (its connections, pool and counters) is a ``LoopWorker`` that lives on the thread alone; this
/// handle is what other threads hold. A task runs on the thread with the worker, in the order submitted.
final class SocketLoop: Sendable {
    /// The loop's number, 0 for the first: its slot in every counter.
    let index: Int
    /// The epoll set; closed by the thread when it ends.
    let epoll: CInt
    /// Written by ``execute(_:)`` to wake the thread; registered in ``epoll`` with ``LoopWorker/wakeupToken``.
    let wakeup: CInt
    private let tasks = NIOLockedValueBox(Tasks())

    private struct Tasks {
        var queue: [@Sendable (LoopWorker) -> Void] = []
        /// Whether the thread has ended: tasks submitted later never run.
        var ended = false
    }

    init(index: Int) throws(SocketFailure) {
        let epoll = c_loop_epoll_create()
        guard epoll >= 0 else { throw SocketFailure(operation: "epoll_create1", code: errno) }
        let wakeup = c_loop_eventfd()
        guard wakeup >= 0 else {
            let code = errno
            close(epoll)
            throw SocketFailure(operation: "eventfd", code: code)
        }
        guard c_loop_epoll_add(epoll, wakeup, c_loop_in | c_loop_et, LoopWorker.wakeupToken) == 0 else {
            let code = errno
            close(epoll)
            close(wakeup)
            throw SocketFailure(operation: "epoll_ctl", code: code)
        }
        self.index = index
        self.epoll = epoll
        self.wakeup = wakeup
    }

    /// Starts the thread; `makeWorker` builds the loop's state on it.
    func start(name: String, makeWorker: @escaping @Sendable (SocketLoop) -> LoopWorker) {
        let body = ThreadBody { [self] in
            // Linux keeps 15 bytes of a thread's name.
            String(name.prefix(15)).withCString { c_loop_name_thread($0) }
            let worker = makeWorker(self)
            worker.run()
            let abandoned = tasks.withLockedValue { tasks in
                tasks.ended = true
                defer { tasks.queue = [] }
                return tasks.queue
            }
            // Tasks that arrive after the end are dropped; those queued before it still run, so that their callers
            // (awaiting `submit`) are answered.
            for task in abandoned { task(worker) }
            worker.finish()
            close(epoll)
            close(wakeup)
        }
        var thread = pthread_t()
        let argument = Unmanaged.passRetained(body).toOpaque()
        let created = pthread_create(
            &thread,
            nil,
            { argument in
                guard let argument else { return nil }
                let body = Unmanaged<ThreadBody>.fromOpaque(argument).takeRetainedValue()
                body.run()
                return nil
            },
            argument
        )
        if created == 0 {
            pthread_detach(thread)
        } else {
            Unmanaged<ThreadBody>.fromOpaque(argument).release()
        }
    }

    /// Runs `task` on the loop's thread with its worker. Returns `false` (and drops the task) once the loop ended.
    @discardableResult
    func execute(_ task: @escaping @Sendable (LoopWorker) -> Void) -> Bool {
        let (accepted, wasEmpty) = tasks.withLockedValue { tasks -> (Bool, Bool) in
            guard !tasks.ended else { return (false, false) }
            tasks.queue.append(task)
            return (true, tasks.queue.count == 1)
        }
        if accepted, wasEmpty {
            var one: UInt64 = 1
            _ = write(wakeup, &one, MemoryLayout<UInt64>.size)
        }
        return accepted
    }

    /// Runs `body` on the loop's thread and returns its result; `nil` if the loop has ended.
    func submit<Result: Sendable>(_ body: @escaping @Sendable (LoopWorker) -> Result) async -> Result? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Result?, Never>) in
            let accepted = execute { worker in continuation.resume(returning: body(worker)) }
            if !accepted { continuation.resume(returning: nil) }
        }
    }

    /// The tasks queued so far, taken off the queue; called by the worker when woken.
    func takeTasks() -> [@Sendable (LoopWorker) -> Void] {
        var count: UInt64 = 0
        _ = read(wakeup, &count, MemoryLayout<UInt64>.size)
        return tasks.withLockedValue { tasks in
            defer { tasks.queue = [] }
            return tasks.queue
        }
    }
}

/// The closure a loop's thread runs, boxed to cross `pthread_create`'s `void *`.
private final class ThreadBody: Sendable {
    let run: @Sendable () -> Void

    init(_ run: @escaping @Sendable () -> Void) {
        self.run = run
    }
}
