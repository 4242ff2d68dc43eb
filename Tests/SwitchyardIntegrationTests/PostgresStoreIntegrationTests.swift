import Foundation
import SwitchyardTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built `switchyard` binary with its state store in PostgreSQL (`state: postgres://…`, the password in
/// `state_password_file`), on a database of the tests' throw-away cluster.
@Suite("State store in PostgreSQL, through the binary", .serialized)
struct PostgresStoreIntegrationTests {
    @Test(
        "tenants added through the CLI are routed and stored in the database: there after a restart, and on a second node started on it"
    )
    func servesFromPostgres() async throws {
        let cluster = try TemporaryPostgres.shared
        let database = try cluster.makeDatabase()
        defer { try? cluster.dropDatabase(database) }
        let passwordFile = try Self.passwordFile(cluster.password)
        defer { try? FileManager.default.removeItem(atPath: passwordFile) }
        let backend = try await TestBackend.start(name: "shop-backend")
        let url = cluster.url(database: database)
        func configuration(_ port: Int) -> String {
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            workers: 1
            state_password_file: \(passwordFile)
            state_cache: \(NSTemporaryDirectory())switchyard-cache-\(database)-\(port).json
            """
        }

        let port = try ExternalProcess.freePort()
        let first = try ServedBalancer(configuration(port), port: port, statePath: url)
        let added = try first.admin([
            "tenants", "add", "shop", "--domain", "shop.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(added.status == 0, "\(added.stderr)")
        #expect(try ExternalProcess.curl(["-H", "Host: shop.test", first.url + "/"]).stdout == "shop-backend")
        #expect(try cluster.sql("SELECT name FROM switchyard.tenant", database: database) == "shop\n")
        #expect(try cluster.sql("SELECT value FROM switchyard.revision", database: database) == "1\n")
        let status = try first.admin(["status"])
        #expect(
            status.stdout.contains("postgres://switchyard@127.0.0.1:\(cluster.port)/\(database)"),
            "\(status.stdout)"
        )
        #expect(!first.process.log.contains(cluster.password))
        first.stop(keepingState: true)

        let restarted = try ServedBalancer(configuration(port), port: port, statePath: url)
        defer { restarted.stop() }
        #expect(try ExternalProcess.curl(["-H", "Host: shop.test", restarted.url + "/"]).stdout == "shop-backend")

        let otherPort = try ExternalProcess.freePort()
        let second = try ServedBalancer(configuration(otherPort), port: otherPort, statePath: url)
        defer { second.stop() }
        #expect(try ExternalProcess.curl(["-H", "Host: shop.test", second.url + "/"]).stdout == "shop-backend")
        let tenants = try second.admin(["tenants", "list"])
        #expect(tenants.stdout.contains("shop"), "\(tenants.stdout)")
        await backend.stop()
    }

    @Test("a database that does not answer: the file's tenants are served, changes are refused with 503 naming it")
    func databaseDown() async throws {
        let backend = try await TestBackend.start(name: "file-backend")
        let port = try ExternalProcess.freePort()
        let nowhere = try TemporaryPostgres.freePort()
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            workers: 1
            state_cache: \(NSTemporaryDirectory())switchyard-cache-nowhere-\(port).json
            tenants:
              - name: file
                domains: ["file.test"]
                backends: ["127.0.0.1:\(backend.port)"]
            """,
            port: port,
            statePath: "postgres://switchyard@127.0.0.1:\(nowhere)/fleet?sslmode=disable"
        )
        defer { balancer.stop() }
        #expect(try ExternalProcess.curl(["-H", "Host: file.test", balancer.url + "/"]).stdout == "file-backend")
        let refused = try balancer.admin([
            "tenants", "add", "shop", "--domain", "shop.test", "--backend", "127.0.0.1:\(backend.port)",
        ])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("postgres://switchyard@127.0.0.1:\(nowhere)/fleet"), "\(refused.stderr)")
        #expect(refused.stderr.contains("the state store cannot be"), "\(refused.stderr)")
        #expect(balancer.process.log.contains("check that PostgreSQL is running"), "\(balancer.process.log)")
        #expect(balancer.process.log.contains("no copy of it here"), "\(balancer.process.log)")
        await backend.stop()
    }

    /// A file holding `password`, mode 0600.
    static func passwordFile(_ password: String) throws -> String {
        let path = NSTemporaryDirectory() + "switchyard-db-password-\(UUID().uuidString.prefix(8))"
        try (password + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        return path
    }
}
