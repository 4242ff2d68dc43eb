import Foundation
import Logging
import NIOCore
import SwitchyardStore
import SwitchyardTLS
import Testing

@testable import Switchyard
@testable import SwitchyardControl

/// The control plane on a real SQLite store in a temporary directory, called as the admin API calls it: no
/// sockets, no sleeps.
@Suite("Control plane")
struct ControlPlaneTests {
    static let logger = Logger(label: "test")
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// A file configuration with tenant `filet` on file.test (and HTTPS with the development certificate).
    static func file(tls: Bool = false) throws -> Configuration {
        var yaml = """
            listen:
              http: ["127.0.0.1:8080"]
            tenants:
              - name: filet
                domains: ["file.test", "*.wild.test"]
                backends: ["127.0.0.1:9001"]
            """
        if tls {
            yaml += "\ntls: { certificate: \(root)/Certs/localhost.pem, key: \(root)/Certs/localhost.key }\n"
        }
        return try ConfigurationLoader.parse(yaml: yaml, file: "test.yaml")
    }

    static func withStore<T>(_ body: (String) throws -> T) throws -> T {
        let directory = NSTemporaryDirectory() + "switchyard-control-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        return try body(directory + "/state.sqlite")
    }

    static func plane(_ path: String, tls: Bool = false) throws -> ControlPlane {
        try ControlPlane(file: file(tls: tls), configurationPath: "test.yaml", statePath: path, logger: logger)
    }

    static func request(
        _ method: String,
        _ target: String,
        _ body: String = "",
        ifMatch: [String] = []
    ) -> AdminAPI.Request {
        AdminAPI.Request(method: method, target: target, ifMatch: ifMatch, body: ByteBuffer(string: body))
    }

    /// Answers `request` as the running balancer does: through ``AdminAPI`` with the plane as its resources.
    static func call(_ plane: ControlPlane, _ request: AdminAPI.Request) -> AdminAPI.Response {
        let api = AdminAPI(routes: plane.routes, logger: logger, version: plane.version, resources: plane) { 0 }
        var response = api.respond(to: request, access: .local(.user(uid: 1000)))
        // An answer completed later (?wait=fleet), waited for here as the admin loop would, without a loop.
        while let continuation = response.continuation {
            if let final = continuation.next() {
                response = final
            } else {
                usleep(UInt32(continuation.interval.nanoseconds / 1000))
            }
        }
        return response
    }

    static let shop = #"{"name": "shop", "domains": ["shop.test"], "backends": ["127.0.0.1:9002"]}"#

    @Test("an added tenant is routed at once, stored, versioned and audited; it is there after a restart")
    func addAndRestart() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path)
            #expect(plane.version.current == 0)
            let added = Self.call(plane, Self.request("POST", "/v1/tenants", Self.shop))
            #expect(added.status == 201, "\(String(decoding: added.body, as: UTF8.self))")
            #expect(added.version == 1)
            #expect(plane.routes.current.tenant(forNormalizedHost: "shop.test")?.name == "shop")
            #expect(plane.version.current == 1)
            let records = try SQLiteStateStore(path: path).changes(since: 0)
            #expect(records.map(\.action) == [.tenantAdd])
            #expect(records.first?.actor == "uid 1000")
            let listed = Self.call(plane, Self.request("GET", "/v1/changes?since=0"))
            let changes = try JSONSerialization.jsonObject(with: listed.body) as? [String: Any]
            let first = (changes?["changes"] as? [[String: Any]])?.first
            #expect(first?["version"] as? Int == 1 && first?["previous_version"] as? Int == 0)
            #expect(first?["action"] as? String == "tenant.add" && first?["subject"] as? String == "shop")
            #expect(Self.call(plane, Self.request("GET", "/v1/changes?since=x")).status == 400)

            let status = try JSONDecoder().decode(
                StatusReport.self,
                from: Self.call(plane, Self.request("GET", "/v1/status")).body
            )
            #expect(status.store == StatusReport.Store(path: path, problem: nil))

            let restarted = try Self.plane(path)
            #expect(restarted.version.current == 1)
            #expect(restarted.routes.current.tenant(forNormalizedHost: "shop.test")?.name == "shop")
            #expect(restarted.routes.current.tenant(forNormalizedHost: "file.test")?.name == "filet")
        }
    }

    @Test("refused changes leave the store, the version and the routes as they were")
    func refusals() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path)
            _ = Self.call(plane, Self.request("POST", "/v1/tenants", Self.shop))
            let cases: [(AdminAPI.Request, Int, String)] = [
                (Self.request("POST", "/v1/tenants", Self.shop), 409, "tenant_exists"),
                (
                    Self.request(
                        "POST",
                        "/v1/tenants",
                        #"{"name":"x","domains":["file.test"],"backends":["127.0.0.1:1"]}"#
                    ),
                    409, "domain_taken"
                ),
                (
                    Self.request(
                        "POST",
                        "/v1/tenants",
                        #"{"name":"x","domains":["a.wild.test"],"backends":["1.2.3.4:1"], "certificate": "c.pem", "key": "k.pem"}"#
                    ),
                    400, "invalid_tenant"
                ),
                (
                    Self.request("POST", "/v1/tenants", #"{"name":"x","domains":[],"backends":["127.0.0.1:1"]}"#), 400,
                    "invalid_tenant"
                ),
                (Self.request("POST", "/v1/tenants", "not: [valid"), 400, "invalid_tenant"),
                (Self.request("DELETE", "/v1/tenants/filet"), 409, "file_tenant"),
                (Self.request("POST", "/v1/tenants/shop/domains", #"{"domain": "file.test"}"#), 409, "domain_taken"),
                (Self.request("POST", "/v1/tenants/shop/domains", #"{"name": "x"}"#), 400, "invalid_request"),
                (Self.request("DELETE", "/v1/tenants/shop/backends/127.0.0.1:9002"), 409, "conflict"),
                (Self.request("DELETE", "/v1/tenants/shop/backends/127.0.0.1:1"), 404, "not_found"),
                (
                    Self.request(
                        "PUT",
                        "/v1/tenants/shop",
                        #"{"name": "other", "domains": ["o.test"], "backends": ["127.0.0.1:1"]}"#
                    ), 400, "invalid_tenant"
                ),
                (Self.request("DELETE", "/v1/tenants/shop", ifMatch: ["\"0\""]), 412, "version_mismatch"),
                (Self.request("PATCH", "/v1/tenants/shop"), 405, "method_not_allowed"),
            ]
            for (request, status, code) in cases {
                let response = Self.call(plane, request)
                #expect(
                    response.status == status,
                    "\(request.method) \(request.target): \(String(decoding: response.body, as: UTF8.self))"
                )
                #expect(response.errorCode == code, "\(request.method) \(request.target)")
                #expect(response.version == 1)
            }
            #expect(try SQLiteStateStore(path: path).revision() == 1)
            #expect(plane.routes.current.tenants.map(\.name) == ["filet", "shop"])
        }
    }

    @Test("domain and backend edits rewrite the stored document; removing a backend ends its drain")
    func edits() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path)
            _ = Self.call(plane, Self.request("POST", "/v1/tenants", Self.shop))
            #expect(
                Self.call(plane, Self.request("POST", "/v1/tenants/shop/domains", #"{"domain":"WWW.Shop.Test"}"#))
                    .status == 200
            )
            #expect(plane.routes.current.tenant(forNormalizedHost: "www.shop.test")?.name == "shop")
            #expect(
                Self.call(
                    plane,
                    Self.request("POST", "/v1/tenants/shop/backends", #"{"backend":"127.0.0.1:9003","weight":4}"#)
                ).status == 200
            )
            #expect(
                Self.call(
                    plane,
                    Self.request("PUT", "/v1/tenants/shop/backends/127.0.0.1:9003/weight", #"{"weight":9}"#)
                ).status == 200
            )
            let tenant = try #require(plane.routes.current.tenant(forNormalizedHost: "shop.test"))
            #expect(tenant.weights == [1, 9])
            #expect(
                Self.call(plane, Self.request("POST", "/v1/tenants/shop/backends/127.0.0.1:9003/drain")).status == 200
            )
            #expect(tenant.backends[1].status.isDrainedByOperator)
            #expect(
                try SQLiteStateStore(path: path).snapshot().drains == [
                    StoredDrain(tenant: "shop", backend: "127.0.0.1:9003")
                ]
            )
            #expect(Self.call(plane, Self.request("DELETE", "/v1/tenants/shop/backends/127.0.0.1:9003")).status == 200)
            #expect(try SQLiteStateStore(path: path).snapshot().drains.isEmpty)
            let document = try SQLiteStateStore(path: path).snapshot().tenants["shop"] ?? ""
            #expect(
                document == #"{"backends":["127.0.0.1:9002"],"domains":["shop.test","WWW.Shop.Test"],"name":"shop"}"#
            )
            #expect(Self.call(plane, Self.request("DELETE", "/v1/tenants/shop/domains/www.shop.test")).status == 200)
            #expect(plane.routes.current.tenant(forNormalizedHost: "www.shop.test") == nil)
        }
    }

    @Test("a stored drain of a file tenant's backend is applied again after a restart")
    func drainsSurviveRestart() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path)
            #expect(
                Self.call(plane, Self.request("POST", "/v1/tenants/filet/backends/127.0.0.1:9001/drain")).status == 200
            )
            let restarted = try Self.plane(path)
            #expect(restarted.routes.current.tenants.first?.backends.first?.status.isDrainedByOperator == true)
            // The backend leaves the file: its drain ends with it, and it comes back undrained.
            var moved = try Self.file()
            moved.tenants[0].backends = [try SocketAddress(ipAddress: "127.0.0.1", port: 9005)]
            #expect((try? restarted.publish(file: moved, by: .signal).get()) != nil)
            #expect(try SQLiteStateStore(path: path).snapshot().drains.isEmpty)
            #expect((try? restarted.publish(file: Self.file(), by: .signal).get()) != nil)
            #expect(restarted.routes.current.tenants.first?.backends.first?.status.isDrainedByOperator == false)
        }
    }

    @Test("apply answers the difference; a dry run changes nothing; removed tenants lose their certificates")
    func apply() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path)
            _ = Self.call(plane, Self.request("POST", "/v1/tenants", Self.shop))
            let body = """
                tenants:
                  - { name: one, domains: [one.test], backends: ["127.0.0.1:1"] }
                  - { name: shop, domains: [shop.test], backends: ["127.0.0.1:9009"] }
                """
            let dry = Self.call(plane, Self.request("POST", "/v1/apply?dry_run=true", body))
            let dryAnswer = try JSONSerialization.jsonObject(with: dry.body) as? [String: Any]
            #expect(dryAnswer?["added"] as? [String] == ["one"])
            #expect(dryAnswer?["changed"] as? [String] == ["shop"])
            #expect(plane.version.current == 1)
            #expect(plane.routes.current.tenant(forNormalizedHost: "one.test") == nil)

            let applied = Self.call(plane, Self.request("POST", "/v1/apply", body))
            #expect(applied.status == 200)
            #expect(plane.version.current == 2)
            #expect(plane.routes.current.tenant(forNormalizedHost: "one.test")?.name == "one")
            let emptied = Self.call(plane, Self.request("POST", "/v1/apply", "tenants: []"))
            let answer = try JSONSerialization.jsonObject(with: emptied.body) as? [String: Any]
            #expect(answer?["removed"] as? [String] == ["one", "shop"])
            #expect(plane.routes.current.tenants.map(\.name) == ["filet"])
            // A body that lost its list is refused, never read as "no tenants".
            _ = Self.call(plane, Self.request("POST", "/v1/tenants", Self.shop))
            for lost in ["tenants:", "{}", "tenants: {name: x}"] {
                let refused = Self.call(plane, Self.request("POST", "/v1/apply", lost))
                #expect(refused.status == 400, "\(lost)")
            }
            #expect(plane.routes.current.tenant(forNormalizedHost: "shop.test")?.name == "shop")
            let duplicate = Self.call(
                plane,
                Self.request(
                    "POST",
                    "/v1/apply",
                    "[{name: a, domains: [a.test], backends: ['127.0.0.1:1']}, {name: a, domains: [b.test], backends: ['127.0.0.1:1']}]"
                )
            )
            #expect(duplicate.status == 400)
        }
    }

    @Test("a reload is a change of its own; a file tenant that takes a managed tenant's domain shadows it")
    func reloadShadows() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path)
            _ = Self.call(
                plane,
                Self.request(
                    "POST",
                    "/v1/tenants",
                    #"{"name":"shop","domains":["shop.test","www.shop.test"],"backends":["127.0.0.1:9002"]}"#
                )
            )
            var file = try Self.file()
            var taker = file.tenants[0]
            taker.name = "taker"
            taker.domains = ["www.shop.test"]
            file.tenants.append(taker)
            let result = plane.publish(file: file, by: .signal)
            #expect((try? result.get())?.version == 2)
            #expect(plane.routes.current.tenant(forNormalizedHost: "www.shop.test")?.name == "taker")
            #expect(plane.routes.current.tenant(forNormalizedHost: "shop.test")?.name == "shop")
            let shown = Self.call(plane, Self.request("GET", "/v1/tenants/shop"))
            #expect(
                String(decoding: shown.body, as: UTF8.self).contains("\"shadowed_domains\" : [\n    \"www.shop.test\"")
            )
            #expect(try SQLiteStateStore(path: path).changes(since: 1).map(\.action) == [.configurationReload])
        }
    }

    @Test("an uploaded certificate is validated, served by SNI for its tenant's names only, built once, never shown")
    func certificates() throws {
        try Self.withStore { path in
            let plane = try Self.plane(path, tls: true)
            _ = Self.call(
                plane,
                Self.request(
                    "POST",
                    "/v1/tenants",
                    #"{"name":"dev","domains":["app.localhost","other.test"],"backends":["127.0.0.1:9002"]}"#
                )
            )
            let chain = try String(contentsOfFile: Self.root + "/Certs/localhost.pem", encoding: .utf8)
            let key = try String(contentsOfFile: Self.root + "/Certs/localhost.key", encoding: .utf8)
            let body = String(
                decoding: try JSONSerialization.data(withJSONObject: ["certificate": chain, "key": key]),
                as: UTF8.self
            )
            let uploaded = Self.call(plane, Self.request("PUT", "/v1/tenants/dev/certificate", body))
            let text = String(decoding: uploaded.body, as: UTF8.self)
            #expect(uploaded.status == 200, "\(text)")
            #expect(text.contains("does not cover other.test"))
            #expect(!text.contains("PRIVATE KEY"))
            let listed = String(decoding: Self.call(plane, Self.request("GET", "/v1/certificates")).body, as: UTF8.self)
            #expect(listed.contains("\"tenant\" : \"dev\"") && !listed.contains("PRIVATE KEY"))

            let store = try #require(plane.certificates?.current)
            #expect(store.cache.statistics.builds == 0)
            let context = store.context(forServerName: "APP.localhost.")
            #expect(context !== store.defaultContext)
            #expect(store.context(forServerName: "app.localhost") === context)
            #expect(store.cache.statistics.builds == 1)
            // Names the certificate covers but the tenant does not own, and made-up names, get the default.
            #expect(store.context(forServerName: "demo.localhost") === store.defaultContext)
            #expect(store.context(forServerName: "random-\(UUID()).localhost") === store.defaultContext)
            #expect(store.cache.statistics == (1, 1))

            let mismatched = String(
                decoding: try JSONSerialization.data(withJSONObject: [
                    "certificate": chain, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ]),
                as: UTF8.self
            )
            #expect(
                Self.call(plane, Self.request("PUT", "/v1/tenants/dev/certificate", mismatched)).errorCode
                    == "invalid_certificate"
            )
            #expect(Self.call(plane, Self.request("DELETE", "/v1/tenants/dev/certificate")).status == 200)
            #expect(plane.certificates?.current.context(forServerName: "app.localhost") === store.defaultContext)
        }
    }

    @Test("a store that cannot be opened: the file's tenants are served, changes are 503")
    func unusableStore() throws {
        try Self.withStore { path in
            // A directory where the database file should be.
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            let plane = try Self.plane(path)
            #expect(plane.routes.current.tenant(forNormalizedHost: "file.test")?.name == "filet")
            let refused = Self.call(plane, Self.request("POST", "/v1/tenants", Self.shop))
            #expect(refused.status == 503)
            // Status says so, for the operator.
            let status = try JSONDecoder().decode(
                StatusReport.self,
                from: Self.call(plane, Self.request("GET", "/v1/status")).body
            )
            #expect(status.store?.path == path)
            #expect(status.store?.problem != nil)
            #expect(status.text.contains("state store \(path) CANNOT BE USED, changes are refused: "))
            #expect(refused.errorCode == "unavailable")
            // The file can still be reloaded.
            #expect((try? plane.publish(file: Self.file(), by: .signal).get()) != nil)
        }
    }
}
