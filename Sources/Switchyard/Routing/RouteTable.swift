import NIOCore

/// An immutable map from host names to tenants: the routing snapshot every request reads.
///
/// Exact names are one hash lookup. Wildcards (`*.shop.test`) are looked up by suffix, from the longest to the
/// shortest, so the cost is O(labels in the host), never O(tenants): an exact name beats any wildcard and a longer
/// wildcard suffix beats a shorter one, as in nginx's `server_name`. A wildcard matches one or more labels
/// (`a.b.shop.test` matches `*.shop.test`) but not the bare suffix (`shop.test`).
public struct RouteTable: Sendable {
    /// The maps, behind one reference: every request loads the table from ``RouteSource``, and a copy of the
    /// struct then costs one retain and one release, whatever the number of maps inside.
    private let storage: Storage

    private final class Storage: Sendable {
        let maps: Maps

        init(_ maps: Maps) {
            self.maps = maps
        }
    }

    /// What a table knows; mutated only while a table is made.
    private struct Maps: Sendable {
        var exact: [String: Tenant] = [:]
        /// Keyed by the suffix after `*.`, e.g. `shop.test` for `*.shop.test`.
        var wildcard: [String: Tenant] = [:]
        var tenants: [Tenant] = []
        var byName: [String: Tenant] = [:]
        /// One endpoint per backend address, with how many tenants' backends use it, so that idle connections are
        /// shared by every tenant that lists the address and an address no tenant lists any more is let go.
        var endpoints: [SocketAddress: (endpoint: BackendEndpoint, users: Int)] = [:]

        /// Adds a tenant's domains, name and endpoints.
        mutating func insert(_ tenant: Tenant) throws(RouteTableError) {
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
            byName[tenant.name] = tenant
            tenants.append(tenant)
            for backend in tenant.backends {
                endpoints[backend.address, default: (backend.endpoint, 0)].users += 1
            }
        }

        /// Takes a tenant's domains, name and endpoints out; `tenants` is left to the caller.
        mutating func forget(_ tenant: Tenant) {
            for domain in tenant.domains {
                if domain.hasPrefix("*.") {
                    let key = String(domain.dropFirst(2))
                    if wildcard[key] === tenant { wildcard[key] = nil }
                } else if exact[domain] === tenant {
                    exact[domain] = nil
                }
            }
            if byName[tenant.name] === tenant { byName[tenant.name] = nil }
            for backend in tenant.backends {
                guard let entry = endpoints[backend.address] else { continue }
                endpoints[backend.address] = entry.users > 1 ? (entry.endpoint, entry.users - 1) : nil
            }
        }
    }

    /// Every tenant, in declaration order (a tenant replaced by ``replacing(_:with:)`` goes to the end).
    public var tenants: [Tenant] { storage.maps.tenants }

    /// An empty table: every host is unknown.
    public init() {
        storage = Storage(Maps())
    }

    /// Builds the table; domains must already be normalised (see ``HostName``).
    ///
    /// - Throws: ``RouteTableError`` when a domain is claimed by two tenants.
    public init(tenants: [Tenant]) throws(RouteTableError) {
        var maps = Maps()
        maps.tenants.reserveCapacity(tenants.count)
        for tenant in tenants {
            try maps.insert(tenant)
        }
        storage = Storage(maps)
    }

    private init(_ maps: Maps) {
        storage = Storage(maps)
    }

    /// The tenant named `name`.
    public func tenant(named name: String) -> Tenant? {
        storage.maps.byName[name]
    }

    /// The tenant that has `domain` (normalised, a wildcard written `*.shop.test`) among its own domains: who a
    /// tenant claiming it would collide with.
    public func tenant(forDomain domain: String) -> Tenant? {
        domain.hasPrefix("*.") ? storage.maps.wildcard[String(domain.dropFirst(2))] : storage.maps.exact[domain]
    }

    /// The tenant serving `host`, which must be normalised.
    public func tenant(forNormalizedHost host: String) -> Tenant? {
        // Through `storage.maps`, not a local copy of `maps`: that would retain each of its maps per request.
        if let tenant = storage.maps.exact[host] {
            return tenant
        }
        let wildcard = storage.maps.wildcard
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
        Self.applyDrainMarks(of: tenants)
    }

    /// ``applyDrainMarks()`` for some tenants only.
    static func applyDrainMarks(of tenants: [Tenant]) {
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
        let kept = Kept(previous: previous, names: nil)
        var endpoints = previous?.storage.maps.endpoints.mapValues(\.endpoint) ?? [:]
        let tenants = configuration.tenants.map { kept.tenant(for: $0, endpoints: &endpoints) }
        try self.init(tenants: tenants)
    }

    /// This table with the tenants named `names` replaced by those of `configurations` (each name in `names` that
    /// `configurations` leaves out is removed): the incremental form of ``init(configuration:previous:)`` for a
    /// change of a few tenants, which at 10,000 tenants costs a few of them instead of all. Every other tenant is
    /// the same object as here; a replaced one keeps its backends' state and its tunnel count as a reload would.
    ///
    /// - Throws: ``RouteTableError`` when a new domain is claimed by another tenant; this table is unchanged.
    public func replacing(
        _ names: Set<String>,
        with configurations: [TenantConfiguration]
    ) throws(RouteTableError) -> RouteTable {
        var table = storage.maps
        let kept = Kept(previous: self, names: names)
        for name in names {
            if let old = table.byName[name] { table.forget(old) }
        }
        table.tenants.removeAll { names.contains($0.name) }
        var endpoints = table.endpoints.mapValues(\.endpoint)
        for tenant in kept.previousEndpoints {
            if endpoints[tenant.key] == nil { endpoints[tenant.key] = tenant.value }
        }
        for configuration in configurations {
            try table.insert(kept.tenant(for: configuration, endpoints: &endpoints))
        }
        return RouteTable(table)
    }

    /// What a rebuilt tenant takes over from the table it replaces: its tunnel gauge (while its cap is
    /// unchanged), its meters, and each backend it still lists, with its health, meters, pooled connections and
    /// checks.
    private struct Kept {
        var gauges: [String: TunnelGauge] = [:]
        var meters: [String: TenantMeters] = [:]
        var backends: [String: [SocketAddress: Backend]] = [:]
        /// The endpoints of the tenants being replaced, so that an address they keep keeps its endpoint.
        var previousEndpoints: [SocketAddress: BackendEndpoint] = [:]

        /// - Parameter names: only these tenants of `previous` (all when `nil`).
        init(previous: RouteTable?, names: Set<String>?) {
            guard let previous else { return }
            let tenants = names.map { $0.compactMap { previous.tenant(named: $0) } } ?? previous.tenants
            for tenant in tenants {
                gauges[tenant.name] = tenant.tunnels
                meters[tenant.name] = tenant.meters
                for backend in tenant.backends {
                    backends[tenant.name, default: [:]][backend.address] = backend
                    previousEndpoints[backend.address] = backend.endpoint
                }
            }
        }

        func tenant(
            for tenant: TenantConfiguration,
            endpoints: inout [SocketAddress: BackendEndpoint]
        ) -> Tenant {
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
                    let endpoint = endpoints[address] ?? BackendEndpoint(address: address)
                    endpoints[address] = endpoint
                    return Backend(address: address, description: name, endpoint: endpoint)
                },
                health: tenant.health ?? HealthCheckConfiguration(),
                balance: tenant.balance,
                weights: tenant.backends.map { tenant.weights[$0] ?? 1 },
                httpsRedirect: tenant.httpsRedirect,
                tunnelIdle: tenant.tunnelIdle,
                tunnels: gauge,
                sticky: tenant.sticky,
                drained: tenant.backends.map { tenant.drained.contains($0) },
                upgradeProtocols: tenant.upgradeProtocols,
                meters: meters[tenant.name] ?? TenantMeters()
            )
        }
    }
}
