import CoreMetrics
import Foundation
import Prometheus

/// The balancer's metrics for the life of the process: the data path's meters (``ProxyMeters``; each tenant and
/// backend carries its own), the histograms they record into, and the counters of control-plane events. A scrape
/// reads them all into the Prometheus text format (``MetricsPage``).
public final class SwitchyardMetrics: Sendable {
    /// Names of the families kept here (the others are made at each scrape, see ``MetricsPage``).
    enum Name {
        static let requestDuration = "switchyard_http_request_duration_seconds"
        static let tenantRequestDuration = "switchyard_tenant_http_request_duration_seconds"
        static let healthChecks = "switchyard_health_checks_total"
    }

    /// The buckets of every request-duration histogram: 1 ms to 60 s, about three per decade.
    public static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(10), .seconds(60),
    ]

    /// The global families recorded as they happen: the request-duration histograms and the health checks.
    let registry: PrometheusCollectorRegistry
    /// The per-tenant histograms of `metrics.tenant_histograms`.
    let tenantRegistry: PrometheusCollectorRegistry
    /// The data path's own counters and histograms.
    public let proxy: ProxyMeters
    private let checksPassed: Prometheus.Counter
    private let checksFailed: Prometheus.Counter
    /// The balancer's version, for `switchyard_build_info`.
    public let build: String
    /// When the process started, in seconds since 1970.
    let startTime: Double
    /// The tenants that have a duration histogram of their own.
    public let histogramTenants: [String]

    /// - Parameters:
    ///   - loops: the data path's event loops (one counter slot and one histogram each).
    ///   - histogramTenants: `metrics.tenant_histograms`.
    ///   - build: the version `switchyard_build_info` reports.
    public init(loops: Int, histogramTenants: [String] = [], build: String = "dev") {
        let loops = max(1, loops)
        let registry = PrometheusCollectorRegistry()
        let tenantRegistry = PrometheusCollectorRegistry()
        self.registry = registry
        self.tenantRegistry = tenantRegistry
        let durations: [any TimerHandler] = (0..<loops).map { loop in
            registry.makeDurationHistogram(
                descriptor: MetricsPage.descriptor(
                    Name.requestDuration,
                    "Time from a request's first byte to the end of its response, per event loop"
                ),
                labels: [("worker", String(loop))],
                buckets: Self.durationBuckets
            )
        }
        var tenantDurations: [String: [any TimerHandler]] = [:]
        for tenant in Set(histogramTenants) {
            tenantDurations[tenant] = (0..<loops).map { loop in
                tenantRegistry.makeDurationHistogram(
                    descriptor: MetricsPage.descriptor(
                        Name.tenantRequestDuration,
                        "Request duration of the tenants listed in metrics.tenant_histograms, per event loop"
                    ),
                    labels: [("tenant", tenant), ("worker", String(loop))],
                    buckets: Self.durationBuckets
                )
            }
        }
        proxy = ProxyMeters(durations: durations, tenantDurations: tenantDurations)
        let checks = MetricsPage.descriptor(Name.healthChecks, "Active health checks by result")
        checksPassed = registry.makeCounter(descriptor: checks, labels: [("result", "passed")])
        checksFailed = registry.makeCounter(descriptor: checks, labels: [("result", "failed")])
        self.build = build
        self.histogramTenants = histogramTenants
        startTime = Date().timeIntervalSince1970
    }

    /// One active health check finished.
    func countHealthCheck(passed: Bool) {
        (passed ? checksPassed : checksFailed).increment()
    }
}
