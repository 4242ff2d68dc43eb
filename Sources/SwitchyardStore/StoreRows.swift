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
