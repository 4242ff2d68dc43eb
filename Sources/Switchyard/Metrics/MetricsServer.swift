import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// `metrics.listen`: a read-only HTTP listener for Prometheus (`GET /metrics`) and people (`GET /`, the status
/// page), on an event loop of its own and with the admin API's connection budget (``AdminServer/Limits``), so
/// neither a slow scraper nor a flood of requests reaches the workers. Nothing on it changes anything. Without
/// `metrics.basic_auth_file` it answers anyone, so it belongs on loopback or a monitoring network.
public final class MetricsServer: Service {
    private let address: SocketAddress
    private let page: MetricsPage
    private let logger: Logger
    private let limits: AdminServer.Limits
    private let users: AdminTokens?
    private let bound: NIOLockedValueBox<SocketAddress?> = NIOLockedValueBox(nil)

    /// - Parameter users: with `metrics.basic_auth_file`, who may read (HTTP basic authentication).
    public init(
        address: SocketAddress,
        page: MetricsPage,
        logger: Logger,
        limits: AdminServer.Limits = .init(),
        users: AdminTokens? = nil
    ) {
        self.users = users
        self.address = address
        self.page = page
        self.logger = logger
        self.limits = limits
    }

    /// The address listened on once running (with the real port when the configuration asked for port 0).
    public var boundAddress: SocketAddress? {
        bound.withLockedValue { $0 }
    }

    public func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await serve(on: group.next())
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }

    private func serve(on eventLoop: any EventLoop) async throws {
        let limiter = NIOLoopBoundBox.makeBoxSendingValue(
            AdminConnectionLimiter(limit: limits.maximumConnections),
            eventLoop: eventLoop
        )
        let page = self.page
        let sampler = TrafficSampler { page.trafficReport() }
        let sampling = eventLoop.scheduleRepeatedTask(
            initialDelay: TrafficSampler.interval,
            delay: TrafficSampler.interval
        ) { _ in sampler.sample() }
        defer { sampling.cancel() }
        let responder = MetricsResponder(page: page, sampler: sampler, users: users)
        let limits = self.limits
        let logger = self.logger
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: eventLoop)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 1)
                .childChannelInitializer { channel in
                    switch limiter.value.connectionOpened(now: .now()) {
                    case .accept:
                        channel.closeFuture.whenComplete { _ in limiter.value.connectionClosed() }
                    case .refuse(let log, let unlogged):
                        if log {
                            logger.warning(
                                "metrics connection refused: \(limits.maximumConnections) are open (\(unlogged) more refused since the last such line)"
                            )
                        }
                        return channel.eventLoop.makeFailedFuture(MetricsConnectionRefused())
                    }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withPipeliningAssistance: false,
                            withErrorHandling: false
                        )
                        try channel.pipeline.syncOperations.addHandler(
                            AdminConnectionHandler(responder: responder, idleTimeout: limits.idleTimeout)
                        )
                    }
                }
                .bind(to: address)
                .get()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw MetricsServerError.addressInUse(address)
        }
        let local = channel.localAddress
        bound.withLockedValue { $0 = local }
        let authentication = users == nil ? "" : " (basic authentication)"
        logger.info(
            "metrics on http://\(local.map(AdminServer.format) ?? "?")/metrics, status page on /\(authentication)"
        )
        try? await gracefulShutdown()
        try? await channel.close()
    }
}

/// The pages of `metrics.listen`.
struct MetricsResponder: HTTPResponder {
    let page: MetricsPage
    let sampler: TrafficSampler
    let users: AdminTokens?

    func respond(to request: AdminAPI.Request) -> AdminAPI.Response {
        if let users, users.name(authorizingBasic: request.authorization) == nil {
            var response = AdminAPI.error(401, .unauthorized, "this listener needs a user of metrics.basic_auth_file")
            response.authenticate = "Basic realm=\"switchyard\", charset=\"UTF-8\""
            return response
        }
        let path = request.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.target
        guard path == "/metrics" || path == "/" else {
            return AdminAPI.error(404, .notFound, "no such page: \(path); this listener serves / and /metrics")
        }
        guard request.method == "GET" else {
            return AdminAPI.error(405, .methodNotAllowed, "\(request.method) \(path): use GET", allow: "GET")
        }
        if path == "/" {
            var response = AdminAPI.Response(
                status: 200,
                body: Data(page.statusPage(target: request.target, view: sampler.view()).utf8)
            )
            response.contentType = "text/html; charset=utf-8"
            return response
        }
        return page.response(to: request.target)
    }

    func bodyTooLarge() -> AdminAPI.Response {
        AdminAPI.error(413, .bodyTooLarge, "this listener takes no request bodies")
    }
}

/// Fails the initializer of a metrics connection over the cap, which makes NIO close it at once.
private struct MetricsConnectionRefused: Error {}

/// Why the metrics listener could not start.
public enum MetricsServerError: Error, CustomStringConvertible {
    case addressInUse(SocketAddress)

    public var description: String {
        switch self {
        case .addressInUse(let address):
            return "the metrics address \(address.ipAddress ?? "?"):\(address.port ?? 0) (metrics.listen) is in use by "
                + "another process; stop it, or give this balancer another metrics.listen"
        }
    }
}
