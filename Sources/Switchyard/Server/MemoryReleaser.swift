import CMemory
import Logging
import ServiceLifecycle

/// Decides when to give freed heap memory back to the system: after the open connections fell a long way from
/// their peak (a burst of WebSockets or keep-alive clients that ended).
///
/// glibc keeps what a burst freed in its arenas, so without this a balancer that once held 5,000 tunnels keeps
/// their memory for good (measured: 85 MiB after them, 36 MiB without them). Releasing after every small dip would
/// cost more than it gives, hence the two thresholds.
struct MemoryReleasePolicy {
    /// The fewest connections that must have gone before a release is worth it.
    let minimumDrop: Int
    /// Open connections at their highest since the last release.
    private(set) var peak = 0

    init(minimumDrop: Int) {
        self.minimumDrop = minimumDrop
    }

    /// Takes the number of connections open now; returns whether to release memory now. A release is due when at
    /// least `minimumDrop` connections, and at least half of the peak, have gone since the last one.
    mutating func observe(connections: Int) -> Bool {
        peak = max(peak, connections)
        guard peak - connections >= minimumDrop, connections * 2 <= peak else { return false }
        peak = connections
        return true
    }
}

/// Watches the open connections once a second and returns free heap memory to the system (glibc's `malloc_trim`)
/// when ``MemoryReleasePolicy`` says a burst has ended. It runs off the event loops: the trim takes the allocator's
/// locks for a moment, which the loops only notice as one slower allocation.
public final class MemoryReleaser: Service {
    private let connections: @Sendable () -> Int
    private let logger: Logger
    private let minimumDrop: Int

    /// - Parameters:
    ///   - connections: the client connections open now.
    ///   - minimumDrop: the fewest connections that must have closed since the peak before memory is released.
    public init(logger: Logger, minimumDrop: Int = 1_000, connections: @escaping @Sendable () -> Int) {
        self.connections = connections
        self.logger = logger
        self.minimumDrop = minimumDrop
    }

    public func run() async throws {
        let minimumDrop = self.minimumDrop
        await cancelWhenGracefulShutdown {
            var policy = MemoryReleasePolicy(minimumDrop: minimumDrop)
            while !Task.isCancelled {
                let open = self.connections()
                let peak = max(policy.peak, open)
                if policy.observe(connections: open) {
                    let released = c_memory_release_free() == 1
                    self.logger.debug(
                        "connections fell from \(peak) to \(open): \(released ? "returned free memory to the system" : "no free memory to return")"
                    )
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
