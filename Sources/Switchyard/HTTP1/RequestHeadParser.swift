/// A strict, allocation-free parser of HTTP/1.0 and HTTP/1.1 request heads (RFC 9112).
///
/// It reads the bytes in place and refuses, rather than repairs, everything two parsers could disagree on:
/// bare LF line ends, obs-fold, whitespace before a colon, a `Content-Length` that is repeated or not a plain
/// number, `Transfer-Encoding` with `Content-Length` or in HTTP/1.0, a transfer coding other than `chunked`,
/// control characters in values, several `Host` fields. That is what keeps a request from being read one way here
/// and another way by the backend (request smuggling).
///
/// The parser lists the header lines the proxy must not forward (hop-by-hop fields, forwarding fields it sets
/// itself); the lists are kept across requests so that parsing allocates nothing once warm.
struct RequestHeadParser {
    /// Most bytes in a head, from the request line to the empty line.
    var maximumHeadBytes: Int
    /// Most header fields in a head.
    var maximumHeaderCount: Int
    /// Most bytes in the request line, CRLF included; a longer one is answered 414 (nginx's
    /// `large_client_header_buffers` size, 8 KiB, bounds it the same way).
    var maximumRequestLineBytes: Int
    /// Whether fields whose names contain `_` are forwarded. Off by default, as nginx's `underscores_in_headers`:
    /// CGI, PHP and WSGI map `X_Real_IP` and `X-Real-IP` to one variable, so the client's spelling would
    /// impersonate the balancer's own field.
    var forwardsUnderscoreFields: Bool
    /// Whether `X-Request-ID` lines are taken out (into ``requestIDs``) for the balancer to write its own.
    var replacesRequestID: Bool

    /// Header lines (from their first byte to just past their CRLF) that are not forwarded.
    private(set) var droppedLines: [Range<Int>] = []
    /// Values of `X-Forwarded-For` fields, to be extended with the client's address.
    private(set) var forwardedFor: [Range<Int>] = []
    /// Values of `Cookie` fields, for sticky sessions.
    private(set) var cookies: [Range<Int>] = []
    /// Values of `X-Request-ID` fields, with ``replacesRequestID`` (the lines are dropped: the balancer writes the one
    /// the backend gets, see ``RequestID``).
    private(set) var requestIDs: [Range<Int>] = []

    private var locator = HeadLocator()

    init(
        maximumHeadBytes: Int,
        maximumHeaderCount: Int,
        maximumRequestLineBytes: Int = 8192,
        forwardsUnderscoreFields: Bool = false,
        replacesRequestID: Bool = false
    ) {
        self.replacesRequestID = replacesRequestID
        self.maximumHeadBytes = maximumHeadBytes
        self.maximumHeaderCount = maximumHeaderCount
        self.maximumRequestLineBytes = min(maximumRequestLineBytes, maximumHeadBytes)
        self.forwardsUnderscoreFields = forwardsUnderscoreFields
        droppedLines.reserveCapacity(8)
        forwardedFor.reserveCapacity(2)
        cookies.reserveCapacity(2)
    }

    enum Result: Equatable {
        case incomplete
        case complete(RequestHead)
        case failure(HTTPHeadError)
    }

    /// Call before parsing a new request.
    mutating func reset() {
        locator.reset()
    }

    /// Parses the head at the start of `bytes`, if it is all there.
    mutating func parse(_ bytes: UnsafeRawBufferPointer) -> Result {
        // RFC 9112 §2.2: ignore empty lines before the request line (left over from a previous body).
        var start = 0
        while start + 1 < bytes.count, bytes[start] == HTTPSyntax.cr, bytes[start + 1] == HTTPSyntax.lf {
            start += 2
            guard start <= 8 else { return .failure(.malformed("empty lines before the request line")) }
        }
        switch locator.locate(in: bytes, start: start) {
        case .incomplete:
            if bytes.count - start > maximumRequestLineBytes,
                !Self.hasLineEnd(bytes, from: start, within: maximumRequestLineBytes)
            {
                return .failure(.requestLineTooLong)
            }
            if bytes.count - start > maximumHeadBytes { return .failure(.headerTooLarge) }
            return .incomplete
        case .bareLineFeed:
            return .failure(.malformed("line ends with a bare LF"))
        case .complete(let end):
            if end - start > maximumRequestLineBytes,
                !Self.hasLineEnd(bytes, from: start, within: maximumRequestLineBytes)
            {
                return .failure(.requestLineTooLong)
            }
            if end - start > maximumHeadBytes { return .failure(.headerTooLarge) }
            do {
                return .complete(try parseHead(bytes, start: start, end: end))
            } catch {
                return .failure(error)
            }
        }
    }

    private mutating func parseHead(
        _ bytes: UnsafeRawBufferPointer,
        start: Int,
        end: Int
    ) throws(HTTPHeadError) -> RequestHead {
        droppedLines.removeAll(keepingCapacity: true)
        forwardedFor.removeAll(keepingCapacity: true)
        cookies.removeAll(keepingCapacity: true)
        if !requestIDs.isEmpty { requestIDs.removeAll(keepingCapacity: true) }

        // Request line: method SP target SP HTTP-version CRLF
        var index = start
        while index < end, HTTPSyntax.isTokenCharacter(bytes[index]) { index += 1 }
        let method = start..<index
        guard !method.isEmpty, bytes[index] == HTTPSyntax.space else {
            throw .malformed("invalid method in the request line")
        }
        // Methods are case-sensitive and every registered one is upper case (RFC 9110 §9.1); a backend that
        // compares them without case would take `Connect` or `get` for another method than the balancer did, so
        // lower case is refused, as nginx does.
        for offset in method where bytes[offset] >= UInt8(ascii: "a") && bytes[offset] <= UInt8(ascii: "z") {
            throw .malformed("lower-case letters in the method")
        }
        index += 1
        let targetStart = index
        while index < end, HTTPSyntax.isTargetCharacter(bytes[index]) { index += 1 }
        let target = targetStart..<index
        guard !target.isEmpty, bytes[index] == HTTPSyntax.space else {
            throw .malformed("invalid request target")
        }
        index += 1
        let minorVersion = try Self.parseVersion(bytes, at: index, end: end)
        index += 10  // "HTTP/1.x\r\n"
        let methodKind = Self.methodKind(bytes, method)
        if methodKind == .trace {
            // TRACE echoes the request, cookies and credentials included, to any script that can send it
            // (cross-site tracing); nginx answers 405 too.
            throw .methodNotAllowed
        }
        try Self.checkTargetForm(bytes, target, methodKind: methodKind)

        var head = RequestHead(
            start: start,
            end: end,
            method: method,
            target: target,
            minorVersion: minorVersion,
            methodKind: methodKind,
            host: nil,
            contentLength: nil,
            isChunked: false,
            connectionClose: false,
            connectionKeepAlive: false,
            connectionUpgrade: false,
            upgrade: nil,
            expectsContinue: false
        )
        var headerCount = 0
        var hostLine: Range<Int>?
        var sawTransferEncoding = false
        var unsupportedCoding = false
        var connectionOptions = false
        var lineStart = index
        var field = HeaderField(name: 0..<0, value: 0..<0, lineEnd: 0)
        while let next = try Self.nextField(bytes, at: lineStart, end: end, into: &field) {
            headerCount += 1
            guard headerCount <= maximumHeaderCount else { throw .tooManyHeaders }
            let line = lineStart..<next
            if field.nameHasUnderscore && !forwardsUnderscoreFields {
                // Never a field the balancer acts on either: `Transfer_Encoding` frames nothing here, and must
                // frame nothing behind.
                droppedLines.append(line)
                lineStart = next
                continue
            }
            switch field.name.count {
            case 2 where HTTPSyntax.equalsLowercase(bytes, field.name, "te"):
                droppedLines.append(line)
            case 4 where HTTPSyntax.equalsLowercase(bytes, field.name, "host"):
                guard head.host == nil else { throw .malformed("more than one Host field") }
                head.host = field.value
                hostLine = line
            case 6 where HTTPSyntax.equalsLowercase(bytes, field.name, "expect"):
                head.expectsContinue = HTTPSyntax.equalsLowercase(bytes, field.value, "100-continue")
            case 6 where HTTPSyntax.equalsLowercase(bytes, field.name, "cookie"):
                cookies.append(field.value)
            case 14 where HTTPSyntax.equalsLowercase(bytes, field.name, "http2-settings"):
                // Connection-specific (RFC 7540 §3.2.1): re-added by the writer only when an h2c upgrade is
                // honoured.
                head.http2Settings = field.value
                droppedLines.append(line)
            case 7 where HTTPSyntax.equalsLowercase(bytes, field.name, "upgrade"):
                // Re-added by the writer when the upgrade is honoured.
                guard head.upgrade == nil else { throw .malformed("more than one Upgrade field") }
                head.upgrade = field.value
                droppedLines.append(line)
            case 9 where HTTPSyntax.equalsLowercase(bytes, field.name, "x-real-ip"):
                droppedLines.append(line)
            case 12 where replacesRequestID && HTTPSyntax.equalsLowercase(bytes, field.name, "x-request-id"):
                droppedLines.append(line)
                requestIDs.append(field.value)
            case 10 where HTTPSyntax.equalsLowercase(bytes, field.name, "connection"):
                droppedLines.append(line)
                HTTPSyntax.forEachListElement(bytes, field.value) { option in
                    if HTTPSyntax.equalsLowercase(bytes, option, "close") {
                        head.connectionClose = true
                    } else if HTTPSyntax.equalsLowercase(bytes, option, "keep-alive") {
                        head.connectionKeepAlive = true
                    } else if HTTPSyntax.equalsLowercase(bytes, option, "upgrade") {
                        head.connectionUpgrade = true
                    } else {
                        connectionOptions = true
                    }
                }
            case 10 where HTTPSyntax.equalsLowercase(bytes, field.name, "keep-alive"):
                droppedLines.append(line)
            case 14 where HTTPSyntax.equalsLowercase(bytes, field.name, "content-length"):
                guard head.contentLength == nil else { throw .malformed("more than one Content-Length field") }
                head.contentLength = try Self.parseContentLength(bytes, field.value)
            case 15 where HTTPSyntax.equalsLowercase(bytes, field.name, "x-forwarded-for"):
                droppedLines.append(line)
                forwardedFor.append(field.value)
            case 16 where HTTPSyntax.equalsLowercase(bytes, field.name, "proxy-connection"),
                16 where HTTPSyntax.equalsLowercase(bytes, field.name, "x-forwarded-host"):
                droppedLines.append(line)
            case 17 where HTTPSyntax.equalsLowercase(bytes, field.name, "transfer-encoding"):
                guard !sawTransferEncoding else { throw .malformed("more than one Transfer-Encoding field") }
                sawTransferEncoding = true
                // An empty value (what a folded field leaves on its first line) frames nothing: malformed, not
                // an unknown coding (RFC 9112 §6.1).
                guard !field.value.isEmpty else { throw .malformed("empty Transfer-Encoding") }
                if HTTPSyntax.equalsLowercase(bytes, field.value, "chunked") {
                    head.isChunked = true
                } else {
                    unsupportedCoding = true
                }
            case 17 where HTTPSyntax.equalsLowercase(bytes, field.name, "x-forwarded-proto"):
                droppedLines.append(line)
            default:
                break
            }
            lineStart = next
        }

        if sawTransferEncoding && head.contentLength != nil {
            throw .malformed("both Content-Length and Transfer-Encoding")
        }
        if unsupportedCoding {
            throw .unsupportedTransferCoding
        }
        if head.isChunked && minorVersion == 0 {
            throw .malformed("Transfer-Encoding in an HTTP/1.0 request")
        }
        if head.host == nil && minorVersion == 1 {
            throw .malformed("no Host field")
        }
        if head.methodKind == .connect {
            throw .malformed("CONNECT is not supported")
        }
        head.isAsteriskForm = target.count == 1 && bytes[target.lowerBound] == UInt8(ascii: "*")
        if let absolute = try Self.absoluteForm(bytes, target) {
            head.absoluteForm = absolute
            // The target's authority wins over Host (RFC 9112 §3.2.2); the backend gets it as Host, so that it
            // sees the host the request was routed by.
            if let hostLine {
                droppedLines.append(hostLine)
                droppedLines.sort { $0.lowerBound < $1.lowerBound }
            }
        }
        if connectionOptions {
            try Self.dropConnectionOptions(bytes, start: index, end: end, droppedLines: &droppedLines)
        }
        return head
    }

    /// Accepts the request-target forms of RFC 9112 §3.2 that a reverse proxy serves: origin-form (`/path?query`),
    /// absolute-form with `http` or `https`, and `*` for OPTIONS only. Authority-form belongs to CONNECT, which is
    /// refused anyway. Anything else (`a/b`, `@evil.example/x`, `ftp://…`, `http:/x`) is no path a backend or a
    /// redirect could use safely: 400.
    static func checkTargetForm(
        _ bytes: UnsafeRawBufferPointer,
        _ target: Range<Int>,
        methodKind: HTTPMethodKind
    ) throws(HTTPHeadError) {
        let first = bytes[target.lowerBound]
        if first == UInt8(ascii: "/") { return }
        if first == UInt8(ascii: "*") && target.count == 1 {
            guard methodKind == .options else {
                throw .malformed("asterisk-form target with a method other than OPTIONS")
            }
            return
        }
        if methodKind == .connect { return }  // authority-form; CONNECT itself is refused below
        if target.count >= 7, HTTPSyntax.equalsLowercase(bytes, target.lowerBound..<(target.lowerBound + 7), "http://")
        {
            return
        }
        if target.count >= 8, HTTPSyntax.equalsLowercase(bytes, target.lowerBound..<(target.lowerBound + 8), "https://")
        {
            return
        }
        throw .malformed("the request target is not a path or an http(s) URL")
    }

    /// Whether a CRLF ends a line that starts at `start` within `limit` bytes.
    private static func hasLineEnd(_ bytes: UnsafeRawBufferPointer, from start: Int, within limit: Int) -> Bool {
        let end = min(bytes.count, start + limit)
        var index = start
        while index < end {
            if bytes[index] == HTTPSyntax.lf { return true }
            index += 1
        }
        return false
    }

    /// Splits an absolute-form target (`http://host[:port][/path][?query]`, scheme in any case) into its authority
    /// and the rest; `nil` for any other form. An empty authority or one with userinfo (`user@host`, deprecated
    /// and a phishing device, RFC 9110 §4.2.4) is refused.
    static func absoluteForm(
        _ bytes: UnsafeRawBufferPointer,
        _ target: Range<Int>
    ) throws(HTTPHeadError) -> RequestHead.AbsoluteForm? {
        let authorityStart: Int
        if target.count >= 7, HTTPSyntax.equalsLowercase(bytes, target.lowerBound..<(target.lowerBound + 7), "http://")
        {
            authorityStart = target.lowerBound + 7
        } else if target.count >= 8,
            HTTPSyntax.equalsLowercase(bytes, target.lowerBound..<(target.lowerBound + 8), "https://")
        {
            authorityStart = target.lowerBound + 8
        } else {
            return nil
        }
        var index = authorityStart
        while index < target.upperBound, bytes[index] != UInt8(ascii: "/"), bytes[index] != UInt8(ascii: "?"),
            bytes[index] != UInt8(ascii: "#")
        {
            guard bytes[index] != UInt8(ascii: "@") else { throw .malformed("userinfo in the request target") }
            index += 1
        }
        guard index > authorityStart else { throw .malformed("no host in the absolute-form request target") }
        return RequestHead.AbsoluteForm(authority: authorityStart..<index, originForm: index..<target.upperBound)
    }

    /// Drops fields named as connection options (`Connection: X-Foo`), except those that frame or route the
    /// message: naming them is an attack (hop-by-hop abuse), not a request. Shared with responses.
    static func dropConnectionOptions(
        _ bytes: UnsafeRawBufferPointer,
        start: Int,
        end: Int,
        droppedLines: inout [Range<Int>]
    ) throws(HTTPHeadError) {
        var field = HeaderField(name: 0..<0, value: 0..<0, lineEnd: 0)
        var lineStart = start
        var names: [Range<Int>] = []
        while let next = try Self.nextField(bytes, at: lineStart, end: end, into: &field) {
            if HTTPSyntax.equalsLowercase(bytes, field.name, "connection") {
                HTTPSyntax.forEachListElement(bytes, field.value) { names.append($0) }
            }
            lineStart = next
        }
        lineStart = start
        while let next = try Self.nextField(bytes, at: lineStart, end: end, into: &field) {
            let protected =
                HTTPSyntax.equalsLowercase(bytes, field.name, "host")
                || HTTPSyntax.equalsLowercase(bytes, field.name, "content-length")
                || HTTPSyntax.equalsLowercase(bytes, field.name, "transfer-encoding")
            if !protected, names.contains(where: { Self.equalsIgnoringCase(bytes, $0, field.name) }) {
                let line = lineStart..<next
                if !droppedLines.contains(line) { droppedLines.append(line) }
            }
            lineStart = next
        }
        droppedLines.sort { $0.lowerBound < $1.lowerBound }
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        guard a.count == b.count else { return false }
        for offset in 0..<a.count
        where HTTPSyntax.lowercase(bytes[a.lowerBound + offset]) != HTTPSyntax.lowercase(bytes[b.lowerBound + offset]) {
            return false
        }
        return true
    }

    /// "HTTP/1.0" or "HTTP/1.1" followed by CRLF; returns the minor version.
    static func parseVersion(_ bytes: UnsafeRawBufferPointer, at index: Int, end: Int) throws(HTTPHeadError) -> Int {
        guard index + 10 <= end,
            bytes[index] == UInt8(ascii: "H"), bytes[index + 1] == UInt8(ascii: "T"),
            bytes[index + 2] == UInt8(ascii: "T"), bytes[index + 3] == UInt8(ascii: "P"),
            bytes[index + 4] == UInt8(ascii: "/"), bytes[index + 6] == UInt8(ascii: "."),
            bytes[index + 5] >= UInt8(ascii: "0"), bytes[index + 5] <= UInt8(ascii: "9"),
            bytes[index + 7] >= UInt8(ascii: "0"), bytes[index + 7] <= UInt8(ascii: "9"),
            bytes[index + 8] == HTTPSyntax.cr, bytes[index + 9] == HTTPSyntax.lf
        else {
            throw .malformed("invalid HTTP version")
        }
        guard bytes[index + 5] == UInt8(ascii: "1"),
            bytes[index + 7] == UInt8(ascii: "0") || bytes[index + 7] == UInt8(ascii: "1")
        else {
            throw .versionNotSupported
        }
        return Int(bytes[index + 7] - UInt8(ascii: "0"))
    }

    /// One header line: offsets of its name and trimmed value, and where its CRLF starts.
    struct HeaderField {
        var name: Range<Int>
        var value: Range<Int>
        var lineEnd: Int
        /// Whether the name contains `_`.
        var nameHasUnderscore = false
    }

    /// Parses the header line at `index`; returns the offset of the next line, or `nil` at the empty line.
    static func nextField(
        _ bytes: UnsafeRawBufferPointer,
        at index: Int,
        end: Int,
        into field: inout HeaderField
    ) throws(HTTPHeadError) -> Int? {
        var index = index
        if bytes[index] == HTTPSyntax.cr {
            // The locator guarantees the head ends with CRLF CRLF, so this is the empty line.
            guard index + 2 == end, bytes[index + 1] == HTTPSyntax.lf else {
                throw .malformed("stray CR in the header section")
            }
            return nil
        }
        if bytes[index] == HTTPSyntax.space || bytes[index] == HTTPSyntax.tab {
            throw .malformed("obsolete line folding")
        }
        let nameStart = index
        var underscore = false
        while HTTPSyntax.isTokenCharacter(bytes[index]) {
            underscore = underscore || bytes[index] == UInt8(ascii: "_")
            index += 1
        }
        guard index > nameStart, bytes[index] == HTTPSyntax.colon else {
            throw .malformed("invalid header field name")
        }
        field.name = nameStart..<index
        field.nameHasUnderscore = underscore
        index += 1
        while bytes[index] == HTTPSyntax.space || bytes[index] == HTTPSyntax.tab { index += 1 }
        let valueStart = index
        while bytes[index] != HTTPSyntax.cr {
            guard HTTPSyntax.isFieldValueCharacter(bytes[index]) else {
                throw .malformed("control character in a header field value")
            }
            index += 1
        }
        guard bytes[index + 1] == HTTPSyntax.lf else { throw .malformed("bare CR in a header field value") }
        var valueEnd = index
        while valueEnd > valueStart, bytes[valueEnd - 1] == HTTPSyntax.space || bytes[valueEnd - 1] == HTTPSyntax.tab {
            valueEnd -= 1
        }
        field.value = valueStart..<valueEnd
        field.lineEnd = index
        return index + 2
    }

    /// `Content-Length = 1*DIGIT`; a list, a sign or an absurd size is refused.
    static func parseContentLength(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) throws(HTTPHeadError) -> Int {
        guard !range.isEmpty, range.count <= 15 else { throw .malformed("invalid Content-Length") }
        var value = 0
        for index in range {
            let byte = bytes[index]
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else {
                throw .malformed("invalid Content-Length")
            }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    private static func methodKind(_ bytes: UnsafeRawBufferPointer, _ method: Range<Int>) -> HTTPMethodKind {
        // Methods are case-sensitive (RFC 9110 §9.1).
        func matches(_ literal: StaticString) -> Bool {
            guard method.count == literal.utf8CodeUnitCount else { return false }
            for offset in 0..<method.count where bytes[method.lowerBound + offset] != literal.utf8Start[offset] {
                return false
            }
            return true
        }
        switch method.count {
        case 3: return matches("GET") ? .get : (matches("PUT") ? .put : .other)
        case 4: return matches("HEAD") ? .head : (matches("POST") ? .post : .other)
        case 5: return matches("TRACE") ? .trace : .other
        case 6: return matches("DELETE") ? .delete : .other
        case 7: return matches("OPTIONS") ? .options : (matches("CONNECT") ? .connect : .other)
        default: return .other
        }
    }
}
