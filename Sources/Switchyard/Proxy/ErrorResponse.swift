import NIOCore

/// The answers the balancer gives itself, as DESIGN.md's table fixes them: short plain-text bodies that say what
/// went wrong, never echoing anything but a validated host name.
enum ErrorResponse {
    /// Statuses the balancer answers on its own.
    enum Status: Equatable {
        case badRequest
        case notFound
        case methodNotAllowed
        case requestTimeout
        case uriTooLong
        case misdirected
        case headerTooLarge
        case notImplemented
        case badGateway
        case serviceUnavailable
        /// 503 for an upgrade over the tenant's `max_tunnels`.
        case tooManyTunnels
        case gatewayTimeout
        case versionNotSupported

        var code: Int {
            switch self {
            case .badRequest: return 400
            case .notFound: return 404
            case .methodNotAllowed: return 405
            case .requestTimeout: return 408
            case .uriTooLong: return 414
            case .misdirected: return 421
            case .headerTooLarge: return 431
            case .notImplemented: return 501
            case .badGateway: return 502
            case .serviceUnavailable, .tooManyTunnels: return 503
            case .gatewayTimeout: return 504
            case .versionNotSupported: return 505
            }
        }

        var statusLine: StaticString {
            switch self {
            case .badRequest: return "HTTP/1.1 400 Bad Request\r\n"
            case .notFound: return "HTTP/1.1 404 Not Found\r\n"
            case .methodNotAllowed: return "HTTP/1.1 405 Method Not Allowed\r\n"
            case .requestTimeout: return "HTTP/1.1 408 Request Timeout\r\n"
            case .uriTooLong: return "HTTP/1.1 414 URI Too Long\r\n"
            case .misdirected: return "HTTP/1.1 421 Misdirected Request\r\n"
            case .headerTooLarge: return "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            case .notImplemented: return "HTTP/1.1 501 Not Implemented\r\n"
            case .badGateway: return "HTTP/1.1 502 Bad Gateway\r\n"
            case .serviceUnavailable, .tooManyTunnels: return "HTTP/1.1 503 Service Unavailable\r\n"
            case .gatewayTimeout: return "HTTP/1.1 504 Gateway Timeout\r\n"
            case .versionNotSupported: return "HTTP/1.1 505 HTTP Version Not Supported\r\n"
            }
        }

        /// What the body says; `%` is replaced by the host for 404 and 421.
        var message: StaticString {
            switch self {
            case .badRequest: return "400 Bad Request: the request is malformed or ambiguous.\n"
            case .notFound: return "404 Not Found: no site is served for this host.\n"
            case .methodNotAllowed: return "405 Method Not Allowed: TRACE is not served.\n"
            case .requestTimeout: return "408 Request Timeout: the request was not received in time.\n"
            case .uriTooLong: return "414 URI Too Long: the request line is too long.\n"
            case .misdirected:
                return "421 Misdirected Request: this connection's certificate does not cover the host.\n"
            case .headerTooLarge: return "431 Request Header Fields Too Large.\n"
            case .notImplemented: return "501 Not Implemented: only the chunked transfer coding is supported.\n"
            case .badGateway: return "502 Bad Gateway: the site's backend could not be reached or answered wrongly.\n"
            case .serviceUnavailable: return "503 Service Unavailable: the site has no healthy backend right now.\n"
            case .tooManyTunnels:
                return "503 Service Unavailable: the site has too many open WebSocket connections; try again later.\n"
            case .gatewayTimeout: return "504 Gateway Timeout: the site's backend did not answer in time.\n"
            case .versionNotSupported: return "505 HTTP Version Not Supported: use HTTP/1.1.\n"
            }
        }
    }

    /// Writes the whole response into `output`.
    ///
    /// - Parameters:
    ///   - host: a normalised host to name in the body (only for 404).
    ///   - close: whether the connection closes after it (`Connection: close` is sent).
    ///   - headOnly: the request was `HEAD`: no body is sent, though its length is announced.
    static func write(
        _ status: Status,
        host: String? = nil,
        close: Bool,
        headOnly: Bool = false,
        into output: inout ByteBuffer
    ) {
        var body = ByteBuffer()
        if status == .notFound, let host {
            body = ByteBuffer(string: "404 Not Found: no site is served for host '\(host)'.\n")
        } else {
            body.writeStaticString(status.message)
        }
        output.writeStaticString(status.statusLine)
        output.writeStaticString("Server: switchyard\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ")
        output.writeString(String(body.readableBytes))
        output.writeStaticString("\r\n")
        if status.code == 503 {
            output.writeStaticString("Retry-After: 5\r\n")
        }
        output.writeStaticString(close ? "Connection: close\r\n\r\n" : "\r\n")
        if !headOnly {
            output.writeBuffer(&body)
        }
    }

    /// Writes a `308 Permanent Redirect` to the same host and path over HTTPS (`https_redirect`). The host is
    /// normalised and the path (``RequestHead/redirectPath``) was checked to be visible ASCII by the parser; it
    /// always starts the URL's path, so no request can move the redirect to another host.
    static func writeRedirect(
        host: String,
        port: Int,
        path: UnsafeRawBufferPointer,
        close: Bool,
        into output: inout ByteBuffer
    ) {
        output.writeStaticString("HTTP/1.1 308 Permanent Redirect\r\nServer: switchyard\r\nLocation: https://")
        output.writeString(host)
        if port != 443 {
            output.writeString(":\(port)")
        }
        if path.first != UInt8(ascii: "/") {
            output.writeStaticString("/")
        }
        output.writeBytes(path)
        output.writeStaticString("\r\nContent-Length: 0\r\n")
        output.writeStaticString(close ? "Connection: close\r\n\r\n" : "\r\n")
    }

    /// The status a refused request head is answered with.
    static func status(for error: HTTPHeadError) -> Status {
        switch error {
        case .malformed: return .badRequest
        case .headerTooLarge, .tooManyHeaders: return .headerTooLarge
        case .versionNotSupported: return .versionNotSupported
        case .unsupportedTransferCoding: return .notImplemented
        case .requestLineTooLong: return .uriTooLong
        case .methodNotAllowed: return .methodNotAllowed
        }
    }
}
