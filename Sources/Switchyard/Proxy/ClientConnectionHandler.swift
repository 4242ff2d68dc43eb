import Logging
import NIOCore
import NIOPosix
import SwitchyardTLS

/// The handler on a client connection: a thin adapter that feeds a ``ProxyStateMachine`` and performs its actions.
///
/// It owns at most one backend connection at a time (``UpstreamConnection``), opened on the same event loop,
/// and propagates backpressure both ways by holding reads on one side while the other cannot take more, as
/// SwiftNIO's `GlueHandler` example does.
final class ClientConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let worker: Worker
    private let scheme: StaticString
    private var machine: ProxyStateMachine?
    private var context: ChannelHandlerContext?
    private var upstream: UpstreamConnection?
    /// The backend of the current or last attempt: avoided by a retry, blamed for a failure.
    private var lastBackend: Backend?
    /// Identifies the current connect attempt, so a late answer to an abandoned one is ignored.
    private var connectAttempt = 0
    private var readPending = false
    private var clientNeedsFlush = false
    private var isPerformingActions = false

    init(worker: Worker, scheme: StaticString) {
        self.worker = worker
        self.scheme = scheme
    }

    // MARK: Client channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive {
            start(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // The context holds the pipeline, which holds this handler: keeping it would leak every connection.
        self.context = nil
        machine = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if machine == nil {
            start(context: context)
        }
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard worker.connectionCounter.acquire() else {
            worker.metrics.add(1, to: .refusedConnections, loop: worker.loop)
            worker.logger.warning(
                "connection refused: limits.max_connections reached",
                metadata: ["limit": "\(worker.connectionCounter.limit)"]
            )
            context.close(promise: nil)
            return
        }
        worker.metrics.add(1, to: .acceptedConnections, loop: worker.loop)
        let address = context.channel.remoteAddress?.ipAddress ?? "unknown"
        let settings = ProxyStateMachine.Settings(
            configuration: worker.configuration,
            address: address,
            scheme: scheme,
            accessLog: worker.accessLog != nil
        )
        machine = ProxyStateMachine(settings: settings, routes: worker.routes, now: .now())
        worker.register(self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine?.clientClosed()
        performActions()
        if let upstream {
            self.upstream = nil
            upstream.close()
        }
        worker.unregister(self)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        machine?.clientRead(unwrapInboundIn(data), now: .now())
        performActions()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        upstream?.flush()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            machine?.clientInputEnded(now: .now())
            performActions()
            return
        }
        if let handshake = event as? TLSHandshakeCompleted {
            worker.accounting.tlsHandshake(handshake)
            machine?.tlsEstablished(serverName: handshake.serverName, certificate: handshake.certificate)
            return
        }
        if let failure = event as? TLSHandshakeFailed {
            worker.accounting.tlsFailure(failure.reason)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        machine?.clientWritabilityChanged(writable, now: .now())
        if writable, machine?.isAwaitingClientDrain == true {
            machine?.clientOutputDrained(now: .now())
        }
        performActions()
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Resets and timeouts from the client: nothing to answer, the close that follows tidies up.
        worker.logger.debug("client connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// Client reads wait while the state machine cannot use more bytes or the backend cannot take them.
    func read(context: ChannelHandlerContext) {
        if canReadClient {
            readPending = false
            context.read()
        } else {
            readPending = true
        }
    }

    private var canReadClient: Bool {
        // Asked through the optional: `guard let machine` would copy the whole machine on every read cycle.
        guard machine?.wantsClientBytes == true else { return false }
        return upstream?.isWritable ?? true
    }

    // MARK: Backend connection events

    var wantsUpstreamRead: Bool {
        guard machine?.wantsUpstreamBytes == true else { return false }
        return context?.channel.isWritable ?? false
    }

    func upstreamRead(_ connection: UpstreamConnection, _ buffer: ByteBuffer) {
        guard connection === upstream else { return }
        connection.backend.status.recordSuccess()
        machine?.upstreamRead(buffer, now: .now())
        performActions()
    }

    func upstreamClosed(_ connection: UpstreamConnection) {
        guard connection === upstream else { return }
        machine?.upstreamClosed(now: .now())
        performActions()
    }

    func upstreamWritabilityChanged() {
        resumeClientReading()
    }

    func flushClient() {
        guard clientNeedsFlush, let context else { return }
        clientNeedsFlush = false
        context.flush()
    }

    // MARK: Worker events

    func checkTimeouts(now: NIODeadline) {
        if let grace = machine?.retiredTunnelGrace, machine?.state == .tunnel,
            upstream?.backend.retirement.isRetired(longerThan: grace, now: now) == true
        {
            machine?.tunnelBackendRetired()
        }
        machine?.checkTimeouts(now: now)
        performActions()
    }

    func beginShutdown() {
        machine?.beginShutdown()
        performActions()
    }

    func forceClose() {
        context?.close(promise: nil)
    }

    // MARK: Actions

    /// Performs queued actions in order. Performing one can raise events that queue more (a write failing, a
    /// close), so the loop runs until the queue is empty and nested calls leave the work to the outer loop.
    private func performActions() {
        guard !isPerformingActions else { return }
        isPerformingActions = true
        defer { isPerformingActions = false }
        while true {
            var awaitingDrain = false
            while let action = machine?.popAction() {
                if case .awaitClientDrain = action {
                    awaitingDrain = true
                } else {
                    perform(action)
                }
            }
            upstream?.flush()
            flushClient()
            // The balancer's own answers to pipelined requests wait for the client to take what it was sent: go on
            // once the flush left the channel writable, else when `channelWritabilityChanged` says it is.
            guard awaitingDrain, let context, context.channel.isWritable else { break }
            machine?.clientOutputDrained(now: .now())
        }
        resumeClientReading()
        upstream?.resumeReading()
    }

    private func resumeClientReading() {
        guard readPending, canReadClient, let context else { return }
        readPending = false
        context.read()
    }

    private func perform(_ action: ProxyStateMachine.Action) {
        guard let context else { return }
        switch action {
        case .acquireUpstream(let tenant, let fresh, let preferred, let avoidingLast):
            if avoidingLast, let lastBackend {
                lastBackend.meters.add(1, to: .retries, loop: worker.loop)
            }
            acquireUpstream(
                for: tenant,
                fresh: fresh,
                preferred: preferred,
                excluding: avoidingLast ? lastBackend : nil,
                context: context
            )
        case .writeUpstream(let buffer):
            upstream?.write(buffer)
        case .writeClient(let buffer):
            context.write(wrapOutboundOut(buffer), promise: nil)
            clientNeedsFlush = true
        case .releaseUpstream(let reusable):
            guard let connection = upstream else { return }
            upstream = nil
            connection.backend.status.connectionClosed()
            if reusable {
                worker.releaseUpstream(connection)
            } else {
                connection.close()
            }
        case .shutdownUpstreamOutput:
            upstream?.shutdownOutput()
        case .shutdownClientOutput:
            clientNeedsFlush = false
            context.flush()
            context.close(mode: .output, promise: nil)
        case .awaitClientDrain:
            break  // taken by performActions
        case .resetClient:
            clientNeedsFlush = false
            context.close(promise: nil)
        case .closeClient:
            // Close only once everything written so far is on the wire (or, if the client never reads it, when
            // the machine gives up after `timeouts.client_send` and resets).
            clientNeedsFlush = false
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        case .backendFailed(let tenant, let reason):
            if let backend = upstream?.backend ?? lastBackend {
                worker.accounting.backendFailed(backend, tenant: tenant, reason: reason)
            }
        case .finished(let tenant, let status, let received, let sent, let duration):
            worker.accounting.finished(
                tenant: tenant,
                status: status,
                received: received,
                sent: sent,
                duration: duration
            )
        case .tunnelTraffic(let tenant, let received, let sent):
            worker.accounting.tunnelTraffic(tenant, received: received, sent: sent)
        case .log(let record):
            worker.logAccess(record)
        }
    }

    private func acquireUpstream(
        for tenant: Tenant,
        fresh: Bool,
        preferred: Backend?,
        excluding excluded: Backend?,
        context: ChannelHandlerContext
    ) {
        let now = NIODeadline.now()
        guard let backend = worker.nextBackend(of: tenant, preferring: preferred, excluding: excluded, now: now)
        else {
            machine?.noBackendAvailable(now: now)
            return
        }
        lastBackend = backend
        if !fresh, let pooled = worker.takeUpstream(backend) {
            pooled.backend = backend
            attach(pooled, reused: true)
            return
        }
        connectAttempt &+= 1
        let attempt = connectAttempt
        let connection = UpstreamConnection(backend: backend)
        let connected = worker.upstreamConnector.connect(
            to: backend,
            handler: connection,
            timeout: worker.configuration.timeouts.upstreamConnect,
            on: context.eventLoop
        )
        connected.assumeIsolated().whenComplete { result in
            guard attempt == self.connectAttempt, self.machine?.state == .connecting else {
                if case .success(let channel) = result { channel.close(promise: nil) }
                return
            }
            switch result {
            case .success:
                self.worker.accounting.connected()
                self.attach(connection, reused: false)
            case .failure(let error) where DescriptorLimit.isLocalShortage(error):
                // Out of descriptors here, not a sign of the backend's health: 503 at once, nothing counted.
                self.worker.accounting.localShortage("\(error)")
                self.machine?.upstreamConnectFailed(.localShortage, now: .now())
            case .failure(let error):
                self.worker.accounting.connectFailed(backend, tenant: tenant.name, error: "\(error)")
                let timedOut = (error as? ChannelError).map { if case .connectTimeout = $0 { true } else { false } }
                self.machine?.upstreamConnectFailed(timedOut == true ? .timedOut : .refused, now: .now())
            }
            self.performActions()
        }
    }

    private func attach(_ connection: UpstreamConnection, reused: Bool) {
        connection.backend.status.connectionOpened()
        connection.backend.meters.add(1, to: .requests, loop: worker.loop)
        connection.owner = self
        connection.idleSince = nil
        connection.pool = nil
        upstream = connection
        machine?.upstreamAttached(backend: connection.backend, reused: reused, now: .now())
    }
}

@available(*, unavailable)
extension ClientConnectionHandler: Sendable {}
