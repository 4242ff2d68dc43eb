import NIOCore
import NIOHTTP1

/// What answers the requests of an ``AdminConnectionHandler``.
protocol HTTPResponder: Sendable {
    /// The answer to one complete request.
    func respond(to request: AdminAPI.Request) -> AdminAPI.Response
    /// The answer to a request whose body is over the limit.
    func bodyTooLarge() -> AdminAPI.Response
}

/// The admin API as a client of one listener reaches it: as the unix socket's peer, or with the TCP listener's
/// tokens.
struct AdminAPIResponder: HTTPResponder {
    let api: AdminAPI
    let access: AdminAPI.Access

    func respond(to request: AdminAPI.Request) -> AdminAPI.Response {
        api.respond(to: request, access: access)
    }

    func bodyTooLarge() -> AdminAPI.Response {
        api.bodyTooLarge()
    }
}

/// One admin connection, after NIOHTTP1's response encoder and request decoder (without its pipelining and
/// error handlers): it answers the requests with ``AdminAPI`` in order, and bounds what a client can make it hold.
///
/// - Backpressure: an answer is written only while the channel is writable; until then complete requests wait in
///   order and the channel is not read, so a client that pipelines requests and never reads the answers makes
///   the balancer stop reading instead of queueing answers (what waits is at most one read's worth of requests).
/// - Idle timeout: a connection on which no request arrived and no answer was written for `idleTimeout` is closed,
///   whether the client is silent, trickles a head, or stopped reading.
/// - A malformed request (any decoder error) is answered 400 with `Connection: close`, after the answers to the
///   requests before it, and the connection is closed once that is written.
/// - A request body is collected up to ``AdminAPI/maximumBodyBytes``; a larger one (by its `Content-Length`, or as
///   it comes) is answered 413 with `Connection: close` in the same way, without reading the rest.
/// - Requests are answered by an ``HTTPResponder``: the admin API as coming through the unix socket's peer or the TCP
///   listener's tokens, or the read-only pages of `metrics.listen`.
final class AdminConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// A complete request waiting for its answer, or the point where the input stopped making sense.
    private enum Pending {
        case request(HTTPRequestHead, body: ByteBuffer)
        case malformed
        case bodyTooLarge
    }

    private let responder: any HTTPResponder
    private let idleTimeout: TimeAmount
    private let maximumBodyBytes: Int
    /// The limit of the request being read: ``maximumBodyBytes``, or more for an apply.
    private var bodyLimit: Int
    /// The request whose head came and whose end has not.
    private var head: HTTPRequestHead?
    /// Its body so far.
    private var body = ByteBuffer()
    /// Requests that came while answers could not be written, oldest first.
    private var pending = CircularBuffer<Pending>(initialCapacity: 4)
    /// A `read` held back while answers wait.
    private var readPending = false
    /// The connection is to be closed once its last answer is written: nothing more is read or answered.
    private var isClosing = false
    /// The decoder failed or a body was too large: a 400 or 413 waits in ``pending`` and nothing after it is read.
    private var inputFailed = false
    private var isActive = false
    /// Guards ``answerPending(context:)`` against the writability events its own writes fire.
    private var isAnswering = false
    /// An answer is being completed (``AdminAPI/Response/continuation``): nothing else is answered or read until
    /// it is written.
    private var isAwaiting = false
    /// The next look at the awaited answer.
    private var awaitTimer: Scheduled<Void>?
    /// When a request last came or an answer was last written.
    private var lastActivity = NIODeadline.uptimeNanoseconds(0)
    private var idleTimer: Scheduled<Void>?

    init(
        responder: any HTTPResponder,
        idleTimeout: TimeAmount,
        maximumBodyBytes: Int = AdminAPI.maximumBodyBytes
    ) {
        self.responder = responder
        self.idleTimeout = idleTimeout
        self.maximumBodyBytes = maximumBodyBytes
        self.bodyLimit = maximumBodyBytes
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            start(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stop()
    }

    func channelActive(context: ChannelHandlerContext) {
        if !isActive {
            start(context: context)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !isClosing, !inputFailed else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            lastActivity = context.eventLoop.now
            // A declared length over the limit is refused before any of the body is read (nginx does the same).
            bodyLimit =
                AdminAPI.isApply(method: head.method.rawValue, target: head.uri)
                ? max(maximumBodyBytes, AdminAPI.maximumApplyBodyBytes) : maximumBodyBytes
            if let declared = head.headers.first(name: "Content-Length"), let length = Int(declared),
                length > bodyLimit
            {
                refuseBody(context: context)
                return
            }
            self.head = head
            body.clear()
        case .body(var part):
            guard head != nil else { return }
            guard body.readableBytes + part.readableBytes <= bodyLimit else {
                refuseBody(context: context)
                return
            }
            body.writeBuffer(&part)
        case .end:
            guard let head else { return }
            self.head = nil
            pending.append(.request(head, body: body))
            body = ByteBuffer()
            answerPending(context: context)
        }
    }

    /// The request's body is over the limit: a 413 after the answers before it, nothing more read.
    private func refuseBody(context: ChannelHandlerContext) {
        head = nil
        body = ByteBuffer()
        inputFailed = true
        pending.append(.bodyTooLarge)
        answerPending(context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // After a decoder error the decoder only reports the bytes that follow; the 400 is already on its way.
        guard !isClosing, !inputFailed else { return }
        if error is HTTPParserError {
            head = nil
            inputFailed = true
            pending.append(.malformed)
            answerPending(context: context)
        } else {
            isClosing = true
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            answerPending(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if isClosing {
            return
        }
        if pending.isEmpty && !isAwaiting && context.channel.isWritable {
            context.read()
        } else {
            readPending = true
        }
    }

    // MARK: Answers

    /// Answers the waiting requests in order while the channel takes them, then reads again if nothing waits.
    private func answerPending(context: ChannelHandlerContext) {
        guard !isAnswering else { return }
        isAnswering = true
        defer { isAnswering = false }
        while !isClosing, !isAwaiting, context.channel.isWritable, let next = pending.popFirst() {
            switch next {
            case .request(let head, let body):
                answer(head, body: body, context: context)
            case .malformed:
                refuseMalformed(context: context)
            case .bodyTooLarge:
                writeAnswer(responder.bodyTooLarge(), version: .http1_1, close: true, context: context)
                finish(context: context, keepAlive: false)
            }
        }
        if readPending, !isClosing, !isAwaiting, pending.isEmpty, context.channel.isWritable {
            readPending = false
            context.read()
        }
    }

    private func answer(_ head: HTTPRequestHead, body: ByteBuffer, context: ChannelHandlerContext) {
        let request = AdminAPI.Request(
            method: head.method.rawValue,
            target: head.uri,
            ifMatch: head.headers["If-Match"],
            authorization: head.headers["Authorization"],
            body: body
        )
        deliver(responder.respond(to: request), to: head, context: context)
    }

    /// Writes `response`, or, when it is to be completed later, waits for it without holding the event loop:
    /// its continuation is asked every interval on this loop, which serves other connections in between.
    private func deliver(_ response: AdminAPI.Response, to head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard let continuation = response.continuation else {
            writeAnswer(response, version: head.version, close: false, context: context)
            finish(context: context, keepAlive: head.isKeepAlive)
            return
        }
        isAwaiting = true
        awaitTimer = context.eventLoop.assumeIsolated().scheduleTask(in: continuation.interval) {
            self.awaitTimer = nil
            guard self.isActive, !self.isClosing else { return }
            // The balancer is busy on the client's behalf: the connection is not idle.
            self.lastActivity = context.eventLoop.now
            guard let final = continuation.next() else {
                self.deliver(response, to: head, context: context)
                return
            }
            self.isAwaiting = false
            self.deliver(final, to: head, context: context)
            self.answerPending(context: context)
        }
    }

    /// Writes an API answer's head and body (not its end).
    private func writeAnswer(
        _ response: AdminAPI.Response,
        version: HTTPVersion,
        close: Bool,
        context: ChannelHandlerContext
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        for field in response.headers {
            headers.add(name: field.name, value: field.value)
        }
        if close {
            headers.add(name: "Connection", value: "close")
        }
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))),
            promise: nil
        )
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
    }

    /// The 400 NIOHTTP1's `HTTPServerProtocolErrorHandler` would send, but followed by a close.
    private func refuseMalformed(context: ChannelHandlerContext) {
        let headers = HTTPHeaders([("Connection", "close"), ("Content-Length", "0")])
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))),
            promise: nil
        )
        finish(context: context, keepAlive: false)
    }

    /// Ends an answer; the connection closes once it is written unless `keepAlive`.
    private func finish(context: ChannelHandlerContext, keepAlive: Bool) {
        if !keepAlive {
            isClosing = true
            pending.removeAll()
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { result in
            switch result {
            case .success where keepAlive:
                self.lastActivity = context.eventLoop.now
            case .success, .failure:
                context.close(promise: nil)
            }
        }
    }

    // MARK: Idle timeout

    private func start(context: ChannelHandlerContext) {
        isActive = true
        lastActivity = context.eventLoop.now
        scheduleIdleCheck(at: lastActivity + idleTimeout, context: context)
    }

    private func stop() {
        isActive = false
        awaitTimer?.cancel()
        awaitTimer = nil
        idleTimer?.cancel()
        idleTimer = nil
    }

    /// One timer per connection, moved forward when it fires early rather than replaced on every request.
    private func scheduleIdleCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            guard self.isActive else { return }
            let due = self.lastActivity + self.idleTimeout
            if context.eventLoop.now >= due {
                self.idleTimer = nil
                self.isClosing = true
                context.close(promise: nil)
            } else {
                self.scheduleIdleCheck(at: due, context: context)
            }
        }
    }
}
