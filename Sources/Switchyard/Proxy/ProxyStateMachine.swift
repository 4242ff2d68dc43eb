import NIOCore
import SwitchyardTLS

/// The proxy's logic for one client connection: bytes and events in, actions out. It knows nothing of sockets.
///
/// One value lives in each ``ClientConnectionHandler``, which feeds it what happens on the client and backend
/// channels and performs the ``Action``s it queues, in order. Keeping the logic here means every edge case
/// (pipelining, early responses, stale pooled connections, timeouts, upgrades) is tested by plain function calls
/// with an explicit clock, and that a different transport could drive it unchanged.
///
/// A request goes through `idle` → `readingHead` → `connecting` → `exchanging` and back to `idle` (keep-alive), or
/// into `tunnel` after a `101 Switching Protocols`, or to `closed`.
struct ProxyStateMachine {
    /// What the machine needs from the configuration, fixed for the connection's life.
    struct Settings {
        var maximumHeadBytes: Int
        var maximumHeaderCount: Int
        var clientHeaderTimeout: TimeAmount
        var keepAliveTimeout: TimeAmount
        var clientBodyTimeout: TimeAmount
        var upstreamResponseTimeout: TimeAmount
        var tunnelIdleTimeout: TimeAmount
        /// Longest a client may leave what it was sent unread (nginx's `send_timeout`): it then is closed, and a
        /// backend paused for its sake is not blamed.
        var clientSendTimeout: TimeAmount = .seconds(60)
        /// Whether request fields with `_` in their names are forwarded (`underscores_in_headers`).
        var forwardsUnderscoreFields: Bool = false
        var client: HeadWriter.ClientInfo
        var accessLog: Bool
        /// The port of the HTTPS listener, for `https_redirect` locations; `nil` when there is none.
        var httpsPort: Int? = nil
        /// How many backends a request may try when connecting fails before any byte was sent.
        var maximumAttempts: Int = 2
        /// How long a tunnel outlives its backend's removal from the configuration (`timeouts.drain`).
        var retiredTunnelGrace: TimeAmount = .seconds(30)
        /// Whether forwarded requests carry an `X-Request-ID` (``RequestID``): `request_id`.
        var requestIDs: Bool = false
    }

    /// Work for the handler, performed in the order queued.
    enum Action {
        /// Pick one of the tenant's backends and attach a connection to it, pooled or, when `fresh` is set, new;
        /// answer with ``upstreamAttached(backend:reused:now:)`` or ``upstreamConnectFailed(_:now:)``. `preferred` is
        /// the backend the client's sticky-session cookie names, to be used if it is available. With `avoidingLast`
        /// (a retry after a failed connect) the backend of the previous attempt is avoided when the tenant has
        /// others.
        ///
        /// Upgrade requests always get a new connection: many backend servers (SwiftNIO's upgrader among them)
        /// only switch protocols on the first request of a connection.
        case acquireUpstream(Tenant, fresh: Bool, preferred: Backend?, avoidingLast: Bool)
        case writeUpstream(ByteBuffer)
        case writeClient(ByteBuffer)
        /// Detach the backend connection: back to the pool if `reusable`, else closed.
        case releaseUpstream(reusable: Bool)
        /// Half-close the backend connection (tunnel only).
        case shutdownUpstreamOutput
        /// Half-close the client connection (tunnel only).
        case shutdownClientOutput
        /// The balancer's own answers reached ``answerBudget``: once what was written is flushed and the client
        /// connection is writable, call ``clientOutputDrained(now:)`` (an action, so that the handler looks at the
        /// channel only when this happens, not after every event).
        case awaitClientDrain
        /// Close the client connection once what was written is flushed.
        case closeClient
        /// Close the client connection now, dropping what it has not read: it stopped reading for longer than
        /// `timeouts.client_send`.
        case resetClient
        /// The backend of the current exchange failed it (reset before answering, answer timed out, a broken
        /// answer): count it against the backend's health. Carries the tenant's name and what went wrong, for
        /// the log.
        case backendFailed(tenant: String, reason: StaticString)
        /// A request was answered (by a backend or by the balancer): count it. `tenant` is `nil` for a host no
        /// tenant serves; `received` and `sent` are the bytes read from and written to the client for it.
        case finished(tenant: Tenant?, status: Int, received: Int, sent: Int, duration: TimeAmount)
        /// Bytes a tunnel of `tenant` moved since the last report (reported at each timeout sweep and at its end,
        /// so that a long tunnel's traffic shows as it flows).
        case tunnelTraffic(Tenant, received: Int, sent: Int)
        case log(AccessLogRecord)
    }

    /// Why connecting to a backend failed.
    enum ConnectFailure {
        case refused
        case timedOut
        /// The balancer itself is out of descriptors or memory: no verdict on the backend, and no point in trying
        /// another one now.
        case localShortage
    }

    enum State: Equatable {
        case idle
        case readingHead
        case connecting
        case exchanging
        case tunnel
        case closed
    }

    private enum ResponsePhase {
        case awaitingHead
        case body(BodyFraming)
        case complete

        var isComplete: Bool {
            if case .complete = self { return true }
            return false
        }
    }

    /// One request and its response.
    private struct Exchange {
        /// `nil` when no tenant serves the host (answered 404).
        var tenant: Tenant?
        var host: String
        var backend: String = "-"
        var method: String = ""
        var target: String = ""
        var keepAlive: Bool
        var minorVersion: Int
        var isHead: Bool
        var isUpgrade: Bool
        /// The backend the request's sticky-session cookie names, if any.
        var stickyBackend: Backend?
        /// The `Set-Cookie` line added to the response when the request was not served by the backend its cookie
        /// named (no cookie, or that backend is unavailable).
        var setCookie: String?
        /// The head as forwarded, kept until the response starts in case the request is sent again.
        var upstreamHead: ByteBuffer?
        /// Whether the request may be sent a second time: idempotent and without a body.
        var replayable: Bool
        var requestBody: BodyFraming
        /// Body bytes read with the head, sent after the head once a backend is attached.
        var earlyBody: ByteBuffer?
        var response: ResponsePhase = .awaitingHead
        /// Response head bytes received so far, when the head spans reads.
        var partialResponseHead: ByteBuffer?
        var responseStarted = false
        var upstreamReused = false
        var upstreamKeepAlive = true
        var attempts = 1
        var status = 0
        var bytesToClient = 0
        /// Bytes of the request read from the client: its head and the body forwarded so far.
        var bytesFromClient = 0
        var started: NIODeadline
        /// For the access log: the request's id, and when a backend connection was attached and its answer began.
        var requestID = "-"
        var attachedAt: NIODeadline?
        var respondedAt: NIODeadline?

        /// What a backend connection attached to the exchange sends first.
        struct Attachment {
            /// The request head, to write first.
            var head: ByteBuffer?
            /// Body bytes that came with the head.
            var earlyBody: ByteBuffer?
            var bodyComplete: Bool
        }

        /// A backend connection is attached: records which, pins a sticky client to it (a `Set-Cookie` for the
        /// answer), and hands over what to send. The head is kept for a retry only when the request is replayable.
        mutating func attach(_ backend: Backend, reused: Bool, secure: Bool) -> Attachment {
            self.backend = backend.description
            setCookie = nil
            if let tenant, let sticky = tenant.sticky, backend !== stickyBackend,
                let index = tenant.backends.firstIndex(where: { $0 === backend })
            {
                // Pin the client to the backend that serves it (first request, or its node is gone).
                setCookie = sticky.setCookieLine(forBackendAt: index, secure: secure)
            }
            upstreamReused = reused
            partialResponseHead = nil
            let attachment = Attachment(head: upstreamHead, earlyBody: earlyBody, bodyComplete: requestBody.isComplete)
            earlyBody = nil
            if !replayable {
                upstreamHead = nil
            }
            return attachment
        }
    }

    private(set) var state: State = .idle
    private let settings: Settings
    private let routes: RouteSource
    private var requestParser: RequestHeadParser
    private var responseParser: ResponseHeadParser
    /// Client bytes not yet acted on: the rest of a head, or pipelined requests.
    private var inbound: ByteBuffer?
    private var exchange: Exchange?
    private var clientDeadline: NIODeadline?
    private var upstreamDeadline: NIODeadline?
    private var clientInputClosed = false
    private var shuttingDown = false
    /// Whether the client connection can take more output now (the transport's writability). While it cannot,
    /// the backend is not read, so its response timeout is suspended: the wait is the client's, not the backend's.
    private var clientWritable = true
    /// Since when the client has left its output unread, while it does; `timeouts.client_send` counts from here.
    private var clientStalledSince: NIODeadline?
    /// Once closed: when to stop waiting for the client to take what it was sent and drop the connection.
    private var closeDeadline: NIODeadline?
    /// Bytes of the balancer's own answers (404, 308, 503…) queued since the transport last reported the client's
    /// output drained. Pipelined requests that it answers itself are processed only while this is under
    /// ``answerBudget``: otherwise a client that sends requests and never reads would queue answers without bound.
    private var answeredBytes = 0
    /// Set when ``answeredBytes`` reached the budget: no more client bytes are read or processed until
    /// ``clientOutputDrained(now:)``.
    private(set) var isAwaitingClientDrain = false
    /// What one connection may have queued of the balancer's own answers before it stops reading the client.
    static let answerBudget = 16 * 1024
    /// On TLS, the certificate the handshake served and the SNI name it was chosen for.
    private var servedCertificate: (any ServedCertificate)?
    private var serverName: String?
    /// The tenant tunnel slot held from an upgrade request until its tunnel ends or the upgrade is declined.
    private var tunnelSlot: TunnelGauge?
    /// Idle timeout of the current tunnel (the tenant's, else the server's).
    private var tunnelIdleTimeout: TimeAmount
    /// The tenant of the current tunnel, and what it moved since its last ``Action/tunnelTraffic(_:received:sent:)``.
    private var tunnelTenant: Tenant?
    private var tunnelReceived = 0
    private var tunnelSent = 0
    /// The buffer the last forwarded head was written into, reused for the next one: by then the channel has
    /// written it and the exchange let go of it, so clearing it costs nothing where a new buffer cost an allocation
    /// per request. Dropped when the connection becomes a tunnel, which sends no more heads.
    private var headBuffer: ByteBuffer?
    /// The ids of this connection's requests, when ``Settings/requestIDs``.
    private var requestIDs: RequestIDGenerator?
    private var actions: [Action] = []
    private var nextAction = 0

    init(settings: Settings, routes: RouteSource, now: NIODeadline) {
        self.settings = settings
        self.routes = routes
        self.requestParser = RequestHeadParser(
            maximumHeadBytes: settings.maximumHeadBytes,
            maximumHeaderCount: settings.maximumHeaderCount,
            forwardsUnderscoreFields: settings.forwardsUnderscoreFields,
            replacesRequestID: settings.requestIDs
        )
        self.responseParser = ResponseHeadParser(
            maximumHeadBytes: settings.maximumHeadBytes,
            maximumHeaderCount: settings.maximumHeaderCount
        )
        self.clientDeadline = now + settings.keepAliveTimeout
        self.tunnelIdleTimeout = settings.tunnelIdleTimeout
        self.requestIDs = settings.requestIDs ? RequestIDGenerator() : nil
        actions.reserveCapacity(8)
    }

    // MARK: Actions

    /// The next action to perform, if any.
    mutating func popAction() -> Action? {
        guard nextAction < actions.count else {
            if !actions.isEmpty { actions.removeAll(keepingCapacity: true) }
            nextAction = 0
            return nil
        }
        let action = actions[nextAction]
        nextAction += 1
        return action
    }

    private mutating func queue(_ action: Action) {
        actions.append(action)
    }

    /// Queues one of the balancer's own answers, counted against ``answerBudget``.
    private mutating func queueAnswer(_ output: ByteBuffer) {
        answeredBytes += output.readableBytes
        queue(.writeClient(output))
    }

    /// Whether the handler should read from the client now.
    ///
    /// While a request body streams, reads follow the backend's pace (the handler also checks its writability).
    /// Otherwise reads go on until one head's worth of bytes is buffered (a pipelined request, say): holding
    /// reads on every request would cost two `epoll_ctl` calls per request, and the buffer is bounded anyway.
    var wantsClientBytes: Bool {
        guard !clientInputClosed, !isAwaitingClientDrain else { return false }
        switch state {
        case .idle, .readingHead, .tunnel:
            return true
        case .exchanging, .connecting:
            // Read through the optional, not bound: binding copies the whole exchange (a dozen references).
            if state == .exchanging, exchange?.requestBody.isComplete == false { return true }
            return (inbound?.readableBytes ?? 0) < settings.maximumHeadBytes
        case .closed:
            return false
        }
    }

    /// Whether the handler should read from the attached backend connection now.
    var wantsUpstreamBytes: Bool {
        state == .exchanging || state == .tunnel
    }

    // MARK: Client events

    /// Bytes from the client.
    mutating func clientRead(_ buffer: ByteBuffer, now: NIODeadline) {
        switch state {
        case .closed:
            return
        case .tunnel:
            clientDeadline = now + tunnelIdleTimeout
            tunnelReceived &+= buffer.readableBytes
            queue(.writeUpstream(buffer))
            return
        case .idle, .readingHead, .connecting, .exchanging:
            if var pending = inbound, pending.readableBytes > 0 {
                // Release our reference first so that appending does not copy the pending bytes.
                inbound = nil
                var buffer = buffer
                pending.writeBuffer(&buffer)
                inbound = pending
            } else {
                inbound = buffer
            }
            processInbound(now: now)
        }
    }

    /// The client closed its sending side.
    mutating func clientInputEnded(now: NIODeadline) {
        clientInputClosed = true
        switch state {
        case .idle, .readingHead:
            close()
        case .connecting, .exchanging:
            if exchange?.requestBody.isComplete == false {
                // The request can never be completed: abandon it.
                abort()
            }
        case .tunnel:
            queue(.shutdownUpstreamOutput)
        case .closed:
            break
        }
    }

    /// The client connection is gone.
    mutating func clientClosed() {
        switch state {
        case .exchanging, .tunnel:
            queue(.releaseUpstream(reusable: false))
        case .idle, .readingHead, .connecting, .closed:
            break
        }
        releaseTunnelSlot()
        reportTunnelTraffic()
        state = .closed
        exchange = nil
        inbound = nil
    }

    /// The client connection's output went over (`false`) or back under (`true`) its high-water mark.
    mutating func clientWritabilityChanged(_ writable: Bool, now: NIODeadline) {
        guard writable != clientWritable else { return }
        clientWritable = writable
        if writable {
            clientStalledSince = nil
            if state == .exchanging, upstreamDeadline == nil {
                // The backend was not read while the client lagged: its time to answer starts again.
                upstreamDeadline = now + settings.upstreamResponseTimeout
            }
        } else {
            clientStalledSince = now
            if state == .exchanging {
                upstreamDeadline = nil
            }
        }
    }

    /// What was written to the client went out (the transport flushed it and is writable): pipelined requests the
    /// balancer answers itself may be processed again.
    mutating func clientOutputDrained(now: NIODeadline) {
        answeredBytes = 0
        guard isAwaitingClientDrain else { return }
        isAwaitingClientDrain = false
        processInbound(now: now)
    }

    /// The TLS handshake finished: requests on this connection must be for hosts the served certificate covers.
    mutating func tlsEstablished(serverName: String?, certificate: any ServedCertificate) {
        self.serverName = serverName.flatMap { HostName.normalize($0) }
        self.servedCertificate = certificate
    }

    /// The server is shutting down: finish the current exchange, then close.
    mutating func beginShutdown() {
        shuttingDown = true
        if state == .idle {
            close()
        }
    }

    // MARK: Backend events

    /// A backend connection is ready for the current request.
    mutating func upstreamAttached(backend: Backend, reused: Bool, now: NIODeadline) {
        guard state == .connecting, exchange != nil else { return }
        state = .exchanging
        // Mutated in place through the optional: a local copy put back afterwards would cost a retain and a release
        // of each of the exchange's references.
        let secure = settings.client.scheme.description == "https"
        guard let writes = exchange?.attach(backend, reused: reused, secure: secure) else { return }
        if settings.accessLog { exchange?.attachedAt = now }
        responseParser.reset()
        if let head = writes.head {
            queue(.writeUpstream(head))
        }
        if let body = writes.earlyBody {
            queue(.writeUpstream(body))
        }
        armUpstreamDeadline(now: now)
        if !writes.bodyComplete {
            clientDeadline = now + settings.clientBodyTimeout
        }
        processInbound(now: now)
    }

    /// Every backend of the tenant is down, ejected or draining: 503 at once, never a wait.
    mutating func noBackendAvailable(now: NIODeadline) {
        guard state == .connecting else { return }
        respondToFailedExchange(.serviceUnavailable, now: now)
    }

    /// Connecting to the backend failed; nothing was sent.
    mutating func upstreamConnectFailed(_ failure: ConnectFailure, now: NIODeadline) {
        guard state == .connecting, var exchange else { return }
        if failure == .localShortage {
            respondToFailedExchange(.serviceUnavailable, now: now)
            return
        }
        if let tenant = exchange.tenant, exchange.attempts < settings.maximumAttempts, tenant.backends.count > 1 {
            exchange.attempts += 1
            self.exchange = exchange
            queue(
                .acquireUpstream(
                    tenant,
                    fresh: exchange.isUpgrade,
                    preferred: exchange.stickyBackend,
                    avoidingLast: true
                )
            )
            return
        }
        respondToFailedExchange(failure == .timedOut ? .gatewayTimeout : .badGateway, now: now)
    }

    /// Bytes from the backend.
    mutating func upstreamRead(_ buffer: ByteBuffer, now: NIODeadline) {
        switch state {
        case .tunnel:
            clientDeadline = now + tunnelIdleTimeout
            tunnelSent &+= buffer.readableBytes
            queue(.writeClient(buffer))
        case .exchanging:
            armUpstreamDeadline(now: now)
            receiveResponse(buffer, now: now)
        case .idle, .readingHead, .connecting, .closed:
            // Nothing is expected from a backend here; the handler closes it when released.
            break
        }
    }

    /// The backend closed its sending side or the whole connection.
    mutating func upstreamClosed(now: NIODeadline) {
        switch state {
        case .tunnel:
            // The backend is done sending: pass the end on, then close once the client is done too.
            if clientInputClosed {
                queue(.releaseUpstream(reusable: false))
                close()
            } else {
                queue(.shutdownClientOutput)
            }
        case .exchanging:
            guard var exchange else { return }
            switch exchange.response {
            case .awaitingHead:
                if let tenant = exchange.tenant, exchange.upstreamReused, exchange.replayable,
                    exchange.upstreamHead != nil, exchange.partialResponseHead == nil,
                    exchange.attempts < settings.maximumAttempts
                {
                    // A pooled connection the backend had already closed (a keep-alive race, not a sign of ill
                    // health): send the request again on a fresh connection, to the same backend if it is sticky.
                    exchange.attempts += 1
                    exchange.upstreamReused = false
                    self.exchange = exchange
                    state = .connecting
                    queue(.releaseUpstream(reusable: false))
                    queue(.acquireUpstream(tenant, fresh: true, preferred: exchange.stickyBackend, avoidingLast: false))
                    return
                }
                if !exchange.upstreamReused && !exchange.responseStarted {
                    // A fresh connection reset before any answer: the backend's fault.
                    queue(.backendFailed(tenant: exchange.tenant?.name ?? "-", reason: "closed before answering"))
                }
                abandonExchange(answering: .badGateway, now: now)
            case .body(.untilClose):
                exchange.response = .complete
                exchange.upstreamKeepAlive = false
                exchange.keepAlive = false
                self.exchange = exchange
                finishExchange(now: now)
            case .body, .complete:
                // A truncated body cannot be reported to the client except by closing.
                queue(.releaseUpstream(reusable: false))
                close()
            }
        case .idle, .readingHead, .connecting, .closed:
            break
        }
    }

    // MARK: Timeouts

    /// Starts the backend's response timeout over, unless the backend is not being read because the client lags.
    private mutating func armUpstreamDeadline(now: NIODeadline) {
        upstreamDeadline = clientWritable ? now + settings.upstreamResponseTimeout : nil
    }

    /// The tunnel's backend left the configuration `retiredTunnelGrace` ago or more (the transport, which holds
    /// the backend connection, checks at each sweep): the tunnel is closed, as a drain's deadline closes
    /// connections. Anything but a tunnel is left alone: a request in flight on a removed backend finishes.
    mutating func tunnelBackendRetired() {
        guard state == .tunnel else { return }
        queue(.releaseUpstream(reusable: false))
        close()
    }

    /// How long a tunnel outlives its backend's removal.
    var retiredTunnelGrace: TimeAmount { settings.retiredTunnelGrace }

    /// Applies whichever deadline has passed, and reports a tunnel's traffic since the last sweep.
    mutating func checkTimeouts(now: NIODeadline) {
        reportTunnelTraffic()
        if state != .closed, let since = clientStalledSince, now - since >= settings.clientSendTimeout {
            // The client took nothing for `client_send`: it is the one at fault, whatever else is in progress.
            if state == .exchanging || state == .tunnel {
                queue(.releaseUpstream(reusable: false))
            }
            close()
            queue(.resetClient)
            return
        }
        switch state {
        case .idle:
            if let deadline = clientDeadline, now >= deadline { close() }
        case .readingHead:
            if let deadline = clientDeadline, now >= deadline {
                var output = ByteBuffer()
                ErrorResponse.write(.requestTimeout, close: true, into: &output)
                queueAnswer(output)
                close()
            }
        case .connecting:
            break  // the connect timeout is the transport's
        case .exchanging:
            guard let exchange else { return }
            if !exchange.requestBody.isComplete, let deadline = clientDeadline, now >= deadline {
                abandonExchange(answering: .requestTimeout, now: now)
                return
            }
            if let deadline = upstreamDeadline, now >= deadline {
                queue(
                    .backendFailed(tenant: exchange.tenant?.name ?? "-", reason: "no answer within upstream_response")
                )
                abandonExchange(answering: .gatewayTimeout, now: now)
            }
        case .tunnel:
            if let deadline = clientDeadline, now >= deadline {
                queue(.releaseUpstream(reusable: false))
                close()
            }
        case .closed:
            // Closing waits for what was written to be flushed; a client that never reads must not hold the
            // connection for ever.
            guard let deadline = closeDeadline else {
                closeDeadline = now + settings.clientSendTimeout
                return
            }
            if now >= deadline {
                closeDeadline = .distantFuture
                queue(.resetClient)
            }
        }
    }

    // MARK: Requests

    /// Acts on buffered client bytes as far as the state allows.
    private mutating func processInbound(now: NIODeadline) {
        while let buffer = inbound, buffer.readableBytes > 0 {
            switch state {
            case .idle, .readingHead:
                guard answeredBytes < Self.answerBudget else {
                    isAwaitingClientDrain = true
                    queue(.awaitClientDrain)
                    return
                }
                guard startRequest(now: now) else { return }
            case .exchanging:
                guard exchange?.requestBody.isComplete == false else { return }
                forwardRequestBody(now: now)
            case .tunnel:
                tunnelReceived &+= buffer.readableBytes
                queue(.writeUpstream(buffer))
                inbound = nil
            case .connecting, .closed:
                return
            }
        }
        // Let go of drained buffers so the channel can reuse its receive buffer.
        if let buffer = inbound, buffer.readableBytes == 0 { inbound = nil }
    }

    /// Parses and routes the head at the start of `inbound`; returns whether processing may go on.
    private mutating func startRequest(now: NIODeadline) -> Bool {
        guard var buffer = inbound else { return false }
        if state == .idle {
            state = .readingHead
            clientDeadline = now + settings.clientHeaderTimeout
            requestParser.reset()
        }
        let result = buffer.withUnsafeReadableBytes { requestParser.parse($0) }
        switch result {
        case .incomplete:
            return false
        case .failure(let error):
            refuse(ErrorResponse.status(for: error))
            return false
        case .complete(let head):
            return routeRequest(head, buffer: &buffer, now: now)
        }
    }

    private mutating func routeRequest(_ head: RequestHead, buffer: inout ByteBuffer, now: NIODeadline) -> Bool {
        let routed: (host: String, tenant: Tenant?)? = buffer.withUnsafeReadableBytes { bytes in
            // HTTP/1.0 without Host cannot be routed on a shared address.
            guard let host = head.routingHost,
                let name = HostName.normalize(UnsafeRawBufferPointer(rebasing: bytes[host]))
            else { return nil }
            return (name, routes.current.tenant(forNormalizedHost: name))
        }
        guard let routed else {
            refuse(.badRequest)
            return false
        }
        let keepAlive = head.keepAlive && !shuttingDown
        // Only a protocol the tenant allows (WebSocket unless it says otherwise) is tunnelled; any other Upgrade is
        // stripped and the request goes as plain HTTP, so `h2c` or an unknown protocol cannot open a raw tunnel
        // past every check (h2c smuggling).
        let isUpgrade: Bool
        if head.requestsUpgrade, let tenant = routed.tenant, let upgrade = head.upgrade {
            isUpgrade = buffer.withUnsafeReadableBytes {
                tenant.allowsUpgrade(to: UnsafeRawBufferPointer(rebasing: $0[upgrade]))
            }
        } else {
            isUpgrade = false
        }
        var exchange = Exchange(
            tenant: routed.tenant,
            host: routed.host,
            keepAlive: keepAlive,
            minorVersion: head.minorVersion,
            isHead: head.methodKind == .head,
            isUpgrade: isUpgrade,
            replayable: head.methodKind.isIdempotent && !head.hasBody,
            requestBody: head.isChunked ? .chunked(ChunkedBodyTracker()) : .length(head.contentLength ?? 0),
            started: now
        )
        if exchange.requestBody == .length(0) { exchange.requestBody = .done }
        exchange.bytesFromClient = head.end
        var requestID: RequestID?
        if var generator = requestIDs {
            requestID = buffer.withUnsafeReadableBytes { bytes in
                RequestID.choose(requestParser.requestIDs, in: bytes, generator: &generator)
            }
            requestIDs = generator
        }
        if settings.accessLog {
            buffer.withUnsafeReadableBytes { bytes in
                // A method is a token, which needs no escaping; a target may hold `"` and `\`, which would end or
                // bend the log's quoted field. A request id is checked to hold none of them (``RequestID``).
                exchange.method = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[head.method]), as: UTF8.self)
                exchange.target = LogEscaping.escaped(bytes: UnsafeRawBufferPointer(rebasing: bytes[head.target]))
                if let requestID { exchange.requestID = requestID.text(from: bytes) }
            }
        }
        guard let tenant = routed.tenant else {
            // Never forwarded. The body, if any, is not read: close unless there is none.
            let close = !keepAlive || head.hasBody
            var output = ByteBuffer()
            ErrorResponse.write(.notFound, host: routed.host, close: close, headOnly: exchange.isHead, into: &output)
            exchange.status = 404
            exchange.bytesToClient = output.readableBytes
            buffer.moveReaderIndex(forwardBy: head.end)
            inbound = buffer
            queueAnswer(output)
            record(exchange, now: now)
            if close {
                self.close()
                return false
            }
            state = .idle
            clientDeadline = now + settings.keepAliveTimeout
            requestParser.reset()
            return true
        }
        if let certificate = servedCertificate, let serverName, routed.host != serverName,
            !certificate.covers(host: routed.host)
        {
            // Domain fronting, or a connection reused for a host its certificate does not cover: the client must
            // open a connection for that host (RFC 9110 §15.5.20). A client that sent no SNI chose no certificate,
            // so it is routed by Host alone, as nginx does.
            var output = ByteBuffer()
            ErrorResponse.write(.misdirected, close: true, headOnly: exchange.isHead, into: &output)
            exchange.status = 421
            exchange.bytesToClient = output.readableBytes
            inbound = nil
            queueAnswer(output)
            record(exchange, now: now)
            close()
            return false
        }

        if tenant.httpsRedirect, settings.client.scheme.description == "http", let httpsPort = settings.httpsPort {
            var output = ByteBuffer()
            buffer.withUnsafeReadableBytes { bytes in
                ErrorResponse.writeRedirect(
                    host: routed.host,
                    port: httpsPort,
                    path: UnsafeRawBufferPointer(rebasing: bytes[head.redirectPath]),
                    close: !keepAlive || head.hasBody,
                    into: &output
                )
            }
            exchange.status = 308
            exchange.bytesToClient = output.readableBytes
            buffer.moveReaderIndex(forwardBy: head.end)
            inbound = buffer.readableBytes > 0 ? buffer : nil
            queueAnswer(output)
            record(exchange, now: now)
            if !keepAlive || head.hasBody {
                close()
                return false
            }
            state = .idle
            clientDeadline = now + settings.keepAliveTimeout
            requestParser.reset()
            return true
        }

        if isUpgrade {
            guard tenant.tunnels.acquire() else {
                // The tenant's tunnel cap is reached: refuse now rather than let one tenant take every socket.
                buffer.moveReaderIndex(forwardBy: head.end)
                inbound = buffer.readableBytes > 0 ? buffer : nil
                self.exchange = exchange
                respondToFailedExchange(.tooManyTunnels, now: now)
                return false
            }
            tunnelSlot = tenant.tunnels
        }

        if let sticky = tenant.sticky {
            let index = buffer.withUnsafeReadableBytes { sticky.backendIndex(in: $0, fields: requestParser.cookies) }
            exchange.stickyBackend = index.map { tenant.backends[$0] }
        }

        var upstreamHead = headBuffer.take() ?? ByteBuffer()
        upstreamHead.clear(minimumCapacity: head.end - head.start + 256)
        buffer.withUnsafeReadableBytes { bytes in
            HeadWriter.writeRequest(
                bytes,
                head: head,
                dropped: requestParser.droppedLines,
                forwardedFor: requestParser.forwardedFor,
                client: settings.client,
                upgrade: isUpgrade,
                requestID: requestID,
                into: &upstreamHead
            )
        }
        buffer.moveReaderIndex(forwardBy: head.end)

        // Body bytes that came with the head are checked now, so that a malformed chunked body is refused before
        // anything reaches a backend.
        if !exchange.requestBody.isComplete, buffer.readableBytes > 0 {
            let progress = buffer.withUnsafeReadableBytes { exchange.requestBody.consume($0) }
            switch progress {
            case .invalid:
                inbound = nil
                refuse(.badRequest)
                return false
            case .needMore:
                exchange.bytesFromClient += buffer.readableBytes
                exchange.earlyBody = buffer
                buffer = ByteBuffer()
            case .complete(let count):
                exchange.bytesFromClient += count
                exchange.earlyBody = buffer.readSlice(length: count)
            }
        }
        inbound = buffer.readableBytes > 0 ? buffer : nil
        exchange.upstreamHead = upstreamHead
        // An unusually large head's buffer is not kept for the life of the connection.
        headBuffer = upstreamHead.capacity <= 4096 ? upstreamHead : nil
        let fresh = exchange.isUpgrade
        let preferred = exchange.stickyBackend
        self.exchange = exchange
        state = .connecting
        clientDeadline = nil
        queue(.acquireUpstream(tenant, fresh: fresh, preferred: preferred, avoidingLast: false))
        return false
    }

    /// Forwards request body bytes from `inbound` to the backend.
    private mutating func forwardRequestBody(now: NIODeadline) {
        guard var buffer = inbound, var exchange = self.exchange.take() else { return }
        let progress = buffer.withUnsafeReadableBytes { exchange.requestBody.consume($0) }
        // The backend's time to answer counts from the last request byte it was sent.
        armUpstreamDeadline(now: now)
        switch progress {
        case .needMore:
            exchange.bytesFromClient += buffer.readableBytes
            queue(.writeUpstream(buffer))
            inbound = nil
            clientDeadline = now + settings.clientBodyTimeout
        case .complete(let count):
            exchange.bytesFromClient += count
            if let slice = buffer.readSlice(length: count), slice.readableBytes > 0 {
                queue(.writeUpstream(slice))
            }
            inbound = buffer.readableBytes > 0 ? buffer : nil
            clientDeadline = nil
        case .invalid:
            // Part of the request already went out; the backend sees it cut short.
            let responseStarted = exchange.responseStarted
            self.exchange = exchange
            inbound = nil
            queue(.releaseUpstream(reusable: false))
            if responseStarted {
                close()
            } else {
                refuse(.badRequest)
            }
            return
        }
        let finished = exchange.requestBody.isComplete && exchange.response.isComplete
        self.exchange = exchange
        if finished {
            finishExchange(now: now)
        }
    }

    // MARK: Responses

    private mutating func receiveResponse(_ buffer: ByteBuffer, now: NIODeadline) {
        // Moved out, not copied, and put back on every way out: a copy would cost a retain and a release of each of
        // its dozen references, and make its buffers shared, so writing to them would copy their bytes.
        guard var exchange = self.exchange.take() else { return }
        var buffer = buffer
        while buffer.readableBytes > 0 {
            switch exchange.response {
            case .complete:
                // Bytes past the end of the response: the backend connection cannot be trusted again.
                exchange.upstreamKeepAlive = false
                buffer.moveReaderIndex(to: buffer.writerIndex)
            case .body(var framing):
                let progress = buffer.withUnsafeReadableBytes { framing.consume($0) }
                switch progress {
                case .needMore:
                    exchange.response = .body(framing)
                    exchange.bytesToClient += buffer.readableBytes
                    queue(.writeClient(buffer))
                    self.exchange = exchange
                    return
                case .complete(let count):
                    if let slice = buffer.readSlice(length: count), slice.readableBytes > 0 {
                        exchange.bytesToClient += slice.readableBytes
                        queue(.writeClient(slice))
                    }
                    exchange.response = .complete
                    if buffer.readableBytes > 0 { exchange.upstreamKeepAlive = false }
                    self.exchange = exchange
                    finishExchange(now: now)
                    return
                case .invalid:
                    self.exchange = exchange
                    queue(.releaseUpstream(reusable: false))
                    close()
                    return
                }
            case .awaitingHead:
                if var partial = exchange.partialResponseHead {
                    partial.writeBuffer(&buffer)
                    buffer = partial
                    exchange.partialResponseHead = nil
                }
                let result = buffer.withUnsafeReadableBytes { responseParser.parse($0) }
                switch result {
                case .incomplete:
                    exchange.partialResponseHead = buffer
                    self.exchange = exchange
                    return
                case .failure:
                    self.exchange = exchange
                    abandonExchange(answering: .badGateway, now: now)
                    return
                case .complete(let head):
                    responseParser.reset()
                    if head.status == 101 && !exchange.isUpgrade {
                        // Switching protocols on a request that asked for no switch (or for a protocol the tenant
                        // does not allow) is a broken answer: the client could not make sense of what follows.
                        exchange.upstreamHead = nil
                        self.exchange = exchange
                        queue(
                            .backendFailed(
                                tenant: exchange.tenant?.name ?? "-",
                                reason: "101 to a request that asked for no upgrade"
                            )
                        )
                        abandonExchange(answering: .badGateway, now: now)
                        return
                    }
                    exchange.responseStarted = true
                    exchange.upstreamHead = nil
                    if head.isInterim {
                        if let slice = buffer.readSlice(length: head.end) {
                            exchange.bytesToClient += slice.readableBytes
                            queue(.writeClient(slice))
                        }
                        continue
                    }
                    if settings.accessLog { exchange.respondedAt = now }
                    if head.status == 101 {
                        exchange.status = 101
                        if let setCookie = exchange.setCookie {
                            // Pin the client here too (browsers take cookies from a WebSocket handshake's answer).
                            // The head keeps its Connection and Upgrade fields: only the cookie goes in before its
                            // end.
                            var output = ByteBuffer()
                            output.reserveCapacity(head.end + setCookie.utf8.count)
                            if let headWithoutEnd = buffer.getSlice(at: buffer.readerIndex, length: head.end - 2) {
                                output.writeImmutableBuffer(headWithoutEnd)
                            }
                            output.writeString(setCookie)
                            output.writeStaticString("\r\n")
                            buffer.moveReaderIndex(forwardBy: head.end)
                            exchange.bytesToClient += output.readableBytes
                            queue(.writeClient(output))
                        }
                        exchange.bytesToClient += buffer.readableBytes
                        if buffer.readableBytes > 0 {
                            queue(.writeClient(buffer))
                        }
                        self.exchange = exchange
                        record(exchange, now: now)
                        enterTunnel(now: now)
                        return
                    }
                    startResponseBody(head, buffer: &buffer, exchange: &exchange)
                }
            }
        }
        let finished = exchange.response.isComplete
        self.exchange = exchange
        if finished {
            finishExchange(now: now)
        }
    }

    /// Decides the response's framing and the client connection's fate, and forwards the head (rewritten only if
    /// it must be).
    private mutating func startResponseBody(_ head: ResponseHead, buffer: inout ByteBuffer, exchange: inout Exchange) {
        exchange.status = head.status
        let framing: BodyFraming
        if exchange.isHead || head.status == 204 || head.status == 304 {
            framing = .done
        } else if head.isChunked {
            framing = .chunked(ChunkedBodyTracker())
        } else if let length = head.contentLength, !head.hasOtherTransferCoding {
            framing = length == 0 ? .done : .length(length)
        } else {
            framing = .untilClose
        }
        // An HTTP/1.0 request is forwarded as such, without keep-alive: the backend closes after answering.
        exchange.upstreamKeepAlive = head.backendKeepAlive && framing != .untilClose && exchange.minorVersion == 1
        if framing == .untilClose || clientInputClosed || shuttingDown || !exchange.requestBody.isComplete {
            exchange.keepAlive = false
        }
        let connection: HeadWriter.ClientConnection =
            !exchange.keepAlive ? .close : (exchange.minorVersion == 0 ? .keepAliveHTTP10 : .keepAlive)
        if head.mustRewrite || connection != .keepAlive || exchange.setCookie != nil {
            var output = ByteBuffer()
            output.reserveCapacity(head.end + 24 + (exchange.setCookie?.utf8.count ?? 0))
            buffer.withUnsafeReadableBytes { bytes in
                HeadWriter.writeResponse(
                    bytes,
                    end: head.end,
                    dropped: responseParser.droppedLines,
                    connection: connection,
                    setCookie: exchange.setCookie,
                    into: &output
                )
            }
            buffer.moveReaderIndex(forwardBy: head.end)
            exchange.bytesToClient += output.readableBytes
            queue(.writeClient(output))
            exchange.response = framing.isComplete ? .complete : .body(framing)
        } else if framing.isComplete {
            // The whole response is the head: forward it in one piece.
            if let slice = buffer.readSlice(length: head.end) {
                exchange.bytesToClient += slice.readableBytes
                queue(.writeClient(slice))
            }
            exchange.response = .complete
            if buffer.readableBytes > 0 { exchange.upstreamKeepAlive = false }
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return
        } else {
            // Forward head and body bytes as one slice of the read buffer: no copy, one write.
            var framing = framing
            let progress = buffer.withUnsafeReadableBytes { bytes in
                framing.consume(UnsafeRawBufferPointer(rebasing: bytes[head.end...]))
            }
            switch progress {
            case .needMore:
                exchange.bytesToClient += buffer.readableBytes
                queue(.writeClient(buffer))
                buffer.moveReaderIndex(to: buffer.writerIndex)
                exchange.response = .body(framing)
            case .complete(let count):
                if let whole = buffer.readSlice(length: head.end + count) {
                    exchange.bytesToClient += whole.readableBytes
                    queue(.writeClient(whole))
                }
                exchange.response = .complete
                if buffer.readableBytes > 0 { exchange.upstreamKeepAlive = false }
                buffer.moveReaderIndex(to: buffer.writerIndex)
            case .invalid:
                exchange.upstreamKeepAlive = false
                exchange.keepAlive = false
                exchange.response = .complete
                if let headSlice = buffer.readSlice(length: head.end) {
                    queue(.writeClient(headSlice))
                }
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
        }
    }

    /// The response is complete: release the backend, log, and go on with the next request or close.
    private mutating func finishExchange(now: NIODeadline) {
        // Moved out rather than copied: the exchange ends here whichever way it goes.
        guard case .complete? = exchange?.response, let exchange = self.exchange.take() else { return }
        guard exchange.requestBody.isComplete else {
            // The backend answered before the request body was all sent (an early error, say): the rest of the
            // body cannot be told from a next request, so both connections go.
            queue(.releaseUpstream(reusable: false))
            record(exchange, now: now)
            close()
            return
        }
        queue(.releaseUpstream(reusable: exchange.upstreamKeepAlive))
        record(exchange, now: now)
        releaseTunnelSlot()
        if exchange.keepAlive && !clientInputClosed && !shuttingDown {
            state = .idle
            clientDeadline = now + settings.keepAliveTimeout
            upstreamDeadline = nil
            requestParser.reset()
            processInbound(now: now)
        } else {
            close()
        }
    }

    private mutating func enterTunnel(now: NIODeadline) {
        state = .tunnel
        upstreamDeadline = nil
        headBuffer = nil
        tunnelIdleTimeout = exchange?.tenant?.tunnelIdle ?? settings.tunnelIdleTimeout
        tunnelTenant = exchange?.tenant
        clientDeadline = now + tunnelIdleTimeout
        exchange = nil
        processInbound(now: now)
    }

    // MARK: Endings

    /// Answers a request that was not forwarded because it is refused outright; the connection closes, since the
    /// request stream can no longer be trusted.
    private mutating func refuse(_ status: ErrorResponse.Status) {
        var output = ByteBuffer()
        ErrorResponse.write(status, close: true, into: &output)
        inbound = nil
        // Counted with no tenant: a request refused before routing belongs to none.
        queue(
            .finished(
                tenant: nil,
                status: status.code,
                received: 0,
                sent: output.readableBytes,
                duration: .nanoseconds(0)
            )
        )
        queueAnswer(output)
        close()
    }

    /// Answers the current request with an error of the balancer's own (502, 503, 504, 408).
    private mutating func respondToFailedExchange(_ status: ErrorResponse.Status, now: NIODeadline) {
        guard var exchange else { return }
        let close = !exchange.keepAlive || !exchange.requestBody.isComplete || clientInputClosed || shuttingDown
        var output = ByteBuffer()
        ErrorResponse.write(status, close: close, headOnly: exchange.isHead, into: &output)
        exchange.status = status.code
        exchange.bytesToClient += output.readableBytes
        queueAnswer(output)
        record(exchange, now: now)
        releaseTunnelSlot()
        self.exchange = nil
        if close {
            self.close()
        } else {
            state = .idle
            clientDeadline = now + settings.keepAliveTimeout
            upstreamDeadline = nil
            requestParser.reset()
            processInbound(now: now)
        }
    }

    /// Drops the backend connection of the current exchange and answers `status`, or, when part of the backend's
    /// response already went to the client, closes: a response cut short can be reported no other way.
    private mutating func abandonExchange(answering status: ErrorResponse.Status, now: NIODeadline) {
        queue(.releaseUpstream(reusable: false))
        if exchange?.responseStarted == true {
            close()
        } else {
            respondToFailedExchange(status, now: now)
        }
    }

    /// Abandons the exchange: the backend connection and the client connection are closed.
    private mutating func abort() {
        if state == .exchanging || state == .tunnel {
            queue(.releaseUpstream(reusable: false))
        }
        close()
    }

    private mutating func releaseTunnelSlot() {
        tunnelSlot?.release()
        tunnelSlot = nil
    }

    private mutating func close() {
        releaseTunnelSlot()
        reportTunnelTraffic()
        guard state != .closed else { return }
        state = .closed
        exchange = nil
        inbound = nil
        clientDeadline = nil
        upstreamDeadline = nil
        queue(.closeClient)
    }

    /// Counts a request that was answered and, with the access log on, logs it.
    private mutating func record(_ exchange: Exchange, now: NIODeadline) {
        let duration = now - exchange.started
        queue(
            .finished(
                tenant: exchange.tenant,
                status: exchange.status,
                received: exchange.bytesFromClient,
                sent: exchange.bytesToClient,
                duration: duration
            )
        )
        guard settings.accessLog else { return }
        queue(
            .log(
                AccessLogRecord(
                    client: settings.client.address,
                    host: exchange.host,
                    tenant: exchange.tenant?.name ?? "-",
                    backend: exchange.backend,
                    method: exchange.method,
                    target: exchange.target,
                    status: exchange.status,
                    bytes: exchange.bytesToClient,
                    received: exchange.bytesFromClient,
                    duration: duration,
                    requestID: exchange.requestID,
                    upstreamConnect: exchange.attachedAt.map { $0 - exchange.started },
                    upstreamHeader: exchange.respondedAt.flatMap { responded in
                        exchange.attachedAt.map { responded - $0 }
                    }
                )
            )
        )
    }

    /// Queues the current tunnel's traffic since the last report, if it moved any.
    private mutating func reportTunnelTraffic() {
        guard let tenant = tunnelTenant else { return }
        if state != .tunnel { tunnelTenant = nil }
        guard tunnelReceived > 0 || tunnelSent > 0 else { return }
        queue(.tunnelTraffic(tenant, received: tunnelReceived, sent: tunnelSent))
        tunnelReceived = 0
        tunnelSent = 0
    }
}
