import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The admin API: JSON over HTTP on a unix socket (mode 0600, so only the balancer's user can reach it). The CLI
/// is a thin client of it.
///
/// The endpoints are ``AdminAPI``'s.
public final class AdminServer: Service {
    private let path: String
    private let group: EventLoopGroup
    private let logger: Logger
    private let api: AdminAPI

    /// - Parameters:
    ///   - path: the unix socket to listen on; its directory is created if missing.
    ///   - api: answers the requests.
    public init(path: String, group: EventLoopGroup, logger: Logger, api: AdminAPI) {
        self.path = path
        self.group = group
        self.logger = logger
        self.api = api
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
        let api = self.api
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(api: api))
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

/// Answers the admin API's requests.
private final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let api: AdminAPI
    private var head: HTTPRequestHead?

    init(api: AdminAPI) {
        self.api = api
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            let response = api.respond(method: head.method.rawValue, path: head.uri)
            let code = HTTPResponseStatus(statusCode: response.status)
            let body = response.body
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.count))
            if let allow = response.allow {
                headers.add(name: "Allow", value: allow)
            }
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: code, headers: headers))),
                promise: nil
            )
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            let keepAlive = head.isKeepAlive
            let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { loopBoundContext.value.close(promise: nil) }
            }
        }
    }
}
