import Logging
import NIOCore
import NIOPosix
import Testing

@testable import Switchyard

/// Tenants whose backends share an address and a check share one probe (issue 10's scale: 10,000 tenants on a few
/// addresses are not probed 10,000 times an interval), and its verdict reaches every one of them.
@Suite("Shared health checks over loopback", .serialized)
struct SharedHealthCheckIntegrationTests {
    @Test("20 tenants on one backend with the same check are probed once an interval, and all go down together")
    func sharedProbe() async throws {
        let backend = try await RestartableBackend.start(name: "shared")
        let health = HealthCheckConfiguration(
            path: "/healthz",
            interval: .milliseconds(200),
            timeout: .milliseconds(150)
        )
        var sharedHealth = health
        sharedHealth.host = "health.test"
        let configuration = Configuration(
            tenants: (0..<20).map { index in
                TenantConfiguration(
                    name: "t\(index)",
                    domains: ["t\(index).test"],
                    backends: [backend.address],
                    health: sharedHealth
                )
            }
        )
        let routes = RouteSource(try RouteTable(configuration: configuration))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var logger = Logger(label: "shared-health-test")
        logger.logLevel = .critical
        let checker = HealthChecker(routes: routes, group: group, logger: logger)
        let task = Task { _ = try? await checker.run() }

        // The checker runs on the shared concurrency pool, which the rest of the suite can keep busy for a while:
        // wait for its first probe, then count over a measured window.
        let firstDeadline = ContinuousClock.now + .seconds(30)
        while backend.healthRequests == 0, ContinuousClock.now < firstDeadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let before = backend.healthRequests
        let started = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(1000))
        let probes = backend.healthRequests - before
        let waited = (ContinuousClock.now - started).components
        let elapsed = Double(waited.seconds) + Double(waited.attoseconds) / 1e18
        // One probe every 200 ms ± 10 %: about 5 a second (fewer on a busy machine), where one check per tenant
        // would be 100. Counted against the window as measured: on a loaded machine the 1 s sleep can last 4 s.
        #expect(before >= 1, "no probe within 30 s")
        #expect(probes <= Int(elapsed / 0.18) + 2, "\(probes) probes in \(elapsed) s")

        backend.healthAnswer = .status(.serviceUnavailable)
        let deadline = ContinuousClock.now + .seconds(10)
        while routes.current.tenants.contains(where: { $0.backends[0].status.isActivelyUp }),
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(routes.current.tenants.allSatisfy { !$0.backends[0].status.isActivelyUp })

        task.cancel()
        await task.value
        try await group.shutdownGracefully()
        await backend.stop()
    }
}
