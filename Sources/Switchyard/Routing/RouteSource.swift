import Atomics

/// The current ``RouteTable``, published atomically.
///
/// The control plane (a reload, later the admin API) builds a whole new table and stores it here; every request
/// loads the table once, lock-free, and finishes on the one it loaded even if a newer one is stored meanwhile.
public final class RouteSource: Sendable {
    private final class Snapshot: AtomicReference, Sendable {
        let table: RouteTable
        let generation: Int

        init(_ table: RouteTable, generation: Int) {
            self.table = table
            self.generation = generation
        }
    }

    private let snapshot: ManagedAtomic<Snapshot>
    /// Numbers the publications, so that each stored table has its own even when two are published at once.
    private let publications = ManagedAtomic<Int>(0)

    public init(_ table: RouteTable) {
        table.applyDrainMarks()
        self.snapshot = ManagedAtomic(Snapshot(table, generation: 0))
    }

    /// The table requests are routed by now.
    public var current: RouteTable {
        snapshot.load(ordering: .acquiring).table
    }

    /// The table requests are routed by now and the number of its publication (0 for the first): a follower that
    /// only acts on changes (the health checker) compares the number instead of walking the table.
    var currentWithGeneration: (table: RouteTable, generation: Int) {
        let current = snapshot.load(ordering: .acquiring)
        return (current.table, current.generation)
    }

    /// Replaces the table; requests already routed are not affected. Backends of the current table that the new
    /// one no longer has are retired (``Retirement``): their tunnels close after `timeouts.drain`.
    ///
    /// - Parameter names: when the table was made from the current one by ``RouteTable/replacing(_:with:)``, the
    ///   names it replaced: only those tenants are compared and have their backends' `drain` marks applied (every
    ///   other tenant is the current table's own object), which at 10,000 tenants saves walking all of them.
    public func publish(_ table: RouteTable, replacing names: Set<String>? = nil) {
        let previous = current
        if let names {
            var replaced: [Tenant] = []
            for name in names {
                let successor = table.tenant(named: name)
                if let successor { replaced.append(successor) }
                for backend in previous.tenant(named: name)?.backends ?? []
                where !(successor?.backends.contains { $0 === backend } ?? false) {
                    backend.retirement.retire()
                }
            }
            RouteTable.applyDrainMarks(of: replaced)
        } else {
            table.applyDrainMarks()
            let kept = Set(table.tenants.lazy.flatMap { $0.backends.lazy.map(ObjectIdentifier.init) })
            for tenant in previous.tenants {
                for backend in tenant.backends where !kept.contains(ObjectIdentifier(backend)) {
                    backend.retirement.retire()
                }
            }
        }
        let generation = publications.wrappingIncrementThenLoad(ordering: .relaxed)
        snapshot.store(Snapshot(table, generation: generation), ordering: .releasing)
    }
}
