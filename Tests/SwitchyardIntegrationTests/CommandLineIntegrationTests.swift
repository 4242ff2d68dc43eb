import Foundation
import Testing

/// The `switchyard` executable as an operator runs it.
@Suite("Command line", .serialized)
struct CommandLineIntegrationTests {
    @Test("check-config accepts the default configuration")
    func checkDefaultConfig() throws {
        let output = try ExternalProcess.run(
            ExternalProcess.switchyardBinary,
            ["check-config", ExternalProcess.packageRoot + "/Config/switchyard.yaml"]
        )
        #expect(output.status == 0)
        #expect(output.stdout.contains("OK"))
    }

    @Test("check-config refuses a bad file naming the file, line, key and reason")
    func checkBadConfig() throws {
        let path = NSTemporaryDirectory() + "bad-\(UUID().uuidString).yaml"
        try
            "listen:\n  http: [\"127.0.0.1:8080\"]\ntenants:\n  - name: shop\n    domains: [\"shop.test\"]\n    backends: [\"nowhere\"]\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let output = try ExternalProcess.run(ExternalProcess.switchyardBinary, ["check-config", path])
        #expect(output.status != 0)
        #expect(output.stdout.contains("\(path):6: tenants[0].backends[0]"))
    }

    @Test("serve stops gracefully on SIGTERM")
    func gracefulStop() throws {
        let port = try ExternalProcess.freePort()
        let path = NSTemporaryDirectory() + "serve-\(UUID().uuidString).yaml"
        try "listen:\n  http: [\"127.0.0.1:\(port)\"]\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path])
        #expect(process.waitUntilListening(port: port), "\(process.log)")
        let status = process.stop()
        #expect(status == 0)
    }
}

/// SIGHUP re-reads the configuration file; a broken file is refused and the running configuration kept.
@Suite("Reload on SIGHUP", .serialized)
struct ReloadIntegrationTests {
    @Test("a tenant added to the file is routed after SIGHUP; a broken file is refused and routing goes on")
    func reloadTenants() async throws {
        let backend = try await TestBackend.start(name: "extra")
        let port = try ExternalProcess.freePort()
        let path = NSTemporaryDirectory() + "reload-\(UUID().uuidString).yaml"
        let base = "listen:\n  http: [\"127.0.0.1:\(port)\"]\ntenants:\n"
        let tenant = "  - name: extra\n    domains: [\"extra.test\"]\n    backends: [\"127.0.0.1:\(backend.port)\"]\n"
        try (base + "  - name: first\n    domains: [\"first.test\"]\n    backends: [\"127.0.0.1:\(backend.port)\"]\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path])
        defer { process.stop() }
        #expect(process.waitUntilListening(port: port), "\(process.log)")
        let url = "http://127.0.0.1:\(port)/"
        let before = try ExternalProcess.curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: extra.test", url])
        #expect(before.stdout == "404")

        try (base + tenant).write(toFile: path, atomically: true, encoding: .utf8)
        kill(process.pid, SIGHUP)
        var after = ""
        for _ in 0..<50 {
            after = try ExternalProcess.curl(["-H", "Host: extra.test", url]).stdout
            if after == "extra" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(after == "extra")

        try (base + tenant + "  - name: broken\n").write(toFile: path, atomically: true, encoding: .utf8)
        kill(process.pid, SIGHUP)
        try await Task.sleep(for: .milliseconds(500))
        #expect(try ExternalProcess.curl(["-H", "Host: extra.test", url]).stdout == "extra")
        #expect(process.log.contains("reload refused"))
        await backend.stop()
    }
}

/// SIGTERM drains: listeners close at once, requests in flight finish within `timeouts.drain`.
@Suite("Graceful shutdown", .serialized)
struct GracefulShutdownIntegrationTests {
    @Test("a request in flight when SIGTERM arrives is answered; new connections are refused; the exit is clean")
    func drainsInFlightRequests() async throws {
        let backend = try await TestBackend.start { _ in .delayed(.milliseconds(800), body: "finished") }
        let port = try ExternalProcess.freePort()
        let path = NSTemporaryDirectory() + "drain-\(UUID().uuidString).yaml"
        try """
        listen:
          http: ["127.0.0.1:\(port)"]
        timeouts:
          drain: 5s
        tenants:
          - name: slow
            domains: ["slow.test"]
            backends: ["127.0.0.1:\(backend.port)"]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path])
        #expect(process.waitUntilListening(port: port), "\(process.log)")

        let client = try RawClient(port: port)
        try client.send("GET / HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        try await Task.sleep(for: .milliseconds(200))
        kill(process.pid, SIGTERM)
        try await Task.sleep(for: .milliseconds(200))
        #expect((try? RawClient(port: port)) == nil, "the listener should be closed while draining")
        let response = client.receiveResponse(timeout: 5)
        #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(response.hasSuffix("finished"))
        #expect(process.stop(timeout: 8) == 0)
        await backend.stop()
    }
}

/// `switchyard status` against a running balancer, over the admin socket.
@Suite("Status over the admin socket", .serialized)
struct StatusIntegrationTests {
    @Test(
        "status lists tenants and backends with their health; a second balancer on the same socket or port is refused"
    )
    func status() async throws {
        let backend = try await TestBackend.start()
        let port = try ExternalProcess.freePort()
        let deadPort = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            tenants:
              - name: shop
                domains: ["shop.test"]
                backends: ["127.0.0.1:\(backend.port)", "127.0.0.1:\(deadPort)"]
                health: { interval: 100ms, timeout: 50ms, rise: 1, fall: 1 }
            """,
            port: port
        )
        defer { balancer.stop() }

        var report = ""
        for _ in 0..<30 {
            report = try balancer.admin(["status"]).stdout
            if report.contains("127.0.0.1:\(deadPort)  down"), report.contains("last check ok") { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(report.contains("shop  shop.test  tunnels 0/10000"))
        #expect(report.contains("127.0.0.1:\(backend.port)  up"))
        #expect(report.contains("127.0.0.1:\(deadPort)  down"))
        // Each backend shows its latest check: when, and why it failed.
        #expect(report.contains("127.0.0.1:\(backend.port)  up  connections 0  last check ok "), "\(report)")
        #expect(report.contains("127.0.0.1:\(deadPort)  down  connections 0  last check failed "), "\(report)")

        let json = try balancer.admin(["status", "--json"])
        let decoded = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect((decoded?["tenants"] as? [[String: Any]])?.first?["name"] as? String == "shop")

        let second = try ExternalProcess.run(
            "/usr/bin/env",
            [
                "SWITCHYARD_ADMIN=\(balancer.process.adminPath)", "SWITCHYARD_STATE=\(balancer.process.statePath)",
                ExternalProcess.switchyardBinary, "serve", "--config", balancer.configurationPath,
            ],
            timeout: 20
        )
        #expect(second.status != 0)
        // Whichever the second balancer meets first: the admin socket or the port.
        #expect(
            second.stdout.contains("is in use by another running balancer")
                || second.stdout.contains("is in use by another process"),
            "\(second.stdout)"
        )
        // With its own admin socket, it still may not share the port (SO_REUSEPORT would let it).
        let third = try ExternalProcess.run(
            "/usr/bin/env",
            [
                "SWITCHYARD_ADMIN=\(NSTemporaryDirectory())switchyard-third-\(UUID().uuidString.prefix(8)).sock",
                "SWITCHYARD_STATE=\(balancer.process.statePath)", ExternalProcess.switchyardBinary, "serve", "--config",
                balancer.configurationPath,
            ],
            timeout: 20
        )
        #expect(third.status != 0)
        #expect(third.stdout.contains("127.0.0.1:\(port) is in use by another process"), "\(third.stdout)")
        #expect(try balancer.admin(["status"]).status == 0)
        await backend.stop()
    }
}

/// SIGHUP with a broken certificate: refused with a log line, the running certificate kept, connections kept.
@Suite("Certificate reload on SIGHUP", .serialized)
struct CertificateReloadIntegrationTests {
    @Test("a certificate replaced by garbage is refused on SIGHUP and HTTPS goes on with the old one")
    func brokenCertificateKept() async throws {
        let backend = try await TestBackend.start(name: "tls-backend")
        let port = try ExternalProcess.freePort()
        let directory = NSTemporaryDirectory() + "cert-reload-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let certificate = directory + "/localhost.pem"
        let key = directory + "/localhost.key"
        try FileManager.default.copyItem(
            atPath: ExternalProcess.packageRoot + "/Certs/localhost.pem",
            toPath: certificate
        )
        try FileManager.default.copyItem(atPath: ExternalProcess.packageRoot + "/Certs/localhost.key", toPath: key)
        let path = directory + "/switchyard.yaml"
        try """
        listen:
          https: ["127.0.0.1:\(port)"]
        tls:
          certificate: \(certificate)
          key: \(key)
        tenants:
          - name: demo
            domains: ["demo.localhost"]
            backends: ["127.0.0.1:\(backend.port)"]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path])
        defer { process.stop() }
        #expect(process.waitUntilListening(port: port), "\(process.log)")
        let request = [
            "--cacert", ExternalProcess.packageRoot + "/Certs/dev-ca.pem",
            "--resolve", "demo.localhost:\(port):127.0.0.1", "https://demo.localhost:\(port)/",
        ]
        #expect(try ExternalProcess.curl(request).stdout == "tls-backend")

        try "not a certificate\n".write(toFile: certificate, atomically: true, encoding: .utf8)
        kill(process.pid, SIGHUP)
        var log = ""
        for _ in 0..<50 {
            log = process.log
            if log.contains("reload refused") { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(log.contains("reload refused"))
        #expect(log.contains(certificate))
        #expect(try ExternalProcess.curl(request).stdout == "tls-backend")
        await backend.stop()
    }
}
