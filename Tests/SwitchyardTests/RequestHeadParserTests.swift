import Testing

@testable import Switchyard

/// The offsets of the first `needle` in `text` at or after byte `from`.
private func offsets(of needle: String, in text: String, from: Int = 0) -> Range<Int> {
    let haystack = Array(text.utf8)
    let pattern = Array(needle.utf8)
    var start = from
    while start + pattern.count <= haystack.count {
        if Array(haystack[start..<(start + pattern.count)]) == pattern {
            return start..<(start + pattern.count)
        }
        start += 1
    }
    Issue.record("'\(needle)' not found")
    return 0..<0
}

/// The range of the whole header line `line` (CRLF included).
private func lineRange(_ line: String, in text: String) -> Range<Int> {
    offsets(of: line + "\r\n", in: text)
}

private func string(_ bytes: [UInt8], _ range: Range<Int>) -> String {
    String(decoding: bytes[range], as: UTF8.self)
}

private func parser(maximumHeadBytes: Int = 8192, maximumHeaderCount: Int = 100) -> RequestHeadParser {
    RequestHeadParser(maximumHeadBytes: maximumHeadBytes, maximumHeaderCount: maximumHeaderCount)
}

private func parse(_ text: String, into parser: inout RequestHeadParser) -> RequestHeadParser.Result {
    Array(text.utf8).withUnsafeBytes { parser.parse($0) }
}

/// Parses `text` with a fresh parser; returns the result and the parser (for its line lists).
private func parse(
    _ text: String,
    maximumHeadBytes: Int = 8192,
    maximumHeaderCount: Int = 100
) -> (RequestHeadParser.Result, RequestHeadParser) {
    var parser = parser(maximumHeadBytes: maximumHeadBytes, maximumHeaderCount: maximumHeaderCount)
    let result = parse(text, into: &parser)
    return (result, parser)
}

/// The head `text` parses to; records an issue when it is refused.
private func parsedHead(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> RequestHead {
    let (result, _) = parse(text)
    guard case .complete(let head) = result else {
        Issue.record("expected a complete head, got \(result)", sourceLocation: sourceLocation)
        throw ParseFailed()
    }
    return head
}

private struct ParseFailed: Error {}

/// The kind of refusal expected.
private enum HeadRefusal: String, Sendable {
    case malformed
    case headerTooLarge
    case tooManyHeaders
    case versionNotSupported
    case unsupportedTransferCoding
    case requestLineTooLong
    case methodNotAllowed

    func matches(_ result: RequestHeadParser.Result) -> Bool {
        switch (self, result) {
        case (.malformed, .failure(.malformed)), (.headerTooLarge, .failure(.headerTooLarge)),
            (.tooManyHeaders, .failure(.tooManyHeaders)), (.versionNotSupported, .failure(.versionNotSupported)),
            (.unsupportedTransferCoding, .failure(.unsupportedTransferCoding)),
            (.requestLineTooLong, .failure(.requestLineTooLong)), (.methodNotAllowed, .failure(.methodNotAllowed)):
            return true
        default:
            return false
        }
    }
}

/// A head the parser must refuse, and how.
private struct HeadRefusalCase: Sendable, CustomTestStringConvertible {
    var name: String
    var head: String
    var refusal: HeadRefusal

    init(_ name: String, _ head: String, _ refusal: HeadRefusal = .malformed) {
        self.name = name
        self.head = head
        self.refusal = refusal
    }

    var testDescription: String { name }
}

private let refusals: [HeadRefusalCase] = [
    HeadRefusalCase("bare LF ending the request line", "GET / HTTP/1.1\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("bare LF ending a header line", "GET / HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n"),
    HeadRefusalCase("bare LF line ends only", "GET / HTTP/1.1\nHost: a.test\n\n"),
    HeadRefusalCase("bare LF ending the head", "GET / HTTP/1.1\r\nHost: a.test\r\n\n"),
    HeadRefusalCase("obs-fold with a space", "GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: a\r\n b\r\n\r\n"),
    HeadRefusalCase("obs-fold with a tab", "GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: a\r\n\tb\r\n\r\n"),
    HeadRefusalCase("whitespace before the first header", "GET / HTTP/1.1\r\n Host: a.test\r\n\r\n"),
    HeadRefusalCase("space before the colon", "GET / HTTP/1.1\r\nHost : a.test\r\n\r\n"),
    HeadRefusalCase("tab before the colon", "GET / HTTP/1.1\r\nHost\t: a.test\r\n\r\n"),
    HeadRefusalCase(
        "space before the colon of Content-Length",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n"
    ),
    HeadRefusalCase("empty field name", "GET / HTTP/1.1\r\nHost: a.test\r\n: x\r\n\r\n"),
    HeadRefusalCase("field without a colon", "GET / HTTP/1.1\r\nHost: a.test\r\nNoColon\r\n\r\n"),
    HeadRefusalCase(
        "Content-Length and Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    HeadRefusalCase(
        "Transfer-Encoding and Content-Length",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    ),
    HeadRefusalCase(
        "two Content-Length with the same value",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
    ),
    HeadRefusalCase(
        "two Content-Length with different values",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
    ),
    HeadRefusalCase("Content-Length +5", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +5\r\n\r\n"),
    HeadRefusalCase("Content-Length -1", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n"),
    HeadRefusalCase("Content-Length list 5, 5", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\n"),
    HeadRefusalCase("Content-Length blank", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length:  \r\n\r\n"),
    HeadRefusalCase("Content-Length empty", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length:\r\n\r\n"),
    HeadRefusalCase("Content-Length hex", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x5\r\n\r\n"),
    HeadRefusalCase("Content-Length with a suffix", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5a\r\n\r\n"),
    HeadRefusalCase("Content-Length inner space", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1 0\r\n\r\n"),
    HeadRefusalCase(
        "Content-Length huge",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 99999999999999999999\r\n\r\n"
    ),
    HeadRefusalCase(
        "Content-Length 16 digits",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000000000000000\r\n\r\n"
    ),
    HeadRefusalCase(
        "Transfer-Encoding gzip",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n",
        .unsupportedTransferCoding
    ),
    HeadRefusalCase(
        "Transfer-Encoding gzip, chunked",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        .unsupportedTransferCoding
    ),
    HeadRefusalCase(
        "Transfer-Encoding twice",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    HeadRefusalCase(
        "Transfer-Encoding in HTTP/1.0",
        "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    HeadRefusalCase("no Host in HTTP/1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
    HeadRefusalCase("two Host fields", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
    HeadRefusalCase("two Host fields, different case", "GET / HTTP/1.1\r\nHost: a.test\r\nhOST: a.test\r\n\r\n"),
    HeadRefusalCase("two Upgrade fields", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n"),
    HeadRefusalCase("control character in a value", "GET / HTTP/1.1\r\nHost: a.test\r\nX: a\u{1}b\r\n\r\n"),
    HeadRefusalCase("DEL in a value", "GET / HTTP/1.1\r\nHost: a.test\r\nX: a\u{7F}b\r\n\r\n"),
    HeadRefusalCase("NUL in a value", "GET / HTTP/1.1\r\nHost: a.test\r\nX: a\u{0}b\r\n\r\n"),
    HeadRefusalCase("NUL in a field name", "GET / HTTP/1.1\r\nHost: a.test\r\nX\u{0}Y: b\r\n\r\n"),
    HeadRefusalCase("NUL in the Host value", "GET / HTTP/1.1\r\nHost: a.te\u{0}st\r\n\r\n"),
    HeadRefusalCase("bare CR in a value", "GET / HTTP/1.1\r\nHost: a.test\r\nX: a\rb\r\n\r\n"),
    HeadRefusalCase("bare CR ending a header line", "GET / HTTP/1.1\r\nHost: a.test\rX: b\r\n\r\n"),
    HeadRefusalCase("bare CR in the request line", "GET /\r HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a.test\r\n\r\n", .versionNotSupported),
    HeadRefusalCase("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a.test\r\n\r\n", .versionNotSupported),
    HeadRefusalCase("HTTP/0.9", "GET / HTTP/0.9\r\nHost: a.test\r\n\r\n", .versionNotSupported),
    HeadRefusalCase("version HTTP/1.x", "GET / HTTP/1.x\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("version HTTX/1.1", "GET / HTTX/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("version in lower case", "GET / http/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("version HTTP/11", "GET / HTTP/11\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("version HTTP/1.10", "GET / HTTP/1.10\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("space after the version", "GET / HTTP/1.1 \r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("no version", "GET /\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("two spaces after the method", "GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("space in the target", "GET /a b HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("DEL in the target", "GET /a\u{7F} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("invalid method character", "G(T / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("no method", " / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    HeadRefusalCase("CONNECT", "CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test:443\r\n\r\n"),
    // Targets that are no path (issue 9): nothing but origin-form, http(s) absolute-form and OPTIONS * is served.
    HeadRefusalCase("a relative target", "GET a/b HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("authority-form with GET", "GET raw.test:80 HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("a target starting with @", "GET @evil.example/x HTTP/1.1\r\nHost: redir.test\r\n\r\n"),
    HeadRefusalCase("a target starting with a dot", "GET .evil.example/x HTTP/1.1\r\nHost: redir.test\r\n\r\n"),
    HeadRefusalCase("asterisk-form with GET", "GET * HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("an ftp URL", "GET ftp://raw.test/a HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("http:/ with one slash", "GET http:/raw.test/a HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("lower-case CONNECT", "Connect raw.test:443 HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("lower-case get", "get / HTTP/1.1\r\nHost: raw.test\r\n\r\n"),
    HeadRefusalCase("TRACE", "TRACE / HTTP/1.1\r\nHost: raw.test\r\n\r\n", .methodNotAllowed),
    // Transfer-Encoding that frames nothing is malformed, not an unknown coding (RFC 9112 §6.1, §5.2).
    HeadRefusalCase("Transfer-Encoding empty", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:\r\n\r\n"),
    HeadRefusalCase(
        "Transfer-Encoding folded",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
    ),
    HeadRefusalCase(
        "Transfer-Encoding empty with Content-Length",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\nabc"
    ),
    HeadRefusalCase(
        "Transfer-Encoding gzip with Content-Length",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc"
    ),
    HeadRefusalCase(
        "a request line over 8 KiB",
        "GET /\(String(repeating: "a", count: 9000)) HTTP/1.1\r\nHost: a.test\r\n\r\n",
        .requestLineTooLong
    ),
    HeadRefusalCase(
        "a request line over 8 KiB, not yet ended",
        "GET /\(String(repeating: "a", count: 9000))",
        .requestLineTooLong
    ),
]

/// The strict request head parser: every field of ``RequestHead`` for valid heads, the lines it drops, incremental
/// parsing over a growing buffer, the size and count limits, and every smuggling shape it must refuse.
@Suite("RequestHeadParser")
struct RequestHeadParserTests {
    @Test(
        "an absolute-form target routes by its authority; userinfo or no host is refused",
        arguments: [
            ("GET http://user@shop.test/ HTTP/1.1\r\nHost: shop.test\r\n\r\n", "userinfo in the request target"),
            ("GET http:///a HTTP/1.1\r\nHost: shop.test\r\n\r\n", "no host in the absolute-form request target"),
            ("GET https://?a HTTP/1.1\r\nHost: shop.test\r\n\r\n", "no host in the absolute-form request target"),
        ]
    )
    func absoluteFormRefused(text: String, reason: String) {
        var parser = RequestHeadParser(maximumHeadBytes: 8192, maximumHeaderCount: 100)
        let result = Array(text.utf8).withUnsafeBytes { parser.parse($0) }
        #expect(result == .failure(.malformed(reason)))
    }

    @Test("the routing host of an absolute-form request is the target's authority")
    func absoluteFormRoutingHost() throws {
        let text = "GET http://a.test:81/x HTTP/1.1\r\nHost: b.test\r\n\r\n"
        let bytes = Array(text.utf8)
        var parser = RequestHeadParser(maximumHeadBytes: 8192, maximumHeaderCount: 100)
        let result = bytes.withUnsafeBytes { parser.parse($0) }
        guard case .complete(let head) = result else {
            Issue.record("\(result)")
            return
        }
        let routing = try #require(head.routingHost)
        #expect(String(decoding: bytes[routing], as: UTF8.self) == "a.test:81")
        #expect(String(decoding: bytes[try #require(head.host)], as: UTF8.self) == "b.test")
        // The Host line is not forwarded: the authority is sent as Host instead.
        #expect(parser.droppedLines.map { String(decoding: bytes[$0], as: UTF8.self) } == ["Host: b.test\r\n"])
    }

    @Test("a GET head: every field")
    func validGet() throws {
        let text = "GET /path?q=1 HTTP/1.1\r\nHost: Shop.Test:8080 \r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n"
        let (result, parser) = parse(text)
        let expected = RequestHead(
            start: 0,
            end: text.utf8.count,
            method: 0..<3,
            target: 4..<13,
            minorVersion: 1,
            methodKind: .get,
            host: offsets(of: "Shop.Test:8080", in: text),
            contentLength: nil,
            isChunked: false,
            connectionClose: false,
            connectionKeepAlive: false,
            connectionUpgrade: false,
            upgrade: nil,
            expectsContinue: false
        )
        #expect(result == .complete(expected))
        #expect(parser.droppedLines.isEmpty)
        #expect(parser.forwardedFor.isEmpty)
        #expect(expected.keepAlive)
        #expect(!expected.hasBody)
        #expect(!expected.requestsUpgrade)
        let bytes = Array(text.utf8)
        #expect(string(bytes, expected.target) == "/path?q=1")
    }

    @Test("a POST head: every field, the dropped lines and the X-Forwarded-For values")
    func validPost() throws {
        let text =
            "POST /submit HTTP/1.1\r\n"
            + "Host: shop.test\r\n"
            + "Content-Length: 11\r\n"
            + "Connection: keep-alive\r\n"
            + "Keep-Alive: timeout=5\r\n"
            + "X-Forwarded-For: 10.0.0.1\r\n"
            + "Accept: */*\r\n"
            + "X-Forwarded-For:  10.0.0.2 , 10.0.0.3 \r\n"
            + "X-Real-IP: 1.2.3.4\r\n"
            + "X-Forwarded-Proto: http\r\n"
            + "X-Forwarded-Host: evil.test\r\n"
            + "Proxy-Connection: keep-alive\r\n"
            + "TE: trailers\r\n"
            + "Expect: 100-continue\r\n"
            + "\r\n"
        let body = "hello world"
        let (result, parser) = parse(text + body)
        let expected = RequestHead(
            start: 0,
            end: text.utf8.count,
            method: 0..<4,
            target: 5..<12,
            minorVersion: 1,
            methodKind: .post,
            host: offsets(of: "shop.test", in: text),
            contentLength: 11,
            isChunked: false,
            connectionClose: false,
            connectionKeepAlive: true,
            connectionUpgrade: false,
            upgrade: nil,
            expectsContinue: true
        )
        #expect(result == .complete(expected))
        #expect(expected.hasBody)
        #expect(expected.keepAlive)
        #expect(
            parser.droppedLines == [
                lineRange("Connection: keep-alive", in: text),
                lineRange("Keep-Alive: timeout=5", in: text),
                lineRange("X-Forwarded-For: 10.0.0.1", in: text),
                lineRange("X-Forwarded-For:  10.0.0.2 , 10.0.0.3 ", in: text),
                lineRange("X-Real-IP: 1.2.3.4", in: text),
                lineRange("X-Forwarded-Proto: http", in: text),
                lineRange("X-Forwarded-Host: evil.test", in: text),
                lineRange("Proxy-Connection: keep-alive", in: text),
                lineRange("TE: trailers", in: text),
            ]
        )
        let bytes = Array(text.utf8)
        #expect(parser.forwardedFor.map { string(bytes, $0) } == ["10.0.0.1", "10.0.0.2 , 10.0.0.3"])
    }

    @Test("a chunked request, an upgrade request and other methods")
    func otherShapes() throws {
        let chunked = try parsedHead("PUT /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked\r\n\r\n")
        #expect(chunked.isChunked)
        #expect(chunked.contentLength == nil)
        #expect(chunked.hasBody)
        #expect(chunked.methodKind == .put)

        let text = "GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade:  websocket \r\n\r\n"
        let upgrade = try parsedHead(text)
        #expect(upgrade.connectionUpgrade)
        #expect(upgrade.connectionKeepAlive)
        #expect(upgrade.upgrade == offsets(of: "websocket", in: text))
        #expect(upgrade.requestsUpgrade)

        #expect(try parsedHead("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").methodKind == .head)
        #expect(try parsedHead("DELETE / HTTP/1.1\r\nHost: a\r\n\r\n").methodKind == .delete)
        #expect(try parsedHead("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").methodKind == .options)
        #expect(try parsedHead("PATCH / HTTP/1.1\r\nHost: a\r\n\r\n").methodKind == .other)
        #expect(try parsedHead("PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n").methodKind == .other)
        #expect(try parsedHead("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").hasBody == false)
        #expect(try parsedHead("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n").contentLength == 0)
        #expect(
            try parsedHead("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999\r\n\r\n").contentLength
                == 999_999_999_999_999
        )
        #expect(try parsedHead("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expectsContinue)
        #expect(try parsedHead("POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n").expectsContinue == false)
    }

    @Test("an empty header value and whitespace around values are trimmed")
    func emptyValues() throws {
        let text = "GET / HTTP/1.1\r\nX-Empty:\r\nHost:\t a.test\t \r\nX-Blank:   \r\n\r\n"
        let head = try parsedHead(text)
        #expect(head.host == offsets(of: "a.test", in: text))
    }

    @Test(
        "a head arriving byte by byte is incomplete until its last byte, then parses as in one piece",
        arguments: [
            "GET /path?q=1 HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo, keep-alive\r\nX-Foo: 1\r\nKeep-Alive: 5\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ]
    )
    func byteByByte(text: String) {
        let bytes = Array(text.utf8)
        var oneShot = parser()
        let expected = bytes.withUnsafeBytes { oneShot.parse($0) }
        guard case .complete = expected else {
            Issue.record("the head does not parse in one piece: \(expected)")
            return
        }
        var incremental = parser()
        for count in 0..<bytes.count {
            let result = bytes[0..<count].withUnsafeBytes { incremental.parse($0) }
            #expect(result == .incomplete, "prefix of \(count) bytes")
        }
        let result = bytes.withUnsafeBytes { incremental.parse($0) }
        #expect(result == expected)
        #expect(incremental.droppedLines == oneShot.droppedLines)
        #expect(incremental.forwardedFor == oneShot.forwardedFor)
    }

    @Test("a parser reset between requests parses the next head from scratch")
    func reset() {
        var parser = parser()
        #expect(parse("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n", into: &parser) == .incomplete)
        parser.reset()
        let text = "GET /b HTTP/1.1\r\nHost: b\r\n\r\n"
        guard case .complete(let head) = parse(text, into: &parser) else {
            Issue.record("expected a complete head")
            return
        }
        #expect(head.end == text.utf8.count)
        #expect(head.target == 4..<6)
    }

    @Test("empty lines before the request line are skipped")
    func leadingEmptyLines() throws {
        let text = "\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
        let head = try parsedHead(text)
        #expect(head.start == 4)
        #expect(head.method == 4..<7)
        #expect(head.target == 8..<9)
        #expect(head.end == text.utf8.count)
        #expect(head.host == offsets(of: "a.test", in: text))

        let one = try parsedHead("\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        #expect(one.start == 2)
    }

    @Test("HTTP/1.0 without Host is parsed; keep-alive only when asked for")
    func http10() throws {
        let plain = try parsedHead("GET / HTTP/1.0\r\n\r\n")
        #expect(plain.minorVersion == 0)
        #expect(plain.host == nil)
        #expect(!plain.keepAlive)
        #expect(plain.end == 18)

        let keepAlive = try parsedHead("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        #expect(keepAlive.connectionKeepAlive)
        #expect(keepAlive.keepAlive)

        let both = try parsedHead("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
        #expect(!both.keepAlive)

        // An upgrade is HTTP/1.1 only.
        let upgrade = try parsedHead("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        #expect(upgrade.connectionUpgrade)
        #expect(!upgrade.requestsUpgrade)
    }

    @Test("Connection options set the close, keep-alive and upgrade flags, case-insensitively")
    func connectionFlags() throws {
        let close = try parsedHead("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n")
        #expect(close.connectionClose)
        #expect(!close.keepAlive)

        let keepAlive = try parsedHead("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        #expect(keepAlive.connectionKeepAlive)
        #expect(!keepAlive.connectionClose)
        #expect(keepAlive.keepAlive)

        let list = try parsedHead(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: ,Upgrade , close,\r\nUpgrade: websocket\r\n\r\n"
        )
        #expect(list.connectionUpgrade)
        #expect(list.connectionClose)
        #expect(list.requestsUpgrade)

        let twoFields = try parsedHead("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: close\r\n\r\n")
        #expect(twoFields.connectionUpgrade)
        #expect(twoFields.connectionClose)
        #expect(!twoFields.requestsUpgrade)  // no Upgrade field

        let noConnection = try parsedHead("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
        #expect(noConnection.upgrade != nil)
        #expect(!noConnection.requestsUpgrade)
    }

    @Test("fields named by Connection are dropped, in order with the other dropped lines")
    func connectionOptionsDropFields() {
        let text =
            "GET / HTTP/1.1\r\n"
            + "X-Foo: before\r\n"
            + "Host: a.test\r\n"
            + "Connection: x-foo, X-Bar\r\n"
            + "X-Bar: 2\r\n"
            + "X-Keep: 3\r\n"
            + "x-foo: after\r\n"
            + "\r\n"
        let (result, parser) = parse(text)
        guard case .complete = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(
            parser.droppedLines == [
                lineRange("X-Foo: before", in: text),
                lineRange("Connection: x-foo, X-Bar", in: text),
                lineRange("X-Bar: 2", in: text),
                lineRange("x-foo: after", in: text),
            ]
        )
    }

    @Test("Connection naming a field that is dropped anyway lists the line once")
    func connectionOptionAlreadyDropped() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, x-a\r\nKeep-Alive: 5\r\nX-A: 1\r\n\r\n"
        let (_, parser) = parse(text)
        #expect(
            parser.droppedLines == [
                lineRange("Connection: Keep-Alive, x-a", in: text),
                lineRange("Keep-Alive: 5", in: text),
                lineRange("X-A: 1", in: text),
            ]
        )
    }

    @Test("Connection cannot drop the fields that frame or route the request")
    func connectionCannotDropFraming() throws {
        let text = "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nConnection: content-length, host\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(head.contentLength == 5)
        #expect(parser.droppedLines == [lineRange("Connection: content-length, host", in: text)])

        let chunked =
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n"
        let (chunkedResult, chunkedParser) = parse(chunked)
        guard case .complete(let chunkedHead) = chunkedResult else {
            Issue.record("expected a complete head, got \(chunkedResult)")
            return
        }
        #expect(chunkedHead.isChunked)
        #expect(chunkedParser.droppedLines == [lineRange("Connection: Transfer-Encoding", in: chunked)])
    }

    @Test("the lists are rebuilt for each head")
    func listsRebuilt() {
        var parser = parser()
        let first = "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo\r\nX-Foo: 1\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"
        _ = parse(first, into: &parser)
        #expect(parser.droppedLines.count == 3)
        #expect(parser.forwardedFor.count == 1)
        parser.reset()
        _ = parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n", into: &parser)
        #expect(parser.droppedLines.isEmpty)
        #expect(parser.forwardedFor.isEmpty)
    }

    @Test("every accepted target form: origin, http and https absolute-form, OPTIONS *")
    func acceptedTargetForms() throws {
        #expect(try parsedHead("GET /a?b HTTP/1.1\r\nHost: a\r\n\r\n").redirectPath.count == 4)
        #expect(try parsedHead("GET //evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n").absoluteForm == nil)
        #expect(try parsedHead("GET HTTP://a.test/x HTTP/1.1\r\nHost: a\r\n\r\n").absoluteForm != nil)
        #expect(try parsedHead("GET https://a.test HTTP/1.1\r\nHost: a\r\n\r\n").redirectPath.isEmpty)
        let options = try parsedHead("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(options.isAsteriskForm)
        #expect(options.redirectPath.isEmpty)
    }

    @Test("fields with underscores are dropped unless the configuration keeps them")
    func underscoreFields() {
        let text =
            "GET / HTTP/1.1\r\nHost: a.test\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n"
            + "Transfer_Encoding: chunked\r\nX-Ok: 1\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(!head.isChunked)
        #expect(
            parser.droppedLines == [
                lineRange("X_Real_IP: 6.6.6.6", in: text),
                lineRange("X_Forwarded_Proto: https", in: text),
                lineRange("Transfer_Encoding: chunked", in: text),
            ]
        )
        var keeping = RequestHeadParser(maximumHeadBytes: 8192, maximumHeaderCount: 100, forwardsUnderscoreFields: true)
        _ = parse(text, into: &keeping)
        #expect(keeping.droppedLines.isEmpty)
    }

    @Test("HTTP2-Settings is dropped and kept aside for an h2c upgrade")
    func http2Settings() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(head.http2Settings == offsets(of: "AAMA", in: text))
        #expect(parser.droppedLines.contains(lineRange("HTTP2-Settings: AAMA", in: text)))
    }

    @Test("refusals", arguments: refusals)
    fileprivate func refused(_ refusal: HeadRefusalCase) {
        let (result, _) = parse(refusal.head)
        #expect(refusal.refusal.matches(result), "got \(result)")
    }

    @Test("Transfer-Encoding: chunked, chunked is refused")
    func chunkedTwice() {
        let (result, _) = parse("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")
        // Chunked may be applied once only (RFC 9112 §6.1); either refusal keeps the body from being misread.
        #expect(
            HeadRefusal.malformed.matches(result) || HeadRefusal.unsupportedTransferCoding.matches(result),
            "\(result)"
        )
    }

    @Test("too many header fields")
    func tooManyHeaders() {
        let three = "GET / HTTP/1.1\r\nHost: a\r\nX-1: 1\r\nX-2: 2\r\n\r\n"
        let (accepted, _) = parse(three, maximumHeaderCount: 3)
        guard case .complete = accepted else {
            Issue.record("three fields are within the limit: \(accepted)")
            return
        }
        let four = "GET / HTTP/1.1\r\nHost: a\r\nX-1: 1\r\nX-2: 2\r\nX-3: 3\r\n\r\n"
        let (refused, _) = parse(four, maximumHeaderCount: 3)
        #expect(refused == .failure(.tooManyHeaders))
    }

    @Test("a head larger than the limit is refused, complete or not")
    func headTooLarge() {
        let head = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: " + String(repeating: "p", count: 40) + "\r\n\r\n"
        let size = head.utf8.count

        guard case .complete = parse(head, maximumHeadBytes: size).0 else {
            Issue.record("a head of exactly the limit is accepted")
            return
        }
        // Complete but one byte too large.
        #expect(parse(head, maximumHeadBytes: size - 1).0 == .failure(.headerTooLarge))

        // Incomplete: refused once more bytes than the limit arrived without the end of the head.
        let partial = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: " + String(repeating: "p", count: 40)
        let partialSize = partial.utf8.count
        #expect(parse(partial, maximumHeadBytes: partialSize).0 == .incomplete)
        #expect(parse(partial, maximumHeadBytes: partialSize - 1).0 == .failure(.headerTooLarge))

        // Body bytes after a small head do not count.
        let withBody = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + String(repeating: "b", count: 100)
        guard case .complete = parse(withBody, maximumHeadBytes: 64).0 else {
            Issue.record("body bytes were counted as head bytes")
            return
        }
    }
}
