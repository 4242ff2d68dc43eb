import Logging
import NIOCore
import NIOPosix
import Testing

@testable import Switchyard

/// Connections a backend has open and has seen, counted on its event loop.
///
/// The backend learns that a check's connection closed from its own read event, which the loop may handle after the
/// accept of the next check's connection when both come in one wake-up (on a busy machine, often). So an overlap is
/// counted only when both connections stay open past ``settle``: a check started twice keeps both for its whole
/// timeout.
private final class ConnectionCensus {
    static let settle = TimeAmount.milliseconds(40)
    var open = 0
    var total = 0
    /// When a connection was accepted while another was open, until one of them closes.
    var overlapSince: NIODeadline?
    /// Overlaps that lasted past `settle`.
    var overlaps = 0

    func accepted() {
        open += 1
        total += 1
        if open > 1, overlapSince == nil { overlapSince = .now() }
    }

    func closed() {
        open -= 1
        if let since = overlapSince, open <= 1 {
            if NIODeadline.now() - since > Self.settle { overlaps += 1 }
            overlapSince = nil
        }
    }
}

/// A backend that accepts health checks and never answers them, so that every check runs into its timeout.
private final class SilentBackendHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let census: ConnectionCensus

    init(census: ConnectionCensus) {
        self.census = census
    }

    func channelActive(context: ChannelHandlerContext) {
        census.accepted()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        census.closed()
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
        let (overlaps, total, openOverlap) = try await loop.submit {
            box.value.stop()
            let census = census.value
            let open = census.overlapSince.map { NIODeadline.now() - $0 > ConnectionCensus.settle } ?? false
            return (census.overlaps, census.total, open)
        }.get()

        #expect(total >= 2, "only \(total) checks ran")
        #expect(overlaps == 0 && !openOverlap, "two checks were in flight at once (\(overlaps) times)")
        try await server.close()
        try await group.shutdownGracefully()
    }
}
