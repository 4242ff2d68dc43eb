import NIOCore

/// The balancing algorithms (``Tenant/Balance``) for one event loop: round robin, smooth weighted round robin and
/// least connections, each skipping backends that are down, ejected or draining.
///
/// Each loop keeps its own positions, so picking a backend touches nothing shared: the loops' rotations are
/// independent, which spreads requests as evenly overall (nginx's workers do the same).
struct BackendSelector {
    private var roundRobin: [ObjectIdentifier: Int] = [:]
    /// Smooth weighted round robin's running weights, per tenant (nginx's algorithm).
    private var currentWeights: [ObjectIdentifier: [Int]] = [:]

    /// Picks the backend for a request: `preferred` (the one its sticky-session cookie names) if it is available
    /// and not `excluded`, else the tenant's next available backend by its balancing algorithm (skipping down,
    /// ejected and draining ones), avoiding `excluded` when another is available; `nil` when none is available.
    mutating func next(
        of tenant: Tenant,
        preferring preferred: Backend? = nil,
        excluding excluded: Backend?,
        now: NIODeadline
    ) -> Backend? {
        if let preferred, preferred !== excluded, preferred.status.isAvailable(now: now) {
            return preferred
        }
        let backends = tenant.backends
        guard !backends.isEmpty else { return nil }
        let key = ObjectIdentifier(tenant)
        if tenant.balance == .roundRobin, let weights = tenant.weights {
            return nextWeightedBackend(of: tenant, weights: weights, excluding: excluded, now: now)
        }
        let start = roundRobin[key] ?? 0
        var fallback: Backend?
        var chosen: (backend: Backend, index: Int)?
        for offset in 0..<backends.count {
            let index = (start &+ offset) % backends.count
            let backend = backends[index]
            guard backend.status.isAvailable(now: now) else { continue }
            if backend === excluded {
                fallback = backend
                continue
            }
            switch tenant.balance {
            case .roundRobin:
                roundRobin[key] = (index &+ 1) % backends.count
                return backend
            case .leastConnections:
                // Scanning from the round-robin position makes ties rotate.
                if let current = chosen, current.backend.status.connections <= backend.status.connections {
                    continue
                }
                chosen = (backend, index)
            }
        }
        if let chosen {
            roundRobin[key] = (chosen.index &+ 1) % backends.count
            return chosen.backend
        }
        return fallback
    }

    /// Smooth weighted round robin: every available backend gains its weight, the one with the most is picked and
    /// loses the total. With weights 5, 1, 1 the order is a a b a c a a: spread out, never five in a row.
    private mutating func nextWeightedBackend(
        of tenant: Tenant,
        weights: [Int],
        excluding excluded: Backend?,
        now: NIODeadline
    ) -> Backend? {
        let key = ObjectIdentifier(tenant)
        var current = currentWeights[key] ?? [Int](repeating: 0, count: weights.count)
        defer { currentWeights[key] = current }
        var total = 0
        var best: Int?
        var fallback: Backend?
        for (index, backend) in tenant.backends.enumerated() {
            guard backend.status.isAvailable(now: now) else { continue }
            if backend === excluded {
                fallback = backend
                continue
            }
            current[index] += weights[index]
            total += weights[index]
            if let chosen = best, current[chosen] >= current[index] { continue }
            best = index
        }
        guard let best else { return fallback }
        current[best] -= total
        return tenant.backends[best]
    }
}
