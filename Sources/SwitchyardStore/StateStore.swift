import Foundation

/// The durable state store: the tenants, drains and certificates changed through the admin API, the configuration
/// version, and the audit log of every change. Two implementations: ``SQLiteStateStore`` (one file, one node) and
/// ``PostgresStateStore`` (one database shared by a fleet of nodes).
///
/// The store keeps tenants as opaque JSON documents and knows nothing of Switchyard's types: the control plane
/// validates them with the configuration loader before writing and builds its routing snapshot from
/// ``snapshot()``. The data path never sees the store (this target is not one of its dependencies).
///
/// Every method blocks its caller on the database (and on its fsync): call it off the event loops that serve
/// traffic, never from inside a write's body.
public protocol StateStore: Sendable {
    /// Where the store is, for status and log lines: a file's path, or a database's URL without its password.
    var location: String { get }

    /// Everything in the store, read in one transaction.
    func snapshot() throws(StoreError) -> StoreSnapshot

    /// The configuration version: 0 for a new store.
    func revision() throws(StoreError) -> Int64

    /// The change records of the writes after `revision`, oldest first (by revision, then sequence), at most
    /// `limit` of them when given. `changes(since: 0)` is the whole log.
    func changes(since revision: Int64, limit: Int?) throws(StoreError) -> [ChangeRecord]

    /// Runs `body` in one read-only transaction, so that everything it reads through its ``StoreTransaction`` is
    /// of one moment: a node catching up reads the revision, the changes since the one it has and the rows they
    /// touched, all as of the same commit. The transaction's ``StoreTransaction/previousRevision`` is the revision
    /// read.
    func read<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T

    /// Calls `ring` (from a thread of its own) whenever another writer may have changed the store, and once each
    /// time it starts listening again after losing the database, since what was written meanwhile was not
    /// announced; `nil` when no other writer can change it (an SQLite file belongs to one balancer). A doorbell
    /// only: the caller reads what changed, and polls too, in case the bell stops ringing without a word.
    func watch(_ ring: @escaping @Sendable () -> Void) -> (any StoreWatch)?

    /// Records `node`'s heartbeat: that it is alive and serves revision ``FleetNode/applied``. Not a change: no
    /// revision, no record, no bell. A store of one node (SQLite) keeps none.
    func recordHeartbeat(_ node: FleetNode) throws(StoreError)

    /// Every node's latest heartbeat, by name; empty for a store of one node.
    func fleet() throws(StoreError) -> [FleetNode]

    /// Deletes the change records that `retention` no longer keeps, as of `now`: whole writes, never the latest
    /// one, under the store's write lock (so that it runs between writes, never beside one). Not a change: no
    /// revision, no record, no bell. A node whose next revision was pruned reads the store whole when it catches up.
    func pruneChanges(_ retention: ChangeLogRetention, now: Date) throws(StoreError) -> ChangeLogPruning

    /// Runs one write: a transaction that holds the store's write lock from its start, so that concurrent writers
    /// (in this process, another process, another node) run one after the other, in which `body` reads and mutates
    /// the store through its ``StoreTransaction``.
    ///
    /// - When `expectedRevision` is given and the store is at another revision, throws
    ///   ``StoreError/revisionMismatch(expected:current:)`` before `body` runs: nothing changes.
    /// - When the body changed anything, the revision goes up by exactly one, whatever the number of changes, and
    ///   every change record of the write carries that new revision (numbered by `sequence`). When it changed
    ///   nothing, the revision stays and no record is written.
    /// - When `body` throws, everything it did is rolled back and its error propagates unchanged. When the database
    ///   fails (the disk is full, the commit's fsync fails, the server is gone), everything is rolled back too and
    ///   the error is ``StoreError/unavailable(path:reason:)``.
    /// - With `dryRun`, the body runs and the answer says what it would have changed, then everything is rolled
    ///   back (`apply --dry-run`).
    ///
    /// - Parameter actor: who makes the change, for the audit log.
    /// - Returns: the new revision and the change records.
    /// - Throws: ``StoreError``, or what `body` threw.
    func write(
        expectedRevision: Int64?,
        actor: String,
        dryRun: Bool,
        _ body: (inout StoreTransaction) throws -> Void
    ) throws -> StoreCommit
}

extension StateStore {
    /// The whole change log after `revision`.
    public func changes(since revision: Int64) throws(StoreError) -> [ChangeRecord] {
        try changes(since: revision, limit: nil)
    }

    /// A write whatever the store's revision, committed: see ``write(expectedRevision:actor:dryRun:_:)``.
    @discardableResult
    public func write(
        expectedRevision: Int64? = nil,
        actor: String,
        dryRun: Bool = false,
        _ body: (inout StoreTransaction) throws -> Void
    ) throws -> StoreCommit {
        try write(expectedRevision: expectedRevision, actor: actor, dryRun: dryRun, body)
    }
}

/// A ``StateStore/watch(_:)`` in progress.
public protocol StoreWatch: Sendable {
    /// Stops ringing and lets go of what the watch holds (its connection).
    func stop()
}
