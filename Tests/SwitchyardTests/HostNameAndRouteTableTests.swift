import NIOCore
import Testing

@testable import Switchyard

private func backend(_ port: Int) throws -> Backend {
    Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: port))
}

/// Normalisation of `Host` values and TLS server names: lower case, port and trailing dot removed, IPv6 literals
/// kept in brackets, and everything that is not a syntactically valid host refused.
@Suite("HostName.normalize")
struct HostNameTests {
    @Test(
        "valid hosts are normalised",
        arguments: [
            ("shop.test", "shop.test"),
            ("Shop.TEST", "shop.test"),
            ("shop.test:8080", "shop.test"),
            ("SHOP.test:443", "shop.test"),
            ("shop.test.", "shop.test"),
            ("Shop.Test.:8443", "shop.test"),
            ("shop.test:", "shop.test"),
            ("shop.test:65535", "shop.test"),
            ("localhost", "localhost"),
            ("my-site_1.example", "my-site_1.example"),
            ("a-b.c--d.xn--caf-dma.test", "a-b.c--d.xn--caf-dma.test"),
            ("_dmarc.shop.test", "_dmarc.shop.test"),
            ("1.2", "1.2"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[::1]:8080", "[::1]"),
            ("[::1]:", "[::1]"),
            ("[2001:DB8::A]", "[2001:db8::a]"),
            ("[2001:db8::1]:443", "[2001:db8::1]"),
            ("[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]"),
        ]
    )
    func valid(input: String, expected: String) {
        #expect(HostName.normalize(input) == expected)
    }

    @Test(
        "invalid hosts are refused",
        arguments: [
            "",
            " ",
            "shop test",
            " shop.test",
            "shop.test ",
            "a..b",
            ".shop.test",
            "shop.test..",
            ".",
            ":8080",
            "host:99999",
            "host:65536",
            "host:123456",
            "host:abc",
            "host:80x",
            "host:-1",
            "a:b:80",
            "[zz]",
            "[]",
            "[::1",
            "[::1]x",
            "[::1]:99999",
            "[::1]:abc",
            "[::1%eth0]",
            "::1",
            "shop/test",
            "shop@test",
            "shop%2etest",
            "sh\u{0}op.test",
            "caf\u{E9}.test",
            String(repeating: "a", count: 301),
        ]
    )
    func invalid(input: String) {
        #expect(HostName.normalize(input) == nil)
    }

    /// Three labels of 63 bytes and one of 61: 3 × 64 + 61 = 253 bytes, the longest name DNS allows.
    private static let longestName =
        Array(repeating: String(repeating: "a", count: 63), count: 3).joined(separator: ".") + "."
        + String(repeating: "b", count: 61)

    @Test(
        "labels of more than 63 bytes, labels starting or ending with '-' and names over 253 bytes are refused",
        arguments: [
            String(repeating: "a", count: 64),
            String(repeating: "a", count: 64) + ".shop.test",
            "shop." + String(repeating: "a", count: 64),
            "shop." + String(repeating: "a", count: 64) + ":8080",
            "-shop.test",
            "shop-.test",
            "shop.-test",
            "shop.test-",
            "shop.test-.",
            "shop.test-:80",
            "-",
            "a.-.b",
            "-shop.test:8080",
            longestName + "b",
            longestName + "b.",
            Array(repeating: String(repeating: "a", count: 63), count: 4).joined(separator: ".") + ".a",
            String(repeating: "a.", count: 127) + "a",
        ]
    )
    func dnsLimits(input: String) {
        #expect(HostName.normalize(input) == nil)
        let bytes = Array(input.utf8)
        #expect(bytes.withUnsafeBytes { HostName.normalize($0) } == nil)
    }

    @Test("the longest name (253 bytes, labels of 63) is normalised, with a trailing dot and a port too")
    func longestHost() {
        let name = Self.longestName
        #expect(name.utf8.count == 253)
        #expect(HostName.normalize(name) == name)
        #expect(HostName.normalize(name.uppercased() + ".:65535") == name)
        let label = String(repeating: "z", count: 63)
        #expect(HostName.normalize("\(label).test") == "\(label).test")
        #expect(HostName.normalize("a-\(label.dropFirst(2)).test:8080") == "a-\(label.dropFirst(2)).test")
        #expect(HostName.normalize(String(repeating: "a.", count: 126) + "a") != nil)
    }

    @Test("the byte and string forms agree")
    func bytesForm() {
        let bytes = Array("WWW.Shop.Test:8080".utf8)
        let normalized = bytes.withUnsafeBytes { HostName.normalize($0) }
        #expect(normalized == "www.shop.test")
        #expect([UInt8]().withUnsafeBytes { HostName.normalize($0) } == nil)
    }
}

/// Lookups in the routing snapshot: exact names, wildcard suffixes and their precedence, duplicate domains, and the
/// atomic publication of a new table through ``RouteSource``.
@Suite("RouteTable and RouteSource")
struct RouteTableTests {
    private let shop: Tenant
    private let api: Tenant
    private let admin: Tenant
    private let table: RouteTable

    init() throws {
        shop = Tenant(name: "shop", domains: ["shop.test", "*.shop.test"], backends: [try backend(9001)])
        api = Tenant(name: "api", domains: ["*.api.shop.test"], backends: [try backend(9002)])
        admin = Tenant(name: "admin", domains: ["admin.shop.test", "admin.test"], backends: [try backend(9003)])
        table = try RouteTable(tenants: [shop, api, admin])
    }

    private func lookup(_ host: String) -> String? {
        table.tenant(forNormalizedHost: host)?.name
    }

    @Test("an exact name is found")
    func exact() {
        #expect(table.tenant(forNormalizedHost: "shop.test") === shop)
        #expect(table.tenant(forNormalizedHost: "admin.test") === admin)
    }

    @Test("an exact name beats a wildcard that also matches")
    func exactBeatsWildcard() {
        #expect(lookup("admin.shop.test") == "admin")
        #expect(lookup("www.shop.test") == "shop")
    }

    @Test("a longer wildcard suffix beats a shorter one")
    func longerWildcardWins() {
        #expect(lookup("v1.api.shop.test") == "api")
        #expect(lookup("a.b.api.shop.test") == "api")
        // The bare suffix of *.api.shop.test is not matched by it, but *.shop.test matches it.
        #expect(lookup("api.shop.test") == "shop")
    }

    @Test("a wildcard matches one or more labels but not the bare suffix")
    func wildcardLabels() throws {
        let only = try RouteTable(tenants: [Tenant(name: "w", domains: ["*.w.test"], backends: [])])
        #expect(only.tenant(forNormalizedHost: "a.w.test")?.name == "w")
        #expect(only.tenant(forNormalizedHost: "a.b.c.w.test")?.name == "w")
        #expect(only.tenant(forNormalizedHost: "w.test") == nil)
        #expect(only.tenant(forNormalizedHost: "aw.test") == nil)
        #expect(only.tenant(forNormalizedHost: "a.w.test.evil") == nil)
        #expect(only.tenant(forNormalizedHost: "test") == nil)
    }

    @Test("an unknown host has no tenant")
    func unknown() {
        #expect(lookup("other.test") == nil)
        #expect(lookup("test") == nil)
        #expect(lookup("xshop.test") == nil)
        #expect(lookup("shop.test.evil") == nil)
        #expect(RouteTable().tenant(forNormalizedHost: "shop.test") == nil)
    }

    @Test("raw Host bytes are normalised before the lookup")
    func rawHost() {
        func tenant(_ host: String) -> String? {
            Array(host.utf8).withUnsafeBytes { table.tenant(forHost: $0)?.name }
        }
        #expect(tenant("Admin.Shop.Test:8080") == "admin")
        #expect(tenant("WWW.shop.test.") == "shop")
        #expect(tenant("shop..test") == nil)
        #expect(tenant("") == nil)
        #expect(tenant("nowhere.test") == nil)
    }

    @Test("the tenants keep their declaration order")
    func tenantsOrder() {
        #expect(table.tenants.map(\.name) == ["shop", "api", "admin"])
    }

    @Test("a domain claimed twice is refused, naming both tenants")
    func duplicateExact() {
        let first = Tenant(name: "first", domains: ["x.test"], backends: [])
        let second = Tenant(name: "second", domains: ["y.test", "x.test"], backends: [])
        #expect(throws: RouteTableError(domain: "x.test", firstTenant: "first", secondTenant: "second")) {
            try RouteTable(tenants: [first, second])
        }
        let error = RouteTableError(domain: "x.test", firstTenant: "first", secondTenant: "second")
        #expect(error.description.contains("x.test"))
        #expect(error.description.contains("first"))
        #expect(error.description.contains("second"))
    }

    @Test("a wildcard claimed twice is refused")
    func duplicateWildcard() {
        let first = Tenant(name: "one", domains: ["*.x.test"], backends: [])
        let second = Tenant(name: "two", domains: ["*.x.test"], backends: [])
        #expect(throws: RouteTableError(domain: "*.x.test", firstTenant: "one", secondTenant: "two")) {
            try RouteTable(tenants: [first, second])
        }
    }

    @Test("a name and the wildcard over it may belong to different tenants")
    func exactAndWildcardDoNotClash() throws {
        let bare = Tenant(name: "bare", domains: ["x.test"], backends: [])
        let sub = Tenant(name: "sub", domains: ["*.x.test"], backends: [])
        let table = try RouteTable(tenants: [bare, sub])
        #expect(table.tenant(forNormalizedHost: "x.test") === bare)
        #expect(table.tenant(forNormalizedHost: "a.x.test") === sub)
    }

    @Test("publishing a table swaps what RouteSource serves; a table already loaded is unchanged")
    func publish() throws {
        let source = RouteSource(table)
        let loaded = source.current
        #expect(source.current.tenant(forNormalizedHost: "shop.test") === shop)

        let moved = Tenant(name: "moved", domains: ["shop.test"], backends: [try backend(9010)])
        source.publish(try RouteTable(tenants: [moved]))

        #expect(source.current.tenant(forNormalizedHost: "shop.test") === moved)
        #expect(source.current.tenant(forNormalizedHost: "admin.test") == nil)
        #expect(source.current.tenants.map(\.name) == ["moved"])
        #expect(loaded.tenant(forNormalizedHost: "shop.test") === shop)
    }
}

/// Backends of different tenants at one address share one ``BackendEndpoint`` (and so the idle connections
/// pooled for it), across reloads too.
@Suite("Backend endpoints")
struct BackendEndpointTests {
    @Test("backends at one address share an endpoint, across tenants and reloads; other addresses do not")
    func sharedEndpoints() throws {
        let shared = try SocketAddress(ipAddress: "10.0.0.5", port: 8080)
        let other = try SocketAddress(ipAddress: "10.0.0.6", port: 8080)
        var configuration = Configuration(tenants: [
            TenantConfiguration(name: "a", domains: ["a.test"], backends: [shared, other]),
            TenantConfiguration(name: "b", domains: ["b.test"], backends: [shared]),
        ])
        let table = try RouteTable(configuration: configuration)
        let a = try #require(table.tenants.first { $0.name == "a" })
        let b = try #require(table.tenants.first { $0.name == "b" })
        #expect(a.backends[0].endpoint === b.backends[0].endpoint)
        #expect(a.backends[0] !== b.backends[0])
        #expect(a.backends[1].endpoint !== a.backends[0].endpoint)

        configuration.tenants.append(TenantConfiguration(name: "c", domains: ["c.test"], backends: [shared]))
        let reloaded = try RouteTable(configuration: configuration, previous: table)
        let c = try #require(reloaded.tenants.first { $0.name == "c" })
        #expect(c.backends[0].endpoint === a.backends[0].endpoint)
    }
}

/// ``RouteTable/replacing(_:with:)``: the incremental update a change of one tenant makes at 10,000 tenants.
@Suite("RouteTable.replacing")
struct RouteTableReplacingTests {
    static let first = try! SocketAddress(ipAddress: "10.0.0.5", port: 8080)
    static let second = try! SocketAddress(ipAddress: "10.0.0.6", port: 8080)

    static func table() throws -> RouteTable {
        try RouteTable(
            configuration: Configuration(tenants: [
                TenantConfiguration(name: "a", domains: ["a.test", "*.a.test"], backends: [first]),
                TenantConfiguration(name: "b", domains: ["b.test"], backends: [first, second]),
            ])
        )
    }

    @Test("the replaced tenant routes its new domains, keeps its kept backends' objects; others are untouched")
    func replacesOne() throws {
        let table = try Self.table()
        let oldB = try #require(table.tenant(named: "b"))
        let a = try #require(table.tenant(named: "a"))
        let changed = try table.replacing(
            ["b"],
            with: [TenantConfiguration(name: "b", domains: ["b.test", "www.b.test"], backends: [Self.second])]
        )
        let newB = try #require(changed.tenant(named: "b"))
        #expect(newB !== oldB)
        #expect(newB.backends[0] === oldB.backends[1])
        #expect(changed.tenant(named: "a") === a)
        #expect(changed.tenant(forNormalizedHost: "www.b.test") === newB)
        #expect(changed.tenant(forDomain: "*.a.test") === a)
        #expect(changed.tenants.map(\.name) == ["a", "b"])
        // The original table is a value: unchanged.
        #expect(table.tenant(forNormalizedHost: "www.b.test") == nil)
        #expect(table.tenant(named: "b") === oldB)
    }

    @Test("a tenant removed takes its domains with it; an address still listed keeps its endpoint")
    func removes() throws {
        let table = try Self.table()
        let endpoint = try #require(table.tenant(named: "a")?.backends[0].endpoint)
        let removed = try table.replacing(["a"], with: [])
        #expect(removed.tenant(forNormalizedHost: "a.test") == nil)
        #expect(removed.tenant(forNormalizedHost: "x.a.test") == nil)
        #expect(removed.tenants.map(\.name) == ["b"])
        let added = try removed.replacing(
            ["c"],
            with: [TenantConfiguration(name: "c", domains: ["c.test"], backends: [Self.first])]
        )
        #expect(added.tenant(named: "c")?.backends[0].endpoint === endpoint)
    }

    @Test("an address no tenant lists any more is let go; one listed again later gets a new endpoint")
    func releasesEndpoints() throws {
        let table = try Self.table()
        let endpoint = try #require(table.tenant(named: "b")?.backends[1].endpoint)
        let without = try table.replacing(
            ["b"],
            with: [TenantConfiguration(name: "b", domains: ["b.test"], backends: [Self.first])]
        )
        let again = try without.replacing(
            ["d"],
            with: [TenantConfiguration(name: "d", domains: ["d.test"], backends: [Self.second])]
        )
        #expect(again.tenant(named: "d")?.backends[0].endpoint !== endpoint)
    }

    @Test("publishing retires the backends the new table no longer has, whole or replacing some tenants")
    func retiresRemovedBackends() throws {
        let table = try Self.table()
        let source = RouteSource(table)
        let a = try #require(table.tenant(named: "a"))
        let b = try #require(table.tenant(named: "b"))
        let edited = try table.replacing(
            ["b"],
            with: [TenantConfiguration(name: "b", domains: ["b.test"], backends: [Self.second])]
        )
        source.publish(edited, replacing: ["b"])
        #expect(b.backends[0].retirement.isRetired)
        #expect(!b.backends[1].retirement.isRetired)
        #expect(!a.backends[0].retirement.isRetired)
        source.publish(try RouteTable(configuration: Configuration(tenants: [])))
        #expect(a.backends[0].retirement.isRetired && b.backends[1].retirement.isRetired)
    }

    @Test("a domain another tenant has is refused, naming both, and the table is unchanged")
    func refusesConflict() throws {
        let table = try Self.table()
        #expect(throws: RouteTableError(domain: "a.test", firstTenant: "a", secondTenant: "c")) {
            _ = try table.replacing(
                ["c"],
                with: [TenantConfiguration(name: "c", domains: ["a.test"], backends: [Self.first])]
            )
        }
        #expect(table.tenant(forNormalizedHost: "a.test")?.name == "a")
    }
}
