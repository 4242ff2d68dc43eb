import NIOCore
import Testing

@testable import Switchyard

/// Health checks every 100 ms, so that a stopped backend is down, and a restarted one up, within a few hundred
/// milliseconds.
private let fastHealth = HealthCheckConfiguration(
    path: "/healthz",
    interval: .milliseconds(100),
    timeout: .milliseconds(100),
    rise: 2,
    fall: 3
)

private let cookieName = "shop_route"
private let sticky = StickySessionConfiguration(cookie: cookieName, maxAge: .hours(1))

/// The cookie value naming the backend on `port` of tenant `shop`: FNV-1a (64 bit) of `shop`, a NUL byte and
/// `127.0.0.1:PORT`, as 16 hex digits. Computed here rather than by ``StickyCookie``, so that the test checks what
/// the balancer sends against the definition.
private func cookieValue(port: Int) -> String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in Array("shop".utf8) + [0] + Array("127.0.0.1:\(port)".utf8) {
        hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
    }
    let digits = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// The `Set-Cookie` value the balancer sends to pin a client to the backend whose cookie value is `value`.
private func setCookie(_ value: String) -> String {
    "\(cookieName)=\(value); Path=/; HttpOnly; Max-Age=3600; SameSite=Lax"
}

extension HealthHarness.Reply {
    /// The values of the answer's `Set-Cookie` fields.
    fileprivate var setCookies: [String] {
        head.split(separator: "\r\n").compactMap { line in
            guard line.lowercased().hasPrefix("set-cookie:") else { return nil }
            return String(line.dropFirst("set-cookie:".count).drop { $0 == " " })
        }
    }
}

extension HealthHarness {
    /// `GET path` on a new connection, with the sticky cookie set to `cookie` if given.
    fileprivate func get(_ path: String = "/", cookie: String?) throws -> Reply {
        try get(path, headers: cookie.map { [("Cookie", "theme=dark; \(cookieName)=\($0)")] } ?? [])
    }
}

/// Runs `body` with three backends `a`, `b` and `c` (each answers with its name) behind a balancer whose tenant has
/// sticky sessions (cookie `shop_route`, max age 1 h).
private func withStickyProxy(
    health: HealthCheckConfiguration = fastHealth,
    _ body: (HealthHarness, [RestartableBackend]) async throws -> Void
) async throws {
    var backends: [RestartableBackend] = []
    for name in ["a", "b", "c"] {
        backends.append(try await RestartableBackend.start(name: name))
    }
    try await stopping(backends.map { $0.stop }) {
        try await withHealthProxy(backends: backends.map(\.address), health: health, sticky: sticky) { proxy in
            try await body(proxy, backends)
        }
    }
}

/// A client pinned to a backend: the backend, its index in the tenant and the cookie value naming it.
private struct Pin {
    var backend: RestartableBackend
    var index: Int
    var value: String
}

/// Sends a request without the cookie and checks that the answer pins the client to the backend that served it.
private func pinNewClient(
    _ proxy: HealthHarness,
    _ backends: [RestartableBackend],
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> Pin {
    let reply = try proxy.get(cookie: nil)
    #expect(reply.status == 200, "\(reply.head)", sourceLocation: sourceLocation)
    let index = try #require(
        backends.firstIndex { $0.name == reply.body },
        "\(reply.head)",
        sourceLocation: sourceLocation
    )
    let value = cookieValue(port: backends[index].port)
    #expect(reply.setCookies == [setCookie(value)], "\(reply.head)", sourceLocation: sourceLocation)
    // A shared cache must not hand this answer, and its cookie, to other clients.
    #expect(
        reply.head.split(separator: "\r\n").contains("Cache-Control: private"),
        "\(reply.head)",
        sourceLocation: sourceLocation
    )
    return Pin(backend: backends[index], index: index, value: value)
}

/// Sends `count` requests with the cookie `pin.value`, each on a new connection, and checks that every one is
/// served by `pin.backend` and answered without a `Set-Cookie`.
private func expectPinned(
    _ proxy: HealthHarness,
    _ pin: Pin,
    count: Int,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    for index in 0..<count {
        let reply = try proxy.get("/\(index)", cookie: pin.value)
        #expect(reply.status == 200, "request \(index): \(reply.head)", sourceLocation: sourceLocation)
        #expect(reply.body == pin.backend.name, "request \(index)", sourceLocation: sourceLocation)
        #expect(reply.setCookies.isEmpty, "request \(index): \(reply.head)", sourceLocation: sourceLocation)
    }
}

/// Pins a client, stops its backend, waits (bounded) until the health checker marks it down, then sends the client's
/// next request with the old cookie: it must succeed on another backend and re-pin the client there.
/// - Returns: the original pin and the new one.
private func moveAfterBackendStops(
    _ proxy: HealthHarness,
    _ backends: [RestartableBackend]
) async throws -> (old: Pin, new: Pin) {
    let old = try pinNewClient(proxy, backends)
    try #require(await HealthHarness.waitUntil(.seconds(10)) { old.backend.healthRequests >= 1 })
    await old.backend.stop()
    let status = proxy.backends[old.index].status
    try #require(await HealthHarness.waitUntil(.seconds(10)) { !status.isActivelyUp })

    let moved = try proxy.get(cookie: old.value)
    #expect(moved.status == 200, "\(moved.head)")
    let index = try #require(backends.firstIndex { $0.name == moved.body }, "\(moved.head)")
    #expect(index != old.index)
    let new = Pin(backend: backends[index], index: index, value: cookieValue(port: backends[index].port))
    #expect(moved.setCookies == [setCookie(new.value)], "\(moved.head)")
    return (old, new)
}

/// Sticky sessions end to end on loopback: the in-process balancer with its health checker, three real backends that
/// answer with their names, and clients that send back the cookie they were given, as browsers do.
@Suite("Sticky sessions over loopback", .serialized)
struct StickySessionIntegrationTests {
    @Test(
        "a new client gets a cookie naming its backend; with it 20 requests stay there, and a second client keeps its own"
    )
    func cookiePinsClients() async throws {
        try await withStickyProxy { proxy, backends in
            let first = try pinNewClient(proxy, backends)
            // Without the cookie these would go round the three backends.
            try expectPinned(proxy, first, count: 20)
            #expect(first.backend.clientRequests == 21)
            #expect(backends.filter { $0 !== first.backend }.allSatisfy { $0.clientRequests == 0 })

            // More new clients: each is pinned where it lands; round robin soon puts one elsewhere.
            var second: Pin?
            for _ in 0..<6 where second == nil {
                let pin = try pinNewClient(proxy, backends)
                if pin.index != first.index { second = pin }
            }
            let other = try #require(second, "six new clients all landed on \(first.backend.name)")
            for _ in 0..<5 {
                try expectPinned(proxy, first, count: 2)
                try expectPinned(proxy, other, count: 2)
            }
        }
    }

    @Test("a cookie naming no backend of the tenant is ignored: the request is balanced and a cookie issued")
    func unknownCookie() async throws {
        try await withStickyProxy { proxy, backends in
            for value in ["0000000000000000", "not-a-backend"] {
                let reply = try proxy.get(cookie: value)
                #expect(reply.status == 200, "\(reply.head)")
                let backend = try #require(backends.first { $0.name == reply.body }, "\(reply.head)")
                #expect(reply.setCookies == [setCookie(cookieValue(port: backend.port))])
            }
        }
    }

    @Test("on one keep-alive connection, as browsers send them, the cookie's backend serves every request")
    func keepAliveConnection() async throws {
        try await withStickyProxy { proxy, backends in
            let client = try RawClient(port: proxy.port)
            let host = HealthHarness.host
            try client.send("GET / HTTP/1.1\r\nHost: \(host)\r\n\r\n")
            let first = HealthHarness.Reply(parsing: client.receiveResponse(timeout: 3))
            #expect(first.status == 200, "\(first.head)")
            let backend = try #require(backends.first { $0.name == first.body }, "\(first.head)")
            let value = cookieValue(port: backend.port)
            #expect(first.setCookies == [setCookie(value)])
            for index in 0..<10 {
                try client.send("GET /\(index) HTTP/1.1\r\nHost: \(host)\r\nCookie: \(cookieName)=\(value)\r\n\r\n")
                let reply = HealthHarness.Reply(parsing: client.receiveResponse(timeout: 3))
                #expect(reply.status == 200, "request \(index): \(reply.head)")
                #expect(reply.body == backend.name, "request \(index) on the connection")
                #expect(reply.setCookies.isEmpty, "request \(index): \(reply.head)")
            }
        }
    }

    @Test(
        "when the pinned backend stops, the client moves once it is marked down, with no failed request, and is re-pinned"
    )
    func movedWhenBackendStops() async throws {
        try await withStickyProxy { proxy, backends in
            let (old, new) = try await moveAfterBackendStops(proxy, backends)
            // With the new cookie the client stays on its new backend (round robin would alternate between the two
            // left).
            try expectPinned(proxy, new, count: 20)
            // A request still carrying the old cookie is balanced again and given a cookie for where it went.
            let stale = try proxy.get(cookie: old.value)
            #expect(stale.status == 200, "\(stale.head)")
            let backend = try #require(backends.first { $0.name == stale.body }, "\(stale.head)")
            #expect(backend !== old.backend)
            #expect(stale.setCookies == [setCookie(cookieValue(port: backend.port))])
            // Once the backend was marked down, no request even tried it.
            #expect(proxy.logs.lines(containing: "connect failed").isEmpty)
            #expect(old.backend.clientRequests == 1)
        }
    }

    @Test("when the old backend comes back, a moved client stays on its new one; the old cookie leads back to the old")
    func movedClientStaysWhenOldBackendReturns() async throws {
        try await withStickyProxy { proxy, backends in
            let (old, new) = try await moveAfterBackendStops(proxy, backends)
            try await old.backend.start()
            let status = proxy.backends[old.index].status
            try #require(await HealthHarness.waitUntil(.seconds(10)) { status.isActivelyUp })
            try expectPinned(proxy, new, count: 10)
            // A client that kept the old cookie is back on the old backend, and keeps its cookie.
            try expectPinned(proxy, old, count: 3)
            #expect(old.backend.clientRequests == 1 + 3)
        }
    }

    @Test("before any health check notices, a request whose pinned backend refuses is retried elsewhere and re-pinned")
    func refusedBeforeDetection() async throws {
        // Active checks too rare to notice anything during the test: only the request itself finds out.
        let rare = HealthCheckConfiguration(path: "/healthz", interval: .hours(1), timeout: .milliseconds(100))
        try await withStickyProxy(health: rare) { proxy, backends in
            let old = try pinNewClient(proxy, backends)
            await old.backend.stop()
            let moved = try proxy.get(cookie: old.value)
            #expect(moved.status == 200, "\(moved.head)")
            let index = try #require(backends.firstIndex { $0.name == moved.body }, "\(moved.head)")
            #expect(index != old.index)
            let new = Pin(backend: backends[index], index: index, value: cookieValue(port: backends[index].port))
            #expect(moved.setCookies == [setCookie(new.value)], "\(moved.head)")
            #expect(proxy.backends[old.index].status.isActivelyUp)
            // One connect to the stopped backend at most (none when the request took a pooled connection the
            // backend had closed, and was sent again).
            let tries = proxy.logs.lines(containing: "127.0.0.1:\(old.backend.port) of shop: connect failed")
            #expect(tries.count <= 1)
            try expectPinned(proxy, new, count: 10)
        }
    }
}
