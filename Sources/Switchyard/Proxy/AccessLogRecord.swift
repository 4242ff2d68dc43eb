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
    var duration: TimeAmount
}
