import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle
import SwitchyardTLS
import UnixSignals

/// Re-reads the configuration file on SIGHUP and applies what can change without a restart: tenants, their
/// domains and backends (a new ``RouteTable``) and every certificate (a new ``CertificateStore``).
///
/// A file that fails to load, or a certificate that fails (bad PEM, key not matching, expired), is refused with a
/// log line naming the file and the reason, and the running configuration is kept whole: nothing is half-applied.
/// Connections in flight keep the snapshot they started with; nothing is dropped. Listen addresses, workers,
/// timeouts and limits are fixed at start; a change to them is reported as needing a restart.
public final class ConfigurationReloader: Service {
    private let path: String
    private let routes: RouteSource
    private let certificates: CertificateSource?
    private let logger: Logger
    /// The configuration last applied, to tell which changes need a restart.
    private let applied: NIOLockedValueBox<Configuration>

    public init(
        path: String,
        configuration: Configuration,
        routes: RouteSource,
        certificates: CertificateSource?,
        logger: Logger
    ) {
        self.path = path
        self.routes = routes
        self.certificates = certificates
        self.logger = logger
        self.applied = NIOLockedValueBox(configuration)
    }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                self.reload()
            }
        }
    }

    /// Loads the file and, if everything in it is valid, publishes the new routes and certificates.
    @discardableResult
    public func reload() -> Bool {
        let next: Configuration
        let table: RouteTable
        let store: CertificateStore?
        do {
            next = try ConfigurationLoader.load(path: path)
            table = try RouteTable(configuration: next, previous: routes.current)
            store = try CertificateStore.load(configuration: next, ticketKeys: certificates?.current.ticketKeys)
        } catch {
            logger.error("reload refused, keeping the running configuration: \(error)")
            return false
        }
        let previous = applied.withLockedValue { $0 }
        if next.listen != previous.listen || next.workers != previous.workers || next.timeouts != previous.timeouts
            || next.limits != previous.limits || next.accessLog != previous.accessLog
        {
            logger.warning(
                "reload: listen, workers, timeouts, limits and access_log changes take effect after a restart"
            )
        }
        if let store, let certificates {
            certificates.publish(store)
        } else if store != nil || certificates != nil {
            logger.warning("reload: adding or removing tls takes effect after a restart")
        }
        routes.publish(table)
        applied.withLockedValue { $0 = next }
        logger.info("reloaded \(path): \(next.tenants.count) tenants")
        return true
    }
}
