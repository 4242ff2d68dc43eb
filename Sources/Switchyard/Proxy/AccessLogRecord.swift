import NIOCore

/// One finished request, as written to the access log.
struct AccessLogRecord: Sendable, Equatable {
    var client: String
    var host: String
    var tenant: String
    var backend: String
    var method: String
    /// The request target as the client sent it, escaped for the log (``LogEscaping``).
    var target: String
    var status: Int
    /// Bytes sent to the client, head included.
    var bytes: Int
    /// Bytes of the request read from the client, head included.
    var received: Int = 0
    var duration: TimeAmount
    /// The request's ``RequestID``, `-` when the balancer answered before one was chosen.
    var requestID: String = "-"
    /// From asking for a backend connection to having one (a pooled one: almost nothing); `nil` when none was.
    var upstreamConnect: TimeAmount? = nil
    /// From having the backend connection to the response's head (nginx's `$upstream_header_time`, less the
    /// connect); `nil` without an answer from a backend.
    var upstreamHeader: TimeAmount? = nil
}
