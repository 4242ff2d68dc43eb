import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The admin API: JSON over HTTP on a unix socket (mode 0600, so only the balancer's user can reach it), and
/// optionally on a loopback TCP address where every request must carry a bearer token (``TCPListener``). The CLI
/// is a thin client of it.
///
/// The endpoints are ``AdminAPI``'s. The server runs on an event loop of its own, not on the workers': a flood of
/// admin requests cannot delay client traffic. It also keeps to a budget of its own (``Limits``), shared by both
/// listeners: a cap on connections open at once, an idle timeout, and no reading from a connection while its
/// answers cannot be written (``AdminConnectionHandler``). A client of the unix socket is known by its uid
/// (`SO_PEERCRED`), one of the TCP listener by its token's name: that is who a change is logged as made by.
public final class AdminServer: Service {
    /// What the admin API may hold: `admin.max_connections` and `admin.idle_timeout`.
    public struct Limits: Sendable {
        /// The most admin connections open at once; more are closed as soon as they are accepted (one log line
        /// per burst). The admin socket shares the process's descriptors with the data path, so this bounds what
        /// idle admin clients can take from client traffic.
        public var maximumConnections: Int
        /// An admin connection on which no request comes and no answer is written for this long is closed.
        public var idleTimeout: TimeAmount

        /// The default of ``maximumConnections`` (`admin.max_connections`): the CLI opens one connection per
        /// request, so this is room for many operators and scripts at once.
        public static let defaultMaximumConnections = 64
        /// The default of ``idleTimeout`` (`admin.idle_timeout`).
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

    /// The loopback TCP address of `admin.listen` and the tokens its clients must present.
    public struct TCPListener: Sendable {
        public var address: SocketAddress
        public var tokens: AdminTokens

        public init(address: SocketAddress, tokens: AdminTokens) {
            self.address = address
            self.tokens = tokens
        }
    }

    private let path: String
    private let tcp: TCPListener?
    private let logger: Logger
    private let api: AdminAPI
    private let limits: Limits

    /// - Parameters:
    ///   - path: the unix socket to listen on; its directory is created if missing.
    ///   - tcp: the TCP listener too, if any.
    ///   - api: answers the requests.
    ///   - limits: the connection cap and idle timeout, for both listeners together.
    public init(path: String, tcp: TCPListener? = nil, logger: Logger, api: AdminAPI, limits: Limits = Limits()) {
        self.path = path
        self.tcp = tcp
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
        let limiter = NIOLoopBoundBox.makeBoxSendingValue(
            AdminConnectionLimiter(limit: limits.maximumConnections),
            eventLoop: eventLoop
        )
        let unix = try await bootstrap(on: eventLoop, limiter: limiter, tokens: nil)
            .bind(unixDomainSocketPath: path)
            .get()
        chmod(path, 0o600)
        var listeners = [unix]
        if let tcp {
            do {
                // SO_REUSEADDR only (not SO_REUSEPORT): a restart binds at once, a second process cannot share it.
                let channel = try await bootstrap(on: eventLoop, limiter: limiter, tokens: tcp.tokens)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .bind(to: tcp.address)
                    .get()
                listeners.append(channel)
            } catch let error as IOError where error.errnoCode == EADDRINUSE {
                try? await unix.close()
                try? FileManager.default.removeItem(atPath: path)
                throw AdminServerError.addressInUse(tcp.address)
            } catch {
                try? await unix.close()
                try? FileManager.default.removeItem(atPath: path)
                throw error
            }
            logger.info("admin API on \(path) and on http://\(Self.format(tcp.address)) (bearer token)")
        } else {
            logger.info("admin API on \(path)")
        }
        try? await gracefulShutdown()
        for listener in listeners {
            try? await listener.close()
        }
        try? FileManager.default.removeItem(atPath: path)
    }

    /// A listener's bootstrap: the connection cap (shared by both listeners through `limiter`), then the admin
    /// pipeline, with the unix socket's peer or the TCP listener's `tokens` as the requests' access.
    private func bootstrap(
        on eventLoop: any EventLoop,
        limiter: NIOLoopBoundBox<AdminConnectionLimiter>,
        tokens: AdminTokens?
    ) -> ServerBootstrap {
        let api = self.api
        let limits = self.limits
        let logger = self.logger
        return ServerBootstrap(group: eventLoop)
            // Admin requests are small: reading little at a time bounds what a pipelining client makes us decode
            // before the handler holds further reads back.
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 16384)
            )
            .childChannelInitializer { channel in
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
                    return channel.eventLoop.makeFailedFuture(AdminConnectionRefused())
                }
                if let tokens {
                    return channel.eventLoop.makeCompletedFuture {
                        try Self.configureConnection(
                            channel.pipeline.syncOperations,
                            api: api,
                            access: .bearer(tokens),
                            limits: limits
                        )
                    }
                }
                return Self.peer(of: channel).flatMapThrowing { actor in
                    try Self.configureConnection(
                        channel.pipeline.syncOperations,
                        api: api,
                        access: .local(actor),
                        limits: limits
                    )
                }
            }
    }

    /// `127.0.0.1:9000`, `[::1]:9000` (also the metrics listener's, in its log line).
    static func format(_ address: SocketAddress) -> String {
        let host = address.ipAddress ?? "?"
        let port = address.port ?? 0
        return address.protocol == .inet6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

extension AdminServer {
    /// The handlers of one admin connection (tests build the same pipeline on an `EmbeddedChannel`).
    static func configureConnection(
        _ pipeline: ChannelPipeline.SynchronousOperations,
        api: AdminAPI,
        access: AdminAPI.Access,
        limits: Limits
    ) throws {
        // Pipelining and decoder errors are the AdminConnectionHandler's own job: it holds requests back while
        // answers cannot be written, and closes the connection after a malformed one.
        try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
        try pipeline.addHandler(
            AdminConnectionHandler(
                responder: AdminAPIResponder(api: api, access: access),
                idleTimeout: limits.idleTimeout
            )
        )
    }

    /// Who is at the other end of a unix socket connection: the uid the kernel recorded when it connected
    /// (`SO_PEERCRED`, which the client cannot forge), or ``ChangeActor/unknownUser`` where that is not available.
    static func peer(of channel: any Channel) -> EventLoopFuture<ChangeActor> {
        #if os(Linux)
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededFuture(.unknownUser)
        }
        return peerCredentials(provider).map { ChangeActor.user(uid: $0.uid) }.recover { _ in .unknownUser }
        #else
        return channel.eventLoop.makeSucceededFuture(.unknownUser)
        #endif
    }

    #if os(Linux)
    /// Linux's `struct ucred` (`pid_t`, `uid_t`, `gid_t`: three 32-bit integers, in this order), declared here
    /// because Glibc declares it only under `_GNU_SOURCE`, which Swift's Glibc module is not built with.
    struct PeerCredentials: Sendable {
        var pid: Int32
        var uid: UInt32
        var gid: UInt32
    }

    /// `getsockopt(SOL_SOCKET, SO_PEERCRED)` of the connection. Not public nor inlinable, as NIO asks of callers of
    /// `unsafeGetSocketOption` (see NIOCore's SocketOptionProvider.swift).
    private static func peerCredentials(_ provider: any SocketOptionProvider) -> EventLoopFuture<PeerCredentials> {
        provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
    }
    #endif

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
    case addressInUse(SocketAddress)

    public var description: String {
        switch self {
        case .socketInUse(let path):
            return "the admin socket \(path) is in use by another running balancer; stop it, or give this one "
                + "another admin.socket (or SWITCHYARD_ADMIN)"
        case .addressInUse(let address):
            return "the admin address \(address.ipAddress ?? "?"):\(address.port ?? 0) (admin.listen) is in use by "
                + "another process; stop it, or give this balancer another admin.listen"
        }
    }
}
