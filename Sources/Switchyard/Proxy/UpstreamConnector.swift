import NIOCore
import NIOPosix

/// Opens connections to backends. The data path only ever asks for a channel on its own event loop with an
/// ``UpstreamConnection`` in its pipeline; tests substitute channels of their own to check exact bytes.
protocol UpstreamConnector {
    /// Connects to `backend` on `eventLoop` with `handler` as the channel's only handler.
    func connect(
        to backend: Backend,
        handler: UpstreamConnection,
        timeout: TimeAmount,
        on eventLoop: EventLoop
    ) -> EventLoopFuture<Channel>
}

/// TCP connections with SwiftNIO's `ClientBootstrap`, half-closure allowed (tunnels pass a FIN on).
struct SocketUpstreamConnector: UpstreamConnector {
    func connect(
        to backend: Backend,
        handler: UpstreamConnection,
        timeout: TimeAmount,
        on eventLoop: EventLoop
    ) -> EventLoopFuture<Channel> {
        let loopBound = NIOLoopBound(handler, eventLoop: eventLoop)
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(loopBound.value)
                }
            }
            .connect(to: backend.address)
    }
}
