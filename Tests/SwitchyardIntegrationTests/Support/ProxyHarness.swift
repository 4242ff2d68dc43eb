import Logging
import NIOCore
import NIOPosix

@testable import Switchyard

/// A balancer running in the test process on an ephemeral loopback port, with its own event loops.
final class ProxyHarness: Sendable {
    let server: ProxyServer
    let group: MultiThreadedEventLoopGroup
    let port: Int

    private init(server: ProxyServer, group: MultiThreadedEventLoopGroup, port: Int) {
        self.server = server
        self.group = group
        self.port = port
    }

    /// Starts a balancer for `tenants` (name, domains, backends) with `adjust` applied to the configuration.
    static func start(
        tenants: [(String, [String], [SocketAddress])],
        workers: Int = 2,
        adjust: (inout Configuration) -> Void = { _ in }
    ) async throws -> ProxyHarness {
        var configuration = Configuration(
            listen: .init(http: [try SocketAddress(ipAddress: "127.0.0.1", port: 0)]),
            workers: workers,
            tenants: tenants.map { TenantConfiguration(name: $0.0, domains: $0.1, backends: $0.2) }
        )
        configuration.accessLog = false
        adjust(&configuration)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: workers)
        var logger = Logger(label: "switchyard.test")
        logger.logLevel = .critical
        let server = ProxyServer(
            configuration: configuration,
            group: group,
            routes: RouteSource(try RouteTable(configuration: configuration)),
            logger: logger
        )
        try await server.start()
        let port = server.boundAddresses.first?.port ?? 0
        return ProxyHarness(server: server, group: group, port: port)
    }

    func stop() async {
        await server.shutdown()
        try? await group.shutdownGracefully()
    }
}

/// Runs `body` with backends and a balancer, and stops them all afterwards, whether `body` throws or not.
func withProxy(
    backends: [TestBackend],
    tenants: [(String, [String], [TestBackend])],
    workers: Int = 2,
    timeouts: Configuration.Timeouts = .init(),
    limits: Configuration.Limits = .init(),
    _ body: (ProxyHarness) async throws -> Void
) async throws {
    let harness: ProxyHarness
    do {
        harness = try await ProxyHarness.start(
            tenants: tenants.map { ($0.0, $0.1, $0.2.map(\.address)) },
            workers: workers
        ) { configuration in
            configuration.timeouts = timeouts
            configuration.limits = limits
        }
    } catch {
        for backend in backends { await backend.stop() }
        throw error
    }
    do {
        try await body(harness)
    } catch {
        await harness.stop()
        for backend in backends { await backend.stop() }
        throw error
    }
    await harness.stop()
    for backend in backends { await backend.stop() }
}
