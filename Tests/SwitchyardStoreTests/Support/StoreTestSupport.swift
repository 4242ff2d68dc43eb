import Foundation
import GRDB
import SwitchyardTestSupport
import Testing

@testable import SwitchyardStore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body` with a new empty directory of its own, removed afterwards whatever happens.
func withTemporaryDirectory<T>(_ body: (String) throws -> T) throws -> T {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("switchyard-store-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer {
        _ = chmod(path, 0o700)
        try? FileManager.default.removeItem(atPath: path)
    }
    return try body(path)
}

/// The two stores, for tests that every store must pass.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

/// Runs `body` with a new empty store location of `kind` (a file in a directory of its own, or a database of its own
/// in the tests' PostgreSQL cluster), removed afterwards; `open` opens a store there, again and again if the test
/// wants several instances on it.
func withStore<T>(_ kind: StoreKind, _ body: (_ open: () throws -> any StateStore) throws -> T) throws -> T {
    switch kind {
    case .sqlite:
        return try withTemporaryDirectory { directory in
            try body { try SQLiteStateStore(path: directory + "/state.sqlite") }
        }
    case .postgres:
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        return try body { try PostgresStateStore(settings: cluster.settings(database: database)) }
    }
}

extension TemporaryPostgres {
    /// How the store reaches `database` on this cluster.
    func settings(database: String, password: String? = nil) -> PostgresStateStore.Settings {
        PostgresStateStore.Settings(
            host: "127.0.0.1",
            port: port,
            user: user,
            password: password ?? self.password,
            database: database,
            tls: .disable,
            timeout: .seconds(10)
        )
    }
}

/// The permission bits of the file at `path`, or `nil` when there is none.
func permissions(of path: String) -> mode_t? {
    var status = stat()
    guard stat(path, &status) == 0 else { return nil }
    return status.st_mode & 0o777
}

/// Runs `body(0)` … `body(count - 1)` on `count` threads of their own at once and waits for all of them.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            body(index)
            group.leave()
        }
        thread.start()
    }
    group.wait()
}

/// A tenant document, as the control plane would store it.
func document(_ name: String, backends: [String] = ["10.0.0.1:8080"]) -> String {
    let list = backends.map { "\"\($0)\"" }.joined(separator: ",")
    return #"{"backends":[\#(list)],"domains":["\#(name).test"],"name":"\#(name)"}"#
}

/// A certificate with recognisable PEM text.
func certificate(
    for tenant: String,
    fingerprint: String = "AA:BB",
    notAfter: Date = Date(timeIntervalSince1970: 1_900_000_000)
) -> StoredCertificate {
    StoredCertificate(
        tenant: tenant,
        chainPEM: "-----BEGIN CERTIFICATE-----\nchain of \(tenant)\n-----END CERTIFICATE-----\n",
        keyPEM: "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-OF-\(tenant)\n-----END PRIVATE KEY-----\n",
        fingerprint: fingerprint,
        names: ["\(tenant).test", "*.\(tenant).test"],
        notAfter: notAfter
    )
}

/// An error of the test's own, for bodies that refuse.
struct Refusal: Error, Equatable {
    var reason: String
}

extension SQLiteStateStore {
    /// The result of a pragma on the store's own connection, as text.
    func pragma(_ name: String) throws -> String? {
        try queue.writeWithoutTransaction { db in
            switch try DatabaseValue.fetchOne(db, sql: "PRAGMA \(name)")?.storage {
            case .int64(let value): "\(value)"
            case .string(let value): value
            default: nil
            }
        }
    }
}

/// `#expect(actual == expected)` for values computed outside the macro: a call on a `StoreTransaction`, which is
/// not copyable and is mutated, cannot be captured by the macro's expansion.
func expectEqual<T: Equatable>(
    _ actual: T,
    _ expected: T,
    sourceLocation: Testing.SourceLocation = #_sourceLocation
) {
    #expect(actual == expected, sourceLocation: sourceLocation)
}
