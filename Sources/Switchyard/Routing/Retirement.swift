import Atomics
import NIOCore

/// When a tenant or a backend left the configuration, if it did: requests in progress on it finish, and its
/// WebSocket tunnels are closed `timeouts.drain` later (as HAProxy's `hard-stop-after` for a removed server), so
/// that a tenant removed from the platform stops reaching its backends.
///
/// Marked by ``RouteSource/publish(_:replacing:)`` when a table without it replaces one with it; read by the
/// timeout sweep of each tunnel using it.
public final class Retirement: Sendable {
    /// The uptime in nanoseconds at which it was retired, plus one; 0 while it is in service.
    private let since = ManagedAtomic<Int64>(0)

    public init() {}

    /// Marks it retired now, unless it was already.
    func retire(now: NIODeadline = .now()) {
        _ = since.compareExchange(
            expected: 0,
            desired: Int64(truncatingIfNeeded: now.uptimeNanoseconds) &+ 1,
            ordering: .relaxed
        )
    }

    /// Whether it was retired at least `grace` before `now`.
    func isRetired(longerThan grace: TimeAmount, now: NIODeadline) -> Bool {
        let value = since.load(ordering: .relaxed)
        guard value != 0 else { return false }
        let retired = NIODeadline.uptimeNanoseconds(UInt64(value &- 1))
        return now - retired >= grace
    }

    /// Whether it was retired at all.
    public var isRetired: Bool {
        since.load(ordering: .relaxed) != 0
    }
}
