import Foundation
import NIOCore
import Testing

@testable import Switchyard

// MARK: - Helpers

private let testFile = "Config/test.yaml"

private func parse(_ yaml: String) throws -> Configuration {
    try ConfigurationLoader.parse(yaml: yaml, file: testFile)
}

/// The error `yaml` is refused with; records an issue if it is accepted.
private func refusal(_ yaml: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> ConfigurationError {
    try #require(throws: ConfigurationError.self, sourceLocation: sourceLocation) {
        try ConfigurationLoader.parse(yaml: yaml, file: testFile)
    }
}

private func address(_ ip: String, _ port: Int) throws -> SocketAddress {
    try SocketAddress(ipAddress: ip, port: port)
}

/// A file that refuses to load: the YAML, and the key, line and a fragment of the reason expected.
struct Refusal: Sendable, CustomTestStringConvertible {
    var yaml: String
    var key: String
    var line: Int?
    var reason: String

    init(_ yaml: String, key: String, line: Int?, reason: String) {
        self.yaml = yaml
        self.key = key
        self.line = line
        self.reason = reason
    }

    var testDescription: String { "\(self.key): \(self.reason)" }

    func check(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let error = try refusal(self.yaml, sourceLocation: sourceLocation)
        #expect(error.file == testFile, sourceLocation: sourceLocation)
        #expect(error.key == self.key, sourceLocation: sourceLocation)
        #expect(error.line == self.line, sourceLocation: sourceLocation)
        #expect(error.reason.contains(self.reason), "reason: \(error.reason)", sourceLocation: sourceLocation)
    }
}

/// A tenant that passes, to embed in files testing something else.
private let validTenant = """
    tenants:
      - name: shop
        domains: [shop.test]
        backends: ["10.0.0.5:8080"]
    """

// MARK: - Valid files

@Suite("ConfigurationLoader")
struct ConfigurationLoaderTests {
    @Test func fullExample() throws {
        let configuration = try parse(
            """
            # Switchyard configuration
            listen:
              http: ["0.0.0.0:8080", "[::]:8080"]
              https: ["0.0.0.0:8443"]
            workers: 4
            admin:
              socket: run/admin.sock
            state: /var/lib/switchyard/state.sqlite
            tls:
              certificate: Certs/localhost.pem
              key: Certs/localhost.key
            access_log: false
            timeouts:
              client_header: 10s
              keepalive: 75s
              client_body: 1m
              upstream_connect: 500ms
              upstream_response: 2m
              upstream_idle: 90s
              drain: 1h
            limits:
              max_header_bytes: 65536
              max_headers: 200
              max_connections: 50_000
              upstream_keepalive: 0
            tenants:
              - name: shop
                domains: ["Shop.Test.", "*.shop.test"]
                backends: ["10.0.0.5:8080", "[::1]:8081", "localhost:8082"]
                certificate: Certs/shop.pem
                key: Certs/shop.key
                health: { path: /healthz, interval: 2s, timeout: 1s, rise: 2, fall: 3 }
              - name: blog.v2
                domains: [blog.test]
                backends: ["10.0.0.7:80"]
            """
        )

        #expect(configuration.listen.http == [try address("0.0.0.0", 8080), try address("::", 8080)])
        #expect(configuration.listen.https == [try address("0.0.0.0", 8443)])
        #expect(configuration.workers == 4)
        #expect(configuration.admin.socket == "run/admin.sock")
        #expect(configuration.statePath == "/var/lib/switchyard/state.sqlite")
        #expect(
            configuration.tls == Configuration.TLSFiles(certificate: "Certs/localhost.pem", key: "Certs/localhost.key")
        )
        #expect(configuration.accessLog == false)
        #expect(
            configuration.timeouts
                == Configuration.Timeouts(
                    clientHeader: .seconds(10),
                    keepAlive: .seconds(75),
                    clientBody: .minutes(1),
                    upstreamConnect: .milliseconds(500),
                    upstreamResponse: .minutes(2),
                    upstreamIdle: .seconds(90),
                    drain: .hours(1)
                )
        )
        #expect(
            configuration.limits
                == Configuration.Limits(
                    maxHeaderBytes: 65536,
                    maxHeaderCount: 200,
                    maxConnections: 50_000,
                    upstreamKeepAlive: 0
                )
        )

        #expect(configuration.tenants.count == 2)
        let shop = try #require(configuration.tenants.first)
        #expect(shop.name == "shop")
        #expect(shop.domains == ["shop.test", "*.shop.test"])
        #expect(shop.backends.count == 3)
        #expect(shop.backends[0] == (try address("10.0.0.5", 8080)))
        #expect(shop.backends[1] == (try address("::1", 8081)))
        #expect(shop.backends[2].port == 8082)
        #expect(shop.tls == Configuration.TLSFiles(certificate: "Certs/shop.pem", key: "Certs/shop.key"))
        #expect(
            shop.health
                == HealthCheckConfiguration(
                    path: "/healthz",
                    interval: .seconds(2),
                    timeout: .seconds(1),
                    rise: 2,
                    fall: 3
                )
        )
        let blog = configuration.tenants[1]
        #expect(blog.name == "blog.v2")
        #expect(blog.domains == ["blog.test"])
        #expect(blog.backends == [try address("10.0.0.7", 80)])
        #expect(blog.tls == nil)
        #expect(blog.health == nil)
    }

    @Test(
        "An empty file or one with only comments gives the defaults",
        arguments: ["", "\n\n", "# nothing here\n   # nor here\n", "---\n", "--- # empty document\n...\n"]
    )
    func emptyFileGivesDefaults(yaml: String) throws {
        let configuration = try parse(yaml)
        #expect(configuration == Configuration(listen: .init(http: [try address("0.0.0.0", 8080)])))
        #expect(configuration.tenants.isEmpty)
        #expect(configuration.workers == nil)
        #expect(configuration.accessLog == true)
        #expect(configuration.statePath == "run/state.sqlite")
        #expect(configuration.admin.socket == "run/admin.sock")
        #expect(configuration.tls == nil)
    }

    @Test func changeLogRetention() throws {
        #expect(
            try parse("workers: 1\n").changeLog
                == Configuration.ChangeLog(maximumAge: .hours(720), maximumChanges: 100_000)
        )
        #expect(
            try parse("change_log: { max_age: 7d, max_changes: 5_000 }\n").changeLog
                == Configuration.ChangeLog(maximumAge: .hours(168), maximumChanges: 5000)
        )
        #expect(
            try parse("change_log: { max_age: none, max_changes: none }\n").changeLog
                == Configuration.ChangeLog(maximumAge: nil, maximumChanges: nil)
        )
    }

    @Test func omittedKeysKeepTheirDefaults() throws {
        let configuration = try parse(
            """
            listen:
              https: "[::]:8443"
            tls: { certificate: a.pem, key: a.key }
            timeouts:
              keepalive: 5s
            limits:
              max_headers: 50
            """
        )
        #expect(configuration.listen.http == [])
        #expect(configuration.listen.https == [try address("::", 8443)])
        var timeouts = Configuration.Timeouts()
        timeouts.keepAlive = .seconds(5)
        #expect(configuration.timeouts == timeouts)
        var limits = Configuration.Limits()
        limits.maxHeaderCount = 50
        #expect(configuration.limits == limits)
    }

    @Test("Empty sections are empty mappings and lists", arguments: ["timeouts:", "limits:", "tenants:", "admin: {}"])
    func emptySections(line: String) throws {
        let configuration = try parse(line + "\n")
        #expect(configuration == Configuration(listen: .init(http: [try address("0.0.0.0", 8080)])))
    }

    @Test func singleListenAddressIsAccepted() throws {
        let configuration = try parse("listen:\n  http: 127.0.0.1:80\n")
        #expect(configuration.listen.http == [try address("127.0.0.1", 80)])
    }

    @Test func ipv6ListenAndBackendAddresses() throws {
        let configuration = try parse(
            """
            listen:
              http: ["[::]:8080", "[::1]:8081", "[2001:db8::1]:80"]
              https: ["[fe80::1]:8443"]
            tls: { certificate: a.pem, key: a.key }
            tenants:
              - name: v6
                domains: [v6.test]
                backends: ["[::1]:9000", "[2001:DB8::5]:9001"]
            """
        )
        #expect(
            configuration.listen.http == [
                try address("::", 8080), try address("::1", 8081), try address("2001:db8::1", 80),
            ]
        )
        #expect(configuration.listen.https == [try address("fe80::1", 8443)])
        #expect(configuration.tenants[0].backends == [try address("::1", 9000), try address("2001:db8::5", 9001)])
    }

    @Test(arguments: [("auto", nil), ("AUTO", nil), ("1", 1), ("16", 16), ("256", 256)] as [(String, Int?)])
    func workers(text: String, expected: Int?) throws {
        #expect(try parse("workers: \(text)\n").workers == expected)
    }

    @Test(arguments: [("epoll", Configuration.IO.epoll), ("nio", .nio)])
    func io(text: String, expected: Configuration.IO) throws {
        #expect(try parse("io: \(text)\n").io == expected)
        #expect(try parse("workers: 1\n").io == .epoll)
    }

    @Test(arguments: [("true", true), ("false", false), ("True", true), ("FALSE", false)])
    func accessLog(text: String, expected: Bool) throws {
        #expect(try parse("access_log: \(text)\n").accessLog == expected)
    }

    @Test(
        "a boolean is a plain true or false: quoted strings and YAML 1.1's yes, no, on and off are refused",
        arguments: [
            ("\"true\"", "found the quoted string 'true'; write true or false without quotes"),
            ("'false'", "found the quoted string 'false'"),
            ("yes", "found 'yes' (YAML 1.1 spellings are not booleans here; write true or false)"),
            ("no", "found 'no' (YAML 1.1"),
            ("On", "found 'On' (YAML 1.1"),
            ("OFF", "found 'OFF' (YAML 1.1"),
            ("1", "expected true or false, found '1'"),
            ("tRuE", "expected true or false, found 'tRuE'"),
        ]
    )
    func nonBooleansAreRefused(text: String, reason: String) throws {
        try Refusal("access_log: \(text)\n", key: "access_log", line: 1, reason: reason).check()
        try Refusal(
            validTenant + "\n    https_redirect: \(text)\n",
            key: "tenants[0].https_redirect",
            line: 5,
            reason: reason
        ).check()
    }

    @Test func pathsAreKeptAsWritten() throws {
        let configuration = try parse(
            """
            admin: { socket: ./run/../run/admin.sock }
            state: 2024
            tls: { certificate: "../Certs/a b.pem", key: /etc/ssl/a.key }
            """
        )
        #expect(configuration.admin.socket == "./run/../run/admin.sock")
        #expect(configuration.statePath == "2024")
        #expect(configuration.tls == Configuration.TLSFiles(certificate: "../Certs/a b.pem", key: "/etc/ssl/a.key"))
    }

    @Test func scalarsAreReadAsTheKeyExpects() throws {
        let configuration = try parse(
            """
            limits: { max_headers: "100", max_connections: 1_000 }
            tenants:
              - name: yes
                domains: [true.test]
                backends: ["10.0.0.5:8080"]
                health: { rise: "5" }
            """
        )
        #expect(configuration.limits.maxHeaderCount == 100)
        #expect(configuration.limits.maxConnections == 1000)
        #expect(configuration.tenants[0].name == "yes")
        #expect(configuration.tenants[0].health?.rise == 5)
    }

    @Test func anchorsAndAliasesAreFollowed() throws {
        let configuration = try parse(
            """
            tenants:
              - name: a
                domains: [a.test]
                backends: &pool ["10.0.0.5:8080", "10.0.0.6:8080"]
                health: &checks { path: /up, interval: 5s }
              - name: b
                domains: [b.test]
                backends: *pool
                health: *checks
            """
        )
        #expect(configuration.tenants[1].backends == configuration.tenants[0].backends)
        #expect(configuration.tenants[1].health?.path == "/up")
    }

    @Test func byteOrderMarkIsIgnored() throws {
        #expect(try parse("\u{FEFF}workers: 3\n").workers == 3)
        try Refusal("\u{FEFF}workers: 3\nwokers: 4\n", key: "wokers", line: 2, reason: "unknown key 'wokers'").check()
    }

    @Test func healthDefaultsWhenEmpty() throws {
        let configuration = try parse(validTenant + "\n    health: {}\n")
        #expect(configuration.tenants[0].health == HealthCheckConfiguration())
    }

    // MARK: - Sticky sessions

    @Test(
        "sticky: true uses the default cookie, a session cookie; false turns it off",
        arguments: [
            ("true", StickySessionConfiguration()), ("false", nil),
        ] as [(String, StickySessionConfiguration?)]
    )
    func stickyFlag(text: String, expected: StickySessionConfiguration?) throws {
        let configuration = try parse(validTenant + "\n    sticky: \(text)\n")
        #expect(configuration.tenants[0].sticky == expected)
    }

    @Test("backends are named as written: a host name stays a name, in status and in the sticky cookie")
    func backendNames() throws {
        let yaml = """
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["localhost:9001 weight=2", "127.0.0.1:9002"]
                sticky: true
            """
        let configuration = try parse(yaml)
        let table = try RouteTable(configuration: configuration)
        let backends = try #require(table.tenants.first?.backends)
        #expect(backends.map(\.description) == ["localhost:9001", "127.0.0.1:9002"])
        #expect(
            table.tenants.first?.sticky?.identifiers
                == [
                    StickyCookie.identifier(tenant: "shop", backend: "localhost:9001"),
                    StickyCookie.identifier(tenant: "shop", backend: "127.0.0.1:9002"),
                ]
        )
        // A reload keeps a backend whose name and address are unchanged; a new name for the same address is a new
        // backend (its cookie changes with it).
        let same = try RouteTable(configuration: configuration, previous: table)
        #expect(same.tenants.first?.backends.first === backends[0])
        let renamed = try RouteTable(
            configuration: try parse(yaml.replacingOccurrences(of: "localhost:9001", with: "127.0.0.1:9001")),
            previous: table
        )
        #expect(renamed.tenants.first?.backends.first !== backends[0])
        #expect(renamed.tenants.first?.backends.first?.description == "127.0.0.1:9001")
        #expect(renamed.tenants.first?.backends.last === backends[1])
    }

    @Test("`drain` after a backend takes it out of rotation when the table is published, and follows reloads")
    func drainMarks() throws {
        let yaml = """
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["10.0.0.5:8080 drain", "10.0.0.6:8080 weight=2 drain", "10.0.0.7:8080  drain  weight=3"]
              - name: blog
                domains: [blog.test]
                backends: ["10.0.0.8:8080"]
            """
        let configuration = try parse(yaml)
        let table = try RouteTable(configuration: configuration)
        let shop = try #require(table.tenants.first)
        #expect(shop.drained == [true, true, true])
        #expect(shop.weights == [1, 2, 3])
        #expect(table.tenants.last?.drained == [false])
        // Building a table changes nothing (a reload may still be refused); publishing it does.
        #expect(!shop.backends[0].status.isDraining)
        let routes = RouteSource(table)
        #expect(shop.backends.allSatisfy { $0.status.isDrainedInConfiguration && $0.status.isDraining })
        #expect(!shop.backends[0].status.isDrainedByOperator)

        // The mark removed from one backend: that backend, kept across the reload, is back once published.
        let reloaded = try RouteTable(
            configuration: try parse(yaml.replacingOccurrences(of: "10.0.0.5:8080 drain", with: "10.0.0.5:8080")),
            previous: table
        )
        #expect(reloaded.tenants.first?.backends.first === shop.backends[0])
        #expect(shop.backends[0].status.isDraining)
        routes.publish(reloaded)
        #expect(!shop.backends[0].status.isDraining)
        #expect(shop.backends[1].status.isDraining)
    }

    @Test("the same backend twice is named as such, whatever words follow it")
    func sameBackendTwice() throws {
        let error = try refusal(
            """
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["10.0.0.5:8080 drain", "10.0.0.5:8080 drain"]
            """
        )
        #expect(error.key == "tenants[0].backends[1]")
        #expect(error.reason.contains("is the same backend as tenants[0].backends[0]"), "\(error.reason)")
    }

    @Test(
        "a backend's words after HOST:PORT are weight=N and drain, each once",
        arguments: ["10.0.0.5:8080 drain drain", "10.0.0.5:8080 weight=1 weight=2", "10.0.0.5:8080 down"]
    )
    func badBackendWords(text: String) throws {
        let error = try refusal(
            """
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["\(text)"]
            """
        )
        #expect(error.key == "tenants[0].backends[0]")
        #expect(error.reason.hasPrefix("'\(text)' is not HOST:PORT [weight=N] [drain] (N from 1 to 1000; '"))
    }

    @Test func stickyIsOffByDefault() throws {
        #expect(try parse(validTenant).tenants[0].sticky == nil)
        #expect(StickySessionConfiguration().cookie == "switchyard_backend")
        #expect(StickySessionConfiguration().maxAge == nil)
    }

    @Test func stickyMapping() throws {
        let configuration = try parse(
            validTenant
                + """

                    sticky:
                      cookie: SERVERID
                      max_age: 1h
                  - name: blog
                    domains: [blog.test]
                    backends: ["10.0.0.7:80"]
                    sticky: { max_age: 90s }
                  - name: wiki
                    domains: [wiki.test]
                    backends: ["10.0.0.8:80"]
                    sticky: { cookie: "a!#$%&'*+-.^_`|~9" }
                  - name: news
                    domains: [news.test]
                    backends: ["10.0.0.9:80"]
                    sticky: { max_age: 1s, same_site: none }
                """
        )
        #expect(
            configuration.tenants.map(\.sticky) == [
                StickySessionConfiguration(cookie: "SERVERID", maxAge: .hours(1)),
                StickySessionConfiguration(cookie: "switchyard_backend", maxAge: .seconds(90)),
                StickySessionConfiguration(cookie: "a!#$%&'*+-.^_`|~9", maxAge: nil),
                StickySessionConfiguration(maxAge: .seconds(1), sameSite: .none),
            ]
        )
        // The route table hands the settings to the tenant's cookie.
        let table = try RouteTable(configuration: configuration)
        let cookie = try #require(table.tenants.first?.sticky)
        #expect(cookie.name == "SERVERID")
        #expect(cookie.setCookieLine(forBackendAt: 0, secure: false).contains("; Max-Age=3600; SameSite=Lax\r\n"))
        #expect(table.tenants[1].sticky?.setCookieLine(forBackendAt: 0, secure: false).contains("Max-Age=90;") == true)
        // SameSite=None only over HTTPS, where Secure goes with it.
        let none = try #require(table.tenants[3].sticky)
        #expect(none.setCookieLine(forBackendAt: 0, secure: false).contains("; Max-Age=1\r\n"))
        #expect(none.setCookieLine(forBackendAt: 0, secure: true).contains("; Max-Age=1; SameSite=None; Secure\r\n"))
    }

    @Test("sticky: {} keeps the defaults", arguments: ["{}", "{ }"])
    func stickyDefaultsWhenEmpty(text: String) throws {
        let configuration = try parse(validTenant + "\n    sticky: \(text)\n")
        #expect(configuration.tenants[0].sticky == StickySessionConfiguration())
    }

    @Test(
        "A cookie name that is not an RFC token is refused",
        arguments: ["a b", "x;y", "a=b", "a,b", "\\\"q\\\"", "(c)", "a/b", "é", "a\\tb"]
    )
    func invalidCookieNames(name: String) throws {
        try Refusal(
            validTenant + "\n    sticky: { cookie: \"\(name)\" }\n",
            key: "tenants[0].sticky.cookie",
            line: 5,
            reason: "is not a valid cookie name; use letters, digits and !#$%&'*+-.^_`|~"
        )
        .check()
    }

    // MARK: - Durations

    @Test(arguments: [
        ("500ms", TimeAmount.milliseconds(500)), ("2s", .seconds(2)), ("5m", .minutes(5)), ("1h", .hours(1)),
        ("90s", .seconds(90)), ("1ms", .milliseconds(1)), ("\"30s\"", .seconds(30)),
    ])
    func validDurations(text: String, expected: TimeAmount) throws {
        #expect(try parse("timeouts:\n  keepalive: \(text)\n").timeouts.keepAlive == expected)
    }

    @Test(arguments: [
        ("5", "expected a duration such as 500ms, 2s, 5m or 1h, found '5' (a number needs a unit"),
        ("2x", "expected a duration such as 500ms, 2s, 5m or 1h, found '2x'"),
        ("-1s", "expected a duration such as 500ms, 2s, 5m or 1h, found '-1s'"),
        ("0s", "must be greater than zero"),
        ("0ms", "must be greater than zero"),
        ("1.5s", "found '1.5s'"),
        ("1m30s", "found '1m30s'"),
        ("2 s", "found '2 s'"),
        ("s", "found 's'"),
        ("2S", "found '2S'"),
        ("\"\"", "found ''"),
        ("", "found no value"),
        ("[2s]", "found a list"),
        ("99999999999999h", "too long a duration"),
    ])
    func invalidDurations(text: String, reason: String) throws {
        try Refusal(
            "access_log: true\ntimeouts:\n  keepalive: \(text)\n",
            key: "timeouts.keepalive",
            line: 3,
            reason: reason
        )
        .check()
    }

    @Test func durationParser() {
        #expect(TimeAmount.parseConfigurationDuration("250ms") == .success(.milliseconds(250)))
        #expect(TimeAmount.parseConfigurationDuration("0s") == .success(.zero))
        #expect(TimeAmount.parseConfigurationDuration("+1s") == .failure(.malformed))
        #expect(TimeAmount.parseConfigurationDuration("١s") == .failure(.malformed))
        #expect(TimeAmount.parseConfigurationDuration("3000000h") == .failure(.tooLarge))
        #expect(TimeAmount.parseConfigurationDuration("99999999999999999999s") == .failure(.tooLarge))
        #expect(TimeAmount.seconds(90).configurationDescription == "90s")
        #expect(TimeAmount.minutes(120).configurationDescription == "2h")
        #expect(TimeAmount.milliseconds(1500).configurationDescription == "1500ms")
        #expect(TimeAmount.nanoseconds(7).configurationDescription == "7ns")
        #expect(TimeAmount.parseConfigurationDuration("30d") == .success(.hours(720)))
        #expect(TimeAmount.hours(48).configurationDescription == "2d")
        #expect(TimeAmount.parseConfigurationDuration("200000d") == .failure(.tooLarge))
    }

    // MARK: - Domains

    @Test(arguments: [
        ("Shop.TEST", "shop.test"),
        ("shop.test.", "shop.test"),
        ("*.Shop.Test.", "*.shop.test"),
        ("my_service.internal", "my_service.internal"),
        ("xn--caf-dma.test", "xn--caf-dma.test"),
        ("localhost", "localhost"),
        ("10.0.0.5", "10.0.0.5"),
        ("::1", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
    ])
    func domainsAreNormalised(written: String, normalised: String) throws {
        let configuration = try parse(
            """
            tenants:
              - name: t
                domains: ["\(written)"]
                backends: ["10.0.0.5:8080"]
            """
        )
        #expect(configuration.tenants[0].domains == [normalised])
    }

    @Test(arguments: [
        ("shop.*.test", "has a '*' that is not a whole leading label"),
        ("*shop.test", "has a '*' that is not a whole leading label"),
        ("*.*.shop.test", "has a '*' that is not a whole leading label"),
        ("*", "is a bare wildcard"),
        ("*.", "is a bare wildcard"),
        ("shop..test", "has an empty label"),
        (".shop.test", "has an empty label"),
        ("", "is empty"),
        ("shop.test:8080", "is not a domain name; write the name alone"),
        ("https://shop.test", "is not a domain name"),
        ("café.test", "punycode"),
        ("shop test", "contains ' '"),
        ("shop/test", "contains '/'"),
        (String(repeating: "a", count: 64) + ".test", "has a label longer than 63 characters"),
        (Array(repeating: String(repeating: "a", count: 50), count: 5).joined(separator: "."), "longer than 253"),
        ("999.1.1.1", "is not a valid IPv4 address"),
        ("shop.123", "is not a valid IPv4 address"),
        ("*.10.0.0.1", "is a wildcard over an IP address"),
        ("*.com", "is a wildcard over a whole top-level domain"),
        ("*.Test.", "is a wildcard over a whole top-level domain"),
        ("*.localhost", "is a wildcard over a whole top-level domain"),
        ("-shop.test", "has a label that starts or ends with '-' ('-shop')"),
        ("shop-.test", "has a label that starts or ends with '-' ('shop-')"),
        ("shop.-test", "has a label that starts or ends with '-'"),
        ("[shop.test]", "is not a domain name"),
    ])
    func invalidDomains(written: String, reason: String) throws {
        try Refusal(
            """
            tenants:
              - name: t
                domains:
                  - a.test
                  - "\(written)"
                backends: ["10.0.0.5:8080"]
            """,
            key: "tenants[0].domains[1]",
            line: 5,
            reason: reason
        ).check()
    }

    @Test func wildcardDomainMayNotReplaceTheApex() throws {
        // `*.shop.test` does not cover `shop.test`, so a tenant that wants both lists both.
        let configuration = try parse(
            "tenants:\n  - { name: a, domains: [shop.test, \"*.shop.test\"], backends: [\"10.0.0.5:1\"] }\n"
        )
        #expect(configuration.tenants[0].domains == ["shop.test", "*.shop.test"])
    }

    @Test("a wildcard over a whole top-level domain loads when its tenant says allow_broad_wildcards: true")
    func broadWildcardWhenForced() throws {
        let configuration = try parse(
            """
            tenants:
              - name: catch-all
                allow_broad_wildcards: true
                domains: ["*.test", "*.Localhost", "*.shop.test"]
                backends: ["10.0.0.5:8080"]
              - name: other
                domains: ["*.blog.test"]
                backends: ["10.0.0.6:8080"]
            """
        )
        #expect(configuration.tenants[0].domains == ["*.test", "*.localhost", "*.shop.test"])
        // The key is the tenant's own: another tenant without it is still refused such a wildcard.
        try Refusal(
            """
            tenants:
              - name: a
                allow_broad_wildcards: true
                domains: ["*.test"]
                backends: ["10.0.0.5:8080"]
              - name: b
                allow_broad_wildcards: false
                domains: ["*.example"]
                backends: ["10.0.0.6:8080"]
            """,
            key: "tenants[1].domains[0]",
            line: 8,
            reason: "'*.example' is a wildcard over a whole top-level domain: every name under it would route to "
                + "this tenant; list the tenant's own names (e.g. *.shop.test), or set allow_broad_wildcards: true "
                + "on the tenant if that is really meant"
        ).check()
        try Refusal(
            validTenant + "\n    allow_broad_wildcards: yes\n",
            key: "tenants[0].allow_broad_wildcards",
            line: 5,
            reason: "expected true or false, found 'yes'"
        ).check()
    }

    @Test func domainOfTwoTenantsIsRefusedNamingBoth() throws {
        let error = try refusal(
            """
            tenants:
              - name: shop
                domains: [shop.test, "*.shop.test"]
                backends: ["10.0.0.5:8080"]
              - name: blog
                domains:
                  - blog.test
                  - "*.SHOP.test."
                backends: ["10.0.0.6:8080"]
            """
        )
        #expect(error.key == "tenants[1].domains[1]")
        #expect(error.line == 8)
        #expect(error.reason.contains("'*.shop.test'"))
        #expect(error.reason.contains("tenant 'blog'"))
        #expect(error.reason.contains("tenant 'shop'"))
    }

    @Test func domainListedTwiceInOneTenantIsRefused() throws {
        try Refusal(
            "tenants:\n  - name: a\n    domains: [a.test, A.test.]\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].domains[1]",
            line: 3,
            reason: "'A.test.' is listed twice (as 'a.test')"
        ).check()
    }

    @Test func domainChecksAreReusable() {
        #expect(DomainName.normaliseTenantDomain("WWW.Example.COM.") == .success("www.example.com"))
        #expect(DomainName.hostnameProblem("backend-1.internal") == nil)
        #expect(DomainName.hostnameProblem("backend-1.internal.") == nil)
        #expect(DomainName.hostnameProblem("*.internal") != nil)
        #expect(DomainName.hostnameProblem("a..b") != nil)
    }

    // MARK: - Addresses

    @Test(arguments: [
        ("0.0.0.0:8080", "0.0.0.0", 8080, false),
        ("[::1]:1", "::1", 1, true),
        ("backend.internal:65535", "backend.internal", 65535, false),
    ])
    func hostAndPortParsing(text: String, host: String, port: Int, bracketed: Bool) {
        #expect(HostAndPort.parse(text) == .success(HostAndPort(host: host, isBracketed: bracketed, port: port)))
    }

    @Test(arguments: [
        "localhost:8080",  // a name
        "0.0.0.0",  // no port
        ":8080",  // no host
        "0.0.0.0:",  // empty port
        "0.0.0.0:http",  // named port
        "::1:8080",  // IPv6 without brackets
        "[::1]8080",  // no colon after the bracket
        "[::1:8080",  // unclosed bracket
        "[10.0.0.1]:8080",  // IPv4 in brackets
        "0.0.0.0:0",
        "0.0.0.0:65536",
        "256.0.0.1:80",
    ])
    func invalidListenAddresses(text: String) throws {
        let error = try refusal("listen:\n  http:\n    - 0.0.0.0:80\n    - \"\(text)\"\n")
        #expect(error.key == "listen.http[1]")
        #expect(error.line == 4)
        #expect(error.reason.hasPrefix("'\(text)'"), "reason: \(error.reason)")
    }

    @Test func listenAddressReasons() throws {
        #expect(try refusal("listen: { http: \"localhost:80\" }").reason.contains("is not an IP address"))
        #expect(try refusal("listen: { http: \"::1:80\" }").reason.contains("write an IPv6 address in brackets"))
        #expect(try refusal("listen: { http: \"1.2.3.4:70000\" }").reason.contains("port 70000 is out of range"))
        #expect(
            try refusal("listen: { http: nonsense }").reason
                == "'nonsense' is not HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)"
        )
    }

    @Test func listenAddressListedTwiceIsRefused() throws {
        try Refusal(
            """
            listen:
              http: ["0.0.0.0:8080"]
              https: ["0.0.0.0:8080"]
            tls: { certificate: a.pem, key: a.key }
            """,
            key: "listen.https[0]",
            line: 3,
            reason: "already listed at listen.http[0]"
        ).check()
    }

    @Test(arguments: ["listen:\n", "listen: {}\n", "listen:\n  http: []\n  https: []\n", "listen:\n  http:\n"])
    func listenWithoutAnyAddressIsRefused(yaml: String) throws {
        try Refusal(yaml, key: "listen", line: 1, reason: "has no address").check()
    }

    @Test func httpsWithoutTLSIsRefused() throws {
        let error = try refusal(
            """
            listen:
              http: ["0.0.0.0:8080"]
              https: ["0.0.0.0:8443"]
            """
        )
        #expect(error.key == "listen.https")
        #expect(error.line == 3)
        #expect(error.reason.contains("default certificate"))
        #expect(error.reason.contains("'tls'"))
    }

    @Test func httpsWithOnlyTenantCertificatesIsRefused() throws {
        let error = try refusal(
            """
            listen: { https: "0.0.0.0:8443" }
            tenants:
              - { name: a, domains: [a.test], backends: ["10.0.0.5:1"], certificate: a.pem, key: a.key }
            """
        )
        #expect(error.key == "listen.https")
        #expect(error.line == 1)
    }

    @Test func backendHostNamesAreResolved() throws {
        let configuration = try parse("tenants:\n  - { name: a, domains: [a.test], backends: [\"localhost:8081\"] }\n")
        let backend = try #require(configuration.tenants.first?.backends.first)
        #expect(backend.port == 8081)
        #expect(backend.ipAddress == "127.0.0.1" || backend.ipAddress == "::1")
    }

    @Test(arguments: [
        ("does-not-exist.invalid:80", "the host 'does-not-exist.invalid' does not resolve"),
        ("10.0.0.5", "is not HOST:PORT"),
        ("10.0.0.5:0", "port 0 is out of range"),
        ("10.0.0.5:99999", "port 99999 is out of range"),
        ("http://10.0.0.5:80", "is not HOST:PORT"),
        ("::1:80", "write an IPv6 address in brackets"),
        ("[backend]:80", "in brackets is not an IPv6 address"),
        ("back end:80", "is not HOST:PORT"),
        ("back_end!:80", "contains '!'"),
        ("*.internal:80", "contains '*'"),
        ("300.1.1.1:80", "is not a valid IPv4 address"),
    ])
    func invalidBackends(text: String, reason: String) throws {
        try Refusal(
            """
            tenants:
              - name: shop
                domains: [shop.test]
                backends:
                  - 10.0.0.5:8080
                  - "\(text)"
            """,
            key: "tenants[0].backends[1]",
            line: 6,
            reason: reason
        ).check()
    }

    @Test(arguments: [("10.0.0.5:8080", "10.0.0.5:8080"), ("[::1]:80", "[0:0:0:0:0:0:0:1]:80")])
    func duplicateBackendIsRefused(first: String, second: String) throws {
        try Refusal(
            """
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["\(first)", "\(second)"]
            """,
            key: "tenants[0].backends[1]",
            line: 4,
            reason: "is the same backend as tenants[0].backends[0]"
        ).check()
    }

    @Test func sameBackendInTwoTenantsIsAllowed() throws {
        let configuration = try parse(
            """
            tenants:
              - { name: a, domains: [a.test], backends: ["10.0.0.5:8080"] }
              - { name: b, domains: [b.test], backends: ["10.0.0.5:8080"] }
            """
        )
        #expect(configuration.tenants.count == 2)
    }

    // MARK: - Refusals, one per rule

    static let rules: [Refusal] = [
        // Unknown keys, at every level.
        Refusal(
            "listen_on: 0.0.0.0:80\n",
            key: "listen_on",
            line: 1,
            reason:
                "unknown key 'listen_on'; accepted keys: listen, workers, io, admin, state, state_password_file, state_cache, tls, access_log, timeouts, "
                + "limits, tenants"
        ),
        Refusal(
            "state: a\ntenant: []\n",
            key: "tenant",
            line: 2,
            reason: "unknown key 'tenant' (did you mean 'tenants'?)"
        ),
        Refusal("accessLog: true\n", key: "accessLog", line: 1, reason: "(did you mean 'access_log'?)"),
        Refusal(
            "listen:\n  http: \"0.0.0.0:80\"\n  htps: []\n",
            key: "listen.htps",
            line: 3,
            reason: "unknown key 'htps' (did you mean 'https'?); accepted keys: http, https"
        ),
        Refusal("admin:\n  path: a.sock\n", key: "admin.path", line: 2, reason: "accepted keys: socket"),
        Refusal(
            "tls:\n  cert: a.pem\n  key: a.key\n",
            key: "tls.cert",
            line: 2,
            reason: "accepted keys: certificate, key"
        ),
        Refusal(
            "timeouts:\n  keep_alive: 5s\n",
            key: "timeouts.keep_alive",
            line: 2,
            reason: "(did you mean 'keepalive'?)"
        ),
        Refusal(
            "timeouts:\n  read: 5s\n",
            key: "timeouts.read",
            line: 2,
            reason:
                "accepted keys: client_header, keepalive, client_body, upstream_connect, upstream_response, "
                + "upstream_idle, tls_handshake, tunnel_idle, drain"
        ),
        Refusal(
            "limits:\n  max_header_size: 5\n",
            key: "limits.max_header_size",
            line: 2,
            reason: "unknown key 'max_header_size'"
        ),
        Refusal(
            validTenant + "\n    domain: [shop.test]\n",
            key: "tenants[0].domain",
            line: 5,
            reason:
                "unknown key 'domain' (did you mean 'domains'?); accepted keys: name, domains, backends, certificate, "
                + "key, health"
        ),
        Refusal(
            validTenant + "\n    health: { path: /, intervall: 2s }\n",
            key: "tenants[0].health.intervall",
            line: 5,
            reason: "(did you mean 'interval'?)"
        ),
        Refusal("<<: { state: x }\n", key: "<<", line: 1, reason: "unknown key '<<'"),
        Refusal("[a, b]: 1\n", key: "", line: 1, reason: "a key must be a plain name"),

        // Wrong types.
        Refusal("- listen\n- tenants\n", key: "", line: 1, reason: "expected a mapping with the keys listen, workers"),
        Refusal("just some text\n", key: "", line: 1, reason: "found 'just some text'"),
        Refusal(
            "listen: 0.0.0.0:80\n",
            key: "listen",
            line: 1,
            reason: "expected a mapping with the keys http, https; found '0.0.0.0:80'"
        ),
        Refusal(
            "listen:\n  http:\n    a: b\n",
            key: "listen.http",
            line: 2,
            reason: "expected a list of HOST:PORT addresses (or a single one), found a mapping"
        ),
        Refusal(
            "listen:\n  http:\n    - [\"0.0.0.0:80\"]\n",
            key: "listen.http[0]",
            line: 3,
            reason: "expected a HOST:PORT address, found a list"
        ),
        Refusal("tenants: shop\n", key: "tenants", line: 1, reason: "expected a list of tenants, found 'shop'"),
        Refusal(
            "tenants:\n  - shop\n",
            key: "tenants[0]",
            line: 2,
            reason: "expected a mapping with the keys name, domains"
        ),
        Refusal("timeouts: 5s\n", key: "timeouts", line: 1, reason: "expected a mapping"),
        Refusal("timeouts:\n  - keepalive: 5s\n", key: "timeouts", line: 1, reason: "found a list"),
        Refusal("access_log: maybe\n", key: "access_log", line: 1, reason: "expected true or false, found 'maybe'"),
        Refusal("access_log:\n", key: "access_log", line: 1, reason: "expected true or false, found no value"),
        Refusal(
            "state:\n",
            key: "state",
            line: 1,
            reason: "expected the path of the state database, or postgres://USER@HOST:PORT/DATABASE, found no value"
        ),
        Refusal(
            "state: postgres://lb:pw@db/fleet\n",
            key: "state",
            line: 1,
            reason: "the PostgreSQL URL holds a password; put it in `state_password_file`"
        ),
        Refusal(
            "state_password_file: \"\"\n",
            key: "state_password_file",
            line: 1,
            reason: "must not be empty"
        ),
        Refusal("state: \"\"\n", key: "state", line: 1, reason: "must not be empty"),
        Refusal(
            "change_log:\n  max_age: 0s\n",
            key: "change_log.max_age",
            line: 2,
            reason: "must be greater than zero"
        ),
        Refusal("change_log:\n  max_age: 30\n", key: "change_log.max_age", line: 2, reason: "needs a unit"),
        Refusal("change_log:\n  max_changes: 0\n", key: "change_log.max_changes", line: 2, reason: "out of range"),
        Refusal("change_log:\n  keep: 5\n", key: "change_log.keep", line: 2, reason: "unknown key 'keep'"),
        Refusal("state: [a, b]\n", key: "state", line: 1, reason: "found a list"),
        Refusal(
            "admin:\n  socket: { a: b }\n",
            key: "admin.socket",
            line: 2,
            reason: "expected the path of the admin unix socket, found a mapping"
        ),
        Refusal(
            validTenant.replacingOccurrences(of: "[shop.test]", with: "shop.test"),
            key: "tenants[0].domains",
            line: 3,
            reason: "expected a list of domain names, found 'shop.test'"
        ),
        Refusal(
            validTenant.replacingOccurrences(of: "[\"10.0.0.5:8080\"]", with: "{ a: 1 }"),
            key: "tenants[0].backends",
            line: 4,
            reason: "expected a list of HOST:PORT addresses, found a mapping"
        ),
        Refusal(
            validTenant + "\n    health: /healthz\n",
            key: "tenants[0].health",
            line: 5,
            reason: "expected a mapping with the keys path, host, status, interval, timeout, rise, fall; "
                + "found '/healthz'"
        ),

        // io.
        Refusal("io: uring\n", key: "io", line: 1, reason: "'uring' is not an event loop; use nio or epoll"),

        // workers.
        Refusal(
            "workers: 0\n",
            key: "workers",
            line: 1,
            reason: "0 is out of range; expected an integer from 1 to 256"
        ),
        Refusal("workers: 257\n", key: "workers", line: 1, reason: "257 is out of range"),
        Refusal("workers: -1\n", key: "workers", line: 1, reason: "out of range"),
        Refusal(
            "workers: many\n",
            key: "workers",
            line: 1,
            reason: "expected auto or an integer from 1 to 256, found 'many'"
        ),
        Refusal(
            "workers: 2.5\n",
            key: "workers",
            line: 1,
            reason: "expected auto or an integer from 1 to 256, found '2.5'"
        ),

        // limits.
        Refusal(
            "limits:\n  max_header_bytes: 1023\n",
            key: "limits.max_header_bytes",
            line: 2,
            reason: "1023 is out of range; expected an integer from 1024 to 1048576"
        ),
        Refusal(
            "limits:\n  max_header_bytes: 1048577\n",
            key: "limits.max_header_bytes",
            line: 2,
            reason: "out of range"
        ),
        Refusal(
            "limits:\n  max_headers: 0\n",
            key: "limits.max_headers",
            line: 2,
            reason: "expected an integer from 1 to 10000"
        ),
        Refusal("limits:\n  max_headers: 10001\n", key: "limits.max_headers", line: 2, reason: "out of range"),
        Refusal(
            "limits:\n  max_connections: 0\n",
            key: "limits.max_connections",
            line: 2,
            reason: "expected an integer of at least 1"
        ),
        Refusal(
            "limits:\n  upstream_keepalive: -1\n",
            key: "limits.upstream_keepalive",
            line: 2,
            reason: "expected an integer of at least 0"
        ),
        Refusal("limits:\n  max_headers: 1e3\n", key: "limits.max_headers", line: 2, reason: "found '1e3'"),
        Refusal("limits:\n  max_headers: 0x10\n", key: "limits.max_headers", line: 2, reason: "found '0x10'"),
        Refusal(
            "limits:\n  max_connections: 99999999999999999999\n",
            key: "limits.max_connections",
            line: 2,
            reason: "expected an integer"
        ),

        // admin, tls.
        Refusal(
            "admin:\n  socket: /\(String(repeating: "d", count: 110)).sock\n",
            key: "admin.socket",
            line: 2,
            reason: "a unix socket path must be at most 103 bytes"
        ),
        Refusal(
            "tls:\n  certificate: a.pem\n",
            key: "tls.key",
            line: 1,
            reason: "is required: the path of the certificate's PEM private key"
        ),
        Refusal(
            "tls:\n  key: a.key\n",
            key: "tls.certificate",
            line: 1,
            reason: "is required: the path of a PEM certificate chain"
        ),
        Refusal("tls:\n", key: "tls.certificate", line: 1, reason: "is required"),
        Refusal(
            "tls: { certificate: \"\", key: a.key }\n",
            key: "tls.certificate",
            line: 1,
            reason: "must not be empty"
        ),

        // Tenants.
        Refusal(
            "tenants:\n  - domains: [a.test]\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].name",
            line: 2,
            reason: "is required: a name of letters, digits, '.', '_' and '-' (at most 64)"
        ),
        Refusal(
            "tenants:\n  - name: shop/eu\n    domains: [a.test]\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].name",
            line: 2,
            reason: "'shop/eu' is not a valid tenant name"
        ),
        Refusal(
            "tenants:\n  - name: \(String(repeating: "n", count: 65))\n"
                + "    domains: [a.test]\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].name",
            line: 2,
            reason: "is not a valid tenant name"
        ),
        Refusal(
            "tenants:\n  - name: \"\"\n    domains: [a.test]\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].name",
            line: 2,
            reason: "must not be empty"
        ),
        Refusal(
            validTenant + "\n  - name: shop\n    domains: [b.test]\n    backends: [\"10.0.0.6:1\"]\n",
            key: "tenants[1].name",
            line: 5,
            reason: "tenant 'shop' is already declared at tenants[0]; names must be unique"
        ),
        Refusal(
            "tenants:\n  - name: a\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].domains",
            line: 2,
            reason: "is required: a list of the domains the tenant owns"
        ),
        Refusal(
            "tenants:\n  - name: a\n    domains: []\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].domains",
            line: 3,
            reason: "must list at least one domain"
        ),
        Refusal(
            "tenants:\n  - name: a\n    domains:\n    backends: [\"10.0.0.5:1\"]\n",
            key: "tenants[0].domains",
            line: 3,
            reason: "must list at least one domain"
        ),
        Refusal(
            "tenants:\n  - name: a\n    domains: [a.test]\n",
            key: "tenants[0].backends",
            line: 2,
            reason: "is required: a list of HOST:PORT backend addresses"
        ),
        Refusal(
            "tenants:\n  - name: a\n    domains: [a.test]\n    backends: []\n",
            key: "tenants[0].backends",
            line: 4,
            reason: "must list at least one HOST:PORT backend"
        ),
        Refusal(
            validTenant + "\n    certificate: shop.pem\n",
            key: "tenants[0].certificate",
            line: 5,
            reason: "is set but 'key' is missing; a tenant certificate needs both 'certificate' and 'key', or neither"
        ),
        Refusal(
            validTenant + "\n    key: shop.key\n",
            key: "tenants[0].key",
            line: 5,
            reason: "is set but 'certificate' is missing"
        ),
        Refusal(
            validTenant + "\n    certificate:\n    key: shop.key\n",
            key: "tenants[0].certificate",
            line: 5,
            reason: "found no value"
        ),

        // Health checks.
        Refusal(
            validTenant + "\n    health: { path: healthz }\n",
            key: "tenants[0].health.path",
            line: 5,
            reason: "'healthz' must start with '/'"
        ),
        Refusal(
            validTenant + "\n    health: { path: \"/health z\" }\n",
            key: "tenants[0].health.path",
            line: 5,
            reason: "must not contain spaces"
        ),
        Refusal(
            validTenant + "\n    health:\n      interval: 2s\n      timeout: 2001ms\n",
            key: "tenants[0].health.timeout",
            line: 7,
            reason: "the timeout (2001ms) must not be longer than the interval (2s)"
        ),
        Refusal(
            validTenant + "\n    health:\n      interval: 1s\n",
            key: "tenants[0].health.interval",
            line: 6,
            reason: "the timeout (2s) must not be longer than the interval (1s)"
        ),
        Refusal(
            validTenant + "\n    health:\n      timeout: 1m\n",
            key: "tenants[0].health.timeout",
            line: 6,
            reason: "the timeout (1m) must not be longer than the interval (15s)"
        ),
        Refusal(
            validTenant + "\n    health:\n      interval: 0s\n",
            key: "tenants[0].health.interval",
            line: 6,
            reason: "must be greater than zero"
        ),
        Refusal(
            validTenant + "\n    health: { rise: 0 }\n",
            key: "tenants[0].health.rise",
            line: 5,
            reason: "0 is out of range; expected an integer from 1 to 100"
        ),
        Refusal(
            validTenant + "\n    health: { fall: 101 }\n",
            key: "tenants[0].health.fall",
            line: 5,
            reason: "101 is out of range"
        ),

        // Sticky sessions.
        Refusal(
            validTenant + "\n    stiky: true\n",
            key: "tenants[0].stiky",
            line: 5,
            reason: "unknown key 'stiky' (did you mean 'sticky'?)"
        ),
        Refusal(
            validTenant + "\n    sticky: { cookie: sid, path: / }\n",
            key: "tenants[0].sticky.path",
            line: 5,
            reason: "unknown key 'path'; accepted keys: cookie, max_age, same_site"
        ),
        Refusal(
            validTenant + "\n    sticky:\n      cookie: sid\n      maxage: 1h\n",
            key: "tenants[0].sticky.maxage",
            line: 7,
            reason: "unknown key 'maxage' (did you mean 'max_age'?); accepted keys: cookie, max_age, same_site"
        ),
        Refusal(
            validTenant + "\n    sticky: maybe\n",
            key: "tenants[0].sticky",
            line: 5,
            reason: "expected true or false, found 'maybe'"
        ),
        Refusal(
            validTenant + "\n    sticky: yes\n",
            key: "tenants[0].sticky",
            line: 5,
            reason: "expected true or false, found 'yes' (YAML 1.1 spellings are not booleans here"
        ),
        Refusal(
            validTenant + "\n    sticky: \"true\"\n",
            key: "tenants[0].sticky",
            line: 5,
            reason: "expected true or false, found the quoted string 'true'"
        ),
        Refusal(
            validTenant + "\n    sticky: [sid]\n",
            key: "tenants[0].sticky",
            line: 5,
            reason: "expected a mapping with the keys cookie, max_age, same_site; found a list"
        ),
        Refusal(
            validTenant + "\n    sticky:\n      cookie: \"a b\"\n",
            key: "tenants[0].sticky.cookie",
            line: 6,
            reason: "'a b' is not a valid cookie name"
        ),
        Refusal(
            validTenant + "\n    sticky: { cookie: \"x;y\" }\n",
            key: "tenants[0].sticky.cookie",
            line: 5,
            reason: "'x;y' is not a valid cookie name; use letters, digits and !#$%&'*+-.^_`|~ (no spaces, '=' or ';')"
        ),
        Refusal(
            validTenant + "\n    sticky: { cookie: \"\" }\n",
            key: "tenants[0].sticky.cookie",
            line: 5,
            reason: "must not be empty; expected a cookie name such as switchyard_backend"
        ),
        Refusal(
            validTenant + "\n    sticky: { cookie: [a] }\n",
            key: "tenants[0].sticky.cookie",
            line: 5,
            reason: "expected a cookie name such as switchyard_backend, found a list"
        ),
        Refusal(
            validTenant + "\n    sticky:\n      max_age: 500ms\n",
            key: "tenants[0].sticky.max_age",
            line: 6,
            reason: "must be a whole number of seconds, at least 1s (cookies count their age in seconds)"
        ),
        Refusal(
            validTenant + "\n    sticky: { max_age: 1500ms }\n",
            key: "tenants[0].sticky.max_age",
            line: 5,
            reason: "must be a whole number of seconds, at least 1s (cookies count their age in seconds)"
        ),
        Refusal(
            validTenant + "\n    sticky: { same_site: loose }\n",
            key: "tenants[0].sticky.same_site",
            line: 5,
            reason: "'loose' is not a SameSite value; expected lax, strict, none"
        ),
        Refusal(
            validTenant + "\n    sticky: { cookie: __Host-route }\n",
            key: "tenants[0].sticky",
            line: 5,
            reason: "the cookie '__Host-route' can only be set over HTTPS (browsers refuse __Secure- and __Host- "
                + "cookies without Secure); set https_redirect: true for this tenant, or choose another name"
        ),
        Refusal(
            validTenant + "\n    sticky: { max_age: 0s }\n",
            key: "tenants[0].sticky.max_age",
            line: 5,
            reason: "must be greater than zero"
        ),
        Refusal(
            validTenant + "\n    sticky: { max_age: 3600 }\n",
            key: "tenants[0].sticky.max_age",
            line: 5,
            reason: "(a number needs a unit: ms, s, m, h or d)"
        ),

        // YAML syntax.
        Refusal(
            "listen:\n  http: [\"0.0.0.0:80\"\nstate: x\n",
            key: "",
            line: 3,
            reason: "invalid YAML: did not find expected ',' or ']'"
        ),
        Refusal(
            "state: a: b\n",
            key: "",
            line: 1,
            reason: "invalid YAML: mapping values are not allowed in this context"
        ),
        Refusal("state: a\n\tworkers: 2\n", key: "", line: 2, reason: "invalid YAML"),
        Refusal("state: a\nworkers: 2\nstate: b\n", key: "", line: 1, reason: "invalid YAML: duplicate key 'state'"),
        Refusal("state: a\n---\nstate: b\n", key: "", line: 2, reason: "invalid YAML: but found another document"),
        Refusal("backends: *missing\n", key: "", line: 1, reason: "invalid YAML: found undefined alias"),
    ]

    @Test(arguments: Self.rules)
    func eachRuleIsEnforced(_ rule: Refusal) throws {
        try rule.check()
    }

    // MARK: - Errors and files

    @Test func errorDescription() {
        let full = ConfigurationError(
            file: "Config/switchyard.yaml",
            line: 12,
            key: "tenants[1].backends[0]",
            reason: "'foo' is not HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)"
        )
        #expect(
            full.description
                == "Config/switchyard.yaml:12: tenants[1].backends[0]: "
                + "'foo' is not HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)"
        )
        let noLine = ConfigurationError(file: "a.yaml", line: nil, key: "", reason: "cannot read the file: boom")
        #expect(noLine.description == "a.yaml: cannot read the file: boom")
        let noKey = ConfigurationError(file: "a.yaml", line: 3, key: "", reason: "invalid YAML: oops")
        #expect(noKey.description == "a.yaml:3: invalid YAML: oops")
    }

    @Test func errorFromTheLoaderReadsWell() throws {
        let error = try refusal(validTenant.replacingOccurrences(of: "10.0.0.5:8080", with: "foo"))
        #expect(
            error.description
                == "Config/test.yaml:4: tenants[0].backends[0]: "
                + "'foo' is not HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)"
        )
    }

    @Test func loadReadsTheFileAndNamesItInErrors() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("switchyard-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let good = directory.appendingPathComponent("good.yaml").path
        try Data((validTenant + "\nworkers: 2\n").utf8).write(to: URL(fileURLWithPath: good))
        let configuration = try ConfigurationLoader.load(path: good)
        #expect(configuration.workers == 2)
        #expect(configuration.tenants.map(\.name) == ["shop"])

        let bad = directory.appendingPathComponent("bad.yaml").path
        try Data("workers: 2\nwrokers: 3\n".utf8).write(to: URL(fileURLWithPath: bad))
        let badError = try #require(throws: ConfigurationError.self) { try ConfigurationLoader.load(path: bad) }
        #expect(badError.file == bad)
        #expect(badError.line == 2)
        #expect(badError.key == "wrokers")
        #expect(badError.description.hasPrefix("\(bad):2: wrokers: unknown key 'wrokers' (did you mean 'workers'?)"))
    }

    @Test func missingFileIsRefused() throws {
        let path = "/nonexistent-\(UUID().uuidString)/switchyard.yaml"
        let error = try #require(throws: ConfigurationError.self) { try ConfigurationLoader.load(path: path) }
        #expect(
            error
                == ConfigurationError(
                    file: path,
                    line: nil,
                    key: "",
                    reason: "cannot read the file: No such file or directory"
                )
        )
    }

    @Test func directoryIsRefused() throws {
        let path = FileManager.default.temporaryDirectory.path
        let error = try #require(throws: ConfigurationError.self) { try ConfigurationLoader.load(path: path) }
        #expect(error.file == path)
        #expect(error.reason.hasPrefix("cannot read the file: "))
    }

    @Test func nonUTF8FileIsRefused() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-\(UUID().uuidString).yaml")
        try Data([0x73, 0x74, 0x61, 0x74, 0x65, 0x3A, 0x20, 0xFF, 0xFE, 0x0A]).write(to: path)
        defer { try? FileManager.default.removeItem(at: path) }
        let error = try #require(throws: ConfigurationError.self) { try ConfigurationLoader.load(path: path.path) }
        #expect(error.reason == "cannot read the file: it is not UTF-8 text")
    }
}
