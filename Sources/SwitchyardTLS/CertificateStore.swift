import Atomics
import Logging
import NIOConcurrencyHelpers

/// The certificates the balancer serves, chosen by SNI: an exact name first, then a wildcard, then the default.
///
/// Certificates from the configuration file are loaded when the store is built. Certificates uploaded through the
/// admin API (``UploadedCertificate``) are only indexed by the names they cover: the `SSL_CTX` of one is built on
/// the first handshake that asks for one of its names and kept in a bounded ``TLSContextCache``, so thousands of
/// tenant certificates cost neither start-up time nor memory until they are used. Only names the configuration
/// knows reach the cache: a client's made-up SNI name matches nothing and gets the default certificate.
///
/// A store is immutable; a change builds a new one and publishes it through ``CertificateSource``. A connection
/// keeps the store it started with for its whole handshake.
public final class CertificateStore: Sendable {
    /// Served when SNI is absent or matches nothing.
    public let defaultContext: TLSContext
    /// Session-ticket keys for every context; a rebuilt store keeps the running ring.
    public let ticketKeys: TicketKeyRing
    /// Contexts of uploaded certificates; a rebuilt store keeps the running cache.
    public let cache: TLSContextCache
    /// The file tenants' certificates, in the order given.
    private let loaded: [TLSContext]
    private let exact: [String: Selection]
    /// Keyed by the suffix after `*.`.
    private let wildcard: [String: Selection]

    /// What a name selects.
    private enum Selection: Sendable {
        case loaded(TLSContext)
        case uploaded(UploadedCertificate)
    }

    /// - Parameters:
    ///   - defaultContext: the `tls:` certificate.
    ///   - contexts: certificates of the file's tenants; each is selected for the DNS names it covers. When two
    ///     cover the same name, the first wins.
    ///   - uploaded: certificates uploaded through the admin API, after the file's: a name a file certificate
    ///     covers stays the file's.
    ///   - cache: where uploaded certificates' contexts are kept; contexts of certificates no longer uploaded are
    ///     dropped from it.
    public init(
        defaultContext: TLSContext,
        contexts: [TLSContext] = [],
        uploaded: [UploadedCertificate] = [],
        cache: TLSContextCache = TLSContextCache(),
        ticketKeys: TicketKeyRing
    ) {
        var exact: [String: Selection] = [:]
        var wildcard: [String: Selection] = [:]
        func index(_ names: [String], _ selection: Selection) {
            for name in names {
                if name.hasPrefix("*.") {
                    let suffix = String(name.dropFirst(2))
                    if wildcard[suffix] == nil { wildcard[suffix] = selection }
                } else if exact[name] == nil {
                    exact[name] = selection
                }
            }
        }
        for context in contexts {
            index(context.names, .loaded(context))
        }
        for certificate in uploaded {
            index(certificate.names, .uploaded(certificate))
        }
        index(defaultContext.names, .loaded(defaultContext))
        cache.keep(only: Set(uploaded.map(\.fingerprint)))
        self.defaultContext = defaultContext
        self.loaded = contexts
        self.ticketKeys = ticketKeys
        self.cache = cache
        self.exact = exact
        self.wildcard = wildcard
    }

    /// A store with the same default and file certificates, ticket keys and cache, and `uploaded` instead of its
    /// uploaded certificates: what a certificate uploaded or removed through the admin API publishes. Only the
    /// contexts of certificates that are gone are dropped; every other stays built.
    public func replacingUploaded(_ uploaded: [UploadedCertificate]) -> CertificateStore {
        CertificateStore(
            defaultContext: defaultContext,
            contexts: loaded,
            uploaded: uploaded,
            cache: cache,
            ticketKeys: ticketKeys
        )
    }

    /// The context for a client's SNI name (any case, a trailing dot allowed). The first handshake for an uploaded
    /// certificate builds its context, on the calling thread.
    public func context(forServerName serverName: String?) -> TLSContext {
        guard var name = serverName?.lowercased(), !name.isEmpty else { return defaultContext }
        if name.hasSuffix(".") { name.removeLast() }
        var selection = exact[name]
        if selection == nil, let dot = name.firstIndex(of: ".") {
            selection = wildcard[String(name[name.index(after: dot)...])]
        }
        switch selection {
        case .loaded(let context): return context
        case .uploaded(let certificate): return cache.context(for: certificate) ?? defaultContext
        case nil: return defaultContext
        }
    }
}

/// A certificate uploaded through the admin API: its PEM text, kept until a handshake needs its context, and what
/// was read off it when it was validated.
public final class UploadedCertificate: Sendable {
    /// Who it belongs to, for log lines (`tenant shop`).
    public let label: String
    /// The leaf's SHA-256 fingerprint: what the cache keys contexts by, so that one context serves every tenant
    /// and every name of the same certificate.
    public let fingerprint: String
    /// The names it is selected for: those of its tenant's domains it covers (a tenant's certificate is never
    /// served for another tenant's names, whatever it covers).
    public let names: [String]
    let chainPEM: String
    let keyPEM: String

    public init(label: String, fingerprint: String, names: [String], chainPEM: String, keyPEM: String) {
        self.label = label
        self.fingerprint = fingerprint
        self.names = names
        self.chainPEM = chainPEM
        self.keyPEM = keyPEM
    }
}

/// The contexts of uploaded certificates, built on first use and kept up to ``capacity``, the least recently used
/// dropped first (connections using a dropped context keep it until they close). Shared by every event loop: a
/// lookup takes a lock for a dictionary access, a miss builds the context outside the lock.
public final class TLSContextCache: Sendable {
    /// Contexts kept at most; each costs roughly 10 KiB of OpenSSL state.
    public let capacity: Int
    private let policy: TLSPolicy
    private let logger: Logger
    private let state: NIOLockedValueBox<State>

    private struct State {
        var contexts: [String: (context: TLSContext, lastUse: UInt64)] = [:]
        /// Fingerprints whose context failed to build (expired since upload), so that each is tried once.
        var failed: Set<String> = []
        var uses: UInt64 = 0
        var builds = 0
    }

    public init(
        capacity: Int = 4096,
        policy: TLSPolicy = TLSPolicy(),
        logger: Logger = Logger(label: "switchyard.tls")
    ) {
        precondition(capacity > 0, "a context cache holds at least one context")
        self.capacity = capacity
        self.policy = policy
        self.logger = logger
        self.state = NIOLockedValueBox(State())
    }

    /// Contexts held now, and how many were built since the cache was made.
    public var statistics: (contexts: Int, builds: Int) {
        state.withLockedValue { ($0.contexts.count, $0.builds) }
    }

    /// The certificate's context, built now if it is not held; `nil` when it cannot be built (logged once).
    func context(for certificate: UploadedCertificate) -> TLSContext? {
        let held: TLSContext?? = state.withLockedValue { state in
            state.uses += 1
            if let entry = state.contexts[certificate.fingerprint] {
                state.contexts[certificate.fingerprint] = (entry.context, state.uses)
                return .some(entry.context)
            }
            return state.failed.contains(certificate.fingerprint) ? .some(nil) : nil
        }
        if let held { return held }
        let built: TLSContext
        do {
            built = try TLSContext(
                chainPEM: certificate.chainPEM,
                keyPEM: certificate.keyPEM,
                label: certificate.label,
                policy: policy
            )
        } catch {
            state.withLockedValue { _ = $0.failed.insert(certificate.fingerprint) }
            logger.error("the certificate of \(certificate.label) cannot be used, serving the default: \(error)")
            return nil
        }
        return state.withLockedValue { state in
            if let raced = state.contexts[certificate.fingerprint] { return raced.context }
            state.builds += 1
            if state.contexts.count >= capacity,
                let oldest = state.contexts.min(by: { $0.value.lastUse < $1.value.lastUse })?.key
            {
                state.contexts[oldest] = nil
            }
            state.contexts[certificate.fingerprint] = (built, state.uses)
            return built
        }
    }

    /// Drops the contexts of certificates not in `fingerprints` (removed or replaced ones).
    func keep(only fingerprints: Set<String>) {
        state.withLockedValue { state in
            state.contexts = state.contexts.filter { fingerprints.contains($0.key) }
            state.failed.formIntersection(fingerprints)
        }
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
