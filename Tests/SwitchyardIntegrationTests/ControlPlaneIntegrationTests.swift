import Foundation
import NIOCore
import SwitchyardTestSupport
import Testing

/// The control plane end to end: the real `switchyard` binary, changed through its admin socket by the real CLI
/// (and by concurrent raw clients), routed by real curl and openssl clients, stopped and killed and started again on
/// its state store.
///
/// Serialized: its tests wait on child processes, which blocks one of the concurrency pool's few threads each; run
/// side by side they would starve the other suites' tasks (health checkers, idle timers).
@Suite("Control plane through the admin API and CLI", .serialized)
struct ControlPlaneIntegrationTests {
    /// A configuration with one file tenant, `filet`, on `backend`.
    static func configuration(port: Int, backend: Int, extra: String = "") -> String {
        """
        listen:
          http: ["127.0.0.1:\(port)"]
        workers: 2
        \(extra)
        tenants:
          - name: filet
            domains: ["file.test"]
            backends: ["127.0.0.1:\(backend)"]
        """
    }

    static func get(_ balancer: ServedBalancer, host: String, path: String = "/") throws -> (code: String, body: String)
    {
        let output = try ExternalProcess.curl(["-w", "\n%{http_code}", "-H", "Host: \(host)", balancer.url + path])
        let lines = output.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
    }

    /// The configuration version `status` reports.
    static func version(_ balancer: ServedBalancer) throws -> Int {
        let status = try balancer.admin(["status", "--json"])
        let object = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        return object?["version"] as? Int ?? -1
    }

    @Test("tenants, domains and backends change live through the CLI; bad input changes nothing; files are 0600")
    func liveChanges() async throws {
        let a = try await TestBackend.start(name: "a")
        let b = try await TestBackend.start(name: "b")
        let port = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(Self.configuration(port: port, backend: a.port), port: port)
        defer { balancer.stop() }
        let admin = balancer.admin

        #expect(try Self.get(balancer, host: "shop.test").code == "404")
        let shopFile = NSTemporaryDirectory() + "switchyard-shop-\(UUID().uuidString).yaml"
        defer { try? FileManager.default.removeItem(atPath: shopFile) }
        try """
        domains: [shop.test]
        backends: ["127.0.0.1:\(a.port)"]
        health: { path: /healthz, interval: 10s, timeout: 1s }
        """.write(toFile: shopFile, atomically: true, encoding: .utf8)
        let add = try admin(["tenants", "add", "shop", "--file", shopFile])
        #expect(add.status == 0, "\(add.stderr)")
        #expect(add.stdout.contains("shop  (api)  version 1"), "\(add.stdout)")
        // Live without a reload: the answer came after the table was published.
        #expect(try Self.get(balancer, host: "shop.test").body == "a")

        #expect(try admin(["domains", "add", "shop", "www.shop.test"]).status == 0)
        #expect(try Self.get(balancer, host: "www.shop.test").body == "a")
        #expect(try admin(["domains", "remove", "shop", "www.shop.test"]).status == 0)
        #expect(try Self.get(balancer, host: "www.shop.test").code == "404")

        let addBackend = try admin(["backends", "add", "shop", "127.0.0.1:\(b.port)", "--weight", "2"])
        #expect(addBackend.status == 0, "\(addBackend.stderr)")
        // Its health checks start at once (the tenant's check is an HTTP one: the probe is a request).
        let added = ContinuousClock.now
        while !b.requests.contains(where: { $0.head.uri == "/healthz" }), ContinuousClock.now - added < .seconds(5) {
            usleep(20_000)
        }
        #expect(ContinuousClock.now - added < .seconds(1), "no health check of the added backend within 1 s")
        var seen: Set<String> = []
        for _ in 0..<12 { seen.insert(try Self.get(balancer, host: "shop.test").body) }
        #expect(seen == ["a", "b"])

        #expect(try admin(["backends", "drain", "shop", "127.0.0.1:\(a.port)"]).status == 0)
        for _ in 0..<6 { #expect(try Self.get(balancer, host: "shop.test").body == "b") }
        #expect(try admin(["backends", "undrain", "shop", "127.0.0.1:\(a.port)"]).status == 0)
        #expect(try admin(["backends", "weight", "shop", "127.0.0.1:\(b.port)", "5"]).status == 0)
        let shown = try admin(["tenants", "show", "shop", "--json"])
        #expect(shown.stdout.contains("127.0.0.1:\(b.port) weight=5"), "\(shown.stdout)")
        #expect(try admin(["backends", "remove", "shop", "127.0.0.1:\(a.port)"]).status == 0)
        for _ in 0..<6 { #expect(try Self.get(balancer, host: "shop.test").body == "b") }

        // Every refusal is one line on stderr, exit 1, and leaves the version where it was.
        let before = try Self.version(balancer)
        let refusals: [([String], String)] = [
            (
                ["tenants", "add", "copy", "--domain", "file.test", "--backend", "127.0.0.1:1"],
                "belongs to tenant 'filet'"
            ),
            (["tenants", "add", "bad", "--domain", "bad.test", "--backend", "nowhere"], "is not HOST:PORT"),
            (["tenants", "add", "shop", "--domain", "x.test", "--backend", "127.0.0.1:1"], "exists already"),
            (
                ["tenants", "add", "bad name", "--domain", "y.test", "--backend", "127.0.0.1:1"],
                "not a valid tenant name"
            ),
            (["domains", "add", "filet", "more.test"], "declared in the configuration file"),
            (["domains", "add", "shop", "*.test"], "wildcard over a whole top-level domain"),
            (["domains", "remove", "shop", "shop.test"], "is the last domain"),
            (["backends", "remove", "shop", "127.0.0.1:\(b.port)"], "is the last backend"),
            (["backends", "add", "shop", "127.0.0.1:\(b.port)"], "has backend 127.0.0.1:\(b.port) already"),
            (["backends", "weight", "shop", "127.0.0.1:\(b.port)", "0"], "from 1 to 1000"),
            (["tenants", "remove", "ghost"], "no tenant 'ghost'"),
            (
                ["tenants", "add", "late", "--domain", "late.test", "--backend", "127.0.0.1:1", "--if-match", "0"],
                "nothing was changed"
            ),
        ]
        for (arguments, message) in refusals {
            let refused = try admin(arguments)
            #expect(refused.status == 1, "\(arguments): \(refused.stdout)")
            #expect(refused.stderr.contains(message), "\(arguments): \(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        }
        #expect(try Self.version(balancer) == before)
        #expect(try Self.get(balancer, host: "late.test").code == "404")

        // The audit log names who did what.
        let changes = try admin(["changes", "--json"])
        #expect(changes.stdout.contains("\"action\" : \"tenant.add\""), "\(changes.stdout)")
        #expect(changes.stdout.contains("\"actor\" : \"uid \(getuid())\""))
        #expect(changes.stdout.contains("\"action\" : \"drain.add\""))

        #expect(try admin(["tenants", "remove", "shop"]).status == 0)
        #expect(try Self.get(balancer, host: "shop.test").code == "404")
        #expect(try Self.get(balancer, host: "file.test").body == "a")

        for path in [balancer.process.adminPath, balancer.process.statePath] {
            let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? 0
            #expect(mode & 0o777 == 0o600, "\(path) has mode \(String(mode, radix: 8))")
        }
        await a.stop()
        await b.stop()
    }

    @Test("apply adds, changes and removes in one change; --dry-run changes nothing")
    func apply() async throws {
        let a = try await TestBackend.start(name: "a")
        let b = try await TestBackend.start(name: "b")
        let port = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(Self.configuration(port: port, backend: a.port), port: port)
        defer { balancer.stop() }
        let file = NSTemporaryDirectory() + "switchyard-apply-\(UUID().uuidString).yaml"
        defer { try? FileManager.default.removeItem(atPath: file) }
        func tenant(_ name: String, _ backend: Int) -> String {
            "  - name: \(name)\n    domains: [\"\(name).test\"]\n    backends: [\"127.0.0.1:\(backend)\"]\n"
        }
        try ("tenants:\n" + tenant("one", a.port) + tenant("two", a.port) + tenant("three", a.port)).write(
            toFile: file,
            atomically: true,
            encoding: .utf8
        )
        let dry = try balancer.admin(["apply", file, "--dry-run"])
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(
            dry.stdout.contains("would apply 3 tenants: 3 added, 0 changed, 0 removed (version 0)"),
            "\(dry.stdout)"
        )
        #expect(try Self.get(balancer, host: "one.test").code == "404")
        #expect(try Self.version(balancer) == 0)

        let applied = try balancer.admin(["apply", file])
        #expect(
            applied.stdout.contains("applied 3 tenants: 3 added, 0 changed, 0 removed (version 1)"),
            "\(applied.stdout)"
        )
        #expect(try Self.get(balancer, host: "two.test").body == "a")

        try ("tenants:\n" + tenant("one", a.port) + tenant("two", b.port) + tenant("four", b.port)).write(
            toFile: file,
            atomically: true,
            encoding: .utf8
        )
        let json = try balancer.admin(["apply", file, "--json"])
        let answer = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(answer?["added"] as? [String] == ["four"])
        #expect(answer?["changed"] as? [String] == ["two"])
        #expect(answer?["removed"] as? [String] == ["three"])
        #expect(answer?["version"] as? Int == 2)
        #expect(try Self.get(balancer, host: "two.test").body == "b")
        #expect(try Self.get(balancer, host: "four.test").body == "b")
        #expect(try Self.get(balancer, host: "three.test").code == "404")

        // A file that claims a file tenant's domain is refused whole.
        try
            ("tenants:\n" + tenant("five", a.port) + "  - name: thief\n    domains: [\"file.test\"]\n"
            + "    backends: [\"127.0.0.1:\(a.port)\"]\n").write(toFile: file, atomically: true, encoding: .utf8)
        let refused = try balancer.admin(["apply", file])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("belongs to tenant 'filet'"), "\(refused.stderr)")
        #expect(try Self.get(balancer, host: "one.test").body == "a")
        #expect(try Self.get(balancer, host: "five.test").code == "404")
        await a.stop()
        await b.stop()
    }

    @Test("tenants, drains and certificates survive SIGTERM and kill -9 right after the answer")
    func durability() async throws {
        let a = try await TestBackend.start(name: "a")
        let b = try await TestBackend.start(name: "b")
        let certificates = try TestCertificates()
        defer { certificates.remove() }
        let shop = try certificates.leaf("shop", names: ["shop.test", "www.shop.test"])
        let port = try ExternalProcess.freePort()
        let httpsPort = try ExternalProcess.freePort()
        let root = ExternalProcess.packageRoot
        let configuration = """
            listen:
              http: ["127.0.0.1:\(port)"]
              https: ["127.0.0.1:\(httpsPort)"]
            tls: { certificate: \(root)/Certs/localhost.pem, key: \(root)/Certs/localhost.key }
            tenants:
              - name: filet
                domains: ["file.test"]
                backends: ["127.0.0.1:\(a.port)"]
            """
        var balancer = try ServedBalancer(configuration, port: port)
        let statePath = balancer.process.statePath
        let configurationPath = balancer.configurationPath
        defer { balancer.stop() }
        #expect(
            try balancer.admin([
                "tenants", "add", "shop", "--domain", "shop.test", "--domain", "www.shop.test", "--backend",
                "127.0.0.1:\(a.port)", "--backend", "127.0.0.1:\(b.port)",
            ]).status == 0
        )
        let upload = try balancer.admin(["certs", "add", "shop", "--cert", shop.certificate, "--key", shop.key])
        #expect(upload.status == 0, "\(upload.stderr)")
        #expect(try balancer.admin(["backends", "drain", "shop", "127.0.0.1:\(a.port)"]).status == 0)
        #expect(try balancer.admin(["backends", "drain", "filet", "127.0.0.1:\(a.port)"]).status == 0)
        #expect(try Self.subject(httpsPort, serverName: "www.shop.test").contains("CN = shop.test"))
        let listed = try balancer.admin(["certs", "list"])
        #expect(listed.stdout.contains("shop.test,www.shop.test"), "\(listed.stdout)")
        #expect(!listed.stdout.contains("PRIVATE KEY"))

        // SIGTERM, then start again on the same store.
        #expect(balancer.stop(keepingState: true) == 0)
        balancer = try ServedBalancer(
            configuration,
            port: port,
            statePath: statePath,
            configurationPath: configurationPath
        )
        for _ in 0..<4 { #expect(try Self.get(balancer, host: "shop.test").body == "b") }
        #expect(try Self.subject(httpsPort, serverName: "shop.test").contains("CN = shop.test"))
        let status = try balancer.admin(["status"])
        #expect(status.stdout.contains("127.0.0.1:\(a.port)  draining (admin)"), "\(status.stdout)")

        // kill -9 as soon as the change is acknowledged: it was durable before the answer.
        #expect(
            try balancer.admin(["tenants", "add", "late", "--domain", "late.test", "--backend", "127.0.0.1:\(b.port)"])
                .status == 0
        )
        kill(balancer.process.pid, SIGKILL)
        balancer.process.process.wait(timeout: 10)
        // Started again keeping one record of the log: it prunes at start, down to the latest write's.
        balancer = try ServedBalancer(
            configuration + "\nchange_log: { max_changes: 1 }\n",
            port: port,
            statePath: statePath,
            configurationPath: configurationPath
        )
        #expect(try Self.get(balancer, host: "late.test").body == "b")
        #expect(try Self.get(balancer, host: "shop.test").body == "b")
        var versions: [Int] = []
        for _ in 0..<50 {
            let listed = try balancer.admin(["changes", "--json"])
            let object = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any]
            versions = (object?["changes"] as? [[String: Any]] ?? []).compactMap { $0["version"] as? Int }
            if versions == [5] { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(versions == [5], "the log after pruning: \(versions)")
        #expect(try Self.version(balancer) == 5)
        await a.stop()
        await b.stop()
    }

    /// The subject line `openssl s_client` shows for `serverName`.
    static func subject(_ port: Int, serverName: String) throws -> String {
        let output = try ExternalProcess.run(
            "/usr/bin/openssl",
            ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", serverName],
            input: "",
            timeout: 10
        )
        return output.stdout.split(separator: "\n").first { $0.hasPrefix("subject=") }.map(String.init) ?? ""
    }

    @Test("two clients adding 500 tenants each at once: 1,000 tenants, none lost; a stale If-Match is 412")
    func concurrentWriters() async throws {
        let a = try await TestBackend.start(name: "a")
        let port = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(Self.configuration(port: port, backend: a.port), port: port)
        defer { balancer.stop() }
        let script = NSTemporaryDirectory() + "switchyard-writers-\(UUID().uuidString).py"
        defer { try? FileManager.default.removeItem(atPath: script) }
        try Self.writerScript.write(toFile: script, atomically: true, encoding: .utf8)
        let writers = try ["left", "right"].map { prefix in
            try ChildProcess(
                "/usr/bin/env",
                ["python3", script, balancer.process.adminPath, prefix, "500", String(a.port)]
            )
        }
        var results: [String] = []
        for writer in writers {
            let output = try await offThePool { writer.finish(timeout: 120).stdout }
            results.append(output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(results == ["201 500", "201 500"], "\(results)")
        let list = try balancer.admin(["tenants", "list", "--json"])
        let object = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [String: Any]
        #expect((object?["tenants"] as? [Any])?.count == 1001)
        #expect(try Self.version(balancer) == 1000)
        #expect(try Self.get(balancer, host: "left-499.test").body == "a")
        #expect(try Self.get(balancer, host: "right-0.test").body == "a")

        // A writer that read version 999 loses: nothing changes, and it is told the version now.
        let stale = try ExternalProcess.curl([
            "-i", "--unix-socket", balancer.process.adminPath, "-X", "DELETE", "-H", "If-Match: \"999\"",
            "http://admin/v1/tenants/left-0",
        ])
        #expect(stale.stdout.hasPrefix("HTTP/1.1 412"), "\(stale.stdout)")
        #expect(stale.stdout.contains("ETag: \"1000\""))
        #expect(try Self.get(balancer, host: "left-0.test").body == "a")
        await a.stop()
    }

    /// Adds COUNT tenants PREFIX-0… over the admin socket, one request each on one keep-alive connection; prints
    /// the statuses seen and how many of each.
    static let writerScript = #"""
        import http.client, json, socket, sys, collections
        path, prefix, count, backend = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        class Connection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(30)
                self.sock.connect(path)
        connection = Connection("admin")
        seen = collections.Counter()
        for i in range(count):
            body = json.dumps({"name": f"{prefix}-{i}", "domains": [f"{prefix}-{i}.test"],
                               "backends": [f"127.0.0.1:{backend}"]})
            connection.request("POST", "/v1/tenants", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            seen[response.status] += 1
        print(" ".join(f"{status} {n}" for status, n in sorted(seen.items())))
        """#

    @Test(
        "a WebSocket tunnel of one tenant keeps echoing while other tenants are added and removed; a removed tenant's tunnel closes timeouts.drain later"
    )
    func tunnelSurvivesChanges() async throws {
        let echo = try await WebSocketEchoBackend.start()
        let port = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(
            Self.configuration(port: port, backend: echo.port, extra: "timeouts: { drain: 1s }"),
            port: port
        )
        defer { balancer.stop() }
        #expect(
            try balancer.admin([
                "tenants", "add", "gone", "--domain", "gone.test", "--backend", "127.0.0.1:\(echo.port)",
            ])
            .status == 0
        )
        let script = NSTemporaryDirectory() + "switchyard-ws-\(UUID().uuidString).py"
        defer { try? FileManager.default.removeItem(atPath: script) }
        try Self.echoScript.write(toFile: script, atomically: true, encoding: .utf8)
        func startClient(_ host: String, seconds: Int) throws -> ChildProcess {
            try ChildProcess("/usr/bin/env", ["python3", script, String(port), host, String(seconds)])
        }
        let client = try startClient("file.test", seconds: 4)
        let doomed = try startClient("gone.test", seconds: 8)
        try await Task.sleep(for: .milliseconds(500))
        let removed = Date().timeIntervalSince1970
        #expect(try balancer.admin(["tenants", "remove", "gone"]).status == 0)
        let socket = balancer.process.adminPath
        @Sendable func admin(_ arguments: [String]) throws -> ExternalProcess.Output {
            try ExternalProcess.run(ExternalProcess.switchyardBinary, arguments + ["--admin", socket])
        }
        let statuses = try await offThePool {
            var statuses: [Int32] = []
            for index in 0..<20 {
                let name = "churn-\(index)"
                statuses.append(
                    try admin(["tenants", "add", name, "--domain", "\(name).test", "--backend", "127.0.0.1:1"]).status
                )
                if index % 2 == 1 { statuses.append(try admin(["tenants", "remove", name]).status) }
            }
            return statuses
        }
        #expect(statuses == [Int32](repeating: 0, count: 30))
        let data = try await offThePool { Data(client.finish(timeout: 30).stdout.utf8) }
        let result = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        #expect(result?["ok"] as? Bool == true, "\(String(decoding: data, as: UTF8.self))")
        #expect((result?["echoed"] as? Int ?? 0) >= 40)

        // The removed tenant's tunnel went on for timeouts.drain (1 s), then was closed.
        let doomedData = try await offThePool { Data(doomed.finish(timeout: 30).stdout.utf8) }
        let doomedResult = try JSONSerialization.jsonObject(with: doomedData) as? [String: Any]
        #expect(doomedResult?["ok"] as? Bool == false, "\(String(decoding: doomedData, as: UTF8.self))")
        #expect((doomedResult?["echoed"] as? Int ?? 0) >= 10)
        // When the client saw the close, by its own clock: the drain (1 s) and at most a sweep later, not at once.
        let closedAfter = (doomedResult?["ended"] as? Double ?? .infinity) - removed
        #expect(closedAfter > 0.9 && closedAfter < 4, "closed \(closedAfter) s after the removal")
        await echo.stop()
    }

    /// Opens a WebSocket to HOST through the balancer on PORT and sends a message every 50 ms for SECONDS, each of
    /// which must come back; prints `{"ok": …, "echoed": N, "ended": UNIX TIME}`.
    static let echoScript = #"""
        import asyncio, json, socket, sys, time
        import websockets
        port, host, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
        async def main():
            sock = socket.create_connection(("127.0.0.1", port))
            echoed = 0
            try:
                async with websockets.connect(f"ws://{host}/ws/", sock=sock, ping_interval=None, open_timeout=5) as ws:
                    deadline = time.monotonic() + seconds
                    while time.monotonic() < deadline:
                        message = f"message {echoed}"
                        await ws.send(message)
                        if await asyncio.wait_for(ws.recv(), 5) != message:
                            return {"ok": False, "echoed": echoed, "error": "wrong echo"}
                        echoed += 1
                        await asyncio.sleep(0.05)
                return {"ok": True, "echoed": echoed, "ended": time.time()}
            except Exception as error:
                return {"ok": False, "echoed": echoed, "error": repr(error), "ended": time.time()}
        print(json.dumps(asyncio.run(main())))
        """#
}
