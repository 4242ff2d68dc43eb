import NIOCore

/// `GET /v1/traffic`: every tenant's cumulative counters, for `switchyard top`, which turns two reports a second
/// apart into rates and percentiles. JSON, like the rest of the admin API; counters only grow (a tenant removed and
/// added again starts over).
public struct TrafficReport: Codable, Sendable, Equatable {
    /// One tenant's counters and gauges.
    public struct Tenant: Codable, Sendable, Equatable {
        public var name: String
        /// Requests answered by status class, `1xx` to `5xx`.
        public var requests: [Int]
        public var receivedBytes: Int
        public var sentBytes: Int
        /// Requests and tunnels in progress.
        public var connections: Int
        public var tunnels: Int
        public var backends: Int
        /// Backends that get new requests.
        public var availableBackends: Int
        /// Requests per latency bucket: ``TrafficReport/latencyBoundsMilliseconds``, then one past the last.
        public var latency: [Int]
    }

    /// Monotonic seconds when the report was made: what rates are computed against.
    public var at: Double
    /// Client connections open now.
    public var connections: Int
    /// Requests answered, routed or not, by status class.
    public var requests: [Int]
    /// The upper bounds of the latency buckets, in milliseconds.
    public var latencyBoundsMilliseconds: [Double]
    public var tenants: [Tenant]

    public init(
        at: Double,
        connections: Int,
        requests: [Int],
        latencyBoundsMilliseconds: [Double],
        tenants: [Tenant]
    ) {
        self.at = at
        self.connections = connections
        self.requests = requests
        self.latencyBoundsMilliseconds = latencyBoundsMilliseconds
        self.tenants = tenants
    }

    /// The report of `routes` now.
    init(routes: RouteTable, proxy: ProxyMeters, connections: Int, now: NIODeadline = .now()) {
        at = Double(now.uptimeNanoseconds) / 1e9
        self.connections = connections
        requests = ProxyMeters.statusClasses.map { proxy.total($0.field) }
        latencyBoundsMilliseconds = TenantMeters.latencyBounds.map { Double($0) / 1e6 }
        tenants = routes.tenants.map { tenant in
            let meters = tenant.meters
            return Tenant(
                name: tenant.name,
                requests: TenantMeters.Field.statusClasses.map { meters.total($0.field) },
                receivedBytes: meters.total(.receivedBytes),
                sentBytes: meters.total(.sentBytes),
                connections: tenant.backends.reduce(0) { $0 + $1.status.connections },
                tunnels: tenant.tunnels.current,
                backends: tenant.backends.count,
                availableBackends: tenant.backends.filter { $0.status.isAvailable(now: now) }.count,
                latency: meters.latencyCounts
            )
        }
    }
}
