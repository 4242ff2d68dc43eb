import Foundation
import Logging
import NIOCore
import Testing

@testable import Switchyard

/// The admin API's endpoints, called without a socket.
@Suite("Admin API")
struct AdminAPITests {
    private let first: Backend
    private let second: Backend
    private let api: AdminAPI

    init() throws {
        first = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        second = Backend(address: try SocketAddress(ipAddress: "::1", port: 9002))
        let shop = Tenant(name: "shop", domains: ["shop.test"], backends: [first, second])
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        api = AdminAPI(routes: RouteSource(try RouteTable(tenants: [shop])), logger: logger) { 7 }
    }

    private func json(_ response: AdminAPI.Response) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: response.body) as? [String: Any])
    }

    @Test("GET /status is the status report")
    func status() throws {
        let response = api.respond(method: "GET", path: "/status")
        #expect(response.status == 200)
        let report = try JSONDecoder().decode(StatusReport.self, from: response.body)
        #expect(report.connections == 7)
        #expect(report.tenants.map(\.name) == ["shop"])
        #expect(report.tenants.first?.backends.map(\.address) == ["127.0.0.1:9001", "[::1]:9002"])
        #expect(api.respond(method: "POST", path: "/status").status == 405)
    }

    @Test("drain and undrain a backend; both are idempotent and answer with the backend's status")
    func drain() throws {
        let drained = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(drained.status == 200)
        #expect(try json(drained)["state"] as? String == "draining")
        #expect(try json(drained)["health"] as? String == "up")
        #expect(first.status.isDraining)
        #expect(!second.status.isDraining)
        #expect(!first.status.isAvailable(now: .now()))
        #expect(api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/drain").status == 200)
        #expect(first.status.isDraining)

        let shown = api.respond(method: "GET", path: "/tenants/shop/backends/127.0.0.1:9001")
        #expect(try json(shown)["state"] as? String == "draining")

        let undrained = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/undrain")
        #expect(undrained.status == 200)
        #expect(try json(undrained)["state"] as? String == "up")
        #expect(!first.status.isDraining)
        #expect(api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/undrain").status == 200)
    }

    @Test("a backend marked drain in the file cannot be undrained through the API; status says who drained it")
    func drainedInConfiguration() throws {
        first.status.isDrainedInConfiguration = true
        defer { first.status.isDrainedInConfiguration = false }
        let shown = api.respond(method: "GET", path: "/tenants/shop/backends/127.0.0.1:9001")
        #expect(try json(shown)["state"] as? String == "draining")
        #expect(try json(shown)["drainedBy"] as? [String] == ["configuration"])
        let drained = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(try json(drained)["drainedBy"] as? [String] == ["admin", "configuration"])
        // The admin drain ends; the file's mark stays, and the answer says so.
        let refused = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/undrain")
        #expect(refused.status == 409)
        #expect(
            try json(refused)["error"] as? String
                == "the admin drain ended, but backend 127.0.0.1:9001 of shop is marked drain in the configuration "
                + "file; remove the mark there and reload (SIGHUP)"
        )
        #expect(!first.status.isDrainedByOperator)
        #expect(first.status.isDraining)
        let again = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/undrain")
        #expect(
            try json(again)["error"] as? String
                == "backend 127.0.0.1:9001 of shop is marked drain in the configuration file; remove the mark there "
                + "and reload (SIGHUP)"
        )
    }

    @Test("a backend is found by the address status shows, percent-encoded or not, or an equal IP literal")
    func backendNames() throws {
        for path in ["[::1]:9002", "%5B%3A%3A1%5D%3A9002", "[0:0:0:0:0:0:0:1]:9002"] {
            let response = api.respond(method: "GET", path: "/tenants/shop/backends/\(path)")
            #expect(response.status == 200, "\(path)")
            #expect(try json(response)["address"] as? String == "[::1]:9002")
        }
    }

    @Test("unknown tenants, backends, endpoints and methods are refused with a reason")
    func errors() throws {
        let tenant = api.respond(method: "POST", path: "/tenants/nope/backends/127.0.0.1:9001/drain")
        #expect(tenant.status == 404)
        #expect(try json(tenant)["error"] as? String == "no tenant 'nope'; `switchyard status` lists the tenants")

        let backend = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:1/drain")
        #expect(backend.status == 404)
        #expect(
            try json(backend)["error"] as? String
                == "tenant 'shop' has no backend 127.0.0.1:1; its backends: 127.0.0.1:9001, [::1]:9002"
        )

        let getDrain = api.respond(method: "GET", path: "/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(getDrain.status == 405)
        #expect(getDrain.allow == "POST")
        let delete = api.respond(method: "DELETE", path: "/tenants/shop/backends/127.0.0.1:9001")
        #expect(delete.status == 405)
        #expect(delete.allow == "GET")
        #expect(api.respond(method: "PUT", path: "/status").allow == "GET")
        let explode = api.respond(method: "POST", path: "/tenants/shop/backends/127.0.0.1:9001/explode")
        #expect(explode.status == 404)
        #expect(
            try json(explode)["error"] as? String
                == "no such endpoint: POST /tenants/shop/backends/127.0.0.1:9001/explode"
        )
        #expect(api.respond(method: "GET", path: "/nothing").status == 404)
        #expect(!first.status.isDraining)
    }

    @Test("the status report shows each backend's latest check: when, and why it failed")
    func lastCheck() throws {
        let checked = Date(timeIntervalSince1970: 1_800_000_000)
        first.status.recordCheck(.success, at: checked)
        second.status.recordCheck(.failure("connection refused"), at: checked)
        let shop = Tenant(name: "shop", domains: ["shop.test"], backends: [first, second])
        let report = StatusReport(
            routes: try RouteTable(tenants: [shop]),
            connections: 0,
            date: checked.addingTimeInterval(2.5)
        )
        let backends = try #require(report.tenants.first?.backends)
        #expect(
            backends[0].lastCheck
                == StatusReport.Check(at: "2027-01-15T08:00:00Z", secondsAgo: 2.5, ok: true, error: nil)
        )
        #expect(backends[1].lastCheck?.error == "connection refused")
        #expect(report.text.contains("127.0.0.1:9001  up  connections 0  last check ok 2.5s ago"))
        #expect(report.text.contains("[::1]:9002  up  connections 0  last check failed 2.5s ago: connection refused"))
        // A drain does not hide the health.
        second.status.setActivelyUp(false)
        second.status.isDrainedByOperator = true
        let drained = StatusReport(routes: try RouteTable(tenants: [shop]), connections: 0, date: checked)
        #expect(drained.tenants.first?.backends[1].state == "draining")
        #expect(drained.tenants.first?.backends[1].health == "down")
        #expect(drained.text.contains("[::1]:9002  draining (admin, down)  connections 0"))
    }
}
