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
    /// What builds and publishes the snapshot of a loaded file when the process has more to serve than the file
    /// (the state store's tenants); `nil` when the file is everything.
    private let publisher: (any ConfigurationPublisher)?

    /// - Parameter version: the configuration version the admin API answers with, advanced by each reload.
    public init(
        path: String,
        configuration: Configuration,
        routes: RouteSource,
        certificates: CertificateSource?,
        logger: Logger,
        version: ConfigurationVersion = ConfigurationVersion(),
        publisher: (any ConfigurationPublisher)? = nil
    ) {
        self.publisher = publisher
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
        version.commit(ifMatch: precondition) { current in
            let next: Configuration
            do {
                next = try ConfigurationLoader.load(path: path)
            } catch {
                return (.failure(refused(ReloadFailure(error), by: actor)), current)
            }
            guard let publisher else {
                let result = publishFile(next, by: actor)
                return (result, (try? result.get()) == nil ? current : current + 1)
            }
            switch publisher.publish(file: next, by: actor) {
            case .success(let (tenants, committed)):
                recordApplied(next, tenants: tenants, by: actor)
                return (.success(tenants), committed)
            case .failure(let failure):
                return (.failure(refused(failure, by: actor)), current)
            }
        }
    }

    /// Builds and publishes the routes and certificates of the file alone.
    private func publishFile(_ next: Configuration, by actor: ChangeActor) -> Result<Int, ReloadFailure> {
        let table: RouteTable
        let store: CertificateStore?
        do {
            table = try RouteTable(configuration: next, previous: routes.current)
            store = try CertificateStore.load(configuration: next, ticketKeys: certificates?.current.ticketKeys)
        } catch {
            return .failure(refused(ReloadFailure(error), by: actor))
        }
        if let store, let certificates {
            certificates.publish(store)
        } else if store != nil || certificates != nil {
            logger.warning("reload: adding or removing tls takes effect after a restart")
        }
        routes.publish(table)
        recordApplied(next, tenants: next.tenants.count, by: actor)
        return .success(next.tenants.count)
    }

    private func refused(_ failure: ReloadFailure, by actor: ChangeActor) -> ReloadFailure {
        logger.error("reload refused (by \(actor)), keeping the running configuration: \(failure)")
        return failure
    }

    /// Records the file now applied, warning about what only a restart applies.
    private func recordApplied(_ next: Configuration, tenants: Int, by actor: ChangeActor) {
        let previous = applied.withLockedValue { $0 }
        if next.listen != previous.listen || next.workers != previous.workers || next.timeouts != previous.timeouts
            || next.limits != previous.limits || next.accessLog != previous.accessLog || next.admin != previous.admin
            || next.statePath != previous.statePath || next.statePasswordFile != previous.statePasswordFile
            || next.stateCachePath != previous.stateCachePath || next.changeLog != previous.changeLog
        {
            logger.warning(
                "reload: listen, workers, timeouts, limits, admin, state, change_log and access_log changes take effect after a restart"
            )
        }
        applied.withLockedValue { $0 = next }
        logger.info("reloaded \(path) (by \(actor)): \(tenants) tenants")
    }
}

/// Builds and publishes what the balancer serves from a newly loaded configuration file together with whatever
/// else the process serves (the control plane merges in the state store's tenants and certificates).
public protocol ConfigurationPublisher: Sendable {
    /// Publishes the routes and certificates of `file` merged with the rest, and records the reload; called inside
    /// the configuration version's change. Answers the tenants now served and the version committed.
    func publish(file: Configuration, by actor: ChangeActor) -> Result<(tenants: Int, version: Int64), ReloadFailure>
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
        /// The state store cannot record the change (full disk, I/O error): nothing was applied.
        case unavailable
    }

    public var kind: Kind
    /// The error as the log shows it: file, line, key and reason.
    public var description: String

    /// A failure reported by a ``ConfigurationPublisher`` in its own words.
    public init(kind: Kind, description: String) {
        self.kind = kind
        self.description = description
    }

    /// The failure of a loader, route table or certificate error, classified by its type.
    public init(_ error: any Error) {
        switch error {
        case is ConfigurationError: kind = .configuration
        case is RouteTableError: kind = .conflict
        default: kind = .certificate
        }
        description = "\(error)"
    }
}
