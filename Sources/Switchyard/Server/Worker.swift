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
    let routes: RouteSource
    let configuration: Configuration
    let logger: Logger
    /// Where access-log lines go, `nil` with the access log off.
    let accessLog: AccessLogWriter?
    /// This loop's lines not yet handed to ``accessLog``.
    private var accessLogBuffer: AccessLogBuffer?
    /// Shared by all workers: the `limits.max_connections` budget.
    let connectionCounter: ConnectionCounter
    /// How backend connections are opened.
    let upstreamConnector: any UpstreamConnector
    /// The HTTPS port `https_redirect` sends clients to.
    var httpsPort: Int? {
        configuration.listen.https.first?.port
    }

    private var pool: UpstreamPool
    private var connections: [ObjectIdentifier: ClientConnectionHandler] = [:]
    private var roundRobin: [ObjectIdentifier: Int] = [:]
    /// Smooth weighted round robin's running weights, per tenant (nginx's algorithm).
    private var currentWeights: [ObjectIdentifier: [Int]] = [:]
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
        self.routes = routes
        self.configuration = configuration
        self.connectionCounter = connectionCounter
        self.logger = logger
        self.accessLog = accessLog
        self.accessLogBuffer = accessLog.map { AccessLogBuffer(format: $0.format) }
        self.upstreamConnector = upstreamConnector
        self.pool = UpstreamPool(capacityPerBackend: configuration.limits.upstreamKeepAlive)
    }

    /// How often timeouts are checked: fine enough for the shortest configured timeout, coarse enough to cost
    /// nothing (nginx and HAProxy also check timers in batches rather than arming one per request).
    var sweepInterval: TimeAmount {
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

    /// Picks the backend for a request: `preferred` (the one its sticky-session cookie names) if it is available
    /// and not `excluded`, else the tenant's next available backend by its balancing algorithm (skipping down,
    /// ejected and draining ones), avoiding `excluded` when another is available; `nil` when none is available.
    func nextBackend(
        of tenant: Tenant,
        preferring preferred: Backend? = nil,
        excluding excluded: Backend?,
        now: NIODeadline
    ) -> Backend? {
        if let preferred, preferred !== excluded, preferred.status.isAvailable(now: now) {
            return preferred
        }
        let backends = tenant.backends
        guard !backends.isEmpty else { return nil }
        let key = ObjectIdentifier(tenant)
        if tenant.balance == .roundRobin, let weights = tenant.weights {
            return nextWeightedBackend(of: tenant, weights: weights, excluding: excluded, now: now)
        }
        let start = roundRobin[key] ?? 0
        var fallback: Backend?
        var chosen: (backend: Backend, index: Int)?
        for offset in 0..<backends.count {
            let index = (start &+ offset) % backends.count
            let backend = backends[index]
            guard backend.status.isAvailable(now: now) else { continue }
            if backend === excluded {
                fallback = backend
                continue
            }
            switch tenant.balance {
            case .roundRobin:
                roundRobin[key] = (index &+ 1) % backends.count
                return backend
            case .leastConnections:
                // Scanning from the round-robin position makes ties rotate.
                if let current = chosen, current.backend.status.connections <= backend.status.connections {
                    continue
                }
                chosen = (backend, index)
            }
        }
        if let chosen {
            roundRobin[key] = (chosen.index &+ 1) % backends.count
            return chosen.backend
        }
        return fallback
    }

    /// Smooth weighted round robin: every available backend gains its weight, the one with the most is picked and
    /// loses the total. With weights 5, 1, 1 the order is a a b a c a a: spread out, never five in a row.
    private func nextWeightedBackend(
        of tenant: Tenant,
        weights: [Int],
        excluding excluded: Backend?,
        now: NIODeadline
    ) -> Backend? {
        let key = ObjectIdentifier(tenant)
        var current = currentWeights[key] ?? [Int](repeating: 0, count: weights.count)
        defer { currentWeights[key] = current }
        var total = 0
        var best: Int?
        var fallback: Backend?
        for (index, backend) in tenant.backends.enumerated() {
            guard backend.status.isAvailable(now: now) else { continue }
            if backend === excluded {
                fallback = backend
                continue
            }
            current[index] += weights[index]
            total += weights[index]
            if let chosen = best, current[chosen] >= current[index] { continue }
            best = index
        }
        guard let best else { return fallback }
        current[best] -= total
        return tenant.backends[best]
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
        guard let accessLog else { return }
        if accessLogBuffer?.append(record, now: .now()) == true, let lines = accessLogBuffer?.take() {
            accessLog.write(lines)
        }
    }

    /// Hands over the buffered lines if the oldest waited a second (or `force`).
    private func flushAccessLog(now: NIODeadline, force: Bool = false) {
        guard let accessLog, let since = accessLogBuffer?.since,
            force || now - since >= AccessLogWriter.flushInterval, let lines = accessLogBuffer?.take()
        else { return }
        accessLog.write(lines)
    }

    private func sweepTimeouts() {
        let now = NIODeadline.now()
        flushAccessLog(now: now)
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
        flushAccessLog(now: .now(), force: true)
        sweep?.cancel()
        sweep = nil
    }
}

@available(*, unavailable)
extension Worker: Sendable {}
