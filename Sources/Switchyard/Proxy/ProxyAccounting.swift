import Logging
import NIOCore
import SwitchyardTLS

/// What a client connection's adapter counts and logs for the ``ProxyStateMachine``'s reports (a finished exchange,
/// tunnel traffic, a backend's failure), the same whichever transport drives the machine.
struct ProxyAccounting {
    /// The loop's number: its slot in every counter.
    let loop: Int
    let metrics: ProxyMeters
    let logger: Logger

    /// Counts a finished exchange (``ProxyStateMachine/Action/finished(tenant:status:received:sent:duration:)``).
    func finished(tenant: Tenant?, status: Int, received: Int, sent: Int, duration: TimeAmount) {
        metrics.countRequest(status: status, duration: duration, tenant: tenant, loop: loop)
        if let tenant {
            let meters = tenant.meters
            meters.countResponse(status: status, loop: loop)
            meters.countDuration(duration, loop: loop)
            meters.add(received, to: .receivedBytes, loop: loop)
            meters.add(sent, to: .sentBytes, loop: loop)
            if status == 101 { meters.add(1, to: .tunnelsOpened, loop: loop) }
        } else if status == 404 {
            metrics.add(1, to: .unknownHostRequests, loop: loop)
        }
    }

    /// Counts a completed TLS handshake by protocol version, and whether it resumed a session.
    func tlsHandshake(_ handshake: TLSHandshakeCompleted) {
        let field: ProxyMeters.Field
        switch handshake.version {
        case "TLSv1.3": field = .tlsHandshakesV13
        case "TLSv1.2": field = .tlsHandshakesV12
        default: field = .tlsHandshakesOther
        }
        metrics.add(1, to: field, loop: loop)
        if handshake.resumed { metrics.add(1, to: .tlsResumed, loop: loop) }
    }

    /// Counts a failed TLS handshake by its reason.
    func tlsFailure(_ reason: TLSHandshakeFailed.Reason) {
        let field: ProxyMeters.Field
        switch reason {
        case .timeout: field = .tlsFailureTimeout
        case .plaintextHTTP: field = .tlsFailurePlaintext
        case .handshakeError: field = .tlsFailureHandshake
        case .clientClosed: field = .tlsFailureAborted
        }
        metrics.add(1, to: field, loop: loop)
    }

    /// Counts bytes a tunnel carried since its last report.
    func tunnelTraffic(_ tenant: Tenant, received: Int, sent: Int) {
        tenant.meters.add(received, to: .receivedBytes, loop: loop)
        tenant.meters.add(sent, to: .sentBytes, loop: loop)
    }

    /// A backend answered wrongly or not at all (``ProxyStateMachine/Action/backendFailed(tenant:reason:)``).
    func backendFailed(_ backend: Backend, tenant: String, reason: StaticString) {
        backend.meters.add(1, to: .failures, loop: loop)
        logger.warning("backend \(backend) of \(tenant): \(reason)")
        reportFailure(of: backend, tenant: tenant)
    }

    /// A connect to a backend failed (not for lack of local descriptors).
    func connectFailed(_ backend: Backend, tenant: String, error: String) {
        backend.meters.add(1, to: .connectFailures, loop: loop)
        logger.warning("backend \(backend) of \(tenant): connect failed: \(error)")
        reportFailure(of: backend, tenant: tenant)
    }

    /// Counts a failure against `backend` and logs the ejection it may cause.
    private func reportFailure(of backend: Backend, tenant: String) {
        if let length = backend.status.recordFailure(now: .now()) {
            backend.meters.add(1, to: .ejections, loop: loop)
            logger.warning(
                "backend \(backend) of \(tenant): ejected for \(length.nanoseconds / 1_000_000_000)s after \(BackendStatus.PassiveEjection.threshold) failures in a row"
            )
        }
    }

    /// Backend connects that failed for lack of descriptors, logged once per episode across every worker.
    private static let localShortage = EpisodeLog()

    /// A backend connect failed for lack of local descriptors: logged once per episode, counted against nothing.
    func localShortage(_ error: String) {
        switch Self.localShortage.occurred() {
        case .started:
            logger.warning(
                "cannot open backend connections: \(error); answering 503 and counting nothing against the backends (raise the open-file limit or lower limits.max_connections)"
            )
        case .continuing(let count):
            logger.warning("still cannot open backend connections: \(count) more attempts failed")
        case nil:
            break
        }
    }

    /// A backend connect succeeded: ends an episode of local shortage, if one was on.
    func connected() {
        if Self.localShortage.succeeded() {
            logger.notice("backend connections open again")
        }
    }
}

extension ProxyStateMachine.Settings {
    /// The settings for a client connection from `address` on a listener of `scheme`.
    init(configuration: Configuration, address: String, scheme: StaticString, accessLog: Bool) {
        self.init(
            maximumHeadBytes: configuration.limits.maxHeaderBytes,
            maximumHeaderCount: configuration.limits.maxHeaderCount,
            clientHeaderTimeout: configuration.timeouts.clientHeader,
            keepAliveTimeout: configuration.timeouts.keepAlive,
            clientBodyTimeout: configuration.timeouts.clientBody,
            upstreamResponseTimeout: configuration.timeouts.upstreamResponse,
            tunnelIdleTimeout: configuration.timeouts.tunnelIdle,
            clientSendTimeout: configuration.timeouts.clientSend,
            forwardsUnderscoreFields: configuration.underscoresInHeaders,
            client: HeadWriter.ClientInfo(address: address, scheme: scheme),
            accessLog: accessLog,
            httpsPort: configuration.listen.https.first?.port,
            retiredTunnelGrace: configuration.timeouts.drain,
            requestIDs: configuration.requestID
        )
    }
}
