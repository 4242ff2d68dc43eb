import Testing

@testable import Switchyard

/// `health:` keys `host` and `status`.
@Suite("Health check configuration")
struct HealthConfigurationTests {
    private func parse(_ health: String) throws -> HealthCheckConfiguration? {
        let yaml = """
            tenants:
              - name: a
                domains: ["a.test"]
                backends: ["127.0.0.1:1"]
                health: \(health)
            """
        return try ConfigurationLoader.parse(yaml: yaml, file: "t.yaml").tenants.first?.health
    }

    @Test("defaults: 200-399 and the tenant's own host")
    func defaults() throws {
        let health = try #require(try parse("{ path: /healthz }"))
        #expect(health.expectedStatus == 200...399)
        #expect(health.host == nil)
    }

    @Test("a Host override and a status or a range")
    func overrides() throws {
        let range = try #require(try parse("{ path: /healthz, host: Internal.Shop.Test, status: 200-204 }"))
        #expect(range.host == "internal.shop.test")
        #expect(range.expectedStatus == 200...204)
        #expect(try parse("{ path: /, status: 204 }")?.expectedStatus == 204...204)
    }

    @Test("a bad status or host is refused", arguments: ["{ status: 99 }", "{ status: 300-200 }", "{ status: ok }"])
    func refused(health: String) throws {
        #expect {
            _ = try parse(health)
        } throws: { error in
            "\(error)".contains("tenants[0].health.status")
        }
    }

    @Test("a host that is not a host name is refused")
    func badHost() throws {
        #expect {
            _ = try parse("{ host: \"a b\" }")
        } throws: { error in
            "\(error)".contains("tenants[0].health.host: 'a b' is not a host name")
        }
    }

    /// HAProxy's check timeout is its interval unless set, so files written as `{ interval: 1s, timeout: 1s }` are
    /// common; they used to stop `serve` with "the timeout must be shorter than the interval".
    @Test("a timeout equal to the interval is accepted, a longer one refused")
    func timeoutUpToTheInterval() throws {
        let equal = try #require(try parse("{ interval: 1s, timeout: 1s }"))
        #expect(equal.interval == .seconds(1))
        #expect(equal.timeout == .seconds(1))
        #expect(try parse("{ interval: 2s, timeout: 2000ms }")?.timeout == .seconds(2))
        #expect(try parse("{ interval: 2s }")?.timeout == .seconds(2))
        #expect {
            _ = try parse("{ interval: 1s, timeout: 1001ms }")
        } throws: { error in
            "\(error)".contains(
                "tenants[0].health.timeout: the timeout (1001ms) must not be longer than the interval (1s)"
            )
        }
    }
}
