import Logging
import NIOCore
import NIOPosix
import Testing

@testable import Switchyard

/// Connections a backend has open and has seen, counted on its event loop.
private final class ConnectionCensus {
    var open = 0
    var most = 0
    var total = 0
}

/// A backend that accepts health checks and never answers them, so that every check runs into its timeout.
private final class SilentBackendHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let census: ConnectionCensus

    init(census: ConnectionCensus) {
        self.census = census
    }

    func channelActive(context: ChannelHandlerContext) {
        census.open += 1
        census.total += 1
        census.most = max(census.most, census.open)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        census.open -= 1
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// A timeout equal to the interval is accepted (``HealthConfigurationTests``); this checks what makes that safe: a
/// backend's checks never overlap, because the next one is only scheduled when the previous one has finished.
@Suite("Health check scheduling")
struct HealthCheckSchedulingTests {
    @Test("checks that run into a timeout equal to the interval are never in flight twice")
    func checksDoNotOverlap() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let census = NIOLoopBoundBox.makeBoxSendingValue(ConnectionCensus(), eventLoop: loop)
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SilentBackendHandler(census: census.value))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let address = try #require(server.localAddress)

        let interval = TimeAmount.milliseconds(150)
        let settings = HealthCheckConfiguration(
            path: "/healthz",
            interval: interval,
            timeout: interval,
            rise: 1,
            fall: 100
        )
        let check = BackendCheck(
            backend: Backend(address: address),
            tenant: "t",
            settings: settings,
            host: "t.test",
            eventLoop: loop,
            logger: Logger(label: "health-scheduling-test")
        )
        let box = NIOLoopBoundBox.makeBoxSendingValue(check, eventLoop: loop)
        loop.execute { box.value.start() }
        // The first check comes within one interval, then one every timeout + interval ± 10 %: at least 3 in 1.2 s.
        try await Task.sleep(for: .milliseconds(1200))
        let (most, total) = try await loop.submit {
            box.value.stop()
            return (census.value.most, census.value.total)
        }.get()

        #expect(total >= 2, "only \(total) checks ran")
        #expect(most == 1, "\(most) checks were in flight at once")
        try await server.close()
        try await group.shutdownGracefully()
    }
}
