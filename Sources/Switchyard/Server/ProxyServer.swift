import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import SwitchyardTLS

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The balancer's data plane as a `Service`: one listening socket per event loop and address (`SO_REUSEPORT`,
/// so the kernel spreads new connections over the loops), a ``Worker`` per loop, and a graceful drain on shutdown.
public final class ProxyServer: Service {
    private let configuration: Configuration
    private let group: MultiThreadedEventLoopGroup
    private let routes: RouteSource
    private let certificates: CertificateSource?
    private let logger: Logger
    private let accessLog: AccessLogWriter?
    private let workers: [NIOLoopBoundBox<Worker>]
    private let listeners: NIOLockedValueBox<[Channel]> = NIOLockedValueBox([])
    private let connectionCounter: ConnectionCounter
    private let bound: NIOLockedValueBox<[SocketAddress]> = NIOLockedValueBox([])
    private let acceptPauses: AcceptPauses
    /// The data path's own loops, with `io: epoll` (plain HTTP only; HTTPS stays on `group`).
    private let socketLoops: NIOLockedValueBox<[SocketLoop]> = NIOLockedValueBox([])
    /// What the data path counts; read by ``MetricsPage``.
    public let metrics: SwitchyardMetrics

    /// - Parameters:
    ///   - group: the worker loops; one listener per loop and address is opened on it.
    ///   - routes: the routing snapshot, which the caller may replace while the server runs.
    ///   - certificates: the certificates for `listen.https`, which the caller may replace while the server runs.
    ///   - metrics: where the workers count; one made for the group's loops when `nil`.
    ///   - accessLog: where the access log goes; none when `nil` (or when the configuration turns it off).
    public init(
        configuration: Configuration,
        group: MultiThreadedEventLoopGroup,
        routes: RouteSource,
        certificates: CertificateSource? = nil,
        metrics: SwitchyardMetrics? = nil,
        accessLog: AccessLogWriter? = nil,
        logger: Logger
    ) {
        self.configuration = configuration
        self.group = group
        self.routes = routes
        self.certificates = certificates
        self.logger = logger
        self.accessLog = configuration.accessLog ? accessLog : nil
        let counter = ConnectionCounter(limit: configuration.limits.maxConnections)
        self.connectionCounter = counter
        self.acceptPauses = AcceptPauses(logger: logger) { counter.current }
        let loops = Array(group.makeIterator())
        let metrics = metrics ?? SwitchyardMetrics(loops: loops.count)
        self.metrics = metrics
        var workers: [NIOLoopBoundBox<Worker>] = []
        for (index, loop) in loops.enumerated() {
            let worker = Worker(
                eventLoop: loop,
                loop: index,
                metrics: metrics.proxy,
                routes: routes,
                configuration: configuration,
                connectionCounter: counter,
                logger: logger,
                accessLog: self.accessLog
            )
            workers.append(NIOLoopBoundBox.makeBoxSendingValue(worker, eventLoop: loop))
        }
        self.workers = workers
    }

    /// Client connections open now, across workers.
    public var openConnections: Int {
        connectionCounter.current
    }

    /// The addresses actually bound (with the real port when the configuration asked for port 0).
    public var boundAddresses: [SocketAddress] {
        bound.withLockedValue { $0 }
    }

    /// Opens the listeners. Separate from ``run()`` so that callers (tests, the demo) can learn the ports.
    public func start() async throws {
        for worker in workers {
            try await worker.eventLoop.submit { worker.value.start() }.get()
        }
        var channels: [Channel] = []
        var addresses: [SocketAddress] = []
        var endpoints: [(SocketAddress, CertificateSource?)] = configuration.listen.http.map { ($0, nil) }
        if !configuration.listen.https.isEmpty {
            guard let certificates else { throw ProxyServerError.httpsWithoutCertificates }
            endpoints += configuration.listen.https.map { ($0, certificates) }
        }
        for (address, _) in endpoints {
            try Self.checkNotInUse(address)
        }
        if configuration.io == .epoll {
            addresses += try startSocketLoops(endpoints)
            endpoints = []
        }
        for (address, certificates) in endpoints {
            // With port 0 the first listener picks a port and the others join it.
            var target = address
            for worker in workers {
                let channel = try await bind(target, worker: worker, certificates: certificates)
                channels.append(channel)
                if let local = channel.localAddress, target.port == 0 {
                    target = local
                }
            }
            addresses.append(target)
            logger.info("listening for \(certificates == nil ? "http" : "https") on \(target)")
        }
        let started = channels
        listeners.withLockedValue { $0 = started }
        let resolved = addresses
        bound.withLockedValue { $0 = resolved }
    }

    /// Starts the loops of `io: epoll` and their listeners (one per loop and address, `SO_REUSEPORT`); returns the
    /// addresses bound.
    private func startSocketLoops(_ endpoints: [(SocketAddress, CertificateSource?)]) throws -> [SocketAddress] {
        var loops: [SocketLoop] = []
        let configuration = self.configuration
        let routes = self.routes
        let metrics = self.metrics.proxy
        let counter = self.connectionCounter
        let acceptPauses = self.acceptPauses
        let accessLog = self.accessLog
        let logger = self.logger
        for index in workers.indices {
            let loop = try SocketLoop(index: index)
            loop.start(name: "switchyard-io-\(index)") { loop in
                LoopWorker(
                    loop: loop,
                    configuration: configuration,
                    routes: routes,
                    metrics: metrics,
                    connectionCounter: counter,
                    acceptPauses: acceptPauses,
                    accessLog: accessLog,
                    logger: logger
                )
            }
            loops.append(loop)
        }
        let started = loops
        socketLoops.withLockedValue { $0 = started }
        var addresses: [SocketAddress] = []
        for (address, certificates) in endpoints {
            var target = address
            for loop in loops {
                let descriptor = try SocketDescriptor.listen(on: target, backlog: 4096)
                if target.port == 0, let local = descriptor.localAddress() {
                    target = local
                }
                loop.execute { $0.addListener(descriptor, certificates: certificates) }
            }
            addresses.append(target)
            logger.info("listening for \(certificates == nil ? "http" : "https") on \(target) (io: epoll)")
        }
        return addresses
    }

    /// Refuses an address another process listens on. The listeners use `SO_REUSEPORT` (one per event loop), which
    /// would otherwise let a second balancer started by mistake bind the same port and silently take part of the
    /// connections. A probe socket without `SO_REUSEPORT` cannot bind where anyone listens; `SO_REUSEADDR` keeps
    /// connections in TIME_WAIT from a previous run from counting.
    static func checkNotInUse(_ address: SocketAddress) throws(ProxyServerError) {
        let family: Int32
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        case .unixDomainSocket: return
        }
        guard address.port != 0 else { return }
        let probe = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        // Without a probe, the bind that follows still fails on a port held without SO_REUSEPORT.
        guard probe >= 0 else { return }
        defer { close(probe) }
        var one: Int32 = 1
        _ = setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockAddr { pointer, length in bindSocket(probe, pointer, socklen_t(length)) }
        if bound != 0, errno == EADDRINUSE {
            throw .addressInUse(address.description)
        }
    }

    private func bind(
        _ address: SocketAddress,
        worker: NIOLoopBoundBox<Worker>,
        certificates: CertificateSource?
    ) async throws -> Channel {
        let loop = worker.eventLoop
        let handshakeTimeout = configuration.timeouts.tlsHandshake
        let logger = self.logger
        let acceptPauses = self.acceptPauses
        return try await ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(
                ChannelOptions.Types.SocketOption(
                    level: SocketOptionLevel(SOL_SOCKET),
                    name: SocketOptionName(SO_REUSEPORT)
                ),
                value: 1
            )
            .serverChannelOption(.maxMessagesPerRead, value: 16)
            .serverChannelInitializer { channel in
                // Out of descriptors, accepting pauses instead of spinning: this `bind` installs no backoff, and NIO's own
                // would not stop the spin (see AcceptPauseHandler).
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(episodes: acceptPauses))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let certificates {
                        let tls = TLSServerHandler(
                            certificates: certificates,
                            handshakeTimeout: handshakeTimeout,
                            logger: logger
                        )
                        try channel.pipeline.syncOperations.addHandler(tls)
                    }
                    let handler = ClientConnectionHandler(
                        worker: worker.value,
                        scheme: certificates == nil ? "http" : "https"
                    )
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .bind(to: address)
            .get()
    }

    /// Serves until graceful shutdown is requested, then drains: listeners close at once, requests in flight get
    /// up to `timeouts.drain` to finish, and whatever is left is closed.
    public func run() async throws {
        if listeners.withLockedValue({ $0.isEmpty }), socketLoops.withLockedValue({ $0.isEmpty }) {
            do {
                try await start()
            } catch {
                logger.critical("cannot listen: \(error)")
                await shutdown()
                throw error
            }
        }
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Stops accepting, drains and closes.
    public func shutdown() async {
        let channels = listeners.withLockedValue { channels in
            defer { channels = [] }
            return channels
        }
        for channel in channels {
            try? await channel.close()
        }
        let loops = socketLoops.withLockedValue { $0 }
        for loop in loops {
            await loop.submit { $0.closeListeners() }
        }
        logger.info("draining connections", metadata: ["timeout": "\(configuration.timeouts.drain)"])
        for worker in workers {
            try? await worker.eventLoop.submit { worker.value.beginShutdown() }.get()
        }
        for loop in loops {
            await loop.submit { $0.beginShutdown() }
        }
        let deadline = NIODeadline.now() + configuration.timeouts.drain
        while NIODeadline.now() < deadline {
            var open = 0
            for worker in workers {
                open += (try? await worker.eventLoop.submit { worker.value.connectionCount }.get()) ?? 0
            }
            for loop in loops {
                open += await loop.submit { $0.clientCount } ?? 0
            }
            if open == 0 { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        for worker in workers {
            try? await worker.eventLoop.submit { worker.value.closeAll() }.get()
        }
        for loop in loops {
            await loop.submit { worker in
                worker.closeAll()
                worker.stop()
            }
        }
        socketLoops.withLockedValue { $0 = [] }
        logger.info("stopped")
    }
}

/// Why the server could not start.
public enum ProxyServerError: Error, CustomStringConvertible {
    /// `listen.https` is set but no certificates were given.
    case httpsWithoutCertificates
    /// Another process listens on a configured address.
    case addressInUse(String)

    public var description: String {
        switch self {
        case .httpsWithoutCertificates:
            return "listen.https needs certificates: set tls.certificate and tls.key"
        case .addressInUse(let address):
            return "\(address) is in use by another process (another switchyard?); stop it or change listen in the "
                + "configuration"
        }
    }
}

/// `bind(2)`, under a name that the server's own `bind` does not shadow.
private func bindSocket(_ socket: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 {
    bind(socket, address, length)
}
