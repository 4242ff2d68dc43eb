import Testing

@testable import Switchyard

/// `state:`: a file's path, or the URL of a PostgreSQL database, refused with a reason when the URL is wrong.
@Suite("State location")
struct StateLocationTests {
    @Test("a path is a file; a postgres URL is parsed with its defaults")
    func parses() throws {
        #expect(try StateLocation(parsing: "run/state.sqlite") == .file("run/state.sqlite"))
        #expect(try StateLocation(parsing: "/var/lib/postgres://odd") == .file("/var/lib/postgres://odd"))
        let plain = try StateLocation(parsing: "postgres://switchyard@db.internal/balancer")
        #expect(
            plain
                == .postgres(
                    .init(
                        host: "db.internal",
                        port: 5432,
                        user: "switchyard",
                        database: "balancer",
                        sslMode: "prefer",
                        rootCertificates: nil
                    )
                )
        )
        #expect(plain.description == "postgres://switchyard@db.internal:5432/balancer")
        let full = try StateLocation(
            parsing: "postgresql://lb@[::1]:6432/fleet?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem"
        )
        #expect(
            full
                == .postgres(
                    .init(
                        host: "::1",
                        port: 6432,
                        user: "lb",
                        database: "fleet",
                        sslMode: "verify-full",
                        rootCertificates: "/etc/ssl/db-ca.pem"
                    )
                )
        )
        #expect(full.description == "postgres://lb@[::1]:6432/fleet")
    }

    @Test(
        "a wrong URL is refused saying what is wrong",
        arguments: [
            ("postgres://lb:secret@db/fleet", "holds a password"),
            ("postgres://db/fleet", "names no user"),
            ("postgres://lb@/fleet", "names no host"),
            ("postgres://lb@db", "names no database"),
            ("postgres://lb@db/fleet?sslmode=allow", "expected one of disable, prefer, require, verify-full"),
            ("postgres://lb@db/fleet?application_name=x", "unknown parameter 'application_name'"),
            ("postgres://lb@db:0/fleet", "has port 0"),
        ]
    )
    func refuses(url: String, reason: String) throws {
        let error = #expect(throws: StateLocationError.self) { try StateLocation(parsing: url) }
        #expect(error?.description.contains(reason) == true, "\(String(describing: error))")
    }

    @Test("the loader names the file, line and key of a wrong URL, and never quotes a password back")
    func loaderRefuses() throws {
        let error = try #require(throws: ConfigurationError.self) {
            try ConfigurationLoader.parse(yaml: "state: postgres://lb@db\n", file: "Config/test.yaml")
        }
        #expect(error.file == "Config/test.yaml" && error.key == "state" && error.line == 1)
        #expect(error.reason.contains("names no database"), "\(error)")
        let withPassword = try #require(throws: ConfigurationError.self) {
            try ConfigurationLoader.parse(yaml: "state: postgres://lb:hunter2@db/fleet\n", file: "Config/test.yaml")
        }
        #expect(withPassword.reason.contains("holds a password") && !withPassword.description.contains("hunter2"))
        let configuration = try ConfigurationLoader.parse(
            yaml: "state: postgres://lb@db/fleet\nstate_password_file: run/db-password\n",
            file: "Config/test.yaml"
        )
        #expect(configuration.statePath == "postgres://lb@db/fleet")
        #expect(configuration.statePasswordFile == "run/db-password")
    }
}
