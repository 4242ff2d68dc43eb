import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The admin API v1 through the built binary: its loopback TCP listener with bearer tokens, the unix socket with
/// the operator commands, `switchyard reload`, and the refusals at start.
@Suite("Admin API over TCP and the socket", .serialized)
struct AdminTCPIntegrationTests {
    private static let token = String(repeating: "5f3a9c1e", count: 8)

    /// A token file of mode 0600 in a fresh directory.
    private static func tokenFile(mode: mode_t = 0o600) throws -> String {
        let path = NSTemporaryDirectory() + "switchyard-tokens-\(UUID().uuidString.prefix(8))"
        try "# the CI's token\nci:\(token)\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, mode)
        return path
    }

    /// `curl -i` of the admin TCP listener.
    private static func curl(_ port: Int, _ path: String, token: String?, method: String = "GET") throws -> String {
        var arguments = ["-i", "-X", method, "http://127.0.0.1:\(port)\(path)"]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        return try ExternalProcess.curl(arguments).stdout
    }

    @Test(
        "admin.listen: 401 without or with a wrong token, 200 with it; status, drain and reload work over the socket"
    )
    func tcpAndSocket() async throws {
        let backend = try await TestBackend.start(name: "shop")
        let blog = try await TestBackend.start(name: "blog")
        let port = try ExternalProcess.freePort()
        let adminPort = try ExternalProcess.freePort()
        let tokens = try Self.tokenFile()
        defer { try? FileManager.default.removeItem(atPath: tokens) }
        let head = """
            listen:
              http: ["127.0.0.1:\(port)"]
            admin:
              listen: "127.0.0.1:\(adminPort)"
              token_file: \(tokens)
              max_connections: 8
              idle_timeout: 5s
            tenants:
              - name: shop
                domains: ["shop.test"]
                backends: ["127.0.0.1:\(backend.port)"]

            """
        let balancer = try ServedBalancer(head, port: port)
        defer { balancer.stop() }
        var answer = ""
        for _ in 0..<100 {
            answer = try Self.curl(adminPort, "/v1/status", token: nil)
            if !answer.isEmpty { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        // No token, a wrong one, another scheme: 401 with a challenge, and nothing of the configuration.
        #expect(answer.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), "\(answer)\n\(balancer.process.log)")
        #expect(answer.contains("WWW-Authenticate: Bearer"))
        #expect(answer.contains("\"code\" : \"unauthorized\""))
        #expect(!answer.contains("ETag"))
        #expect(!answer.contains("shop.test"))
        let wrong = try Self.curl(adminPort, "/v1/status", token: String(Self.token.reversed()))
        #expect(wrong.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), "\(wrong)")
        let drainPath = "/v1/tenants/shop/backends/127.0.0.1:\(backend.port)/drain"
        #expect(try Self.curl(adminPort, drainPath, token: "x", method: "POST").hasPrefix("HTTP/1.1 401"))

        let status = try Self.curl(adminPort, "/v1/status", token: Self.token)
        #expect(status.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(status)")
        #expect(status.contains("ETag: \"0\""), "\(status)")
        #expect(status.contains("\"name\" : \"shop\""))

        // A drain over TCP is logged with the token's name; the socket's commands see it.
        let drained = try Self.curl(adminPort, drainPath, token: Self.token, method: "POST")
        #expect(drained.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(drained)")
        #expect(drained.contains("\"version\" : 1"))
        #expect(balancer.process.log.contains("admin: drain backend 127.0.0.1:\(backend.port) of shop by token 'ci'"))
        let report = try balancer.admin(["status"])
        #expect(report.status == 0, "\(report.stderr)")
        #expect(report.stdout.contains("127.0.0.1:\(backend.port)  draining (admin)"), "\(report.stdout)")
        #expect(report.stdout.contains("version 1"), "\(report.stdout)")

        // The commands over TCP: --admin-url with a token file.
        let url = "http://127.0.0.1:\(adminPort)"
        let overTCP = try ExternalProcess.run(
            ExternalProcess.switchyardBinary,
            ["status", "--admin-url", url, "--token-file", tokens]
        )
        #expect(overTCP.status == 0, "\(overTCP.stderr)")
        #expect(overTCP.stdout.contains("127.0.0.1:\(backend.port)  draining (admin)"), "\(overTCP.stdout)")
        let otherTokens = try Self.tokenFile()
        defer { try? FileManager.default.removeItem(atPath: otherTokens) }
        try "ci:\(String(Self.token.reversed()))\n".write(toFile: otherTokens, atomically: false, encoding: .utf8)
        let refused = try ExternalProcess.run(
            ExternalProcess.switchyardBinary,
            ["status", "--admin-url", url, "--token-file", otherTokens]
        )
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("the token is not one of admin.token_file"), "\(refused.stderr)")
        let noFile = try ExternalProcess.run(ExternalProcess.switchyardBinary, ["status", "--admin-url", url])
        #expect(noFile.status == 64)
        #expect(noFile.stderr.contains("--admin-url needs --token-file"), "\(noFile.stderr)")

        // Over the socket: no token, and the uid the kernel gives.
        let undrain = try balancer.admin(["backends", "undrain", "shop", "127.0.0.1:\(backend.port)"])
        #expect(undrain.status == 0, "\(undrain.stderr)")
        #expect(
            balancer.process.log.contains("admin: undrain backend 127.0.0.1:\(backend.port) of shop by uid \(getuid())")
        )
        let drain = try balancer.admin(["backends", "drain", "shop", "127.0.0.1:\(backend.port)", "--if-match", "1"])
        #expect(drain.status == 1)
        #expect(drain.stderr.contains("the configuration is at version 2, not \"1\""), "\(drain.stderr)")
        #expect(try balancer.admin(["status"]).stdout.contains("127.0.0.1:\(backend.port)  up"))

        // The old paths say where the API went.
        let old = try ExternalProcess.curl(["--unix-socket", balancer.process.adminPath, "http://admin/status"])
        #expect(old.stdout.contains("use GET /v1/status"), "\(old.stdout)")

        // `switchyard reload` re-reads the file as SIGHUP does.
        try balancer.rewrite(
            head + "  - name: blog\n    domains: [\"blog.test\"]\n    backends: [\"127.0.0.1:\(blog.port)\"]\n"
        )
        let reload = try balancer.admin(["reload"])
        #expect(reload.status == 0, "\(reload.stderr)")
        #expect(reload.stdout.contains("reloaded: 2 tenants (configuration version 3)"), "\(reload.stdout)")
        #expect(try ExternalProcess.curl(["-H", "Host: blog.test", balancer.url + "/"]).stdout == "blog")
        #expect(balancer.process.log.contains("(by uid \(getuid())): 2 tenants"))

        // A file that does not load: exit 1 with the loader's error, the running configuration kept.
        try balancer.rewrite(head + "  - name: broken\n")
        let broken = try balancer.admin(["reload"])
        #expect(broken.status == 1)
        #expect(broken.stderr.contains("reload refused"), "\(broken.stderr)")
        #expect(broken.stderr.contains(balancer.configurationPath), "\(broken.stderr)")
        #expect(try ExternalProcess.curl(["-H", "Host: blog.test", balancer.url + "/"]).stdout == "blog")
        let json = try balancer.admin(["reload", "--json", "--if-match", "3"])
        #expect(json.status == 1)
        await backend.stop()
        await blog.stop()
    }

    @Test("serve refuses a non-loopback admin.listen, one without token_file, and a token file others can read")
    func refusals() throws {
        let port = try ExternalProcess.freePort()
        let adminPort = try ExternalProcess.freePort()
        let loose = try Self.tokenFile(mode: 0o644)
        let empty = try Self.tokenFile()
        try "# nothing yet\n".write(toFile: empty, atomically: false, encoding: .utf8)
        defer {
            try? FileManager.default.removeItem(atPath: loose)
            try? FileManager.default.removeItem(atPath: empty)
        }
        let cases: [(admin: String, expected: String)] = [
            (
                "  listen: \"0.0.0.0:\(adminPort)\"\n  token_file: \(loose)\n",
                "admin.listen: '0.0.0.0:\(adminPort)' is not a loopback address"
            ),
            ("  listen: \"127.0.0.1:\(adminPort)\"\n", "admin.listen: needs admin.token_file"),
            ("  listen: \"127.0.0.1:\(adminPort)\"\n  token_file: \(loose)\n", "chmod 600 \(loose)"),
            ("  listen: \"127.0.0.1:\(adminPort)\"\n  token_file: \(empty)\n", "has no token"),
        ]
        for (admin, expected) in cases {
            let path = NSTemporaryDirectory() + "admin-refusal-\(UUID().uuidString).yaml"
            try "listen:\n  http: [\"127.0.0.1:\(port)\"]\nadmin:\n\(admin)"
                .write(toFile: path, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let socket = NSTemporaryDirectory() + "switchyard-refused-\(UUID().uuidString.prefix(8)).sock"
            let output = try ExternalProcess.run(
                "/usr/bin/env",
                [
                    "SWITCHYARD_ADMIN=\(socket)", "SWITCHYARD_STATE=\(socket).state", ExternalProcess.switchyardBinary,
                    "serve", "--config", path,
                ],
                timeout: 20
            )
            #expect(output.status == 2, "\(admin): \(output.stdout)")
            #expect(output.stdout.contains(expected), "\(output.stdout)")
            #expect(!FileManager.default.fileExists(atPath: socket))
        }
    }
}
