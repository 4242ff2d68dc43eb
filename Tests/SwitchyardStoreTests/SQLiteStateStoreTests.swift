import Foundation
import GRDB
import Testing

@testable import SwitchyardStore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The state store on real SQLite files, each test in a directory of its own.
@Suite("SQLiteStateStore")
struct SQLiteStateStoreTests {
    @Test("a new store is at revision 0 and empty, mode 0600 in a 0700 directory, WAL with synchronous = FULL")
    func newStore() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/run/nested/state.sqlite"
            let store = try SQLiteStateStore(path: path)
            #expect(try store.revision() == 0)
            #expect(try store.snapshot() == StoreSnapshot())
            #expect(try store.changes(since: 0).isEmpty)

            #expect(permissions(of: path) == 0o600)
            #expect(permissions(of: path + "-wal") == 0o600)
            #expect(permissions(of: directory + "/run/nested") == 0o700)
            #expect(try store.pragma("journal_mode") == "wal")
            #expect(try store.pragma("synchronous") == "2")  // FULL
            #expect(try store.pragma("foreign_keys") == "1")
            #expect(try store.pragma("user_version") == "1")
        }
    }

    @Test("an existing file readable by others is narrowed to 0600")
    func narrowsMode() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/state.sqlite"
            #expect(FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o644]))
            _ = try SQLiteStateStore(path: path)
            #expect(permissions(of: path) == 0o600)
        }
    }

    @Test("a directory in place of the file, or a file in place of its directory: unavailable, naming the path")
    func unusablePaths() throws {
        try withTemporaryDirectory { directory in
            let asDirectory = directory + "/state.sqlite"
            try FileManager.default.createDirectory(atPath: asDirectory, withIntermediateDirectories: false)
            let error = #expect(throws: StoreError.self) { try SQLiteStateStore(path: asDirectory) }
            #expect(error?.isUnavailable == true)
            #expect(error?.description.contains("the state store at \(asDirectory) cannot be used") == true)
            #expect(error?.description.contains("directory") == true)

            let file = directory + "/plain"
            #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
            let underFile = file + "/run/state.sqlite"
            let nested = #expect(throws: StoreError.self) { try SQLiteStateStore(path: underFile) }
            #expect(nested?.description.contains(underFile) == true)
            #expect(nested?.description.contains("\(file) is not a directory") == true)

            #expect(throws: StoreError.self) { try SQLiteStateStore(path: "") }
        }
    }

    @Test("a read-only directory: unavailable, permission denied", .enabled(if: getuid() != 0, "root writes anywhere"))
    func readOnlyDirectory() throws {
        try withTemporaryDirectory { directory in
            let locked = directory + "/locked"
            try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: false)
            #expect(chmod(locked, 0o500) == 0)
            let error = #expect(throws: StoreError.self) { try SQLiteStateStore(path: locked + "/state.sqlite") }
            #expect(error?.description.contains(locked + "/state.sqlite") == true)
            #expect(error?.description.contains("permission denied") == true)
        }
    }

    @Test("random bytes, a damaged database, another program's database: unavailable, each saying which")
    func notAStore() throws {
        try withTemporaryDirectory { directory in
            let random = directory + "/random.sqlite"
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<8192).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(FileManager.default.createFile(atPath: random, contents: Data(bytes)))
            let garbage = #expect(throws: StoreError.self) { try SQLiteStateStore(path: random) }
            #expect(garbage?.isUnavailable == true)
            #expect(garbage?.description.contains(random) == true)
            #expect(garbage?.description.contains("not a database") == true)

            // A real store whose pages after the header are overwritten.
            let damaged = directory + "/damaged.sqlite"
            try {
                let store = try SQLiteStateStore(path: damaged)
                try store.write(actor: "a") { transaction in
                    for index in 0..<200 {
                        try transaction.putTenant("t\(index)", document: document("t\(index)"))
                    }
                }
            }()
            // Without its -wal file (checkpointed when the store closed), so that only the damaged file is read.
            try? FileManager.default.removeItem(atPath: damaged + "-wal")
            try? FileManager.default.removeItem(atPath: damaged + "-shm")
            let handle = try #require(FileHandle(forUpdatingAtPath: damaged))
            let size = try handle.seekToEnd()
            #expect(size > 8192)
            try handle.seek(toOffset: 100)
            try handle.write(contentsOf: Data(repeating: 0xA5, count: Int(size) - 100))
            try handle.close()
            let broken = #expect(throws: StoreError.self) {
                let store = try SQLiteStateStore(path: damaged)
                _ = try store.snapshot()
            }
            #expect(broken?.isUnavailable == true)
            #expect(broken?.description.contains(damaged) == true)

            let foreign = directory + "/foreign.sqlite"
            try {
                let queue = try DatabaseQueue(path: foreign)
                try queue.write { try $0.execute(sql: "CREATE TABLE users (id INTEGER PRIMARY KEY)") }
            }()
            let other = #expect(throws: StoreError.self) { try SQLiteStateStore(path: foreign) }
            #expect(other?.description.contains("not a Switchyard state store (its tables: users)") == true)
        }
    }

    @Test("a row the code cannot read (edited by hand) fails the read clearly instead of crashing")
    func unreadableRows() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/state.sqlite"
            let store = try SQLiteStateStore(path: path)
            try store.write(actor: "a") { try $0.putTenant("shop", document: document("shop")) }
            try store.queue.write { db in
                try db.execute(sql: "UPDATE change SET action = 'tenant.explode'")
            }
            let error = #expect(throws: StoreError.self) { try store.changes(since: 0) }
            #expect(error?.description.contains("unknown action 'tenant.explode'") == true)

            try store.queue.write { db in try db.execute(sql: "DELETE FROM revision") }
            let missing = #expect(throws: StoreError.self) { try store.snapshot() }
            #expect(missing?.description.contains("the revision row is missing") == true)
            let write = #expect(throws: StoreError.self) {
                try store.write(actor: "a") { try $0.removeTenant("shop") }
            }
            #expect(write?.isUnavailable == true)
        }
    }

    @Test("a full disk fails the write whole, even when the body catches the error; the store works again after")
    func diskFull() throws {
        try withTemporaryDirectory { directory in
            let store = try SQLiteStateStore(path: directory + "/state.sqlite")
            try store.write(actor: "a") { try $0.putTenant("shop", document: document("shop")) }
            let before = try store.snapshot()
            // SQLite answers SQLITE_FULL once the file would grow past max_page_count, as on a full disk.
            try store.queue.writeWithoutTransaction { db in
                let pages = try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0
                try db.execute(sql: "PRAGMA max_page_count = \(pages)")
            }
            let large = #"{"padding":""# + String(repeating: "x", count: 1 << 20) + #""}"#

            let full = #expect(throws: StoreError.self) {
                try store.write(actor: "a") { transaction in
                    try transaction.addDrain(tenant: "shop", backend: "10.0.0.1:8080")
                    try transaction.putTenant("big", document: large)
                }
            }
            #expect(full?.description.contains("the disk is full") == true)

            let swallowed = #expect(throws: StoreError.self) {
                try store.write(actor: "a") { transaction in
                    try transaction.addDrain(tenant: "shop", backend: "10.0.0.1:8080")
                    _ = try? transaction.putTenant("big", document: large)
                    // The transaction is spoiled: later mutations are refused too.
                    do {
                        try transaction.removeTenant("shop")
                        Issue.record("a spoiled transaction took another mutation")
                    } catch let error as StoreError {
                        #expect(error.isUnavailable)
                    }
                }
            }
            #expect(swallowed?.isUnavailable == true)
            #expect(try store.snapshot() == before)
            #expect(try store.changes(since: 1).isEmpty)

            try store.queue.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA max_page_count = 1073741823") }
            let commit = try store.write(actor: "a") { try $0.putTenant("big", document: large) }
            #expect(commit.revision == 2)
        }
    }

    @Test("a file migrated by a newer Switchyard is refused, by its migrations or by its user_version")
    func newerSchema() throws {
        try withTemporaryDirectory { directory in
            let migrated = directory + "/migrated.sqlite"
            _ = try SQLiteStateStore(path: migrated)
            try {
                let queue = try DatabaseQueue(path: migrated)
                try queue.write { try $0.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v2')") }
            }()
            let error = #expect(throws: StoreError.self) { try SQLiteStateStore(path: migrated) }
            #expect(error == .newerSchema(path: migrated, detail: "migrations v2 unknown to this version"))
            #expect(error?.description.contains("newer Switchyard") == true)

            let versioned = directory + "/versioned.sqlite"
            _ = try SQLiteStateStore(path: versioned)
            try {
                let queue = try DatabaseQueue(path: versioned)
                try queue.writeWithoutTransaction { try $0.execute(sql: "PRAGMA user_version = 7") }
            }()
            let newer = #expect(throws: StoreError.self) { try SQLiteStateStore(path: versioned) }
            #expect(newer == .newerSchema(path: versioned, detail: "schema version 7; this version knows up to 1"))
        }
    }
}

/// Errors collected from several threads.
///
/// `@unchecked Sendable`: its one mutable property is read and written only while `lock` is held. (Not
/// `Synchronization.Mutex`, which needs macOS 15 and the package supports macOS 14.)
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [String] = []

    func add(_ error: String) {
        lock.withLock { errors.append(error) }
    }

    var all: [String] { lock.withLock { errors } }
}
