import NIOCore
import Testing

@testable import Switchyard

/// What clients see when something is wrong (DESIGN.md's table), on real sockets.
@Suite("Errors over loopback", .serialized)
struct ErrorIntegrationTests {
    @Test("a backend that refuses connections gives 502")
    func backendDown() async throws {
        let port = try ExternalProcess.freePort()
        let harness = try await ProxyHarness.start(
            tenants: [("shop", ["shop.test"], [try SocketAddress(ipAddress: "127.0.0.1", port: port)])]
        )
        defer { Task { await harness.stop() } }
        let output = try ExternalProcess.curl(["-i", "-H", "Host: shop.test", "http://127.0.0.1:\(harness.port)/"])
        #expect(output.stdout.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        await harness.stop()
    }

    @Test("a backend slower than upstream_response gives 504")
    func slowBackend() async throws {
        let backend = try await TestBackend.start { _ in .hang }
        try await withProxy(
            backends: [backend],
            tenants: [("shop", ["shop.test"], [backend])],
            timeouts: .init(upstreamResponse: .milliseconds(300))
        ) { proxy in
            let started = ContinuousClock.now
            let output = try ExternalProcess.curl(["-i", "-H", "Host: shop.test", "http://127.0.0.1:\(proxy.port)/"])
            #expect(output.stdout.hasPrefix("HTTP/1.1 504 Gateway Timeout\r\n"))
            #expect(ContinuousClock.now - started < .seconds(3))
        }
    }

    @Test(
        "smuggling shapes get 400, the connection closes and the backend sees nothing",
        arguments: [
            "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Bad : a\r\n\r\n",
            "GET / HTTP/1.1\nHost: shop.test\n\n",
            "GET / HTTP/1.1\r\nHost: shop.test\r\nHost: other.test\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            // Issue 9: trailers that are no trailer fields, targets that are no path, lower-case methods, empty or
            // folded Transfer-Encoding.
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnocolon\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: x\r\n\r\n",
            "GET a/b HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "GET shop.test:80 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "GET @evil.example/x HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "GET ftp://shop.test/a HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "GET http:/shop.test/a HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "Connect shop.test:443 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\nabc",
        ]
    )
    func smuggling(request: String) async throws {
        let backend = try await TestBackend.start()
        try await withProxy(backends: [backend], tenants: [("shop", ["shop.test"], [backend])]) { proxy in
            let client = try RawClient(port: proxy.port)
            try client.send(request)
            let (text, closed) = client.receive(timeout: 3)
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
            #expect(text.contains("Connection: close\r\n"))
            #expect(closed)
            #expect(backend.connectionCount == 0)
        }
    }

    @Test("an oversized header section gets 431")
    func headerTooLarge() async throws {
        let backend = try await TestBackend.start()
        try await withProxy(
            backends: [backend],
            tenants: [("shop", ["shop.test"], [backend])],
            limits: .init(maxHeaderBytes: 4096)
        ) { proxy in
            let client = try RawClient(port: proxy.port)
            try client.send(
                "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Big: \(String(repeating: "a", count: 5000))\r\n\r\n"
            )
            let (text, closed) = client.receive(timeout: 3)
            #expect(text.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"))
            #expect(closed)
            #expect(backend.connectionCount == 0)
        }
    }

    @Test("a client that trickles its head is answered 408 after client_header")
    func slowloris() async throws {
        let backend = try await TestBackend.start()
        try await withProxy(
            backends: [backend],
            tenants: [("shop", ["shop.test"], [backend])],
            timeouts: .init(clientHeader: .milliseconds(300))
        ) { proxy in
            let client = try RawClient(port: proxy.port)
            try client.send("GET / HTTP/1.1\r\nHost: shop.test\r\n")
            let (text, closed) = client.receive(timeout: 3)
            #expect(text.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
            #expect(closed)
            #expect(backend.connectionCount == 0)
        }
    }
}
