import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The admin API: JSON over HTTP on a unix socket (mode 0600, so only the balancer's user can reach it). The CLI
/// is a thin client of it.
///
/// The endpoints are ``AdminAPI``'s. The server runs on an event loop of its own, not on the workers': a flood of
/// admin requests cannot delay client traffic. It also keeps to a budget of its own (``Limits``): a cap on
/// connections open at once, an idle timeout, and no reading from a connection while its answers cannot be
/// written (``AdminConnectionHandler``).
public final class AdminServer: Service {
    /// What the admin API may hold. Not in the configuration file (yet): the defaults suit any operator, and tests
    /// pass smaller ones.
    public struct Limits: Sendable {
        /// The most admin connections open at once; more are closed as soon as they are accepted (one log line
        /// per burst). The admin socket shares the process's descriptors with the data path, so this bounds what
        /// idle admin clients can take from client traffic.
        public var maximumConnections: Int
        /// An admin connection on which no request comes and no answer is written for this long is closed.
        public var idleTimeout: TimeAmount

        /// The default of ``maximumConnections``: the CLI opens one connection per request, so this is room for
        /// many operators and scripts at once. (A candidate for an `admin.max_connections` key.)
        public static let defaultMaximumConnections = 64
        /// The default of ``idleTimeout``. (A candidate for an `admin.idle_timeout` key.)
        public static let defaultIdleTimeout = TimeAmount.seconds(60)

        /// - Parameters:
        ///   - maximumConnections: at least 1.
        ///   - idleTimeout: how long a connection may go without a request or an answer written.
        public init(
            maximumConnections: Int = Limits.defaultMaximumConnections,
            idleTimeout: TimeAmount = Limits.defaultIdleTimeout
        ) {
            precondition(maximumConnections >= 1, "the admin API needs room for one connection")
            self.maximumConnections = maximumConnections
            self.idleTimeout = idleTimeout
        }
    }

    private let path: String
    private let logger: Logger
    private let api: AdminAPI
    private let limits: Limits

    /// - Parameters:
    ///   - path: the unix socket to listen on; its directory is created if missing.
    ///   - api: answers the requests.
    ///   - limits: the connection cap and idle timeout.
    public init(path: String, logger: Logger, api: AdminAPI, limits: Limits = Limits()) {
        self.path = path
        self.logger = logger
        self.api = api
        self.limits = limits
    }

    public func run() async throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        if FileManager.default.fileExists(atPath: path) {
            // Another balancer answering here means two instances share one admin socket (and, through
            // SO_REUSEPORT, possibly the same ports): refuse rather than steal it. A dead socket file is removed.
            if Self.isAnswering(path) {
                throw AdminServerError.socketInUse(path)
            }
            try FileManager.default.removeItem(atPath: path)
        }
        // One thread of its own: the listener and every admin connection live on this one loop, which is what
        // lets the connection limiter be a plain value bound to it.
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
        let api = self.api
        let limits = self.limits
        let logger = self.logger
        let limiter = NIOLoopBoundBox.makeBoxSendingValue(
            AdminConnectionLimiter(limit: limits.maximumConnections),
            eventLoop: eventLoop
        )
        let channel = try await ServerBootstrap(group: eventLoop)
            // Admin requests are small: reading little at a time bounds what a pipelining client makes us decode
            // before the handler holds further reads back.
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 16384)
            )
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    switch limiter.value.connectionOpened(now: .now()) {
                    case .accept:
                        channel.closeFuture.whenComplete { _ in limiter.value.connectionClosed() }
                    case .refuse(let log, let unlogged):
                        if log {
                            logger.warning(
                                """
                                admin connection refused: \(limits.maximumConnections) admin connections are open, \
                                the most allowed (\(unlogged) more refused since the last such line)
                                """
                            )
                        }
                        // Failing the initializer closes the channel before it is registered or read.
                        throw AdminConnectionRefused()
                    }
                    try Self.configureConnection(channel.pipeline.syncOperations, api: api, limits: limits)
                }
            }
            .bind(unixDomainSocketPath: path)
            .get()
        chmod(path, 0o600)
        logger.info("admin API on \(path)")
        try? await gracefulShutdown()
        try? await channel.close()
        try? FileManager.default.removeItem(atPath: path)
    }
}

extension AdminServer {
    /// The handlers of one admin connection (tests build the same pipeline on an `EmbeddedChannel`).
    static func configureConnection(
        _ pipeline: ChannelPipeline.SynchronousOperations,
        api: AdminAPI,
        limits: Limits
    ) throws {
        // Pipelining and decoder errors are the AdminConnectionHandler's own job: it holds requests back while
        // answers cannot be written, and closes the connection after a malformed one.
        try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
        try pipeline.addHandler(AdminConnectionHandler(api: api, idleTimeout: limits.idleTimeout))
    }

    /// Whether something accepts connections on the unix socket at `path`.
    static func isAnswering(_ path: String) -> Bool {
        guard let descriptor = connectUnixSocket(path) else { return false }
        close(descriptor)
        return true
    }

    /// A blocking stream socket connected to the unix socket at `path`, or `nil` with `errno` set. For the admin
    /// API's clients: the CLI and the check above.
    public static func connectUnixSocket(_ path: String) -> Int32? {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(descriptor)
            errno = ENAMETOOLONG
            return nil
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let saved = errno
            close(descriptor)
            errno = saved
            return nil
        }
        return descriptor
    }
}

/// Fails the initializer of an admin connection over the cap, which makes NIO close it at once.
private struct AdminConnectionRefused: Error {}

/// Why the admin API could not start.
public enum AdminServerError: Error, CustomStringConvertible {
    case socketInUse(String)

    public var description: String {
        switch self {
        case .socketInUse(let path):
            return "the admin socket \(path) is in use by another running balancer; stop it, or give this one "
                + "another admin.socket (or SWITCHYARD_ADMIN)"
        }
    }
}
