import Foundation
import GRDB

/// The store's rows in SQLite, inside the transaction GRDB runs (see ``StoreRows``).
struct SQLiteRows: StoreRows {
    let db: Database
    let path: String

    init(_ db: Database, path: String) {
        self.db = db
        self.path = path
    }

    func revision() throws -> Int64 {
        guard let value = try Int64.fetchOne(db, sql: "SELECT value FROM revision WHERE id = 1") else {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "the revision row is missing")
        }
        return value
    }

    func setRevision(_ revision: Int64) throws {
        try db.cachedStatement(sql: "UPDATE revision SET value = ? WHERE id = 1").execute(arguments: [revision])
    }

    func tenant(named name: String) throws -> String? {
        try String.fetchOne(
            db.cachedStatement(sql: "SELECT document FROM tenant WHERE name = ?"),
            arguments: [name]
        )
    }

    func tenants() throws -> [String: String] {
        var tenants: [String: String] = [:]
        let rows = try Row.fetchCursor(db, sql: "SELECT name, document FROM tenant")
        while let row = try rows.next() {
            tenants[try row.decode(String.self, atIndex: 0)] = try row.decode(String.self, atIndex: 1)
        }
        return tenants
    }

    func upsertTenant(_ name: String, document: String) throws {
        do {
            try db.cachedStatement(
                sql: """
                    INSERT INTO tenant (name, document) VALUES (?, ?)
                    ON CONFLICT (name) DO UPDATE SET document = excluded.document
                    """
            ).execute(arguments: [name, document])
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_CHECK {
            throw StoreError.invalidDocument(tenant: name)
        }
    }

    func deleteTenant(_ name: String) throws {
        try db.cachedStatement(sql: "DELETE FROM tenant WHERE name = ?").execute(arguments: [name])
    }

    func drains() throws -> Set<StoredDrain> {
        var drains: Set<StoredDrain> = []
        let rows = try Row.fetchCursor(db, sql: "SELECT tenant, backend FROM drain")
        while let row = try rows.next() {
            drains.insert(
                StoredDrain(tenant: try row.decode(String.self, atIndex: 0), backend: try row.decode(atIndex: 1))
            )
        }
        return drains
    }

    func insertDrain(_ drain: StoredDrain) throws -> Bool {
        try db.cachedStatement(sql: "INSERT OR IGNORE INTO drain (tenant, backend) VALUES (?, ?)").execute(
            arguments: [drain.tenant, drain.backend]
        )
        return db.changesCount == 1
    }

    func deleteDrain(_ drain: StoredDrain) throws -> Bool {
        try db.cachedStatement(sql: "DELETE FROM drain WHERE tenant = ? AND backend = ?").execute(
            arguments: [drain.tenant, drain.backend]
        )
        return db.changesCount == 1
    }

    private static let certificateColumns = "tenant, chain_pem, key_pem, fingerprint, names, not_after"

    func certificates() throws -> [String: StoredCertificate] {
        var certificates: [String: StoredCertificate] = [:]
        let rows = try Row.fetchCursor(db, sql: "SELECT \(Self.certificateColumns) FROM certificate")
        while let row = try rows.next() {
            let certificate = try Self.decodeCertificate(row)
            certificates[certificate.tenant] = certificate
        }
        return certificates
    }

    func certificate(ofTenant tenant: String) throws -> StoredCertificate? {
        try Row.fetchOne(
            db.cachedStatement(sql: "SELECT \(Self.certificateColumns) FROM certificate WHERE tenant = ?"),
            arguments: [tenant]
        )
        .map { try Self.decodeCertificate($0) }
    }

    func upsertCertificate(_ certificate: StoredCertificate) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO certificate (tenant, chain_pem, key_pem, fingerprint, names, not_after)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (tenant) DO UPDATE SET
                    chain_pem = excluded.chain_pem, key_pem = excluded.key_pem,
                    fingerprint = excluded.fingerprint, names = excluded.names, not_after = excluded.not_after
                """
        ).execute(
            arguments: [
                certificate.tenant, certificate.chainPEM, certificate.keyPEM, certificate.fingerprint,
                try StoreTransaction.json(certificate.names), StoredCertificate.seconds(certificate.notAfter),
            ]
        )
    }

    func deleteCertificate(ofTenant tenant: String) throws {
        try db.cachedStatement(sql: "DELETE FROM certificate WHERE tenant = ?").execute(arguments: [tenant])
    }

    private static func decodeCertificate(_ row: Row) throws -> StoredCertificate {
        let namesJSON = try row.decode(String.self, atIndex: 4)
        let names = try JSONDecoder().decode([String].self, from: Data(namesJSON.utf8))
        return StoredCertificate(
            tenant: try row.decode(atIndex: 0),
            chainPEM: try row.decode(atIndex: 1),
            keyPEM: try row.decode(atIndex: 2),
            fingerprint: try row.decode(atIndex: 3),
            names: names,
            notAfter: Date(timeIntervalSince1970: Double(try row.decode(Int64.self, atIndex: 5)))
        )
    }

    func insertChanges(_ records: [ChangeRecord]) throws {
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO change (revision, sequence, time_ms, actor, action, subject, "before", "after")
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """
        )
        for record in records {
            try statement.execute(
                arguments: [
                    record.revision, record.sequence, StoreTime.milliseconds(record.time), record.actor,
                    record.action.rawValue, record.subject, record.before, record.after,
                ]
            )
        }
    }

    func changes(since revision: Int64, limit: Int?) throws -> [ChangeRecord] {
        var changes: [ChangeRecord] = []
        let rows = try Row.fetchCursor(
            db,
            sql: """
                SELECT revision, sequence, time_ms, actor, action, subject, "before", "after" FROM change
                WHERE revision > ? ORDER BY revision, sequence LIMIT ?
                """,
            arguments: [revision, limit ?? -1]
        )
        while let row = try rows.next() {
            let actionName = try row.decode(String.self, atIndex: 4)
            guard let action = ChangeAction(rawValue: actionName) else {
                throw DatabaseError(
                    resultCode: .SQLITE_CORRUPT,
                    message: "a change record has the unknown action '\(actionName)'"
                )
            }
            changes.append(
                ChangeRecord(
                    revision: try row.decode(atIndex: 0),
                    sequence: try row.decode(atIndex: 1),
                    time: StoreTime.date(milliseconds: try row.decode(Int64.self, atIndex: 2)),
                    actor: try row.decode(atIndex: 3),
                    action: action,
                    subject: try row.decode(atIndex: 5),
                    before: try row.decode(atIndex: 6),
                    after: try row.decode(atIndex: 7)
                )
            )
        }
        return changes
    }

    func newestRevision(before milliseconds: Int64) throws -> Int64? {
        try Int64.fetchOne(db, sql: "SELECT max(revision) FROM change WHERE time_ms < ?", arguments: [milliseconds])
    }

    func revision(ofRecordFromNewest offset: Int) throws -> Int64? {
        try Int64.fetchOne(
            db,
            sql: "SELECT revision FROM change ORDER BY revision DESC, sequence DESC LIMIT 1 OFFSET ?",
            arguments: [offset]
        )
    }

    func deleteChanges(through revision: Int64) throws -> Int {
        try db.execute(sql: "DELETE FROM change WHERE revision <= ?", arguments: [revision])
        return db.changesCount
    }

    func atomically(_ work: () throws -> Void) throws {
        try db.inSavepoint {
            try work()
            return .commit
        }
    }

    func storeError(_ error: any Error) -> StoreError {
        StoreError.wrapping(error, path: path)
    }
}

extension StoreError {
    /// Any error met while using an SQLite store, as a ``StoreError``: store errors as they are, SQLite's mapped by
    /// result code, anything else (a row that does not decode) as ``unavailable(path:reason:)`` with its text.
    static func wrapping(_ error: any Error, path: String) -> StoreError {
        switch error {
        case let error as StoreError:
            return error
        case let error as DatabaseError:
            return .from(error, path: path)
        default:
            return .unavailable(
                path: path,
                reason: "a stored row cannot be read (\(error)); the file was damaged or edited by another program"
            )
        }
    }
}

extension StoreError {
    /// Maps an SQLite failure to ``unavailable(path:reason:)``, with a reason naming the condition and its remedy.
    static func from(_ error: DatabaseError, path: String) -> StoreError {
        let code = "SQLITE_\(Self.name(of: error.extendedResultCode))"
        let message = error.message.map { ", \"\($0)\"" } ?? ""
        let reason: String
        switch error.resultCode {
        case .SQLITE_FULL:
            reason = "the disk is full (\(code)\(message)); free space on its volume"
        case .SQLITE_READONLY:
            reason =
                "it is read-only (\(code)\(message)); make the file, its -wal and -shm files and their directory "
                + "writable by this user"
        case .SQLITE_PERM:
            reason = "permission denied (\(code)\(message)); make the file and its directory writable by this user"
        case .SQLITE_CORRUPT:
            reason =
                "the file is damaged (\(code)\(message)); restore it from a backup, or move it away to start with an "
                + "empty store"
        case .SQLITE_NOTADB:
            reason =
                "the file is not a database (\(code)\(message)); point `state` at a Switchyard state store, or move "
                + "the file away to start with an empty store"
        case .SQLITE_CANTOPEN:
            reason =
                "the file cannot be opened (\(code)\(message)); check that its directory exists, is writable and that "
                + "the path is not a directory"
        case .SQLITE_IOERR:
            reason = "an I/O error occurred (\(code)\(message)); check the disk and the kernel log"
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            reason =
                "another process holds it locked (\(code)\(message)); only one Switchyard may use a state file at a "
                + "time"
        default:
            reason = "SQLite failed (\(code)\(message))"
        }
        return .unavailable(path: path, reason: reason)
    }

    /// The SQLite name of a primary result code, without its `SQLITE_` prefix, with the extended code's number when
    /// there is one (`IOERR 4874`), as the SQLite documentation lists them.
    private static func name(of code: ResultCode) -> String {
        let primary: String
        switch code.primaryResultCode {
        case .SQLITE_FULL: primary = "FULL"
        case .SQLITE_READONLY: primary = "READONLY"
        case .SQLITE_PERM: primary = "PERM"
        case .SQLITE_CORRUPT: primary = "CORRUPT"
        case .SQLITE_NOTADB: primary = "NOTADB"
        case .SQLITE_CANTOPEN: primary = "CANTOPEN"
        case .SQLITE_IOERR: primary = "IOERR"
        case .SQLITE_BUSY: primary = "BUSY"
        case .SQLITE_LOCKED: primary = "LOCKED"
        case .SQLITE_CONSTRAINT: primary = "CONSTRAINT"
        case .SQLITE_MISUSE: primary = "MISUSE"
        default: primary = "ERROR \(code.primaryResultCode.rawValue)"
        }
        return code == code.primaryResultCode ? primary : "\(primary) (extended code \(code.rawValue))"
    }
}
