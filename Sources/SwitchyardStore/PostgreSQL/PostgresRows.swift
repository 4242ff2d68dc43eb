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

    func setRevision(_ revision: Int64) throws {
        try query("UPDATE switchyard.revision SET value = \(revision) WHERE id = 1")
    }

    /// Sends `payload` to the listeners of `channel` once the transaction commits.
    func notify(_ channel: String, payload: String) throws {
        try query("SELECT pg_notify(\(channel), \(payload))")
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

    func insertChange(_ record: ChangeRecord) throws {
        let sequence = Int64(record.sequence)
        let time = StoreTime.milliseconds(record.time)
        let action = record.action.rawValue
        try query(
            """
            INSERT INTO switchyard.change (revision, sequence, time_ms, actor, action, subject, "before", "after")
            VALUES (\(record.revision), \(sequence), \(time), \(record.actor), \(action), \(record.subject),
                \(record.before), \(record.after))
            """
        )
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

    func atomically(_ work: () throws -> Void) throws {
        try execute("SAVEPOINT mutation")
        do {
            try work()
        } catch {
            // Back to before the mutation; the transaction goes on (PostgreSQL refuses every statement of a
            // transaction after an error until then).
            try execute("ROLLBACK TO SAVEPOINT mutation")
            try execute("RELEASE SAVEPOINT mutation")
            throw error
        }
        try execute("RELEASE SAVEPOINT mutation")
    }

    func storeError(_ error: any Error) -> StoreError {
        StoreError.wrappingPostgres(error, location: location)
    }
}
