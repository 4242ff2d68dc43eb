import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Switchyard

/// How the health checker shares one probe between tenants' backends (see ``HealthCheckKey``) and fans its
/// verdicts out.
@Suite("Health check sharing")
struct HealthCheckSharingTests {
    @Test("checks are shared by address, settings and, for HTTP checks, the Host they send")
    func plan() throws {
        let a = try SocketAddress(ipAddress: "10.0.0.5", port: 8080)
        let b = try SocketAddress(ipAddress: "10.0.0.6", port: 8080)
        let http = HealthCheckConfiguration(path: "/healthz")
        let configuration = Configuration(tenants: [
            // TCP checks: the Host does not matter, so the three on `a` share one.
            TenantConfiguration(name: "t1", domains: ["t1.test"], backends: [a, b]),
            TenantConfiguration(name: "t2", domains: ["t2.test"], backends: [a]),
            TenantConfiguration(name: "t3", domains: ["t3.test"], backends: [a]),
            // HTTP checks send each tenant's own domain as Host: one each.
            TenantConfiguration(name: "h1", domains: ["h1.test"], backends: [a], health: http),
            TenantConfiguration(name: "h2", domains: ["h2.test"], backends: [a], health: http),
        ])
        let plan = HealthChecker.plan(try RouteTable(configuration: configuration))
        #expect(plan.count == 4)
        let tcpOnA = HealthCheckKey(address: a, settings: HealthCheckConfiguration(), host: "anything")
        #expect(plan[tcpOnA]?.map(\.tenant) == ["t1", "t2", "t3"])
        #expect(plan[HealthCheckKey(address: a, settings: http, host: "h1.test")]?.map(\.tenant) == ["h1"])
    }

    @Test("a backend that joins a check whose backend is down is down at once")
    func joiningWhileDown() throws {
        let loop = EmbeddedEventLoop()
        let address = try SocketAddress(ipAddress: "10.0.0.5", port: 8080)
        let first = Backend(address: address)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let check = BackendCheck(
            backend: first,
            tenant: "a",
            settings: HealthCheckConfiguration(interval: .seconds(1), timeout: .milliseconds(500), rise: 1, fall: 1),
            host: "a.test",
            eventLoop: loop,
            logger: logger
        )
        check.record(.verdict(.failure("connection refused")))
        #expect(!first.status.isActivelyUp)
        let second = Backend(address: address)
        check.update([.init(backend: first, tenant: "a"), .init(backend: second, tenant: "b")])
        #expect(!second.status.isActivelyUp)
        check.record(.verdict(.success))
        #expect(first.status.isActivelyUp && second.status.isActivelyUp)
        check.stop()
    }
}
