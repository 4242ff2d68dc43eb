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
    /// The configuration file.
    public let path: String
    private let routes: RouteSource
    private let certificates: CertificateSource?
    private let logger: Logger
    /// The configuration last applied, to tell which changes need a restart.
    private let applied: NIOLockedValueBox<Configuration>
    /// Advanced by every reload that is applied; also what serialises reloads with the admin API's other changes.
    private let version: ConfigurationVersion

    /// - Parameter version: the configuration version the admin API answers with, advanced by each reload.
    public init(
        path: String,
        configuration: Configuration,
        routes: RouteSource,
        certificates: CertificateSource?,
        logger: Logger,
        version: ConfigurationVersion = ConfigurationVersion()
    ) {
        self.path = path
        self.routes = routes
        self.certificates = certificates
        self.logger = logger
        self.applied = NIOLockedValueBox(configuration)
        self.version = version
    }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                _ = self.reload(by: .signal)
            }
        }
    }

    /// Loads the file and, if everything in it is valid, publishes the new routes and certificates: what SIGHUP
    /// does, and `POST /v1/reload`.
    ///
    /// Runs as one change of ``ConfigurationVersion``: not at the same time as another reload or an admin change,
    /// only if `precondition` matches the version (`If-Match`), and advancing the version when applied. Answers the
    /// number of tenants now served, or why the file was refused (the running configuration is then kept whole).
    public func reload(
        ifMatch precondition: ConfigurationVersion.Precondition? = nil,
        by actor: ChangeActor
    ) -> ConfigurationVersion.Outcome<Result<Int, ReloadFailure>> {
        version.change(ifMatch: precondition, by: actor) {
            let result = self.loadAndPublish(by: actor)
            return (result, (try? result.get()) != nil)
        }
    }

    private func loadAndPublish(by actor: ChangeActor) -> Result<Int, ReloadFailure> {
        let next: Configuration
        let table: RouteTable
        let store: CertificateStore?
        do {
            next = try ConfigurationLoader.load(path: path)
            table = try RouteTable(configuration: next, previous: routes.current)
            store = try CertificateStore.load(configuration: next, ticketKeys: certificates?.current.ticketKeys)
        } catch {
            let failure = ReloadFailure(error)
            logger.error("reload refused (by \(actor)), keeping the running configuration: \(failure)")
            return .failure(failure)
        }
        let previous = applied.withLockedValue { $0 }
        if next.listen != previous.listen || next.workers != previous.workers || next.timeouts != previous.timeouts
            || next.limits != previous.limits || next.accessLog != previous.accessLog || next.admin != previous.admin
        {
            logger.warning(
                "reload: listen, workers, timeouts, limits, admin and access_log changes take effect after a restart"
            )
        }
        if let store, let certificates {
            certificates.publish(store)
        } else if store != nil || certificates != nil {
            logger.warning("reload: adding or removing tls takes effect after a restart")
        }
        routes.publish(table)
        applied.withLockedValue { $0 = next }
        logger.info("reloaded \(path) (by \(actor)): \(next.tenants.count) tenants")
        return .success(next.tenants.count)
    }
}

/// Why a reload was refused: the loader's, the route table's or the certificates' error.
public struct ReloadFailure: Error, CustomStringConvertible, Sendable, Equatable {
    /// What failed.
    public enum Kind: Sendable, Equatable {
        /// The file does not load: unreadable, invalid YAML, a key or value refused (``ConfigurationError``).
        case configuration
        /// Two tenants claim one domain (``RouteTableError``).
        case conflict
        /// A certificate or key does not load (``TLSError``).
        case certificate
    }

    public var kind: Kind
    /// The error as the log shows it: file, line, key and reason.
    public var description: String

    init(_ error: any Error) {
        switch error {
        case is ConfigurationError: kind = .configuration
        case is RouteTableError: kind = .conflict
        default: kind = .certificate
        }
        description = "\(error)"
    }
}
