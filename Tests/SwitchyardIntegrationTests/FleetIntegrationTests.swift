import Foundation
import SwitchyardTestSupport
import Testing

/// Several `switchyard serve` processes on one PostgreSQL database, as a fleet: a change made on any node is routed
/// by every node within a second, none is lost, and a node that was away catches up.
@Suite("Fleet: nodes sharing one PostgreSQL store", .serialized)
struct FleetIntegrationTests {
    /// Nodes on `database` of `cluster`, each on a port of its own.
    final class Fleet {
        let cluster: TemporaryPostgres
        let database: String
        let passwordFile: String
        var nodes: [ServedBalancer] = []

        init(cluster: TemporaryPostgres, nodes count: Int) throws {
            self.cluster = cluster
            database = try cluster.makeDatabase()
            passwordFile = try PostgresStoreIntegrationTests.passwordFile(cluster.password)
            for _ in 0..<count {
                nodes.append(try start())
            }
        }

        /// A new node on the fleet's database.
        func start(port: Int? = nil) throws -> ServedBalancer {
            let port = try port ?? ExternalProcess.freePort()
            return try ServedBalancer(
                """
                listen:
                  http: ["127.0.0.1:\(port)"]
                node_name: node-\(port)
                state_cache: \(cachePath(port: port))
                workers: 1
                access_log: false
                state_password_file: \(passwordFile)
                """,
                port: port,
                statePath: cluster.url(database: database)
            )
        }

        /// Where the node on `port` keeps its copy of the store.
        func cachePath(port: Int) -> String {
            NSTemporaryDirectory() + "switchyard-cache-\(database)-\(port).json"
        }

        func stop() {
            for node in nodes {
                node.stop()
                try? FileManager.default.removeItem(atPath: cachePath(port: node.port))
            }
            try? cluster.dropDatabase(database)
            try? FileManager.default.removeItem(atPath: passwordFile)
        }
    }

    @Test("tenants add on node 1 is routed through nodes 2 and 3 within 1 s; a removal likewise")
    func propagates() async throws {
        let backend = try await TestBackend.start(name: "shop-backend")
        let fleet = try Fleet(cluster: try TemporaryPostgres.shared, nodes: 3)
        defer { fleet.stop() }
        let added = try fleet.nodes[0].admin([
            "tenants", "add", "shop", "--domain", "shop.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(added.status == 0, "\(added.stderr)")
        let ports = fleet.nodes.map(\.port)
        let times = try await offThePool {
            ports.dropFirst().map { timeUntilRouted(port: $0, host: "shop.test", body: "shop-backend") }
        }
        for time in times {
            #expect(time != nil && time! < .seconds(1), "\(times)")
        }
        #expect(try ControlPlaneIntegrationTests.version(fleet.nodes[2]) == 1)

        let removed = try fleet.nodes[1].admin(["tenants", "remove", "shop"])
        #expect(removed.status == 0, "\(removed.stderr)")
        let gone = try await offThePool { () -> [Bool] in
            let deadline = ContinuousClock.now + .seconds(1)
            var gone = [false, false, false]
            while ContinuousClock.now < deadline, gone.contains(false) {
                for (index, port) in ports.enumerated() where !gone[index] {
                    gone[index] = fetch(port: port, host: "shop.test") == nil
                }
                usleep(5_000)
            }
            return gone
        }
        #expect(gone == [true, true, true])

        // --wait returns once every node serves the change: then each routes it at once.
        let waited = try fleet.nodes[2].admin([
            "tenants", "add", "blog", "--domain", "blog.test", "--backend", "127.0.0.1:\(backend.port)", "--wait",
        ])
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(waited.stdout.contains("live on 3 of 3 nodes at version 3"), "\(waited.stdout)")
        let routed = try await offThePool { ports.map { fetch(port: $0, host: "blog.test") } }
        #expect(routed == ["shop-backend", "shop-backend", "shop-backend"])
        let listed = try fleet.nodes[0].admin(["fleet"])
        #expect(listed.status == 0, "\(listed.stderr)")
        for port in ports {
            #expect(listed.stdout.contains("node-\(port)"), "\(listed.stdout)")
        }
        #expect(listed.stdout.components(separatedBy: "live").count - 1 == 3, "\(listed.stdout)")

        // A drain waits for the fleet with --wait-fleet (its --wait waits for what is in progress).
        let drained = try fleet.nodes[1].admin([
            "backends", "drain", "blog", "127.0.0.1:\(backend.port)", "--wait-fleet",
        ])
        #expect(drained.status == 0, "\(drained.stderr)")
        #expect(drained.stdout.contains("live on 3 of 3 nodes at version 4"), "\(drained.stdout)")
        for node in fleet.nodes {
            #expect(try node.admin(["status"]).stdout.contains("draining (admin)"))
        }

        // A node that stopped answering (SIGSTOP: still live by its last heartbeat) holds a --wait up to its
        // timeout; meanwhile the node that waits answers other admin clients at once.
        let stopped = fleet.nodes[2]
        kill(stopped.process.pid, SIGSTOP)
        defer { kill(stopped.process.pid, SIGCONT) }
        let admin = fleet.nodes[0].process.adminPath
        let backendPort = backend.port
        async let waiting = offThePool { () -> (ExternalProcess.Output, ContinuousClock.Instant) in
            let output = try ExternalProcess.run(
                ExternalProcess.switchyardBinary,
                [
                    "tenants", "add", "cafe", "--domain", "cafe.test", "--backend", "127.0.0.1:\(backendPort)",
                    "--wait", "--wait-timeout", "6", "--admin", admin,
                ]
            )
            return (output, ContinuousClock.now)
        }
        try await Task.sleep(for: .seconds(1))
        let (status, statusDone) = try await offThePool {
            (
                try ExternalProcess.run(ExternalProcess.switchyardBinary, ["status", "--admin", admin]),
                ContinuousClock.now
            )
        }
        let (held, waitDone) = try await waiting
        kill(stopped.process.pid, SIGCONT)
        // Held, the status would come after the wait's answer; it comes seconds before it.
        #expect(status.status == 0)
        #expect(statusDone < waitDone - .seconds(1), "status answered \(waitDone - statusDone) before the wait ended")
        #expect(held.status == 1)
        #expect(
            held.stderr.contains("only 2 of 3 live nodes serve it; behind: node-\(stopped.port)"),
            "\(held.stderr)"
        )
        await backend.stop()
    }

    @Test(
        "two writers on two nodes add 500 tenants each: all three nodes end at the same revision with the same tenants"
    )
    func twoWriters() async throws {
        let backend = try await TestBackend.start(name: "b")
        let fleet = try Fleet(cluster: try TemporaryPostgres.shared, nodes: 3)
        defer { fleet.stop() }
        let script = NSTemporaryDirectory() + "switchyard-fleet-writers-\(UUID().uuidString).py"
        defer { try? FileManager.default.removeItem(atPath: script) }
        try ControlPlaneIntegrationTests.writerScript.write(toFile: script, atomically: true, encoding: .utf8)
        let writers = try [("left", fleet.nodes[0]), ("right", fleet.nodes[1])].map { prefix, node in
            try ChildProcess(
                "/usr/bin/env",
                ["python3", script, node.process.adminPath, prefix, "500", String(backend.port)]
            )
        }
        var results: [String] = []
        for writer in writers {
            let output = try await offThePool { writer.finish(timeout: 180).stdout }
            results.append(output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(results == ["201 500", "201 500"], "\(results)")
        let expected = Set((0..<500).flatMap { ["left-\($0)", "right-\($0)"] })
        // Each node has every change within a few seconds: the last notifications, or the poll.
        let admins = fleet.nodes.map(\.process.adminPath)
        let ports = fleet.nodes.map(\.port)
        let converged = try await offThePool { () -> [(names: Set<String>, version: Int)] in
            let deadline = ContinuousClock.now + .seconds(10)
            var views: [(names: Set<String>, version: Int)] = []
            repeat {
                views = try admins.map { try tenants(admin: $0) }
                if views.allSatisfy({ $0.names == expected && $0.version == 1000 }) { break }
                usleep(100_000)
            } while ContinuousClock.now < deadline
            return views
        }
        for view in converged {
            #expect(
                view.version == 1000 && view.names == expected,
                "version \(view.version), \(view.names.count) tenants"
            )
        }
        #expect(try await offThePool { fetch(port: ports[2], host: "left-499.test") } == "b")
        #expect(try await offThePool { fetch(port: ports[2], host: "right-0.test") } == "b")
        await backend.stop()
    }

    @Test(
        "a node stopped while changes are made catches up when started; kill -9 of the node that took a change: the others have it"
    )
    func stoppedAndKilledNodes() async throws {
        let backend = try await TestBackend.start(name: "b")
        let fleet = try Fleet(cluster: try TemporaryPostgres.shared, nodes: 3)
        defer { fleet.stop() }
        let away = fleet.nodes[1]
        away.stop(keepingState: true)
        for name in ["one", "two", "three"] {
            let added = try fleet.nodes[0].admin([
                "tenants", "add", name, "--domain", "\(name).test", "--backend", "127.0.0.1:\(backend.port)",
            ])
            #expect(added.status == 0, "\(added.stderr)")
        }
        let back = try fleet.start(port: away.port)
        fleet.nodes[1] = back
        let backPort = back.port
        #expect(try await offThePool { fetch(port: backPort, host: "three.test") } == "b")
        #expect(try tenants(admin: back.process.adminPath).version == 3)

        // The change is committed before it is answered: killed right after, the node leaves it to the others.
        let added = try fleet.nodes[2].admin([
            "tenants", "add", "four", "--domain", "four.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(added.status == 0, "\(added.stderr)")
        kill(fleet.nodes[2].process.pid, SIGKILL)
        for port in fleet.nodes.prefix(2).map(\.port) {
            let time = try await offThePool { timeUntilRouted(port: port, host: "four.test", body: "b") }
            #expect(time != nil && time! < .seconds(1), "\(String(describing: time))")
        }
        await backend.stop()
    }

    @Test(
        "the database stopped for 10 s while traffic flows: no failed request, changes refused with 503, then all converge"
    )
    func databaseDown() async throws {
        let backend = try await TestBackend.start(name: "b")
        // A cluster of its own, since it is stopped.
        let cluster = try TemporaryPostgres()
        defer {
            try? cluster.stop()
            try? FileManager.default.removeItem(atPath: cluster.directory)
        }
        let fleet = try Fleet(cluster: cluster, nodes: 2)
        defer { fleet.stop() }
        let added = try fleet.nodes[0].admin([
            "tenants", "add", "shop", "--domain", "shop.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(added.status == 0, "\(added.stderr)")
        let ports = fleet.nodes.map(\.port)
        #expect(try await offThePool { timeUntilRouted(port: ports[1], host: "shop.test", body: "b") } != nil)

        try cluster.stop()
        // On a thread of its own (offThePool), not the concurrency pool, which it would hold for the 10 s.
        async let traffic = offThePool { () -> (ok: Int, failed: Int) in
            var (ok, failed) = (0, 0)
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                for port in ports {
                    if fetch(port: port, host: "shop.test") == "b" { ok += 1 } else { failed += 1 }
                }
                usleep(20_000)
            }
            return (ok, failed)
        }
        try await Task.sleep(for: .seconds(3))
        let refused = try fleet.nodes[1].admin([
            "tenants", "add", "blog", "--domain", "blog.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("cannot be"), "\(refused.stderr)")
        let status = try fleet.nodes[0].admin(["status"])
        #expect(status.stdout.contains("cannot"), "\(status.stdout)")
        let metrics = try ExternalProcess.curl([
            "--unix-socket", fleet.nodes[0].process.adminPath, "http://admin/metrics?scope=global",
        ])
        #expect(metrics.stdout.contains("switchyard_state_store_up 0.0"), "\(metrics.stdout.prefix(400))")
        let counts = try await traffic
        #expect(counts.failed == 0 && counts.ok > 100, "\(counts)")

        try cluster.start()
        // Once the database answers, changes go through again and reach the other node.
        var accepted = false
        for _ in 0..<30 where !accepted {
            let retry = try fleet.nodes[1].admin([
                "tenants", "add", "blog", "--domain", "blog.test", "--backend", "127.0.0.1:\(backend.port)",
            ])
            accepted = retry.status == 0
            if !accepted { try await Task.sleep(for: .milliseconds(500)) }
        }
        #expect(accepted)
        #expect(try await offThePool { timeUntilRouted(port: ports[0], host: "blog.test", body: "b") } != nil)
        // The node that routes it has it: the store's version it read is the version it serves.
        let after = try ExternalProcess.curl([
            "--unix-socket", fleet.nodes[0].process.adminPath, "http://admin/metrics?scope=global",
        ]).stdout
        let served = after.split(separator: "\n").first { $0.hasPrefix("switchyard_config_version ") }
        let read = after.split(separator: "\n").first { $0.hasPrefix("switchyard_state_store_version ") }
        #expect(served != nil && read?.split(separator: " ").last == served?.split(separator: " ").last, "\(after)")
        let log = fleet.nodes[0].process.log
        #expect(log.components(separatedBy: "cannot read other nodes' changes").count - 1 == 1, "\(log)")
        #expect(log.contains("answering again"), "\(log)")
        await backend.stop()
    }

    @Test(
        "a node started while the database is down serves its own copy and says how old it is; it catches up once the database is back"
    )
    func startsFromItsCopy() async throws {
        let backend = try await TestBackend.start(name: "b")
        let cluster = try TemporaryPostgres()
        defer {
            try? cluster.stop()
            try? FileManager.default.removeItem(atPath: cluster.directory)
        }
        let fleet = try Fleet(cluster: cluster, nodes: 1)
        defer { fleet.stop() }
        let port = fleet.nodes[0].port
        let added = try fleet.nodes[0].admin([
            "tenants", "add", "shop", "--domain", "shop.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(added.status == 0, "\(added.stderr)")
        // The copy is written by the follower after it has the change (at once on the bell, else within 2 s).
        let cache = fleet.cachePath(port: port)
        let written = try await offThePool { () -> Bool in
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                if let text = try? String(contentsOfFile: cache, encoding: .utf8), text.contains("\"revision\":1") {
                    return true
                }
                usleep(50_000)
            }
            return false
        }
        #expect(written)
        var mode = stat()
        #expect(stat(cache, &mode) == 0 && mode.st_mode & 0o777 == 0o600)

        fleet.nodes[0].stop()
        try cluster.stop()
        let restarted = try fleet.start(port: port)
        fleet.nodes[0] = restarted
        #expect(try await offThePool { fetch(port: port, host: "shop.test") } == "b")
        #expect(
            restarted.process.log.contains("serving this node's copy of version 1, saved"),
            "\(restarted.process.log)"
        )
        let status = try restarted.admin(["status"])
        #expect(status.stdout.contains("cannot"), "\(status.stdout)")
        let refused = try restarted.admin([
            "tenants", "add", "blog", "--domain", "blog.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(refused.status != 0)

        try cluster.start()
        var accepted = false
        for _ in 0..<30 where !accepted {
            let retry = try restarted.admin([
                "tenants", "add", "blog", "--domain", "blog.test", "--backend", "127.0.0.1:\(backend.port)",
            ])
            accepted = retry.status == 0
            if !accepted { try await Task.sleep(for: .milliseconds(500)) }
        }
        #expect(accepted)
        #expect(try await offThePool { fetch(port: port, host: "blog.test") } == "b")
        #expect(try await offThePool { fetch(port: port, host: "shop.test") } == "b")
        await backend.stop()
    }
}

/// The body of a GET for `host` through the node on `port`, or `nil` unless it answered 200.
private func fetch(port: Int, host: String) -> String? {
    guard let client = try? RawClient(port: port),
        (try? client.send("GET / HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")) != nil
    else { return nil }
    let response = client.receiveResponse(timeout: 2)
    guard response.hasPrefix("HTTP/1.1 200 "), let end = response.range(of: "\r\n\r\n") else { return nil }
    return String(response[end.upperBound...])
}

/// Polls `host` through the node on `port` until it answers `body`; how long that took, or `nil` after
/// `timeout`.
private func timeUntilRouted(port: Int, host: String, body: String, timeout: Duration = .seconds(10)) -> Duration? {
    let start = ContinuousClock.now
    while ContinuousClock.now - start < timeout {
        if fetch(port: port, host: host) == body { return ContinuousClock.now - start }
        usleep(5_000)
    }
    return nil
}

/// The tenant names the node with admin socket `admin` lists, and its version.
private func tenants(admin: String) throws -> (names: Set<String>, version: Int) {
    let binary = ExternalProcess.switchyardBinary
    let list = try ExternalProcess.run(binary, ["tenants", "list", "--json", "--admin", admin])
    let object = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [String: Any]
    let names = (object?["tenants"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
    let status = try ExternalProcess.run(binary, ["status", "--json", "--admin", admin])
    let report = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
    return (Set(names), report?["version"] as? Int ?? -1)
}
