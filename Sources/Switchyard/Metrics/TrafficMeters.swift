import NIOCore

/// What the data path counts for one tenant: its requests by status class and the bytes it moved, per event loop
/// (``CounterSlots``). Kept by the tenant across reloads and admin changes, like its tunnel count, so a change to
/// the tenant does not reset its counters; a tenant removed and added again starts from zero, which Prometheus reads
/// as a counter reset.
public final class TenantMeters: Sendable {
    /// The counters of a tenant.
    public enum Field: Int, CaseIterable, Sendable {
        case informational, successful, redirection, clientError, serverError
        /// Bytes read from clients: request heads and bodies, and what clients sent into tunnels.
        case receivedBytes
        /// Bytes written to clients: response heads and bodies, and what backends sent through tunnels.
        case sentBytes
        /// Upgrades that became tunnels.
        case tunnelsOpened
    }

    private let slots = CounterSlots(fields: Field.allCases.count)
    /// Requests by duration, in the buckets of ``SwitchyardMetrics/durationBuckets`` and one past the last: what
    /// `switchyard top` reads each tenant's p50 and p99 from. Not exported to Prometheus, where 10,000 tenants ×
    /// 13 buckets would be 130,000 series (`metrics.tenant_histograms` exports the tenants an operator lists).
    private let latency = CounterSlots(fields: TenantMeters.latencyBounds.count + 1)

    /// The upper bounds of the latency buckets, in nanoseconds.
    public static let latencyBounds: [Int64] = SwitchyardMetrics.durationBuckets.map { bound in
        let (seconds, attoseconds) = bound.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    public init() {}

    /// A request that took `duration`, counted in its latency bucket.
    @inline(__always)
    func countDuration(_ duration: TimeAmount, loop: Int) {
        let nanoseconds = duration.nanoseconds
        var bucket = 0
        let bounds = Self.latencyBounds
        while bucket < bounds.count, nanoseconds > bounds[bucket] { bucket += 1 }
        latency.add(1, to: bucket, loop: loop)
    }

    /// Requests per latency bucket (``latencyBounds``, then the overflow), summed over every loop.
    public var latencyCounts: [Int] {
        (0...Self.latencyBounds.count).map { latency.total($0) }
    }

    /// Adds `amount` to `field` on loop `loop`.
    @inline(__always)
    func add(_ amount: Int, to field: Field, loop: Int) {
        slots.add(amount, to: field.rawValue, loop: loop)
    }

    /// A request answered with `status`, counted in its class.
    @inline(__always)
    func countResponse(status: Int, loop: Int) {
        guard let field = Field.statusClass(status) else { return }
        slots.add(1, to: field.rawValue, loop: loop)
    }

    /// `field` summed over every loop.
    public func total(_ field: Field) -> Int {
        slots.total(field.rawValue)
    }
}

/// The five classes of HTTP statuses, as the tenants' and the balancer's counters keep them: in the same order,
/// at consecutive counters starting with `1xx`'s.
enum StatusClass: Int, CaseIterable {
    case informational, successful, redirection, clientError, serverError

    /// The class of `status`; `nil` outside 100–599.
    @inline(__always)
    init?(status: Int) {
        guard status >= 100, status < 600 else { return nil }
        self.init(rawValue: status / 100 - 1)
    }

    /// `1xx`…`5xx`, the `code` label.
    var label: String { "\(rawValue + 1)xx" }
}

extension TenantMeters.Field {
    /// The counter of `status`'s class; `nil` outside 100–599.
    @inline(__always)
    static func statusClass(_ status: Int) -> Self? {
        StatusClass(status: status).flatMap { Self(rawValue: Self.informational.rawValue + $0.rawValue) }
    }

    /// The five status-class counters with their labels, in order.
    static let statusClasses: [(field: Self, label: String)] = StatusClass.allCases.compactMap { statusClass in
        Self(rawValue: Self.informational.rawValue + statusClass.rawValue).map { ($0, statusClass.label) }
    }
}

/// What the data path counts for one backend of a tenant, per event loop. Kept by the backend across reloads (it
/// is the same ``Backend`` while the tenant lists it).
public final class BackendMeters: Sendable {
    /// The counters of a backend.
    public enum Field: Int, CaseIterable, Sendable {
        /// Requests and upgrades sent to it (each attempt counts).
        case requests
        /// Connects that failed: refused, reset or timed out.
        case connectFailures
        /// Exchanges it failed after connecting: closed before answering, no answer in time, a broken answer.
        case failures
        /// Requests sent to another backend after a connect to this one failed.
        case retries
        /// Passive ejections (``BackendStatus/PassiveEjection``).
        case ejections
    }

    private let slots = CounterSlots(fields: Field.allCases.count)

    public init() {}

    @inline(__always)
    func add(_ amount: Int, to field: Field, loop: Int) {
        slots.add(amount, to: field.rawValue, loop: loop)
    }

    /// `field` summed over every loop.
    public func total(_ field: Field) -> Int {
        slots.total(field.rawValue)
    }
}
