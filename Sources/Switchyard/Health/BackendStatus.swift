import Atomics
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// What the data path knows of a backend's health, published lock-free: written by the ``HealthChecker`` (active
/// checks) and by the data path itself (passive failures), read by every worker on every request.
///
/// Passive checks: connect failures, resets and timeouts count against the backend; after
/// ``PassiveEjection/threshold`` in a row it is ejected for a backoff that doubles on each ejection (from
/// ``PassiveEjection/base`` up to ``PassiveEjection/maximum``), as nginx's `max_fails`/`fail_timeout` and
/// Envoy's outlier detection do. It comes back when the backoff ends or when an active check succeeds.
public final class BackendStatus: Sendable {
    /// Passive ejection settings.
    public enum PassiveEjection {
        public static let threshold = 3
        public static let base = TimeAmount.seconds(10)
        public static let maximum = TimeAmount.minutes(5)
    }

    private let activelyUp = ManagedAtomic<Bool>(true)
    /// Uptime nanoseconds until which the backend is ejected; 0 when it is not.
    private let ejectedUntil = ManagedAtomic<UInt64>(0)
    private let consecutiveFailures = ManagedAtomic<Int>(0)
    private let ejections = ManagedAtomic<Int>(0)
    /// When the last ejection was due to end (uptime nanoseconds), even if an active check ended it early.
    private let lastEjectionEnd = ManagedAtomic<UInt64>(0)
    private let drainedByOperator = ManagedAtomic<Bool>(false)
    private let drainedInConfiguration = ManagedAtomic<Bool>(false)
    private let openConnections = ManagedAtomic<Int>(0)
    /// Written once per check and read by the admin API, never by the data path: a lock costs nothing here.
    private let lastCheckRecord = NIOLockedValueBox<LastCheck?>(nil)

    /// The outcome of the latest active check, for status.
    public struct LastCheck: Sendable, Equatable {
        /// Wall-clock time the check completed.
        public var at: Date
        public var result: HealthCheckResult
    }

    public init() {}

    /// Whether new requests may go to the backend.
    public func isAvailable(now: NIODeadline) -> Bool {
        guard activelyUp.load(ordering: .relaxed), !drainedByOperator.load(ordering: .relaxed),
            !drainedInConfiguration.load(ordering: .relaxed)
        else { return false }
        let until = ejectedUntil.load(ordering: .relaxed)
        return until == 0 || now.uptimeNanoseconds >= until
    }

    /// Active checks' verdict. An `up` verdict also ends a passive ejection.
    func setActivelyUp(_ up: Bool) {
        activelyUp.store(up, ordering: .relaxed)
        if up {
            ejectedUntil.store(0, ordering: .relaxed)
            consecutiveFailures.store(0, ordering: .relaxed)
        }
    }

    public var isActivelyUp: Bool {
        activelyUp.load(ordering: .relaxed)
    }

    /// Whether the backend gets no new requests or tunnels, for either reason below.
    public var isDraining: Bool {
        isDrainedByOperator || isDrainedInConfiguration
    }

    /// Drained through the admin API (`switchyard backends drain`); lasts across reloads, not restarts.
    public var isDrainedByOperator: Bool {
        get { drainedByOperator.load(ordering: .relaxed) }
        set { drainedByOperator.store(newValue, ordering: .relaxed) }
    }

    /// Marked `drain` in the configuration file; follows the file at each reload.
    public var isDrainedInConfiguration: Bool {
        get { drainedInConfiguration.load(ordering: .relaxed) }
        set { drainedInConfiguration.store(newValue, ordering: .relaxed) }
    }

    /// Whether a passive ejection is in force.
    public func isEjected(now: NIODeadline) -> Bool {
        let until = ejectedUntil.load(ordering: .relaxed)
        return until != 0 && now.uptimeNanoseconds < until
    }

    /// A connect failure, reset or timeout. Returns the ejection's length when this failure ejected the backend.
    func recordFailure(now: NIODeadline) -> TimeAmount? {
        let failures = consecutiveFailures.loadThenWrappingIncrement(ordering: .relaxed) + 1
        guard failures >= PassiveEjection.threshold, !isEjected(now: now) else { return nil }
        // The backoff grows for a backend that keeps failing, and starts over after a quiet spell as long as the
        // longest ejection.
        let lastEnded = lastEjectionEnd.load(ordering: .relaxed)
        if lastEnded != 0, now.uptimeNanoseconds > lastEnded &+ UInt64(PassiveEjection.maximum.nanoseconds) {
            ejections.store(0, ordering: .relaxed)
        }
        let previous = ejections.loadThenWrappingIncrement(ordering: .relaxed)
        let factor = Int64(1) << Int64(min(previous, 10))
        let length = min(PassiveEjection.maximum, .nanoseconds(PassiveEjection.base.nanoseconds * factor))
        ejectedUntil.store((now + length).uptimeNanoseconds, ordering: .relaxed)
        lastEjectionEnd.store((now + length).uptimeNanoseconds, ordering: .relaxed)
        consecutiveFailures.store(0, ordering: .relaxed)
        return length
    }

    /// The backend answered: the failure streak ends.
    func recordSuccess() {
        if consecutiveFailures.load(ordering: .relaxed) != 0 {
            consecutiveFailures.store(0, ordering: .relaxed)
        }
    }

    /// The latest active check, `nil` before the first one completes.
    public var lastCheck: LastCheck? {
        lastCheckRecord.withLockedValue { $0 }
    }

    func recordCheck(_ result: HealthCheckResult, at date: Date = Date()) {
        lastCheckRecord.withLockedValue { $0 = LastCheck(at: date, result: result) }
    }

    /// Client requests and tunnels using the backend now (least-connections, status).
    public var connections: Int {
        openConnections.load(ordering: .relaxed)
    }

    func connectionOpened() {
        openConnections.wrappingIncrement(ordering: .relaxed)
    }

    func connectionClosed() {
        openConnections.wrappingDecrement(ordering: .relaxed)
    }
}
