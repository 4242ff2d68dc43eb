import NIOCore

/// Idle keep-alive connections to backends, for one event loop.
///
/// Each worker has its own pool, so taking a connection is a dictionary lookup and an array pop on the loop's own
/// thread: no lock, no future. The most recently used connection is taken first (it is the least likely to have
/// been closed by the backend's own idle timeout); connections idle longer than `upstream_idle` are closed by the
/// worker's sweep.
struct UpstreamPool {
    /// Most idle connections kept per backend.
    let capacityPerBackend: Int
    private var idle: [ObjectIdentifier: [UpstreamConnection]] = [:]

    init(capacityPerBackend: Int) {
        self.capacityPerBackend = capacityPerBackend
    }

    /// Takes an idle connection to `backend`, if one is open.
    mutating func take(_ backend: Backend) -> UpstreamConnection? {
        let key = ObjectIdentifier(backend)
        while let connection = idle[key]?.popLast() {
            if connection.isActive {
                return connection
            }
        }
        return nil
    }

    /// Keeps `connection` for reuse; returns `false` when the backend's share of the pool is full.
    mutating func put(_ connection: UpstreamConnection) -> Bool {
        let key = ObjectIdentifier(connection.backend)
        guard (idle[key]?.count ?? 0) < capacityPerBackend else { return false }
        idle[key, default: []].append(connection)
        return true
    }

    /// Forgets `connection` (it closed while idle).
    mutating func remove(_ connection: UpstreamConnection) {
        let key = ObjectIdentifier(connection.backend)
        idle[key]?.removeAll { $0 === connection }
        if idle[key]?.isEmpty == true { idle[key] = nil }
    }

    /// Removes and returns the connections idle since before `cutoff`.
    mutating func expire(idleSince cutoff: NIODeadline) -> [UpstreamConnection] {
        var expired: [UpstreamConnection] = []
        for (key, connections) in idle {
            // Oldest first: the array is in order of release.
            let stale = connections.prefix { ($0.idleSince ?? cutoff) < cutoff }
            guard !stale.isEmpty else { continue }
            expired.append(contentsOf: stale)
            let rest = Array(connections.dropFirst(stale.count))
            idle[key] = rest.isEmpty ? nil : rest
        }
        return expired
    }

    /// Removes and returns every idle connection.
    mutating func removeAll() -> [UpstreamConnection] {
        let all = idle.values.flatMap { $0 }
        idle = [:]
        return all
    }
}
