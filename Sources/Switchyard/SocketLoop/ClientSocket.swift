import CSocketLoop
import NIOCore
import SwitchyardTLS

/// A client connection on the loop: a thin adapter that feeds a ``ProxyStateMachine`` and performs its actions,
/// as ``ClientConnectionHandler`` does on SwiftNIO's channels.
///
/// The machine lives inline and is mutated in place. Reads follow the machine's appetite and the backend's
/// writability (backpressure); while they wait, an edge already seen is remembered in ``readable`` and read when
/// they resume. Writes queue in an ``OutboundQueue`` flushed once per burst of actions.
///
/// On an HTTPS listener a ``TLSServerSession`` sits between the socket and the machine: what is read is ciphertext,
/// decrypted before the machine sees it; what the machine writes is encrypted on its way to the queue.
final class ClientSocket {
    let descriptor: SocketDescriptor
    /// The slot's token in the loop's epoll set.
    var token: UInt64 = 0
    private let worker: LoopWorker
    private var machine: ProxyStateMachine
    private var output = OutboundQueue()
    /// The attached backend connection.
    private var upstream: BackendSocket?
    /// A backend connection being opened for the current request.
    private var connecting: BackendSocket?
    /// The backend of the current or last attempt: avoided by a retry, blamed for a failure.
    private var lastBackend: Backend?
    /// The tenant of the connect in progress, for its log line.
    private var tenantName = ""
    /// Whether input may be waiting: an edge was seen and not read to its end.
    private var readable = false
    /// The peer half-closed: read to the end, whatever the size of the reads.
    private var peerClosedInput = false
    /// The last read filled the loop's receive buffer: the next one uses the large buffer.
    private var largeReads = false
    private var inputEnded = false
    /// The writability last told to the machine.
    private var reportedWritable = true
    /// The socket did not take everything: flushing waits for `EPOLLOUT`.
    private var waitingForOutput = false
    private var closeWhenFlushed = false
    private var shutdownWhenFlushed = false
    private var outputShut = false
    private(set) var closed = false
    private var isPerformingActions = false
    /// The TLS session, on an HTTPS listener.
    private let tls: TLSServerSession?
    /// The client's IP address, for log lines.
    private let peer: String
    /// Until when the TLS handshake may take (`timeouts.tls_handshake`), while it is in progress.
    private var handshakeDeadline: NIODeadline?

    init(
        descriptor: SocketDescriptor,
        worker: LoopWorker,
        peer: String,
        scheme: StaticString,
        tls: TLSServerSession?
    ) {
        self.descriptor = descriptor
        self.worker = worker
        self.tls = tls
        self.peer = peer
        self.handshakeDeadline = tls == nil ? nil : worker.now + worker.configuration.timeouts.tlsHandshake
        let settings = ProxyStateMachine.Settings(
            configuration: worker.configuration,
            address: peer,
            scheme: scheme,
            accessLog: worker.logsAccess
        )
        self.machine = ProxyStateMachine(settings: settings, routes: worker.routes, now: worker.now)
    }

    // MARK: Events

    /// An epoll event for this connection.
    func handle(_ flags: UInt32) {
        if flags & (c_loop_err | c_loop_hup) != 0, flags & c_loop_in == 0 {
            // Reset or gone, with nothing left to read: reading would only fetch the error.
            readable = true
        }
        if flags & c_loop_rdhup != 0 { peerClosedInput = true }
        if flags & (c_loop_in | c_loop_rdhup) != 0 { readable = true }
        if flags & c_loop_out != 0, waitingForOutput {
            waitingForOutput = false
            performActions()
        }
        readIfWanted()
    }

    private var canRead: Bool {
        machine.wantsClientBytes && (upstream?.isWritable ?? true)
    }

    /// Reads while input waits and the machine wants it, within the loop's read budget.
    func readIfWanted() {
        var budget = LoopWorker.readBudget
        while readable, !closed, !inputEnded, canRead {
            guard budget > 0 else {
                worker.markReady(token)
                return
            }
            budget -= 1
            let (result, bytes, filled) = worker.read(descriptor, large: largeReads)
            switch result {
            case .read:
                largeReads = filled
                if !filled, !peerClosedInput { readable = false }
                if let tls {
                    receiveCiphertext(bytes, session: tls)
                } else {
                    machine.clientRead(bytes, now: worker.now)
                    performActions()
                }
            case .wouldBlock:
                readable = false
            case .endOfInput:
                readable = false
                if let tls, tls.isHandshaking {
                    if tls.hasReceived { worker.accounting.tlsFailure(.clientClosed) }
                    tls.close()
                    close()
                    return
                }
                endInput()
            case .failed:
                // Resets from the client: nothing to answer.
                if let tls, tls.isHandshaking, tls.hasReceived { worker.accounting.tlsFailure(.clientClosed) }
                close()
            }
        }
    }

    /// The client sends nothing more (TCP FIN, or TLS close_notify): once.
    private func endInput() {
        guard !inputEnded else { return }
        inputEnded = true
        machine.clientInputEnded(now: worker.now)
        performActions()
        closeIfFinished()
    }

    /// Ciphertext from the client: the handshake, then plaintext for the machine.
    private func receiveCiphertext(_ bytes: ByteBuffer, session: TLSServerSession) {
        switch session.receive(bytes) {
        case .ignored:
            return
        case .plaintext(let answer):
            worker.accounting.tlsFailure(.plaintextHTTP)
            handshakeDeadline = nil
            if let answer { output.append(answer) }
            closeWhenFlushed = true
            flush()
            return
        case .accepted:
            break
        }
        if session.isHandshaking {
            switch session.continueHandshake() {
            case .inProgress:
                queueCiphertext(session)
                flush()
                return
            case .failed(let failure):
                // The alert OpenSSL queued tells the client why.
                worker.logger.info(
                    "\(failure)",
                    metadata: ["peer": "\(peer)", "sni": "\(session.serverName.map(LogEscaping.escaped) ?? "-")"]
                )
                worker.accounting.tlsFailure(.handshakeError)
                queueCiphertext(session)
                closeWhenFlushed = true
                flush()
                return
            case .completed(let completed):
                handshakeDeadline = nil
                worker.accounting.tlsHandshake(completed)
                machine.tlsEstablished(serverName: completed.serverName, certificate: completed.certificate)
                queueCiphertext(session)
            }
        }
        let end = session.readPlaintext { plaintext in
            machine.clientRead(plaintext, now: worker.now)
        }
        // Session tickets, key updates and alerts are produced by reads too.
        queueCiphertext(session)
        switch end {
        case .open:
            performActions()
        case .closeNotify:
            performActions()
            endInput()
        case .failed(let failure):
            worker.logger.debug("\(failure)", metadata: ["peer": "\(peer)"])
            close()
        }
    }

    private func queueCiphertext(_ session: TLSServerSession) {
        if let ciphertext = session.takeCiphertext() { output.append(ciphertext) }
    }

    // MARK: Backend events

    /// Whether the attached backend connection should be read now: the machine wants its bytes and this
    /// connection can take them.
    var wantsUpstreamRead: Bool {
        machine.wantsUpstreamBytes && output.isWritable && !closed
    }

    func upstreamConnected(_ connection: BackendSocket) {
        guard connection === connecting else { return }
        connecting = nil
        guard machine.state == .connecting else {
            connection.close()
            return
        }
        worker.accounting.connected()
        attach(connection, reused: false)
        performActions()
    }

    func upstreamConnectFailed(_ connection: BackendSocket, code: CInt?) {
        guard connection === connecting else { return }
        connecting = nil
        let backend = connection.backend
        connection.close()
        guard machine.state == .connecting else { return }
        if let code {
            let error = SocketFailure(operation: "connect", code: code)
            worker.accounting.connectFailed(backend, tenant: tenantName, error: "\(error)")
            machine.upstreamConnectFailed(.refused, now: worker.now)
        } else {
            worker.accounting.connectFailed(backend, tenant: tenantName, error: "connect timed out")
            machine.upstreamConnectFailed(.timedOut, now: worker.now)
        }
        performActions()
    }

    func upstreamRead(_ connection: BackendSocket, _ buffer: ByteBuffer) {
        guard connection === upstream else { return }
        machine.upstreamRead(buffer, now: worker.now)
        performActions()
    }

    func upstreamClosed(_ connection: BackendSocket) {
        guard connection === upstream else { return }
        machine.upstreamClosed(now: worker.now)
        performActions()
    }

    /// The backend connection took what was queued for it: client reads held for its sake may go on.
    func upstreamWritable() {
        if readable, canRead { worker.markReady(token) }
    }

    // MARK: Loop events

    func checkTimeouts(now: NIODeadline) {
        guard !closed else { return }
        if let deadline = handshakeDeadline, deadline <= now {
            handshakeDeadline = nil
            worker.accounting.tlsFailure(.timeout)
            tls?.close()
            close()
            return
        }
        if machine.state == .tunnel, let upstream,
            upstream.backend.retirement.isRetired(longerThan: machine.retiredTunnelGrace, now: now)
        {
            machine.tunnelBackendRetired()
        }
        machine.checkTimeouts(now: now)
        performActions()
    }

    func beginShutdown() {
        machine.beginShutdown()
        performActions()
    }

    /// Closes the connection now, and the backend connection with it.
    func close() {
        guard !closed else { return }
        closed = true
        descriptor.close()
        output.removeAll()
        machine.clientClosed()
        performActions()
        if let upstream {
            // Still attached: the close came from inside an action, before the machine's release was performed.
            self.upstream = nil
            upstream.backend.status.connectionClosed()
            upstream.close()
        }
        if let connecting {
            self.connecting = nil
            connecting.close()
        }
        worker.clientClosed(self)
    }

    // MARK: Actions

    /// Performs queued actions in order, flushes both sides, and tells the machine what the flush changed; the
    /// loop runs until nothing more is queued, and nested calls leave the work to the outer loop.
    private func performActions() {
        guard !isPerformingActions else { return }
        isPerformingActions = true
        defer { isPerformingActions = false }
        while true {
            var awaitingDrain = false
            while let action = machine.popAction() {
                if case .awaitClientDrain = action {
                    awaitingDrain = true
                } else {
                    perform(action)
                }
            }
            if let upstream {
                upstream.flush()
            }
            flush()
            if closed { return }
            if output.isWritable != reportedWritable {
                reportedWritable = output.isWritable
                machine.clientWritabilityChanged(reportedWritable, now: worker.now)
                if reportedWritable {
                    if machine.isAwaitingClientDrain { machine.clientOutputDrained(now: worker.now) }
                    upstream?.resumeReading()
                }
                continue
            }
            // The balancer's own answers to pipelined requests wait for the client to take what it was sent.
            guard awaitingDrain, output.isWritable else { break }
            machine.clientOutputDrained(now: worker.now)
        }
        if readable, canRead { worker.markReady(token) }
    }

    private func flush() {
        guard !closed, !waitingForOutput else { return }
        if !output.isEmpty {
            switch output.flush(to: descriptor) {
            case .flushed:
                break
            case .wouldBlock:
                waitingForOutput = true
                return
            case .failed:
                close()
                return
            }
        }
        if closeWhenFlushed {
            close()
        } else if shutdownWhenFlushed, !outputShut {
            outputShut = true
            descriptor.shutdownOutput()
            closeIfFinished()
        }
    }

    /// Both directions ended (the client's FIN came, ours went): nothing more can pass, so the connection closes,
    /// as a SwiftNIO channel allowing half-closure does.
    private func closeIfFinished() {
        if inputEnded, outputShut { close() }
    }

    private func perform(_ action: ProxyStateMachine.Action) {
        switch action {
        case .acquireUpstream(let tenant, let fresh, let preferred, let avoidingLast):
            if avoidingLast, let lastBackend {
                lastBackend.meters.add(1, to: .retries, loop: worker.loop.index)
            }
            acquireUpstream(
                for: tenant,
                fresh: fresh,
                preferred: preferred,
                excluding: avoidingLast ? lastBackend : nil
            )
        case .writeUpstream(let buffer):
            upstream?.write(buffer)
        case .writeClient(let buffer):
            guard !closed else { return }
            if let tls {
                do {
                    try tls.write(buffer)
                } catch {
                    worker.logger.debug("\(error)")
                    close()
                    return
                }
                queueCiphertext(tls)
            } else {
                output.append(buffer)
            }
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
            upstream?.shutdownOutputWhenFlushed()
        case .shutdownClientOutput:
            if let tls, tls.isActive {
                tls.shutdown(final: false)
                queueCiphertext(tls)
            }
            shutdownWhenFlushed = true
        case .awaitClientDrain:
            break  // taken by performActions
        case .resetClient:
            close()
        case .closeClient:
            // Close only once everything written so far is on the wire (or, if the client never reads it, when the
            // machine gives up after `timeouts.client_send` and resets).
            if let tls, tls.isActive {
                // close_notify, so the client can tell a complete response from a cut connection.
                tls.shutdown(final: true)
                queueCiphertext(tls)
            }
            closeWhenFlushed = true
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

    private func acquireUpstream(for tenant: Tenant, fresh: Bool, preferred: Backend?, excluding excluded: Backend?) {
        let now = worker.now
        guard let backend = worker.selector.next(of: tenant, preferring: preferred, excluding: excluded, now: now)
        else {
            machine.noBackendAvailable(now: now)
            return
        }
        lastBackend = backend
        if !fresh, let pooled = worker.takeUpstream(backend) {
            pooled.backend = backend
            attach(pooled, reused: true)
            return
        }
        tenantName = tenant.name
        let connection: BackendSocket
        do {
            connection = try worker.connect(to: backend, for: self)
        } catch  where DescriptorLimit.isLocalShortage(errno: error.code) {
            // Out of descriptors here, not a sign of the backend's health: 503 at once, nothing counted.
            worker.accounting.localShortage("\(error)")
            machine.upstreamConnectFailed(.localShortage, now: now)
            return
        } catch {
            worker.accounting.connectFailed(backend, tenant: tenant.name, error: "\(error)")
            machine.upstreamConnectFailed(.refused, now: now)
            return
        }
        if connection.isConnecting {
            connecting = connection
        } else {
            worker.accounting.connected()
            attach(connection, reused: false)
        }
    }

    private func attach(_ connection: BackendSocket, reused: Bool) {
        connection.backend.status.connectionOpened()
        connection.backend.meters.add(1, to: .requests, loop: worker.loop.index)
        connection.owner = self
        connection.idleSince = nil
        upstream = connection
        machine.upstreamAttached(backend: connection.backend, reused: reused, now: worker.now)
    }
}

@available(*, unavailable)
extension ClientSocket: Sendable {}
