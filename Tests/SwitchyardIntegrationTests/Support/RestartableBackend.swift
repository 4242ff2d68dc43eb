import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An HTTP backend on loopback that can be stopped (its port then refuses connections and its open connections
/// close) and started again on the same port, as a tenant's backend that dies and comes back.
///
/// It answers the health path with a status the test sets (or not at all), and every other request with its name.
final class RestartableBackend: Sendable {
    /// How the health path is answered.
    enum HealthAnswer: Sendable {
        case status(HTTPResponseStatus)
        /// Accepts the request and never answers.
        case hang
    }

    private struct State {
        var port = 0
        var group: MultiThreadedEventLoopGroup?
        var channel: Channel?
        var healthAnswer = HealthAnswer.status(.ok)
        var healthRequestTimes: [ContinuousClock.Instant] = []
        var clientRequestTimes: [ContinuousClock.Instant] = []
        var connections = 0
    }

    let name: String
    let healthPath: String
    private let state = NIOLockedValueBox(State())

    private init(name: String, healthPath: String) {
        self.name = name
        self.healthPath = healthPath
    }

    /// Starts a backend on a port chosen by the system.
    static func start(name: String, healthPath: String = "/healthz") async throws -> RestartableBackend {
        let backend = RestartableBackend(name: name, healthPath: healthPath)
        try await backend.start()
        return backend
    }

    var port: Int {
        state.withLockedValue { $0.port }
    }

    var address: SocketAddress {
        // swift-format-ignore: NeverForceUnwrap
        try! SocketAddress(ipAddress: "127.0.0.1", port: port)
    }

    var isRunning: Bool {
        state.withLockedValue { $0.channel != nil }
    }

    /// Requests for the health path received so far, over every run.
    var healthRequests: Int {
        state.withLockedValue { $0.healthRequestTimes.count }
    }

    /// When each health request was received, over every run.
    var healthRequestTimes: [ContinuousClock.Instant] {
        state.withLockedValue { $0.healthRequestTimes }
    }

    /// Other requests received so far, over every run.
    var clientRequests: Int {
        state.withLockedValue { $0.clientRequestTimes.count }
    }

    /// Connections accepted so far (a TCP health check is one with no request), over every run.
    var connections: Int {
        state.withLockedValue { $0.connections }
    }

    /// When each other request was received, over every run.
    var clientRequestTimes: [ContinuousClock.Instant] {
        state.withLockedValue { $0.clientRequestTimes }
    }

    var healthAnswer: HealthAnswer {
        get { state.withLockedValue { $0.healthAnswer } }
        set { state.withLockedValue { $0.healthAnswer = newValue } }
    }

    /// Starts listening, on the same port as before if it ran before. A few attempts are made in case another
    /// socket holds the port for a moment.
    func start() async throws {
        precondition(!isRunning, "already running")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let state = self.state
        let name = self.name
        let healthPath = self.healthPath
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    state.withLockedValue { $0.connections += 1 }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        Handler(name: name, healthPath: healthPath, state: state)
                    )
                }
            }
        var attempt = 0
        while true {
            do {
                let channel = try await bootstrap.bind(host: "127.0.0.1", port: port).get()
                state.withLockedValue { state in
                    state.port = channel.localAddress?.port ?? state.port
                    state.group = group
                    state.channel = channel
                }
                return
            } catch {
                attempt += 1
                guard attempt < 20 else {
                    try? await group.shutdownGracefully()
                    throw error
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    /// Stops listening and closes every connection; the port refuses connections from now on.
    func stop() async {
        let (channel, group) = state.withLockedValue { state in
            defer {
                state.channel = nil
                state.group = nil
            }
            return (state.channel, state.group)
        }
        try? await channel?.close()
        try? await group?.shutdownGracefully()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let name: String
        let healthPath: String
        let state: NIOLockedValueBox<State>
        var head: HTTPRequestHead?

        init(name: String, healthPath: String, state: NIOLockedValueBox<State>) {
            self.name = name
            self.healthPath = healthPath
            self.state = state
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
                if head.uri == healthPath {
                    let answer = state.withLockedValue { state in
                        state.healthRequestTimes.append(.now)
                        return state.healthAnswer
                    }
                    if case .status(let status) = answer {
                        respond(status: status, body: "health", context: context)
                    }
                } else {
                    state.withLockedValue { $0.clientRequestTimes.append(.now) }
                    respond(status: .ok, body: name, context: context)
                }
            }
        }

        private func respond(status: HTTPResponseStatus, body: String, context: ChannelHandlerContext) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                promise: nil
            )
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
