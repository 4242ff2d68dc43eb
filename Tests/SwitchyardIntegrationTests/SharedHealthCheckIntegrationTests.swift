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
        let started = ContinuousClock.now
        let task = Task { _ = try? await checker.run() }

        try await Task.sleep(for: .milliseconds(1100))
        // One check every 200 ms ± 10 %, the first within the first interval: about 5 in 1.1 s (more if the machine
        // stretched the sleep), where one check per tenant would be at least 20.
        let probes = backend.healthRequests
        let waited = (ContinuousClock.now - started).components
        let elapsed = Double(waited.seconds) + Double(waited.attoseconds) / 1e18
        #expect(probes >= 2, "\(probes) probes")
        #expect(probes <= Int(elapsed / 0.18) + 2 && probes < 20, "\(probes) probes in \(elapsed) s")

        backend.healthAnswer = .status(.serviceUnavailable)
        let deadline = ContinuousClock.now + .seconds(5)
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
