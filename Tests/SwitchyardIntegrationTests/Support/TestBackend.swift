import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A real HTTP backend on loopback that records what reaches it and answers as a test scripts it.
final class TestBackend: Sendable {
    /// A request as the backend saw it.
    struct Request: Sendable {
        var head: HTTPRequestHead
        var bodyBytes: Int
        var connection: Int
    }

    /// How to answer a request.
    enum Behavior: Sendable {
        /// A fixed body with a `Content-Length`.
        case respond(status: HTTPResponseStatus = .ok, body: String, headers: [(String, String)] = [])
        /// A body of `bytes` zero bytes, streamed in 64 KiB pieces, chunked or with a length.
        case stream(bytes: Int, chunked: Bool)
        /// Answers with how many body bytes it received, after the whole body.
        case countBody
        /// Answers with its own name (to tell backends apart).
        case name
        /// Never answers.
        case hang
        /// Answers with `body` after `delay`.
        case delayed(TimeAmount, body: String)
        /// Answers with `body` once the test opens `gate`: a request that stays in progress for exactly as long as
        /// the test needs, however slowly a loaded machine runs the steps in between.
        case gated(ResponseGate, body: String)
    }

    /// What a ``Behavior/gated(_:body:)`` answer waits for.
    final class ResponseGate: Sendable {
        private let state = NIOLockedValueBox<(open: Bool, waiting: [@Sendable () -> Void])>((false, []))

        init() {}

        /// Runs `action` once the gate is open: now if it is already.
        func whenOpen(_ action: @escaping @Sendable () -> Void) {
            let now = state.withLockedValue { state in
                if !state.open { state.waiting.append(action) }
                return state.open
            }
            if now { action() }
        }

        /// Lets every waiting answer go, and every later one at once.
        func open() {
            let waiting = state.withLockedValue { state in
                defer { state = (true, []) }
                return state.waiting
            }
            for action in waiting { action() }
        }
    }

    let name: String
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let state: NIOLockedValueBox<(requests: [Request], connections: Int)>

    var port: Int {
        channel.localAddress?.port ?? 0
    }

    var address: SocketAddress {
        // swift-format-ignore: NeverForceUnwrap
        try! SocketAddress(ipAddress: "127.0.0.1", port: port)
    }

    var requests: [Request] {
        state.withLockedValue { $0.requests }
    }

    var connectionCount: Int {
        state.withLockedValue { $0.connections }
    }

    private init(
        name: String,
        group: MultiThreadedEventLoopGroup,
        channel: Channel,
        state: NIOLockedValueBox<(requests: [Request], connections: Int)>
    ) {
        self.name = name
        self.group = group
        self.channel = channel
        self.state = state
    }

    static func start(
        name: String = "backend",
        behavior: @escaping @Sendable (HTTPRequestHead) -> Behavior = { _ in .name }
    ) async throws -> TestBackend {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let state = NIOLockedValueBox<(requests: [Request], connections: Int)>(([], 0))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = state.withLockedValue { state -> Int in
                        state.connections += 1
                        return state.connections
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        Handler(name: name, connection: connection, state: state, behavior: behavior)
                    )
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return TestBackend(name: name, group: group, channel: channel, state: state)
    }

    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let name: String
        let connection: Int
        let state: NIOLockedValueBox<(requests: [Request], connections: Int)>
        let behavior: @Sendable (HTTPRequestHead) -> Behavior
        var head: HTTPRequestHead?
        var bodyBytes = 0

        init(
            name: String,
            connection: Int,
            state: NIOLockedValueBox<(requests: [Request], connections: Int)>,
            behavior: @escaping @Sendable (HTTPRequestHead) -> Behavior
        ) {
            self.name = name
            self.connection = connection
            self.state = state
            self.behavior = behavior
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                bodyBytes = 0
            case .body(let body):
                bodyBytes += body.readableBytes
            case .end:
                guard let head else { return }
                self.head = nil
                let request = Request(head: head, bodyBytes: bodyBytes, connection: connection)
                state.withLockedValue { $0.requests.append(request) }
                answer(head, context: context)
            }
        }

        private func answer(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
            switch behavior(head) {
            case .respond(let status, let body, let extra):
                respond(status: status, body: body, extra: extra, context: context)
            case .name:
                respond(status: .ok, body: name, extra: [], context: context)
            case .countBody:
                respond(status: .ok, body: String(bodyBytes), extra: [], context: context)
            case .hang:
                break
            case .delayed(let delay, let body):
                context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
                    self.respond(status: .ok, body: body, extra: [], context: context)
                }
            case .gated(let gate, let body):
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                gate.whenOpen {
                    bound.eventLoop.execute {
                        let (handler, context) = bound.value
                        handler.respond(status: .ok, body: body, extra: [], context: context)
                    }
                }
            case .stream(let bytes, let chunked):
                var headers = HTTPHeaders()
                if chunked {
                    headers.add(name: "Transfer-Encoding", value: "chunked")
                } else {
                    headers.add(name: "Content-Length", value: String(bytes))
                }
                context.write(
                    wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))),
                    promise: nil
                )
                streamBody(remaining: bytes, context: context)
            }
        }

        private func streamBody(remaining: Int, context: ChannelHandlerContext) {
            guard remaining > 0 else {
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                return
            }
            let size = min(remaining, 64 * 1024)
            let piece = ByteBuffer(repeating: UInt8(ascii: "z"), count: size)
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(piece)))).assumeIsolated().whenSuccess {
                self.streamBody(remaining: remaining - size, context: context)
            }
        }

        private func respond(
            status: HTTPResponseStatus,
            body: String,
            extra: [(String, String)],
            context: ChannelHandlerContext
        ) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            for (name, value) in extra { headers.add(name: name, value: value) }
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                promise: nil
            )
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
