import NIOCore
import Testing

@testable import Switchyard

private let client = HeadWriter.ClientInfo(address: "192.0.2.10", scheme: "https")

private struct ParseFailed: Error {}

/// Parses `text` as a request head and returns what ``HeadWriter/writeRequest`` makes of it.
private func forwardedRequest(
    _ text: String,
    client: HeadWriter.ClientInfo = client,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> String {
    let bytes = Array(text.utf8)
    var parser = RequestHeadParser(maximumHeadBytes: 8192, maximumHeaderCount: 100)
    let result = bytes.withUnsafeBytes { parser.parse($0) }
    guard case .complete(let head) = result else {
        Issue.record("expected a complete head, got \(result)", sourceLocation: sourceLocation)
        throw ParseFailed()
    }
    var output = ByteBuffer()
    bytes.withUnsafeBytes { raw in
        HeadWriter.writeRequest(
            raw,
            head: head,
            dropped: parser.droppedLines,
            forwardedFor: parser.forwardedFor,
            client: client,
            upgrade: head.requestsUpgrade,
            into: &output
        )
    }
    return String(buffer: output)
}

/// Parses `text` as a response head and returns what ``HeadWriter/writeResponse`` makes of it.
private func rewrittenResponse(
    _ text: String,
    _ connection: HeadWriter.ClientConnection,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> String {
    let bytes = Array(text.utf8)
    var parser = ResponseHeadParser(maximumHeadBytes: 8192, maximumHeaderCount: 100)
    let result = bytes.withUnsafeBytes { parser.parse($0) }
    guard case .complete(let head) = result else {
        Issue.record("expected a complete head, got \(result)", sourceLocation: sourceLocation)
        throw ParseFailed()
    }
    var output = ByteBuffer()
    bytes.withUnsafeBytes { raw in
        HeadWriter.writeResponse(
            raw,
            end: head.end,
            dropped: parser.droppedLines,
            connection: connection,
            into: &output
        )
    }
    return String(buffer: output)
}

/// The forwarding fields the balancer appends for `client`, ending the head.
private func forwardingFields(
    forwardedFor: String = "192.0.2.10",
    proto: String = "https",
    host: String? = "shop.test"
) -> String {
    var fields = "X-Forwarded-For: \(forwardedFor)\r\nX-Real-IP: 192.0.2.10\r\nX-Forwarded-Proto: \(proto)\r\n"
    if let host {
        fields += "X-Forwarded-Host: \(host)\r\n"
    }
    return fields + "\r\n"
}

/// The exact bytes of forwarded heads: request heads with hop-by-hop and spoofable forwarding lines cut and the
/// balancer's own forwarding fields appended, `Upgrade` re-added only for honoured upgrades; response heads
/// rewritten for each way the client connection continues.
@Suite("HeadWriter")
struct HeadWriterTests {
    @Test("an absolute-form target goes as origin-form, and its authority replaces Host (RFC 9112 §3.2.2)")
    func absoluteForm() throws {
        #expect(
            try forwardedRequest("GET http://Shop.Test:8080/a?b=1 HTTP/1.1\r\nHost: other.test\r\nAccept: */*\r\n\r\n")
                == "GET /a?b=1 HTTP/1.1\r\nAccept: */*\r\nHost: Shop.Test:8080\r\nX-Forwarded-For: 192.0.2.10\r\n"
                + "X-Real-IP: 192.0.2.10\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: Shop.Test:8080\r\n\r\n"
        )
        // No path, a bare query, HTTP/1.0 without Host, HTTPS in capitals.
        #expect(
            try forwardedRequest("GET HTTPS://shop.test HTTP/1.0\r\n\r\n")
                == "GET / HTTP/1.0\r\nHost: shop.test\r\nX-Forwarded-For: 192.0.2.10\r\nX-Real-IP: 192.0.2.10\r\n"
                + "X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.test\r\n\r\n"
        )
        #expect(
            try forwardedRequest("GET http://shop.test?x HTTP/1.1\r\nHost: shop.test\r\n\r\n").hasPrefix(
                "GET /?x HTTP/1.1\r\n"
            )
        )
        // Other forms are forwarded as they came.
        #expect(
            try forwardedRequest("OPTIONS * HTTP/1.1\r\nHost: shop.test\r\n\r\n").hasPrefix(
                "OPTIONS * HTTP/1.1\r\nHost: shop.test\r\n"
            )
        )
    }

    @Test("a plain request gets the forwarding fields")
    func plainRequest() throws {
        let text = "GET /a?b=c HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n\r\n"
        #expect(
            try forwardedRequest(text)
                == "GET /a?b=c HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n" + forwardingFields()
        )
    }

    @Test("the scheme and address come from the client connection")
    func plainHTTP() throws {
        let text = "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        let plain = HeadWriter.ClientInfo(address: "2001:db8::7", scheme: "http")
        #expect(
            try forwardedRequest(text, client: plain)
                == "GET / HTTP/1.1\r\nHost: shop.test\r\n"
                + "X-Forwarded-For: 2001:db8::7\r\nX-Real-IP: 2001:db8::7\r\nX-Forwarded-Proto: http\r\n"
                + "X-Forwarded-Host: shop.test\r\n\r\n"
        )
    }

    @Test("dropped lines are cut wherever they are, and client forwarding fields replaced")
    func droppedLines() throws {
        let text =
            "POST /form HTTP/1.1\r\n"
            + "Connection: keep-alive\r\n"
            + "Host: Shop.Test:8443\r\n"
            + "X-Real-IP: 6.6.6.6\r\n"
            + "Content-Length: 3\r\n"
            + "Keep-Alive: timeout=5\r\n"
            + "X-Forwarded-Proto: http\r\n"
            + "X-Forwarded-Host: evil.test\r\n"
            + "Proxy-Connection: keep-alive\r\n"
            + "TE: trailers\r\n"
            + "Accept: */*\r\n"
            + "Connection: x-custom\r\n"
            + "X-Custom: hop\r\n"
            + "\r\n"
        #expect(
            try forwardedRequest(text + "abc")
                == "POST /form HTTP/1.1\r\n"
                + "Host: Shop.Test:8443\r\n"
                + "Content-Length: 3\r\n"
                + "Accept: */*\r\n"
                + forwardingFields(host: "Shop.Test:8443")
        )
    }

    @Test("the last header line can be dropped")
    func lastLineDropped() throws {
        let text = "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
        #expect(try forwardedRequest(text) == "GET / HTTP/1.1\r\nHost: shop.test\r\n" + forwardingFields())
    }

    @Test("X-Forwarded-For values from the client are kept in front of the client address")
    func forwardedForAppended() throws {
        let text =
            "GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nHost: shop.test\r\n"
            + "X-Forwarded-For:  10.0.0.2, 10.0.0.3 \r\n\r\n"
        #expect(
            try forwardedRequest(text)
                == "GET / HTTP/1.1\r\nHost: shop.test\r\n"
                + forwardingFields(forwardedFor: "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.10")
        )
    }

    @Test("an HTTP/1.0 request without Host gets no X-Forwarded-Host")
    func noHost() throws {
        #expect(try forwardedRequest("GET / HTTP/1.0\r\n\r\n") == "GET / HTTP/1.0\r\n" + forwardingFields(host: nil))
    }

    @Test("empty lines before the request line are not forwarded")
    func leadingEmptyLines() throws {
        let text = "\r\n\r\nGET / HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        #expect(try forwardedRequest(text) == "GET / HTTP/1.1\r\nHost: shop.test\r\n" + forwardingFields())
    }

    @Test("an upgrade request gets Upgrade and Connection: upgrade back")
    func upgradeReAdded() throws {
        let text =
            "GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        #expect(
            try forwardedRequest(text)
                == "GET /ws HTTP/1.1\r\nHost: shop.test\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                + "Upgrade: websocket\r\nConnection: upgrade\r\n"
                + forwardingFields()
        )
    }

    @Test("Upgrade is not re-added when the upgrade is not honoured")
    func upgradeNotReAdded() throws {
        // No Connection: upgrade.
        let noOption = "GET / HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\n\r\n"
        #expect(try forwardedRequest(noOption) == "GET / HTTP/1.1\r\nHost: shop.test\r\n" + forwardingFields())
        // HTTP/1.0 cannot upgrade.
        let http10 = "GET / HTTP/1.0\r\nHost: shop.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        #expect(try forwardedRequest(http10) == "GET / HTTP/1.0\r\nHost: shop.test\r\n" + forwardingFields())
        // Connection: upgrade without Upgrade.
        let noUpgrade = "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\n\r\n"
        #expect(try forwardedRequest(noUpgrade) == "GET / HTTP/1.1\r\nHost: shop.test\r\n" + forwardingFields())
    }

    @Test("a response is rewritten for a keep-alive HTTP/1.1 client")
    func responseKeepAlive() throws {
        let text =
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n"
            + "Proxy-Connection: keep-alive\r\nX-Kept: 1\r\n\r\n"
        #expect(try rewrittenResponse(text, .keepAlive) == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: 1\r\n\r\n")
    }

    @Test("a response is rewritten for a keep-alive HTTP/1.0 client")
    func responseKeepAliveHTTP10() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        #expect(
            try rewrittenResponse(text, .keepAliveHTTP10)
                == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        )
    }

    @Test("a response is rewritten for a client connection that closes")
    func responseClose() throws {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"
        #expect(
            try rewrittenResponse(text, .close) == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        )
    }

    @Test("a response with nothing to drop only gets the Connection field")
    func responseNothingDropped() throws {
        let text = "HTTP/1.1 204 No Content\r\nServer: b\r\n\r\n"
        #expect(try rewrittenResponse(text, .keepAlive) == text)
        #expect(
            try rewrittenResponse(text, .close) == "HTTP/1.1 204 No Content\r\nServer: b\r\nConnection: close\r\n\r\n"
        )
        #expect(
            try rewrittenResponse(text, .keepAliveHTTP10)
                == "HTTP/1.1 204 No Content\r\nServer: b\r\nConnection: keep-alive\r\n\r\n"
        )
    }

    @Test("body bytes after the response head are not written")
    func responseBodyNotWritten() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        #expect(
            try rewrittenResponse(text, .close) == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        )
    }
}
