import Logging
import NIOCore
import NIOPosix

/// The data path's state for one event loop: its client connections, its pool of backend connections, its
/// round-robin positions and the sweep that enforces timeouts.
///
/// Everything here is touched only on `eventLoop`, so none of it needs a lock. A connection, its backend
/// connection and the pool it returns to all stay on one loop for their whole life.
final class Worker {
    let eventLoop: EventLoop
    /// The loop's number, 0 for the first: its slot in every counter (``CounterSlots``).
    let loop: Int
    /// Where the data path counts.
    let metrics: ProxyMeters
    /// Counts and logs what client connections report.
    let accounting: ProxyAccounting
    let routes: RouteSource
    let configuration: Configuration
    let logger: Logger
    /// Where access-log lines go, `nil` with the access log off.
    let accessLog: AccessLogWriter?
    /// This loop's lines not yet handed to ``accessLog``.
    private var loopAccessLog: LoopAccessLog?
    /// Shared by all workers: the `limits.max_connections` budget.
    let connectionCounter: ConnectionCounter
    /// How backend connections are opened.
    let upstreamConnector: any UpstreamConnector

    private var pool: UpstreamPool<UpstreamConnection>
    private var connections: [ObjectIdentifier: ClientConnectionHandler] = [:]
    private var selector = BackendSelector()
    private var sweep: RepeatedTask?
    private var shuttingDown = false

    init(
        eventLoop: EventLoop,
        loop: Int = 0,
        metrics: ProxyMeters = SwitchyardMetrics(loops: 1).proxy,
        routes: RouteSource,
        configuration: Configuration,
        connectionCounter: ConnectionCounter,
        logger: Logger,
        accessLog: AccessLogWriter?,
        upstreamConnector: any UpstreamConnector = SocketUpstreamConnector()
    ) {
        self.eventLoop = eventLoop
        self.loop = loop
        self.metrics = metrics
        self.accounting = ProxyAccounting(loop: loop, metrics: metrics, logger: logger)
        self.routes = routes
        self.configuration = configuration
        self.connectionCounter = connectionCounter
        self.logger = logger
        self.accessLog = accessLog
        self.loopAccessLog = accessLog.map { LoopAccessLog(writer: $0) }
        self.upstreamConnector = upstreamConnector
        self.pool = UpstreamPool(capacityPerBackend: configuration.limits.upstreamKeepAlive)
    }

    /// How often timeouts are checked: fine enough for the shortest configured timeout, coarse enough to cost
    /// nothing (nginx and HAProxy also check timers in batches rather than arming one per request).
    var sweepInterval: TimeAmount {
        Self.sweepInterval(for: configuration)
    }

    /// See ``sweepInterval``.
    static func sweepInterval(for configuration: Configuration) -> TimeAmount {
        let timeouts = configuration.timeouts
        // Tenants' own tunnel timeouts count too (those added by a later reload are checked at this pace).
        let tenantTunnels = configuration.tenants.compactMap(\.tunnelIdle)
        let shortest =
            ([
                timeouts.clientHeader, timeouts.keepAlive, timeouts.clientBody, timeouts.upstreamResponse,
                timeouts.upstreamIdle, timeouts.tunnelIdle, timeouts.clientSend,
            ] + tenantTunnels).min() ?? .seconds(1)
        return max(.milliseconds(10), min(.seconds(1), .nanoseconds(shortest.nanoseconds / 4)))
    }

    /// Starts the timeout sweep; call on the loop.
    func start() {
        eventLoop.assertInEventLoop()
        let worker = NIOLoopBound(self, eventLoop: eventLoop)
        sweep = eventLoop.scheduleRepeatedTask(initialDelay: sweepInterval, delay: sweepInterval) { _ in
            worker.value.sweepTimeouts()
        }
    }

    func register(_ connection: ClientConnectionHandler) {
        connections[ObjectIdentifier(connection)] = connection
        if shuttingDown { connection.beginShutdown() }
    }

    func unregister(_ connection: ClientConnectionHandler) {
        if connections.removeValue(forKey: ObjectIdentifier(connection)) != nil {
            connectionCounter.release()
        }
    }

    var connectionCount: Int {
        connections.count
    }

    /// Picks the backend for a request (see ``BackendSelector/next(of:preferring:excluding:now:)``).
    func nextBackend(
        of tenant: Tenant,
        preferring preferred: Backend? = nil,
        excluding excluded: Backend?,
        now: NIODeadline
    ) -> Backend? {
        selector.next(of: tenant, preferring: preferred, excluding: excluded, now: now)
    }

    /// An idle pooled connection to `backend`, if any.
    func takeUpstream(_ backend: Backend) -> UpstreamConnection? {
        pool.take(backend)
    }

    /// A pooled connection closed while idle.
    func idleConnectionClosed(_ connection: UpstreamConnection) {
        pool.remove(connection)
    }

    /// Returns a connection to the pool, or closes it when the pool is full or the worker is stopping.
    func releaseUpstream(_ connection: UpstreamConnection) {
        connection.owner = nil
        connection.idleSince = .now()
        connection.pool = self
        if shuttingDown || !connection.isActive || !pool.put(connection) {
            connection.close()
        } else {
            connection.resumeReading()
        }
    }

    /// Adds a request's line to this loop's buffer, handed to the writer when it is full.
    func logAccess(_ record: AccessLogRecord) {
        loopAccessLog?.append(record, now: .now())
    }

    private func sweepTimeouts() {
        let now = NIODeadline.now()
        loopAccessLog?.flush(now: now)
        for connection in connections.values {
            connection.checkTimeouts(now: now)
        }
        for connection in pool.expire(idleSince: now - configuration.timeouts.upstreamIdle) {
            connection.close()
        }
    }

    /// Stops keep-alive: idle client connections close now, busy ones after their current response; pooled backend
    /// connections close.
    func beginShutdown() {
        shuttingDown = true
        for connection in connections.values {
            connection.beginShutdown()
        }
        for connection in pool.removeAll() {
            connection.close()
        }
    }

    /// Closes every remaining connection: the drain time is over.
    func closeAll() {
        for connection in connections.values {
            connection.forceClose()
        }
        loopAccessLog?.flush(now: .now(), force: true)
        sweep?.cancel()
        sweep = nil
    }
}

@available(*, unavailable)
extension Worker: Sendable {}
