import NIOCore

/// Idle keep-alive connections to backends, for one event loop, by address (``BackendEndpoint``): a connection
/// released by one tenant's request serves the next request for any tenant whose backend is at that address.
///
/// Each worker has its own pool, so taking a connection is a dictionary lookup and an array pop on the loop's own
/// thread: no lock, no future. The most recently used connection is taken first (it is the least likely to have
/// been closed by the backend's own idle timeout); connections idle longer than `upstream_idle` are closed by the
/// worker's sweep.
///
/// Each backend's list is a class kept for the pool's life, so taking and returning a connection only read the
/// dictionary and change the list in place: mutating an array held as a dictionary value cost two allocations per
/// request (measured with a malloc probe under the s2 load).
struct UpstreamPool<Connection: PooledUpstream> {
    /// Most idle connections kept per backend address.
    let capacityPerBackend: Int
    private var idle: [ObjectIdentifier: IdleList] = [:]

    /// The idle connections to one backend, oldest first.
    private final class IdleList {
        var connections: [Connection] = []
    }

    init(capacityPerBackend: Int) {
        self.capacityPerBackend = capacityPerBackend
    }

    /// Takes an idle connection to `backend`'s address, if one is open.
    mutating func take(_ backend: Backend) -> Connection? {
        guard let list = idle[ObjectIdentifier(backend.endpoint)] else { return nil }
        while let connection = list.connections.popLast() {
            if connection.isActive {
                return connection
            }
        }
        return nil
    }

    /// Keeps `connection` for reuse; returns `false` when the backend's share of the pool is full.
    mutating func put(_ connection: Connection) -> Bool {
        let key = ObjectIdentifier(connection.backend.endpoint)
        let list: IdleList
        if let existing = idle[key] {
            list = existing
        } else {
            list = IdleList()
            idle[key] = list
        }
        guard list.connections.count < capacityPerBackend else { return false }
        list.connections.append(connection)
        return true
    }

    /// Forgets `connection` (it closed while idle).
    mutating func remove(_ connection: Connection) {
        idle[ObjectIdentifier(connection.backend.endpoint)]?.connections.removeAll { $0 === connection }
    }

    /// Removes and returns the connections idle since before `cutoff`.
    mutating func expire(idleSince cutoff: NIODeadline) -> [Connection] {
        var expired: [Connection] = []
        for (key, list) in idle {
            // Oldest first: the array is in order of release.
            let stale = list.connections.prefix { ($0.idleSince ?? cutoff) < cutoff }.count
            if stale > 0 {
                expired.append(contentsOf: list.connections.prefix(stale))
                list.connections.removeFirst(stale)
            }
            // Empty lists go at each sweep, so backends removed by a reload leave nothing behind; a busy backend's
            // list is made again by its next returned connection.
            if list.connections.isEmpty {
                idle[key] = nil
            }
        }
        return expired
    }

    /// Removes and returns every idle connection.
    mutating func removeAll() -> [Connection] {
        let all = idle.values.flatMap(\.connections)
        idle = [:]
        return all
    }
}

/// A backend connection as the pool sees it: the backend (hence address) it serves, since when it idles, and
/// whether it is still open.
protocol PooledUpstream: AnyObject {
    var backend: Backend { get }
    var idleSince: NIODeadline? { get }
    var isActive: Bool { get }
}

extension UpstreamConnection: PooledUpstream {}
