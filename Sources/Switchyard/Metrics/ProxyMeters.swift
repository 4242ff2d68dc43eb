import CoreMetrics
import NIOCore

/// What the data path counts for the whole balancer, one slot per event loop (``CounterSlots``), and the
/// request-duration histograms each loop records into.
///
/// Histograms are swift-prometheus `Histogram`s, recorded through swift-metrics' `TimerHandler`, one per loop with a
/// `worker` label: each takes a lock per observation, and a loop's lock is never contended by another loop's
/// requests (swift-prometheus offers no way to merge bucket counts at scrape time, which a single histogram fed by
/// per-loop counters would need). Queries sum them as they sum any histogram from several processes:
/// `histogram_quantile(0.99, sum by (le) (rate(switchyard_http_request_duration_seconds_bucket[5m])))`.
public final class ProxyMeters: Sendable {
    /// The balancer's counters.
    public enum Field: Int, CaseIterable, Sendable {
        /// Client connections accepted and served.
        case acceptedConnections
        /// Client connections closed at accept: `limits.max_connections` was reached.
        case refusedConnections
        case informational, successful, redirection, clientError, serverError
        /// Requests for a host no tenant serves (answered 404).
        case unknownHostRequests
        case tlsHandshakesV13, tlsHandshakesV12, tlsHandshakesOther
        /// Handshakes that resumed a session, of those above.
        case tlsResumed
        case tlsFailureTimeout, tlsFailurePlaintext, tlsFailureHandshake, tlsFailureAborted
    }

    private let slots: CounterSlots
    /// One per loop, by loop number.
    private let durations: [any TimerHandler]
    /// For the tenants listed in `metrics.tenant_histograms`: one per loop each.
    private let tenantDurations: [String: [any TimerHandler]]

    /// - Parameters:
    ///   - durations: one request-duration histogram per event loop.
    ///   - tenantDurations: for each tenant with a histogram of its own, one per event loop.
    init(durations: [any TimerHandler], tenantDurations: [String: [any TimerHandler]]) {
        precondition(!durations.isEmpty, "one histogram per loop")
        slots = CounterSlots(fields: Field.allCases.count, slots: durations.count)
        self.durations = durations
        self.tenantDurations = tenantDurations
    }

    @inline(__always)
    func add(_ amount: Int, to field: Field, loop: Int) {
        slots.add(amount, to: field.rawValue, loop: loop)
    }

    /// `field` summed over every loop.
    public func total(_ field: Field) -> Int {
        slots.total(field.rawValue)
    }

    /// One finished request: its class, its duration, and the tenant's own histogram when it has one.
    @inline(__always)
    func countRequest(status: Int, duration: TimeAmount, tenant: Tenant?, loop: Int) {
        if let field = Self.statusField(status) {
            slots.add(1, to: field.rawValue, loop: loop)
        }
        let nanoseconds = duration.nanoseconds
        durations[loop % durations.count].recordNanoseconds(nanoseconds)
        if !tenantDurations.isEmpty, let tenant, let timers = tenantDurations[tenant.name] {
            timers[loop % timers.count].recordNanoseconds(nanoseconds)
        }
    }

    /// The counter of `status`'s class; `nil` outside 100–599.
    @inline(__always)
    static func statusField(_ status: Int) -> Field? {
        StatusClass(status: status).flatMap { Field(rawValue: Field.informational.rawValue + $0.rawValue) }
    }

    /// The five status-class counters with their labels, in order.
    static let statusClasses: [(field: Field, label: String)] = StatusClass.allCases.compactMap { statusClass in
        Field(rawValue: Field.informational.rawValue + statusClass.rawValue).map { ($0, statusClass.label) }
    }
}
