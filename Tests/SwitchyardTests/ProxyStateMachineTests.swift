import NIOCore
import Testing

@testable import Switchyard

// MARK: - Harness

private let clientAddress = ProxyStateMachineHarness.clientAddress
private let backendName = "127.0.0.1:9001"

private func makeRoutes() throws -> RouteSource {
    let shop = Tenant(
        name: "shop",
        domains: ["shop.test", "*.shop.test"],
        backends: [Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))]
    )
    let duo = Tenant(
        name: "duo",
        domains: ["duo.test"],
        backends: [
            Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001)),
            Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9002)),
        ]
    )
    let pinned = Tenant(
        name: "pinned",
        domains: ["pinned.test"],
        backends: [
            Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001)),
            Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9002)),
        ],
        sticky: StickySessionConfiguration(cookie: "sb")
    )
    return RouteSource(try RouteTable(tenants: [shop, duo, pinned]))
}

private typealias Harness = ProxyStateMachineHarness
private typealias Timeout = ProxyStateMachineHarness.Timeout

extension ProxyStateMachineHarness {
    /// A harness on the shared tenants (`shop`, `duo`, `pinned`).
    fileprivate init(
        accessLog: Bool = false,
        maximumHeadBytes: Int = 8192,
        maximumHeaderCount: Int = 64,
        scheme: StaticString = "https"
    ) throws {
        self.init(
            routes: try makeRoutes(),
            accessLog: accessLog,
            maximumHeadBytes: maximumHeadBytes,
            maximumHeaderCount: maximumHeaderCount,
            scheme: scheme
        )
    }

    /// Sends a GET for `host` and attaches a fresh backend connection.
    fileprivate mutating func startGet(_ target: String = "/", host: String = "shop.test") {
        let head = "GET \(target) HTTP/1.1\r\nHost: \(host)\r\n\r\n"
        #expect(client(head) == ["acquire \(host == "duo.test" ? "duo" : "shop")"])
        #expect(attach() == ["upstream " + forwarded("GET \(target) HTTP/1.1\r\nHost: \(host)\r\n", host: host)])
    }
}

// MARK: - Expected bytes

/// `headLines` (the forwarded lines, each ending in CRLF) followed by the forwarding fields and the empty line.
private func forwarded(_ headLines: String, host: String? = "shop.test") -> String {
    var head = headLines
    head += "X-Forwarded-For: \(clientAddress)\r\nX-Real-IP: \(clientAddress)\r\nX-Forwarded-Proto: https\r\n"
    if let host {
        head += "X-Forwarded-Host: \(host)\r\n"
    }
    return head + "\r\n"
}

/// One of the balancer's own answers, byte for byte.
private func errorResponse(_ statusLine: String, _ body: String, close: Bool, headOnly: Bool = false) -> String {
    "\(statusLine)\r\nServer: switchyard\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + "Content-Length: \(body.utf8.count)\r\n" + (close ? "Connection: close\r\n" : "") + "\r\n"
        + (headOnly ? "" : body)
}

private func badRequest() -> String {
    errorResponse("HTTP/1.1 400 Bad Request", "400 Bad Request: the request is malformed or ambiguous.\n", close: true)
}

private func notFound(_ host: String, close: Bool, headOnly: Bool = false) -> String {
    errorResponse(
        "HTTP/1.1 404 Not Found",
        "404 Not Found: no site is served for host '\(host)'.\n",
        close: close,
        headOnly: headOnly
    )
}

private func requestTimeout() -> String {
    errorResponse(
        "HTTP/1.1 408 Request Timeout",
        "408 Request Timeout: the request was not received in time.\n",
        close: true
    )
}

private func badGateway(close: Bool = false) -> String {
    errorResponse(
        "HTTP/1.1 502 Bad Gateway",
        "502 Bad Gateway: the site's backend could not be reached or answered wrongly.\n",
        close: close
    )
}

private func gatewayTimeout(close: Bool = false, headOnly: Bool = false) -> String {
    errorResponse(
        "HTTP/1.1 504 Gateway Timeout",
        "504 Gateway Timeout: the site's backend did not answer in time.\n",
        close: close,
        headOnly: headOnly
    )
}

/// A request the balancer refuses before routing it, and its exact answer.
private struct RefusedRequest: Sendable, CustomTestStringConvertible {
    var name: String
    var request: String
    var answer: String

    var testDescription: String { name }
}

private let refusedRequests: [RefusedRequest] = [
    RefusedRequest(
        name: "Content-Length with Transfer-Encoding",
        request: "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        answer: badRequest()
    ),
    RefusedRequest(name: "bare LF", request: "GET / HTTP/1.1\nHost: shop.test\n\n", answer: badRequest()),
    RefusedRequest(name: "HTTP/1.0 without Host", request: "GET / HTTP/1.0\r\n\r\n", answer: badRequest()),
    RefusedRequest(
        name: "invalid Host",
        request: "GET / HTTP/1.1\r\nHost: shop..test\r\n\r\n",
        answer: badRequest()
    ),
    RefusedRequest(
        name: "unsupported transfer coding",
        request: "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: gzip\r\n\r\n",
        answer: errorResponse(
            "HTTP/1.1 501 Not Implemented",
            "501 Not Implemented: only the chunked transfer coding is supported.\n",
            close: true
        )
    ),
    RefusedRequest(
        name: "HTTP/2.0",
        request: "GET / HTTP/2.0\r\nHost: shop.test\r\n\r\n",
        answer: errorResponse(
            "HTTP/1.1 505 HTTP Version Not Supported",
            "505 HTTP Version Not Supported: use HTTP/1.1.\n",
            close: true
        )
    ),
    RefusedRequest(
        name: "header section too large",
        request: "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Pad: " + String(repeating: "p", count: 300) + "\r\n\r\n",
        answer: errorResponse(
            "HTTP/1.1 431 Request Header Fields Too Large",
            "431 Request Header Fields Too Large.\n",
            close: true
        )
    ),
]

// MARK: - Tests

/// The proxy's transport-free logic, driven event by event with an explicit clock: routing, forwarding of exact
/// head bytes, bodies in both directions, pipelining, keep-alive on both sides, interim responses, upgrades and the
/// tunnel, retries, every timeout, the balancer's own error answers, and shutdown.
@Suite("ProxyStateMachine")
struct ProxyStateMachineTests {
    // MARK: Round trips

    @Test("a GET round trip with keep-alive")
    func simpleGet() throws {
        var h = try Harness()
        #expect(h.state == .idle)
        #expect(h.client("GET /index.html HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n\r\n") == ["acquire shop"])
        #expect(h.state == .connecting)
        #expect(
            h.attach() == ["upstream " + forwarded("GET /index.html HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n")]
        )
        #expect(h.state == .exchanging)
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "release reusable",
            ]
        )
        #expect(h.state == .idle)
        #expect(h.machine.wantsClientBytes)
    }

    @Test("an absolute-form request is routed by its target's authority, not by Host")
    func absoluteFormRouting() throws {
        var h = try Harness()
        #expect(h.client("GET http://duo.test/x HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire duo"])
        #expect(h.attach() == ["upstream " + forwarded("GET /x HTTP/1.1\r\nHost: duo.test\r\n", host: "duo.test")])
        var unknown = try Harness()
        let answer = unknown.client("GET http://nobody.test/ HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        #expect(answer.first?.hasPrefix("client HTTP/1.1 404 Not Found\r\n") == true, "\(answer)")
    }

    @Test("the access log record of a round trip")
    func accessLog() throws {
        var h = try Harness(accessLog: true)
        #expect(h.client("GET /a?b=1 HTTP/1.1\r\nHost: WWW.Shop.Test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        _ = h.advance(.milliseconds(25))
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        #expect(h.upstream(response) == ["client " + response, "release reusable", "log 200"])
        #expect(
            h.logs == [
                AccessLogRecord(
                    client: clientAddress,
                    host: "www.shop.test",
                    tenant: "shop",
                    backend: backendName,
                    method: "GET",
                    target: "/a?b=1",
                    status: 200,
                    bytes: response.utf8.count,
                    received: "GET /a?b=1 HTTP/1.1\r\nHost: WWW.Shop.Test\r\n\r\n".utf8.count,
                    duration: .milliseconds(25),
                    upstreamConnect: .nanoseconds(0),
                    upstreamHeader: .milliseconds(25)
                )
            ]
        )
    }

    @Test("a response body across several reads")
    func responseAcrossReads() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.upstream("HTTP/1.1 200 OK\r\nCont") == [])
        #expect(h.upstream("ent-Length: 6\r\n\r\nab") == ["client HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab"])
        #expect(h.upstream("cd") == ["client cd"])
        #expect(h.upstream("ef") == ["client ef", "release reusable"])
        #expect(h.state == .idle)
    }

    @Test("two pipelined requests in one read are answered in order")
    func pipelined() throws {
        var h = try Harness()
        let first = "GET /1 HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        let second = "GET /2 HTTP/1.1\r\nHost: www.shop.test\r\n\r\n"
        #expect(h.client(first + second) == ["acquire shop"])
        #expect(h.attach() == ["upstream " + forwarded("GET /1 HTTP/1.1\r\nHost: shop.test\r\n")])
        // Reads go on while less than a head is buffered (see wantsClientBytesBounded).
        #expect(h.machine.wantsClientBytes)
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", "release reusable", "acquire shop",
            ]
        )
        #expect(h.state == .connecting)
        #expect(
            h.attach(reused: true) == [
                "upstream " + forwarded("GET /2 HTTP/1.1\r\nHost: www.shop.test\r\n", host: "www.shop.test")
            ]
        )
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("a request after a body, preceded by an empty line, is read")
    func pipelinedAfterBodyWithEmptyLine() throws {
        var h = try Harness()
        let post = "POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n\r\n"
        #expect(h.client(post + "abc\r\nGET /g HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        #expect(
            h.attach() == [
                "upstream " + forwarded("POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n") + "abc"
            ]
        )
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "release reusable", "acquire shop",
            ]
        )
        #expect(h.attach(reused: true) == ["upstream " + forwarded("GET /g HTTP/1.1\r\nHost: shop.test\r\n")])
    }

    // MARK: Refusals

    @Test("an unknown host is answered 404 naming the host, and nothing is sent upstream")
    func unknownHost() throws {
        var h = try Harness()
        #expect(
            h.client("GET / HTTP/1.1\r\nHost: Nowhere.Test:8080\r\n\r\n") == [
                "client " + notFound("nowhere.test", close: false)
            ]
        )
        #expect(h.state == .idle)
        // The connection stays usable.
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
    }

    @Test("an unknown host with a body is answered 404 and the connection closed")
    func unknownHostWithBody() throws {
        var h = try Harness()
        #expect(
            h.client("POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 3\r\n\r\nabc") == [
                "client " + notFound("nowhere.test", close: true), "close",
            ]
        )
        #expect(h.state == .closed)
    }

    @Test("a HEAD for an unknown host gets the 404 head only")
    func unknownHostHead() throws {
        var h = try Harness()
        #expect(
            h.client("HEAD / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n") == [
                "client " + notFound("nowhere.test", close: false, headOnly: true)
            ]
        )
    }

    @Test("malformed requests are refused and the connection closed", arguments: refusedRequests)
    fileprivate func refused(_ refused: RefusedRequest) throws {
        var h = try Harness(maximumHeadBytes: 256)
        #expect(h.client(refused.request) == ["client " + refused.answer, "close"])
        #expect(h.state == .closed)
        #expect(!h.machine.wantsClientBytes)
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == [])
    }

    @Test("a malformed request pipelined after a good one is refused after the first response")
    func malformedPipelined() throws {
        var h = try Harness()
        let good = "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        #expect(h.client(good + "GET / HTTP/1.1\r\nHost : shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 204 No Content\r\n\r\n") == [
                "client HTTP/1.1 204 No Content\r\n\r\n", "release reusable", "client " + badRequest(), "close",
            ]
        )
    }

    // MARK: Request bodies

    @Test("a POST body split across reads is forwarded as it arrives")
    func postAcrossReads() throws {
        var h = try Harness()
        let head = "POST /submit HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 11\r\n\r\n"
        #expect(h.client(head + "hello") == ["acquire shop"])
        // Reads go on while less than a head is buffered (see wantsClientBytesBounded).
        #expect(h.machine.wantsClientBytes)
        #expect(
            h.attach() == [
                "upstream " + forwarded("POST /submit HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 11\r\n") + "hello"
            ]
        )
        #expect(h.machine.wantsClientBytes)
        #expect(h.client(" wor") == ["upstream  wor"])
        #expect(h.machine.wantsClientBytes)
        let next = "GET /next HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        #expect(h.client("ld" + next) == ["upstream ld"])
        // Reads go on while less than a head is buffered (see wantsClientBytesBounded).
        #expect(h.machine.wantsClientBytes)
        #expect(
            h.upstream("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n") == [
                "client HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", "release reusable", "acquire shop",
            ]
        )
    }

    @Test("body bytes that arrive while connecting are sent after the head")
    func bodyWhileConnecting() throws {
        var h = try Harness()
        let head = "PUT /f HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 6\r\n\r\n"
        #expect(h.client(head + "ab") == ["acquire shop"])
        #expect(h.client("cd") == [])
        #expect(
            h.attach() == [
                "upstream " + forwarded("PUT /f HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 6\r\n") + "abcd"
            ]
        )
        #expect(h.client("ef") == ["upstream ef"])
    }

    @Test("a chunked request body is forwarded unchanged")
    func chunkedRequest() throws {
        var h = try Harness()
        let head = "POST /c HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        #expect(h.client(head + "5\r\nhel") == ["acquire shop"])
        #expect(
            h.attach() == [
                "upstream " + forwarded("POST /c HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n")
                    + "5\r\nhel"
            ]
        )
        #expect(h.client("lo\r\n0\r\n\r\n") == ["upstream lo\r\n0\r\n\r\n"])
        // Reads go on while less than a head is buffered (see wantsClientBytesBounded).
        #expect(h.machine.wantsClientBytes)
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "release reusable",
            ]
        )
    }

    @Test("an invalid chunk size read with the head is refused before anything is forwarded")
    func invalidChunkWithHead() throws {
        var h = try Harness()
        let head = "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        #expect(h.client(head + "5\r\nhello\r\nzz\r\n") == ["client " + badRequest(), "close"])
        #expect(h.state == .closed)
    }

    @Test("an invalid chunk after forwarding began cuts the backend connection and answers 400")
    func invalidChunkLater() throws {
        var h = try Harness()
        let head = "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        #expect(h.client(head + "5\r\nhel") == ["acquire shop"])
        _ = h.attach()
        #expect(h.client("lo\r\n0x1\r\n") == ["release closed", "client " + badRequest(), "close"])
        #expect(h.state == .closed)
    }

    // MARK: Responses

    @Test("a chunked response, then keep-alive")
    func chunkedResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel") == [
                "client HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
            ]
        )
        #expect(h.state == .exchanging)
        #expect(h.upstream("lo\r\n0\r\n\r\n") == ["client lo\r\n0\r\n\r\n", "release reusable"])
        #expect(h.state == .idle)
    }

    @Test("a response without length runs until the backend closes, then the client is closed")
    func responseUntilClose() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome") == [
                "client HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nsome"
            ]
        )
        #expect(h.upstream(" more") == ["client  more"])
        #expect(h.upstreamClosed() == ["release closed", "close"])
        #expect(h.state == .closed)
    }

    @Test("a HEAD response announces a length but has no body")
    func headResponse() throws {
        var h = try Harness()
        #expect(h.client("HEAD / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("204 and 304 have no body")
    func noBodyStatuses() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 204 No Content\r\n\r\n") == [
                "client HTTP/1.1 204 No Content\r\n\r\n", "release reusable",
            ]
        )
        #expect(h.state == .idle)
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n") == [
                "client HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("a rewritten response without a body completes at once")
    func rewrittenEmptyResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n") == [
                "client HTTP/1.1 204 No Content\r\n\r\n", "release closed",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("an Apache-style response with Keep-Alive fields and a body is rewritten")
    func apacheStyleResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive\r\n"
                    + "Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            ) == [
                "client HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("an Apache-style empty response with Keep-Alive fields is rewritten and completes at once")
    func apacheStyleEmptyResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive\r\n"
                    + "Content-Length: 0\r\n\r\n"
            ) == ["client HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "release reusable"]
        )
        #expect(h.state == .idle)
    }

    @Test("bytes after a complete response make the backend connection unusable")
    func bytesAfterResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "release closed",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("an invalid response head is answered 502")
    func invalidResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") == [
                "release closed", "client " + badGateway(),
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("100 Continue is passed on, then the final response")
    func continueThenOK() throws {
        var h = try Harness()
        let head = "POST /upload HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        #expect(h.client(head) == ["acquire shop"])
        #expect(
            h.attach() == [
                "upstream "
                    + forwarded(
                        "POST /upload HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
                    )
            ]
        )
        #expect(h.machine.wantsClientBytes)
        #expect(h.upstream("HTTP/1.1 100 Continue\r\n\r\n") == ["client HTTP/1.1 100 Continue\r\n\r\n"])
        #expect(h.state == .exchanging)
        #expect(h.client("hello") == ["upstream hello"])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("an interim response followed by a final head split across reads")
    func interimThenSplitFinal() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-") == [
                "client HTTP/1.1 100 Continue\r\n\r\n"
            ]
        )
        #expect(
            h.upstream("Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "release reusable",
            ]
        )
    }

    @Test("an interim response and the final one in the same read")
    func interimAndFinalTogether() throws {
        var h = try Harness()
        h.startGet()
        let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        let final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        #expect(h.upstream(interim + final) == ["client " + interim + final, "release reusable"])
    }

    // MARK: Connection management

    @Test("a response with Connection: close releases the backend connection, the client stays")
    func responseConnectionClose() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "release closed",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("a request with Connection: close gets Connection: close, then the client is closed")
    func requestConnectionClose() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n") == ["acquire shop"])
        #expect(h.attach() == ["upstream " + forwarded("GET / HTTP/1.1\r\nHost: shop.test\r\n")])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "release reusable",
                "close",
            ]
        )
        #expect(h.state == .closed)
    }

    @Test("an HTTP/1.0 keep-alive request gets Connection: keep-alive")
    func http10KeepAlive() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.0\r\nHost: shop.test\r\nConnection: keep-alive\r\n\r\n") == ["acquire shop"])
        #expect(h.attach() == ["upstream " + forwarded("GET / HTTP/1.0\r\nHost: shop.test\r\n")])
        #expect(
            h.upstream("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", "release closed",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("an HTTP/1.0 request without keep-alive gets Connection: close")
    func http10Close() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.0\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "release closed", "close",
            ]
        )
    }

    @Test("a backend connection that carried an HTTP/1.0 request without keep-alive is not pooled")
    func http10BackendNotPooled() throws {
        // The request goes out as "HTTP/1.0" with its Connection field cut, so the backend closes after answering
        // (RFC 9112 §9.3) even when its response says HTTP/1.1 without "Connection: close".
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.0\r\nHost: shop.test\r\nConnection: keep-alive\r\n\r\n") == ["acquire shop"])
        #expect(h.attach() == ["upstream " + forwarded("GET / HTTP/1.0\r\nHost: shop.test\r\n")])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", "release closed",
            ]
        )
    }

    @Test("an early response (request body incomplete) closes both connections")
    func earlyResponse() throws {
        var h = try Harness()
        let head = "POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n"
        #expect(h.client(head + "part") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig") == [
                "client HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig",
                "release closed", "close",
            ]
        )
        #expect(h.state == .closed)
    }

    @Test("an early response without a body closes both connections at once")
    func earlyEmptyResponse() throws {
        var h = try Harness()
        let head = "POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n"
        #expect(h.client(head + "part") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n") == [
                "client HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "release closed", "close",
            ]
        )
        #expect(h.state == .closed)
    }

    @Test("the client half-closing while awaiting the response: the response says close, then the client closes")
    func clientHalfClosedAwaitingResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.clientInputEnded() == [])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "release reusable",
                "close",
            ]
        )
    }

    @Test("the client half-closing mid-body abandons the exchange")
    func clientHalfClosedMidBody() throws {
        var h = try Harness()
        #expect(h.client("POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nabc") == ["acquire shop"])
        _ = h.attach()
        #expect(h.clientInputEnded() == ["release closed", "close"])
        #expect(h.state == .closed)
    }

    @Test("the client half-closing while idle closes")
    func clientHalfClosedIdle() throws {
        var h = try Harness()
        #expect(h.clientInputEnded() == ["close"])
        #expect(h.state == .closed)
    }

    @Test("the client going away mid-exchange releases the backend connection")
    func clientGone() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.clientClosed() == ["release closed"])
        #expect(h.state == .closed)
        #expect(h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == [])
    }

    @Test("reads go on until a head's worth of bytes waits, and follow the backend while a body streams")
    func wantsClientBytes() throws {
        var h = try Harness()
        #expect(h.machine.wantsClientBytes)
        #expect(!h.machine.wantsUpstreamBytes)
        _ = h.client("POST / HTTP/1.1\r\nHost: shop.test\r\n")
        #expect(h.state == .readingHead)
        #expect(h.machine.wantsClientBytes)
        #expect(h.client("Content-Length: 4\r\n\r\nab") == ["acquire shop"])
        #expect(h.state == .connecting)
        // Connecting: bytes may still come, up to a head's worth.
        #expect(h.machine.wantsClientBytes)
        #expect(!h.machine.wantsUpstreamBytes)
        _ = h.attach()
        #expect(h.machine.wantsClientBytes)
        #expect(h.machine.wantsUpstreamBytes)
        _ = h.client("cd")
        #expect(h.state == .exchanging)
        #expect(h.machine.wantsClientBytes)
        #expect(h.machine.wantsUpstreamBytes)
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(h.machine.wantsClientBytes)
        #expect(!h.machine.wantsUpstreamBytes)
    }

    @Test("pipelined bytes waiting for a response stop reads once they reach the head limit")
    func wantsClientBytesBounded() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.machine.wantsClientBytes)
        // A pipelined request larger than a head (8 KiB in this harness) waits in the buffer: reads stop.
        _ = h.client("GET /next HTTP/1.1\r\nHost: shop.test\r\nX-Pad: " + String(repeating: "p", count: 9000))
        #expect(!h.machine.wantsClientBytes)
    }

    // MARK: Upgrades

    @Test("an upgrade answered 101 becomes a tunnel that passes bytes both ways verbatim")
    func upgradeTunnel() throws {
        var h = try Harness()
        let request =
            "GET /chat HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        #expect(h.client(request) == ["acquire shop fresh"])
        #expect(
            h.attach() == [
                "upstream "
                    + forwarded(
                        "GET /chat HTTP/1.1\r\nHost: shop.test\r\n"
                            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                            + "Upgrade: websocket\r\nConnection: upgrade\r\n"
                    )
            ]
        )
        #expect(h.client("early") == [])
        let switching =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        #expect(h.upstream(switching + "server-first") == ["client " + switching + "server-first", "upstream early"])
        #expect(h.state == .tunnel)
        #expect(h.machine.wantsClientBytes)
        #expect(h.machine.wantsUpstreamBytes)
        #expect(h.client("GET / HTTP/1.1\r\nHost: x\r\n\r\n") == ["upstream GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
        #expect(h.upstream("HTTP/1.1 200 OK\r\n\r\n") == ["client HTTP/1.1 200 OK\r\n\r\n"])
        #expect(h.clientInputEnded() == ["shutdown upstream"])
        #expect(h.upstream("last") == ["client last"])
        #expect(h.upstreamClosed() == ["release closed", "close"])
        #expect(h.state == .closed)
    }

    @Test("a tunnel whose backend finishes first closes once both sides are done")
    func tunnelBackendClosesFirst() throws {
        var h = try Harness()
        try openTunnel(&h)
        #expect(h.upstreamClosed() == ["shutdown client"])
        #expect(h.state == .tunnel)
        #expect(h.client("bye") == ["upstream bye"])
        #expect(h.clientInputEnded() == ["shutdown upstream"])
        // With both of its directions shut, the backend connection closes in full (NIO escalates the output
        // shutdown of a half-closed channel to a close), which is reported again.
        #expect(h.upstreamClosed() == ["release closed", "close"])
        #expect(h.state == .closed)
    }

    @Test("an idle tunnel is closed after its timeout; traffic extends it")
    func tunnelIdleTimeout() throws {
        var h = try Harness()
        try openTunnel(&h)
        #expect(h.advance(Timeout.tunnelIdle - .seconds(1)) == [])
        #expect(h.client("ping") == ["upstream ping"])
        #expect(h.advance(Timeout.tunnelIdle - .seconds(1)) == [])
        #expect(h.advance(.seconds(1)) == ["release closed", "close"])
        #expect(h.state == .closed)
    }

    @Test("a tunnel whose backend was retired long enough is closed; a request in flight on it is not")
    func retiredBackendTunnel() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        h.machine.tunnelBackendRetired()
        #expect(h.drain() == [])
        #expect(h.state == .exchanging)
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        var tunnel = try Harness()
        try openTunnel(&tunnel)
        tunnel.machine.tunnelBackendRetired()
        #expect(tunnel.drain() == ["release closed", "close"])
        #expect(tunnel.state == .closed)
    }

    @Test("a retirement counts from when it was first marked")
    func retirementGrace() {
        let retirement = Retirement()
        let start = NIODeadline.uptimeNanoseconds(5_000_000_000)
        #expect(!retirement.isRetired(longerThan: .zero, now: start))
        retirement.retire(now: start)
        retirement.retire(now: start + .seconds(10))
        #expect(!retirement.isRetired(longerThan: .seconds(30), now: start + .seconds(29)))
        #expect(retirement.isRetired(longerThan: .seconds(30), now: start + .seconds(30)))
    }

    @Test("a 101 to a request that did not ask to upgrade is a broken answer: 502, counted against the backend")
    func unexpectedSwitchingProtocols() throws {
        var h = try Harness()
        h.startGet()
        let actions = h.upstream(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        #expect(actions.count == 3)
        #expect(actions.prefix(2) == ["backend failed shop", "release closed"])
        #expect(actions.last?.hasPrefix("client HTTP/1.1 502 Bad Gateway\r\n") == true)
        #expect(h.state == .idle)
    }

    @Test("an upgrade the backend declines is an ordinary exchange")
    func upgradeDeclined() throws {
        var h = try Harness()
        #expect(
            h.client("GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n") == [
                "acquire shop fresh"
            ]
        )
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    private func openTunnel(_ h: inout Harness) throws {
        let request = "GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        #expect(h.client(request) == ["acquire shop fresh"])
        _ = h.attach()
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        #expect(h.upstream(switching) == ["client " + switching])
        try #require(h.state == .tunnel)
    }

    // MARK: Backend failures and retries

    @Test("a failed connect with one backend is answered 502")
    func connectFailedOneBackend() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        #expect(h.connectFailed(.refused) == ["client " + badGateway()])
        #expect(h.state == .idle)
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
    }

    @Test("a failed connect with two backends tries the other one")
    func connectFailedTwoBackends() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: duo.test\r\n\r\n") == ["acquire duo"])
        #expect(h.connectFailed(.refused) == ["acquire duo avoiding last"])
        #expect(h.state == .connecting)
        #expect(h.attach() == ["upstream " + forwarded("GET / HTTP/1.1\r\nHost: duo.test\r\n", host: "duo.test")])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "release reusable",
            ]
        )
    }

    @Test("a second failed connect is answered 502")
    func connectFailedTwice() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: duo.test\r\n\r\n") == ["acquire duo"])
        #expect(h.connectFailed(.refused) == ["acquire duo avoiding last"])
        #expect(h.connectFailed(.refused) == ["client " + badGateway()])
        #expect(h.state == .idle)
    }

    @Test("a POST whose connect failed is sent, body included, to the other backend")
    func connectFailedPostRetried() throws {
        var h = try Harness()
        let head = "POST /p HTTP/1.1\r\nHost: duo.test\r\nContent-Length: 3\r\n\r\n"
        #expect(h.client(head + "abc") == ["acquire duo"])
        #expect(h.connectFailed(.refused) == ["acquire duo avoiding last"])
        #expect(
            h.attach() == [
                "upstream "
                    + forwarded("POST /p HTTP/1.1\r\nHost: duo.test\r\nContent-Length: 3\r\n", host: "duo.test")
                    + "abc"
            ]
        )
    }

    @Test("a connect timeout is answered 504")
    func connectTimeout() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        #expect(h.connectFailed(.timedOut) == ["client " + gatewayTimeout()])
        #expect(h.state == .idle)
    }

    @Test("a GET on a pooled connection the backend had closed is sent again on a new one")
    func staleConnectionRetried() throws {
        var h = try Harness()
        let forwardedGet = "upstream " + forwarded("GET / HTTP/1.1\r\nHost: shop.test\r\n")
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        #expect(h.attach(reused: true) == [forwardedGet])
        #expect(h.upstreamClosed() == ["release closed", "acquire shop fresh"])
        #expect(h.state == .connecting)
        #expect(h.attach(reused: false) == [forwardedGet])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "release reusable",
            ]
        )
    }

    @Test("a pooled connection that closes in the middle of a response head leaves nothing behind")
    func staleConnectionClosedMidHead() throws {
        var h = try Harness()
        let partial = "HTTP/1.1 200 OK\r\nX-Padding: " + String(repeating: "p", count: 40) + "\r\nContent-"
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach(reused: true)
        #expect(h.upstream(partial) == [])
        let actions = h.upstreamClosed()
        if actions == ["release closed", "acquire shop"] {
            // Sent again: the next connection's response must be read from a clean slate.
            _ = h.attach()
            #expect(
                h.upstream("HTTP/1.1 204 No Content\r\n\r\n") == [
                    "client HTTP/1.1 204 No Content\r\n\r\n", "release reusable",
                ]
            )
        } else {
            // The backend had begun answering: a 502.
            #expect(actions == ["release closed", "client " + badGateway()])
        }
    }

    @Test("a response head cut short by a timeout does not affect the next exchange")
    func partialHeadThenNextExchange() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.upstream("HTTP/1.1 200 OK\r\nX-Padding: " + String(repeating: "p", count: 40) + "\r\n") == [])
        #expect(
            h.advance(Timeout.upstreamResponse) == [
                "backend failed shop", "release closed", "client " + gatewayTimeout(),
            ]
        )
        #expect(h.state == .idle)
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 204 No Content\r\n\r\n") == [
                "client HTTP/1.1 204 No Content\r\n\r\n", "release reusable",
            ]
        )
        #expect(h.state == .idle)
    }

    @Test("an invalid response head after a partial one does not affect the next exchange")
    func invalidHeadThenNextExchange() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.upstream("HTTP/1.1 200 OK\r\nX-Padding: " + String(repeating: "p", count: 40) + "\r\n") == [])
        #expect(h.upstream("Bad Header\r\n\r\n") == ["release closed", "client " + badGateway()])
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 204 No Content\r\n\r\n") == [
                "client HTTP/1.1 204 No Content\r\n\r\n", "release reusable",
            ]
        )
    }

    @Test("a fresh connection closed before answering is answered 502")
    func freshConnectionClosed() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.upstreamClosed() == ["backend failed shop", "release closed", "client " + badGateway()])
        #expect(h.state == .idle)
    }

    @Test("a POST with a body on a pooled connection the backend closed is not sent again: 502")
    func staleConnectionPost() throws {
        var h = try Harness()
        let head = "POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n\r\n"
        #expect(h.client(head + "abc") == ["acquire shop"])
        #expect(
            h.attach(reused: true) == [
                "upstream " + forwarded("POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n") + "abc"
            ]
        )
        #expect(h.upstreamClosed() == ["release closed", "client " + badGateway()])
        #expect(h.state == .idle)
    }

    @Test("a backend closing mid-body closes the client")
    func truncatedResponse() throws {
        var h = try Harness()
        h.startGet()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
            ]
        )
        #expect(h.upstreamClosed() == ["release closed", "close"])
        #expect(h.state == .closed)
    }

    // MARK: Timeouts

    @Test("a head not received in time is answered 408 and the connection closed")
    func clientHeaderTimeout() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHo") == [])
        #expect(h.state == .readingHead)
        #expect(h.advance(.seconds(5)) == [])
        // Trickling bytes does not extend the deadline.
        #expect(h.client("st: sh") == [])
        #expect(h.advance(Timeout.clientHeader - .seconds(5) - .nanoseconds(1)) == [])
        #expect(h.advance(.nanoseconds(1)) == ["client " + requestTimeout(), "close"])
        #expect(h.state == .closed)
    }

    @Test("an idle keep-alive connection is closed silently")
    func keepAliveTimeout() throws {
        var h = try Harness()
        h.startGet()
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(h.state == .idle)
        #expect(h.advance(Timeout.keepAlive - .nanoseconds(1)) == [])
        #expect(h.advance(.nanoseconds(1)) == ["close"])
        #expect(h.state == .closed)
    }

    @Test("a new connection that sends nothing is closed silently")
    func newConnectionIdle() throws {
        var h = try Harness()
        #expect(h.advance(Timeout.keepAlive) == ["close"])
    }

    @Test("a backend that does not answer in time is answered 504")
    func upstreamResponseTimeout() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.advance(Timeout.upstreamResponse - .nanoseconds(1)) == [])
        #expect(h.advance(.nanoseconds(1)) == ["backend failed shop", "release closed", "client " + gatewayTimeout()])
        #expect(h.state == .idle)
    }

    @Test("a slow but steady upload is not cut by the backend's response timeout")
    func slowUploadNotCutByResponseTimeout() throws {
        var h = try Harness()
        #expect(h.client("POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        // One byte every 5 s: within the client body timeout, 50 s in all, longer than the response timeout.
        for index in 0..<10 {
            try #require(h.advance(.seconds(5)) == [], "after \(5 * (index + 1)) s")
            try #require(h.client("x") == ["upstream x"])
        }
        // The backend has the whole request only now; its time to answer starts here.
        #expect(h.advance(Timeout.upstreamResponse - .nanoseconds(1)) == [])
        #expect(h.advance(.nanoseconds(1)) == ["backend failed shop", "release closed", "client " + gatewayTimeout()])
    }

    @Test("a HEAD that times out gets the 504 head only")
    func upstreamResponseTimeoutHead() throws {
        var h = try Harness()
        #expect(h.client("HEAD / HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.advance(Timeout.upstreamResponse) == [
                "backend failed shop", "release closed", "client " + gatewayTimeout(headOnly: true),
            ]
        )
    }

    @Test("a backend stalling mid-body is cut and the client closed")
    func upstreamStallsMidBody() throws {
        var h = try Harness()
        h.startGet()
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        #expect(h.advance(Timeout.upstreamResponse) == ["backend failed shop", "release closed", "close"])
        #expect(h.state == .closed)
    }

    @Test("a request body not received in time is answered 408 and both connections closed")
    func clientBodyTimeout() throws {
        var h = try Harness()
        #expect(h.client("POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nabc") == ["acquire shop"])
        _ = h.attach()
        #expect(h.advance(Timeout.clientBody - .nanoseconds(1)) == [])
        #expect(h.advance(.nanoseconds(1)) == ["release closed", "client " + requestTimeout(), "close"])
        #expect(h.state == .closed)
    }

    // MARK: Shutdown

    @Test("shutdown while idle closes at once")
    func shutdownIdle() throws {
        var h = try Harness()
        #expect(h.beginShutdown() == ["close"])
        #expect(h.state == .closed)
    }

    @Test("shutdown while exchanging: the response says Connection: close, then the client is closed")
    func shutdownExchanging() throws {
        var h = try Harness()
        h.startGet()
        #expect(h.beginShutdown() == [])
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "release reusable",
                "close",
            ]
        )
        #expect(h.state == .closed)
    }

    @Test("shutdown while a head is being read: that request is answered with Connection: close")
    func shutdownReadingHead() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\n") == [])
        #expect(h.beginShutdown() == [])
        #expect(h.client("Host: shop.test\r\n\r\n") == ["acquire shop"])
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "release reusable",
                "close",
            ]
        )
    }
}

// MARK: - Tunnel cap

/// One tenant, `capped.test`, whose tunnel gauge allows a single tunnel.
private func makeCappedRoutes() throws -> (RouteSource, TunnelGauge) {
    let gauge = TunnelGauge(limit: 1)
    let capped = Tenant(
        name: "capped",
        domains: ["capped.test"],
        backends: [Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))],
        tunnelIdle: .seconds(30),
        tunnels: gauge
    )
    return (RouteSource(try RouteTable(tenants: [capped])), gauge)
}

private let cappedUpgrade =
    "GET /ws HTTP/1.1\r\nHost: capped.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
private let cappedSwitching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"

/// Whether `action` is the balancer's own 503 for a full tunnel cap: keep-alive, `Retry-After`, a framed body.
/// The body's wording is not checked (it is the one for "no healthy backend", which does not fit a full cap).
private func isTunnelCapRefusal(_ action: String?) -> Bool {
    guard let action, action.hasPrefix("client HTTP/1.1 503 Service Unavailable\r\n"),
        let headEnd = action.range(of: "\r\n\r\n")
    else { return false }
    let head = action[..<headEnd.upperBound]
    let body = action[headEnd.upperBound...]
    return head.contains("\r\nRetry-After: 5\r\n") && !head.contains("Connection: close")
        && head.contains("\r\nContent-Length: \(body.utf8.count)\r\n") && body.hasPrefix("503 ")
}

/// The per-tenant tunnel cap (`max_tunnels`) as the state machine applies it: a slot is taken by an upgrade
/// request, refused with 503 and `Retry-After` when none is left (nothing forwarded), and given back when the
/// upgrade is declined or fails, or when the tunnel ends by either side closing or by its idle timeout.
@Suite("ProxyStateMachine tunnel cap")
struct ProxyStateMachineTunnelCapTests {
    /// Takes the gauge's one slot with `h` and makes it a tunnel.
    private func openTunnel(_ h: inout Harness, gauge: TunnelGauge) throws {
        #expect(h.client(cappedUpgrade) == ["acquire capped fresh"])
        #expect(gauge.current == 1)
        let upstreamHead = "GET /ws HTTP/1.1\r\nHost: capped.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        #expect(h.attach() == ["upstream " + forwarded(upstreamHead, host: "capped.test")])
        #expect(h.upstream(cappedSwitching) == ["client " + cappedSwitching])
        try #require(h.state == .tunnel)
        #expect(gauge.current == 1)
    }

    /// Sends an upgrade request on a second connection while the slot is taken; expects the 503.
    private func expectRefused(routes: RouteSource, gauge: TunnelGauge) throws {
        var second = Harness(routes: routes)
        let actions = second.client(cappedUpgrade)
        #expect(actions.count == 1 && isTunnelCapRefusal(actions.first), "\(actions)")
        #expect(second.state == .idle)
        #expect(gauge.current == 1)
        // The connection goes on as plain HTTP: a request that does not upgrade is forwarded.
        #expect(second.client("GET / HTTP/1.1\r\nHost: capped.test\r\n\r\n") == ["acquire capped"])
        _ = second.clientClosed()
        #expect(gauge.current == 1)
    }

    @Test("the first upgrade takes the slot; another connection's upgrade gets 503 with Retry-After, not forwarded")
    func secondUpgradeRefused() throws {
        let (routes, gauge) = try makeCappedRoutes()
        #expect(gauge.current == 0)
        var first = Harness(routes: routes)
        try openTunnel(&first, gauge: gauge)
        try expectRefused(routes: routes, gauge: gauge)
        #expect(first.client("frame") == ["upstream frame"])
        #expect(gauge.current == 1)
    }

    @Test("a refused upgrade with pipelined bytes behind it answers 503 then serves the next request")
    func refusedUpgradePipelined() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var first = Harness(routes: routes)
        try openTunnel(&first, gauge: gauge)
        var second = Harness(routes: routes)
        let actions = second.client(cappedUpgrade + "GET /next HTTP/1.1\r\nHost: capped.test\r\n\r\n")
        #expect(actions.count == 2 && isTunnelCapRefusal(actions.first), "\(actions)")
        #expect(actions.last == "acquire capped")
        #expect(
            second.attach() == [
                "upstream " + forwarded("GET /next HTTP/1.1\r\nHost: capped.test\r\n", host: "capped.test")
            ]
        )
        #expect(gauge.current == 1)
    }

    @Test("an upgrade the backend declines gives its slot back")
    func declinedUpgradeReleases() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var h = Harness(routes: routes)
        #expect(h.client(cappedUpgrade) == ["acquire capped fresh"])
        #expect(gauge.current == 1)
        _ = h.attach()
        #expect(
            h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno") == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno", "release reusable",
            ]
        )
        #expect(h.state == .idle)
        #expect(gauge.current == 0)
        // The slot is free for the next upgrade, on this connection or another.
        var other = Harness(routes: routes)
        try openTunnel(&other, gauge: gauge)
    }

    @Test("an upgrade whose backend cannot be reached gives its slot back")
    func failedUpgradeReleases() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var h = Harness(routes: routes)
        #expect(h.client(cappedUpgrade) == ["acquire capped fresh"])
        #expect(gauge.current == 1)
        #expect(h.connectFailed(.refused).count == 1)
        #expect(gauge.current == 0)
    }

    @Test("an upgrade whose client leaves before the answer gives its slot back")
    func clientLeavesDuringUpgrade() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var h = Harness(routes: routes)
        #expect(h.client(cappedUpgrade) == ["acquire capped fresh"])
        _ = h.attach()
        #expect(gauge.current == 1)
        #expect(h.clientClosed() == ["release closed"])
        #expect(gauge.current == 0)
    }

    @Test("a tunnel the client closes gives its slot back")
    func clientClosesTunnel() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var h = Harness(routes: routes)
        try openTunnel(&h, gauge: gauge)
        #expect(h.clientClosed() == ["release closed"])
        #expect(h.state == .closed)
        #expect(gauge.current == 0)
        var next = Harness(routes: routes)
        try openTunnel(&next, gauge: gauge)
    }

    @Test("a tunnel both sides finish (client first, then backend) gives its slot back")
    func tunnelHalfClosesRelease() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var h = Harness(routes: routes)
        try openTunnel(&h, gauge: gauge)
        #expect(h.clientInputEnded() == ["shutdown upstream"])
        #expect(gauge.current == 1)
        #expect(h.upstreamClosed() == ["release closed", "close"])
        #expect(gauge.current == 0)
        // The client connection's close that follows does not give the slot back twice.
        #expect(h.clientClosed() == [])
        #expect(gauge.current == 0)
    }

    @Test("a tunnel idle past the tenant's tunnel_idle is closed and gives its slot back")
    func idleTunnelReleases() throws {
        let (routes, gauge) = try makeCappedRoutes()
        var h = Harness(routes: routes)
        try openTunnel(&h, gauge: gauge)
        // The tenant's 30 s, not the server's 300 s.
        #expect(h.advance(.seconds(29)) == [])
        #expect(gauge.current == 1)
        #expect(h.advance(.seconds(1)) == ["release closed", "close"])
        #expect(h.state == .closed)
        #expect(gauge.current == 0)
        #expect(h.clientClosed() == [])
        #expect(gauge.current == 0)
        var next = Harness(routes: routes)
        try openTunnel(&next, gauge: gauge)
    }
}

// MARK: - Sticky sessions

/// `Set-Cookie` lines the `pinned` tenant (cookie `sb`) sends over HTTPS, by backend. The values are FNV-1a of
/// "pinned\0" + the address, fixed here so that a change of the hash (which would move every client of a fleet at
/// once) cannot go unnoticed.
private let pinnedCookie = [
    "Set-Cookie: sb=9c415fbce48d0b2a; Path=/; HttpOnly; SameSite=Lax; Secure\r\nCache-Control: private\r\n",
    "Set-Cookie: sb=9c415ebce48d0977; Path=/; HttpOnly; SameSite=Lax; Secure\r\nCache-Control: private\r\n",
]

@Suite("Proxy state machine: sticky sessions")
struct ProxyStateMachineStickyTests {
    private let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    private let okWithCookie = { (line: String) in "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + line + "\r\nok" }

    @Test("a request without the cookie is balanced and the response pins the client to its backend")
    func issuesCookie() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: pinned.test\r\nCookie: other=1\r\n\r\n") == ["acquire pinned"])
        _ = h.attach(to: h.backend("pinned", 1))
        #expect(h.upstream(ok) == ["client " + okWithCookie(pinnedCookie[1]), "release reusable"])
    }

    @Test("a request whose cookie names a backend prefers it; the response is forwarded as it came")
    func honoursCookie() throws {
        var h = try Harness()
        let request = "GET / HTTP/1.1\r\nHost: pinned.test\r\nCookie: a=1; sb=9c415ebce48d0977 ; c=2\r\n\r\n"
        #expect(h.client(request) == ["acquire pinned prefer 127.0.0.1:9002"])
        _ = h.attach(to: h.backend("pinned", 1))
        #expect(h.upstream(ok) == ["client " + ok, "release reusable"])
    }

    @Test("when the cookie's backend is unavailable the request moves and the cookie is reissued")
    func reissuesCookie() throws {
        var h = try Harness()
        let request = "GET / HTTP/1.1\r\nHost: pinned.test\r\nCookie: sb=\"9C415EBCE48D0977\"\r\n\r\n"
        #expect(h.client(request) == ["acquire pinned prefer 127.0.0.1:9002"])
        // The worker found 9002 down and gave 9001.
        _ = h.attach(to: h.backend("pinned", 0))
        #expect(h.upstream(ok) == ["client " + okWithCookie(pinnedCookie[0]), "release reusable"])
    }

    @Test("a retry after a failed connect keeps preferring the cookie's backend; the worker excludes the failed one")
    func retryReissues() throws {
        var h = try Harness()
        let request = "GET / HTTP/1.1\r\nHost: pinned.test\r\nCookie: sb=9c415ebce48d0977\r\n\r\n"
        #expect(h.client(request) == ["acquire pinned prefer 127.0.0.1:9002"])
        #expect(h.connectFailed(.refused) == ["acquire pinned prefer 127.0.0.1:9002 avoiding last"])
        _ = h.attach(to: h.backend("pinned", 0))
        #expect(h.upstream(ok) == ["client " + okWithCookie(pinnedCookie[0]), "release reusable"])
    }

    @Test("a pooled connection found closed is replaced by a new one to the same backend, without blame")
    func staleConnectionKeepsBackend() throws {
        var h = try Harness()
        let request = "GET / HTTP/1.1\r\nHost: pinned.test\r\nCookie: sb=9c415ebce48d0977\r\n\r\n"
        #expect(h.client(request) == ["acquire pinned prefer 127.0.0.1:9002"])
        _ = h.attach(reused: true, to: h.backend("pinned", 1))
        #expect(h.upstreamClosed() == ["release closed", "acquire pinned fresh prefer 127.0.0.1:9002"])
        _ = h.attach(to: h.backend("pinned", 1))
        #expect(h.upstream(ok) == ["client " + ok, "release reusable"])
    }

    @Test("a cookie naming no current backend is ignored: balanced, and a new cookie issued")
    func unknownCookie() throws {
        for value in ["0000000000000000", "9c415ebce48d09", "not-hex-at-all!!", ""] {
            var h = try Harness()
            let request = "GET / HTTP/1.1\r\nHost: pinned.test\r\nCookie: sb=\(value)\r\n\r\n"
            #expect(h.client(request) == ["acquire pinned"], "value \(value)")
            _ = h.attach(to: h.backend("pinned", 0))
            #expect(h.upstream(ok) == ["client " + okWithCookie(pinnedCookie[0]), "release reusable"])
        }
    }

    @Test("the cookie goes in next to a Connection: close the proxy adds")
    func cookieWithClose() throws {
        var h = try Harness()
        #expect(h.client("GET / HTTP/1.0\r\nHost: pinned.test\r\n\r\n") == ["acquire pinned"])
        _ = h.attach(to: h.backend("pinned", 0))
        #expect(
            h.upstream(ok) == [
                "client HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n" + pinnedCookie[0] + "\r\nok",
                "release closed", "close",
            ]
        )
    }

    @Test("over plain HTTP the cookie has no Secure; after a 100 Continue only the final answer carries it")
    func plainHTTPAfterContinue() throws {
        var h = try Harness(scheme: "http")
        let request = "POST / HTTP/1.1\r\nHost: pinned.test\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        #expect(h.client(request) == ["acquire pinned"])
        _ = h.attach(to: h.backend("pinned", 0))
        let interim = "HTTP/1.1 100 Continue\r\n\r\n"
        #expect(h.upstream(interim) == ["client " + interim])
        _ = h.client("hi")
        let line = "Set-Cookie: sb=9c415fbce48d0b2a; Path=/; HttpOnly; SameSite=Lax\r\nCache-Control: private\r\n"
        #expect(h.upstream(ok) == ["client " + okWithCookie(line), "release reusable"])
    }

    @Test("a HEAD answer gets the cookie too, and no body is waited for")
    func headRequest() throws {
        var h = try Harness()
        #expect(h.client("HEAD / HTTP/1.1\r\nHost: pinned.test\r\n\r\n") == ["acquire pinned"])
        _ = h.attach(to: h.backend("pinned", 1))
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        #expect(h.upstream(head + "\r\n") == ["client " + head + pinnedCookie[1] + "\r\n", "release reusable"])
    }

    @Test("a WebSocket upgrade without the cookie gets it in the 101, which keeps its upgrade fields")
    func upgradeGetsCookie() throws {
        var h = try Harness()
        let upgrade = "GET /ws HTTP/1.1\r\nHost: pinned.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        #expect(h.client(upgrade) == ["acquire pinned fresh"])
        _ = h.attach(to: h.backend("pinned", 1))
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        #expect(h.upstream(switching + "\r\nframe") == ["client " + switching + pinnedCookie[1] + "\r\nframe"])
        #expect(h.state == .tunnel)
        // A 101 head that arrives in pieces gets the cookie all the same.
        var split = try Harness()
        _ = split.client(upgrade)
        _ = split.attach(to: split.backend("pinned", 1))
        #expect(split.upstream("HTTP/1.1 101 Switching Protocols\r\nUpg") == [])
        #expect(
            split.upstream("rade: websocket\r\nConnection: upgrade\r\n\r\n") == [
                "client " + switching + pinnedCookie[1] + "\r\n"
            ]
        )
        #expect(split.state == .tunnel)
        // With the cookie, the 101 goes through untouched.
        var pinned = try Harness()
        let withCookie = upgrade.replacingOccurrences(of: "\r\n\r\n", with: "\r\nCookie: sb=9c415ebce48d0977\r\n\r\n")
        #expect(pinned.client(withCookie) == ["acquire pinned fresh prefer 127.0.0.1:9002"])
        _ = pinned.attach(to: pinned.backend("pinned", 1))
        #expect(pinned.upstream(switching + "\r\n") == ["client " + switching + "\r\n"])
    }

    @Test("tenants without sticky sessions neither read nor set the cookie")
    func notSticky() throws {
        var h = try Harness()
        let request = "GET / HTTP/1.1\r\nHost: duo.test\r\nCookie: sb=9c415ebce48d0977\r\n\r\n"
        #expect(h.client(request) == ["acquire duo"])
        _ = h.attach(to: h.backend("duo", 1))
        #expect(h.upstream(ok) == ["client " + ok, "release reusable"])
    }
}

@Suite("Sticky cookie")
struct StickyCookieTests {
    private func value(_ field: String, name: String = "sb") -> String? {
        let bytes = Array(field.utf8)
        return bytes.withUnsafeBytes { raw in
            StickyCookie.value(of: name, in: raw, field: 0..<raw.count).map {
                String(decoding: raw[$0], as: UTF8.self)
            }
        }
    }

    @Test("finds the named cookie among pairs, trimmed and unquoted, and no other")
    func parsing() {
        #expect(value("sb=1") == "1")
        #expect(value("a=1; sb=2; c=3") == "2")
        #expect(value("a=1;sb=2") == "2")
        #expect(value("  sb = \"x\" ") == "x")
        #expect(value("sb=") == "")
        #expect(value("xsb=1; sbx=2; SB=3") == nil)
        #expect(value("sb") == nil)
        #expect(value("a=sb=1; sb=2") == "2")
        #expect(value("sb=1; sb=2") == "1")
    }

    @Test("the line carries Max-Age when configured, and Secure only over HTTPS")
    func line() {
        let cookie = StickyCookie(
            configuration: StickySessionConfiguration(cookie: "route", maxAge: .hours(1)),
            tenant: "pinned",
            backends: ["127.0.0.1:9001"]
        )
        #expect(
            cookie.setCookieLine(forBackendAt: 0, secure: false)
                == "Set-Cookie: route=9c415fbce48d0b2a; Path=/; HttpOnly; Max-Age=3600; SameSite=Lax\r\n"
                + "Cache-Control: private\r\n"
        )
        #expect(
            cookie.setCookieLine(forBackendAt: 0, secure: true)
                .hasSuffix("; Max-Age=3600; SameSite=Lax; Secure\r\nCache-Control: private\r\n")
        )
    }

    @Test("the first cookie of that name that names a current backend decides, across pairs and fields")
    func severalFields() {
        let cookie = StickyCookie(
            configuration: StickySessionConfiguration(cookie: "sb"),
            tenant: "pinned",
            backends: ["127.0.0.1:9001", "127.0.0.1:9002"]
        )
        func index(_ fields: String...) -> Int? {
            let text = fields.joined()
            var ranges: [Range<Int>] = []
            var start = 0
            for field in fields {
                ranges.append(start..<(start + field.utf8.count))
                start += field.utf8.count
            }
            return Array(text.utf8).withUnsafeBytes { cookie.backendIndex(in: $0, fields: ranges) }
        }
        #expect(index("a=1", "sb=9c415ebce48d0977", "sb=9c415fbce48d0b2a") == 1)
        // Another cookie of the same name (the application's, an older balancer's) does not hide ours.
        #expect(index("sb=legacy; sb=9c415fbce48d0b2a") == 0)
        #expect(index("sb=legacy", "sb=0000000000000000; sb=9c415ebce48d0977") == 1)
        #expect(index("sb=legacy; other=9c415ebce48d0977") == nil)
        // Tabs are blanks too (RFC 6265 §5.2).
        #expect(index("a=1;\tsb\t=\t9c415ebce48d0977\t; c=2") == 1)
    }
}
