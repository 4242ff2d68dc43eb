import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// The demo environment behind `switchyard demo`: a tiny chat site, served by its own backend on loopback, that
/// the balancer routes `demo.localhost` to.
///
/// `GET /` is the chat page, `/ws/` its WebSocket (every text message is sent to every connected client),
/// `/healthz` answers `ok`. It is deliberately an ordinary backend, built on NIOHTTP1 and NIOWebSocket, that knows
/// nothing of Switchyard: it shows what any tenant's application sees (the `X-Forwarded-*` headers).
public final class DemoBackend: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel

    /// The address the backend listens on.
    public var address: SocketAddress? {
        channel.localAddress
    }

    private init(group: MultiThreadedEventLoopGroup, channel: Channel) {
        self.group = group
        self.channel = channel
    }

    /// Starts the backend on `address` (port 0 picks a free port).
    public static func start(on address: SocketAddress) async throws -> DemoBackend {
        // One loop: the chat room is then plain loop-bound state.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let room = NIOLoopBoundBox.makeBoxSendingValue(ChatRoom(), eventLoop: loop)
        do {
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    let upgrader = NIOWebSocketServerUpgrader(
                        maxFrameSize: 1 << 20,
                        shouldUpgrade: { channel, head in
                            channel.eventLoop.makeSucceededFuture(head.uri.hasPrefix("/ws") ? HTTPHeaders() : nil)
                        },
                        upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(ChatSocketHandler(room: room.value))
                            }
                        }
                    )
                    return channel.eventLoop.makeCompletedFuture {
                        let pageHandler = DemoPageHandler()
                        let boundPageHandler = NIOLoopBound(pageHandler, eventLoop: channel.eventLoop)
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withServerUpgrade: (
                                upgraders: [upgrader],
                                completionHandler: { context in
                                    context.pipeline.syncOperations.removeHandler(boundPageHandler.value, promise: nil)
                                }
                            )
                        )
                        try channel.pipeline.syncOperations.addHandler(pageHandler)
                    }
                }
                .bind(to: address)
                .get()
            return DemoBackend(group: group, channel: channel)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    public func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// The chat room: every connected socket, on the demo's one event loop.
final class ChatRoom {
    private var members: [ObjectIdentifier: Channel] = [:]

    func join(_ channel: Channel) {
        members[ObjectIdentifier(channel)] = channel
    }

    func leave(_ channel: Channel) {
        members[ObjectIdentifier(channel)] = nil
    }

    func broadcast(_ text: String, allocator: ByteBufferAllocator) {
        let frame = WebSocketFrame(fin: true, opcode: .text, data: allocator.buffer(string: text))
        for member in members.values {
            member.writeAndFlush(frame, promise: nil)
        }
    }
}

/// One chat client's WebSocket.
final class ChatSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let room: ChatRoom
    private var awaitingClose = false

    init(room: ChatRoom) {
        self.room = room
    }

    func handlerAdded(context: ChannelHandlerContext) {
        room.join(context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        room.leave(context.channel)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            var data = frame.unmaskedData
            let text = data.readString(length: data.readableBytes) ?? ""
            room.broadcast(String(text.prefix(2000)), allocator: context.channel.allocator)
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            guard !awaitingClose else { return }
            awaitingClose = true
            var data = frame.unmaskedData
            let code = data.readSlice(length: 2) ?? ByteBuffer()
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: code)
            context.writeAndFlush(wrapOutboundOut(close)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        default:
            frame.data.clear()
        }
    }
}

/// Serves the chat page and the health check over plain HTTP.
final class DemoPageHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var request: HTTPRequestHead?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let status: HTTPResponseStatus
        let type: String
        let body: String
        switch head.uri.split(separator: "?").first.map(String.init) ?? "/" {
        case "/":
            status = .ok
            type = "text/html; charset=utf-8"
            body = DemoPage.html(
                forwardedFor: head.headers["X-Forwarded-For"].first ?? "-",
                host: head.headers["Host"].first ?? "-",
                proto: head.headers["X-Forwarded-Proto"].first ?? "-"
            )
        case "/healthz":
            status = .ok
            type = "text/plain"
            body = "ok\n"
        default:
            status = .notFound
            type = "text/plain"
            body = "not found\n"
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Cache-Control", value: "no-store")
        let response = HTTPResponseHead(version: head.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        if head.method != .HEAD {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))),
                promise: nil
            )
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
