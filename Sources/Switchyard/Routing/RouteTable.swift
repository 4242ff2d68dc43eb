import NIOCore

/// An immutable map from host names to tenants: the routing snapshot every request reads.
///
/// Exact names are one hash lookup. Wildcards (`*.shop.test`) are looked up by suffix, from the longest to the
/// shortest, so the cost is O(labels in the host), never O(tenants): an exact name beats any wildcard and a longer
/// wildcard suffix beats a shorter one, as in nginx's `server_name`. A wildcard matches one or more labels
/// (`a.b.shop.test` matches `*.shop.test`) but not the bare suffix (`shop.test`).
public struct RouteTable: Sendable {
    private let exact: [String: Tenant]
    /// Keyed by the suffix after `*.`, e.g. `shop.test` for `*.shop.test`.
    private let wildcard: [String: Tenant]
    /// Every tenant, in declaration order.
    public let tenants: [Tenant]

    /// An empty table: every host is unknown.
    public init() {
        self.exact = [:]
        self.wildcard = [:]
        self.tenants = []
    }

    /// Builds the table; domains must already be normalised (see ``HostName``).
    ///
    /// - Throws: ``RouteTableError`` when a domain is claimed by two tenants.
    public init(tenants: [Tenant]) throws(RouteTableError) {
        var exact: [String: Tenant] = [:]
        var wildcard: [String: Tenant] = [:]
        for tenant in tenants {
            for domain in tenant.domains {
                let isWildcard = domain.hasPrefix("*.")
                let key = isWildcard ? String(domain.dropFirst(2)) : domain
                if let owner = isWildcard ? wildcard[key] : exact[key] {
                    throw RouteTableError(domain: domain, firstTenant: owner.name, secondTenant: tenant.name)
                }
                if isWildcard {
                    wildcard[key] = tenant
                } else {
                    exact[key] = tenant
                }
            }
        }
        self.exact = exact
        self.wildcard = wildcard
        self.tenants = tenants
    }

    /// The tenant serving `host`, which must be normalised.
    public func tenant(forNormalizedHost host: String) -> Tenant? {
        if let tenant = exact[host] {
            return tenant
        }
        guard !wildcard.isEmpty else { return nil }
        var utf8 = host.utf8[...]
        while let dot = utf8.firstIndex(of: UInt8(ascii: ".")) {
            let suffix = utf8[utf8.index(after: dot)...]
            if let tenant = wildcard[String(Substring(suffix))] {
                return tenant
            }
            utf8 = suffix
        }
        return nil
    }

    /// Marks each backend drained or not as its tenant's configuration says. Called when the table is published,
    /// not when it is built, so that a reload refused after building changes nothing; a backend kept from the
    /// previous table follows the new file (a reload that removes the mark puts it back in rotation).
    func applyDrainMarks() {
        for tenant in tenants {
            for (backend, drained) in zip(tenant.backends, tenant.drained) {
                backend.status.isDrainedInConfiguration = drained
            }
        }
    }

    /// The tenant serving the raw bytes of a `Host` header, or `nil` if the host is invalid or unknown.
    public func tenant(forHost bytes: UnsafeRawBufferPointer) -> Tenant? {
        guard let host = HostName.normalize(bytes) else { return nil }
        return tenant(forNormalizedHost: host)
    }
}

/// Two tenants claim the same domain.
public struct RouteTableError: Error, Equatable, CustomStringConvertible {
    public var domain: String
    public var firstTenant: String
    public var secondTenant: String

    public var description: String {
        "domain '\(domain)' is claimed by both tenant '\(firstTenant)' and tenant '\(secondTenant)'"
    }
}

extension RouteTable {
    /// Builds the table for the tenants of a configuration.
    ///
    /// - Parameter previous: the table being replaced, if any: a tenant that keeps its name keeps its tunnel
    ///   count (when its cap is unchanged), so tunnels opened before a reload still count against the cap.

    public init(configuration: Configuration, previous: RouteTable? = nil) throws(RouteTableError) {
        var gauges: [String: TunnelGauge] = [:]
        // A backend that stays in its tenant keeps its object, so its health, its pooled connections and its
        // health checks carry on across the reload.
        var backends: [String: [SocketAddress: Backend]] = [:]
        // One endpoint per address, across tenants and reloads, so that idle connections are shared by every tenant
        // that lists the address and survive the reload.
        var endpoints: [SocketAddress: BackendEndpoint] = [:]
        for tenant in previous?.tenants ?? [] {
            gauges[tenant.name] = tenant.tunnels
            for backend in tenant.backends {
                backends[tenant.name, default: [:]][backend.address] = backend
                endpoints[backend.address] = backend.endpoint
            }
        }
        func endpoint(for address: SocketAddress) -> BackendEndpoint {
            if let shared = endpoints[address] { return shared }
            let created = BackendEndpoint(address: address)
            endpoints[address] = created
            return created
        }
        let tenants = configuration.tenants.map { tenant in
            var gauge = gauges[tenant.name] ?? TunnelGauge(limit: tenant.maxTunnels)
            if gauge.limit != tenant.maxTunnels {
                gauge = TunnelGauge(limit: tenant.maxTunnels)
            }
            return Tenant(
                name: tenant.name,
                domains: tenant.domains,
                backends: tenant.backends.map { address in
                    let name = tenant.backendNames[address]
                    if let kept = backends[tenant.name]?[address], kept.description == name ?? Backend.format(address) {
                        return kept
                    }
                    return Backend(address: address, description: name, endpoint: endpoint(for: address))
                },
                health: tenant.health ?? HealthCheckConfiguration(),
                balance: tenant.balance,
                weights: tenant.backends.map { tenant.weights[$0] ?? 1 },
                httpsRedirect: tenant.httpsRedirect,
                tunnelIdle: tenant.tunnelIdle,
                tunnels: gauge,
                sticky: tenant.sticky,
                drained: tenant.backends.map { tenant.drained.contains($0) },
                upgradeProtocols: tenant.upgradeProtocols
            )
        }
        try self.init(tenants: tenants)
    }
}
