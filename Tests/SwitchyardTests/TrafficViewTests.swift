import Foundation
import NIOCore
import Testing

@testable import Switchyard

@Suite("switchyard top's view and the status page")
struct TrafficViewTests {
    static let bounds = TenantMeters.latencyBounds.map { Double($0) / 1e6 }

    static func tenant(
        _ name: String,
        requests: [Int],
        latency: [Int] = [],
        connections: Int = 0
    ) -> TrafficReport.Tenant {
        TrafficReport.Tenant(
            name: name,
            requests: requests,
            receivedBytes: 0,
            sentBytes: 0,
            connections: connections,
            tunnels: 0,
            backends: 2,
            availableBackends: 1,
            latency: latency.isEmpty ? Array(repeating: 0, count: bounds.count + 1) : latency
        )
    }

    static func report(at: Double, _ tenants: [TrafficReport.Tenant]) -> TrafficReport {
        var totals = [0, 0, 0, 0, 0]
        for tenant in tenants {
            for index in 0..<5 { totals[index] += tenant.requests[index] }
        }
        return TrafficReport(
            at: at,
            connections: 4,
            requests: totals,
            latencyBoundsMilliseconds: bounds,
            tenants: tenants
        )
    }

    @Test("percentiles interpolate inside their bucket, as histogram_quantile does; the open bucket reports its floor")
    func percentiles() {
        // 100 requests between 1 and 5 ms: the median is halfway.
        var counts = Array(repeating: 0, count: Self.bounds.count + 1)
        counts[1] = 100
        #expect(TrafficView.percentile(0.5, of: counts, bounds: Self.bounds) == 3)
        #expect(TrafficView.percentile(0.99, of: counts, bounds: Self.bounds) == 1 + 4 * 0.99)
        counts[counts.count - 1] = 100
        #expect(TrafficView.percentile(0.99, of: counts, bounds: Self.bounds) == 60_000)
        #expect(TrafficView.percentile(0.5, of: Array(repeating: 0, count: 13), bounds: Self.bounds) == nil)
    }

    @Test("rates are the change over the interval; a counter that went back counts from zero; busiest first")
    func rates() {
        let before = Self.report(
            at: 10,
            [
                Self.tenant("a", requests: [0, 100, 0, 0, 0]), Self.tenant("b", requests: [0, 50, 0, 10, 5]),
                Self.tenant("c", requests: [0, 900, 0, 0, 0]),
            ]
        )
        var latency = Array(repeating: 0, count: Self.bounds.count + 1)
        latency[2] = 40
        let after = Self.report(
            at: 12,
            [
                Self.tenant("a", requests: [0, 120, 0, 0, 0]),
                Self.tenant("b", requests: [0, 130, 0, 20, 25], latency: latency),
                Self.tenant("c", requests: [0, 6, 0, 0, 0]), Self.tenant("new", requests: [0, 2, 0, 0, 0]),
            ]
        )
        let view = TrafficView(from: before, to: after)
        #expect(view.rows.map(\.tenant) == ["b", "a", "c", "new"])
        let b = view.rows[0]
        #expect(b.requestsPerSecond == 55)
        #expect(b.clientErrorsPerSecond == 5)
        #expect(b.serverErrorsPerSecond == 10)
        #expect(b.p50 == 7.5)
        #expect(view.rows[1].p50 == nil)
        #expect(view.rows[2].requestsPerSecond == 3)  // removed and added again: 6 requests since
        #expect(view.rows[3].requestsPerSecond == 1)
        let byErrors = TrafficView(from: before, to: after, sort: .errors)
        #expect(byErrors.rows.first?.tenant == "b")
        #expect(TrafficView(from: before, to: after, sort: .name).rows.map(\.tenant) == ["a", "b", "c", "new"])
        #expect(TrafficView.Sort.name.next == .requests)
    }

    @Test("the screen has a summary, a header and as many rows as fit, each cut to the width")
    func screen() {
        let report = Self.report(at: 1, (0..<30).map { Self.tenant("t\($0)", requests: [0, $0, 0, 0, 0]) })
        let lines = TrafficView(from: Self.report(at: 0, []), to: report).lines(width: 60, height: 10)
        #expect(lines.count == 10)
        #expect(lines[0].hasPrefix("switchyard top  connections 4"))
        #expect(lines[1].hasPrefix("TENANT"))
        #expect(lines[2].hasPrefix("t29"))
        #expect(lines.allSatisfy { $0.count <= 60 })
    }

    @Test("a tenant's latency lands in the bucket of its duration")
    func latencyBuckets() {
        let meters = TenantMeters()
        meters.countDuration(.microseconds(500), loop: 0)
        meters.countDuration(.milliseconds(1), loop: 0)
        meters.countDuration(.milliseconds(3), loop: 1)
        meters.countDuration(.seconds(61), loop: 1)
        let counts = meters.latencyCounts
        #expect(counts.count == TenantMeters.latencyBounds.count + 1)
        #expect(counts[0] == 2 && counts[1] == 1 && counts.last == 1)
    }

    // MARK: Status page

    @Test("the status page escapes names, shows the busiest 50 first, searches, and lists each backend's state")
    func statusPage() throws {
        let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        let tenants = (0..<60).map { index in
            Tenant(name: index == 57 ? "<b>shop</b>" : "t\(index)", domains: ["t\(index).test"], backends: [backend])
        }
        let table = try RouteTable(tenants: tenants)
        let report = Self.report(at: 1, tenants.enumerated().map { Self.tenant($1.name, requests: [0, $0, 0, 0, 0]) })
        let view = TrafficView(from: Self.report(at: 0, []), to: report)
        let page = StatusPage.render(target: "/", view: view, routes: table, build: "1.0")
        #expect(page.contains(#"<meta http-equiv="refresh" content="5">"#))
        #expect(page.contains("50 of 60 tenants"))
        #expect(page.contains(#"<td>t59</td>"#))
        #expect(!page.contains(#"<td>t0</td>"#))
        #expect(!page.contains("<b>shop</b>"))
        #expect(page.contains("&lt;b&gt;shop&lt;/b&gt;"))
        #expect(page.contains(#"<span class="up">up</span>"#))
        #expect(!page.contains("<script"))
        let search = StatusPage.render(target: "/?q=T5", view: view, routes: table, build: "1.0")
        #expect(search.contains("10 of 10 tenants matching"))
        #expect(search.contains(#"value="T5""#))
        let all = StatusPage.render(target: "/?all=1", view: view, routes: table, build: "1.0")
        #expect(all.contains("60 of 60 tenants"))
        #expect(
            StatusPage.render(target: "/?q=%22%3E", view: view, routes: table, build: "1.0").contains(
                #"value="&quot;&gt;""#
            )
        )
    }

    @Test("basic authentication takes a user of the file with its token as password, and nothing else")
    func basicAuthentication() throws {
        let token = String(repeating: "a1", count: 16)
        let users = try AdminTokens.parse("grafana:\(token)\n", file: "users")
        func field(_ text: String) -> [String] { ["Basic " + Data(text.utf8).base64EncodedString()] }
        #expect(users.name(authorizingBasic: field("grafana:\(token)")) == "grafana")
        #expect(users.name(authorizingBasic: field("other:\(token)")) == nil)
        #expect(users.name(authorizingBasic: field("grafana:\(token)x")) == nil)
        #expect(users.name(authorizingBasic: ["Bearer \(token)"]) == nil)
        #expect(users.name(authorizingBasic: []) == nil)
        #expect(users.name(authorizingBasic: ["Basic !!!"]) == nil)
    }
}
