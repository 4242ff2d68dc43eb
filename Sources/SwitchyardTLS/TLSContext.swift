import COpenSSL

/// One certificate chain and key, loaded into an OpenSSL `SSL_CTX` with Switchyard's policy.
///
/// A context is built once, off the event loops (certificate decoding takes OpenSSL 3's global locks), and then
/// shared read-only by every connection on every loop, which OpenSSL supports for a fully configured `SSL_CTX`.
public final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable: `pointer` is configured completely in `init` and never mutated afterwards; OpenSSL
    // documents a configured SSL_CTX as safe to share between threads creating SSL objects from it, and its
    // session cache is internally locked. `names` is an immutable Swift array.

    /// The `SSL_CTX`.
    let pointer: OpaquePointer
    /// DNS names the certificate covers (subject alternative names, lower case; wildcards as `*.example.test`).
    public let names: [String]
    /// Where the chain and key came from, for log lines: the chain's file, or the tenant it was uploaded for.
    public let source: String

    /// Reads and checks a PEM chain and key: both must parse, the key must match the certificate, and the
    /// certificate must be valid now.
    public init(certificatePath: String, keyPath: String, policy: TLSPolicy = TLSPolicy()) throws(TLSError) {
        let (pointer, names) = try Self.make(policy: policy, name: certificatePath) { context throws(TLSError) in
            guard SSL_CTX_use_certificate_chain_file(context, certificatePath) == 1 else {
                throw TLSError.drainingQueue("cannot read the certificate chain \(certificatePath)")
            }
            guard SSL_CTX_use_PrivateKey_file(context, keyPath, SSL_FILETYPE_PEM) == 1 else {
                throw TLSError.drainingQueue("cannot read the private key \(keyPath)")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSError.drainingQueue(
                    "the private key \(keyPath) does not match the certificate \(certificatePath)"
                )
            }
        }
        self.pointer = pointer
        self.names = names
        self.source = certificatePath
    }

    /// Builds a context from a chain and key given as PEM text (a certificate uploaded through the admin API),
    /// checked as ``init(certificatePath:keyPath:policy:)`` checks files.
    ///
    /// - Parameter label: what errors and logs call the certificate (`tenant shop`).
    public init(chainPEM: String, keyPEM: String, label: String, policy: TLSPolicy = TLSPolicy()) throws(TLSError) {
        let certificate = try PEMCertificate(chainPEM: chainPEM, keyPEM: keyPEM)
        let (pointer, names) = try Self.make(policy: policy, name: label) { context throws(TLSError) in
            guard SSL_CTX_use_certificate(context, certificate.leaf) == 1,
                SSL_CTX_use_PrivateKey(context, certificate.key) == 1
            else {
                throw TLSError.drainingQueue("cannot use the certificate of \(label)")
            }
            for intermediate in certificate.chain.dropFirst() {
                // The context takes ownership of what it is given: it gets its own reference.
                _ = X509_up_ref(intermediate)
                guard c_openssl_SSL_CTX_add_extra_chain_cert(context, intermediate) == 1 else {
                    X509_free(intermediate)
                    throw TLSError.drainingQueue("cannot add the chain of \(label)")
                }
            }
        }
        self.pointer = pointer
        self.names = names
        self.source = label
    }

    /// A new `SSL_CTX` with the policy, given its certificate and key by `load`, then checked for validity now.
    private static func make(
        policy: TLSPolicy,
        name: String,
        load: (OpaquePointer) throws(TLSError) -> Void
    ) throws(TLSError) -> (OpaquePointer, [String]) {
        OpenSSLErrorQueue.clear()
        guard let context = SSL_CTX_new(TLS_server_method()) else {
            throw .drainingQueue("cannot create an OpenSSL context")
        }
        do throws(TLSError) {
            try Self.configure(context, policy: policy)
            try load(context)
            guard let leaf = SSL_CTX_get0_certificate(context) else {
                throw TLSError("\(name) holds no certificate")
            }
            if X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0 {
                throw TLSError("the certificate \(name) has expired")
            }
            if X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0 {
                throw TLSError("the certificate \(name) is not valid yet")
            }
            return (context, Self.dnsNames(of: leaf))
        } catch {
            SSL_CTX_free(context)
            OpenSSLErrorQueue.clear()
            throw error
        }
    }

    deinit {
        SSL_CTX_free(pointer)
    }

    /// Whether the certificate covers `host` (normalised: lower case, no port): an exact name, or a wildcard
    /// covering exactly one leftmost label (RFC 6125).
    public func covers(host: String) -> Bool {
        Self.covers(host: host, names: names)
    }

    /// Whether DNS names `names` cover `host` as ``covers(host:)`` says; a wildcard `host` (a tenant's
    /// `*.shop.test`) is covered by the same wildcard.
    public static func covers(host: String, names: [String]) -> Bool {
        for name in names {
            if name == host { return true }
            if name.hasPrefix("*."), let dot = host.firstIndex(of: "."),
                host[host.index(after: dot)...] == name.dropFirst(2)
            {
                return true
            }
        }
        return false
    }

    private static func configure(_ context: OpaquePointer, policy: TLSPolicy) throws(TLSError) {
        guard c_openssl_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1,
            c_openssl_SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) == 1
        else {
            throw .drainingQueue("cannot restrict the protocol versions")
        }
        SSL_CTX_set_options(context, c_openssl_server_options())
        guard SSL_CTX_set_cipher_list(context, policy.tls12Ciphers) == 1 else {
            throw .drainingQueue("invalid TLS 1.2 cipher list '\(policy.tls12Ciphers)'")
        }
        guard SSL_CTX_set_ciphersuites(context, policy.tls13Ciphersuites) == 1 else {
            throw .drainingQueue("invalid TLS 1.3 cipher suites '\(policy.tls13Ciphersuites)'")
        }
        guard c_openssl_SSL_CTX_set1_groups_list(context, policy.groups) == 1 else {
            throw .drainingQueue("invalid groups '\(policy.groups)'")
        }
        // Partial writes let a large write go out record by record; releasing buffers makes an idle connection
        // hold almost nothing (OpenSSL frees its 16 KiB read and write buffers between records).
        _ = c_openssl_SSL_CTX_set_mode(
            context,
            Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS)
        )
        _ = c_openssl_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_SERVER))
        _ = c_openssl_SSL_CTX_sess_set_cache_size(context, policy.sessionCacheSize)
        let sessionContext: [UInt8] = Array("switchyard".utf8)
        _ = SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count))
        _ = SSL_CTX_set_num_tickets(context, policy.ticketsPerHandshake)
        SSL_CTX_set_alpn_select_cb(context, alpnSelect, nil)
        // Tickets are encrypted with the rotated keys of the store's TicketKeyRing, not a per-context key.
        _ = SSL_CTX_set_tlsext_ticket_key_evp_cb(context, ticketKeyCallback)
        _ = c_openssl_SSL_CTX_set_tlsext_servername_callback(context, serverNameCallback)
    }

    /// The subject alternative DNS names of `certificate`, lower-cased.
    static func dnsNames(of certificate: OpaquePointer) -> [String] {
        guard let extensionData = X509_get_ext_d2i(certificate, NID_subject_alt_name, nil, nil) else { return [] }
        let stack = OpaquePointer(extensionData)
        defer { GENERAL_NAMES_free(stack) }
        var names: [String] = []
        for index in 0..<OPENSSL_sk_num(stack) {
            guard let raw = OPENSSL_sk_value(stack, index) else { continue }
            let name = raw.assumingMemoryBound(to: GENERAL_NAME.self)
            guard name.pointee.type == GEN_DNS, let string = name.pointee.d.dNSName,
                let data = ASN1_STRING_get0_data(string)
            else { continue }
            let length = Int(ASN1_STRING_length(string))
            let text = String(decoding: UnsafeBufferPointer(start: data, count: length), as: UTF8.self)
            names.append(text.lowercased())
        }
        return names
    }
}

/// ALPN: the balancer speaks HTTP/1.1. A client offering only other protocols gets no ALPN answer and may go on
/// without (curl does) rather than failing the handshake.
private func alpnSelect(
    _ ssl: OpaquePointer?,
    _ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
    _ outLength: UnsafeMutablePointer<UInt8>?,
    _ offered: UnsafePointer<UInt8>?,
    _ offeredLength: UInt32,
    _ argument: UnsafeMutableRawPointer?
) -> Int32 {
    var selected: UnsafeMutablePointer<UInt8>?
    let result = ALPNProtocols.http11.withUnsafeBufferPointer { supported in
        SSL_select_next_proto(
            &selected,
            outLength,
            supported.baseAddress,
            UInt32(supported.count),
            offered,
            offeredLength
        )
    }
    guard result == OPENSSL_NPN_NEGOTIATED, let selected else { return SSL_TLSEXT_ERR_NOACK }
    out?.pointee = UnsafePointer(selected)
    return SSL_TLSEXT_ERR_OK
}

/// The protocol list in ALPN wire format. A global `let` so the bytes outlive every handshake: the callback hands
/// OpenSSL a pointer into them.
enum ALPNProtocols {
    static let http11: [UInt8] = [8] + Array("http/1.1".utf8)
}

/// SNI: hands the name to the connection's ``TLSServerHandler``, which switches the connection to the matching
/// certificate's context.
private func serverNameCallback(
    _ ssl: OpaquePointer?,
    _ alert: UnsafeMutablePointer<Int32>?,
    _ argument: UnsafeMutableRawPointer?
) -> Int32 {
    guard let ssl, let state = SSL_get_ex_data(ssl, 0) else { return SSL_TLSEXT_ERR_OK }
    let connection = Unmanaged<TLSConnection>.fromOpaque(state).takeUnretainedValue()
    connection.selectContext(serverName: SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name).map { String(cString: $0) })
    return SSL_TLSEXT_ERR_OK
}
