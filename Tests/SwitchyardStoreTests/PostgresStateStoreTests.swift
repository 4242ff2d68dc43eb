import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardStore

/// What only the PostgreSQL store does: reach a server, log in, share a schema with other nodes, and live through
/// the server going away.
@Suite("PostgresStateStore")
struct PostgresStateStoreTests {
    @Test("a new database gets schema switchyard at revision 0; a second node opening it migrates nothing")
    func newDatabase() throws {
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        let first = try PostgresStateStore(settings: cluster.settings(database: database))
        let second = try PostgresStateStore(settings: cluster.settings(database: database))
        #expect(try first.revision() == 0 && second.snapshot() == StoreSnapshot())
        #expect(first.location == "postgres://switchyard@127.0.0.1:\(cluster.port)/\(database)")
        let tables = try cluster.sql(
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables "
                + "WHERE table_schema = 'switchyard'",
            database: database
        )
        #expect(
            tables.trimmingCharacters(in: .whitespacesAndNewlines)
                == "certificate,change,drain,migration,node,revision,tenant"
        )
        #expect(
            try cluster.sql("SELECT identifier FROM switchyard.migration ORDER BY identifier", database: database)
                == "v1\nv2\n"
        )
    }

    @Test("a database migrated by a newer Switchyard is refused, naming the migration")
    func newerSchema() throws {
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        _ = try PostgresStateStore(settings: cluster.settings(database: database))
        try cluster.sql("INSERT INTO switchyard.migration VALUES ('v99')", database: database)
        let error = #expect(throws: StoreError.self) {
            try PostgresStateStore(settings: cluster.settings(database: database))
        }
        #expect(error.map { if case .newerSchema = $0 { true } else { false } } == true)
        #expect(error?.description.contains("v99") == true)
    }

    @Test("nothing listening, a wrong password, a missing database: unavailable, each saying what to check")
    func unreachable() throws {
        let cluster = try TemporaryPostgres.shared
        var closed = cluster.settings(database: "postgres")
        closed.port = try TemporaryPostgres.freePort()
        closed.timeout = .seconds(3)
        let started = ContinuousClock.now
        let refused = #expect(throws: StoreError.self) { try PostgresStateStore(settings: closed) }
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(refused?.isUnavailable == true)
        #expect(refused?.description.contains("postgres://switchyard@127.0.0.1:\(closed.port)/postgres") == true)
        #expect(
            refused?.description.contains("check that PostgreSQL is running") == true,
            "\(String(describing: refused))"
        )

        let wrong = #expect(throws: StoreError.self) {
            try PostgresStateStore(settings: cluster.settings(database: "postgres", password: "not-the-password"))
        }
        #expect(wrong?.description.contains("password authentication failed") == true, "\(String(describing: wrong))")
        #expect(wrong?.description.contains("PGPASSWORD") == true)
        #expect(wrong?.description.contains("not-the-password") == false)

        let missing = #expect(throws: StoreError.self) {
            try PostgresStateStore(settings: cluster.settings(database: "no_such_database"))
        }
        #expect(missing?.description.contains("create the database") == true, "\(String(describing: missing))")
    }

    @Test("its connection killed by the server, the store connects again and goes on; nothing is lost")
    func reconnects() throws {
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        let store = try PostgresStateStore(settings: cluster.settings(database: database))
        try store.write(actor: "a") { try $0.putTenant("shop", document: document("shop")) }
        try cluster.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(database)' AND pid <> pg_backend_pid()"
        )
        // The next operation may meet the dead connection (it fails, unavailable) or find it closed already; the
        // one after it runs on a new connection.
        var outcomes: [Bool] = []
        for attempt in 0..<2 {
            do {
                try store.write(actor: "b") { try $0.putTenant("blog-\(attempt)", document: document("blog")) }
                outcomes.append(true)
                break
            } catch let error as StoreError {
                #expect(error.isUnavailable, "\(error)")
                outcomes.append(false)
            }
        }
        #expect(outcomes.last == true, "\(outcomes)")
        let snapshot = try store.snapshot()
        #expect(snapshot.tenants.keys.contains("shop"))
        #expect(snapshot.revision == Int64(1 + outcomes.filter { $0 }.count))
    }

    @Test("the server stopped: every operation fails within its timeout, unavailable; started again, all goes on")
    func serverDown() throws {
        // A cluster of its own: the shared one serves the other tests meanwhile.
        let cluster = try TemporaryPostgres()
        defer {
            try? cluster.stop()
            try? FileManager.default.removeItem(atPath: cluster.directory)
        }
        let database = try cluster.makeDatabase()
        var settings = cluster.settings(database: database)
        settings.timeout = .seconds(2)
        let store = try PostgresStateStore(settings: settings)
        try store.write(actor: "a") { try $0.putTenant("shop", document: document("shop")) }

        try cluster.stop()
        for _ in 0..<3 {
            let started = ContinuousClock.now
            let error = #expect(throws: StoreError.self) {
                try store.write(actor: "b") { try $0.putTenant("blog", document: document("blog")) }
            }
            #expect(error?.isUnavailable == true)
            #expect(ContinuousClock.now - started < .seconds(4))
        }
        #expect(throws: StoreError.self) { try store.snapshot() }

        try cluster.start()
        try store.write(actor: "b") { try $0.putTenant("blog", document: document("blog")) }
        let snapshot = try store.snapshot()
        #expect(snapshot.revision == 2 && Set(snapshot.tenants.keys) == ["shop", "blog"])
    }

    @Test(
        "TLS to the database: require and verify-full connect over TLS (the server refuses plain TCP); a certificate not trusted is refused, saying what to check"
    )
    func tls() throws {
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        try cluster.requireTLS(database: database)
        var settings = cluster.settings(database: database)
        settings.timeout = .seconds(5)

        let plain = #expect(throws: StoreError.self) { try PostgresStateStore(settings: settings) }
        #expect(plain?.description.contains("no encryption") == true, "\(String(describing: plain))")

        let authority = TemporaryPostgres.certificates + "/dev-ca.pem"
        for (mode, host, roots) in [
            (PostgresStateStore.Settings.TLSMode.prefer, "127.0.0.1", nil),
            (.require, "127.0.0.1", nil),
            (.verifyFull, "127.0.0.1", authority),
            (.verifyFull, "localhost", authority),
        ] as [(PostgresStateStore.Settings.TLSMode, String, String?)] {
            var encrypted = settings
            encrypted.tls = mode
            encrypted.host = host
            encrypted.rootCertificates = roots
            let store = try PostgresStateStore(settings: encrypted)
            let revision = try store.revision()
            #expect(
                try store.write(actor: mode.rawValue) { try $0.putTenant(mode.rawValue + host, document: "{}") }
                    .revision == revision + 1
            )
            // The store's connection stays open: the server says it is encrypted.
            let encryptedConnections = try cluster.sql(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE datname = '\(database)' AND ssl"
            )
            #expect(
                Int(encryptedConnections.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 >= 1,
                "\(mode) \(host)"
            )
        }

        // verify-full against the system's roots: the development CA is not among them.
        var untrusted = settings
        untrusted.tls = .verifyFull
        let refused = #expect(throws: StoreError.self) { try PostgresStateStore(settings: untrusted) }
        #expect(refused?.isUnavailable == true)
        #expect(refused?.description.contains("could not be verified") == true, "\(String(describing: refused))")
        #expect(refused?.description.contains("sslrootcert") == true)
    }
}
