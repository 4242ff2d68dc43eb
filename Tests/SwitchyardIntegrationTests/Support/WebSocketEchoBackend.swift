import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A WebSocket echo server on 127.0.0.1 built on NIOWebSocket, standing in for a tenant's application.
///
/// On `/ws…` it upgrades and echoes every text, binary and continuation frame as it came (so messages keep their
/// fragmentation), answers pings, and completes the close handshake with the client's code and the reason
/// ``closeReason``. Two text messages are commands instead of data: ``closeCommand`` makes it drop the TCP
/// connection without a close frame (as a crashed process would), and ``resetCommand`` makes it reset the
/// connection (RST). A plain `GET` on any path is answered `200` with ``plainBody``. It counts connections, so
/// that a test can watch the backend side of a tunnel close.
final class WebSocketEchoBackend: Sendable {
    /// The text message that makes the backend close the connection without a close frame.
    static let closeCommand = "close-abruptly"
    /// The text message that makes the backend reset the connection.
    static let resetCommand = "reset-abruptly"
    /// The reason sent with the backend's close frame, so a client can tell it from one the balancer made up.
    static let closeReason = "echo-backend"
    /// The body of the answer to a request that does not upgrade.
    static let plainBody = "plain http on the websocket path"

    private struct Counts {
        var connections = 0
        var openConnections = 0
        var webSockets = 0
        var openWebSockets = 0
        var plainRequests = 0
    }

    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let counts: NIOLockedValueBox<Counts>

    var port: Int {
        channel.localAddress?.port ?? 0
    }

    var address: SocketAddress {
        // swift-format-ignore: NeverForceUnwrap
        try! SocketAddress(ipAddress: "127.0.0.1", port: port)
    }

    /// TCP connections accepted so far.
    var connections: Int {
        counts.withLockedValue { $0.connections }
    }

    /// TCP connections open now, upgraded or not.
    var openConnections: Int {
        counts.withLockedValue { $0.openConnections }
    }

    /// Connections upgraded to WebSocket so far.
    var webSockets: Int {
        counts.withLockedValue { $0.webSockets }
    }

    /// Upgraded connections open now.
    var openWebSockets: Int {
        counts.withLockedValue { $0.openWebSockets }
    }

    /// Requests answered as plain HTTP.
    var plainRequests: Int {
        counts.withLockedValue { $0.plainRequests }
    }

    private init(group: MultiThreadedEventLoopGroup, channel: Channel, counts: NIOLockedValueBox<Counts>) {
        self.group = group
        self.channel = channel
        self.counts = counts
    }

    static func start() async throws -> WebSocketEchoBackend {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let counts = NIOLockedValueBox(Counts())
        do {
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    counts.withLockedValue {
                        $0.connections += 1
                        $0.openConnections += 1
                    }
                    channel.closeFuture.whenComplete { _ in
                        counts.withLockedValue { $0.openConnections -= 1 }
                    }
                    let upgrader = NIOWebSocketServerUpgrader(
                        maxFrameSize: 4 << 20,
                        shouldUpgrade: { channel, head in
                            channel.eventLoop.makeSucceededFuture(head.uri.hasPrefix("/ws") ? HTTPHeaders() : nil)
                        },
                        upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(EchoHandler(counts: counts))
                            }
                        }
                    )
                    return channel.eventLoop.makeCompletedFuture {
                        let plain = PlainHandler(counts: counts)
                        let boundPlain = NIOLoopBound(plain, eventLoop: channel.eventLoop)
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withServerUpgrade: (
                                upgraders: [upgrader],
                                completionHandler: { context in
                                    context.pipeline.syncOperations.removeHandler(boundPlain.value, promise: nil)
                                }
                            )
                        )
                        try channel.pipeline.syncOperations.addHandler(plain)
                    }
                }
                .bind(host: "127.0.0.1", port: 0)
                .get()
            return WebSocketEchoBackend(group: group, channel: channel, counts: counts)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    /// Waits until `condition` holds, polling every 10 ms, at most `timeout` seconds.
    /// - Returns: the seconds waited, or `nil` if the condition never held.
    func wait(
        timeout: Double = 5,
        until condition: (WebSocketEchoBackend) -> Bool
    ) async -> Double? {
        let start = ContinuousClock.now
        while true {
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            if condition(self) { return seconds }
            if seconds > timeout { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Echoes frames on an upgraded connection.
    private final class EchoHandler: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame

        private let counts: NIOLockedValueBox<Counts>
        private var closing = false

        init(counts: NIOLockedValueBox<Counts>) {
            self.counts = counts
        }

        func handlerAdded(context: ChannelHandlerContext) {
            counts.withLockedValue {
                $0.webSockets += 1
                $0.openWebSockets += 1
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            counts.withLockedValue { $0.openWebSockets -= 1 }
            context.fireChannelInactive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.opcode {
            case .text where frame.fin:
                var data = frame.unmaskedData
                let text = data.readString(length: data.readableBytes)
                if text == WebSocketEchoBackend.closeCommand {
                    context.close(promise: nil)
                    return
                }
                if text == WebSocketEchoBackend.resetCommand {
                    // SO_LINGER with a zero timeout: close() sends a reset instead of a FIN.
                    guard let socket = context.channel as? SocketOptionProvider else {
                        context.close(promise: nil)
                        return
                    }
                    socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).assumeIsolated().whenComplete { _ in
                        context.close(promise: nil)
                    }
                    return
                }
                echo(frame, context: context)
            case .text, .binary, .continuation:
                echo(frame, context: context)
            case .ping:
                let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
                context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
            case .connectionClose:
                guard !closing else { return }
                closing = true
                var data = frame.unmaskedData
                var reply = context.channel.allocator.buffer(capacity: 2 + WebSocketEchoBackend.closeReason.utf8.count)
                if let code = data.readSlice(length: 2) {
                    var code = code
                    reply.writeBuffer(&code)
                    reply.writeString(WebSocketEchoBackend.closeReason)
                }
                let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: reply)
                context.writeAndFlush(wrapOutboundOut(close)).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            default:
                break
            }
        }

        private func echo(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
            let reply = WebSocketFrame(fin: frame.fin, opcode: frame.opcode, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            context.close(promise: nil)
        }
    }

    /// Answers requests that do not upgrade.
    private final class PlainHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private let counts: NIOLockedValueBox<Counts>
        private var request: HTTPRequestHead?

        init(counts: NIOLockedValueBox<Counts>) {
            self.counts = counts
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                request = head
            case .body:
                break
            case .end:
                guard request != nil else { return }
                request = nil
                counts.withLockedValue { $0.plainRequests += 1 }
                let body = WebSocketEchoBackend.plainBody
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "text/plain")
                headers.add(name: "Content-Length", value: String(body.utf8.count))
                let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
