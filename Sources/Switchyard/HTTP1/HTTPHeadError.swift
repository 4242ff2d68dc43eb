/// Why a message head was refused. Each case maps to the status the client (or, for a bad response, the
/// balancer) answers with; `reason` is for the log and never echoes client bytes.
enum HTTPHeadError: Error, Equatable, Sendable {
    /// Syntax the parser refuses, including every request-smuggling shape; answered 400 (502 for a response).
    case malformed(String)
    /// The head is larger than `limits.max_header_bytes`; answered 431.
    case headerTooLarge
    /// More header fields than `limits.max_headers`; answered 431.
    case tooManyHeaders
    /// An HTTP version other than 1.0 and 1.1; answered 505.
    case versionNotSupported
    /// A transfer coding other than `chunked`; answered 501.
    case unsupportedTransferCoding
    /// A request line longer than its limit (8 KiB); answered 414.
    case requestLineTooLong
    /// TRACE; answered 405.
    case methodNotAllowed

    var reason: String {
        switch self {
        case .malformed(let reason): return reason
        case .headerTooLarge: return "header section too large"
        case .tooManyHeaders: return "too many header fields"
        case .versionNotSupported: return "HTTP version not supported"
        case .unsupportedTransferCoding: return "transfer coding not supported"
        case .requestLineTooLong: return "request line too long"
        case .methodNotAllowed: return "method not allowed"
        }
    }
}
