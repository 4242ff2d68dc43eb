import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The store's rows in PostgreSQL, inside the transaction ``PostgresSession`` began (see ``StoreRows``). Every
/// statement waits for its answer for at most the store's timeout.
struct PostgresRows: StoreRows {
    let connection: PostgresConnection
    let location: String
    let timeout: TimeAmount
    let logger: Logger

    /// Runs one statement and returns its rows.
    @discardableResult
    func query(_ query: PostgresQuery) throws -> PostgresQueryResult {
        try PostgresFailure.wait(for: connection.query(query, logger: logger), timeout: timeout)
    }

    /// Runs a statement without parameters (a transaction's `BEGIN`, `COMMIT`, `SAVEPOINT`).
    func execute(_ sql: String) throws {
        try query(PostgresQuery(unsafeSQL: sql))
    }

    func revision() throws -> Int64 {
        try revision(PostgresQuery(unsafeSQL: "SELECT value FROM switchyard.revision WHERE id = 1"))
    }

    /// The revision, with its row locked until the transaction ends: a write's first statement.
    func lockRevision() throws -> Int64 {
        try revision(PostgresQuery(unsafeSQL: "SELECT value FROM switchyard.revision WHERE id = 1 FOR UPDATE"))
    }

    private func revision(_ statement: PostgresQuery) throws -> Int64 {
        guard let row = try query(statement).first else {
            throw StoreError.unavailable(
                path: location,
                reason: "the revision row of schema switchyard is missing; was the schema edited by hand?"
            )
        }
        return try row.decode(Int64.self)
    }

    /// Sets the revision and sends it to the listeners of `channel` once the transaction commits, in one
    /// statement.
    func setRevision(_ revision: Int64, notifying channel: String) throws {
        let payload = String(revision)
        try query(
            """
            UPDATE switchyard.revision SET value = \(revision) WHERE id = 1
            RETURNING pg_notify(\(channel), \(payload))
            """
        )
    }

    func tenant(named name: String) throws -> String? {
        try query("SELECT document FROM switchyard.tenant WHERE name = \(name)").first?.decode(String.self)
    }

    func tenants() throws -> [String: String] {
        var tenants: [String: String] = [:]
        for row in try query("SELECT name, document FROM switchyard.tenant") {
            let (name, document) = try row.decode((String, String).self)
            tenants[name] = document
        }
        return tenants
    }

    func upsertTenant(_ name: String, document: String) throws {
        do {
            try query(
                """
                INSERT INTO switchyard.tenant (name, document) VALUES (\(name), \(document))
                ON CONFLICT (name) DO UPDATE SET document = excluded.document
                """
            )
        } catch let error as PSQLError
            where [PostgresFailure.checkViolation, PostgresFailure.invalidText].contains(error.serverInfo?[.sqlState])
        {
            throw StoreError.invalidDocument(tenant: name)
        }
    }

    func deleteTenant(_ name: String) throws {
        try query("DELETE FROM switchyard.tenant WHERE name = \(name)")
    }

    func drains() throws -> Set<StoredDrain> {
        var drains: Set<StoredDrain> = []
        for row in try query("SELECT tenant, backend FROM switchyard.drain") {
            let (tenant, backend) = try row.decode((String, String).self)
            drains.insert(StoredDrain(tenant: tenant, backend: backend))
        }
        return drains
    }

    func insertDrain(_ drain: StoredDrain) throws -> Bool {
        let result = try query(
            """
            INSERT INTO switchyard.drain (tenant, backend) VALUES (\(drain.tenant), \(drain.backend))
            ON CONFLICT DO NOTHING
            """
        )
        return result.metadata.rows == 1
    }

    func deleteDrain(_ drain: StoredDrain) throws -> Bool {
        let result = try query(
            "DELETE FROM switchyard.drain WHERE tenant = \(drain.tenant) AND backend = \(drain.backend)"
        )
        return result.metadata.rows == 1
    }

    func certificates() throws -> [String: StoredCertificate] {
        var certificates: [String: StoredCertificate] = [:]
        let rows = try query(
            "SELECT tenant, chain_pem, key_pem, fingerprint, names, not_after FROM switchyard.certificate"
        )
        for row in rows {
            let certificate = try Self.decodeCertificate(row)
            certificates[certificate.tenant] = certificate
        }
        return certificates
    }

    func certificate(ofTenant tenant: String) throws -> StoredCertificate? {
        let rows = try query(
            """
            SELECT tenant, chain_pem, key_pem, fingerprint, names, not_after FROM switchyard.certificate
            WHERE tenant = \(tenant)
            """
        )
        return try rows.first.map(Self.decodeCertificate)
    }

    func upsertCertificate(_ certificate: StoredCertificate) throws {
        let names = try StoreTransaction.json(certificate.names)
        let notAfter = StoredCertificate.seconds(certificate.notAfter)
        try query(
            """
            INSERT INTO switchyard.certificate (tenant, chain_pem, key_pem, fingerprint, names, not_after)
            VALUES (\(certificate.tenant), \(certificate.chainPEM), \(certificate.keyPEM), \(certificate.fingerprint),
                \(names), \(notAfter))
            ON CONFLICT (tenant) DO UPDATE SET
                chain_pem = excluded.chain_pem, key_pem = excluded.key_pem,
                fingerprint = excluded.fingerprint, names = excluded.names, not_after = excluded.not_after
            """
        )
    }

    func deleteCertificate(ofTenant tenant: String) throws {
        try query("DELETE FROM switchyard.certificate WHERE tenant = \(tenant)")
    }

    private static func decodeCertificate(_ row: PostgresRow) throws -> StoredCertificate {
        let (tenant, chain, key, fingerprint, namesJSON, notAfter) = try row.decode(
            (String, String, String, String, String, Int64).self
        )
        return StoredCertificate(
            tenant: tenant,
            chainPEM: chain,
            keyPEM: key,
            fingerprint: fingerprint,
            names: try JSONDecoder().decode([String].self, from: Data(namesJSON.utf8)),
            notAfter: Date(timeIntervalSince1970: Double(notAfter))
        )
    }

    func upsertTenants(_ documents: [(name: String, document: String)]) throws {
        guard !documents.isEmpty else { return }
        let rows = try Self.jsonArray(documents.map { ["name": $0.name, "document": $0.document] })
        do {
            try query(
                """
                INSERT INTO switchyard.tenant (name, document)
                SELECT name, document FROM jsonb_to_recordset(\(rows)::jsonb) AS r(name text, document text)
                ON CONFLICT (name) DO UPDATE SET document = excluded.document
                """
            )
        } catch let error as PSQLError
            where [PostgresFailure.checkViolation, PostgresFailure.invalidText].contains(error.serverInfo?[.sqlState])
        {
            // Checked before (StoreTransaction.isObject); the database's own check is the backstop.
            throw StoreError.invalidDocument(tenant: documents.first?.name ?? "")
        }
    }

    func deleteTenants(_ names: [String]) throws {
        guard !names.isEmpty else { return }
        try query("DELETE FROM switchyard.tenant WHERE name = ANY(\(names))")
    }

    func insertChanges(_ records: [ChangeRecord]) throws {
        guard !records.isEmpty else { return }
        let rows = try Self.jsonArray(
            records.map { record -> [String: Any] in
                var row: [String: Any] = [
                    "revision": record.revision, "sequence": record.sequence,
                    "time_ms": StoreTime.milliseconds(record.time), "actor": record.actor,
                    "action": record.action.rawValue, "subject": record.subject,
                ]
                row["before"] = record.before
                row["after"] = record.after
                return row
            }
        )
        try query(
            """
            INSERT INTO switchyard.change (revision, sequence, time_ms, actor, action, subject, "before", "after")
            SELECT revision, sequence, time_ms, actor, action, subject, "before", "after"
            FROM jsonb_to_recordset(\(rows)::jsonb) AS r(
                revision bigint, sequence bigint, time_ms bigint, actor text, action text, subject text,
                "before" text, "after" text
            )
            """
        )
    }

    /// `rows` as one JSON array, the parameter of a `jsonb_to_recordset` batch.
    private static func jsonArray(_ rows: [[String: Any]]) throws -> String {
        String(
            decoding: try JSONSerialization.data(withJSONObject: rows, options: [.withoutEscapingSlashes]),
            as: UTF8.self
        )
    }

    func newestRevision(before milliseconds: Int64) throws -> Int64? {
        try query("SELECT max(revision) FROM switchyard.change WHERE time_ms < \(milliseconds)").first?.decode(
            Int64?.self
        )
    }

    func revision(ofRecordFromNewest offset: Int) throws -> Int64? {
        let offset = Int64(offset)
        return try query(
            """
            SELECT revision FROM switchyard.change ORDER BY revision DESC, sequence DESC LIMIT 1 OFFSET \(offset)
            """
        ).first?.decode(Int64.self)
    }

    func deleteChanges(through revision: Int64) throws -> Int {
        try query("DELETE FROM switchyard.change WHERE revision <= \(revision)").metadata.rows ?? 0
    }

    func changes(since revision: Int64, limit: Int?) throws -> [ChangeRecord] {
        let limit = limit.map(Int64.init)
        let rows = try query(
            """
            SELECT revision, sequence, time_ms, actor, action, subject, "before", "after" FROM switchyard.change
            WHERE revision > \(revision) ORDER BY revision, sequence LIMIT \(limit)
            """
        )
        return try rows.map { row in
            let (revision, sequence, time, actor, actionName, subject, before, after) = try row.decode(
                (Int64, Int64, Int64, String, String, String, String?, String?).self
            )
            guard let action = ChangeAction(rawValue: actionName) else {
                throw StoreError.unavailable(
                    path: location,
                    reason:
                        "a change record has the unknown action '\(actionName)'; was it written by a newer Switchyard?"
                )
            }
            return ChangeRecord(
                revision: revision,
                sequence: Int(sequence),
                time: StoreTime.date(milliseconds: time),
                actor: actor,
                action: action,
                subject: subject,
                before: before,
                after: after
            )
        }
    }

    /// A node's heartbeat, in a statement of its own (autocommit): it is no change of the configuration.
    func upsertNode(_ node: FleetNode) throws {
        let started = StoreTime.milliseconds(node.startedAt)
        let seen = StoreTime.milliseconds(node.seenAt)
        try query(
            """
            INSERT INTO switchyard.node (name, address, applied, started_ms, seen_ms)
            VALUES (\(node.name), \(node.address), \(node.applied), \(started), \(seen))
            ON CONFLICT (name) DO UPDATE SET
                address = excluded.address, applied = excluded.applied, started_ms = excluded.started_ms,
                seen_ms = excluded.seen_ms
            """
        )
    }

    func nodes() throws -> [FleetNode] {
        try query("SELECT name, address, applied, started_ms, seen_ms FROM switchyard.node ORDER BY name").map { row in
            let (name, address, applied, started, seen) = try row.decode((String, String, Int64, Int64, Int64).self)
            return FleetNode(
                name: name,
                address: address,
                applied: applied,
                startedAt: StoreTime.date(milliseconds: started),
                seenAt: StoreTime.date(milliseconds: seen)
            )
        }
    }

    /// Without a savepoint, which would cost two round trips per mutation: every mutation checks what it is given
    /// before it writes anything (``StoreTransaction``), so one that throws has written nothing; and a failure of
    /// the database in the middle of one spoils the whole transaction, which is then rolled back.
    func atomically(_ work: () throws -> Void) throws {
        try work()
    }

    func storeError(_ error: any Error) -> StoreError {
        StoreError.wrappingPostgres(error, location: location)
    }
}
