/// What the balancer needs to know about a request head, as offsets into the bytes it was parsed from.
///
/// The head is not copied or decoded into header objects: the proxy forwards the original bytes, cutting the
/// lines listed by the parser and appending its own forwarding headers (see ``RequestHeadWriter``).
struct RequestHead: Equatable {
    /// Offset of the request line (after any empty lines that preceded it).
    var start: Int
    /// Offset just past the empty line that ends the head.
    var end: Int
    var method: Range<Int>
    var target: Range<Int>
    /// The request's HTTP minor version: 0 or 1.
    var minorVersion: Int
    var methodKind: HTTPMethodKind
    /// The trimmed value of the one `Host` field, if any.
    var host: Range<Int>?
    /// Whether the target is `*` (OPTIONS for the server as a whole).
    var isAsteriskForm = false
    /// The parts of an absolute-form target (`http://shop.test/a`), `nil` for other forms.
    var absoluteForm: AbsoluteForm?

    /// An absolute-form target split in two.
    struct AbsoluteForm: Equatable {
        /// `shop.test`: routes the request instead of `Host` (RFC 9112 §3.2.2).
        var authority: Range<Int>
        /// The rest, forwarded as the origin-form target (empty for `/`).
        var originForm: Range<Int>
    }
    var contentLength: Int?
    var isChunked: Bool
    var connectionClose: Bool
    var connectionKeepAlive: Bool
    var connectionUpgrade: Bool
    /// The trimmed value of `Upgrade`, if any.
    var upgrade: Range<Int>?
    /// The value of `HTTP2-Settings`, forwarded only with an honoured `h2c` upgrade.
    var http2Settings: Range<Int>? = nil
    var expectsContinue: Bool

    /// The host the request is for: the absolute-form target's authority, else `Host`.
    var routingHost: Range<Int>? {
        absoluteForm?.authority ?? host
    }

    /// Whether the client asked to switch protocols in a well-formed way; the proxy honours it only for a
    /// protocol the tenant allows (WebSocket by default).
    var requestsUpgrade: Bool {
        connectionUpgrade && upgrade != nil && minorVersion == 1
    }

    /// The path and query an `https_redirect` sends the client to: the origin-form target, or the part of an
    /// absolute-form target after its authority; empty for `*`. Never the authority itself, so that no target
    /// (`@evil.example/x`, `.evil.example`) can move the redirect to another host.
    var redirectPath: Range<Int> {
        if let absoluteForm { return absoluteForm.originForm }
        return isAsteriskForm ? target.lowerBound..<target.lowerBound : target
    }

    /// Whether the client connection stays open after this exchange, as far as the request says.
    var keepAlive: Bool {
        minorVersion == 1 ? !connectionClose : (connectionKeepAlive && !connectionClose)
    }

    /// Whether a body follows the head.
    var hasBody: Bool {
        isChunked || (contentLength ?? 0) > 0
    }
}

/// The methods whose semantics the proxy cares about.
enum HTTPMethodKind: Equatable {
    case get
    case head
    case post
    case put
    case delete
    case options
    case connect
    case trace
    case other

    /// Idempotent methods (RFC 9110 §9.2.2) may be sent again after a failure.
    var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options: return true
        case .post, .connect, .trace, .other: return false
        }
    }
}
