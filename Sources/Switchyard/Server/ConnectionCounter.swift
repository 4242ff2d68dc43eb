import Atomics

/// Counts client connections across all workers against `limits.max_connections`.
final class ConnectionCounter: Sendable {
    private let open = ManagedAtomic<Int>(0)
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Takes a slot; `false` when the limit is reached.
    func acquire() -> Bool {
        let count = open.loadThenWrappingIncrement(ordering: .relaxed)
        if count >= limit {
            open.wrappingDecrement(ordering: .relaxed)
            return false
        }
        return true
    }

    func release() {
        open.wrappingDecrement(ordering: .relaxed)
    }

    var current: Int {
        open.load(ordering: .relaxed)
    }
}
