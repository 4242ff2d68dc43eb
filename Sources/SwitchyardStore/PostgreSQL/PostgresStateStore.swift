import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// The state store in a PostgreSQL database that several balancer nodes share (see ``StateStore``).
///
/// Its tables live in a schema of their own, `switchyard`, so the database may hold other things. Writers on every
/// node are serialised by a row lock on the revision (`SELECT … FOR UPDATE` as a write's first statement, under
/// READ COMMITTED, so that every later statement of the write sees everything committed before it): one revision per
/// write, in commit order, which is what lets a node apply `changes WHERE revision > applied` without skipping one.
/// Each write that changes something also sends `NOTIFY switchyard_changes` with its revision, in the same
/// transaction, so that it rings only once committed.
///
/// One connection, opened when first needed and again after it broke; operations are serialised on it, as SQLite's
/// are on its single connection. The calls block their thread on the database for at most
/// ``Settings/timeout``: never call them on an event loop that serves traffic.
public final class PostgresStateStore: StateStore {
    /// How to reach the database.
    public struct Settings: Sendable {
        /// How the connection is encrypted: libpq's `sslmode` values that Switchyard accepts.
        public enum TLSMode: String, Sendable, CaseIterable {
            /// Plain TCP.
            case disable
            /// TLS when the server offers it, without checking its certificate (libpq's default).
            case prefer
            /// TLS or no connection, without checking the server's certificate.
            case require
            /// TLS with the server's certificate checked against the trusted roots and the host name.
            case verifyFull = "verify-full"
        }

        public var host: String
        public var port: Int
        public var user: String
        public var password: String?
        public var database: String
        public var tls: TLSMode
        /// The roots that `verify-full` trusts (a PEM file); the system's without.
        public var rootCertificates: String?
        /// How long one operation (connecting, a query) may take before the store is reported unavailable.
        public var timeout: TimeAmount

        public init(
            host: String,
            port: Int = 5432,
            user: String,
            password: String?,
            database: String,
            tls: TLSMode = .prefer,
            rootCertificates: String? = nil,
            timeout: TimeAmount = .seconds(10)
        ) {
            self.host = host
            self.port = port
            self.user = user
            self.password = password
            self.database = database
            self.tls = tls
            self.rootCertificates = rootCertificates
            self.timeout = timeout
        }

        /// How PostgresNIO connects with these settings: the store's connection and its listener's alike.
        func connectionConfiguration(tls: PostgresConnection.Configuration.TLS) -> PostgresConnection.Configuration {
            var configuration = PostgresConnection.Configuration(
                host: host,
                port: port,
                username: user,
                password: password,
                database: database,
                tls: tls
            )
            configuration.options.connectTimeout = timeout
            return configuration
        }

        /// The database as an operator would name it, without the password.
        public var location: String {
            let address = host.contains(":") ? "[\(host)]" : host
            return "postgres://\(user)@\(address):\(port)/\(database)"
        }
    }

    /// The channel that every write's notification goes to; its payload is the new revision.
    public static let notificationChannel = "switchyard_changes"

    public let settings: Settings
    public var location: String { settings.location }

    private let session: NIOLockedValueBox<PostgresSession>
    private let tls: PostgresConnection.Configuration.TLS
    private let logger: Logger

    /// Connects, and creates or migrates the schema (under an advisory lock, so that nodes started together do not
    /// race). Throws ``StoreError/newerSchema(path:detail:)`` when a newer Switchyard migrated it, and
    /// ``StoreError/unavailable(path:reason:)`` when the database cannot be reached, refuses the login or the
    /// schema cannot be made, unless `waitingForDatabase`: then the store is made all the same, every call fails
    /// as unavailable until the database answers, and the first one that reaches it migrates the schema first (a
    /// node started while the database is down serves what it cached and catches up once it is back).
    public init(
        settings: Settings,
        waitingForDatabase: Bool = false,
        logger: Logger = Logger(label: "switchyard.store")
    ) throws(StoreError) {
        self.settings = settings
        let tlsConfiguration: PostgresConnection.Configuration.TLS
        do {
            tlsConfiguration = try Self.tls(settings)
        } catch {
            throw .unavailable(
                path: settings.location,
                reason: "its TLS settings cannot be used (\(error)); check `sslrootcert`"
            )
        }
        tls = tlsConfiguration
        self.logger = logger
        session = NIOLockedValueBox(
            PostgresSession(settings: settings, tls: tlsConfiguration, logger: logger)
        )
        do {
            try session.withLockedValue { session in try session.run { _ in } }
        } catch let error as StoreError {
            guard waitingForDatabase, error.isUnavailable else { throw error }
        } catch {
            throw StoreError.wrappingPostgres(error, location: settings.location)
        }
    }

    deinit {
        session.withLockedValue { $0.close() }
    }

    public func snapshot() throws(StoreError) -> StoreSnapshot {
        try readRows { rows in try rows.snapshot() }
    }

    public func revision() throws(StoreError) -> Int64 {
        try readRows { rows in try rows.revision() }
    }

    public func changes(since revision: Int64, limit: Int?) throws(StoreError) -> [ChangeRecord] {
        try readRows { rows in try rows.changes(since: revision, limit: limit) }
    }

    public func read<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        try session.withLockedValue { session in
            try session.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") { rows in
                let transaction = StoreTransaction(
                    rows: rows,
                    previousRevision: try rows.revision(),
                    actor: "",
                    time: StoreTime.now()
                )
                return (try body(transaction), .rollback)
            }
        }
    }

    public func recordHeartbeat(_ node: FleetNode) throws(StoreError) {
        do {
            try session.withLockedValue { session in
                try session.run { rows in try rows.upsertNode(node) }
            }
        } catch {
            throw StoreError.wrappingPostgres(error, location: location)
        }
    }

    public func fleet() throws(StoreError) -> [FleetNode] {
        try readRows { rows in try rows.nodes() }
    }

    /// `LISTEN switchyard_changes` on a connection of its own, opened again a second after it is lost.
    public func watch(_ ring: @escaping @Sendable () -> Void) -> (any StoreWatch)? {
        let listener = PostgresChangeListener(
            settings: settings,
            tls: tls,
            logger: logger,
            ring: ring
        )
        listener.start()
        return listener
    }

    public func pruneChanges(_ retention: ChangeLogRetention, now: Date) throws(StoreError) -> ChangeLogPruning {
        do {
            return try session.withLockedValue { session in
                try session.transaction("BEGIN") { rows in
                    // The row lock writes take: pruning runs between writes, and one node's at a time.
                    let current = try rows.lockRevision()
                    return (try rows.pruneChanges(retention, now: now, current: current), .commit)
                }
            }
        } catch {
            throw StoreError.wrappingPostgres(error, location: location)
        }
    }

    public func write(
        expectedRevision: Int64?,
        actor: String,
        dryRun: Bool,
        _ body: (inout StoreTransaction) throws -> Void
    ) throws -> StoreCommit {
        try session.withLockedValue { session in
            try session.transaction("BEGIN") { rows in
                // The row lock first: the write waits here for any other node's write, then sees all of it.
                let current = try rows.lockRevision()
                let time = StoreTime.now()
                if let expectedRevision, expectedRevision != current {
                    throw StoreError.revisionMismatch(expected: expectedRevision, current: current)
                }
                var transaction = StoreTransaction(rows: rows, previousRevision: current, actor: actor, time: time)
                try body(&transaction)
                if let failure = transaction.failure { throw failure }
                let changes = transaction.changes
                let revision = changes.isEmpty ? current : transaction.revision
                if !changes.isEmpty {
                    try rows.setRevision(revision, notifying: Self.notificationChannel)
                }
                let commit = StoreCommit(
                    revision: revision,
                    previousRevision: current,
                    changes: changes,
                    isDryRun: dryRun
                )
                return (commit, dryRun || changes.isEmpty ? .rollback : .commit)
            }
        }
    }

    /// A read in one REPEATABLE READ transaction, so that everything it reads is of one moment.
    private func readRows<T>(_ work: (PostgresRows) throws -> T) throws(StoreError) -> T {
        do {
            return try session.withLockedValue { session in
                try session.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") { rows in
                    (try work(rows), .rollback)
                }
            }
        } catch {
            throw StoreError.wrappingPostgres(error, location: location)
        }
    }

    private static func tls(_ settings: Settings) throws -> PostgresConnection.Configuration.TLS {
        switch settings.tls {
        case .disable:
            return .disable
        case .prefer, .require:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .none
            let context = try NIOSSLContext(configuration: configuration)
            return settings.tls == .prefer ? .prefer(context) : .require(context)
        case .verifyFull:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .fullVerification
            if let roots = settings.rootCertificates {
                configuration.trustRoots = .file(roots)
            }
            return .require(try NIOSSLContext(configuration: configuration))
        }
    }
}

/// The store's one connection and how operations use it; always used under the store's lock.
struct PostgresSession {
    enum Outcome {
        case commit
        case rollback
    }

    let settings: PostgresStateStore.Settings
    let tls: PostgresConnection.Configuration.TLS
    let logger: Logger
    private var connection: PostgresConnection?
    private var nextID = 0
    /// Whether the schema was checked (and migrated) on this database, which the first connection does.
    private var migrated = false

    init(settings: PostgresStateStore.Settings, tls: PostgresConnection.Configuration.TLS, logger: Logger) {
        self.settings = settings
        self.tls = tls
        self.logger = logger
    }

    /// Runs `work` in a transaction begun with `begin`, committed or rolled back as it says. A failure of the
    /// database rolls it back and drops the connection if it broke; `work`'s own errors propagate unchanged.
    mutating func transaction<T>(
        _ begin: String,
        _ work: (PostgresRows) throws -> (T, Outcome)
    ) throws -> T {
        let location = settings.location
        return try run { rows in
            try rows.execute(begin)
            let value: T
            let outcome: Outcome
            do {
                (value, outcome) = try work(rows)
            } catch {
                try? rows.execute("ROLLBACK")
                throw error
            }
            switch outcome {
            case .commit:
                do {
                    try rows.execute("COMMIT")
                } catch {
                    // The server may have committed before the connection broke: the caller cannot tell.
                    throw StoreError.unavailable(
                        path: location,
                        reason:
                            "the connection failed during the commit (\(PostgresFailure.describe(error))); the change "
                            + "may or may not have been made: read the configuration again before retrying"
                    )
                }
            case .rollback:
                try rows.execute("ROLLBACK")
            }
            return value
        }
    }

    /// Runs `work` on the connection, opening it first when there is none; a connection that failed is closed, so
    /// that the next operation opens a new one. The database's errors come out as ``StoreError``, `work`'s own
    /// unchanged.
    mutating func run<T>(_ work: (PostgresRows) throws -> T) throws -> T {
        let connection = try open()
        let rows = PostgresRows(
            connection: connection,
            location: settings.location,
            timeout: settings.timeout,
            logger: logger
        )
        do {
            if !migrated {
                try PostgresSchema.migrate(rows, location: settings.location)
                migrated = true
            }
            return try work(rows)
        } catch let error as StoreError {
            if error.isUnavailable, connection.isClosed { close() }
            throw error
        } catch let failure where PostgresFailure.isDatabaseError(failure) {
            if PostgresFailure.brokeConnection(failure) || connection.isClosed { close() }
            throw StoreError.wrappingPostgres(failure, location: settings.location)
        }
    }

    /// The open connection, or a new one.
    private mutating func open() throws(StoreError) -> PostgresConnection {
        if let connection, !connection.isClosed { return connection }
        connection = nil
        let configuration = settings.connectionConfiguration(tls: tls)
        nextID += 1
        let future = PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.next(),
            configuration: configuration,
            id: nextID,
            logger: logger
        )
        do {
            let opened = try PostgresFailure.wait(for: future, timeout: settings.timeout + .seconds(1))
            connection = opened
            return opened
        } catch let error as PostgresFailure.TimedOut {
            // A connection that comes after all is of no use to anyone: closed.
            future.whenSuccess { $0.closeKeepingAlive() }
            throw StoreError.wrappingPostgres(error, location: settings.location)
        } catch {
            throw StoreError.wrappingPostgres(error, location: settings.location)
        }
    }

    mutating func close() {
        connection?.closeKeepingAlive()
        connection = nil
    }
}

extension PostgresConnection {
    /// Closes the connection, keeping it alive until it is closed (PostgresNIO requires a connection to be closed
    /// before it goes).
    func closeKeepingAlive() {
        close().whenComplete { _ in withExtendedLifetime(self) {} }
    }
}
