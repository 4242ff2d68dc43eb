/// What the proxy needs to know about a backend's response head.
struct ResponseHead: Equatable {
    /// Offset just past the empty line that ends the head.
    var end: Int
    var status: Int
    var minorVersion: Int
    var contentLength: Int?
    var isChunked: Bool
    /// A transfer coding other than a final `chunked`: the body runs until the backend closes.
    var hasOtherTransferCoding: Bool
    var connectionClose: Bool
    var connectionKeepAlive: Bool
    /// Whether hop-by-hop lines other than a lone `Connection: keep-alive` were found.
    var mustRewrite: Bool

    /// Whether the backend connection may carry another request after this response.
    var backendKeepAlive: Bool {
        minorVersion == 1 ? !connectionClose : (connectionKeepAlive && !connectionClose)
    }

    /// An interim response (1xx other than 101): a final one follows.
    var isInterim: Bool {
        status >= 100 && status < 200 && status != 101
    }
}

/// Parses backend response heads in place, as strictly as requests: a response this parser refuses is answered
/// 502 rather than passed on in a shape the client might read differently.
struct ResponseHeadParser {
    var maximumHeadBytes: Int
    var maximumHeaderCount: Int
    /// Hop-by-hop lines, not forwarded when the head is rewritten.
    private(set) var droppedLines: [Range<Int>] = []
    private var locator = HeadLocator()

    init(maximumHeadBytes: Int, maximumHeaderCount: Int) {
        self.maximumHeadBytes = maximumHeadBytes
        self.maximumHeaderCount = maximumHeaderCount
        droppedLines.reserveCapacity(4)
    }

    enum Result: Equatable {
        case incomplete
        case complete(ResponseHead)
        case failure(HTTPHeadError)
    }

    mutating func reset() {
        locator.reset()
    }

    mutating func parse(_ bytes: UnsafeRawBufferPointer) -> Result {
        switch locator.locate(in: bytes, start: 0) {
        case .incomplete:
            return bytes.count > maximumHeadBytes ? .failure(.headerTooLarge) : .incomplete
        case .bareLineFeed:
            return .failure(.malformed("response line ends with a bare LF"))
        case .complete(let end):
            guard end <= maximumHeadBytes else { return .failure(.headerTooLarge) }
            do {
                return .complete(try parseHead(bytes, end: end))
            } catch {
                return .failure(error)
            }
        }
    }

    private mutating func parseHead(_ bytes: UnsafeRawBufferPointer, end: Int) throws(HTTPHeadError) -> ResponseHead {
        droppedLines.removeAll(keepingCapacity: true)
        // Status line: HTTP-version SP 3DIGIT SP [reason] CRLF. The version check wants a CRLF after it, which a
        // status line does not have, so check it by hand.
        guard end >= 14,
            bytes[0] == UInt8(ascii: "H"), bytes[1] == UInt8(ascii: "T"), bytes[2] == UInt8(ascii: "T"),
            bytes[3] == UInt8(ascii: "P"), bytes[4] == UInt8(ascii: "/"), bytes[5] == UInt8(ascii: "1"),
            bytes[6] == UInt8(ascii: "."), bytes[7] == UInt8(ascii: "0") || bytes[7] == UInt8(ascii: "1"),
            bytes[8] == HTTPSyntax.space
        else {
            throw .malformed("invalid status line")
        }
        var status = 0
        for index in 9..<12 {
            let byte = bytes[index]
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { throw .malformed("invalid status code") }
            status = status * 10 + Int(byte - UInt8(ascii: "0"))
        }
        guard status >= 100 else { throw .malformed("invalid status code") }
        var index = 12
        guard bytes[index] == HTTPSyntax.space || bytes[index] == HTTPSyntax.cr else {
            throw .malformed("invalid status line")
        }
        while bytes[index] != HTTPSyntax.cr {
            guard HTTPSyntax.isFieldValueCharacter(bytes[index]) else { throw .malformed("invalid reason phrase") }
            index += 1
        }
        guard bytes[index + 1] == HTTPSyntax.lf else { throw .malformed("bare CR in the status line") }
        index += 2

        var head = ResponseHead(
            end: end,
            status: status,
            minorVersion: Int(bytes[7] - UInt8(ascii: "0")),
            contentLength: nil,
            isChunked: false,
            hasOtherTransferCoding: false,
            connectionClose: false,
            connectionKeepAlive: false,
            mustRewrite: false
        )
        var headerCount = 0
        var connectionOptions = false
        var field = RequestHeadParser.HeaderField(name: 0..<0, value: 0..<0, lineEnd: 0)
        var lineStart = index
        while let next = try RequestHeadParser.nextField(bytes, at: lineStart, end: end, into: &field) {
            headerCount += 1
            guard headerCount <= maximumHeaderCount else { throw .tooManyHeaders }
            let line = lineStart..<next
            switch field.name.count {
            case 10 where HTTPSyntax.equalsLowercase(bytes, field.name, "connection"):
                droppedLines.append(line)
                var onlyKeepAlive = true
                HTTPSyntax.forEachListElement(bytes, field.value) { option in
                    if HTTPSyntax.equalsLowercase(bytes, option, "close") {
                        head.connectionClose = true
                        onlyKeepAlive = false
                    } else if HTTPSyntax.equalsLowercase(bytes, option, "keep-alive") {
                        head.connectionKeepAlive = true
                    } else {
                        onlyKeepAlive = false
                        if !HTTPSyntax.equalsLowercase(bytes, option, "upgrade") { connectionOptions = true }
                    }
                }
                if !onlyKeepAlive { head.mustRewrite = true }
            case 10 where HTTPSyntax.equalsLowercase(bytes, field.name, "keep-alive"),
                16 where HTTPSyntax.equalsLowercase(bytes, field.name, "proxy-connection"):
                droppedLines.append(line)
                head.mustRewrite = true
            case 14 where HTTPSyntax.equalsLowercase(bytes, field.name, "content-length"):
                let length = try RequestHeadParser.parseContentLength(bytes, field.value)
                if let previous = head.contentLength, previous != length {
                    throw .malformed("conflicting Content-Length fields")
                }
                head.contentLength = length
            case 17 where HTTPSyntax.equalsLowercase(bytes, field.name, "transfer-encoding"):
                // The body is chunked when chunked is the final coding; any other coding runs until close.
                var last = 0..<0
                HTTPSyntax.forEachListElement(bytes, field.value) { last = $0 }
                if HTTPSyntax.equalsLowercase(bytes, last, "chunked") {
                    head.isChunked = true
                } else {
                    head.hasOtherTransferCoding = true
                }
            case 7 where HTTPSyntax.equalsLowercase(bytes, field.name, "upgrade"):
                // Meaningful only in a 101, which is forwarded untouched.
                if status != 101 {
                    droppedLines.append(line)
                    head.mustRewrite = true
                }
            default:
                break
            }
            lineStart = next
        }
        if (head.isChunked || head.hasOtherTransferCoding) && head.contentLength != nil {
            throw .malformed("both Content-Length and Transfer-Encoding in a response")
        }
        if connectionOptions && status != 101 {
            try RequestHeadParser.dropConnectionOptions(bytes, start: index, end: end, droppedLines: &droppedLines)
        }
        return head
    }
}
