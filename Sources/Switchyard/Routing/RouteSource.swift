import Atomics

/// The current ``RouteTable``, published atomically.
///
/// The control plane (a reload, later the admin API) builds a whole new table and stores it here; every request
/// loads the table once, lock-free, and finishes on the one it loaded even if a newer one is stored meanwhile.
public final class RouteSource: Sendable {
    private final class Snapshot: AtomicReference, Sendable {
        let table: RouteTable

        init(_ table: RouteTable) {
            self.table = table
        }
    }

    private let snapshot: ManagedAtomic<Snapshot>

    public init(_ table: RouteTable) {
        table.applyDrainMarks()
        self.snapshot = ManagedAtomic(Snapshot(table))
    }

    /// The table requests are routed by now.
    public var current: RouteTable {
        snapshot.load(ordering: .acquiring).table
    }

    /// Replaces the table; requests already routed are not affected.
    public func publish(_ table: RouteTable) {
        table.applyDrainMarks()
        snapshot.store(Snapshot(table), ordering: .releasing)
    }
}
