import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Switchyard
import SwitchyardControl
import SwitchyardTLS

/// Options every command that runs the balancer shares.
struct RunOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The configuration file.")
    var config: String = "Config/switchyard.yaml"

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the balancer."
    )

    @OptionGroup var options: RunOptions

    func run() async throws {
        let configuration = try Balancer.loadConfiguration(options)
        try await Balancer.run(configuration: configuration, options: options, extraServices: [])
    }
}

struct CheckConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and exit."
    )

    @Argument(help: "The configuration file.")
    var file: String = "Config/switchyard.yaml"

    func run() async throws {
        do {
            let configuration = try ConfigurationLoader.load(path: file)
            _ = try RouteTable(configuration: configuration)
            _ = try CertificateStore.load(configuration: configuration)
            print("\(file): OK (\(configuration.tenants.count) tenants)")
        } catch {
            print("\(error)")
            throw ExitCode(2)
        }
    }
}

/// Starting and running the balancer, shared by `serve` and `demo`.
enum Balancer {
    static func loadConfiguration(_ options: RunOptions) throws -> Configuration {
        let level = options.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardOutput(label: label)
            handler.logLevel = level
            return handler
        }
        do {
            return try ConfigurationLoader.load(path: options.config)
        } catch {
            Logger(label: "switchyard").critical("refusing to start: \(error)")
            throw ExitCode(2)
        }
    }

    static func run(configuration: Configuration, options: RunOptions, extraServices: [any Service]) async throws {
        let logger = Logger(label: "switchyard")
        // SWITCHYARD_STATE names the store instead of the file's `state:` (tests give each balancer its own).
        let statePath = ProcessInfo.processInfo.environment["SWITCHYARD_STATE"].flatMap { $0.isEmpty ? nil : $0 }
        let controlPlane: ControlPlane
        do {
            controlPlane = try ControlPlane(
                file: configuration,
                configurationPath: options.config,
                statePath: statePath ?? configuration.statePath,
                passwordFile: configuration.statePasswordFile,
                logger: logger
            )
        } catch {
            logger.critical("refusing to start: \(options.config): \(error)")
            throw ExitCode(2)
        }
        let routes = controlPlane.routes
        let certificates = controlPlane.certificates
        // The TCP listener's tokens, read (and their file's permissions checked) once, at start.
        var metricsUsers: AdminTokens?
        if let file = configuration.metrics.basicAuthFile {
            do {
                metricsUsers = try AdminTokens.load(path: file)
            } catch {
                logger.critical("refusing to start: metrics.basic_auth_file: \(error)")
                throw ExitCode(2)
            }
        }
        var adminTCP: AdminServer.TCPListener?
        if let address = configuration.admin.listen, let tokenFile = configuration.admin.tokenFile {
            do {
                adminTCP = AdminServer.TCPListener(address: address, tokens: try AdminTokens.load(path: tokenFile))
            } catch {
                logger.critical("refusing to start: \(error)")
                throw ExitCode(2)
            }
        }
        let accessLog: AccessLogWriter?
        do {
            accessLog =
                configuration.accessLog
                ? try AccessLogWriter(
                    format: configuration.accessLogFormat,
                    destination: configuration.accessLogPath.map { .file($0) } ?? .standardOutput,
                    logger: logger
                ) : nil
        } catch {
            logger.critical("refusing to start: \(error)")
            throw ExitCode(2)
        }
        let threads = configuration.workers ?? System.coreCount
        checkDescriptorLimit(configuration: configuration, workers: threads, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let metrics = SwitchyardMetrics(
            loops: threads,
            histogramTenants: configuration.metrics.tenantHistograms,
            build: SwitchyardVersion.current
        )
        let server = ProxyServer(
            configuration: configuration,
            group: group,
            routes: routes,
            certificates: certificates,
            metrics: metrics,
            accessLog: accessLog,
            logger: logger
        )
        // The server binds inside the service group, so SIGTERM is handled from the moment the ports accept.
        logger.info(
            "switchyard \(SwitchyardVersion.current) serving \(routes.current.tenants.count) tenants on \(threads) workers"
        )
        // One version for the admin API, the reloader and the control plane: the store's revision.
        let version = controlPlane.version
        let reloader = ConfigurationReloader(
            path: options.config,
            configuration: configuration,
            routes: routes,
            certificates: certificates,
            logger: logger,
            version: version,
            publisher: controlPlane
        )
        let ticketRotation: [any Service] = certificates.map { [$0.current.ticketKeys] } ?? []
        let healthChecker = HealthChecker(routes: routes, group: group, logger: logger, metrics: metrics)
        let metricsPage = MetricsPage(
            metrics: metrics,
            routes: routes,
            version: version,
            store: {
                MetricsPage.StoreReading(
                    isUp: controlPlane.storeStatus.problem == nil,
                    revision: controlPlane.storeRevision
                )
            },
            connections: { server.openConnections }
        )
        // SWITCHYARD_ADMIN names the socket for the operator commands; the server honours it too, so both agree.
        let adminPath = ProcessInfo.processInfo.environment["SWITCHYARD_ADMIN"].flatMap { $0.isEmpty ? nil : $0 }
        let api = AdminAPI(
            routes: routes,
            logger: logger,
            version: version,
            reloader: reloader,
            resources: controlPlane,
            metrics: metricsPage
        ) {
            server.openConnections
        }
        // The admin server runs on its own event loop, so admin traffic cannot delay the workers'.
        let admin = AdminServer(
            path: adminPath ?? configuration.admin.socket,
            tcp: adminTCP,
            logger: logger,
            api: api,
            limits: AdminServer.Limits(
                maximumConnections: configuration.admin.maximumConnections,
                idleTimeout: configuration.admin.idleTimeout
            )
        )
        let memoryReleaser = MemoryReleaser(logger: logger) { server.openConnections }
        let metricsListener: [any Service] =
            configuration.metrics.listen.map { address in
                [
                    MetricsServer(
                        address: address,
                        page: metricsPage,
                        logger: logger,
                        limits: AdminServer.Limits(
                            maximumConnections: configuration.admin.maximumConnections,
                            idleTimeout: configuration.admin.idleTimeout
                        ),
                        users: metricsUsers
                    )
                ]
            } ?? []
        let services: [any Service] =
            (accessLog.map { [$0] } ?? []) + [reloader, healthChecker, admin, memoryReleaser] + metricsListener
            + ticketRotation + extraServices
            + [StoreFollower(controlPlane: controlPlane), ChangeLogPruner(controlPlane: controlPlane), server]
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await serviceGroup.run()
        } catch {
            logger.critical("stopped: \(error)")
            try? await group.shutdownGracefully()
            throw ExitCode(1)
        }
        try await group.shutdownGracefully()
    }

    /// Raises the soft descriptor limit to the hard one and warns, in one line with the numbers, when the
    /// configuration's connections may not fit in it (nginx warns likewise about `worker_connections`).
    static func checkDescriptorLimit(configuration: Configuration, workers: Int, logger: Logger) {
        guard let limits = DescriptorLimit.raiseSoftLimitToHard() else { return }
        if limits.after.soft > limits.before.soft {
            logger.info("raised the descriptor limit from \(limits.before.soft) to \(limits.after.soft)")
        }
        let backends = configuration.tenants.reduce(0) { $0 + $1.backends.count }
        let budget = DescriptorBudget(configuration: configuration, backends: backends, workers: workers)
        if let warning = budget.warning(limit: limits.after.soft) {
            logger.warning("\(warning)")
        }
    }
}
