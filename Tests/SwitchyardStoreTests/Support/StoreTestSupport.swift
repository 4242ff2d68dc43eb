import Foundation
import GRDB
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
