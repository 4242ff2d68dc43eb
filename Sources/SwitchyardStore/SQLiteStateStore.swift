import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The durable state store on one SQLite file: the tenants, drains and certificates changed through the admin API,
/// the configuration version, and the audit log of every change.
///
/// The store keeps tenants as opaque JSON documents and knows nothing of Switchyard's types: the control plane
/// validates them with the configuration loader before writing and builds its routing snapshot from
/// ``snapshot()``. The data path never sees the store (this target is not one of its dependencies).
///
/// Durability: the file is in WAL mode with `synchronous = FULL`, so a write that returned has been fsynced and
/// survives a crash or power loss. The file (and its `-wal` and `-shm` files) is mode 0600, since it holds private
/// keys.
///
/// Concurrency: one SQLite connection, serialised by GRDB's `DatabaseQueue` (`Sendable`); every write is an
/// `IMMEDIATE` transaction, so writers are serialised against other connections to the file too (another
/// instance, another process), waiting up to 10 s for the lock. Every method blocks its caller on SQLite and on
/// fsync: call it off the event loops (a thread pool, or a dedicated thread), never from inside a write's body
/// (GRDB traps on reentrant use).
public final class SQLiteStateStore: Sendable {
    /// The file, as given.
    public let path: String

    let queue: DatabaseQueue

    /// Opens the store at `path`, creating it when missing: the missing directories (mode 0700), then the file
    /// (mode 0600; an existing file readable by others is narrowed to 0600), then the schema. Throws
    /// ``StoreError/unavailable(path:reason:)`` when the file cannot be created, opened or written, is not a
    /// database or is damaged, and ``StoreError/newerSchema(path:detail:)`` when a newer Switchyard migrated it.
    public init(path: String) throws(StoreError) {
        guard !path.isEmpty else {
            throw .unavailable(path: path, reason: "the path is empty; set `state` to the path of a file")
        }
        self.path = path
        try Self.prepareFile(at: path)

        var configuration = Configuration()
        configuration.label = "SwitchyardStore"
        configuration.foreignKeysEnabled = true
        configuration.busyMode = .timeout(10)
        // WAL is set by `migrate` rather than with `journalMode = .wal`, which would also set `synchronous = NORMAL`
        // (a write acknowledged under NORMAL can be lost to a power failure), and only once the file is known to be
        // a state store: another program's database is refused without being switched to WAL.
        configuration.journalMode = .default
        do {
            queue = try DatabaseQueue(path: path, configuration: configuration)
        } catch {
            throw StoreError.wrapping(error, path: path)
        }
        try Self.migrate(queue, path: path)
    }

    /// Everything in the store, read in one transaction.
    public func snapshot() throws(StoreError) -> StoreSnapshot {
        try perform {
            try queue.read { db in
                StoreSnapshot(
                    revision: try StoreReader.revision(db),
                    tenants: try StoreReader.tenants(db),
                    drains: try StoreReader.drains(db),
                    certificates: try StoreReader.certificates(db)
                )
            }
        }
    }

    /// The configuration version: 0 for a new store.
    public func revision() throws(StoreError) -> Int64 {
        try perform { try queue.read { db in try StoreReader.revision(db) } }
    }

    /// The change records of the writes after `revision`, oldest first (by revision, then sequence), at most
    /// `limit` of them when given. `changes(since: 0)` is the whole log.
    public func changes(since revision: Int64, limit: Int? = nil) throws(StoreError) -> [ChangeRecord] {
        try perform {
            try queue.read { db in try StoreReader.changes(db, since: revision, limit: limit) }
        }
    }

    /// Runs one write: an SQLite transaction begun `IMMEDIATE` (so that it holds the write lock from its start and
    /// concurrent writers, in this process or another, run one after the other), in which `body` reads and
    /// mutates the store through its ``StoreTransaction``.
    ///
    /// - When `expectedRevision` is given and the store is at another revision, throws
    ///   ``StoreError/revisionMismatch(expected:current:)`` before `body` runs: nothing changes.
    /// - When the body changed anything, the revision goes up by exactly one, whatever the number of changes, and
    ///   every change record of the write carries that new revision (numbered by `sequence`). When it changed
    ///   nothing, the revision stays and no record is written.
    /// - When `body` throws, everything it did is rolled back and its error propagates unchanged. When SQLite fails
    ///   (the disk is full, the commit's fsync fails), everything is rolled back too and the error is
    ///   ``StoreError/unavailable(path:reason:)``.
    /// - With `dryRun`, the body runs and the answer says what it would have changed, then everything is rolled
    ///   back (`apply --dry-run`).
    ///
    /// - Parameter actor: who makes the change, for the audit log.
    /// - Returns: the new revision and the change records.
    /// - Throws: ``StoreError``, or what `body` threw.
    @discardableResult
    public func write(
        expectedRevision: Int64? = nil,
        actor: String,
        dryRun: Bool = false,
        _ body: (inout StoreTransaction) throws -> Void
    ) throws -> StoreCommit {
        let path = self.path
        do {
            return try queue.writeWithoutTransaction { db in
                var commit: StoreCommit?
                try db.inTransaction(.immediate) {
                    // Taken once the write lock is held, so that times follow revisions.
                    let time = StoreReader.date(milliseconds: StoreReader.milliseconds(Date()))
                    let current = try StoreReader.revision(db)
                    if let expectedRevision, expectedRevision != current {
                        throw StoreError.revisionMismatch(expected: expectedRevision, current: current)
                    }
                    var transaction = StoreTransaction(
                        database: db,
                        path: path,
                        previousRevision: current,
                        actor: actor,
                        time: time
                    )
                    try body(&transaction)
                    if let failure = transaction.failure { throw failure }
                    let changes = transaction.changes
                    let revision = changes.isEmpty ? current : transaction.revision
                    if !changes.isEmpty {
                        try db.cachedStatement(sql: "UPDATE revision SET value = ? WHERE id = 1").execute(
                            arguments: [revision])
                    }
                    commit = StoreCommit(
                        revision: revision,
                        previousRevision: current,
                        changes: changes,
                        isDryRun: dryRun
                    )
                    return dryRun ? .rollback : .commit
                }
                guard let commit else {
                    // inTransaction returns only after running its block to the end, which sets `commit`.
                    throw StoreError.unavailable(path: path, reason: "the transaction ended without an outcome")
                }
                return commit
            }
        } catch let error as DatabaseError {
            throw StoreError.from(error, path: path)
        } catch let error as RowDecodingError {
            throw StoreError.wrapping(error, path: path)
        }
    }

    private func perform<T>(_ work: () throws -> T) throws(StoreError) -> T {
        do {
            return try work()
        } catch {
            throw StoreError.wrapping(error, path: path)
        }
    }

    // MARK: Opening

    /// Creates the missing directories (0700) and the file (0600) before SQLite opens it, since SQLite would
    /// create it 0644, and turns what the file system says into reasons an operator can act on.
    private static func prepareFile(at path: String) throws(StoreError) {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try makeDirectories(directory, for: path)

        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode_t(0o600))
        guard descriptor >= 0 else {
            let code = errno
            let reason: String
            switch code {
            case EISDIR:
                reason = "it is a directory; point `state` at a file"
            case EACCES, EPERM:
                reason =
                    "permission denied (\(errorName(code))); make the file and its directory writable by this user"
            case EROFS:
                reason = "the file system is read-only (\(errorName(code))); put the file on a writable one"
            case ENOSPC:
                reason = "the disk is full (\(errorName(code))); free space on its volume"
            default:
                reason = "it cannot be opened (\(errorName(code)))"
            }
            throw .unavailable(path: path, reason: reason)
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw .unavailable(path: path, reason: "it cannot be examined (\(errorName(errno)))")
        }
        guard status.st_mode & mode_t(S_IFMT) == mode_t(S_IFREG) else {
            throw .unavailable(path: path, reason: "it is not a regular file; point `state` at a file")
        }
        if status.st_mode & 0o077 != 0 {
            guard fchmod(descriptor, 0o600) == 0 else {
                throw .unavailable(
                    path: path,
                    reason: "it is readable by others and cannot be made 0600 (\(errorName(errno)))"
                )
            }
        }
        // Leftover -wal and -shm files of a file that was readable by others: SQLite reuses them as they are.
        for suffix in ["-wal", "-shm"] {
            var sidecar = stat()
            if stat(path + suffix, &sidecar) == 0, sidecar.st_mode & 0o077 != 0 {
                _ = chmod(path + suffix, 0o600)
            }
        }
    }

    private static func makeDirectories(_ directory: String, for path: String) throws(StoreError) {
        var status = stat()
        if stat(directory, &status) == 0 {
            guard status.st_mode & mode_t(S_IFMT) == mode_t(S_IFDIR) else {
                throw .unavailable(path: path, reason: "\(directory) is not a directory")
            }
            return
        }
        let code = errno
        // ENOTDIR: a component above is a file, which the parent's own check names.
        guard code == ENOENT || code == ENOTDIR else {
            throw .unavailable(path: path, reason: "its directory \(directory) cannot be used (\(errorName(code)))")
        }
        let parent = URL(fileURLWithPath: directory).deletingLastPathComponent().path
        if parent != directory {
            try makeDirectories(parent, for: path)
        }
        if mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw .unavailable(path: path, reason: "its directory \(directory) cannot be created (\(errorName(errno)))")
        }
    }

    /// Refuses a file that a newer Switchyard migrated, or that is some other program's database, sets WAL and
    /// `synchronous = FULL`, then applies the migrations this version knows and the file lacks. A damaged file is
    /// found here too (`quick_check`), not at the first write.
    private static func migrate(_ queue: DatabaseQueue, path: String) throws(StoreError) {
        let migrator = StoreSchema.migrator
        do {
            try queue.writeWithoutTransaction { db in
                let check = try String.fetchAll(db, sql: "PRAGMA quick_check")
                guard check == ["ok"] else {
                    throw StoreError.unavailable(
                        path: path,
                        reason:
                            "the file is damaged (quick_check: \(check.prefix(3).joined(separator: "; "))); restore "
                            + "it from a backup, or move it away to start with an empty store"
                    )
                }
                let userVersion = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
                if userVersion > StoreSchema.version {
                    throw StoreError.newerSchema(
                        path: path,
                        detail: "schema version \(userVersion); this version knows up to \(StoreSchema.version)"
                    )
                }
                if try db.tableExists("grdb_migrations") {
                    let unknown = try migrator.appliedIdentifiers(db).subtracting(migrator.migrations).sorted()
                    if !unknown.isEmpty {
                        throw StoreError.newerSchema(
                            path: path,
                            detail: "migrations \(unknown.joined(separator: ", ")) unknown to this version"
                        )
                    }
                } else {
                    let tables = try String.fetchAll(
                        db,
                        sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                    )
                    if !tables.isEmpty {
                        throw StoreError.unavailable(
                            path: path,
                            reason:
                                "it is an SQLite database but not a Switchyard state store (its tables: "
                                + "\(tables.prefix(5).joined(separator: ", "))); point `state` at another file"
                        )
                    }
                }
                // One connection for the store's life (a DatabaseQueue), so these per-connection settings hold for
                // every later access.
                let mode = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
                guard mode == "wal" else {
                    throw StoreError.unavailable(
                        path: path,
                        reason:
                            "SQLite cannot use a write-ahead log there (journal mode \(mode ?? "unknown")); put the "
                            + "file on a local file system"
                    )
                }
                try db.execute(sql: "PRAGMA synchronous = FULL")
            }
            try migrator.migrate(queue)
        } catch {
            throw StoreError.wrapping(error, path: path)
        }
    }

    private static func errorName(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}

extension StoreError {
    /// Any error met while using the store, as a ``StoreError``: store errors as they are, SQLite's mapped by
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

/// The queries shared by snapshots and transactions.
enum StoreReader {
    static func revision(_ db: Database) throws -> Int64 {
        guard let value = try Int64.fetchOne(db, sql: "SELECT value FROM revision WHERE id = 1") else {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "the revision row is missing")
        }
        return value
    }

    static func tenants(_ db: Database) throws -> [String: String] {
        var tenants: [String: String] = [:]
        let rows = try Row.fetchCursor(db, sql: "SELECT name, document FROM tenant")
        while let row = try rows.next() {
            tenants[try row.decode(String.self, atIndex: 0)] = try row.decode(String.self, atIndex: 1)
        }
        return tenants
    }

    static func drains(_ db: Database) throws -> Set<StoredDrain> {
        var drains: Set<StoredDrain> = []
        let rows = try Row.fetchCursor(db, sql: "SELECT tenant, backend FROM drain")
        while let row = try rows.next() {
            drains.insert(
                StoredDrain(tenant: try row.decode(String.self, atIndex: 0), backend: try row.decode(atIndex: 1))
            )
        }
        return drains
    }

    private static let certificateColumns = "tenant, chain_pem, key_pem, fingerprint, names, not_after"

    static func certificates(_ db: Database) throws -> [String: StoredCertificate] {
        var certificates: [String: StoredCertificate] = [:]
        let rows = try Row.fetchCursor(db, sql: "SELECT \(certificateColumns) FROM certificate")
        while let row = try rows.next() {
            let certificate = try decodeCertificate(row)
            certificates[certificate.tenant] = certificate
        }
        return certificates
    }

    static func certificate(_ db: Database, tenant: String) throws -> StoredCertificate? {
        try Row.fetchOne(
            db.cachedStatement(sql: "SELECT \(certificateColumns) FROM certificate WHERE tenant = ?"),
            arguments: [tenant]
        )
        .map { try decodeCertificate($0) }
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

    static func changes(_ db: Database, since revision: Int64, limit: Int?) throws -> [ChangeRecord] {
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
                    time: date(milliseconds: try row.decode(Int64.self, atIndex: 2)),
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

    /// Milliseconds since 1970, the `time_ms` column.
    static func milliseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
    }

    static func date(milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
    }
}
