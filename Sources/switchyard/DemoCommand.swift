import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import Switchyard

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the balancer with a built-in demo tenant (a chat site) on loopback.",
        discussion: """
            Starts the demo tenant's backend on the first backend address of the tenant named "demo" in the \
            configuration, then the balancer. Open http://demo.localhost:8080/ in two browser tabs.
            """
    )

    @OptionGroup var options: RunOptions

    func run() async throws {
        let configuration = try Balancer.loadConfiguration(options)
        let logger = Logger(label: "switchyard.demo")
        guard let tenant = configuration.tenants.first(where: { $0.name == "demo" }),
            let address = tenant.backends.first
        else {
            logger.critical("\(options.config) has no tenant named 'demo' with a backend to run the demo on")
            throw ExitCode(2)
        }
        let backend: DemoBackend
        do {
            backend = try await DemoBackend.start(on: address)
        } catch {
            logger.critical("cannot start the demo backend on \(address): \(error)")
            throw ExitCode(1)
        }
        let port = configuration.listen.http.first?.port ?? 8080
        logger.info("demo backend on \(address); try http://\(tenant.domains.first ?? "demo.localhost"):\(port)/")
        try await Balancer.run(configuration: configuration, options: options, extraServices: [DemoService(backend)])
    }
}

/// Keeps the demo backend up as long as the balancer runs.
struct DemoService: Service {
    let backend: DemoBackend

    init(_ backend: DemoBackend) {
        self.backend = backend
    }

    func run() async throws {
        try? await gracefulShutdown()
        await backend.stop()
    }
}
