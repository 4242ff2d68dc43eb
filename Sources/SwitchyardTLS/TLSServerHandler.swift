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
/// plaintext down from the handlers above, ciphertext out.
///
/// The handshake picks the certificate by SNI (see ``CertificateStore``) and must finish within
/// `handshakeTimeout`. A client that speaks plain HTTP to the TLS port gets a readable 400, as nginx answers. Every
/// OpenSSL call happens on the channel's event loop with the thread's error queue cleared before and drained after.
public final class TLSServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        case handshaking
        case active
        case closing
        case closed
    }

    private let certificates: CertificateSource
    private let handshakeTimeout: TimeAmount
    private let logger: Logger
    private var connection: TLSConnection?
    private var state: State = .handshaking
    private var receivedAnything = false
    /// Whether the end of the client's input was passed up (close_notify or TCP FIN): once is enough.
    private var inputClosedSent = false
    private var handshakeTimer: Scheduled<Void>?

    /// Plaintext read buffers are this large: one TLS record's payload.
    private static let readChunk = 16 * 1024

    public init(certificates: CertificateSource, handshakeTimeout: TimeAmount, logger: Logger) {
        self.certificates = certificates
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        do {
            connection = try TLSConnection(store: certificates.current, allocator: context.channel.allocator)
        } catch {
            logger.error("cannot start TLS: \(error)")
            context.close(promise: nil)
            return
        }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) { [self] in
            guard self.state == .handshaking else { return }
            // Closed here, so that the close that follows is not counted again as the client's.
            self.state = .closed
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
        connection = nil
        state = .closed
    }

    public func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        if state == .handshaking, receivedAnything {
            context.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .clientClosed))
        }
        state = .closed
        context.fireChannelInactive()
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection, state == .handshaking || state == .active else { return }
        let buffer = unwrapInboundIn(data)
        if !receivedAnything {
            receivedAnything = true
            // A TLS connection starts with a handshake record (content type 22). Anything else is not TLS; plain
            // HTTP gets told what went wrong.
            if let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), first != 22 {
                refusePlaintext(first, context: context)
                return
            }
        }
        connection.receive(buffer)
        if state == .handshaking {
            guard continueHandshake(context: context) else { return }
        }
        readPlaintext(context: context)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    /// Drives the handshake; returns whether it completed.
    private func continueHandshake(context: ChannelHandlerContext) -> Bool {
        guard let connection else { return false }
        OpenSSLErrorQueue.clear()
        let result = SSL_do_handshake(connection.ssl)
        if result == 1 {
            state = .active
            handshakeTimer?.cancel()
            handshakeTimer = nil
            writeCiphertext(context: context, flush: true)
            let version = SSL_get_version(connection.ssl).map { String(cString: $0) } ?? "?"
            context.fireUserInboundEventTriggered(
                TLSHandshakeCompleted(
                    serverName: connection.serverName,
                    certificate: connection.context,
                    version: version,
                    resumed: SSL_session_reused(connection.ssl) == 1
                )
            )
            return true
        }
        let error = SSL_get_error(connection.ssl, result)
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            writeCiphertext(context: context, flush: true)
            return false
        default:
            let failure = TLSError.drainingQueue("TLS handshake failed")
            // The alert OpenSSL queued tells the client why.
            writeCiphertext(context: context, flush: true)
            logger.info(
                "\(failure)",
                metadata: [
                    "peer": "\(context.channel.remoteAddress?.description ?? "?")",
                    "sni": "\(connection.serverName.map(LogEscaping.escaped) ?? "-")",
                ]
            )
            context.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .handshakeError))
            fail(context: context)
            return false
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        guard let connection else { return }
        // Plaintext is never longer than the ciphertext it came in, so a small request gets a small buffer (a
        // cheaper allocation than a record's worth, and less memory held by whoever keeps it); longer input fills
        // one buffer after another.
        let expected = min(Self.readChunk, max(connection.readablePlaintextBound, 512))
        var plaintext = context.channel.allocator.buffer(capacity: expected)
        var closeNotify = false
        var failure: TLSError?
        OpenSSLErrorQueue.clear()
        while true {
            var count = 0
            let result = plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: 1) { pointer in
                let status = SSL_read_ex(connection.ssl, pointer.baseAddress, pointer.count, &count)
                return status == 1 ? count : 0
            }
            if result > 0 {
                if plaintext.writableBytes == 0 {
                    context.fireChannelRead(wrapInboundOut(plaintext))
                    plaintext = context.channel.allocator.buffer(
                        capacity: min(Self.readChunk, max(connection.readablePlaintextBound, 512))
                    )
                }
                continue
            }
            let error = SSL_get_error(connection.ssl, 0)
            switch error {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                break
            case SSL_ERROR_ZERO_RETURN:
                closeNotify = true
            default:
                failure = .drainingQueue("TLS read failed")
            }
            break
        }
        if plaintext.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(plaintext))
        }
        // Session tickets, key updates and alerts are produced by reads too.
        writeCiphertext(context: context, flush: true)
        if let failure {
            logger.debug("\(failure)", metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
            fail(context: context)
        } else if closeNotify {
            // The client finished sending: the same as a TCP half-close for the layers above.
            fireInputClosed(context: context)
        }
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

    private func refusePlaintext(_ first: UInt8, context: ChannelHandlerContext) {
        state = .closing
        context.fireUserInboundEventTriggered(TLSHandshakeFailed(reason: .plaintextHTTP))
        let looksLikeHTTP = first >= UInt8(ascii: "A") && first <= UInt8(ascii: "Z")
        guard looksLikeHTTP else {
            context.close(promise: nil)
            return
        }
        let body = "400 Bad Request: this port speaks HTTPS; use an https:// URL.\n"
        let response =
            "HTTP/1.1 400 Bad Request\r\nServer: switchyard\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response))).whenComplete { _ in
            loopBoundContext.value.close(promise: nil)
        }
    }

    private func fail(context: ChannelHandlerContext) {
        state = .closed
        context.close(promise: nil)
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard let connection, state == .active else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var plaintext = unwrapOutboundIn(data)
        if plaintext.readableBytes == 0 {
            // Used as a marker by the layers above ("everything before this is written"): keep its place.
            context.write(wrapOutboundOut(plaintext), promise: promise)
            return
        }
        OpenSSLErrorQueue.clear()
        connection.reserveOutbound(forPlaintext: plaintext.readableBytes)
        while plaintext.readableBytes > 0 {
            var written = 0
            let status = plaintext.withUnsafeReadableBytes { bytes in
                SSL_write_ex(connection.ssl, bytes.baseAddress, bytes.count, &written)
            }
            guard status == 1 else {
                let failure = TLSError.drainingQueue("TLS write failed")
                promise?.fail(failure)
                fail(context: context)
                return
            }
            plaintext.moveReaderIndex(forwardBy: written)
        }
        if let ciphertext = connection.takeOutbound() {
            context.write(wrapOutboundOut(ciphertext), promise: promise)
        } else {
            promise?.succeed()
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if state == .active, let connection, mode != .input {
            // close_notify, so the client can tell a complete response from a cut connection.
            OpenSSLErrorQueue.clear()
            _ = SSL_shutdown(connection.ssl)
            OpenSSLErrorQueue.clear()
            if mode == .all { state = .closing }
            writeCiphertext(context: context, flush: true)
        }
        context.close(mode: mode, promise: promise)
    }

    private func writeCiphertext(context: ChannelHandlerContext, flush: Bool) {
        guard let ciphertext = connection?.takeOutbound() else { return }
        context.write(wrapOutboundOut(ciphertext), promise: nil)
        if flush { context.flush() }
    }
}

@available(*, unavailable)
extension TLSServerHandler: Sendable {}
