import COpenSSL

@testable import SwitchyardTLS

/// A TLS client made of OpenSSL and two memory BIOs, for driving a server handler byte by byte in the same thread:
/// ``takeOutput()`` gives the ciphertext the client wants sent, ``feed(_:)`` hands it what the server sent.
///
/// It verifies the server's chain against the development CA (and any extra CA files) and, when given a host name,
/// the name as well. Every OpenSSL call clears the thread's error queue before and drains it after into ``errors``,
/// so the queue a test inspects afterwards holds only what the server side left there.
final class InProcessTLSClient {
    /// How far the handshake got.
    enum HandshakeStatus: Equatable {
        case inProgress
        case done
        case failed
    }

    /// What one ``read()`` found.
    struct ReadResult {
        /// Plaintext received.
        var bytes: [UInt8] = []
        /// The server sent close_notify (`SSL_read` reported `SSL_ERROR_ZERO_RETURN`).
        var closeNotify = false
        /// `SSL_read` failed for another reason than "no more data yet".
        var failed = false
    }

    /// A session (with its ticket) kept from one connection to resume it on another.
    final class Session {
        let pointer: OpaquePointer

        init(_ pointer: OpaquePointer) {
            self.pointer = pointer
        }

        deinit {
            SSL_SESSION_free(pointer)
        }

        /// The session ticket the server sent, empty when there is none.
        var ticket: [UInt8] {
            var bytes: UnsafePointer<UInt8>?
            var count = 0
            SSL_SESSION_get0_ticket(pointer, &bytes, &count)
            guard let bytes else { return [] }
            return Array(UnsafeBufferPointer(start: bytes, count: count))
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let context: OpaquePointer
    let ssl: OpaquePointer
    /// Ciphertext from the server, read by OpenSSL.
    private let readBIO: OpaquePointer
    /// Ciphertext OpenSSL produced for the server.
    private let writeBIO: OpaquePointer
    /// OpenSSL's messages for every client call that failed, oldest first.
    private(set) var errors: [String] = []

    /// - Parameters:
    ///   - serverName: sent as SNI, and checked against the certificate when `verifyHost` is true.
    ///   - verifyHost: whether the certificate must cover `serverName` (besides chaining to a trusted CA).
    ///   - trustedCAFiles: PEM files of the CAs to trust.
    ///   - alpn: protocols offered, preferred first.
    ///   - minVersion: e.g. `TLS1_2_VERSION`; OpenSSL's default when nil.
    ///   - maxVersion: e.g. `TLS1_2_VERSION`; OpenSSL's default when nil.
    ///   - cipherList: the TLS 1.2 and older cipher list; `DEFAULT:@SECLEVEL=0` lets OpenSSL offer TLS 1.1.
    ///   - session: a session from an earlier connection (``takeSession()``), offered for resumption.
    init(
        serverName: String?,
        verifyHost: Bool = true,
        trustedCAFiles: [String],
        alpn: [String] = ["h2", "http/1.1"],
        minVersion: Int32? = nil,
        maxVersion: Int32? = nil,
        cipherList: String? = nil,
        session: Session? = nil
    ) throws {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw Failure(description: "SSL_CTX_new: \(Self.drainErrors())")
        }
        // The SSL object copies the context's settings when it is made, so the context is set up first.
        do {
            for file in trustedCAFiles {
                guard SSL_CTX_load_verify_locations(context, file, nil) == 1 else {
                    throw Failure(description: "cannot load CA \(file): \(Self.drainErrors())")
                }
            }
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
            if let minVersion, c_openssl_SSL_CTX_set_min_proto_version(context, minVersion) != 1 {
                throw Failure(description: "cannot set minimum version: \(Self.drainErrors())")
            }
            if let maxVersion, c_openssl_SSL_CTX_set_max_proto_version(context, maxVersion) != 1 {
                throw Failure(description: "cannot set maximum version: \(Self.drainErrors())")
            }
            if let cipherList, SSL_CTX_set_cipher_list(context, cipherList) != 1 {
                throw Failure(description: "cannot set cipher list: \(Self.drainErrors())")
            }
        } catch {
            SSL_CTX_free(context)
            throw error
        }
        self.context = context
        guard let ssl = SSL_new(context) else {
            SSL_CTX_free(context)
            throw Failure(description: "SSL_new: \(Self.drainErrors())")
        }
        self.ssl = ssl
        // SSL_set_bio takes over one reference of each BIO; SSL_free releases them (and deinit frees the context).
        guard let readBIO = BIO_new(BIO_s_mem()), let writeBIO = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            SSL_CTX_free(context)
            throw Failure(description: "BIO_new: \(Self.drainErrors())")
        }
        SSL_set_bio(ssl, readBIO, writeBIO)
        self.readBIO = readBIO
        self.writeBIO = writeBIO
        SSL_set_connect_state(ssl)
        if let serverName {
            guard c_openssl_SSL_set_tlsext_host_name(ssl, serverName) == 1 else {
                throw Failure(description: "cannot set SNI: \(Self.drainErrors())")
            }
            if verifyHost, SSL_set1_host(ssl, serverName) != 1 {
                throw Failure(description: "cannot set the host to verify: \(Self.drainErrors())")
            }
        }
        if !alpn.isEmpty {
            let wire = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
            // Returns 0 on success, unlike most of OpenSSL.
            guard SSL_set_alpn_protos(ssl, wire, UInt32(wire.count)) == 0 else {
                throw Failure(description: "cannot set ALPN: \(Self.drainErrors())")
            }
        }
        if let session, SSL_set_session(ssl, session.pointer) != 1 {
            throw Failure(description: "cannot set the session: \(Self.drainErrors())")
        }
        ERR_clear_error()
    }

    deinit {
        SSL_free(ssl)
        SSL_CTX_free(context)
        ERR_clear_error()
    }

    // MARK: Transport

    /// Takes the ciphertext OpenSSL has written so far.
    func takeOutput() -> [UInt8] {
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while BIO_ctrl_pending(writeBIO) > 0 {
            let count = BIO_read(writeBIO, &chunk, Int32(chunk.count))
            guard count > 0 else { break }
            output += chunk[0..<Int(count)]
        }
        ERR_clear_error()
        return output
    }

    /// Hands OpenSSL ciphertext from the server.
    func feed(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let written = BIO_write(readBIO, bytes, Int32(bytes.count))
        precondition(Int(written) == bytes.count, "memory BIO refused \(bytes.count) bytes")
    }

    // MARK: TLS

    /// Runs the handshake as far as the ciphertext fed so far allows.
    func handshake() -> HandshakeStatus {
        ERR_clear_error()
        let result = SSL_do_handshake(ssl)
        if result == 1 { return .done }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .inProgress
        default:
            record("SSL_do_handshake")
            return .failed
        }
    }

    var isHandshakeDone: Bool {
        SSL_is_init_finished(ssl) == 1
    }

    /// Encrypts all of `bytes` (several records when longer than 16 KiB).
    func write(_ bytes: [UInt8]) throws {
        ERR_clear_error()
        var offset = 0
        while offset < bytes.count {
            var written = 0
            let status = bytes.withUnsafeBytes { buffer in
                SSL_write_ex(ssl, buffer.baseAddress! + offset, buffer.count - offset, &written)
            }
            guard status == 1 else {
                record("SSL_write_ex")
                throw Failure(description: "SSL_write_ex failed: \(errors.last ?? "?")")
            }
            offset += written
        }
    }

    /// Decrypts everything the ciphertext fed so far holds.
    func read() -> ReadResult {
        var result = ReadResult()
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        ERR_clear_error()
        while true {
            var count = 0
            if SSL_read_ex(ssl, &chunk, chunk.count, &count) == 1 {
                result.bytes += chunk[0..<count]
                continue
            }
            switch SSL_get_error(ssl, 0) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                break
            case SSL_ERROR_ZERO_RETURN:
                result.closeNotify = true
            default:
                record("SSL_read_ex")
                result.failed = true
            }
            return result
        }
    }

    /// Asks for a TLS 1.3 key update: the client's next record uses a new key, and the server must update its own.
    func requestKeyUpdate() throws {
        ERR_clear_error()
        guard SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) == 1 else {
            record("SSL_key_update")
            throw Failure(description: "SSL_key_update failed: \(errors.last ?? "?")")
        }
    }

    /// Sends close_notify.
    func shutdown() {
        ERR_clear_error()
        if SSL_shutdown(ssl) < 0 {
            record("SSL_shutdown")
        }
        ERR_clear_error()
    }

    /// Whether the server's close_notify has been read.
    var receivedShutdown: Bool {
        SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN != 0
    }

    // MARK: What was negotiated

    /// The negotiated protocol version, e.g. `TLSv1.3`.
    var version: String {
        String(cString: SSL_get_version(ssl))
    }

    /// The protocol the server chose by ALPN, if any.
    var alpnProtocol: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// Whether the handshake resumed a session instead of doing a full one.
    var sessionReused: Bool {
        SSL_session_reused(ssl) == 1
    }

    /// The session to resume later; with TLS 1.3 it carries a ticket only once ``read()`` has processed the
    /// server's NewSessionTicket.
    func takeSession() -> Session? {
        SSL_get1_session(ssl).map(Session.init)
    }

    /// `X509_V_OK` (0) when the server's chain verified.
    var verifyResult: Int {
        SSL_get_verify_result(ssl)
    }

    /// Whether the server's certificate covers `host` (SAN DNS names, wildcards as RFC 6125 allows).
    func peerCertificateCovers(_ host: String) -> Bool {
        guard let certificate = SSL_get1_peer_certificate(ssl) else { return false }
        defer { X509_free(certificate) }
        return X509_check_host(certificate, host, host.utf8.count, 0, nil) == 1
    }

    /// The server certificate's subject, in OpenSSL's one-line form (`/CN=localhost`).
    var peerSubject: String? {
        guard let certificate = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(certificate) }
        guard let name = X509_get_subject_name(certificate) else { return nil }
        var buffer = [CChar](repeating: 0, count: 256)
        guard X509_NAME_oneline(name, &buffer, Int32(buffer.count)) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Errors

    private func record(_ call: String) {
        errors.append("\(call): \(Self.drainErrors())")
    }

    /// Empties the thread's OpenSSL error queue and returns its messages joined.
    private static func drainErrors() -> String {
        let messages = OpenSSLErrorQueue.drain()
        return messages.isEmpty ? "no OpenSSL error" : messages.joined(separator: "; ")
    }
}

@available(*, unavailable)
extension InProcessTLSClient: Sendable {}
