import COpenSSL

/// A TLS failure: what was being done, and what OpenSSL said.
///
/// Errors are read off OpenSSL's per-thread error queue on the thread that made the failing call, right after it,
/// and the queue is then left empty (see ``OpenSSLErrorQueue``).
public struct TLSError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What failed, in words an operator can act on.
    public var operation: String
    /// OpenSSL's own messages, oldest first; empty when it gave none.
    public var details: [String]

    public init(_ operation: String, details: [String] = []) {
        self.operation = operation
        self.details = details
    }

    public var description: String {
        details.isEmpty ? operation : "\(operation): \(details.joined(separator: "; "))"
    }

    /// The current thread's OpenSSL errors, attached to `operation`; the queue is emptied.
    static func drainingQueue(_ operation: String) -> TLSError {
        TLSError(operation, details: OpenSSLErrorQueue.drain())
    }
}

/// OpenSSL's error queue is per thread: it must be cleared before a call and drained right after it, on the same
/// thread, or a later call reads a stale error.
enum OpenSSLErrorQueue {
    static func clear() {
        ERR_clear_error()
    }

    /// Empties the queue and returns its messages.
    static func drain() -> [String] {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            guard code != 0 else { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages
    }
}
