import Foundation
import NIOCore
import Prometheus

/// `GET /metrics`: every metric in the Prometheus text format (version 0.0.4), rendered by swift-prometheus.
///
/// The page is made when it is asked for, on the thread that asks (the admin or metrics listener's loop, never a
/// worker's): counters are read from the loops' slots (``CounterSlots``), so a scrape neither stops nor slows
/// the data path, whatever the number of tenants.
///
/// Per-tenant and per-backend families are made afresh for each scrape, one small swift-prometheus registry per
/// tenant, and their lines are then grouped by family (``FamilyGrouping``): swift-prometheus 2.4 copies a family's
/// whole label map each time a series joins it, so one registry holding 10,000 tenants' series would take seconds
/// to fill (2 s for 10,000 series of one family, 12 s for 20,000, measured here), where small registries take
/// microseconds each.
public struct MetricsPage: Sendable {
    /// Which families a scrape wants: `?scope=global|tenants|backends` (a comma-separated list, all by default) and
    /// `?tenant=NAME` (only that tenant's series, and then tenants and backends unless a scope says otherwise).
    public struct Query: Sendable, Equatable {
        public enum Scope: String, Sendable, CaseIterable {
            case global, tenants, backends
        }

        public var scopes: Set<Scope>
        public var tenant: String?

        public init(scopes: Set<Scope> = Set(Scope.allCases), tenant: String? = nil) {
            self.scopes = scopes
            self.tenant = tenant
        }

        /// The query of a request target (`/metrics?scope=tenants&tenant=shop`).
        ///
        /// - Throws: ``MetricsQueryError`` for an unknown parameter or scope.
        public init(target: String) throws(MetricsQueryError) {
            var scopes: Set<Scope>?
            var tenant: String?
            let query = target.split(separator: "?", maxSplits: 1).dropFirst().first ?? ""
            for pair in query.split(separator: "&") where !pair.isEmpty {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = String(parts[0])
                let raw = parts.count > 1 ? String(parts[1]) : ""
                let value = raw.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? raw
                switch key {
                case "scope":
                    var chosen = scopes ?? []
                    for name in value.split(separator: ",") {
                        guard let scope = Scope(rawValue: String(name)) else {
                            throw .unknownScope(String(name))
                        }
                        chosen.insert(scope)
                    }
                    scopes = chosen
                case "tenant":
                    tenant = value
                default:
                    throw .unknownParameter(key)
                }
            }
            self.tenant = tenant
            self.scopes = scopes ?? (tenant == nil ? Set(Scope.allCases) : [.tenants, .backends])
        }
    }

    /// The `Content-Type` of the page.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    private let metrics: SwitchyardMetrics
    private let routes: RouteSource
    private let connections: @Sendable () -> Int
    private let version: ConfigurationVersion?
    private let store: (@Sendable () -> StoreReading)?

    /// The state store as this node sees it, for the page.
    public struct StoreReading: Sendable {
        /// Whether it answers now.
        public var isUp: Bool
        /// Its revision as this node last read it.
        public var revision: Int64

        public init(isUp: Bool, revision: Int64) {
            self.isUp = isUp
            self.revision = revision
        }
    }

    /// - Parameters:
    ///   - connections: the client connections open now.
    ///   - version: the configuration version, for `switchyard_config_version`.
    ///   - store: whether the state store answers now and its revision as last read, for
    ///     `switchyard_state_store_up` and `switchyard_state_store_version`.
    public init(
        metrics: SwitchyardMetrics,
        routes: RouteSource,
        version: ConfigurationVersion?,
        store: (@Sendable () -> StoreReading)? = nil,
        connections: @escaping @Sendable () -> Int
    ) {
        self.metrics = metrics
        self.routes = routes
        self.version = version
        self.store = store
        self.connections = connections
    }

    /// The answer to `GET /metrics…` with `target`'s query: the page, or a 400 naming what is wrong with the query.
    public func response(to target: String) -> AdminAPI.Response {
        let query: Query
        do {
            query = try Query(target: target)
        } catch {
            return AdminAPI.error(400, .invalidRequest, error.description)
        }
        var response = AdminAPI.Response(status: 200, body: Data(render(query)))
        response.contentType = Self.contentType
        return response
    }

    /// The status page (`GET /` on `metrics.listen`) for `target`, with the rates of `view`.
    func statusPage(target: String, view: TrafficView) -> String {
        StatusPage.render(target: target, view: view, routes: routes.current, build: metrics.build)
    }

    /// Every tenant's counters now (`GET /v1/traffic`).
    public func trafficReport() -> TrafficReport {
        TrafficReport(routes: routes.current, proxy: metrics.proxy, connections: connections())
    }

    /// The page for `query`.
    public func render(_ query: Query = Query()) -> [UInt8] {
        var page: [UInt8] = []
        var grouping = FamilyGrouping()
        let table = routes.current
        if query.scopes.contains(.global) {
            renderGlobal(table: table, into: &grouping)
        }
        guard query.scopes.contains(.tenants) || query.scopes.contains(.backends) else {
            grouping.write(into: &page)
            return page
        }
        let tenants: [Tenant]
        if let name = query.tenant {
            tenants = table.tenant(named: name).map { [$0] } ?? []
        } else {
            tenants = table.tenants
        }
        page.reserveCapacity(tenants.count * 2048)
        var scratch: [UInt8] = []
        scratch.reserveCapacity(8192)
        for tenant in tenants {
            let registry = PrometheusCollectorRegistry()
            if query.scopes.contains(.tenants) {
                Self.addTenant(tenant, to: registry)
            }
            if query.scopes.contains(.backends) {
                Self.addBackends(of: tenant, to: registry)
            }
            scratch.removeAll(keepingCapacity: true)
            registry.emit(into: &scratch)
            grouping.add(scratch)
        }
        if query.scopes.contains(.tenants), !metrics.histogramTenants.isEmpty {
            scratch.removeAll(keepingCapacity: true)
            metrics.tenantRegistry.emit(into: &scratch)
            grouping.add(
                scratch,
                onlyLabel: query.tenant.map { "tenant=\"\(Self.escapedLabel($0))\"" },
                sorted: true
            )
        }
        grouping.write(into: &page)
        return page
    }

    // MARK: Global

    private func renderGlobal(table: RouteTable, into grouping: inout FamilyGrouping) {
        let registry = PrometheusCollectorRegistry()
        let proxy = metrics.proxy
        Self.gauge(
            registry,
            "switchyard_build_info",
            "Always 1; the version is in the label",
            1,
            labels: [("version", metrics.build)]
        )
        if let version {
            Self.gauge(
                registry,
                "switchyard_config_version",
                "The configuration version: the state store's revision",
                Double(version.current)
            )
            Self.counter(
                registry,
                "switchyard_config_changes_total",
                "Changes applied: admin API writes, drains and reloads",
                version.changeCount
            )
        }
        if let store {
            let reading = store()
            Self.gauge(
                registry,
                "switchyard_state_store_up",
                "1 while the state store answers; 0 while it does not (changes are refused, the last state is served)",
                reading.isUp ? 1 : 0
            )
            Self.gauge(
                registry,
                "switchyard_state_store_version",
                "The state store's revision as this node last read it; minus switchyard_config_version, how far "
                    + "this node is behind",
                Double(reading.revision)
            )
        }
        Self.gauge(registry, "switchyard_tenants", "Tenants served", Double(table.tenants.count))
        Self.gauge(registry, "switchyard_client_connections", "Client connections open now", Double(connections()))
        Self.counter(
            registry,
            "switchyard_client_connections_accepted_total",
            "Client connections accepted",
            proxy.total(.acceptedConnections)
        )
        Self.counter(
            registry,
            "switchyard_client_connections_refused_total",
            "Client connections closed at accept because limits.max_connections was reached",
            proxy.total(.refusedConnections)
        )
        for (field, label) in ProxyMeters.statusClasses {
            Self.counter(
                registry,
                "switchyard_http_requests_total",
                "Requests answered, by status class, routed or not",
                proxy.total(field),
                labels: [("code", label)]
            )
        }
        Self.counter(
            registry,
            "switchyard_http_unknown_host_requests_total",
            "Requests for a host no tenant serves (answered 404)",
            proxy.total(.unknownHostRequests)
        )
        let handshakes: [(ProxyMeters.Field, String)] = [
            (.tlsHandshakesV13, "TLSv1.3"), (.tlsHandshakesV12, "TLSv1.2"), (.tlsHandshakesOther, "other"),
        ]
        for (field, label) in handshakes {
            Self.counter(
                registry,
                "switchyard_tls_handshakes_total",
                "TLS handshakes completed, by protocol version",
                proxy.total(field),
                labels: [("version", label)]
            )
        }
        Self.counter(
            registry,
            "switchyard_tls_resumed_handshakes_total",
            "TLS handshakes that resumed a session (a ticket)",
            proxy.total(.tlsResumed)
        )
        let failures: [(ProxyMeters.Field, String)] = [
            (.tlsFailureTimeout, "timeout"), (.tlsFailurePlaintext, "plaintext_http"),
            (.tlsFailureHandshake, "handshake_error"), (.tlsFailureAborted, "client_closed"),
        ]
        for (field, label) in failures {
            Self.counter(
                registry,
                "switchyard_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason",
                proxy.total(field),
                labels: [("reason", label)]
            )
        }
        let process = ProcessStatistics.current()
        if let resident = process.residentBytes {
            Self.gauge(registry, "process_resident_memory_bytes", "Resident memory size in bytes", Double(resident))
        }
        if let open = process.openDescriptors {
            Self.gauge(registry, "process_open_fds", "Number of open file descriptors", Double(open))
        }
        if let limit = process.descriptorLimit {
            Self.gauge(registry, "process_max_fds", "Maximum number of open file descriptors", Double(limit))
        }
        Self.gauge(
            registry,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            metrics.startTime
        )
        var output: [UInt8] = []
        output.reserveCapacity(16 * 1024)
        registry.emit(into: &output)
        metrics.registry.emit(into: &output)
        grouping.add(output, sorted: true)
    }

    // MARK: Tenants and backends

    private static func addTenant(_ tenant: Tenant, to registry: PrometheusCollectorRegistry) {
        let labels = [("tenant", tenant.name)]
        let meters = tenant.meters
        for (field, label) in TenantMeters.Field.statusClasses {
            let value = meters.total(field)
            // A class the tenant never answered is left out: at 10,000 tenants, five series each would be mostly
            // zeros (a series appears with its first request; rate() treats the gap as nothing).
            guard value > 0 else { continue }
            counter(
                registry,
                "switchyard_tenant_http_requests_total",
                "Requests answered for the tenant, by status class",
                value,
                labels: labels + [("code", label)]
            )
        }
        counter(
            registry,
            "switchyard_tenant_received_bytes_total",
            "Bytes received from the tenant's clients: request heads and bodies, tunnel traffic",
            meters.total(.receivedBytes),
            labels: labels
        )
        counter(
            registry,
            "switchyard_tenant_sent_bytes_total",
            "Bytes sent to the tenant's clients: response heads and bodies, tunnel traffic",
            meters.total(.sentBytes),
            labels: labels
        )
        counter(
            registry,
            "switchyard_tenant_tunnels_opened_total",
            "WebSocket (and other upgrade) tunnels opened",
            meters.total(.tunnelsOpened),
            labels: labels
        )
        let connections = tenant.backends.reduce(0) { $0 + $1.status.connections }
        gauge(
            registry,
            "switchyard_tenant_connections",
            "Requests and tunnels of the tenant in progress (backend connections in use)",
            Double(connections),
            labels: labels
        )
        gauge(
            registry,
            "switchyard_tenant_tunnels",
            "Tunnels of the tenant open now",
            Double(tenant.tunnels.current),
            labels: labels
        )
        let now = NIODeadline.now()
        let available = tenant.backends.filter { $0.status.isAvailable(now: now) }.count
        gauge(
            registry,
            "switchyard_tenant_backends",
            "Backends of the tenant",
            Double(tenant.backends.count),
            labels: labels
        )
        gauge(
            registry,
            "switchyard_tenant_backends_available",
            "Backends of the tenant that get new requests: up, not ejected, not draining",
            Double(available),
            labels: labels
        )
    }

    private static func addBackends(of tenant: Tenant, to registry: PrometheusCollectorRegistry) {
        let now = NIODeadline.now()
        for backend in tenant.backends {
            let labels = [("tenant", tenant.name), ("backend", backend.description)]
            let status = backend.status
            let state: String
            if status.isDraining {
                state = "draining"
            } else if !status.isActivelyUp {
                state = "down"
            } else if status.isEjected(now: now) {
                state = "ejected"
            } else {
                state = "up"
            }
            gauge(
                registry,
                "switchyard_backend_up",
                "1 when the backend gets new requests (up, not ejected, not draining), else 0",
                state == "up" ? 1 : 0,
                labels: labels
            )
            // Only the current state, where HAProxy's haproxy_server_status has one series per possible state: a
            // quarter of the series at 10,000 tenants, and `switchyard_backend_state{state="down"}` still selects.
            gauge(
                registry,
                "switchyard_backend_state",
                "The backend's state, in the label: up, down (active checks), ejected (passive), draining",
                1,
                labels: labels + [("state", state)]
            )
            gauge(
                registry,
                "switchyard_backend_connections",
                "Requests and tunnels using the backend now",
                Double(status.connections),
                labels: labels
            )
            let meters = backend.meters
            counter(
                registry,
                "switchyard_backend_requests_total",
                "Requests and upgrades sent to the backend",
                meters.total(.requests),
                labels: labels
            )
            counter(
                registry,
                "switchyard_backend_connect_failures_total",
                "Connects to the backend that were refused, reset or timed out",
                meters.total(.connectFailures),
                labels: labels
            )
            counter(
                registry,
                "switchyard_backend_failures_total",
                "Exchanges the backend failed after connecting: closed early, too slow, a broken answer",
                meters.total(.failures),
                labels: labels
            )
            counter(
                registry,
                "switchyard_backend_retries_total",
                "Requests sent to another backend after a connect to this one failed",
                meters.total(.retries),
                labels: labels
            )
            counter(
                registry,
                "switchyard_backend_ejections_total",
                "Passive ejections of the backend after failures in a row",
                meters.total(.ejections),
                labels: labels
            )
        }
    }

    private static func counter(
        _ registry: PrometheusCollectorRegistry,
        _ name: String,
        _ help: String,
        _ value: Int,
        labels: [(String, String)] = []
    ) {
        registry.makeCounter(descriptor: descriptor(name, help), labels: labels).increment(by: Int64(max(0, value)))
    }

    private static func gauge(
        _ registry: PrometheusCollectorRegistry,
        _ name: String,
        _ help: String,
        _ value: Double,
        labels: [(String, String)] = []
    ) {
        registry.makeGauge(descriptor: descriptor(name, help), labels: labels).set(to: value)
    }

    /// `name` as it is (no namespace or unit appended) with its `# HELP` text.
    static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// A label value as the text format writes it.
    private static func escapedLabel(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}

/// Why a `/metrics` query was refused.
public enum MetricsQueryError: Error, Equatable, CustomStringConvertible {
    case unknownScope(String)
    case unknownParameter(String)

    public var description: String {
        switch self {
        case .unknownScope(let scope):
            return "unknown scope '\(scope)': use scope=global, tenants or backends (or several, comma-separated)"
        case .unknownParameter(let name):
            return "unknown parameter '\(name)': /metrics takes scope=global|tenants|backends and tenant=NAME"
        }
    }
}
