import Testing

@testable import Switchyard

/// The range of the whole header line `line` (CRLF included) in `text`.
private func lineRange(_ line: String, in text: String) -> Range<Int> {
    let haystack = Array(text.utf8)
    let pattern = Array((line + "\r\n").utf8)
    var start = 0
    while start + pattern.count <= haystack.count {
        if Array(haystack[start..<(start + pattern.count)]) == pattern {
            return start..<(start + pattern.count)
        }
        start += 1
    }
    Issue.record("'\(line)' not found")
    return 0..<0
}

private func parse(
    _ text: String,
    maximumHeadBytes: Int = 8192,
    maximumHeaderCount: Int = 100
) -> (ResponseHeadParser.Result, ResponseHeadParser) {
    var parser = ResponseHeadParser(maximumHeadBytes: maximumHeadBytes, maximumHeaderCount: maximumHeaderCount)
    let result = Array(text.utf8).withUnsafeBytes { parser.parse($0) }
    return (result, parser)
}

private struct ParseFailed: Error {}

/// The head `text` parses to; records an issue when it is refused.
private func parsedHead(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> ResponseHead {
    let (result, _) = parse(text)
    guard case .complete(let head) = result else {
        Issue.record("expected a complete head, got \(result)", sourceLocation: sourceLocation)
        throw ParseFailed()
    }
    return head
}

private func isMalformed(_ result: ResponseHeadParser.Result) -> Bool {
    if case .failure(.malformed) = result { return true }
    return false
}

/// The backend response head parser: the status line, framing fields, whether the head must be rewritten before it
/// reaches the client, the hop-by-hop lines it drops, and the responses it refuses (answered 502).
@Suite("ResponseHeadParser")
struct ResponseHeadParserTests {
    @Test("a plain 200 with Content-Length: every field")
    func plain() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n"
        let (result, parser) = parse(text + "hello")
        #expect(
            result
                == .complete(
                    ResponseHead(
                        end: text.utf8.count,
                        status: 200,
                        minorVersion: 1,
                        contentLength: 5,
                        isChunked: false,
                        hasOtherTransferCoding: false,
                        connectionClose: false,
                        connectionKeepAlive: false,
                        mustRewrite: false
                    )
                )
        )
        #expect(parser.droppedLines.isEmpty)
    }

    @Test(
        "status codes and reason phrases",
        arguments: [
            ("HTTP/1.1 200 OK\r\n\r\n", 200, 1),
            ("HTTP/1.1 404 Not Found\r\n\r\n", 404, 1),
            ("HTTP/1.0 503 Service Unavailable\r\n\r\n", 503, 0),
            ("HTTP/1.1 299 \r\n\r\n", 299, 1),
            ("HTTP/1.1 200\r\n\r\n", 200, 1),
            ("HTTP/1.1 100 Continue\r\n\r\n", 100, 1),
            ("HTTP/1.1 999 Whatever \u{E9}\r\n\r\n", 999, 1),
            ("HTTP/1.1 500 Internal\tError\r\n\r\n", 500, 1),
        ]
    )
    func statusLine(text: String, status: Int, minorVersion: Int) throws {
        let head = try parsedHead(text)
        #expect(head.status == status)
        #expect(head.minorVersion == minorVersion)
        #expect(head.end == text.utf8.count)
    }

    @Test(
        "invalid status lines are refused",
        arguments: [
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 20x OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 000\r\n\r\n",
            "HTTP/1.1  200 OK\r\n\r\n",
            "HTTP/1.1 200OK\r\n\r\n",
            "HTTP/1.2 200 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "http/1.1 200 OK\r\n\r\n",
            "HTTP/1.1\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 O\u{1}K\r\n\r\n",
            "HTTP/1.1 200 O\u{0}K\r\n\r\n",
            "HTTP/1.1 200 O\rK\r\n\r\n",
            "HTTP/1.1 -20 OK\r\n\r\n",
        ]
    )
    func invalidStatusLine(text: String) {
        #expect(isMalformed(parse(text).0), "\(parse(text).0)")
    }

    @Test("a bare LF is refused")
    func bareLineFeed() {
        #expect(isMalformed(parse("HTTP/1.1 200 OK\nContent-Length: 0\n\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n").0))
    }

    @Test("an incomplete head, and one that is too large")
    func incompleteAndTooLarge() {
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Le").0 == .incomplete)
        #expect(parse("").0 == .incomplete)
        let text = "HTTP/1.1 200 OK\r\nX-Pad: " + String(repeating: "p", count: 50) + "\r\n\r\n"
        let size = text.utf8.count
        guard case .complete = parse(text, maximumHeadBytes: size).0 else {
            Issue.record("a head of exactly the limit is accepted")
            return
        }
        #expect(parse(text, maximumHeadBytes: size - 1).0 == .failure(.headerTooLarge))
        let partial = String(text.dropLast(2))
        #expect(parse(partial, maximumHeadBytes: partial.utf8.count).0 == .incomplete)
        #expect(parse(partial, maximumHeadBytes: partial.utf8.count - 1).0 == .failure(.headerTooLarge))
    }

    @Test("too many header fields are refused")
    func tooManyHeaders() {
        let text = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        guard case .complete = parse(text, maximumHeaderCount: 3).0 else {
            Issue.record("three fields are within the limit")
            return
        }
        #expect(parse(text, maximumHeaderCount: 2).0 == .failure(.tooManyHeaders))
    }

    @Test("header syntax is as strict as for requests")
    func headerSyntax() {
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nX: a\u{0}b\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n").0))
    }

    @Test("framing: Content-Length, chunked, other codings, none")
    func framing() throws {
        let length = try parsedHead("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
        #expect(length.contentLength == 42)
        #expect(!length.isChunked)
        #expect(!length.hasOtherTransferCoding)

        let chunked = try parsedHead("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(chunked.isChunked)
        #expect(chunked.contentLength == nil)

        let gzipChunked = try parsedHead("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n")
        #expect(gzipChunked.isChunked)
        #expect(!gzipChunked.hasOtherTransferCoding)

        let gzip = try parsedHead("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
        #expect(!gzip.isChunked)
        #expect(gzip.hasOtherTransferCoding)

        let chunkedThenGzip = try parsedHead("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
        #expect(!chunkedThenGzip.isChunked)
        #expect(chunkedThenGzip.hasOtherTransferCoding)

        let none = try parsedHead("HTTP/1.1 200 OK\r\n\r\n")
        #expect(none.contentLength == nil)
        #expect(!none.isChunked)
        #expect(!none.hasOtherTransferCoding)

        let zero = try parsedHead("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        #expect(zero.contentLength == 0)
    }

    @Test("conflicting or invalid Content-Length is refused")
    func conflictingContentLength() {
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n").0))
    }

    @Test("Transfer-Encoding with Content-Length is refused")
    func transferEncodingAndContentLength() {
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").0))
        #expect(isMalformed(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n").0))
    }

    @Test("a lone Connection: keep-alive needs no rewrite")
    func loneKeepAlive() throws {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(!head.mustRewrite)
        #expect(head.connectionKeepAlive)
        #expect(!head.connectionClose)
        #expect(head.backendKeepAlive)
        // Still listed, for when the head is rewritten for another reason.
        #expect(parser.droppedLines == [lineRange("Connection: keep-alive", in: text)])
        #expect(!(try parsedHead("HTTP/1.1 200 OK\r\nConnection: Keep-Alive,\r\n\r\n").mustRewrite))
    }

    @Test("a Keep-Alive or Proxy-Connection field must be rewritten away")
    func keepAliveField() throws {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(head.mustRewrite)
        #expect(
            parser.droppedLines == [
                lineRange("Connection: keep-alive", in: text),
                lineRange("Keep-Alive: timeout=5", in: text),
            ]
        )
        #expect(try parsedHead("HTTP/1.1 200 OK\r\nProxy-Connection: close\r\n\r\n").mustRewrite)
    }

    @Test("Connection: close must be rewritten and ends the backend connection")
    func connectionClose() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(head.mustRewrite)
        #expect(head.connectionClose)
        #expect(!head.backendKeepAlive)
        #expect(parser.droppedLines == [lineRange("Connection: close", in: text)])

        #expect(try parsedHead("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n").mustRewrite)
        #expect(try parsedHead("HTTP/1.1 200 OK\r\nConnection: x-other\r\n\r\n").mustRewrite)
    }

    @Test("backend keep-alive follows the response's version and Connection field")
    func backendKeepAlive() throws {
        #expect(try parsedHead("HTTP/1.1 200 OK\r\n\r\n").backendKeepAlive)
        #expect(!(try parsedHead("HTTP/1.0 200 OK\r\n\r\n").backendKeepAlive))
        #expect(try parsedHead("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").backendKeepAlive)
        #expect(!(try parsedHead("HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n\r\n").backendKeepAlive))
    }

    @Test("fields named by the response's Connection are dropped (RFC 9110 §7.6.1)")
    func connectionOptionsDropped() throws {
        let text = "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: token\r\nContent-Length: 0\r\n\r\n"
        let (result, parser) = parse(text)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(head.mustRewrite)
        #expect(
            parser.droppedLines == [
                lineRange("Connection: x-secret", in: text),
                lineRange("X-Secret: token", in: text),
            ]
        )
    }

    @Test("a 101 keeps its Upgrade field; other responses drop it")
    func upgrade() throws {
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        let (result, parser) = parse(switching)
        guard case .complete(let head) = result else {
            Issue.record("expected a complete head, got \(result)")
            return
        }
        #expect(head.status == 101)
        #expect(!head.isInterim)
        #expect(!parser.droppedLines.contains(lineRange("Upgrade: websocket", in: switching)))

        let ok = "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"
        let (okResult, okParser) = parse(ok)
        guard case .complete(let okHead) = okResult else {
            Issue.record("expected a complete head, got \(okResult)")
            return
        }
        #expect(okHead.mustRewrite)
        #expect(okParser.droppedLines == [lineRange("Upgrade: h2c", in: ok)])
    }

    @Test("interim responses")
    func interim() throws {
        #expect(try parsedHead("HTTP/1.1 100 Continue\r\n\r\n").isInterim)
        #expect(try parsedHead("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n").isInterim)
        #expect(!(try parsedHead("HTTP/1.1 101 Switching Protocols\r\n\r\n").isInterim))
        #expect(!(try parsedHead("HTTP/1.1 200 OK\r\n\r\n").isInterim))
    }

    @Test("a head arriving in pieces is incomplete until its end")
    func incremental() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        let bytes = Array(text.utf8)
        var parser = ResponseHeadParser(maximumHeadBytes: 8192, maximumHeaderCount: 100)
        for count in 0..<bytes.count {
            let result = bytes[0..<count].withUnsafeBytes { parser.parse($0) }
            #expect(result == .incomplete, "prefix of \(count) bytes")
        }
        let result = bytes.withUnsafeBytes { parser.parse($0) }
        #expect(result == parse(text).0)
        #expect(parser.droppedLines == [lineRange("Connection: close", in: text)])
    }
}
