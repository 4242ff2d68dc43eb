import Foundation
import Glibc
import NIOConcurrencyHelpers

/// A throw-away PostgreSQL cluster for the tests: Debian's server binaries, a data directory of its own, listening
/// on 127.0.0.1 at a free port (and a socket in its own directory), never the machine's default cluster.
///
/// Password authentication over TCP (scram-sha-256) for the user `switchyard`, so that the store's login is the
/// real thing. Run as root, the cluster belongs to the `postgres` user (PostgreSQL refuses to run as root).
/// `SWITCHYARD_TEST_POSTGRES_DIR` puts it under that directory, which `Scripts/test` removes after the run, and
/// stops any server it finds there if the test process was killed.
public final class TemporaryPostgres: Sendable {
    /// The cluster every test in this process shares, started on first use (each test takes a database of its
    /// own with ``makeDatabase()``).
    public static var shared: TemporaryPostgres {
        get throws { try sharedCluster.get() }
    }

    private static let sharedCluster = Result { try TemporaryPostgres() }

    /// Why the cluster could not be made.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public let port: Int
    public let user = "switchyard"
    public let password = "test-password-\(UInt32.random(in: 0...UInt32.max))"
    public let directory: String
    private let binaries: String
    private let runAs: String?
    private let databases = NIOLockedValueBox(0)
    /// Stops the server and removes its directory once the test process is gone, however it ended (a killed
    /// process runs no exit handler).
    private let watchdog: ChildProcess

    public var dataDirectory: String { directory + "/data" }

    /// Makes and starts a new cluster.
    public init() throws {
        binaries = try Self.findBinaries()
        let parent =
            ProcessInfo.processInfo.environment["SWITCHYARD_TEST_POSTGRES_DIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? NSTemporaryDirectory()
        directory = parent + "/pg-\(getpid())-\(UUID().uuidString.prefix(8))"
        runAs = getuid() == 0 ? "postgres" : nil
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        port = try Self.freePort()
        let passwordFile = directory + "/password"
        try password.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        if let runAs {
            try Self.check(ChildProcess.run("/bin/chown", ["-R", runAs, directory]), "chown")
        }
        let stop =
            ([try Self.findProgram("pg_ctl", in: binaries), "-D", directory + "/data", "-m", "immediate", "stop"])
            .map(Self.shellQuoted).joined(separator: " ")
        let asOwner = runAs.map { "/usr/sbin/runuser -u \($0) -- " } ?? ""
        watchdog = try ChildProcess(
            "/bin/sh",
            [
                "-c",
                "while kill -0 \(getpid()) 2>/dev/null; do sleep 1; done; \(asOwner)\(stop); rm -rf \(Self.shellQuoted(directory))",
            ],
            stdout: .null,
            stderr: .null
        )
        try Self.check(
            command(
                "initdb",
                [
                    "-D", dataDirectory, "-U", user, "--pwfile", passwordFile, "--auth-host=scram-sha-256",
                    "--auth-local=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8",
                ],
                timeout: 120
            ),
            "initdb"
        )
        // TLS with the development certificate (names localhost and 127.0.0.1, signed by Certs/dev-ca.pem), which
        // PostgreSQL wants owned by the server's user and readable by it alone.
        for (file, name) in [("localhost.pem", "server.pem"), ("localhost.key", "server.key")] {
            let copy = directory + "/" + name
            try FileManager.default.copyItem(atPath: Self.certificates + "/" + file, toPath: copy)
            chmod(copy, 0o600)
            if let runAs { try Self.check(ChildProcess.run("/bin/chown", [runAs, copy]), "chown") }
        }
        try start()
    }

    /// The repository's `Certs` folder.
    public static let certificates = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Certs").path

    /// Starts the server (again, after ``stop()``), on the same port and data.
    public func start() throws {
        try Self.check(
            command(
                "pg_ctl",
                [
                    "-D", dataDirectory, "-l", directory + "/server.log", "-w", "-t", "60", "-o",
                    "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 "
                        + "-c ssl=on -c ssl_cert_file=\(directory)/server.pem -c ssl_key_file=\(directory)/server.key",
                    "start",
                ],
                timeout: 90
            ),
            "pg_ctl start"
        )
    }

    /// Stops the server at once (`immediate`: as if it crashed; nothing committed is lost).
    public func stop() throws {
        try Self.check(
            command("pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "-t", "60", "stop"], timeout: 90),
            "pg_ctl stop"
        )
    }

    /// A new empty database on the cluster, owned by ``user``: its name.
    public func makeDatabase() throws -> String {
        let name = databases.withLockedValue { count in
            count += 1
            return "test_\(getpid())_\(count)"
        }
        _ = try sql("CREATE DATABASE \(name)")
        return name
    }

    /// Drops a database made by ``makeDatabase()``, closing its connections.
    public func dropDatabase(_ name: String) throws {
        _ = try sql("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
    }

    /// Refuses connections to `database` that do not use TLS (a `hostnossl … reject` line first in `pg_hba.conf`,
    /// the configuration then reloaded).
    public func requireTLS(database: String) throws {
        let rules = dataDirectory + "/pg_hba.conf"
        let current = try String(contentsOfFile: rules, encoding: .utf8)
        try ("hostnossl \(database) all 127.0.0.1/32 reject\n" + current).write(
            toFile: rules,
            atomically: false,
            encoding: .utf8
        )
        _ = try sql("SELECT pg_reload_conf()")
    }

    /// Runs `statement` with psql as the cluster's superuser, in `database`; its output, unaligned.
    @discardableResult
    public func sql(_ statement: String, database: String = "postgres") throws -> String {
        let output = try ChildProcess.run(
            try Self.findProgram("psql", in: binaries),
            [
                "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "-At",
                "-c", statement,
            ],
            environment: ["PGPASSWORD": password, "PATH": "/usr/bin:/bin"],
            timeout: 60
        )
        try Self.check(output, "psql -c \(statement)")
        return output.stdout
    }

    /// The URL of `database` for the store (`state:`), without the password.
    public func url(database: String) -> String {
        "postgres://\(user)@127.0.0.1:\(port)/\(database)?sslmode=disable"
    }

    private func command(_ program: String, _ arguments: [String], timeout: Double) throws -> ChildProcess.Output {
        let path = try Self.findProgram(program, in: binaries)
        if let runAs {
            return try ChildProcess.run("/usr/sbin/runuser", ["-u", runAs, "--", path] + arguments, timeout: timeout)
        }
        return try ChildProcess.run(path, arguments, timeout: timeout)
    }

    private static func shellQuoted(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    private static func check(_ output: ChildProcess.Output, _ what: String) throws {
        guard output.status == 0 else {
            throw Failure(description: "\(what) failed (status \(output.status)): \(output.stderr)\(output.stdout)")
        }
    }

    /// The newest of Debian's `/usr/lib/postgresql/VERSION/bin`.
    private static func findBinaries() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        guard let newest = versions.compactMap(Int.init).max() else {
            throw Failure(
                description:
                    "no PostgreSQL server under \(root): install Debian's postgresql package (Scripts/test does)"
            )
        }
        return "\(root)/\(newest)/bin"
    }

    private static func findProgram(_ name: String, in binaries: String) throws -> String {
        for candidate in [binaries + "/" + name, "/usr/bin/" + name] where access(candidate, X_OK) == 0 {
            return candidate
        }
        throw Failure(description: "\(name) is not in \(binaries) or /usr/bin")
    }

    /// A loopback TCP port nothing listens on now.
    public static func freePort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        guard bound == 0 else { throw Failure(description: "bind: \(String(cString: strerror(errno)))") }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0 else { throw Failure(description: "getsockname: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
