import COpenSSL
import Logging
import NIOCore

/// Sent down the pipeline once the TLS handshake is complete, so the HTTP layer knows which certificate the
/// connection was served (for its `421 Misdirected Request` check).
public struct TLSHandshakeCompleted: Sendable {
    /// The SNI name the client sent, if any.
    public let serverName: String?
    /// The context whose certificate was served.
    public let certificate: TLSContext
    /// The negotiated protocol version, e.g. `TLSv1.3`.
    public let version: String
    /// Whether the handshake resumed a session (a ticket) instead of a full key exchange.
    public let resumed: Bool
}

/// The user event a ``TLSServerHandler`` fires before it closes a connection whose handshake failed, so that the
/// layers above can count it.
public struct TLSHandshakeFailed: Sendable, Equatable {
    /// Why the handshake failed, in a few stable words (a metric's label).
    public enum Reason: Sendable, Equatable {
        /// No handshake within `timeouts.tls_handshake`.
        case timeout
        /// The client spoke plain HTTP to the TLS port.
        case plaintextHTTP
        /// OpenSSL refused the handshake: no shared protocol or cipher, a malformed message…
        case handshakeError
        /// The client closed the connection during the handshake.
        case clientClosed
    }

    public let reason: Reason
}

/// Terminates TLS with OpenSSL on a NIO channel: ciphertext in from the network, plaintext up the pipeline;
/// plaintext down from the handlers above, ciphertext out. The TLS logic is ``TLSServerSession``'s; this handler
/// moves bytes and events, and enforces `handshakeTimeout`.
public final class TLSServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let certificates: CertificateSource
    private let handshakeTimeout: TimeAmount
    private let logger: Logger
    private var session: TLSServerSession?
    /// Whether the end of the client's input was passed up (close_notify or TCP FIN): once is enough.
    private var inputClosedSent = false
    /// Set once the connection is being closed here (a failure, a timeout, plain HTTP): later events are ignored.
    private var finished = false
    private var handshakeTimer: Scheduled<Void>?

    public init(certificates: CertificateSource, handshakeTimeout: TimeAmount, logger: Logger) {
        self.certificates = certificates
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        do {
            session = try TLSServerSession(store: certificates.current, allocator: context.channel.allocator)
        } catch {
            logger.error("cannot start TLS: \(error)")
            context.close(promise: nil)
            return
        }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) { [self] in
            guard let session = self.session, session.isHandshaking, !self.finished else { return }
            // Finished here, so that the close that follows is not counted again as the client's.
            self.finished = true
            session.close()
            loopBoundContext.value.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .timeout))
            self.logger.debug(
                "TLS handshake timed out",
                metadata: ["peer": "\(loopBoundContext.value.channel.remoteAddress?.description ?? "?")"]
            )
            loopBoundContext.value.close(promise: nil)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        handshakeTimer = nil
        session?.close()
        session = nil
    }

    public func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        if let session, session.isHandshaking, session.hasReceived, !finished {
            context.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .clientClosed))
        }
        finished = true
        session?.close()
        context.fireChannelInactive()
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session, !finished else { return }
        switch session.receive(unwrapInboundIn(data)) {
        case .ignored:
            return
        case .plaintext(let answer):
            refusePlaintext(answer, context: context)
            return
        case .accepted:
            break
        }
        if session.isHandshaking {
            switch session.continueHandshake() {
            case .inProgress:
                writeCiphertext(context: context)
                return
            case .failed(let failure):
                // The alert OpenSSL queued tells the client why.
                writeCiphertext(context: context)
                logger.info(
                    "\(failure)",
                    metadata: [
                        "peer": "\(context.channel.remoteAddress?.description ?? "?")",
                        "sni": "\(session.serverName.map(LogEscaping.escaped) ?? "-")",
                    ]
                )
                context.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .handshakeError))
                fail(context: context)
                return
            case .completed(let completed):
                handshakeTimer?.cancel()
                handshakeTimer = nil
                writeCiphertext(context: context)
                context.fireUserInboundEventTriggered(completed)
            }
        }
        let end = session.readPlaintext { context.fireChannelRead(wrapInboundOut($0)) }
        // Session tickets, key updates and alerts are produced by reads too.
        writeCiphertext(context: context)
        switch end {
        case .open:
            break
        case .closeNotify:
            // The client finished sending: the same as a TCP half-close for the layers above.
            fireInputClosed(context: context)
        case .failed(let failure):
            logger.debug("\(failure)", metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
            fail(context: context)
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            fireInputClosed(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func fireInputClosed(context: ChannelHandlerContext) {
        guard !inputClosedSent else { return }
        inputClosedSent = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    private func refusePlaintext(_ answer: ByteBuffer?, context: ChannelHandlerContext) {
        finished = true
        context.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .plaintextHTTP))
        guard let answer else {
            context.close(promise: nil)
            return
        }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(answer)).whenComplete { _ in
            loopBoundContext.value.close(promise: nil)
        }
    }

    private func fail(context: ChannelHandlerContext) {
        finished = true
        session?.close()
        context.close(promise: nil)
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard let session, session.isActive else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let plaintext = unwrapOutboundIn(data)
        if plaintext.readableBytes == 0 {
            // Used as a marker by the layers above ("everything before this is written"): keep its place.
            context.write(wrapOutboundOut(plaintext), promise: promise)
            return
        }
        do {
            try session.write(plaintext)
        } catch {
            promise?.fail(error)
            fail(context: context)
            return
        }
        if let ciphertext = session.takeCiphertext() {
            context.write(wrapOutboundOut(ciphertext), promise: promise)
        } else {
            promise?.succeed()
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if let session, session.isActive, mode != .input {
            session.shutdown(final: mode == .all)
            writeCiphertext(context: context)
        }
        context.close(mode: mode, promise: promise)
    }

    private func writeCiphertext(context: ChannelHandlerContext) {
        guard let ciphertext = session?.takeCiphertext() else { return }
        context.write(wrapOutboundOut(ciphertext), promise: nil)
        context.flush()
    }
}

@available(*, unavailable)
extension TLSServerHandler: Sendable {}
