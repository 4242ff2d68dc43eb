import SwitchyardTLS

extension CertificateStore {
    /// Loads the default certificate (`tls:`) and every tenant's own, failing on the first that is unusable
    /// (unreadable, key not matching, expired), so a bad file is refused whole and the running store kept.
    ///
    /// Certificate decoding takes OpenSSL 3's global locks: call this off the event loops.
    ///
    /// - Parameters:
    ///   - ticketKeys: the running store's session-ticket keys, kept across a reload so that sessions resume; a
    ///     new ring when `nil`.
    ///   - uploaded: certificates uploaded through the admin API (validated when they were), whose contexts are
    ///     built on first use.
    ///   - cache: the running store's cache of those contexts; a new one when `nil`.
    public static func load(
        configuration: Configuration,
        ticketKeys: TicketKeyRing? = nil,
        uploaded: [UploadedCertificate] = [],
        cache: TLSContextCache? = nil
    ) throws(TLSError) -> CertificateStore? {
        guard let files = configuration.tls else { return nil }
        let policy = configuration.tlsPolicy
        let defaultContext = try TLSContext(certificatePath: files.certificate, keyPath: files.key, policy: policy)
        var contexts: [TLSContext] = []
        for tenant in configuration.tenants {
            guard let files = tenant.tls else { continue }
            do {
                contexts.append(try TLSContext(certificatePath: files.certificate, keyPath: files.key, policy: policy))
            } catch {
                throw TLSError("tenant \(tenant.name): \(error.operation)", details: error.details)
            }
        }
        let ring: TicketKeyRing
        if let ticketKeys {
            ring = ticketKeys
        } else {
            ring = try TicketKeyRing(rotationInterval: .nanoseconds(policy.ticketKeyRotation.nanoseconds))
        }
        return CertificateStore(
            defaultContext: defaultContext,
            contexts: contexts,
            uploaded: uploaded,
            cache: cache ?? TLSContextCache(policy: policy),
            ticketKeys: ring
        )
    }
}
