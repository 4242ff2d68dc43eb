import COpenSSL
import Foundation

/// A certificate chain and its private key given as PEM text, as the admin API receives them: parsed with OpenSSL
/// from memory, never from a file.
///
/// Owns the parsed objects and frees them; ``TLSContext/init(chainPEM:keyPEM:label:policy:)`` and
/// ``CertificateDetails/init(chainPEM:keyPEM:)`` use one for as long as they need it.
struct PEMCertificate: ~Copyable {
    /// `X509 *`, leaf first.
    let chain: [OpaquePointer]
    /// `EVP_PKEY *`.
    let key: OpaquePointer

    /// Parses `chainPEM` (one or more `CERTIFICATE` blocks, leaf first) and `keyPEM` (a private key, PKCS #8 or
    /// the traditional RSA/EC forms), and checks that the key belongs to the leaf.
    init(chainPEM: String, keyPEM: String) throws(TLSError) {
        let chain = try Self.chain(chainPEM)
        let key: OpaquePointer? = keyPEM.utf8CString.withUnsafeBufferPointer { text in
            guard let bio = BIO_new_mem_buf(text.baseAddress, Int32(text.count - 1)) else { return nil }
            defer { BIO_free(bio) }
            // A passphrase callback that gives none: without one, OpenSSL would ask on the terminal.
            return PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
        }
        guard let key else {
            for certificate in chain { X509_free(certificate) }
            throw TLSError.drainingQueue("the key is not a PEM private key (BEGIN PRIVATE KEY) without a passphrase")
        }
        guard X509_check_private_key(chain[0], key) == 1 else {
            for certificate in chain { X509_free(certificate) }
            EVP_PKEY_free(key)
            OpenSSLErrorQueue.clear()
            throw TLSError("the private key does not match the certificate (the first one of the chain)")
        }
        self.chain = chain
        self.key = key
    }

    deinit {
        for certificate in chain { X509_free(certificate) }
        EVP_PKEY_free(key)
    }

    /// The certificates of a PEM chain (`X509 *`, owned by the caller), leaf first.
    static func chain(_ pem: String) throws(TLSError) -> [OpaquePointer] {
        OpenSSLErrorQueue.clear()
        var chain: [OpaquePointer] = []
        let parsed: Bool = pem.utf8CString.withUnsafeBufferPointer { text in
            guard let bio = BIO_new_mem_buf(text.baseAddress, Int32(text.count - 1)) else { return false }
            defer { BIO_free(bio) }
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
                chain.append(certificate)
            }
            return true
        }
        // Reading stops with a "no start line" error at the end of the text; only a chain that yielded nothing is
        // a failure.
        let errors = OpenSSLErrorQueue.drain()
        guard parsed, !chain.isEmpty else {
            for certificate in chain { X509_free(certificate) }
            throw TLSError("the certificate is not a PEM certificate chain (BEGIN CERTIFICATE blocks)", details: errors)
        }
        return chain
    }

    var leaf: OpaquePointer { chain[0] }
}

/// What may be shown of an uploaded certificate, read off its leaf when it was validated: never the key.
public struct CertificateDetails: Sendable, Equatable {
    /// The leaf's subject, one line (`/CN=shop.test`).
    public var subject: String
    /// The DNS names of its subject alternative names, lower case (wildcards as `*.shop.test`).
    public var names: [String]
    /// SHA-256 of the leaf's DER, upper-case hex pairs joined by `:` (as `openssl x509 -fingerprint -sha256`).
    public var fingerprint: String
    public var notBefore: Date
    public var notAfter: Date

    /// Parses and checks a chain and key: both parse, the key matches the leaf, and the leaf is valid now (not
    /// expired, not before its start). Off the event loops: decoding takes OpenSSL's global locks.
    public init(chainPEM: String, keyPEM: String) throws(TLSError) {
        let certificate = try PEMCertificate(chainPEM: chainPEM, keyPEM: keyPEM)
        try self.init(leaf: certificate.leaf)
    }

    /// Reads the leaf of a chain already validated (a stored certificate), without its key or a validity check.
    public init(chainPEM: String) throws(TLSError) {
        let chain = try PEMCertificate.chain(chainPEM)
        defer { for certificate in chain { X509_free(certificate) } }
        try self.init(leaf: chain[0], checkingValidity: false)
    }

    init(leaf: OpaquePointer, checkingValidity: Bool = true) throws(TLSError) {
        if checkingValidity, X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0 {
            throw TLSError("the certificate has expired")
        }
        if checkingValidity, X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0 {
            throw TLSError("the certificate is not valid yet")
        }
        var buffer = [CChar](repeating: 0, count: 512)
        _ = X509_NAME_oneline(X509_get_subject_name(leaf), &buffer, Int32(buffer.count))
        subject = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        names = TLSContext.dnsNames(of: leaf)
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(leaf, EVP_sha256(), &digest, &length) == 1 else {
            throw TLSError.drainingQueue("cannot compute the certificate's fingerprint")
        }
        fingerprint = digest.prefix(Int(length)).map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
        notBefore = Self.date(X509_get0_notBefore(leaf))
        notAfter = Self.date(X509_get0_notAfter(leaf))
    }

    /// Whether the certificate covers `host` (normalised): an exact name, or a wildcard over one leftmost label.
    public func covers(host: String) -> Bool {
        TLSContext.covers(host: host, names: names)
    }

    private static func date(_ time: UnsafePointer<ASN1_TIME>?) -> Date {
        var parts = tm()
        guard let time, ASN1_TIME_to_tm(time, &parts) == 1 else { return Date(timeIntervalSince1970: 0) }
        return Date(timeIntervalSince1970: Double(timegm(&parts)))
    }
}
