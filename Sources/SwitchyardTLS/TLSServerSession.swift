import COpenSSL
import NIOCore

/// The server side of one TLS connection, without a transport: ciphertext in, plaintext out; plaintext in,
/// ciphertext out. Both data paths drive it: ``TLSServerHandler`` on a SwiftNIO channel, and the balancer's own
/// loop on a socket.
///
/// The handshake picks the certificate by SNI (see ``CertificateStore``). A client that speaks plain HTTP to the
/// TLS port is told so in a readable 400, as nginx answers (``Reception/plaintext(answer:)``). Every OpenSSL call
/// is made with the thread's error queue cleared before and drained after. After each call, the ciphertext it
/// produced (handshake messages, alerts, session tickets, records) is in ``takeCiphertext()``.
public final class TLSServerSession {
    /// What the first bytes of a connection said.
    public enum Reception: Equatable {
        /// TLS (or more of it): go on with ``continueHandshake()`` or ``readPlaintext(_:)``.
        case accepted
        /// Not TLS: the answer to send in the clear before closing, when the bytes looked like an HTTP request
        /// (`nil`: close at once). The session is closed.
        case plaintext(answer: ByteBuffer?)
        /// The session is closed or failed: the bytes were dropped.
        case ignored
    }

    /// Where a handshake stands after the ciphertext received so far.
    public enum HandshakeStep {
        case completed(TLSHandshakeCompleted)
        /// More bytes from the client are needed.
        case inProgress
        /// OpenSSL refused the handshake; the alert it queued is in ``takeCiphertext()``. Close after sending it.
        case failed(TLSError)
    }

    /// How reading plaintext ended.
    public enum ReadEnd {
        /// Everything decryptable so far was delivered; more may come.
        case open
        /// The client sent close_notify: it sends nothing more (like a TCP half-close).
        case closeNotify
        /// The connection is broken (a bad record, say): close it.
        case failed(TLSError)
    }

    private enum State {
        case fresh
        case handshaking
        case active
        case closed
    }

    private let connection: TLSConnection
    private let allocator: ByteBufferAllocator
    private var state = State.fresh

    /// Plaintext read buffers are at most this large: one TLS record's payload.
    private static let readChunk = 16 * 1024

    /// The answer to plain HTTP on the TLS port.
    private static let plaintextAnswer: ByteBuffer = {
        let body = "400 Bad Request: this port speaks HTTPS; use an https:// URL.\n"
        return ByteBuffer(
            string: "HTTP/1.1 400 Bad Request\r\nServer: switchyard\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        )
    }()

    /// A session serving the certificates of `store`.
    public init(store: CertificateStore, allocator: ByteBufferAllocator) throws(TLSError) {
        connection = try TLSConnection(store: store, allocator: allocator)
        self.allocator = allocator
    }

    /// Whether the handshake has not completed yet (and the session is not closed).
    public var isHandshaking: Bool {
        state == .fresh || state == .handshaking
    }

    /// Whether application data may be written.
    public var isActive: Bool {
        state == .active
    }

    /// Whether the client sent anything yet (a handshake that fails later was at least started).
    public var hasReceived: Bool {
        state != .fresh
    }

    /// The SNI name the client sent, if any.
    public var serverName: String? {
        connection.serverName
    }

    /// Takes ciphertext from the network.
    public func receive(_ buffer: ByteBuffer) -> Reception {
        switch state {
        case .closed:
            return .ignored
        case .fresh:
            state = .handshaking
            // A TLS connection starts with a handshake record (content type 22). Anything else is not TLS.
            if let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), first != 22 {
                state = .closed
                let looksLikeHTTP = first >= UInt8(ascii: "A") && first <= UInt8(ascii: "Z")
                return .plaintext(answer: looksLikeHTTP ? Self.plaintextAnswer : nil)
            }
        case .handshaking, .active:
            break
        }
        connection.receive(buffer)
        return .accepted
    }

    /// Drives the handshake with the ciphertext received so far.
    public func continueHandshake() -> HandshakeStep {
        guard isHandshaking else { return .inProgress }
        OpenSSLErrorQueue.clear()
        let result = SSL_do_handshake(connection.ssl)
        if result == 1 {
            state = .active
            let version = SSL_get_version(connection.ssl).map { String(cString: $0) } ?? "?"
            return .completed(
                TLSHandshakeCompleted(
                    serverName: connection.serverName,
                    certificate: connection.context,
                    version: version,
                    resumed: SSL_session_reused(connection.ssl) == 1
                )
            )
        }
        switch SSL_get_error(connection.ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .inProgress
        default:
            state = .closed
            return .failed(.drainingQueue("TLS handshake failed"))
        }
    }

    /// Decrypts what the ciphertext received so far holds, handing it to `deliver` in buffers of at most a record's
    /// payload. Plaintext is never longer than the ciphertext it came in, so a small request gets a small buffer.
    public func readPlaintext(_ deliver: (ByteBuffer) -> Void) -> ReadEnd {
        guard state == .active else { return .open }
        var plaintext = allocator.buffer(capacity: min(Self.readChunk, max(connection.readablePlaintextBound, 512)))
        var end = ReadEnd.open
        OpenSSLErrorQueue.clear()
        while true {
            var count = 0
            let result = plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: 1) { pointer in
                let status = SSL_read_ex(connection.ssl, pointer.baseAddress, pointer.count, &count)
                return status == 1 ? count : 0
            }
            if result > 0 {
                if plaintext.writableBytes == 0 {
                    deliver(plaintext)
                    plaintext = allocator.buffer(
                        capacity: min(Self.readChunk, max(connection.readablePlaintextBound, 512))
                    )
                }
                continue
            }
            switch SSL_get_error(connection.ssl, 0) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                break
            case SSL_ERROR_ZERO_RETURN:
                end = .closeNotify
            default:
                state = .closed
                end = .failed(.drainingQueue("TLS read failed"))
            }
            break
        }
        if plaintext.readableBytes > 0 {
            deliver(plaintext)
        }
        return end
    }

    /// Encrypts `plaintext`; its records are then in ``takeCiphertext()``. Throws when the session cannot write (not
    /// established, or OpenSSL failed: close the connection).
    public func write(_ plaintext: ByteBuffer) throws(TLSError) {
        guard state == .active else { throw TLSError("TLS write before the handshake completed or after close") }
        var plaintext = plaintext
        OpenSSLErrorQueue.clear()
        connection.reserveOutbound(forPlaintext: plaintext.readableBytes)
        while plaintext.readableBytes > 0 {
            var written = 0
            let status = plaintext.withUnsafeReadableBytes { bytes in
                SSL_write_ex(connection.ssl, bytes.baseAddress, bytes.count, &written)
            }
            guard status == 1 else {
                state = .closed
                throw .drainingQueue("TLS write failed")
            }
            plaintext.moveReaderIndex(forwardBy: written)
        }
    }

    /// Queues close_notify, so the client can tell a complete response from a cut connection. With `final`, the
    /// session is closed for writing too.
    public func shutdown(final: Bool) {
        guard state == .active else {
            if final { state = .closed }
            return
        }
        OpenSSLErrorQueue.clear()
        _ = SSL_shutdown(connection.ssl)
        OpenSSLErrorQueue.clear()
        if final { state = .closed }
    }

    /// Marks the session closed (the connection is gone or failed): nothing more is read or written.
    public func close() {
        state = .closed
    }

    /// The ciphertext produced since the last call, to write to the network in order.
    public func takeCiphertext() -> ByteBuffer? {
        connection.takeOutbound()
    }
}

@available(*, unavailable)
extension TLSServerSession: Sendable {}
