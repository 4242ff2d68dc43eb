import Foundation

/// The changes of one write, made inside its database transaction: the body given to
/// ``StateStore/write(expectedRevision:actor:dryRun:_:)`` reads and mutates the store through it. What a change
/// records, and when it changes nothing, is decided here once for every store; the rows are the store's own
/// (``StoreRows``).
///
/// Each mutation is atomic on its own (a savepoint): it changes its rows and appends its change records, or, when
/// it throws, leaves nothing of itself behind. A mutation that changes nothing (a document put again unchanged, a
/// drain added twice, a tenant removed that is not there) appends no record and returns `nil` or `false`, so that
/// the audit log holds only real changes and a write that changes nothing keeps the revision where it was.
///
/// When the database itself fails (``StoreError/unavailable(path:reason:)``: disk full, I/O error, server gone) the
/// transaction is
/// spoiled: further mutations throw the same error, and so does the write even if the body caught it, so nothing of
/// a failed write is ever committed.
///
/// Not copyable, so that the body cannot keep it past the transaction it belongs to.
public struct StoreTransaction: ~Copyable {
    /// The configuration version the write started from.
    public let previousRevision: Int64
    /// Who makes the write; every change record of the write carries it.
    public let actor: String
    /// The write's time; every change record of the write carries it.
    public let time: Date

    let rows: any StoreRows
    private(set) var changes: [ChangeRecord] = []
    private(set) var failure: StoreError?

    init(rows: any StoreRows, previousRevision: Int64, actor: String, time: Date) {
        self.rows = rows
        self.previousRevision = previousRevision
        self.actor = actor
        self.time = time
    }

    /// The version the write commits as, if it changes anything.
    public var revision: Int64 { previousRevision + 1 }

    // MARK: Reading, as of this transaction

    /// The document of the store tenant `name`, or `nil` when there is none.
    public func tenant(named name: String) throws(StoreError) -> String? {
        try read { try $0.tenant(named: name) }
    }

    /// Every store tenant's document, by name.
    public func tenants() throws(StoreError) -> [String: String] {
        try read { try $0.tenants() }
    }

    /// Every admin drain.
    public func drains() throws(StoreError) -> Set<StoredDrain> {
        try read { try $0.drains() }
    }

    /// Whether `tenant`'s `backend` is drained by the admin.
    public func isDrained(tenant: String, backend: String) throws(StoreError) -> Bool {
        try read { try $0.drains().contains(StoredDrain(tenant: tenant, backend: backend)) }
    }

    /// Every uploaded certificate, by tenant.
    public func certificates() throws(StoreError) -> [String: StoredCertificate] {
        try read { try $0.certificates() }
    }

    /// Everything in the store, as of this transaction.
    public func snapshot() throws(StoreError) -> StoreSnapshot {
        try read { try $0.snapshot() }
    }

    /// The change records after `revision`, oldest first, at most `limit` of them when given.
    public func changes(since revision: Int64, limit: Int? = nil) throws(StoreError) -> [ChangeRecord] {
        try read { try $0.changes(since: revision, limit: limit) }
    }

    /// The certificate uploaded for `tenant`, or `nil`.
    public func certificate(ofTenant tenant: String) throws(StoreError) -> StoredCertificate? {
        try read { try $0.certificate(ofTenant: tenant) }
    }

    // MARK: Tenants

    /// Adds the store tenant `name` with `document` (a JSON object), or replaces its document. Answers
    /// ``ChangeAction/tenantAdd`` or ``ChangeAction/tenantReplace``, or `nil` when the tenant already had exactly
    /// this document (nothing changes). Throws ``StoreError/invalidDocument(tenant:)`` for a document that is not a
    /// JSON object.
    @discardableResult
    public mutating func putTenant(_ name: String, document: String) throws(StoreError) -> ChangeAction? {
        var action: ChangeAction?
        try mutate { db, log in
            action = try Self.put(db, &log, tenant: name, document: document)
        }
        return action
    }

    /// Removes the store tenant `name`, answering its last document, or `nil` when there was no such tenant. Its
    /// drains and certificate are the caller's to remove (``removeDrains(ofTenant:)``,
    /// ``removeCertificate(ofTenant:)``): the store does not interpret names, and drains may belong to a file tenant
    /// of the same name.
    @discardableResult
    public mutating func removeTenant(_ name: String) throws(StoreError) -> String? {
        var removed: String?
        try mutate { db, log in
            removed = try Self.remove(db, &log, tenant: name)
        }
        return removed
    }

    /// Makes `tenants` the whole set of store tenants (an `apply`): adds those that are new, replaces those whose
    /// document differs, removes those not in `tenants`, and answers the difference. Changes are recorded removals
    /// first, then additions and replacements, each in name order. All or nothing: an invalid document leaves every
    /// tenant as it was.
    @discardableResult
    public mutating func replaceTenants(with tenants: [String: String]) throws(StoreError) -> TenantDifference {
        var difference = TenantDifference()
        try mutate { db, log in
            let current = try db.tenants()
            let removed = current.keys.sorted().filter { tenants[$0] == nil }
            let put = tenants.keys.sorted().filter { current[$0] != tenants[$0] }
            for name in put {
                guard let document = tenants[name], Self.isObject(document) else {
                    throw StoreError.invalidDocument(tenant: name)
                }
            }
            // In two statements, whatever the number of tenants (an apply of 10,000 is one round trip each to a
            // database server, not 20,000).
            try db.deleteTenants(removed)
            try db.upsertTenants(put.compactMap { name in tenants[name].map { (name, $0) } })
            for name in removed {
                try log.append(.tenantRemove, subject: name, before: current[name], after: nil)
            }
            for name in put {
                try log.append(
                    current[name] == nil ? .tenantAdd : .tenantReplace,
                    subject: name,
                    before: current[name],
                    after: tenants[name]
                )
            }
            difference.removed = removed
            difference.added = put.filter { current[$0] == nil }
            difference.replaced = put.filter { current[$0] != nil }
        }
        return difference
    }

    // MARK: Drains

    /// Drains `tenant`'s `backend`; `false` when it was drained already.
    @discardableResult
    public mutating func addDrain(tenant: String, backend: String) throws(StoreError) -> Bool {
        var added = false
        try mutate { db, log in
            let drain = StoredDrain(tenant: tenant, backend: backend)
            guard try db.insertDrain(drain) else { return }
            try log.append(.drainAdd, subject: drain.description, before: nil, after: try Self.json(drain))
            added = true
        }
        return added
    }

    /// Ends the admin drain of `tenant`'s `backend`; `false` when there was none.
    @discardableResult
    public mutating func removeDrain(tenant: String, backend: String) throws(StoreError) -> Bool {
        var removed = false
        try mutate { db, log in
            removed = try Self.removeDrain(db, &log, StoredDrain(tenant: tenant, backend: backend))
        }
        return removed
    }

    /// Ends every admin drain of `tenant`, answering those there were.
    @discardableResult
    public mutating func removeDrains(ofTenant tenant: String) throws(StoreError) -> [StoredDrain] {
        var removed: [StoredDrain] = []
        try mutate { db, log in
            let drains = try db.drains().filter { $0.tenant == tenant }.sorted()
            for drain in drains {
                if try Self.removeDrain(db, &log, drain) { removed.append(drain) }
            }
        }
        return removed
    }

    // MARK: Certificates

    /// Stores `certificate` as its tenant's, replacing the one it had. Answers ``ChangeAction/certificateAdd`` or
    /// ``ChangeAction/certificateReplace``, or `nil` when exactly this certificate was stored already. The change
    /// record holds the ``CertificateSummary`` only, never the key.
    @discardableResult
    public mutating func putCertificate(_ certificate: StoredCertificate) throws(StoreError) -> ChangeAction? {
        var action: ChangeAction?
        try mutate { db, log in
            let before = try db.certificate(ofTenant: certificate.tenant)
            guard before != certificate else { return }
            try db.upsertCertificate(certificate)
            let done: ChangeAction = before == nil ? .certificateAdd : .certificateReplace
            try log.append(
                done,
                subject: certificate.tenant,
                before: try before.map { try Self.json($0.summary) },
                after: try Self.json(certificate.summary)
            )
            action = done
        }
        return action
    }

    /// Removes `tenant`'s certificate, answering it, or `nil` when it had none.
    @discardableResult
    public mutating func removeCertificate(ofTenant tenant: String) throws(StoreError) -> StoredCertificate? {
        var removed: StoredCertificate?
        try mutate { db, log in
            guard let before = try db.certificate(ofTenant: tenant) else { return }
            try db.deleteCertificate(ofTenant: tenant)
            try log.append(.certificateRemove, subject: tenant, before: try Self.json(before.summary), after: nil)
            removed = before
        }
        return removed
    }

    // MARK: The configuration file

    /// Records that the configuration file `file` was reloaded, serving `tenants` tenants: the file is not in the
    /// store, but its reload is a change of what is served, so it gets a version and an audit record like any other.
    public mutating func recordReload(of file: String, tenants: Int) throws(StoreError) {
        try mutate { _, log in
            try log.append(.configurationReload, subject: file, before: nil, after: try Self.json(["tenants": tenants]))
        }
    }

    // MARK: Machinery

    /// Runs one mutation in a savepoint, so that it is applied whole or not at all, and keeps its change records.
    /// A database failure spoils the transaction (see the type's documentation).
    private mutating func mutate(_ work: (any StoreRows, inout ChangeLog) throws -> Void) throws(StoreError) {
        if let failure { throw failure }
        let rows = self.rows
        var log = ChangeLog(
            rows: rows,
            revision: revision,
            time: time,
            actor: actor,
            nextSequence: changes.count
        )
        do {
            try rows.atomically {
                try work(rows, &log)
                try rows.insertChanges(log.records)
            }
        } catch let error as StoreError where !error.isUnavailable {
            throw error
        } catch {
            let failure = rows.storeError(error)
            self.failure = failure
            throw failure
        }
        changes += log.records
    }

    private func read<T>(_ work: (any StoreRows) throws -> T) throws(StoreError) -> T {
        do {
            return try work(rows)
        } catch {
            throw rows.storeError(error)
        }
    }

    private static func put(
        _ db: any StoreRows,
        _ log: inout ChangeLog,
        tenant name: String,
        document: String
    ) throws -> ChangeAction? {
        let current = try db.tenant(named: name)
        return try put(db, &log, tenant: name, document: document, current: current)
    }

    private static func put(
        _ db: any StoreRows,
        _ log: inout ChangeLog,
        tenant name: String,
        document: String,
        current: String?
    ) throws -> ChangeAction? {
        guard current != document else { return nil }
        guard isObject(document) else { throw StoreError.invalidDocument(tenant: name) }
        try db.upsertTenant(name, document: document)
        let action: ChangeAction = current == nil ? .tenantAdd : .tenantReplace
        try log.append(action, subject: name, before: current, after: document)
        return action
    }

    private static func remove(_ db: any StoreRows, _ log: inout ChangeLog, tenant name: String) throws -> String? {
        guard let current = try db.tenant(named: name) else { return nil }
        try db.deleteTenant(name)
        try log.append(.tenantRemove, subject: name, before: current, after: nil)
        return current
    }

    private static func removeDrain(_ db: any StoreRows, _ log: inout ChangeLog, _ drain: StoredDrain) throws -> Bool {
        guard try db.deleteDrain(drain) else { return false }
        try log.append(.drainRemove, subject: drain.description, before: try json(drain), after: nil)
        return true
    }

    /// Whether `document` is a JSON object, as the stores' own checks require (checked here first, so that an
    /// apply names the tenant whose document is wrong, whatever the database).
    static func isObject(_ document: String) -> Bool {
        (try? JSONSerialization.jsonObject(with: Data(document.utf8))) is [String: Any]
    }

    /// Compact JSON with sorted keys and unescaped slashes, for change records and the `names` column.
    static func json(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// Collects the change records of one mutation, numbering them on from the write's records so far; they are
/// inserted together when the mutation ends.
struct ChangeLog {
    let rows: any StoreRows
    let revision: Int64
    let time: Date
    let actor: String
    var nextSequence: Int
    private(set) var records: [ChangeRecord] = []

    init(rows: any StoreRows, revision: Int64, time: Date, actor: String, nextSequence: Int) {
        self.rows = rows
        self.revision = revision
        self.time = time
        self.actor = actor
        self.nextSequence = nextSequence
    }

    mutating func append(_ action: ChangeAction, subject: String, before: String?, after: String?) throws {
        let record = ChangeRecord(
            revision: revision,
            sequence: nextSequence,
            time: time,
            actor: actor,
            action: action,
            subject: subject,
            before: before,
            after: after
        )
        nextSequence += 1
        records.append(record)
    }
}
