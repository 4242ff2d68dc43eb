import Foundation
import Testing

@testable import SwitchyardStore

/// What every store must do, run against each: SQLite on a file of its own, PostgreSQL on a database of its own in
/// the tests' throw-away cluster.
@Suite("StateStore, on SQLite and on PostgreSQL")
struct StateStoreTests {
    @Test(
        "tenants: add, replace, put again unchanged, remove; one revision per write; the log says who and what",
        arguments: StoreKind.allCases
    )
    func tenants(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            let shop = document("shop")
            let shopScaled = document("shop", backends: ["10.0.0.1:8080", "10.0.0.2:8080"])

            let added = try store.write(actor: "uid 1000") { transaction in
                try expectEqual(transaction.putTenant("shop", document: shop), .tenantAdd)
                try expectEqual(transaction.putTenant("blog", document: document("blog")), .tenantAdd)
                try expectEqual(transaction.tenant(named: "shop"), shop)
            }
            #expect(added.revision == 1 && added.previousRevision == 0 && !added.isDryRun)
            #expect(added.changes.map(\.action) == [.tenantAdd, .tenantAdd])
            #expect(added.changes.map(\.sequence) == [0, 1])
            #expect(added.changes.allSatisfy { $0.revision == 1 && $0.actor == "uid 1000" })

            let replaced = try store.write(actor: "token ci") { transaction in
                try expectEqual(transaction.putTenant("shop", document: shopScaled), .tenantReplace)
            }
            #expect(replaced.revision == 2)

            let unchanged = try store.write(actor: "token ci") { transaction in
                try expectEqual(transaction.putTenant("shop", document: shopScaled), nil)
                try expectEqual(transaction.removeTenant("nobody"), nil)
            }
            #expect(unchanged.revision == 2 && unchanged.previousRevision == 2 && unchanged.changes.isEmpty)

            let removed = try store.write(actor: "uid 0") { transaction in
                try expectEqual(transaction.removeTenant("blog"), document("blog"))
            }
            #expect(removed.revision == 3)

            #expect(try store.snapshot() == StoreSnapshot(revision: 3, tenants: ["shop": shopScaled]))
            let log = try store.changes(since: 0)
            #expect(log == added.changes + replaced.changes + removed.changes)
            let summary = log.map { "\($0.revision) \($0.actor) \($0.action.rawValue) \($0.subject)" }
            #expect(
                summary == [
                    "1 uid 1000 tenant.add shop", "1 uid 1000 tenant.add blog", "2 token ci tenant.replace shop",
                    "3 uid 0 tenant.remove blog",
                ]
            )
            #expect(log[0].before == nil && log[0].after == shop)
            #expect(log[2].before == shop && log[2].after == shopScaled)
            #expect(log[3].before == document("blog") && log[3].after == nil)
            #expect(try store.changes(since: 1) == replaced.changes + removed.changes)
            #expect(try store.changes(since: 1, limit: 1) == replaced.changes)
            #expect(try store.changes(since: 3).isEmpty)
            // The time is the write's, to the millisecond, and recent.
            #expect(abs(log[3].time.timeIntervalSinceNow) < 60)
        }
    }

    @Test(
        "drains: add, add again, remove, remove every drain of a tenant; file tenants' drains need no tenant row",
        arguments: StoreKind.allCases
    )
    func drains(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            let first = try store.write(actor: "uid 1000") { transaction in
                try expectEqual(transaction.addDrain(tenant: "demo", backend: "127.0.0.1:9080"), true)
                try expectEqual(transaction.addDrain(tenant: "demo", backend: "[::1]:9080"), true)
                try expectEqual(transaction.addDrain(tenant: "shop", backend: "10.0.0.5:8080"), true)
                try expectEqual(transaction.addDrain(tenant: "shop", backend: "10.0.0.5:8080"), false)
                try expectEqual(transaction.isDrained(tenant: "shop", backend: "10.0.0.5:8080"), true)
            }
            #expect(first.revision == 1 && first.changes.count == 3)
            #expect(first.changes[2].subject == "shop 10.0.0.5:8080")
            #expect(first.changes[2].after == #"{"backend":"10.0.0.5:8080","tenant":"shop"}"#)
            #expect(
                try store.snapshot().drains == [
                    StoredDrain(tenant: "demo", backend: "127.0.0.1:9080"),
                    StoredDrain(tenant: "demo", backend: "[::1]:9080"),
                    StoredDrain(tenant: "shop", backend: "10.0.0.5:8080"),
                ]
            )

            let second = try store.write(actor: "uid 1000") { transaction in
                try expectEqual(transaction.removeDrain(tenant: "shop", backend: "10.0.0.5:8080"), true)
                try expectEqual(transaction.removeDrain(tenant: "shop", backend: "10.0.0.5:8080"), false)
                try expectEqual(
                    transaction.removeDrains(ofTenant: "demo"),
                    [
                        StoredDrain(tenant: "demo", backend: "127.0.0.1:9080"),
                        StoredDrain(tenant: "demo", backend: "[::1]:9080"),
                    ]
                )
            }
            #expect(second.revision == 2)
            #expect(second.changes.map(\.action) == [.drainRemove, .drainRemove, .drainRemove])
            #expect(second.changes[0].before == #"{"backend":"10.0.0.5:8080","tenant":"shop"}"#)
            #expect(try store.snapshot() == StoreSnapshot(revision: 2))
        }
    }

    @Test(
        "certificates: add, replace, remove; the snapshot has the key, no change record does",
        arguments: StoreKind.allCases
    )
    func certificates(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            let first = certificate(for: "shop", notAfter: Date(timeIntervalSince1970: 1_900_000_000.75))
            #expect(first.notAfter == Date(timeIntervalSince1970: 1_900_000_000))
            let renewed = certificate(for: "shop", fingerprint: "CC:DD", notAfter: Date(timeIntervalSince1970: 2e9))

            try store.write(actor: "uid 1000") { transaction in
                try expectEqual(transaction.putCertificate(first), .certificateAdd)
                try expectEqual(transaction.putCertificate(first), nil)
                try expectEqual(transaction.putCertificate(certificate(for: "blog")), .certificateAdd)
            }
            #expect(try store.snapshot().certificates == ["shop": first, "blog": certificate(for: "blog")])

            try store.write(actor: "uid 1000") { transaction in
                try expectEqual(transaction.putCertificate(renewed), .certificateReplace)
                try expectEqual(transaction.certificate(ofTenant: "shop"), renewed)
            }
            try store.write(actor: "uid 1000") { transaction in
                try expectEqual(transaction.removeCertificate(ofTenant: "blog"), certificate(for: "blog"))
                try expectEqual(transaction.removeCertificate(ofTenant: "blog"), nil)
            }
            let snapshot = try store.snapshot()
            #expect(snapshot.revision == 3)
            #expect(snapshot.certificates == ["shop": renewed])
            #expect(snapshot.certificates["shop"]?.keyPEM.contains("SECRET-KEY-OF-shop") == true)

            let log = try store.changes(since: 0)
            #expect(log.map(\.action) == [.certificateAdd, .certificateAdd, .certificateReplace, .certificateRemove])
            for record in log {
                for text in [record.before, record.after].compactMap({ $0 }) {
                    #expect(!text.contains("SECRET") && !text.contains("PRIVATE KEY") && !text.contains("BEGIN"))
                }
            }
            let firstSummary =
                #"{"fingerprint":"AA:BB","names":["shop.test","*.shop.test"],"not_after":"2030-03-17T17:46:40Z"}"#
            #expect(log[0].after == firstSummary)
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            let before = try decoder.decode(CertificateSummary.self, from: Data((log[2].before ?? "").utf8))
            let after = try decoder.decode(CertificateSummary.self, from: Data((log[2].after ?? "").utf8))
            #expect(before == first.summary && after == renewed.summary)
            #expect(!"\(renewed)".contains("SECRET") && !String(reflecting: renewed).contains("SECRET"))
        }
    }

    @Test(
        "apply replaces the whole set in one revision, answering added, replaced, removed; a dry run changes nothing",
        arguments: StoreKind.allCases
    )
    func apply(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            try store.write(actor: "platform") { transaction in
                try transaction.replaceTenants(with: ["a": document("a"), "b": document("b"), "c": document("c")])
            }
            let wanted = ["b": document("b", backends: ["10.0.0.9:80"]), "c": document("c"), "d": document("d")]
            let expected = TenantDifference(added: ["d"], replaced: ["b"], removed: ["a"])

            let before = try store.snapshot()
            let dryRun = try store.write(actor: "platform", dryRun: true) { transaction in
                try expectEqual(transaction.replaceTenants(with: wanted), expected)
            }
            #expect(dryRun.isDryRun && dryRun.previousRevision == 1 && dryRun.revision == 2)
            #expect(dryRun.tenantDifference == expected)
            #expect(try store.snapshot() == before)
            #expect(try store.changes(since: 1).isEmpty)

            let applied = try store.write(actor: "platform") { transaction in
                try expectEqual(transaction.replaceTenants(with: wanted), expected)
            }
            #expect(applied.revision == 2 && applied.tenantDifference == expected)
            #expect(applied.changes.map(\.action) == [.tenantRemove, .tenantReplace, .tenantAdd])
            #expect(applied.changes.map(\.subject) == ["a", "b", "d"])
            #expect(try store.snapshot() == StoreSnapshot(revision: 2, tenants: wanted))

            let again = try store.write(actor: "platform") { transaction in
                try expectEqual(transaction.replaceTenants(with: wanted).isEmpty, true)
            }
            #expect(again.revision == 2 && again.changes.isEmpty)
        }
    }

    @Test(
        "an apply of 10,000 tenants, 1,000 with a certificate, is one revision; applying it again changes nothing",
        arguments: StoreKind.allCases
    )
    func applyAtScale(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            var wanted: [String: String] = [:]
            for index in 0..<10_000 {
                let backends = ["10.1.0.\(index % 250):8080", "10.2.0.1:8080"]
                wanted["env\(index)"] = document("env\(index)", backends: backends)
            }
            let commit = try store.write(actor: "platform") { transaction in
                try transaction.replaceTenants(with: wanted)
                for index in 0..<1_000 {
                    try transaction.putCertificate(certificate(for: "env\(index)"))
                }
            }
            #expect(commit.revision == 1 && commit.changes.count == 11_000)
            #expect(commit.tenantDifference.added.count == 10_000)
            let snapshot = try store.snapshot()
            #expect(snapshot.tenants == wanted && snapshot.certificates.count == 1_000)

            wanted["env42"] = document("env42", backends: ["10.9.9.9:8080"])
            wanted["env43"] = nil
            let again = try store.write(actor: "platform") { try $0.replaceTenants(with: wanted) }
            #expect(again.revision == 2)
            #expect(again.tenantDifference == TenantDifference(added: [], replaced: ["env42"], removed: ["env43"]))
        }
    }

    @Test(
        "a stale expected revision is refused before the body runs, and nothing changes",
        arguments: StoreKind.allCases
    )
    func revisionMismatch(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            try store.write(actor: "a") { try $0.putTenant("shop", document: document("shop")) }
            try store.write(expectedRevision: 1, actor: "a") { transaction in
                try transaction.addDrain(tenant: "shop", backend: "10.0.0.1:8080")
            }
            let before = try store.snapshot()

            let error = #expect(throws: StoreError.self) {
                try store.write(expectedRevision: 1, actor: "b") { transaction in
                    Issue.record("the body of a refused write ran")
                    try transaction.removeTenant("shop")
                }
            }
            #expect(error == .revisionMismatch(expected: 1, current: 2))
            #expect(error?.description.contains("version 1") == true)
            #expect(try store.snapshot() == before)
            #expect(try store.changes(since: 2).isEmpty)
        }
    }

    @Test(
        "a body that throws rolls back everything it did, and its error comes out unchanged",
        arguments: StoreKind.allCases
    )
    func rollback(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            try store.write(actor: "a") { try $0.putTenant("shop", document: document("shop")) }
            let before = try store.snapshot()

            let error = #expect(throws: Refusal.self) {
                try store.write(actor: "a") { transaction in
                    try transaction.putTenant("blog", document: document("blog"))
                    try transaction.removeTenant("shop")
                    try transaction.addDrain(tenant: "shop", backend: "10.0.0.1:8080")
                    try transaction.putCertificate(certificate(for: "blog"))
                    throw Refusal(reason: "domain taken")
                }
            }
            #expect(error == Refusal(reason: "domain taken"))
            #expect(try store.snapshot() == before)
            #expect(try store.changes(since: 1).isEmpty)
            // The next write gets the next revision: none was used up.
            #expect(try store.write(actor: "a") { try $0.removeTenant("shop") }.revision == 2)
        }
    }

    @Test(
        "an invalid document is refused alone: the body may go on, and an apply with one is left out whole",
        arguments: StoreKind.allCases
    )
    func invalidDocument(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            let commit = try store.write(actor: "a") { transaction in
                try transaction.putTenant("shop", document: document("shop"))
                for bad in ["not json", "[1, 2]", "42", ""] {
                    do {
                        try transaction.putTenant("blog", document: bad)
                        Issue.record("the document \(bad) was taken")
                    } catch let error as StoreError {
                        #expect(error == .invalidDocument(tenant: "blog"))
                    }
                }
                do {
                    try transaction.replaceTenants(with: ["a": document("a"), "c": "{"])
                    Issue.record("an apply with an invalid document was taken")
                } catch let error as StoreError {
                    #expect(error == .invalidDocument(tenant: "c"))
                }
                try expectEqual(transaction.tenants(), ["shop": document("shop")])
            }
            #expect(commit.revision == 1 && commit.changes.map(\.subject) == ["shop"])
            #expect(try store.snapshot().tenants == ["shop": document("shop")])
            #expect(try store.changes(since: 0) == commit.changes)
        }
    }

    @Test("everything is still there when the store is opened again", arguments: StoreKind.allCases)
    func reopen(kind: StoreKind) throws {
        try withStore(kind) { open in
            let (snapshot, changes): (StoreSnapshot, [ChangeRecord]) = try {
                let store = try open()
                try store.write(actor: "a") { transaction in
                    try transaction.putTenant("shop", document: document("shop"))
                    try transaction.putCertificate(certificate(for: "shop"))
                }
                try store.write(actor: "b") { try $0.addDrain(tenant: "demo", backend: "127.0.0.1:9080") }
                return (try store.snapshot(), try store.changes(since: 0))
            }()
            #expect(snapshot.revision == 2 && snapshot.tenants.count == 1 && snapshot.drains.count == 1)

            let reopened = try open()
            #expect(try reopened.snapshot() == snapshot)
            #expect(try reopened.changes(since: 0) == changes)
            #expect(try reopened.write(actor: "c") { try $0.removeTenant("shop") }.revision == 3)
        }
    }

    @Test(
        "two threads writing at once (500 times each on SQLite, 200 on PostgreSQL): a revision and a record per write, none lost",
        arguments: StoreKind.allCases
    )
    func concurrentWriters(kind: StoreKind) throws {
        let perThread = kind == .sqlite ? 500 : 200
        let total = 2 * perThread
        try withStore(kind) { open in
            let store = try open()
            let failures = Failures()
            onThreads(2) { thread in
                for index in 0..<perThread {
                    do {
                        try store.write(actor: "thread \(thread)") { transaction in
                            try transaction.putTenant("t\(thread)-\(index)", document: document("t\(thread)-\(index)"))
                        }
                    } catch {
                        failures.add("\(error)")
                    }
                }
            }
            let failed = failures.all
            #expect(failed.count == 0, "first failure: \(failed.first ?? "none")")
            let snapshot = try store.snapshot()
            #expect(snapshot.revision == Int64(total))
            #expect(snapshot.tenants.count == total)
            let log = try store.changes(since: 0)
            #expect(log.count == total)
            #expect(log.map(\.revision) == Array(1...Int64(total)))
            #expect(Set(log.map(\.subject)).count == total)
            #expect(log.filter { $0.actor == "thread 0" }.count == perThread)
        }
    }

    @Test(
        "two instances on one store (as two processes, two nodes) serialise their writes: none lost",
        arguments: StoreKind.allCases
    )
    func concurrentInstances(kind: StoreKind) throws {
        let perInstance = kind == .sqlite ? 200 : 100
        try withStore(kind) { open in
            let stores = [try open(), try open()]
            let failures = Failures()
            onThreads(2) { thread in
                for index in 0..<perInstance {
                    do {
                        // Read-modify-write inside the transaction: a lost update would show as a wrong count.
                        try stores[thread].write(actor: "instance \(thread)") { transaction in
                            let count = try transaction.tenants().count
                            try transaction.putTenant("i\(thread)-\(index)", document: #"{"seen":\#(count)}"#)
                        }
                    } catch {
                        failures.add("\(error)")
                    }
                }
            }
            let failed = failures.all
            #expect(failed.count == 0, "first failure: \(failed.first ?? "none")")
            let snapshot = try stores[0].snapshot()
            #expect(snapshot.revision == Int64(2 * perInstance) && snapshot.tenants.count == 2 * perInstance)
            #expect(Set(snapshot.tenants.values).count == 2 * perInstance)  // each write saw every earlier one
        }
    }

    @Test(
        "the change log is pruned by count and by age, whole writes only, never the latest; the state stays whole",
        arguments: StoreKind.allCases
    )
    func pruning(kind: StoreKind) throws {
        try withStore(kind) { open in
            let store = try open()
            let first = try store.write(actor: "a") { transaction in
                for name in ["a", "b", "c"] { try transaction.putTenant(name, document: document(name)) }
            }
            let second = try store.write(actor: "a") { try $0.removeTenant("a") }
            let third = try store.write(actor: "a") { transaction in
                try transaction.putTenant("d", document: document("d"))
                try transaction.addDrain(tenant: "b", backend: "10.0.0.5:8080")
            }
            let fourth = try store.write(actor: "a") { try $0.putTenant("e", document: document("e")) }
            #expect(try store.changes(since: 0).count == 7)
            let now = Date()

            // Within both limits: nothing goes.
            let generous = ChangeLogRetention(maximumAge: .seconds(3600), maximumRecords: 7)
            #expect(try store.pruneChanges(generous, now: now) == ChangeLogPruning(deleted: 0, throughRevision: nil))

            // Two records kept: the last two are the third write's second and the fourth's, so the third write
            // stays whole (three records) and the first two go.
            let two = ChangeLogRetention(maximumRecords: 2)
            #expect(try store.pruneChanges(two, now: now) == ChangeLogPruning(deleted: 4, throughRevision: 2))
            #expect(try store.changes(since: 0) == third.changes + fourth.changes)
            #expect(try store.pruneChanges(two, now: now) == ChangeLogPruning(deleted: 0, throughRevision: nil))
            #expect(try store.changes(since: 1).first?.revision == 3)

            // By age, a month on: everything is old, yet the latest write stays.
            let month = ChangeLogRetention(maximumAge: .seconds(30 * 86_400))
            let later = now.addingTimeInterval(31 * 86_400)
            #expect(try store.pruneChanges(month, now: later) == ChangeLogPruning(deleted: 2, throughRevision: 3))
            #expect(try store.changes(since: 0) == fourth.changes)
            #expect(try store.pruneChanges(month, now: later).deleted == 0)

            // One record: the latest write's.
            let fifth = try store.write(actor: "a") { try $0.removeTenant("b") }
            #expect(
                try store.pruneChanges(ChangeLogRetention(maximumRecords: 1), now: now)
                    == ChangeLogPruning(deleted: 1, throughRevision: 4)
            )
            #expect(try store.changes(since: 0) == fifth.changes)

            // Pruning is not a change: the revision and the state are as the writes left them.
            let snapshot = try store.snapshot()
            #expect(snapshot.revision == 5)
            #expect(snapshot.tenants == ["c": document("c"), "d": document("d"), "e": document("e")])
            #expect(snapshot.drains.count == 1)
            #expect([first, second, third, fourth, fifth].map(\.revision) == [1, 2, 3, 4, 5])
            #expect(try store.write(actor: "a") { try $0.putTenant("f", document: document("f")) }.revision == 6)
        }
    }
}
