import Foundation

/// The row operations of one store transaction, as each database spells them: a ``StoreTransaction`` decides
/// what a change does (what it records, when it changes nothing) once, for every store, through these.
///
/// Every operation runs inside the transaction the store opened for the write or the read; errors are the
/// database's own, turned into ``StoreError`` by ``storeError(_:)``, except where a case says otherwise.
protocol StoreRows {
    func revision() throws -> Int64

    func tenant(named name: String) throws -> String?
    func tenants() throws -> [String: String]
    /// Inserts or replaces a tenant's document; throws ``StoreError/invalidDocument(tenant:)`` for a document that
    /// is not a JSON object.
    func upsertTenant(_ name: String, document: String) throws
    func deleteTenant(_ name: String) throws

    func drains() throws -> Set<StoredDrain>
    /// `false` when the drain was there already.
    func insertDrain(_ drain: StoredDrain) throws -> Bool
    /// `false` when there was no such drain.
    func deleteDrain(_ drain: StoredDrain) throws -> Bool

    func certificates() throws -> [String: StoredCertificate]
    func certificate(ofTenant tenant: String) throws -> StoredCertificate?
    func upsertCertificate(_ certificate: StoredCertificate) throws
    func deleteCertificate(ofTenant tenant: String) throws

    /// The change records of one mutation, together.
    func insertChanges(_ records: [ChangeRecord]) throws

    /// The batch forms, for an apply of thousands: one statement each where the database allows it (the defaults
    /// run the single ones).
    func upsertTenants(_ documents: [(name: String, document: String)]) throws
    func deleteTenants(_ names: [String]) throws
    func changes(since revision: Int64, limit: Int?) throws -> [ChangeRecord]

    /// The newest revision whose write began before `milliseconds` (since 1970); `nil` when there is none.
    func newestRevision(before milliseconds: Int64) throws -> Int64?
    /// The revision of the record `offset` places from the newest (0: the newest); `nil` when the log is shorter.
    func revision(ofRecordFromNewest offset: Int) throws -> Int64?
    /// Deletes the records of every revision up to `revision`: how many.
    func deleteChanges(through revision: Int64) throws -> Int

    /// Runs `work` in a savepoint: what it did stays when it returns, and is undone when it throws.
    func atomically(_ work: () throws -> Void) throws

    /// Any error met on these rows as a ``StoreError``: store errors as they are, the database's mapped to
    /// ``StoreError/unavailable(path:reason:)`` with a reason an operator can act on.
    func storeError(_ error: any Error) -> StoreError
}

extension StoreRows {
    func upsertTenants(_ documents: [(name: String, document: String)]) throws {
        for (name, document) in documents { try upsertTenant(name, document: document) }
    }

    func deleteTenants(_ names: [String]) throws {
        for name in names { try deleteTenant(name) }
    }

    /// Everything, as of the transaction.
    func snapshot() throws -> StoreSnapshot {
        StoreSnapshot(
            revision: try revision(),
            tenants: try tenants(),
            drains: try drains(),
            certificates: try certificates()
        )
    }

    /// ``StateStore/pruneChanges(_:now:)``'s decision, made once for every store, in a transaction that holds the
    /// write lock and found the store at revision `current`.
    func pruneChanges(_ retention: ChangeLogRetention, now: Date, current: Int64) throws -> ChangeLogPruning {
        var through: Int64 = 0
        if let age = retention.maximumAge {
            let (seconds, attoseconds) = age.components
            let cutoff = StoreTime.milliseconds(now) - seconds * 1000 - attoseconds / 1_000_000_000_000_000
            through = max(through, try newestRevision(before: cutoff) ?? 0)
        }
        if let keep = retention.maximumRecords, keep > 0, let last = try revision(ofRecordFromNewest: keep - 1) {
            // The write holding the last record within the limit stays whole (it may straddle the limit); the
            // writes before it go.
            through = max(through, last - 1)
        }
        // The latest write stays, however old: the log then still says where it stands.
        through = min(through, current - 1)
        guard through > 0 else { return ChangeLogPruning(deleted: 0, throughRevision: nil) }
        let deleted = try deleteChanges(through: through)
        return ChangeLogPruning(deleted: deleted, throughRevision: deleted > 0 ? through : nil)
    }
}

/// Times as the stores keep them: milliseconds since 1970 in change records (`time_ms`).
enum StoreTime {
    static func milliseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
    }

    static func date(milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
    }

    /// Now, to the millisecond the log keeps, so that a commit's records equal what a later read returns.
    static func now() -> Date {
        date(milliseconds: milliseconds(Date()))
    }
}
