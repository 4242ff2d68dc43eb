import Foundation
import Logging
import NIOCore
import SwitchyardStore
import SwitchyardTestSupport
import Testing

@testable import Switchyard
@testable import SwitchyardControl

/// Two control planes on one PostgreSQL database, as two nodes of a fleet, called as the admin API calls them:
/// what one writes, the other makes live when it synchronises, and every change is decided against the store.
// Serialized: each test blocks a thread of the concurrency pool on the database for a second or two, and the pool
// has as many threads as cores.
@Suite("Control planes sharing a PostgreSQL store", .serialized)
struct FleetControlPlaneTests {
    /// Two planes on a new database of the tests' cluster, each with the file tenant of ``ControlPlaneTests``.
    static func withNodes<T>(
        changeLog: Configuration.ChangeLog = Configuration.ChangeLog(),
        _ body: (ControlPlane, ControlPlane) throws -> T
    ) throws -> T {
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        let passwordFile = NSTemporaryDirectory() + "fleet-password-\(UUID().uuidString.prefix(8))"
        try cluster.password.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        chmod(passwordFile, 0o600)
        defer { try? FileManager.default.removeItem(atPath: passwordFile) }
        func node(_ name: String) throws -> ControlPlane {
            var file = try ControlPlaneTests.file()
            file.nodeName = name
            file.changeLog = changeLog
            return try ControlPlane(
                file: file,
                configurationPath: "test.yaml",
                statePath: cluster.url(database: database),
                passwordFile: passwordFile,
                logger: ControlPlaneTests.logger
            )
        }
        return try body(try node("node-a"), try node("node-b"))
    }

    /// Asks `plane` how far the fleet is with `revision` until it says, as a `?wait=fleet` answer does.
    static func waitForFleet(_ plane: ControlPlane, _ revision: Int64, timeout: TimeInterval) -> ControlPlane.FleetWait?
    {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let progress = plane.fleetProgress(revision, deadline: deadline) { return progress }
            usleep(20_000)
        }
    }

    static func tenant(_ name: String, domain: String, backend: String = "127.0.0.1:9002") -> String {
        #"{"name": "\#(name)", "domains": ["\#(domain)"], "backends": ["\#(backend)"]}"#
    }

    @Test("a tenant added on one node is routed by the other once it synchronises; removed likewise")
    func propagates() throws {
        try Self.withNodes { (first: ControlPlane, second: ControlPlane) throws in
            let added = ControlPlaneTests.call(
                first,
                ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("shop", domain: "shop.test"))
            )
            #expect(added.status == 201, "\(String(decoding: added.body, as: UTF8.self))")
            #expect(second.routes.current.tenant(forNormalizedHost: "shop.test") == nil)
            #expect(second.storeRevision == 0 && first.storeRevision == 1)
            #expect(try second.synchronize().get() == 1)
            #expect(second.storeRevision == 1)
            #expect(second.routes.current.tenant(forNormalizedHost: "shop.test")?.name == "shop")
            #expect(second.version.current == 1 && second.appliedRevision == 1)
            // Nothing new: nothing published, the version's change count stays.
            let changes = second.version.changeCount
            #expect(try second.synchronize().get() == 1)
            #expect(second.version.changeCount == changes)

            let removed = ControlPlaneTests.call(first, ControlPlaneTests.request("DELETE", "/v1/tenants/shop"))
            #expect(removed.status == 200, "\(String(decoding: removed.body, as: UTF8.self))")
            #expect(try second.synchronize().get() == 2)
            #expect(second.routes.current.tenant(forNormalizedHost: "shop.test") == nil)
        }
    }

    @Test("a node whose next change was pruned from the log reads the store whole, and ends with exactly its state")
    func catchesUpThroughAPrunedLog() throws {
        let oneRecord = Configuration.ChangeLog(maximumAge: nil, maximumChanges: 1)
        try Self.withNodes(changeLog: oneRecord) { (first: ControlPlane, second: ControlPlane) throws in
            for (name, domain) in [("shop", "shop.test"), ("blog", "blog.test")] {
                let added = ControlPlaneTests.call(
                    first,
                    ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant(name, domain: domain))
                )
                #expect(added.status == 201, "\(String(decoding: added.body, as: UTF8.self))")
            }
            #expect(try second.synchronize().get() == 2)

            // Version 3 adds a tenant, version 4 removes another; the log is then pruned to version 4's record.
            let cafe = ControlPlaneTests.call(
                first,
                ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("cafe", domain: "cafe.test"))
            )
            #expect(cafe.status == 201)
            #expect(
                ControlPlaneTests.call(first, ControlPlaneTests.request("DELETE", "/v1/tenants/shop")).status == 200
            )
            let pruning = try #require(first.pruneChangeLog(now: Date()))
            #expect(pruning == ChangeLogPruning(deleted: 3, throughRevision: 3))

            // Read record by record, the second node would miss version 3's tenant: it reads the store whole.
            #expect(try second.synchronize().get() == 4)
            let routes = second.routes.current
            #expect(routes.tenant(forNormalizedHost: "cafe.test")?.name == "cafe")
            #expect(routes.tenant(forNormalizedHost: "blog.test")?.name == "blog")
            #expect(routes.tenant(forNormalizedHost: "shop.test") == nil)
            #expect(second.version.current == 4)
            // And goes on record by record from there.
            #expect(
                ControlPlaneTests.call(first, ControlPlaneTests.request("DELETE", "/v1/tenants/blog")).status == 200
            )
            #expect(try second.synchronize().get() == 5)
            #expect(second.routes.current.tenant(forNormalizedHost: "blog.test") == nil)
        }
    }

    @Test(
        "a change on a node that has not synchronised is checked against the store: a domain the other took is refused"
    )
    func decidedAgainstTheStore() throws {
        try Self.withNodes { (first: ControlPlane, second: ControlPlane) throws in
            let shop = ControlPlaneTests.call(
                first,
                ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("shop", domain: "shop.test"))
            )
            #expect(shop.status == 201)
            // The second node never synchronised, yet its change sees the first's tenant.
            let taken = ControlPlaneTests.call(
                second,
                ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("copy", domain: "shop.test"))
            )
            #expect(taken.status == 409, "\(String(decoding: taken.body, as: UTF8.self))")
            let blog = ControlPlaneTests.call(
                second,
                ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("blog", domain: "blog.test"))
            )
            #expect(blog.status == 201)
            #expect(blog.version == 2)
            #expect(second.routes.current.tenant(forNormalizedHost: "shop.test")?.name == "shop")
            // If-Match on the version the first node last saw: refused, the second changed it.
            let stale = ControlPlaneTests.call(
                first,
                ControlPlaneTests.request("DELETE", "/v1/tenants/shop", ifMatch: ["\"1\""])
            )
            #expect(stale.status == 412, "\(String(decoding: stale.body, as: UTF8.self))")
            #expect(first.routes.current.tenant(forNormalizedHost: "blog.test")?.name == "blog")
        }
    }

    @Test(
        "drains, undrains and certificates of one node reach the other; a burst of 200 changes is one synchronisation"
    )
    func drainsAndBursts() throws {
        try Self.withNodes { (first: ControlPlane, second: ControlPlane) throws in
            #expect(
                ControlPlaneTests.call(
                    first,
                    ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("shop", domain: "shop.test"))
                ).status == 201
            )
            let drain = ControlPlaneTests.call(
                first,
                ControlPlaneTests.request("POST", "/v1/tenants/shop/backends/127.0.0.1:9002/drain")
            )
            #expect(drain.status == 200, "\(String(decoding: drain.body, as: UTF8.self))")
            #expect(try second.synchronize().get() == 2)
            let backend = second.routes.current.tenant(named: "shop")?.backends.first
            #expect(backend?.status.isDrainedByOperator == true)

            for index in 0..<200 {
                let body = Self.tenant("t\(index)", domain: "t\(index).test")
                #expect(
                    ControlPlaneTests.call(first, ControlPlaneTests.request("POST", "/v1/tenants", body)).status == 201
                )
            }
            let changesBefore = second.version.changeCount
            #expect(try second.synchronize().get() == 202)
            #expect(second.version.changeCount == changesBefore + 1)
            #expect(second.routes.current.tenants.count == first.routes.current.tenants.count)
            #expect(second.routes.current.tenant(forNormalizedHost: "t199.test")?.name == "t199")
        }
    }

    @Test(
        "heartbeats list the nodes with the version each serves; waiting for the fleet ends once every live node has it"
    )
    func fleetAndWait() throws {
        try Self.withNodes { (first: ControlPlane, second: ControlPlane) throws in
            first.heartbeat()
            second.heartbeat()
            let added = ControlPlaneTests.call(
                first,
                ControlPlaneTests.request("POST", "/v1/tenants", Self.tenant("shop", domain: "shop.test"))
            )
            #expect(added.status == 201)
            let (revision, members) = try second.fleetMembers()
            #expect(revision == 1)
            #expect(members.map(\.name) == ["node-a", "node-b"])
            #expect(members.map(\.this) == [false, true])
            #expect(members.allSatisfy { $0.live })
            // node-a recorded its change's version with it; node-b has not read it.
            #expect(members.map(\.applied) == [1, 0] && members.map(\.lag) == [0, 1])

            let stale = try #require(Self.waitForFleet(first, 1, timeout: 0.2))
            #expect(stale.behind == ["node-b"] && stale.live == 2 && stale.applied == 1)
            _ = second.synchronize()
            second.heartbeat()
            let done = try #require(Self.waitForFleet(first, 1, timeout: 5))
            #expect(done.behind.isEmpty && done.applied == 2)

            let listed = ControlPlaneTests.call(second, ControlPlaneTests.request("GET", "/v1/fleet"))
            let object = try JSONSerialization.jsonObject(with: listed.body) as? [String: Any]
            let nodes = object?["nodes"] as? [[String: Any]] ?? []
            #expect(object?["version"] as? Int == 1)
            #expect(nodes.compactMap { $0["name"] as? String } == ["node-a", "node-b"])
            #expect(nodes.compactMap { $0["applied"] as? Int } == [1, 1], "\(nodes)")

            // ?wait=fleet on a change answers with how many nodes serve it.
            let waited = ControlPlaneTests.call(
                second,
                ControlPlaneTests.request(
                    "POST",
                    "/v1/tenants?wait=fleet&wait_timeout=0.3",
                    Self.tenant("blog", domain: "blog.test")
                )
            )
            #expect(waited.status == 201)
            let answer = try JSONSerialization.jsonObject(with: waited.body) as? [String: Any]
            let fleet = answer?["fleet"] as? [String: Any]
            #expect(fleet?["version"] as? Int == 2 && fleet?["live"] as? Int == 2)
            #expect(fleet?["behind"] as? [String] == ["node-a"], "\(String(describing: fleet))")
        }
    }
}
