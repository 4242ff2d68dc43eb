import Atomics
import NIOCore

/// A tenant as the data path sees it: its name, domains and backends.
///
/// Instances are immutable and shared by every event loop through a ``RouteTable`` snapshot; identity matters
/// (pools and counters are keyed by it), hence a class.
public final class Tenant: Sendable {
    /// The tenant's unique name.
    public let name: String
    /// Domains routed to this tenant, normalised (lower case, no trailing dot).
    public let domains: [String]
    /// Backends in the order they were declared.
    public let backends: [Backend]
    /// How the tenant's backends are checked.
    public let health: HealthCheckConfiguration
    /// How a backend is picked.
    public let balance: BalancingAlgorithm
    /// Each backend's weight, in the order of ``backends``; `nil` when all weigh the same.
    public let weights: [Int]?
    /// Whether plain-HTTP requests are redirected to HTTPS (308).
    public let httpsRedirect: Bool
    /// Idle timeout of the tenant's tunnels; `nil` for the server-wide one.
    public let tunnelIdle: TimeAmount?
    /// The tenant's open tunnels, against its `max_tunnels`. Shared with the tenant's successor on a reload, so
    /// the cap holds across configuration changes.
    public let tunnels: TunnelGauge
    /// The sticky-session cookie; `nil` when requests are not pinned to a backend.
    public let sticky: StickyCookie?
    /// Whether each backend, in the order of ``backends``, is marked `drain` in the configuration (applied to its
    /// status when the route table is published).
    public let drained: [Bool]
    /// Protocols an `Upgrade` may switch to, lower case (`websocket` unless the tenant allows more).
    public let upgradeProtocols: [[UInt8]]
    /// What the data path counts for the tenant; shared with its successor on a reload or change, like ``tunnels``.
    public let meters: TenantMeters

    public init(
        name: String,
        domains: [String],
        backends: [Backend],
        health: HealthCheckConfiguration = HealthCheckConfiguration(),
        balance: BalancingAlgorithm = .roundRobin,
        weights: [Int]? = nil,
        httpsRedirect: Bool = false,
        tunnelIdle: TimeAmount? = nil,
        tunnels: TunnelGauge = TunnelGauge(limit: 10_000),
        sticky: StickySessionConfiguration? = nil,
        drained: [Bool]? = nil,
        upgradeProtocols: [String] = ["websocket"],
        meters: TenantMeters = TenantMeters()
    ) {
        self.meters = meters
        self.upgradeProtocols = upgradeProtocols.map { Array($0.lowercased().utf8) }
        self.name = name
        self.domains = domains
        self.backends = backends
        self.health = health
        self.balance = balance
        self.weights = weights.flatMap { $0.count == backends.count && Set($0).count > 1 ? $0 : nil }
        self.httpsRedirect = httpsRedirect
        self.tunnelIdle = tunnelIdle
        self.tunnels = tunnels
        assert(drained == nil || drained?.count == backends.count, "one drain mark per backend")
        self.drained = drained.flatMap { $0.count == backends.count ? $0 : nil } ?? backends.map { _ in false }
        self.sticky = sticky.map {
            StickyCookie(configuration: $0, tenant: name, backends: backends.map(\.description))
        }
    }

    /// Whether an `Upgrade` field's value names only protocols the tenant allows. Each element is a protocol name
    /// with an optional `/version` (`websocket`, `h2c`, `foo/1`), compared without case and version.
    func allowsUpgrade(to value: UnsafeRawBufferPointer) -> Bool {
        var allowed = true
        var any = false
        HTTPSyntax.forEachListElement(value, 0..<value.count) { element in
            any = true
            var name = element
            if let slash = element.firstIndex(where: { value[$0] == UInt8(ascii: "/") }) {
                name = element.lowerBound..<slash
            }
            let matches = upgradeProtocols.contains { candidate in
                candidate.count == name.count
                    && zip(candidate, name).allSatisfy { HTTPSyntax.lowercase(value[$1]) == $0 }
            }
            allowed = allowed && matches
        }
        return any && allowed
    }
}

/// Counts a tenant's open tunnels (upgraded connections) against its cap, across all workers.
public final class TunnelGauge: Sendable {
    private let open = ManagedAtomic<Int>(0)
    /// The most tunnels allowed at once.
    public let limit: Int

    public init(limit: Int) {
        self.limit = limit
    }

    /// Takes a slot; `false` when the cap is reached.
    func acquire() -> Bool {
        if open.loadThenWrappingIncrement(ordering: .relaxed) >= limit {
            open.wrappingDecrement(ordering: .relaxed)
            return false
        }
        return true
    }

    func release() {
        open.wrappingDecrement(ordering: .relaxed)
    }

    /// Tunnels open now.
    public var current: Int {
        open.load(ordering: .relaxed)
    }
}

/// One backend server of a tenant.
public final class Backend: Sendable, CustomStringConvertible {
    /// The address connected to.
    public let address: SocketAddress
    /// `HOST:PORT` as written by the operator (see ``TenantConfiguration/backendNames``): its name in logs, status
    /// and the admin API, and the source of its sticky-session cookie.
    public let description: String
    /// Health as the data path sees it; kept by the same backend across reloads.
    public let status: BackendStatus
    /// What this backend shares with every other tenant's backend at the same address: the idle keep-alive
    /// connections to it (see ``BackendEndpoint``).
    public let endpoint: BackendEndpoint
    /// Set once the backend left its tenant: its tunnels are then closed after `timeouts.drain`.
    public let retirement = Retirement()
    /// What the data path counts for the backend.
    public let meters = BackendMeters()

    /// - Parameter endpoint: the address's shared endpoint; a new one when `nil` (the route table passes the one
    ///   every backend at this address uses).
    public init(
        address: SocketAddress,
        description: String? = nil,
        status: BackendStatus = BackendStatus(),
        endpoint: BackendEndpoint? = nil
    ) {
        self.address = address
        self.description = description ?? Backend.format(address)
        self.status = status
        self.endpoint = endpoint ?? BackendEndpoint(address: address)
    }

    static func format(_ address: SocketAddress) -> String {
        switch address {
        case .v4:
            return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .v6:
            return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        case .unixDomainSocket:
            return address.pathname ?? "unix"
        }
    }
}
