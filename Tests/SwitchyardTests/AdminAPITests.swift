import Foundation
import Logging
import NIOCore
import Testing

@testable import Switchyard

#if canImport(Glibc)
import Glibc
#endif

/// The admin API's endpoints, called without a socket.
@Suite("Admin API")
struct AdminAPITests {
    private let first: Backend
    private let second: Backend
    private let routes: RouteSource
    private let log = CapturedLog()
    private let api: AdminAPI
    private static let local = AdminAPI.Access.local(.user(uid: 501))

    init() throws {
        first = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        second = Backend(address: try SocketAddress(ipAddress: "::1", port: 9002))
        let shop = Tenant(name: "shop", domains: ["shop.test"], backends: [first, second])
        routes = RouteSource(try RouteTable(tenants: [shop]))
        let log = self.log
        api = AdminAPI(routes: routes, logger: Logger(label: "test") { _ in log }) { 7 }
    }

    private func respond(
        _ method: String,
        _ target: String,
        ifMatch: [String] = [],
        access: AdminAPI.Access = AdminAPITests.local,
        api: AdminAPI? = nil
    ) -> AdminAPI.Response {
        (api ?? self.api).respond(
            to: AdminAPI.Request(method: method, target: target, ifMatch: ifMatch),
            access: access
        )
    }

    private func json(_ response: AdminAPI.Response) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: response.body) as? [String: Any])
    }

    private func message(_ response: AdminAPI.Response) throws -> String? {
        (try json(response)["error"] as? [String: Any])?["message"] as? String
    }

    private func etag(_ response: AdminAPI.Response) -> String? {
        response.headers.first { $0.name == "ETag" }?.value
    }

    @Test("GET /v1/status is the status report, with the version in its ETag and body")
    func status() throws {
        let response = respond("GET", "/v1/status")
        #expect(response.status == 200)
        let report = try JSONDecoder().decode(StatusReport.self, from: response.body)
        #expect(report.connections == 7)
        #expect(report.version == 1)
        #expect(etag(response) == "\"1\"")
        #expect(report.tenants.map(\.name) == ["shop"])
        #expect(report.tenants.first?.backends.map(\.address) == ["127.0.0.1:9001", "[::1]:9002"])
        let post = respond("POST", "/v1/status")
        #expect(post.status == 405)
        #expect(post.errorCode == "method_not_allowed")
        #expect(post.allow == "GET")
        #expect(etag(post) == "\"1\"")
    }

    @Test("the unversioned paths answer 404 naming their /v1/ path")
    func unversioned() throws {
        let status = respond("GET", "/status")
        #expect(status.status == 404)
        #expect(status.errorCode == "not_found")
        #expect(try message(status)?.contains("use GET /v1/status") == true)
        let drain = respond("POST", "/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(drain.status == 404)
        #expect(try message(drain)?.contains("use POST /v1/tenants/shop/backends/127.0.0.1:9001/drain") == true)
        #expect(!first.status.isDraining)
        #expect(try message(respond("GET", "/nothing"))?.contains("under /v1/") == true)
    }

    @Test("drain and undrain: idempotent, answered with the backend and the version, logged with who did it")
    func drain() throws {
        let drained = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(drained.status == 200)
        #expect(try json(drained)["state"] as? String == "draining")
        #expect(try json(drained)["health"] as? String == "up")
        #expect(try json(drained)["version"] as? Int == 2)
        #expect(etag(drained) == "\"2\"")
        #expect(first.status.isDraining)
        #expect(!second.status.isDraining)
        #expect(!first.status.isAvailable(now: .now()))
        // Draining again changes nothing: the version stays.
        let again = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(again.status == 200)
        #expect(try json(again)["version"] as? Int == 2)
        #expect(first.status.isDraining)

        let shown = respond("GET", "/v1/tenants/shop/backends/127.0.0.1:9001")
        #expect(try json(shown)["state"] as? String == "draining")
        #expect(etag(shown) == "\"2\"")

        let undrained = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/undrain")
        #expect(undrained.status == 200)
        #expect(try json(undrained)["state"] as? String == "up")
        #expect(try json(undrained)["version"] as? Int == 3)
        #expect(!first.status.isDraining)
        #expect(respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/undrain").version == 3)
        #expect(api.version.current == 3)

        let lines = log.entries.map(\.message)
        #expect(lines.filter { $0.hasPrefix("admin: drain backend 127.0.0.1:9001 of shop by uid 501") }.count == 1)
        #expect(lines.filter { $0 == "admin: undrain backend 127.0.0.1:9001 of shop by uid 501" }.count == 1)
    }

    @Test("a backend marked drain in the file cannot be undrained through the API, and nothing changes")
    func drainedInConfiguration() throws {
        first.status.isDrainedInConfiguration = true
        defer { first.status.isDrainedInConfiguration = false }
        let shown = respond("GET", "/v1/tenants/shop/backends/127.0.0.1:9001")
        #expect(try json(shown)["state"] as? String == "draining")
        #expect(try json(shown)["drainedBy"] as? [String] == ["configuration"])
        let refusedAlone = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/undrain")
        #expect(refusedAlone.status == 409)
        #expect(refusedAlone.errorCode == "drained_in_file")
        #expect(
            try message(refusedAlone)
                == "backend 127.0.0.1:9001 of shop is marked drain in the configuration file; remove the mark there "
                + "and reload (`switchyard reload` or SIGHUP)"
        )
        let drained = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(try json(drained)["drainedBy"] as? [String] == ["admin", "configuration"])
        let versionBefore = api.version.current
        // Refused whole: the admin drain stays too, and the version does not move.
        let refused = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/undrain")
        #expect(refused.status == 409)
        #expect(try message(refused)?.hasSuffix(", then undrain it here: it is drained here too") == true)
        #expect(first.status.isDrainedByOperator)
        #expect(api.version.current == versionBefore)
        #expect(refused.version == versionBefore)
    }

    @Test("a backend is found by the address status shows, percent-encoded or not, or an equal IP literal")
    func backendNames() throws {
        for path in ["[::1]:9002", "%5B%3A%3A1%5D%3A9002", "[0:0:0:0:0:0:0:1]:9002"] {
            let response = respond("GET", "/v1/tenants/shop/backends/\(path)")
            #expect(response.status == 200, "\(path)")
            #expect(try json(response)["address"] as? String == "[::1]:9002")
        }
    }

    @Test("unknown tenants, backends, endpoints and methods are refused with a code and a reason")
    func errors() throws {
        let tenant = respond("POST", "/v1/tenants/nope/backends/127.0.0.1:9001/drain")
        #expect(tenant.status == 404)
        #expect(tenant.errorCode == "not_found")
        #expect(try message(tenant) == "no tenant 'nope'; `switchyard status` lists the tenants")
        #expect(tenant.body.count > 0)
        let shape = try json(tenant)
        #expect(shape.keys.sorted() == ["error"])
        #expect((shape["error"] as? [String: Any])?.keys.sorted() == ["code", "message"])

        let backend = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:1/drain")
        #expect(backend.status == 404)
        #expect(
            try message(backend) == "tenant 'shop' has no backend 127.0.0.1:1; its backends: 127.0.0.1:9001, [::1]:9002"
        )

        let getDrain = respond("GET", "/v1/tenants/shop/backends/127.0.0.1:9001/drain")
        #expect(getDrain.status == 405)
        #expect(getDrain.errorCode == "method_not_allowed")
        #expect(getDrain.allow == "POST")
        let delete = respond("DELETE", "/v1/tenants/shop/backends/127.0.0.1:9001")
        #expect(delete.status == 405)
        #expect(delete.allow == "GET")
        #expect(respond("PUT", "/v1/status").allow == "GET")
        #expect(respond("GET", "/v1/reload").allow == "POST")
        let explode = respond("POST", "/v1/tenants/shop/backends/127.0.0.1:9001/explode")
        #expect(explode.status == 404)
        #expect(try message(explode) == "no such endpoint: POST /v1/tenants/shop/backends/127.0.0.1:9001/explode")
        #expect(respond("GET", "/v1/nothing").status == 404)
        #expect(!first.status.isDraining)
        #expect(api.version.current == 1)
        // Every code is snake_case.
        for code in AdminAPI.ErrorCode.allCases {
            #expect(code.rawValue.allSatisfy { $0.isLowercase || $0 == "_" }, "\(code.rawValue)")
        }
    }

    @Test("If-Match: a write at another version is refused 412 and changes nothing; at this one it goes through")
    func versions() throws {
        let path = "/v1/tenants/shop/backends/127.0.0.1:9001/drain"
        let stale = respond("POST", path, ifMatch: ["\"5\""])
        #expect(stale.status == 412)
        #expect(stale.errorCode == "version_mismatch")
        #expect(etag(stale) == "\"1\"")
        #expect(try message(stale)?.contains("at version 1, not \"5\"") == true)
        #expect(!first.status.isDraining)
        #expect(api.version.current == 1)

        let matching = respond("POST", path, ifMatch: ["\"1\""])
        #expect(matching.status == 200)
        #expect(matching.version == 2)
        // The version as a bare number, a list, or `*`.
        let undrain = "/v1/tenants/shop/backends/127.0.0.1:9001/undrain"
        #expect(respond("POST", undrain, ifMatch: ["1"]).status == 412)
        #expect(first.status.isDraining)
        #expect(respond("POST", undrain, ifMatch: ["\"1\", \"2\""]).status == 200)
        #expect(!first.status.isDraining)
        #expect(respond("POST", path, ifMatch: ["*"]).status == 200)
        #expect(api.version.current == 4)
        // A stale write after someone else's: refused.
        #expect(respond("POST", undrain, ifMatch: ["\"3\""]).status == 412)
        #expect(first.status.isDraining)

        for garbage in ["W/\"4\"", "four", "\"\"", "", "99999999999999999999"] {
            let refused = respond("POST", undrain, ifMatch: [garbage])
            #expect(refused.status == 400, "\(garbage)")
            #expect(refused.errorCode == "invalid_request", "\(garbage)")
        }
        #expect(first.status.isDraining)
        // Reads do not look at If-Match.
        #expect(respond("GET", "/v1/status", ifMatch: ["\"1\""]).status == 200)
    }

    @Test("writes from many threads at once are serialised: each If-Match at one version lets exactly one through")
    func concurrentWrites() async throws {
        let api = self.api
        let results = await withTaskGroup(of: Int.self) { group in
            for index in 0..<16 {
                group.addTask {
                    let action = index % 2 == 0 ? "drain" : "undrain"
                    return api.respond(
                        to: AdminAPI.Request(
                            method: "POST",
                            target: "/v1/tenants/shop/backends/127.0.0.1:9001/\(action)",
                            ifMatch: ["\"1\""]
                        ),
                        access: Self.local
                    ).status
                }
            }
            var statuses: [Int] = []
            for await status in group { statuses.append(status) }
            return statuses
        }
        // Only one write can be at version 1; an undrain that changes nothing leaves it at 1 for the next.
        #expect(results.filter { $0 == 412 }.count + results.filter { $0 == 200 }.count == 16)
        #expect(api.version.current == 2)
    }

    @Test("over TCP, a request without a token or with a wrong one is 401 with a Bearer challenge and no version")
    func unauthorized() throws {
        let tokens = try AdminTokens.parse(
            "deploy:\(String(repeating: "a", count: 40))\nops:\(String(repeating: "b", count: 40))\n",
            file: "tokens"
        )
        let access = AdminAPI.Access.bearer(tokens)
        func request(
            _ authorization: [String],
            _ method: String = "GET",
            _ target: String = "/v1/status"
        )
            -> AdminAPI.Response
        {
            api.respond(
                to: AdminAPI.Request(method: method, target: target, authorization: authorization),
                access: access
            )
        }
        let drain = "/v1/tenants/shop/backends/127.0.0.1:9001/drain"
        for authorization in [
            [], ["Bearer " + String(repeating: "c", count: 40)], ["Bearer " + String(repeating: "a", count: 39)],
            ["Bearer " + String(repeating: "a", count: 41)], ["Basic " + String(repeating: "a", count: 40)],
            [String(repeating: "a", count: 40)], ["Bearer"], ["Bearer "],
            ["Bearer " + String(repeating: "a", count: 40), "Bearer " + String(repeating: "a", count: 40)],
        ] {
            for (method, target) in [("GET", "/v1/status"), ("POST", drain), ("GET", "/nothing")] {
                let refused = request(authorization, method, target)
                #expect(refused.status == 401, "\(authorization) \(target)")
                #expect(refused.errorCode == "unauthorized")
                #expect(refused.authenticate == "Bearer realm=\"switchyard\"")
                #expect(refused.headers.contains { $0.name == "WWW-Authenticate" })
                #expect(refused.version == nil, "a 401 tells the version")
            }
        }
        #expect(!first.status.isDraining)
        #expect(request(["Bearer " + String(repeating: "a", count: 40)]).status == 200)
        #expect(request(["bearer  " + String(repeating: "b", count: 40)]).status == 200)
        #expect(request(["Bearer " + String(repeating: "b", count: 40)], "POST", drain).status == 200)
        #expect(
            log.entries.contains { $0.message.hasPrefix("admin: drain backend 127.0.0.1:9001 of shop by token 'ops'") }
        )
    }

    @Test("POST /v1/reload re-reads the file: 200 with the tenant count, or 400/409 with the error and nothing changed")
    func reload() throws {
        let path = NSTemporaryDirectory() + "admin-reload-\(UUID().uuidString).yaml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let tenants = """
            tenants:
              - name: shop
                domains: ["shop.test"]
                backends: ["127.0.0.1:9001", "[::1]:9002"]
            """
        try tenants.write(toFile: path, atomically: true, encoding: .utf8)
        let configuration = try ConfigurationLoader.load(path: path)
        let routes = RouteSource(try RouteTable(configuration: configuration))
        let version = ConfigurationVersion()
        let logger = Logger(label: "test") { [log] _ in log }
        let reloader = ConfigurationReloader(
            path: path,
            configuration: configuration,
            routes: routes,
            certificates: nil,
            logger: logger,
            version: version
        )
        let api = AdminAPI(routes: routes, logger: logger, version: version, reloader: reloader) { 0 }

        try (tenants + "\n  - name: blog\n    domains: [\"blog.test\"]\n    backends: [\"127.0.0.1:9003\"]\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let reloaded = respond("POST", "/v1/reload", api: api)
        #expect(reloaded.status == 200)
        #expect(try json(reloaded)["tenants"] as? Int == 2)
        #expect(try json(reloaded)["version"] as? Int == 2)
        #expect(routes.current.tenants.map(\.name) == ["shop", "blog"])
        #expect(log.entries.contains { $0.message == "reloaded \(path) (by uid 501): 2 tenants" })

        try "tenants:\n  - name: shop\n    domains: [\"shop.test\"]\n    backends: [\"nowhere\"]\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let invalid = respond("POST", "/v1/reload", api: api)
        #expect(invalid.status == 400)
        #expect(invalid.errorCode == "invalid_configuration")
        let reason = try message(invalid) ?? ""
        #expect(reason.contains("\(path):4: tenants[0].backends[0]"), "\(reason)")
        #expect(reason.contains("the running configuration is kept"))
        #expect(routes.current.tenants.map(\.name) == ["shop", "blog"])
        #expect(version.current == 2)

        try (tenants + "\n  - name: blog\n    domains: [\"shop.test\"]\n    backends: [\"127.0.0.1:9003\"]\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let conflict = respond("POST", "/v1/reload", api: api)
        #expect([400, 409].contains(conflict.status))
        #expect(routes.current.tenants.map(\.name) == ["shop", "blog"])

        try tenants.write(toFile: path, atomically: true, encoding: .utf8)
        let stale = respond("POST", "/v1/reload", ifMatch: ["\"1\""], api: api)
        #expect(stale.status == 412)
        #expect(routes.current.tenants.map(\.name) == ["shop", "blog"])
        // SIGHUP's reload advances the same version.
        _ = reloader.reload(by: .signal)
        #expect(version.current == 3)
        #expect(routes.current.tenants.map(\.name) == ["shop"])
        #expect(log.entries.contains { $0.message == "reloaded \(path) (by SIGHUP): 1 tenants" })

        // Without a reloader (no file), the endpoint says so.
        #expect(respond("POST", "/v1/reload").status == 503)
    }

    @Test("the status report shows each backend's latest check: when, and why it failed")
    func lastCheck() throws {
        let checked = Date(timeIntervalSince1970: 1_800_000_000)
        first.status.recordCheck(.success, at: checked)
        second.status.recordCheck(.failure("connection refused"), at: checked)
        let shop = Tenant(name: "shop", domains: ["shop.test"], backends: [first, second])
        let report = StatusReport(
            routes: try RouteTable(tenants: [shop]),
            connections: 0,
            date: checked.addingTimeInterval(2.5)
        )
        let backends = try #require(report.tenants.first?.backends)
        #expect(
            backends[0].lastCheck
                == StatusReport.Check(at: "2027-01-15T08:00:00Z", secondsAgo: 2.5, ok: true, error: nil)
        )
        #expect(backends[1].lastCheck?.error == "connection refused")
        #expect(report.text.contains("127.0.0.1:9001  up  connections 0  last check ok 2.5s ago"))
        #expect(report.text.contains("[::1]:9002  up  connections 0  last check failed 2.5s ago: connection refused"))
        // A drain does not hide the health.
        second.status.setActivelyUp(false)
        second.status.isDrainedByOperator = true
        let drained = StatusReport(routes: try RouteTable(tenants: [shop]), connections: 0, date: checked)
        #expect(drained.tenants.first?.backends[1].state == "draining")
        #expect(drained.tenants.first?.backends[1].health == "down")
        #expect(drained.text.contains("[::1]:9002  draining (admin, down)  connections 0"))
    }
}

/// `admin.token_file` and the bearer-token comparison.
@Suite("Admin tokens")
struct AdminTokensTests {
    private static let long = String(repeating: "0123456789abcdef", count: 4)

    @Test("NAME:TOKEN or TOKEN a line; blank lines, comments and surrounding spaces ignored")
    func parsing() throws {
        let tokens = try AdminTokens.parse(
            "# operators\n\n  deploy:\(Self.long)  \r\n\(Self.long.uppercased())\n# end\n",
            file: "t"
        )
        #expect(
            tokens.entries == [
                .init(name: "deploy", token: Array(Self.long.utf8)),
                .init(name: "token", token: Array(Self.long.uppercased().utf8)),
            ]
        )
        #expect(tokens.name(authorizing: ["Bearer \(Self.long)"]) == "deploy")
        #expect(tokens.name(authorizing: ["Bearer \(Self.long.uppercased())"]) == "token")
        #expect(tokens.name(authorizing: ["Bearer \(Self.long)x"]) == nil)
    }

    @Test("an empty file, a short or malformed token, a bad or repeated name are refused with the line")
    func refusals() throws {
        let cases: [(String, String)] = [
            ("", "has no token"),
            ("# only a comment\n\n", "has no token"),
            ("deploy:short\n", "t:1: admin.token_file: the token of 'deploy' has 5 characters, fewer than 32"),
            ("\n\ndeploy:\(Self.long) x\n", "t:3: admin.token_file: the token of 'deploy' is not a bearer token"),
            (":\(Self.long)\n", "t:1: admin.token_file: the name before ':'"),
            ("a b:\(Self.long)\n", "t:1: admin.token_file: the name before ':'"),
            ("a:\(Self.long)\na:\(Self.long)1\n", "t:2: admin.token_file: the name 'a' is already given on line 1"),
        ]
        for (text, expected) in cases {
            #expect(throws: AdminTokenFileError.self, "\(text)") { try AdminTokens.parse(text, file: "t") }
            do {
                _ = try AdminTokens.parse(text, file: "t")
            } catch {
                #expect(error.description.contains(expected), "\(error.description)")
                #expect(!error.description.contains(Self.long), "an error shows a token")
            }
        }
    }

    @Test("a token file readable or writable by group or others is refused: chmod 600")
    func permissions() throws {
        let path = NSTemporaryDirectory() + "admin-tokens-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "deploy:\(Self.long)\n".write(toFile: path, atomically: true, encoding: .utf8)
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            chmod(path, mode_t(mode))
            do {
                _ = try AdminTokens.load(path: path)
                Issue.record("mode 0\(String(mode, radix: 8)) was accepted")
            } catch {
                #expect(error.description.contains("chmod 600 \(path)"), "\(error.description)")
                #expect(error.description.contains("mode 0\(String(mode, radix: 8))"), "\(error.description)")
            }
        }
        chmod(path, 0o600)
        #expect(try AdminTokens.load(path: path).entries.map(\.name) == ["deploy"])
        chmod(path, 0o400)
        #expect(try AdminTokens.load(path: path).entries.map(\.name) == ["deploy"])
        #expect(throws: AdminTokenFileError.self) { try AdminTokens.load(path: path + ".missing") }
        try "".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o600)
        #expect(throws: AdminTokenFileError.self) { try AdminTokens.load(path: path) }
    }

    @Test("the comparison: equal bytes only, any length, and no exit at the first difference")
    func constantTime() {
        let secret = Array(Self.long.utf8)
        #expect(AdminTokens.constantTimeEquals(secret, secret))
        #expect(!AdminTokens.constantTimeEquals(secret + [0x61], secret))
        #expect(!AdminTokens.constantTimeEquals(Array(secret.dropLast()), secret))
        #expect(!AdminTokens.constantTimeEquals([], secret))
        #expect(!AdminTokens.constantTimeEquals(secret, []))
        // The secret repeated: its bytes are read cyclically, which the length difference still tells apart.
        #expect(!AdminTokens.constantTimeEquals(secret + secret, secret))
        for index in secret.indices {
            var guess = secret
            guess[index] ^= 0x01
            #expect(!AdminTokens.constantTimeEquals(guess, secret), "differs at \(index)")
        }
        // No early exit: with a 1 MiB secret, a guess wrong in its first byte takes about as long as one wrong in
        // its last (an early exit would make the first ~10^6 times faster; the bound leaves room for noise).
        let large = [UInt8](repeating: 0x61, count: 1 << 20)
        var wrongFirst = large
        wrongFirst[0] = 0x62
        var wrongLast = large
        wrongLast[large.count - 1] = 0x62
        func fastest(_ guess: [UInt8]) -> Duration {
            (0..<5).map { _ in
                ContinuousClock().measure { #expect(!AdminTokens.constantTimeEquals(guess, large)) }
            }.min() ?? .zero
        }
        let first = fastest(wrongFirst)
        let last = fastest(wrongLast)
        #expect(first * 10 > last, "a guess wrong at byte 0 took \(first), one wrong at the end \(last)")
        #expect(AdminTokens.bearerToken("Bearer abc") == Array("abc".utf8))
        #expect(AdminTokens.bearerToken("BEARER   abc==  ") == Array("abc==".utf8))
        #expect(AdminTokens.bearerToken("Bearer a=b") == nil)
        #expect(AdminTokens.bearerToken("Bearerabc") == nil)
        #expect(AdminTokens.bearerToken("Token abc") == nil)
    }
}

/// The `admin.*` keys of the configuration.
@Suite("Admin configuration")
struct AdminConfigurationTests {
    private func load(_ yaml: String) throws -> Configuration {
        try ConfigurationLoader.parse(yaml: yaml, file: "s.yaml")
    }

    private func refusal(_ yaml: String) -> String {
        do {
            _ = try load(yaml)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    @Test("defaults: no TCP listener, 64 connections, 60 s idle; every key read")
    func keys() throws {
        let defaults = try load("")
        #expect(defaults.admin.listen == nil)
        #expect(defaults.admin.tokenFile == nil)
        #expect(defaults.admin.maximumConnections == 64)
        #expect(defaults.admin.idleTimeout == .seconds(60))
        let set = try load(
            """
            admin:
              socket: run/a.sock
              listen: "127.0.0.1:9000"
              token_file: /etc/switchyard/tokens
              max_connections: 8
              idle_timeout: 5s
            """
        )
        let loopback = try SocketAddress(ipAddress: "127.0.0.1", port: 9000)
        #expect(set.admin.listen == loopback)
        #expect(set.admin.tokenFile == "/etc/switchyard/tokens")
        #expect(set.admin.maximumConnections == 8)
        #expect(set.admin.idleTimeout == .seconds(5))
        let six = try load("admin:\n  listen: \"[::1]:9000\"\n  token_file: t\n")
        let loopbackSix = try SocketAddress(ipAddress: "::1", port: 9000)
        #expect(six.admin.listen == loopbackSix)
        #expect(try load("admin:\n  listen: 127.1.2.3:9000\n  token_file: t\n").admin.listen != nil)
    }

    @Test("a non-loopback or named admin.listen, a listener without a token file and the reverse are refused")
    func refusals() {
        #expect(
            refusal("admin:\n  listen: 0.0.0.0:9000\n  token_file: t\n")
                == "s.yaml:2: admin.listen: '0.0.0.0:9000' is not a loopback address; the admin API listens on "
                + "127.0.0.1 or [::1] only (it controls the balancer: reach it from elsewhere through an SSH tunnel)"
        )
        #expect(refusal("admin:\n  listen: \"[::]:9000\"\n  token_file: t\n").contains("is not a loopback address"))
        #expect(refusal("admin:\n  listen: 10.0.0.5:9000\n  token_file: t\n").contains("is not a loopback address"))
        #expect(refusal("admin:\n  listen: localhost:9000\n  token_file: t\n").contains("is not an IP address"))
        #expect(
            refusal("admin:\n  listen: 127.0.0.1:9000\n").hasPrefix("s.yaml:2: admin.listen: needs admin.token_file")
        )
        #expect(
            refusal("admin:\n  token_file: t\n").hasPrefix("s.yaml:2: admin.token_file: is only used with admin.listen")
        )
        #expect(refusal("admin:\n  max_connections: 0\n").contains("admin.max_connections"))
        #expect(refusal("admin:\n  idle_timeout: soon\n").contains("admin.idle_timeout"))
        #expect(refusal("admin:\n  token: t\n").contains("unknown key 'token'"))
    }

    @Test("the descriptor budget counts admin.max_connections and the TCP listener")
    func budget() throws {
        let plain = DescriptorBudget(configuration: try load(""), backends: 0, workers: 1)
        let larger = DescriptorBudget(
            configuration: try load("admin:\n  listen: 127.0.0.1:9000\n  token_file: t\n  max_connections: 100\n"),
            backends: 0,
            workers: 1
        )
        #expect(larger.fixed - plain.fixed == 100 - 64 + 1)
    }
}
