import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresNIO

/// `LISTEN switchyard_changes` on a connection of its own, ringing on every notification and each time it is
/// listening again after losing the database (notifications sent while it was away are gone for good).
///
/// Everything runs on one event loop, with futures only: nothing here blocks. A lost connection is opened again a
/// second later, for as long as the watch is not stopped.
final class PostgresChangeListener: StoreWatch {
    private let settings: PostgresStateStore.Settings
    private let tls: PostgresConnection.Configuration.TLS
    private let logger: Logger
    private let ring: @Sendable () -> Void
    private let loop: any EventLoop
    private let state = NIOLockedValueBox<(connection: PostgresConnection?, stopped: Bool, attempts: Int)>(
        (nil, false, 0)
    )

    init(
        settings: PostgresStateStore.Settings,
        tls: PostgresConnection.Configuration.TLS,
        logger: Logger,
        ring: @escaping @Sendable () -> Void
    ) {
        self.settings = settings
        self.tls = tls
        self.logger = logger
        self.ring = ring
        loop = MultiThreadedEventLoopGroup.singleton.next()
    }

    func start() {
        loop.execute { self.connect() }
    }

    func stop() {
        let connection = state.withLockedValue { state in
            state.stopped = true
            defer { state.connection = nil }
            return state.connection
        }
        connection?.closeKeepingAlive()
    }

    private func connect() {
        let attempt = state.withLockedValue { state -> Int? in
            guard !state.stopped else { return nil }
            state.attempts += 1
            return state.attempts
        }
        guard let attempt else { return }
        let configuration = settings.connectionConfiguration(tls: tls)
        let ring = self.ring
        PostgresConnection.connect(on: loop, configuration: configuration, id: attempt, logger: logger)
            .flatMap { (connection: PostgresConnection) -> EventLoopFuture<PostgresConnection> in
                let keep = self.state.withLockedValue { state -> Bool in
                    guard !state.stopped else { return false }
                    state.connection = connection
                    return true
                }
                guard keep else {
                    connection.closeKeepingAlive()
                    return self.loop.makeFailedFuture(CancellationError())
                }
                _ = connection.addListener(channel: PostgresStateStore.notificationChannel) { _, _ in ring() }
                return connection.query(
                    PostgresQuery(unsafeSQL: "LISTEN \(PostgresStateStore.notificationChannel)"),
                    logger: self.logger
                ).map { _ in connection }
            }
            .whenComplete { result in
                switch result {
                case .success(let connection):
                    ring()
                    connection.closeFuture.whenComplete { _ in self.again() }
                case .failure:
                    let connection = self.state.withLockedValue { state in
                        defer { state.connection = nil }
                        return state.connection
                    }
                    connection?.closeKeepingAlive()
                    self.again()
                }
            }
    }

    /// Connects again a second from now, unless stopped.
    private func again() {
        guard !state.withLockedValue({ $0.stopped }) else { return }
        loop.scheduleTask(in: .seconds(1)) { self.connect() }
    }
}
