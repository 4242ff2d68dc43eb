import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import Switchyard

@Suite("Metrics: counting and the Prometheus page")
struct MetricsTests {
    static func tenant(_ name: String, port: Int = 9001, meters: TenantMeters = TenantMeters()) throws -> Tenant {
        Tenant(
            name: name,
            domains: ["\(name).test"],
            backends: [Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: port))],
            meters: meters
        )
    }

    static func page(
        _ routes: RouteSource,
        _ metrics: SwitchyardMetrics,
        _ target: String = "/metrics"
    ) throws -> String {
        let page = MetricsPage(metrics: metrics, routes: routes, version: ConfigurationVersion(initial: 7)) { 3 }
        return String(decoding: page.render(try MetricsPage.Query(target: target)), as: UTF8.self)
    }

    @Test("switchyard_state_store_up says whether the state store answers, when the page is told")
    func storeUp() throws {
        let routes = RouteSource(try RouteTable(configuration: Configuration()))
        let metrics = SwitchyardMetrics(loops: 1, build: "1")
        let answering = NIOLockedValueBox(true)
        let page = MetricsPage(
            metrics: metrics,
            routes: routes,
            version: ConfigurationVersion(initial: 1),
            store: { MetricsPage.StoreReading(isUp: answering.withLockedValue { $0 }, revision: 7) },
            connections: { 0 }
        )
        func text() throws -> String {
            String(decoding: page.render(try MetricsPage.Query(target: "/metrics?scope=global")), as: UTF8.self)
        }
        #expect(Self.lines(try text(), "switchyard_state_store_up ") == ["switchyard_state_store_up 1.0"])
        #expect(Self.lines(try text(), "switchyard_state_store_version ") == ["switchyard_state_store_version 7.0"])
        answering.withLockedValue { $0 = false }
        #expect(Self.lines(try text(), "switchyard_state_store_up ") == ["switchyard_state_store_up 0.0"])
        let without = MetricsPage(metrics: metrics, routes: routes, version: nil) { 0 }
        let plain = String(decoding: without.render(try MetricsPage.Query(target: "/metrics")), as: UTF8.self)
        #expect(!plain.contains("switchyard_state_store_up"))
    }

    /// The sample lines of `page` that start with `prefix`.
    static func lines(_ page: String, _ prefix: String) -> [String] {
        page.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
    }

    // MARK: Counter slots

    @Test("each loop adds to its own slot and a total sums them; loops beyond the slots share one correctly")
    func slots() {
        let slots = CounterSlots(fields: 3, slots: 2)
        slots.add(5, to: 0, loop: 0)
        slots.add(7, to: 0, loop: 1)
        slots.add(1, to: 2, loop: 2)  // shares loop 0's slot
        #expect(slots.total(0) == 12)
        #expect(slots.total(1) == 0)
        #expect(slots.total(2) == 1)
    }

    @Test("two threads counting into their slots at once lose nothing")
    func concurrentSlots() async {
        let slots = CounterSlots(fields: 1, slots: 2)
        await withTaskGroup(of: Void.self) { group in
            for loop in 0..<4 {
                group.addTask {
                    for _ in 0..<10_000 { slots.add(1, to: 0, loop: loop) }
                }
            }
        }
        #expect(slots.total(0) == 40_000)
    }

    // MARK: Queries

    @Test("a query names scopes and a tenant; anything else is refused with what to write instead")
    func queries() throws {
        #expect(try MetricsPage.Query(target: "/metrics") == MetricsPage.Query())
        #expect(try MetricsPage.Query(target: "/metrics?scope=global").scopes == [.global])
        #expect(try MetricsPage.Query(target: "/metrics?scope=tenants,backends").scopes == [.tenants, .backends])
        let tenant = try MetricsPage.Query(target: "/metrics?tenant=my%20shop")
        #expect(tenant.tenant == "my shop")
        #expect(tenant.scopes == [.tenants, .backends])
        #expect(try MetricsPage.Query(target: "/metrics?tenant=a&scope=tenants").scopes == [.tenants])
        #expect(throws: MetricsQueryError.unknownScope("all")) { try MetricsPage.Query(target: "/metrics?scope=all") }
        #expect(throws: MetricsQueryError.unknownParameter("format")) {
            try MetricsPage.Query(target: "/metrics?format=json")
        }
    }

    // MARK: The page

    @Test("the page has every family once, its samples together, and the counts the meters hold")
    func page() throws {
        let shop = try Self.tenant("shop")
        let blog = try Self.tenant("blog", port: 9002)
        let routes = RouteSource(try RouteTable(tenants: [shop, blog]))
        let metrics = SwitchyardMetrics(loops: 2, histogramTenants: ["shop"], build: "9.9.9")
        shop.meters.countResponse(status: 200, loop: 0)
        shop.meters.countResponse(status: 204, loop: 1)
        shop.meters.countResponse(status: 503, loop: 1)
        shop.meters.add(120, to: .receivedBytes, loop: 0)
        shop.meters.add(80, to: .receivedBytes, loop: 1)
        shop.backends[0].meters.add(3, to: .requests, loop: 1)
        metrics.proxy.countRequest(status: 200, duration: .milliseconds(3), tenant: shop, loop: 0)
        metrics.proxy.countRequest(status: 404, duration: .milliseconds(1), tenant: nil, loop: 1)
        metrics.proxy.add(1, to: .unknownHostRequests, loop: 1)
        let text = try Self.page(routes, metrics)

        let types = Self.lines(text, "# TYPE ").map { $0.split(separator: " ")[2] }
        #expect(types.count == Set(types).count, "a TYPE line twice")
        // A family's lines are together: once another family starts, none of its samples follows.
        var finished: Set<String> = []
        var current = ""
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let name = String(line.prefix { $0 != "{" && $0 != " " })
            let family = types.first { name == $0 || name.hasPrefix($0 + "_") }.map(String.init) ?? name
            if family != current {
                #expect(!finished.contains(family), "\(family) is split")
                finished.insert(current)
                current = family
            }
        }
        #expect(
            Self.lines(text, "switchyard_tenant_http_requests_total{").sorted() == [
                #"switchyard_tenant_http_requests_total{tenant="shop",code="2xx"} 2"#,
                #"switchyard_tenant_http_requests_total{tenant="shop",code="5xx"} 1"#,
            ]
        )
        #expect(
            Self.lines(text, "switchyard_tenant_received_bytes_total{tenant=\"shop\"}") == [
                #"switchyard_tenant_received_bytes_total{tenant="shop"} 200"#
            ]
        )
        #expect(
            Self.lines(text, "switchyard_backend_requests_total{tenant=\"shop\"") == [
                #"switchyard_backend_requests_total{tenant="shop",backend="127.0.0.1:9001"} 3"#
            ]
        )
        #expect(
            Self.lines(text, "switchyard_http_requests_total{") == [
                #"switchyard_http_requests_total{code="1xx"} 0"#, #"switchyard_http_requests_total{code="2xx"} 1"#,
                #"switchyard_http_requests_total{code="3xx"} 0"#, #"switchyard_http_requests_total{code="4xx"} 1"#,
                #"switchyard_http_requests_total{code="5xx"} 0"#,
            ]
        )
        #expect(
            Self.lines(text, "switchyard_http_unknown_host_requests_total ") == [
                "switchyard_http_unknown_host_requests_total 1"
            ]
        )
        #expect(Self.lines(text, "switchyard_build_info") == [#"switchyard_build_info{version="9.9.9"} 1.0"#])
        #expect(Self.lines(text, "switchyard_config_version ") == ["switchyard_config_version 7.0"])
        #expect(Self.lines(text, "switchyard_client_connections ") == ["switchyard_client_connections 3.0"])
        #expect(Self.lines(text, "switchyard_tenants ") == ["switchyard_tenants 2.0"])
        // One histogram per loop; the 3 ms request is in the 5 ms bucket of loop 0.
        #expect(
            Self.lines(text, "switchyard_http_request_duration_seconds_count").sorted() == [
                #"switchyard_http_request_duration_seconds_count{worker="0"} 1"#,
                #"switchyard_http_request_duration_seconds_count{worker="1"} 1"#,
            ]
        )
        #expect(text.contains(#"switchyard_http_request_duration_seconds_bucket{worker="0",le="0.005"} 1"#))
        #expect(text.contains(#"switchyard_http_request_duration_seconds_bucket{worker="0",le="0.001"} 0"#))
        #expect(
            Self.lines(text, "switchyard_tenant_http_request_duration_seconds_count").sorted() == [
                #"switchyard_tenant_http_request_duration_seconds_count{tenant="shop",worker="0"} 1"#,
                #"switchyard_tenant_http_request_duration_seconds_count{tenant="shop",worker="1"} 0"#,
            ]
        )
        // A tenant that answered nothing has no request series, but its other series.
        #expect(!text.contains(#"switchyard_tenant_http_requests_total{tenant="blog""#))
        #expect(text.contains(#"switchyard_tenant_sent_bytes_total{tenant="blog"} 0"#))
        #expect(text.contains(#"switchyard_backend_state{tenant="blog",backend="127.0.0.1:9002",state="up"} 1.0"#))
    }

    @Test("a tenant query has that tenant's series only; a scope query its families only")
    func narrowedPages() throws {
        let shop = try Self.tenant("shop")
        let blog = try Self.tenant("blog", port: 9002)
        let routes = RouteSource(try RouteTable(tenants: [shop, blog]))
        let metrics = SwitchyardMetrics(loops: 1, histogramTenants: ["shop", "blog"])
        let narrowed = try Self.page(routes, metrics, "/metrics?tenant=blog")
        #expect(narrowed.contains(#"tenant="blog""#))
        #expect(!narrowed.contains(#"tenant="shop""#))
        #expect(!narrowed.contains("switchyard_http_requests_total"))
        #expect(
            narrowed.contains(#"switchyard_tenant_http_request_duration_seconds_count{tenant="blog",worker="0"} 0"#)
        )
        let backends = try Self.page(routes, metrics, "/metrics?scope=backends")
        #expect(backends.contains("switchyard_backend_up"))
        #expect(!backends.contains("switchyard_tenant_"))
        #expect(!backends.contains("switchyard_build_info"))
        #expect(try Self.page(routes, metrics, "/metrics?tenant=nobody").isEmpty)
    }

    @Test("a tenant keeps its meters, and a backend its own, through a change and a reload")
    func metersOutliveChanges() throws {
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 9001)
        let shop = TenantConfiguration(name: "shop", domains: ["shop.test"], backends: [address])
        let table = try RouteTable(configuration: Configuration(tenants: [shop]))
        let before = try #require(table.tenant(named: "shop"))
        before.meters.countResponse(status: 200, loop: 0)
        before.backends[0].meters.add(1, to: .requests, loop: 0)

        var changed = shop
        changed.domains.append("www.shop.test")
        let replaced = try table.replacing(["shop"], with: [changed])
        let after = try #require(replaced.tenant(named: "shop"))
        #expect(after !== before)
        #expect(after.meters.total(.successful) == 1)
        #expect(after.backends[0].meters.total(.requests) == 1)

        let reloaded = try RouteTable(configuration: Configuration(tenants: [changed]), previous: replaced)
        #expect(try #require(reloaded.tenant(named: "shop")).meters === before.meters)
        // Removed and added again, it starts over (Prometheus sees a counter reset).
        let removed = try reloaded.replacing(["shop"], with: [])
        let again = try removed.replacing(["shop"], with: [shop])
        #expect(try #require(again.tenant(named: "shop")).meters.total(.successful) == 0)
    }

    // MARK: What the state machine reports

    @Test("an answered request is reported with its tenant, status and the bytes each way; a refusal without tenant")
    func machineReportsRequests() throws {
        let routes = RouteSource(try RouteTable(tenants: [try Self.tenant("shop")]))
        var h = ProxyStateMachineHarness(routes: routes)
        let request = "POST /x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\n"
        _ = h.client(request + "he")
        _ = h.attach()
        _ = h.client("llo")
        let response = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        _ = h.upstream(response)
        #expect(h.finished.count == 1)
        #expect(h.finished.first?.tenant == "shop")
        #expect(h.finished.first?.status == 201)
        #expect(h.finished.first?.received == request.utf8.count + 5)
        #expect(h.finished.first?.sent == response.utf8.count)

        _ = h.client("GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
        #expect(h.finished.last?.tenant == nil)
        #expect(h.finished.last?.status == 404)
        _ = h.client("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        #expect(h.finished.last?.tenant == nil)
        #expect(h.finished.last?.status == 400)
        #expect(h.finished.count == 3)
    }

    @Test("a tunnel's bytes are reported at each sweep while it is open, and the rest when it closes")
    func machineReportsTunnelTraffic() throws {
        let routes = RouteSource(try RouteTable(tenants: [try Self.tenant("shop")]))
        var h = ProxyStateMachineHarness(routes: routes)
        _ = h.client("GET /chat HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        _ = h.attach()
        _ = h.upstream("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        #expect(h.state == .tunnel)
        #expect(h.finished.last?.status == 101)
        _ = h.client("12345")
        _ = h.upstream("abc")
        #expect(h.tunnelTraffic == (0, 0))
        _ = h.advance(.seconds(1))
        #expect(h.tunnelTraffic == (5, 3))
        _ = h.client("67")
        _ = h.clientClosed()
        #expect(h.tunnelTraffic == (7, 3))
    }
}
