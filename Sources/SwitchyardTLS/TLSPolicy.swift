import NIOCore

/// The protocol policy of every server context.
///
/// TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305), for
/// TLS 1.3 OpenSSL's suites (all AEAD); ECDSA and RSA certificates; ALPN `http/1.1`; no renegotiation, no
/// compression. These match Mozilla's "intermediate" profile, which is what nginx and HAProxy operators use.
public struct TLSPolicy: Sendable, Equatable {
    /// The TLS 1.2 cipher list (OpenSSL syntax).
    public var tls12Ciphers: String
    /// The TLS 1.3 cipher suites (OpenSSL syntax).
    public var tls13Ciphersuites: String
    /// Key-exchange groups, preferred first.
    public var groups: String
    /// Sessions kept in each context's server-side cache.
    public var sessionCacheSize: Int
    /// TLS 1.3 session tickets sent after a full handshake (OpenSSL sends 2 by default; 1 is enough for a browser
    /// and halves the work).
    public var ticketsPerHandshake: Int
    /// How often the session-ticket key is replaced (see ``TicketKeyRing``).
    public var ticketKeyRotation: TimeAmount

    public init(
        tls12Ciphers: String =
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
            + "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
        tls13Ciphersuites: String = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        groups: String = "X25519:P-256:P-384",
        sessionCacheSize: Int = 20_000,
        ticketsPerHandshake: Int = 1,
        ticketKeyRotation: TimeAmount = .hours(12)
    ) {
        self.tls12Ciphers = tls12Ciphers
        self.tls13Ciphersuites = tls13Ciphersuites
        self.groups = groups
        self.sessionCacheSize = sessionCacheSize
        self.ticketsPerHandshake = ticketsPerHandshake
        self.ticketKeyRotation = ticketKeyRotation
    }
}
