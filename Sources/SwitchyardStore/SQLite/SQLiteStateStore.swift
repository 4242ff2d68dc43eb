import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The state store on one SQLite file, for a balancer that is the only node (see ``StateStore``).
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
public final class SQLiteStateStore: StateStore {
    /// The file, as given.
    public let path: String

    public var location: String { path }

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

    public func snapshot() throws(StoreError) -> StoreSnapshot {
        try perform { try queue.read { db in try SQLiteRows(db, path: path).snapshot() } }
    }

    public func revision() throws(StoreError) -> Int64 {
        try perform { try queue.read { db in try SQLiteRows(db, path: path).revision() } }
    }

    public func changes(since revision: Int64, limit: Int?) throws(StoreError) -> [ChangeRecord] {
        try perform {
            try queue.read { db in try SQLiteRows(db, path: path).changes(since: revision, limit: limit) }
        }
    }

    public func read<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        let path = self.path
        do {
            return try queue.read { db in
                let rows = SQLiteRows(db, path: path)
                let transaction = StoreTransaction(
                    rows: rows,
                    previousRevision: try rows.revision(),
                    actor: "",
                    time: StoreTime.now()
                )
                return try body(transaction)
            }
        } catch let error as DatabaseError {
            throw StoreError.from(error, path: path)
        }
    }

    /// Nothing: a file belongs to one balancer, which is the whole fleet.
    public func recordHeartbeat(_ node: FleetNode) throws(StoreError) {}

    public func fleet() throws(StoreError) -> [FleetNode] { [] }

    /// `nil`: a file belongs to one balancer, whose own writes need no bell.
    public func watch(_ ring: @escaping @Sendable () -> Void) -> (any StoreWatch)? {
        nil
    }

    public func pruneChanges(_ retention: ChangeLogRetention, now: Date) throws(StoreError) -> ChangeLogPruning {
        try perform {
            try queue.writeWithoutTransaction { db in
                var pruning = ChangeLogPruning(deleted: 0, throughRevision: nil)
                try db.inTransaction(.immediate) {
                    let rows = SQLiteRows(db, path: path)
                    pruning = try rows.pruneChanges(retention, now: now, current: try rows.revision())
                    return .commit
                }
                return pruning
            }
        }
    }

    /// The transaction is begun `IMMEDIATE`, so that it holds SQLite's write lock from its start: concurrent
    /// writers, in this process or another on the same file, run one after the other.
    public func write(
        expectedRevision: Int64?,
        actor: String,
        dryRun: Bool,
        _ body: (inout StoreTransaction) throws -> Void
    ) throws -> StoreCommit {
        let path = self.path
        do {
            return try queue.writeWithoutTransaction { db in
                var commit: StoreCommit?
                try db.inTransaction(.immediate) {
                    let rows = SQLiteRows(db, path: path)
                    // Taken once the write lock is held, so that times follow revisions.
                    let time = StoreTime.now()
                    let current = try rows.revision()
                    if let expectedRevision, expectedRevision != current {
                        throw StoreError.revisionMismatch(expected: expectedRevision, current: current)
                    }
                    var transaction = StoreTransaction(
                        rows: rows,
                        previousRevision: current,
                        actor: actor,
                        time: time
                    )
                    try body(&transaction)
                    if let failure = transaction.failure { throw failure }
                    let changes = transaction.changes
                    let revision = changes.isEmpty ? current : transaction.revision
                    if !changes.isEmpty {
                        try rows.setRevision(revision)
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
        let migrator = SQLiteSchema.migrator
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
                if userVersion > SQLiteSchema.version {
                    throw StoreError.newerSchema(
                        path: path,
                        detail: "schema version \(userVersion); this version knows up to \(SQLiteSchema.version)"
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
