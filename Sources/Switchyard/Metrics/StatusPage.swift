import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// `GET /` on `metrics.listen`: a read-only HTML page of every tenant's traffic and every backend's state and last
/// check, in the spirit of HAProxy's stats page but readable at 10,000 tenants: the busiest tenants first, a
/// search box (a plain form, no script), and the page refreshing itself. Rates are over the last interval of the
/// ``TrafficSampler``.
struct StatusPage {
    /// How many tenants the page shows unless asked for all (`?all=1`) or for a search.
    static let shownTenants = 50
    /// Seconds between the page's own refreshes.
    static let refreshSeconds = 5

    /// The page for a request's `target` (`/?q=shop`, `/?all=1`).
    static func render(target: String, view: TrafficView, routes: RouteTable, build: String) -> String {
        let parameters = Self.parameters(of: target)
        let search = parameters["q"].map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        let showAll = parameters["all"] == "1"
        var rows = view.rows
        if !search.isEmpty {
            rows = rows.filter { $0.tenant.localizedCaseInsensitiveContains(search) }
        }
        let matching = rows.count
        if !showAll { rows = Array(rows.prefix(shownTenants)) }
        let now = NIODeadline.now()
        var html = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta http-equiv="refresh" content="\(refreshSeconds)">
            <title>switchyard status</title>
            <style>
            body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
            h1 { font-size: 1.3em; margin: 0 0 .3em; }
            .summary span { margin-right: 1.5em; }
            table { border-collapse: collapse; margin-top: 1em; width: 100%; }
            th, td { padding: .25em .6em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
            th:first-child, td:first-child, td.backends { text-align: left; }
            td.backends { white-space: normal; font-weight: normal; }
            tr.tenant td { font-weight: 600; background: #f6f8fa; }
            .up { color: #1a7f37; } .down, .ejected { color: #cf222e; } .draining { color: #9a6700; }
            .error { color: #cf222e; font-weight: 600; }
            form { margin: .8em 0; }
            </style></head><body>
            <h1>switchyard \(escape(build))</h1>
            <div class="summary"><span>connections <b>\(view.connections)</b></span>\
            <span>requests/s <b>\(format(view.requestsPerSecond))</b></span>\
            <span>4xx/s <b>\(format(view.clientErrorsPerSecond))</b></span>\
            <span>5xx/s <b>\(format(view.serverErrorsPerSecond))</b></span>\
            <span>tenants <b>\(view.rows.count)</b></span></div>
            <form method="get" action="/"><input type="search" name="q" value="\(escape(search))" \
            placeholder="tenant name" aria-label="search tenants"> <button type="submit">search</button>
            \(search.isEmpty ? "" : #"<a href="/">clear</a>"#)</form>
            <p id="shown">\(rows.count) of \(matching) tenant\(matching == 1 ? "" : "s")\
            \(search.isEmpty ? "" : " matching “\(escape(search))”"), busiest first\
            \(rows.count < matching ? #" · <a href="/?all=1\#(search.isEmpty ? "" : "&amp;q=" + escape(search))">show all</a>"# : "")</p>
            <table><thead><tr><th>tenant / backend</th><th>req/s</th><th>4xx/s</th><th>5xx/s</th><th>p50 ms</th>\
            <th>p99 ms</th><th>connections</th><th>tunnels</th><th>backends up</th></tr></thead><tbody>

            """
        for row in rows {
            html += """
                <tr class="tenant"><td>\(escape(row.tenant))</td><td>\(format(row.requestsPerSecond))</td>\
                <td>\(format(row.clientErrorsPerSecond))</td><td>\(format(row.serverErrorsPerSecond))</td>\
                <td>\(row.p50.map(format) ?? "-")</td><td>\(row.p99.map(format) ?? "-")</td>\
                <td>\(row.connections)</td><td>\(row.tunnels)</td><td>\(row.availableBackends)/\(row.backends)</td></tr>

                """
            for backend in routes.tenant(named: row.tenant)?.backends ?? [] {
                let status = StatusReport.Backend(backend, now: now)
                var check = "no check yet"
                if let last = status.lastCheck {
                    check = "last check \(last.ok ? "passed" : "failed") \(last.secondsAgo)s ago"
                    if let error = last.error { check += ": " + error }
                }
                html += """
                    <tr class="backend"><td class="backends">&nbsp;&nbsp;\(escape(status.address)) \
                    <span class="\(status.state)">\(status.state)</span> · \(escape(check))</td>\
                    <td colspan="5"></td><td>\(status.connections)</td><td colspan="2"></td></tr>

                    """
            }
        }
        html +=
            "</tbody></table>\n<p>Refreshes every \(refreshSeconds) s. Metrics: <a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n"
        return html
    }

    /// The query parameters of `target`, percent-decoded (`+` as space); the last of a repeated name wins.
    static func parameters(of target: String) -> [String: String] {
        var result: [String: String] = [:]
        let query = target.split(separator: "?", maxSplits: 1).dropFirst().first ?? ""
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let decode = { (text: Substring) in
                let plain = text.replacingOccurrences(of: "+", with: " ")
                return plain.removingPercentEncoding ?? plain
            }
            result[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return result
    }

    /// Text for HTML (tenant names and check errors come from operators and backends).
    static func escape(_ text: String) -> String {
        HTMLEscaping.escaped(text)
    }

    private static func format(_ value: Double) -> String {
        value >= 100 ? String(Int(value.rounded())) : String(format: "%.1f", value)
    }
}

/// Samples the ``TrafficReport`` every interval on the metrics listener's loop, keeping the last two, so the
/// status page shows rates over the last interval without waiting.
final class TrafficSampler: Sendable {
    /// Between samples.
    static let interval = TimeAmount.seconds(2)

    private let reports: NIOLockedValueBox<(previous: TrafficReport, current: TrafficReport)>
    private let make: @Sendable () -> TrafficReport

    init(_ make: @escaping @Sendable () -> TrafficReport) {
        self.make = make
        let first = make()
        reports = NIOLockedValueBox((first, first))
    }

    /// Takes a new sample.
    func sample() {
        let next = make()
        reports.withLockedValue { $0 = ($0.current, next) }
    }

    /// The view over the last interval.
    func view() -> TrafficView {
        let (previous, current) = reports.withLockedValue { $0 }
        return TrafficView(from: previous, to: current)
    }
}
