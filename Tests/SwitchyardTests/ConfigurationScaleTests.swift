import Testing

@testable import Switchyard

/// Files far larger than usual: a platform tenant with 100,000 domains must load in about the time it takes to read
/// them, and a huge value pasted by mistake must give an error of a few lines, not one as long as the value.
@Suite("Configuration at scale")
struct ConfigurationScaleTests {
    private static let file = "Config/scale.yaml"

    /// One tenant with `count` domains `d0.shop.test`, `d1.shop.test`, …, in block style, one a line.
    private static func tenant(domains count: Int, extraDomain: String? = nil) -> String {
        var yaml = "tenants:\n  - name: big\n    backends: [\"10.0.0.5:8080\"]\n    domains:\n"
        yaml.reserveCapacity(yaml.utf8.count + count * 26)
        for index in 0..<count {
            yaml += "      - d\(index).shop.test\n"
        }
        if let extraDomain {
            yaml += "      - \(extraDomain)\n"
        }
        return yaml
    }

    private static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duplicate check used to scan the tenant's domains so far for each new one: 100,000 domains took over 20 s
    /// in a release build, and 40,000 already 76 s in a debug one. Linear, the whole load (YAML included) takes
    /// about 1.6 s in a debug build; the bound leaves room for a busy two-core CI machine.
    @Test("100,000 domains of one tenant load in linear time, and a duplicate among them is still found")
    func manyDomainsOfOneTenant() throws {
        let count = 100_000
        let yaml = Self.tenant(domains: count)
        let clock = ContinuousClock()
        var configuration: Configuration?
        let elapsed = try clock.measure {
            configuration = try ConfigurationLoader.parse(yaml: yaml, file: Self.file)
        }
        #expect(configuration?.tenants.first?.domains.count == count)
        #expect(Self.seconds(elapsed) < 8, "loading \(count) domains took \(elapsed)")

        let duplicate = Self.tenant(domains: count, extraDomain: "D99999.Shop.Test.")
        #expect {
            _ = try ConfigurationLoader.parse(yaml: duplicate, file: Self.file)
        } throws: { error in
            guard let error = error as? ConfigurationError else { return false }
            return error.key == "tenants[0].domains[\(count)]"
                && error.reason == "'D99999.Shop.Test.' is listed twice (as 'd99999.shop.test')"
        }
    }

    /// Every way an error quotes a value: as found (`workers`), as a domain, a backend, a key and a tenant name. The
    /// bound is loose on purpose: the point is that the error does not grow with the value.
    @Test(
        "an error quoting a huge value quotes its first 80 characters and says how long it is",
        arguments: [
            ("workers: VALUE\n", "workers", "expected auto or an integer from 1 to 256, found 'aaaa"),
            (
                "tenants:\n  - { name: a, domains: [\"VALUE\"], backends: [\"10.0.0.5:1\"] }\n",
                "tenants[0].domains[0]", "is longer than 253 characters"
            ),
            (
                "tenants:\n  - { name: a, domains: [a.test], backends: [\"VALUE\"] }\n",
                "tenants[0].backends[0]", "is not HOST:PORT"
            ),
            (
                "tenants:\n  - { name: VALUE, domains: [a.test], backends: [\"10.0.0.5:1\"] }\n", "tenants[0].name",
                "is not a valid tenant name"
            ),
            // A plain key is at most 1024 characters in YAML; an explicit one (`? KEY`) may be longer.
            ("? VALUE\n: 1\n", String(repeating: "a", count: 80) + "…", "unknown key 'aaaa"),
        ]
    )
    func hugeValueIsQuotedShort(template: String, key: String, reason: String) throws {
        let size = 4 * 1024 * 1024
        let value = String(repeating: "a", count: size)
        let yaml = template.replacingOccurrences(of: "VALUE", with: value)
        let error = try #require(throws: ConfigurationError.self) {
            try ConfigurationLoader.parse(yaml: yaml, file: Self.file)
        }
        #expect(error.key == key)
        #expect(error.reason.contains(reason), "reason: \(error.description.prefix(1000))")
        #expect(error.reason.contains("'" + String(repeating: "a", count: 80) + "…'"))
        #expect(error.reason.contains("'… (\(size) bytes)") || error.reason.contains("…' (\(size) bytes)"))
        #expect(error.description.utf8.count < 600, "description: \(error.description.prefix(1000))")
    }

    @Test("values up to 80 characters are quoted whole")
    func shortValuesAreQuotedWhole() {
        let eighty = String(repeating: "b", count: 80)
        #expect(ConfigurationError.quoted(eighty) == "'\(eighty)'")
        #expect(ConfigurationError.quoted(eighty + "c") == "'\(eighty)…' (81 bytes)")
        #expect(ConfigurationError.quoted("") == "''")
        // Characters, not bytes, are counted for the cut; the length is in bytes.
        let accents = String(repeating: "é", count: 81)
        #expect(ConfigurationError.quoted(accents) == "'\(String(repeating: "é", count: 80))…' (162 bytes)")
        #expect(ConfigurationError.abbreviated(eighty) == eighty)
        #expect(ConfigurationError.abbreviated(eighty + "c") == eighty + "…")
    }

    @Test("control characters in a quoted value are written \\xHH: no ESC sequence reaches the terminal")
    func controlCharactersAreEscaped() {
        #expect(ConfigurationError.quoted("a\u{1B}[2Jb") == "'a\\x1B[2Jb'")
        #expect(ConfigurationError.quoted("line\nforged") == "'line\\x0Aforged'")
        #expect(ConfigurationError.quoted("tab\tdel\u{7F}") == "'tab\\x09del\\x7F'")
        #expect(ConfigurationError.quoted("bücher.test") == "'bücher.test'")
    }
}
