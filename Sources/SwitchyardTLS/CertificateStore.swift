import Atomics

/// The certificates the balancer serves, chosen by SNI: an exact name first, then a wildcard, then the default.
///
/// A store is immutable; a reload builds a new one and publishes it through ``CertificateSource``. A connection
/// keeps the store it started with for its whole handshake.
public final class CertificateStore: Sendable {
    /// Served when SNI is absent or matches nothing.
    public let defaultContext: TLSContext
    /// Session-ticket keys for every context; a reloaded store keeps the running ring.
    public let ticketKeys: TicketKeyRing
    private let exact: [String: TLSContext]
    /// Keyed by the suffix after `*.`.
    private let wildcard: [String: TLSContext]

    /// - Parameters:
    ///   - defaultContext: the `tls:` certificate.
    ///   - contexts: tenants' certificates; each is selected for the DNS names it covers. When two cover the same
    ///     name, the first wins.
    public init(defaultContext: TLSContext, contexts: [TLSContext] = [], ticketKeys: TicketKeyRing) {
        var exact: [String: TLSContext] = [:]
        var wildcard: [String: TLSContext] = [:]
        for context in contexts + [defaultContext] {
            for name in context.names {
                if name.hasPrefix("*.") {
                    let suffix = String(name.dropFirst(2))
                    if wildcard[suffix] == nil { wildcard[suffix] = context }
                } else if exact[name] == nil {
                    exact[name] = context
                }
            }
        }
        self.defaultContext = defaultContext
        self.ticketKeys = ticketKeys
        self.exact = exact
        self.wildcard = wildcard
    }

    /// The context for a client's SNI name (any case, a trailing dot allowed).
    public func context(forServerName serverName: String?) -> TLSContext {
        guard var name = serverName?.lowercased(), !name.isEmpty else { return defaultContext }
        if name.hasSuffix(".") { name.removeLast() }
        if let context = exact[name] { return context }
        if let dot = name.firstIndex(of: "."), let context = wildcard[String(name[name.index(after: dot)...])] {
            return context
        }
        return defaultContext
    }
}

/// The current ``CertificateStore``, replaced atomically on reload; new handshakes use the new one, connections
/// already established keep theirs.
public final class CertificateSource: Sendable {
    private final class Box: AtomicReference, Sendable {
        let store: CertificateStore

        init(_ store: CertificateStore) {
            self.store = store
        }
    }

    private let box: ManagedAtomic<Box>

    public init(_ store: CertificateStore) {
        self.box = ManagedAtomic(Box(store))
    }

    public var current: CertificateStore {
        box.load(ordering: .acquiring).store
    }

    public func publish(_ store: CertificateStore) {
        box.store(Box(store), ordering: .releasing)
    }
}
