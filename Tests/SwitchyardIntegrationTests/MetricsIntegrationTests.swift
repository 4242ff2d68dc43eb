import Foundation
import SwitchyardTestSupport
import Testing

/// `GET /metrics` end to end: the real `switchyard` binary after known traffic from real clients (curl, a Python
/// WebSocket client), its page read by Prometheus' own text-format parser (`prometheus_client.parser`), whose
/// numbers must be exactly the traffic's.
///
/// Serialized: its tests wait on child processes (see ``ControlPlaneIntegrationTests``).
@Suite("Prometheus metrics", .serialized)
struct MetricsIntegrationTests {
    /// Samples as the parser read them: `name{label="value",…}` (labels sorted by name) to value.
    typealias Samples = [String: Double]

    /// Parses a metrics page with `prometheus_client`; fails on anything it refuses, and on a family whose `TYPE`
    /// comes twice or whose lines are not together (what Prometheus itself rejects).
    static func parse(_ page: String) throws -> Samples {
        let script = """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            text = sys.stdin.read()
            seen, order = set(), []
            for line in text.splitlines():
                if line.startswith("# TYPE "):
                    name = line.split(" ")[2]
                    if name in seen:
                        sys.exit("TYPE of %s twice" % name)
                    seen.add(name)
            samples = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(sample.labels.items()))
                    key = sample.name + ("{" + labels + "}" if labels else "")
                    if key in samples:
                        sys.exit("sample %s twice" % key)
                    samples[key] = sample.value
            print(json.dumps(samples))
            """
        let output = try ExternalProcess.run("/usr/bin/env", ["python3", "-c", script], input: page)
        guard output.status == 0 else {
            throw Failure(description: "prometheus_client refused the page: \(output.stderr)\n\(page.prefix(2000))")
        }
        let object = try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Double]
        return object ?? [:]
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func scrape(_ url: String) throws -> (status: String, type: String, body: String) {
        let output = try ExternalProcess.curl(["-w", "\n%{http_code} %{content_type}", url])
        let lines = output.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        let last = lines.last.map(String.init) ?? ""
        let status = String(last.prefix(3))
        return (status, String(last.dropFirst(4)), lines.dropLast().joined(separator: "\n"))
    }

    /// Sums the samples of `name` whose labels contain every pair of `labels`.
    static func sum(_ samples: Samples, _ name: String, _ labels: [String: String] = [:]) -> Double {
        samples.filter { key, _ in
            guard key == name || key.hasPrefix(name + "{") else { return false }
            return labels.allSatisfy { key.contains("\($0.key)=\"\($0.value)\"") }
        }.values.reduce(0, +)
    }

    @Test("after known traffic every counter and gauge is exactly that traffic, as Prometheus' parser reads it")
    func countsKnownTraffic() async throws {
        let shop = try await TestBackend.start(name: "shop")
        let echo = try await WebSocketEchoBackend.start()
        let root = ExternalProcess.packageRoot
        // Four ports picked free a moment before the balancer binds them: another test may take one in between,
        // which the balancer refuses to start on; then the test picks again.
        var started: (balancer: ServedBalancer, closed: Int, port: Int, tlsPort: Int, metricsPort: Int)?
        for _ in 0..<3 where started == nil {
            let closed = try ExternalProcess.freePort()
            let port = try ExternalProcess.freePort()
            let tlsPort = try ExternalProcess.freePort()
            let metricsPort = try ExternalProcess.freePort()
            let configuration = """
                listen:
                  http: ["127.0.0.1:\(port)"]
                  https: ["127.0.0.1:\(tlsPort)"]
                tls: { certificate: \(root)/Certs/localhost.pem, key: \(root)/Certs/localhost.key }
                workers: 2
                metrics:
                  listen: 127.0.0.1:\(metricsPort)
                  tenant_histograms: [shop]
                tenants:
                  - name: shop
                    domains: [shop.demo.localhost]
                    backends: ["127.0.0.1:\(shop.port)"]
                  - name: gone
                    domains: [gone.demo.localhost]
                    backends: ["127.0.0.1:\(closed)"]
                    health: { path: /healthz, interval: 1s, timeout: 1s, fall: 1, rise: 1 }
                  - name: ws
                    domains: [ws.demo.localhost]
                    backends: ["127.0.0.1:\(echo.port)"]
                """
            do {
                started = (try ServedBalancer(configuration, port: port), closed, port, tlsPort, metricsPort)
            } catch let error as ServedBalancer.NotListening where error.description.contains("in use") {
                continue
            }
        }
        let (balancer, closed, port, tlsPort, metricsPort) = try #require(started)
        defer { balancer.stop() }
        let metricsURL = "http://127.0.0.1:\(metricsPort)/metrics"
        let waited = try await offThePool {
            // The metrics listener starts beside the data path; the down backend's first check takes up to 1 s.
            let deadline = Date().addingTimeInterval(15)
            while Date() < deadline {
                if let page = try? Self.scrape(metricsURL), page.status == "200",
                    page.body.contains(#"switchyard_backend_up{tenant="gone",backend="127.0.0.1:\#(closed)"} 0"#)
                {
                    return true
                }
                usleep(100_000)
            }
            return false
        }
        #expect(waited, "the backend of 'gone' never showed as down")

        let url = balancer.url
        let (sent, received) = try await offThePool { () -> (Int, Int) in
            // 6 requests over plain HTTP and 1 over HTTPS to shop; what curl sent and received, byte for byte.
            var sent = 0
            var received = 0
            for index in 0..<7 {
                var arguments = [
                    "-o", "/dev/null", "-w", "%{http_code} %{size_request} %{size_header} %{size_download}",
                ]
                if index == 6 {
                    arguments += [
                        "--cacert", root + "/Certs/dev-ca.pem", "--resolve", "shop.demo.localhost:\(tlsPort):127.0.0.1",
                        "https://shop.demo.localhost:\(tlsPort)/item",
                    ]
                } else {
                    arguments += ["-H", "Host: shop.demo.localhost", url + "/item?n=\(index)"]
                }
                let fields = try ExternalProcess.curl(arguments).stdout.split(separator: " ").compactMap { Int($0) }
                #expect(fields.first == 200, "\(fields)")
                if fields.count == 4 {
                    received += fields[1]
                    sent += fields[2] + fields[3]
                }
            }
            for _ in 0..<4 {
                let code = try ExternalProcess.curl([
                    "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: nobody.test", url,
                ])
                #expect(code.stdout == "404")
            }
            for _ in 0..<3 {
                let code = try ExternalProcess.curl([
                    "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: gone.demo.localhost", url,
                ])
                #expect(code.stdout == "503")
            }
            // Plain HTTP to the TLS port: a handshake failure of its own kind.
            _ = try ExternalProcess.curl(["-o", "/dev/null", "http://127.0.0.1:\(tlsPort)/"])
            return (sent, received)
        }

        // A WebSocket tunnel held open while the page is read.
        let client = try ChildProcess(
            "/usr/bin/env",
            [
                "python3", "-c",
                """
                import asyncio, socket, sys, websockets
                async def main():
                    sock = socket.create_connection(("127.0.0.1", \(port)), timeout=5)
                    async with websockets.connect("ws://ws.demo.localhost:\(port)/ws", sock=sock, ping_interval=None) as ws:
                        await ws.send("hello")
                        assert await ws.recv() == "hello"
                        print("open", flush=True)
                        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
                asyncio.run(main())
                """,
            ],
            stdin: .pipe
        )
        defer {
            client.closeInput()
            _ = client.finish(timeout: 10)
        }
        let opened = try await offThePool { client.readSome(timeout: 20) }
        guard opened.hasPrefix("open") else {
            client.closeInput()
            let errors = client.finish(timeout: 10).stderr
            Issue.record(
                "the WebSocket client did not connect: \(errors.suffix(300))\n\(balancer.process.log.suffix(1500))"
            )
            return
        }

        let page = try await offThePool { try Self.scrape(metricsURL) }
        #expect(page.status == "200")
        #expect(page.type == "text/plain; version=0.0.4; charset=utf-8")
        let body = page.body
        let samples = try await offThePool { try Self.parse(body) }
        let shopLabels = ["tenant": "shop"]
        #expect(Self.sum(samples, "switchyard_tenant_http_requests_total", ["tenant": "shop", "code": "2xx"]) == 7)
        #expect(Self.sum(samples, "switchyard_tenant_http_requests_total", shopLabels) == 7)
        #expect(Self.sum(samples, "switchyard_tenant_received_bytes_total", shopLabels) == Double(received))
        #expect(Self.sum(samples, "switchyard_tenant_sent_bytes_total", shopLabels) == Double(sent))
        #expect(Self.sum(samples, "switchyard_backend_requests_total", shopLabels) == 7)
        #expect(Self.sum(samples, "switchyard_tenant_http_requests_total", ["tenant": "gone", "code": "5xx"]) == 3)
        #expect(Self.sum(samples, "switchyard_backend_up", ["tenant": "gone"]) == 0)
        #expect(Self.sum(samples, "switchyard_backend_state", ["tenant": "gone", "state": "down"]) == 1)
        #expect(Self.sum(samples, "switchyard_tenant_backends_available", ["tenant": "gone"]) == 0)
        #expect(Self.sum(samples, "switchyard_health_checks_total", ["result": "failed"]) >= 1)
        #expect(Self.sum(samples, "switchyard_http_unknown_host_requests_total") == 4)
        #expect(Self.sum(samples, "switchyard_http_requests_total", ["code": "1xx"]) == 1)
        #expect(Self.sum(samples, "switchyard_http_requests_total", ["code": "2xx"]) == 7)
        #expect(Self.sum(samples, "switchyard_http_requests_total", ["code": "4xx"]) == 4)
        #expect(Self.sum(samples, "switchyard_http_requests_total", ["code": "5xx"]) == 3)
        #expect(Self.sum(samples, "switchyard_http_request_duration_seconds_count") == 15)
        #expect(Self.sum(samples, "switchyard_tenant_http_request_duration_seconds_count", shopLabels) == 7)
        #expect(Self.sum(samples, "switchyard_tenant_tunnels", ["tenant": "ws"]) == 1)
        #expect(Self.sum(samples, "switchyard_tenant_tunnels_opened_total", ["tenant": "ws"]) == 1)
        #expect(Self.sum(samples, "switchyard_tenant_connections", ["tenant": "ws"]) == 1)
        #expect(Self.sum(samples, "switchyard_tenant_received_bytes_total", ["tenant": "ws"]) > 0)
        // 6 + 1 + 4 + 3 requests, the plain-HTTP probe of the TLS port, the tunnel, and the connect that told the
        // test the balancer listens: one connection each.
        #expect(Self.sum(samples, "switchyard_client_connections_accepted_total") == 17)
        #expect(Self.sum(samples, "switchyard_client_connections") == 1)
        #expect(Self.sum(samples, "switchyard_tls_handshakes_total", ["version": "TLSv1.3"]) == 1)
        #expect(Self.sum(samples, "switchyard_tls_handshake_failures_total", ["reason": "plaintext_http"]) == 1)
        #expect(Self.sum(samples, "switchyard_tenants") == 3)
        #expect(Self.sum(samples, "process_resident_memory_bytes") > 1_000_000)
        #expect(Self.sum(samples, "process_open_fds") > 5)
        #expect(samples.keys.contains { $0.hasPrefix("switchyard_build_info{") })

        // The same page on the admin socket; narrowed by tenant and by scope; a bad query is a 400.
        let admin = try ExternalProcess.curl([
            "--unix-socket", balancer.process.adminPath, "http://localhost/metrics?tenant=shop",
        ])
        let adminPage = admin.stdout
        let narrowed = try await offThePool { try Self.parse(adminPage) }
        #expect(Self.sum(narrowed, "switchyard_tenant_http_requests_total") == 7)
        #expect(!narrowed.keys.contains { $0.contains("tenant=\"ws\"") || $0.contains("tenant=\"gone\"") })
        #expect(!narrowed.keys.contains { $0.hasPrefix("switchyard_http_requests_total") })
        #expect(Self.sum(narrowed, "switchyard_tenant_http_request_duration_seconds_count") == 7)
        let global = try await offThePool { try Self.parse(try Self.scrape(metricsURL + "?scope=global").body) }
        #expect(Self.sum(global, "switchyard_http_unknown_host_requests_total") == 4)
        #expect(!global.keys.contains { $0.hasPrefix("switchyard_tenant_") || $0.hasPrefix("switchyard_backend_") })
        let bad = try Self.scrape(metricsURL + "?scope=everything")
        #expect(bad.status == "400")
        #expect(bad.body.contains("unknown scope 'everything'"))
        #expect(try Self.scrape("http://127.0.0.1:\(metricsPort)/v1/status").status == "404")

        client.closeInput()
        await shop.stop()
        await echo.stop()
    }
}
