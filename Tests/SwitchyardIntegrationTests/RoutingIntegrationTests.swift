import NIOCore
import NIOHTTP1
import Testing

@testable import Switchyard

/// Routing over real loopback sockets with curl: tenants by `Host`, unknown hosts, keep-alive on both sides.
@Suite("Routing and keep-alive over loopback", .serialized)
struct RoutingIntegrationTests {
    @Test("three tenants' Host headers reach their own backends; an unknown host gets 404 and is never forwarded")
    func threeTenants() async throws {
        let shop = try await TestBackend.start(name: "shop")
        let blog = try await TestBackend.start(name: "blog")
        let wiki = try await TestBackend.start(name: "wiki")
        try await withProxy(
            backends: [shop, blog, wiki],
            tenants: [
                ("shop", ["shop.test", "*.shop.test"], [shop]),
                ("blog", ["blog.test"], [blog]),
                ("wiki", ["wiki.test"], [wiki]),
            ]
        ) { proxy in
            let url = "http://127.0.0.1:\(proxy.port)/"
            for (host, expected) in [
                ("shop.test", "shop"), ("WWW.Shop.Test:8080", "shop"), ("blog.test", "blog"), ("wiki.test.", "wiki"),
            ] {
                let output = try ExternalProcess.curl(["-H", "Host: \(host)", url])
                #expect(output.stdout == expected, "Host \(host)")
            }
            let unknown = try ExternalProcess.curl(["-i", "-H", "Host: nobody.test", url])
            #expect(unknown.stdout.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
            #expect(unknown.stdout.contains("nobody.test"))
            let total = shop.requests.count + blog.requests.count + wiki.requests.count
            #expect(total == 4)
        }
    }

    @Test(
        "an absolute-form request (curl through a proxy) is routed by its target, which the backend gets as origin-form"
    )
    func absoluteForm() async throws {
        let shop = try await TestBackend.start(name: "shop")
        let blog = try await TestBackend.start(name: "blog")
        try await withProxy(
            backends: [shop, blog],
            tenants: [("shop", ["shop.test"], [shop]), ("blog", ["blog.test"], [blog])]
        ) { proxy in
            let output = try ExternalProcess.curl([
                "--request-target", "http://blog.test/page?x=1", "-H", "Host: shop.test",
                "http://127.0.0.1:\(proxy.port)/",
            ])
            #expect(output.stdout == "blog")
            #expect(shop.requests.isEmpty)
            let seen = try #require(blog.requests.first)
            #expect(seen.head.uri == "/page?x=1")
            #expect(seen.head.headers["Host"] == ["blog.test"])
        }
    }

    @Test("keep-alive is reused on both sides, forwarding headers are set and hop-by-hop ones removed")
    func keepAliveBothSides() async throws {
        let backend = try await TestBackend.start(name: "one")
        try await withProxy(backends: [backend], tenants: [("shop", ["shop.test"], [backend])]) { proxy in
            let client = try RawClient(port: proxy.port)
            for index in 0..<5 {
                try client.send(
                    "GET /\(index) HTTP/1.1\r\nHost: shop.test\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.9.9.9\r\n"
                        + "X-Real-IP: 6.6.6.6\r\nTE: trailers\r\nConnection: keep-alive, TE\r\n\r\n"
                )
                let response = client.receiveResponse()
                #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
                #expect(response.hasSuffix("\r\n\r\none"))
            }
            // One client connection, one backend connection: both were kept alive.
            #expect(backend.connectionCount == 1)
            let requests = backend.requests
            try #require(requests.count == 5)
            let headers = requests[0].head.headers
            #expect(headers["X-Forwarded-For"] == ["10.9.9.9, 127.0.0.1"])
            #expect(headers["X-Real-IP"] == ["127.0.0.1"])
            #expect(headers["X-Forwarded-Proto"] == ["http"])
            #expect(headers["X-Forwarded-Host"] == ["shop.test"])
            #expect(headers["Keep-Alive"].isEmpty)
            #expect(headers["TE"].isEmpty)
            #expect(headers["Connection"].isEmpty)
        }
    }

    @Test("tenants whose backends share an address share its idle connections")
    func sharedPool() async throws {
        let backend = try await TestBackend.start(name: "shared")
        let tenants = (0..<20).map { ("t\($0)", ["t\($0).test"], [backend]) }
        try await withProxy(backends: [backend], tenants: tenants, workers: 1) { proxy in
            let client = try RawClient(port: proxy.port)
            for round in 0..<2 {
                for index in 0..<20 {
                    try client.send("GET /\(round) HTTP/1.1\r\nHost: t\(index).test\r\n\r\n")
                    #expect(client.receiveResponse().hasSuffix("\r\n\r\nshared"))
                }
            }
            // 40 requests for 20 tenants on one client connection: one backend connection carried them all (with a
            // pool per tenant's backend it took 20).
            #expect(backend.connectionCount == 1)
            #expect(backend.requests.count == 40)
        }
    }

    @Test("pipelined requests are answered in order")
    func pipelining() async throws {
        let backend = try await TestBackend.start { head in .respond(body: "path=\(head.uri)") }
        try await withProxy(backends: [backend], tenants: [("shop", ["shop.test"], [backend])]) { proxy in
            let client = try RawClient(port: proxy.port)
            try client.send(
                "GET /a HTTP/1.1\r\nHost: shop.test\r\n\r\nGET /b HTTP/1.1\r\nHost: shop.test\r\n\r\n"
                    + "GET /c HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
            )
            let (text, closed) = client.receive(timeout: 5)
            #expect(closed)
            let bodies = text.components(separatedBy: "\r\n\r\n").dropFirst().map { $0.prefix(7) }
            #expect(bodies == ["path=/a", "path=/b", "path=/c"])
        }
    }

    @Test("round robin spreads requests over a tenant's backends")
    func roundRobin() async throws {
        let first = try await TestBackend.start(name: "first")
        let second = try await TestBackend.start(name: "second")
        try await withProxy(
            backends: [first, second],
            tenants: [("shop", ["shop.test"], [first, second])],
            workers: 1
        ) { proxy in
            var seen: [String] = []
            for _ in 0..<4 {
                seen.append(
                    try ExternalProcess.curl(["-H", "Host: shop.test", "http://127.0.0.1:\(proxy.port)/"]).stdout
                )
            }
            #expect(seen.filter { $0 == "first" }.count == 2)
            #expect(seen.filter { $0 == "second" }.count == 2)
        }
    }
}

/// `balance: least_connections` on real sockets: a backend busy with a slow request is passed over.
@Suite("Least connections over loopback", .serialized)
struct LeastConnectionsIntegrationTests {
    @Test("while one backend serves a request that does not end, the others get the new ones")
    func spreadsToIdleBackend() async throws {
        let behavior: @Sendable (HTTPRequestHead) -> TestBackend.Behavior = { head in
            head.uri == "/slow" ? .hang : .name
        }
        let first = try await TestBackend.start(name: "first", behavior: behavior)
        let second = try await TestBackend.start(name: "second", behavior: behavior)
        let harness = try await ProxyHarness.start(
            tenants: [("shop", ["shop.test"], [first.address, second.address])],
            workers: 1
        ) { configuration in
            configuration.tenants[0].balance = .leastConnections
            // The request that never ends is cut at stop after this.
            configuration.timeouts.drain = .milliseconds(200)
        }
        let slow = try RawClient(port: harness.port)
        try slow.send("GET /slow HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        // Wait until the slow request has reached its backend (the machine may be busy).
        var busy = ""
        for _ in 0..<100 where busy.isEmpty {
            if first.requests.contains(where: { $0.head.uri == "/slow" }) {
                busy = "first"
            } else if second.requests.contains(where: { $0.head.uri == "/slow" }) {
                busy = "second"
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        #expect(!busy.isEmpty)
        var names: [String] = []
        for _ in 0..<4 {
            names.append(
                try ExternalProcess.curl(["-H", "Host: shop.test", "http://127.0.0.1:\(harness.port)/"]).stdout
            )
        }
        #expect(names.allSatisfy { $0 != busy && !$0.isEmpty }, "\(names), busy \(busy)")
        // The slow request is still in progress: its backend was passed over the whole time.
        #expect(slow.receive(timeout: 0.1).text.isEmpty)
        await harness.stop()
        await first.stop()
        await second.stop()
    }
}
