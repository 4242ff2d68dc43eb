import NIOCore
import Testing

@testable import Switchyard

/// The state machine against the hostile clients of issue 9: a client that pipelines requests and never reads, a
/// client that stops reading a large answer, open redirects, protocol upgrades other than WebSocket, smuggling
/// through trailers, a backend switching protocols unasked and forwarding fields spelt with underscores.
@Suite("Hostile clients")
struct HostileClientTests {
    private typealias Timeout = ProxyStateMachineHarness.Timeout

    private func harness(
        scheme: StaticString = "http",
        forwardsUnderscoreFields: Bool = false
    ) throws
        -> ProxyStateMachineHarness
    {
        let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        let routes = RouteSource(
            try RouteTable(tenants: [
                Tenant(name: "shop", domains: ["shop.test"], backends: [backend]),
                Tenant(
                    name: "duo",
                    domains: ["duo.test"],
                    backends: [backend, Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9002))]
                ),
                Tenant(name: "redir", domains: ["redir.test"], backends: [backend], httpsRedirect: true),
                Tenant(
                    name: "grpc",
                    domains: ["grpc.test"],
                    backends: [backend],
                    upgradeProtocols: ["websocket", "h2c"]
                ),
            ])
        )
        return ProxyStateMachineHarness(
            routes: routes,
            scheme: scheme,
            httpsPort: 8443,
            forwardsUnderscoreFields: forwardsUnderscoreFields
        )
    }

    /// How many answers with `status` the actions carry, and their bytes.
    private func answers(_ actions: [String], status: String) -> (count: Int, bytes: Int) {
        let written = actions.filter { $0.hasPrefix("client ") }.map { $0.dropFirst("client ".count) }
        let count = written.map { $0.components(separatedBy: "HTTP/1.1 \(status) ").count - 1 }.reduce(0, +)
        return (count, written.map(\.utf8.count).reduce(0, +))
    }

    // MARK: Defect 1: answers of the balancer's own are bounded

    @Test("pipelined requests the balancer answers itself are processed only while the client takes the answers")
    func ownAnswersAreBounded() throws {
        var h = try harness()
        let request = "GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n"
        let total = 2000
        let first = h.client(String(repeating: request, count: total))
        let (answered, bytes) = answers(first, status: "404")
        #expect(answered > 0)
        #expect(answered < total)
        // At most the budget and one answer more are queued before the client must take them.
        #expect(bytes <= ProxyStateMachine.answerBudget + 200)
        #expect(h.machine.isAwaitingClientDrain)
        #expect(!h.machine.wantsClientBytes)

        // Each time the transport reports the output drained, one more budget's worth is answered.
        var count = answered
        for _ in 0..<total {
            guard h.machine.isAwaitingClientDrain else { break }
            let more = h.clientOutputDrained()
            count += answers(more, status: "404").count
        }
        #expect(count == total)
        #expect(h.machine.wantsClientBytes)
        #expect(h.state == .idle)
    }

    @Test("503s for a tenant without backends count against the same budget")
    func failedExchangesAreBounded() throws {
        var h = try harness()
        var answered = 0
        var actions = h.client(String(repeating: "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n", count: 1000))
        var rounds = 0
        while actions.contains(where: { $0.hasPrefix("acquire") }), rounds < 1000 {
            actions = h.noBackendAvailable()
            answered += answers(actions, status: "503").count
            rounds += 1
        }
        #expect(h.machine.isAwaitingClientDrain)
        #expect(answered < 1000)
    }

    // MARK: Defects 2 and 3: a client that stops reading

    @Test("a client that stops reading a large answer does not get the backend blamed, and is closed after client_send")
    func stalledClientIsNotTheBackendsFault() throws {
        var h = try harness()
        #expect(h.client("GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\nxxxx")
        #expect(h.clientWritable(false) == [])
        // Well past upstream_response: the balancer was not reading the backend, so it is not the backend's fault.
        #expect(h.advance(Timeout.upstreamResponse + .seconds(5)) == [])
        // client_send after the stall began, the client is dropped without waiting for a flush.
        let actions = h.advance(Timeout.clientSend - Timeout.upstreamResponse - .seconds(5))
        #expect(actions == ["release closed", "close", "reset"])
        #expect(!actions.contains { $0.hasPrefix("backend failed") })
        #expect(h.state == .closed)
    }

    @Test("once the client reads again, the backend's response timeout starts over")
    func responseTimeoutResumes() throws {
        var h = try harness()
        _ = h.client("GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        _ = h.attach()
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\nxxxx")
        _ = h.clientWritable(false)
        #expect(h.advance(.seconds(40)) == [])
        _ = h.clientWritable(true)
        #expect(h.advance(Timeout.upstreamResponse - .seconds(1)) == [])
        let actions = h.advance(.seconds(1))
        #expect(actions.first == "backend failed shop")
        #expect(actions.contains("release closed"))
    }

    @Test("a stall shorter than client_send, ended by the client, closes nothing")
    func shortStall() throws {
        var h = try harness()
        _ = h.client("GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
        _ = h.clientWritable(false)
        #expect(h.advance(Timeout.clientSend - .seconds(1)) == [])
        _ = h.clientWritable(true)
        #expect(h.advance(.seconds(2)) == [])
        #expect(h.state == .idle)
    }

    @Test("a closed connection whose client never takes the last answer is reset after client_send")
    func closeDoesNotWaitForever() throws {
        var h = try harness()
        let refused = h.client("GET / HTTP/1.1\r\n\r\n")
        #expect(refused.last == "close")
        #expect(h.advance(.seconds(1)) == [])
        #expect(h.advance(Timeout.clientSend - .seconds(1)) == [])
        #expect(h.advance(.seconds(1)) == ["reset"])
        #expect(h.advance(Timeout.clientSend * 2) == [])
    }

    // MARK: Defect 4: out of descriptors

    @Test("a backend connect that fails for lack of descriptors is answered 503 at once, no other backend tried")
    func localShortage() throws {
        var h = try harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: duo.test\r\n\r\n") == ["acquire duo"])
        let actions = h.connectFailed(.localShortage)
        #expect(actions.count == 1)
        #expect(actions.first?.hasPrefix("client HTTP/1.1 503 Service Unavailable\r\n") == true)
        #expect(actions.first?.contains("Retry-After") == true)
        #expect(h.state == .idle)
    }

    // MARK: Defects 5 and 9: redirects go to the same host

    @Test(
        "the redirect location is the same host with the target's path, whatever the target's form",
        arguments: [
            ("GET http://redir.test/a?b HTTP/1.1\r\nHost: other.test\r\n\r\n", "https://redir.test:8443/a?b"),
            ("GET http://redir.test HTTP/1.1\r\nHost: redir.test\r\n\r\n", "https://redir.test:8443/"),
            ("GET HTTP://redir.test?q HTTP/1.1\r\nHost: redir.test\r\n\r\n", "https://redir.test:8443/?q"),
            ("OPTIONS * HTTP/1.1\r\nHost: redir.test\r\n\r\n", "https://redir.test:8443/"),
            ("GET //evil.example/x HTTP/1.1\r\nHost: redir.test\r\n\r\n", "https://redir.test:8443//evil.example/x"),
        ]
    )
    func redirectStaysOnHost(request: String, location: String) throws {
        var h = try harness()
        let actions = h.client(request)
        #expect(actions.first?.contains("\r\nLocation: \(location)\r\n") == true, "\(actions)")
    }

    @Test(
        "targets that could move a redirect to another host are refused before routing",
        arguments: ["@evil.example/x", ".evil.example/x", "evil.example/x", "*"]
    )
    func redirectTargetsRefused(target: String) throws {
        var h = try harness()
        let actions = h.client("GET \(target) HTTP/1.1\r\nHost: redir.test\r\n\r\n")
        #expect(actions.first?.hasPrefix("client HTTP/1.1 400 Bad Request\r\n") == true, "\(actions)")
        #expect(!actions.contains { $0.contains("Location") })
    }

    // MARK: Defect 7: only WebSocket is tunnelled unless the tenant allows more

    @Test("Upgrade: h2c is stripped: the request goes as plain HTTP on a pooled connection")
    func h2cIsStripped() throws {
        var h = try harness()
        let request =
            "GET /internal HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            + "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        #expect(h.client(request) == ["acquire shop"])
        let forwarded = h.attach()
        #expect(forwarded.count == 1)
        let head = forwarded.first ?? ""
        #expect(head.hasPrefix("upstream GET /internal HTTP/1.1\r\nHost: shop.test\r\n"))
        #expect(!head.lowercased().contains("upgrade"))
        #expect(!head.lowercased().contains("http2-settings"))
        // A backend that switches anyway gets a 502, not a raw tunnel.
        let actions = h.upstream("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        #expect(actions.first == "backend failed shop")
        #expect(actions.last?.hasPrefix("client HTTP/1.1 502 Bad Gateway\r\n") == true)
        #expect(h.state != .tunnel)
    }

    @Test("an unknown protocol is stripped too; websocket in any case is tunnelled")
    func otherProtocols() throws {
        var h = try harness()
        #expect(
            h.client("GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: foo/1\r\n\r\n") == [
                "acquire shop"
            ]
        )
        var ws = try harness()
        #expect(
            ws.client("GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: WebSocket\r\n\r\n") == [
                "acquire shop fresh"
            ]
        )
        #expect(ws.attach().first?.contains("\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n") == true)
    }

    @Test("a tenant that allows h2c gets the upgrade with its HTTP2-Settings")
    func allowedH2c() throws {
        var h = try harness()
        let request =
            "GET / HTTP/1.1\r\nHost: grpc.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            + "HTTP2-Settings: AAMA\r\n\r\n"
        #expect(h.client(request) == ["acquire grpc fresh"])
        let head = h.attach().first ?? ""
        #expect(head.contains("\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA\r\nConnection: upgrade, HTTP2-Settings\r\n"))
        _ = h.upstream("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        #expect(h.state == .tunnel)
    }

    // MARK: Defect 8: trailers

    @Test(
        "a trailer section that is not trailer fields is refused before anything is forwarded",
        arguments: [
            "0\r\nnocolon\r\n\r\n",
            "0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            "0\r\nHost: x\r\n\r\n",
            "0\r\nContent-Length: 5\r\n\r\n",
            "0\r\nX-Ok : 1\r\n\r\n",
            "0\r\n folded: 1\r\n\r\n",
        ]
    )
    func trailersRefused(trailer: String) throws {
        var h = try harness()
        let actions = h.client(
            "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n" + trailer
        )
        #expect(actions.first?.hasPrefix("client HTTP/1.1 400 Bad Request\r\n") == true, "\(actions)")
        #expect(!actions.contains { $0.hasPrefix("acquire") })
    }

    @Test("a well-formed trailer field is forwarded with the body")
    func trailerForwarded() throws {
        var h = try harness()
        let body = "3\r\nabc\r\n0\r\nX-Checksum: 42\r\n\r\n"
        #expect(
            h.client("POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n" + body) == [
                "acquire shop"
            ]
        )
        #expect(h.attach().first?.hasSuffix("\r\n\r\n" + body) == true)
    }

    // MARK: Defect 6: log lines

    @Test("the access log record's target is escaped: a quote or backslash cannot end or bend the quoted field")
    func targetEscapedForTheLog() throws {
        let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        var h = ProxyStateMachineHarness(
            routes: RouteSource(
                try RouteTable(tenants: [Tenant(name: "shop", domains: ["shop.test"], backends: [backend])])
            ),
            accessLog: true
        )
        _ = h.client("GET /a\"b\\c HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
        #expect(h.logs.first?.target == "/a\\x22b\\x5Cc")
        #expect(h.logs.first?.method == "GET")
    }

    // MARK: Defect 10: underscores

    @Test("fields spelt with underscores do not reach the backend next to the balancer's own")
    func underscoresDropped() throws {
        var h = try harness()
        _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n\r\n")
        let head = h.attach().first ?? ""
        #expect(!head.contains("6.6.6.6"))
        #expect(!head.contains("X_Forwarded_Proto"))
        #expect(head.contains("\r\nX-Real-IP: \(ProxyStateMachineHarness.clientAddress)\r\n"))

        var keeping = try harness(forwardsUnderscoreFields: true)
        _ = keeping.client("GET / HTTP/1.1\r\nHost: shop.test\r\nX_Custom: 1\r\n\r\n")
        #expect(keeping.attach().first?.contains("\r\nX_Custom: 1\r\n") == true)
    }
}
