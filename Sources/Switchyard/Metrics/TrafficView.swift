import Foundation

/// What `switchyard top` shows: per-tenant rates and latency percentiles from two ``TrafficReport``s, sorted, and
/// the table's lines. Pure, so it is tested without a terminal.
public struct TrafficView: Sendable, Equatable {
    /// One tenant's line.
    public struct Row: Sendable, Equatable, Codable {
        public var tenant: String
        public var requestsPerSecond: Double
        public var clientErrorsPerSecond: Double
        public var serverErrorsPerSecond: Double
        /// Median and 99th percentile over the interval, in milliseconds; `nil` without requests.
        public var p50: Double?
        public var p99: Double?
        public var connections: Int
        public var tunnels: Int
        public var availableBackends: Int
        public var backends: Int
    }

    /// What the rows are sorted by, largest first (the name: alphabetically).
    public enum Sort: String, Sendable, CaseIterable, Codable {
        case requests, errors, latency, connections, name

        /// The next one, for the key that changes the sort.
        public var next: Sort {
            let all = Self.allCases
            return all[((all.firstIndex(of: self) ?? 0) + 1) % all.count]
        }
    }

    public var rows: [Row]
    /// The whole balancer over the interval.
    public var requestsPerSecond: Double
    public var clientErrorsPerSecond: Double
    public var serverErrorsPerSecond: Double
    public var connections: Int
    public var sort: Sort

    /// The view of the interval from `previous` to `current`; a tenant new in `current` counts from zero.
    public init(from previous: TrafficReport, to current: TrafficReport, sort: Sort = .requests) {
        let seconds = max(current.at - previous.at, 0.001)
        let before = Dictionary(previous.tenants.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let bounds = current.latencyBoundsMilliseconds
        rows = current.tenants.map { tenant in
            let old = before[tenant.name]
            func delta(_ now: [Int], _ then: [Int]?) -> [Int] {
                // A counter that went back is a tenant removed and added again: count from zero.
                let then = then ?? []
                let reset = zip(now, then).contains { $0 < $1 }
                return now.enumerated().map { index, value in
                    reset || index >= then.count ? value : value - then[index]
                }
            }
            let requests = delta(tenant.requests, old?.requests)
            let latency = delta(tenant.latency, old?.latency)
            return Row(
                tenant: tenant.name,
                requestsPerSecond: Double(requests.reduce(0, +)) / seconds,
                clientErrorsPerSecond: Double(requests.count > 3 ? requests[3] : 0) / seconds,
                serverErrorsPerSecond: Double(requests.count > 4 ? requests[4] : 0) / seconds,
                p50: Self.percentile(0.5, of: latency, bounds: bounds),
                p99: Self.percentile(0.99, of: latency, bounds: bounds),
                connections: tenant.connections,
                tunnels: tenant.tunnels,
                availableBackends: tenant.availableBackends,
                backends: tenant.backends
            )
        }
        let totals = zip(current.requests, previous.requests).map { max(0, $0 - $1) }
        requestsPerSecond = Double(totals.reduce(0, +)) / seconds
        clientErrorsPerSecond = Double(totals.count > 3 ? totals[3] : 0) / seconds
        serverErrorsPerSecond = Double(totals.count > 4 ? totals[4] : 0) / seconds
        connections = current.connections
        self.sort = sort
        rows.sort(by: Self.order(sort))
    }

    /// The `q` quantile of a histogram's counts (buckets bounded by `bounds`, in milliseconds, then one open
    /// bucket), interpolated linearly inside its bucket as Prometheus' `histogram_quantile` does; the open bucket
    /// reports its lower bound.
    static func percentile(_ q: Double, of counts: [Int], bounds: [Double]) -> Double? {
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        let rank = q * Double(total)
        var seen = 0
        for (index, count) in counts.enumerated() where count > 0 {
            if Double(seen + count) >= rank {
                guard index < bounds.count else { return bounds.last }
                let lower = index == 0 ? 0 : bounds[index - 1]
                let upper = bounds[index]
                return lower + (upper - lower) * (rank - Double(seen)) / Double(count)
            }
            seen += count
        }
        return bounds.last
    }

    private static func order(_ sort: Sort) -> (Row, Row) -> Bool {
        { a, b in
            let keys: (Double, Double)
            switch sort {
            case .requests: keys = (a.requestsPerSecond, b.requestsPerSecond)
            case .errors:
                keys = (
                    a.serverErrorsPerSecond + a.clientErrorsPerSecond, b.serverErrorsPerSecond + b.clientErrorsPerSecond
                )
            case .latency: keys = (a.p99 ?? -1, b.p99 ?? -1)
            case .connections: keys = (Double(a.connections + a.tunnels), Double(b.connections + b.tunnels))
            case .name: return a.tenant < b.tenant
            }
            return keys.0 != keys.1 ? keys.0 > keys.1 : a.tenant < b.tenant
        }
    }

    /// The screen: a summary line, the header and as many rows as fit in `height` lines (all with `nil`), each cut
    /// to `width` characters.
    public func lines(width: Int = 200, height: Int? = nil, title: String = "switchyard top") -> [String] {
        var lines = [
            "\(title)  connections \(connections)  req/s \(Self.rate(requestsPerSecond))  4xx/s "
                + "\(Self.rate(clientErrorsPerSecond))  5xx/s \(Self.rate(serverErrorsPerSecond))  tenants \(rows.count)"
                + "  sorted by \(sort.rawValue) (s: sort, q: quit)",
            Self.columns(
                ["TENANT", "REQ/S", "4XX/S", "5XX/S", "P50 MS", "P99 MS", "CONNS", "TUNNELS", "BACKENDS"]
            ),
        ]
        let room = height.map { max(0, $0 - lines.count) } ?? rows.count
        for row in rows.prefix(room) {
            lines.append(
                Self.columns([
                    row.tenant, Self.rate(row.requestsPerSecond), Self.rate(row.clientErrorsPerSecond),
                    Self.rate(row.serverErrorsPerSecond), row.p50.map(Self.milliseconds) ?? "-",
                    row.p99.map(Self.milliseconds) ?? "-", String(row.connections), String(row.tunnels),
                    "\(row.availableBackends)/\(row.backends)",
                ])
            )
        }
        return lines.map { String($0.prefix(width)) }
    }

    private static func columns(_ values: [String]) -> String {
        let widths = [24, 9, 8, 8, 8, 8, 7, 8, 9]
        return zip(values, widths).enumerated().map { index, pair in
            let (value, width) = pair
            let cut = String(value.prefix(width))
            let padding = String(repeating: " ", count: max(0, width - cut.count))
            return index == 0 ? cut + padding : padding + cut
        }.joined(separator: " ")
    }

    private static func rate(_ value: Double) -> String {
        value >= 100 ? String(Int(value.rounded())) : String(format: "%.1f", value)
    }

    private static func milliseconds(_ value: Double) -> String {
        value >= 100 ? String(Int(value.rounded())) : String(format: "%.1f", value)
    }
}
