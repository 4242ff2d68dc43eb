import Logging
import NIOCore

/// Pauses a listener for ``pause`` when `accept(2)` fails for lack of descriptors or memory (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`), as nginx does, instead of retrying at once.
///
/// Such a failure leaves the connection in the kernel's queue, so the level-triggered listener is readable again
/// at once: retrying straight away spins a core per listener (tens of thousands of failed `accept4` a second) and
/// starves the connections already open. NIO's own `AcceptBackoffHandler` does not help here: it delays the next
/// `read()`, but when the first accept of a wake-up fails the listener still has a read pending, stays registered
/// for readability and is woken again at once. This handler turns `autoRead` off instead, which takes the listener
/// out of the event loop's interest set until the pause is over; queued clients then wait in the backlog (they get
/// their answer once descriptors are free) rather than being refused.
///
/// Installed first in each listener's pipeline (by ``ProxyServer``); it sees the accepted channels go by to note
/// that accepting works again.
final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Channel

    /// How long accepting stops after each failure: nginx's 500 ms.
    static let pause: TimeAmount = .milliseconds(500)

    private let episodes: AcceptPauses
    private var resume: Scheduled<Void>?

    init(episodes: AcceptPauses) {
        self.episodes = episodes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        episodes.accepted()
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, DescriptorLimit.isLocalShortage(errno: error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        guard resume == nil, let options = context.channel.syncOptions else { return }
        // With autoRead off the listener is unregistered for readability; turning it back on re-registers it.
        guard (try? options.setOption(.autoRead, value: false)) != nil else { return }
        episodes.paused(by: error)
        resume = context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) { [self] in
            self.resume = nil
            guard context.channel.isActive else { return }
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let resume {
            resume.cancel()
            self.resume = nil
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}

@available(*, unavailable)
extension AcceptPauseHandler: Sendable {}

/// The accept pauses of every listener of a ``ProxyServer``, logged as episodes: one warning when accepting first
/// pauses (with the descriptor limit and the open connections), a reminder at most once a minute while pauses go
/// on, and one line when a connection is accepted again.
final class AcceptPauses: Sendable {
    private let log = EpisodeLog()
    private let logger: Logger
    private let openConnections: @Sendable () -> Int

    init(logger: Logger, openConnections: @escaping @Sendable () -> Int) {
        self.logger = logger
        self.openConnections = openConnections
    }

    func paused(by error: IOError) {
        paused(errno: error.errnoCode)
    }

    /// Accepting failed with `code` (one of ``DescriptorLimit/isLocalShortage(errno:)``'s) and pauses.
    func paused(errno code: CInt) {
        guard let report = log.occurred() else { return }
        let reason = DescriptorLimit.describe(errno: code)
        let limit = DescriptorLimit.current().map { "\($0.soft)" } ?? "unknown"
        let state =
            "descriptor limit \(limit), \(openConnections()) client connections open; accepting pauses "
            + "\(AcceptPauseHandler.pause.nanoseconds / 1_000_000) ms at a time until descriptors are free"
        switch report {
        case .started:
            logger.warning("cannot accept connections: \(reason) (\(state))")
        case .continuing(let count):
            let message =
                "still cannot accept connections: \(reason), \(count) pauses since the last report "
                + "(\(state))"
            logger.warning("\(message)")
        }
    }

    func accepted() {
        if log.succeeded() {
            logger.notice("accepting connections again (\(openConnections()) client connections open)")
        }
    }
}
