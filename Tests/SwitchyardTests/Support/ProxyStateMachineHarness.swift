import NIOCore
import Testing

@testable import Switchyard

/// A ``ProxyStateMachine`` with a hand-driven clock. Each event returns the actions it queued, rendered as strings;
/// consecutive writes in the same direction are joined, since how bytes are split into writes is not behaviour.
struct ProxyStateMachineHarness {
    /// The client's address in forwarding fields.
    static let clientAddress = "192.0.2.10"

    /// Timeouts of the harness's machine.
    enum Timeout {
        static let clientHeader = TimeAmount.seconds(10)
        static let keepAlive = TimeAmount.seconds(60)
        static let clientBody = TimeAmount.seconds(20)
        static let upstreamResponse = TimeAmount.seconds(30)
        static let tunnelIdle = TimeAmount.seconds(300)
        static let clientSend = TimeAmount.seconds(45)
    }

    var machine: ProxyStateMachine
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var logs: [AccessLogRecord] = []
    /// The requests counted (``ProxyStateMachine/Action/finished(tenant:status:received:sent:duration:)``), in
    /// order: not rendered, since every answered request has one.
    var finished: [(tenant: String?, status: Int, received: Int, sent: Int)] = []
    /// Tunnel traffic reported, summed: (received, sent).
    var tunnelTraffic = (received: 0, sent: 0)
    let routes: RouteSource

    /// - Parameter httpsPort: the HTTPS listener's port, for `https_redirect`.
    init(
        routes: RouteSource,
        accessLog: Bool = false,
        maximumHeadBytes: Int = 8192,
        maximumHeaderCount: Int = 64,
        scheme: StaticString = "https",
        httpsPort: Int? = nil,
        forwardsUnderscoreFields: Bool = false,
        requestIDs: Bool = false
    ) {
        let settings = ProxyStateMachine.Settings(
            maximumHeadBytes: maximumHeadBytes,
            maximumHeaderCount: maximumHeaderCount,
            clientHeaderTimeout: Timeout.clientHeader,
            keepAliveTimeout: Timeout.keepAlive,
            clientBodyTimeout: Timeout.clientBody,
            upstreamResponseTimeout: Timeout.upstreamResponse,
            tunnelIdleTimeout: Timeout.tunnelIdle,
            clientSendTimeout: Timeout.clientSend,
            forwardsUnderscoreFields: forwardsUnderscoreFields,
            client: HeadWriter.ClientInfo(address: Self.clientAddress, scheme: scheme),
            accessLog: accessLog,
            httpsPort: httpsPort,
            requestIDs: requestIDs
        )
        self.routes = routes
        machine = ProxyStateMachine(settings: settings, routes: routes, now: now)
    }

    var state: ProxyStateMachine.State { machine.state }

    mutating func drain() -> [String] {
        var rendered: [String] = []
        while let action = machine.popAction() {
            let line: String
            switch action {
            case .finished(let tenant, let status, let received, let sent, _):
                finished.append((tenant?.name, status, received, sent))
                continue
            case .tunnelTraffic(_, let received, let sent):
                tunnelTraffic.received += received
                tunnelTraffic.sent += sent
                continue
            case .acquireUpstream(let tenant, let fresh, let preferred, let avoidingLast):
                line =
                    "acquire \(tenant.name)" + (fresh ? " fresh" : "") + (preferred.map { " prefer \($0)" } ?? "")
                    + (avoidingLast ? " avoiding last" : "")
            case .writeUpstream(let buffer):
                line = "upstream " + String(buffer: buffer)
            case .writeClient(let buffer):
                line = "client " + String(buffer: buffer)
            case .releaseUpstream(let reusable):
                line = reusable ? "release reusable" : "release closed"
            case .shutdownUpstreamOutput:
                line = "shutdown upstream"
            case .shutdownClientOutput:
                line = "shutdown client"
            case .closeClient:
                line = "close"
            case .resetClient:
                line = "reset"
            case .awaitClientDrain:
                line = "await drain"
            case .backendFailed(let tenant, _):
                line = "backend failed \(tenant)"
            case .log(let record):
                logs.append(record)
                line = "log \(record.status)"
            }
            if let last = rendered.last,
                let prefix = ["client ", "upstream "].first(where: { last.hasPrefix($0) && line.hasPrefix($0) })
            {
                rendered[rendered.count - 1] = last + line.dropFirst(prefix.count)
            } else {
                rendered.append(line)
            }
        }
        return rendered
    }

    mutating func client(_ text: String) -> [String] {
        machine.clientRead(ByteBuffer(string: text), now: now)
        return drain()
    }

    mutating func upstream(_ text: String) -> [String] {
        machine.upstreamRead(ByteBuffer(string: text), now: now)
        return drain()
    }

    /// The backend at `index` of the tenant named `tenant`, or of the first tenant.
    func backend(_ tenant: String? = nil, _ index: Int = 0) -> Backend {
        let tenants = routes.current.tenants
        return (tenant.map { name in tenants.first { $0.name == name }! } ?? tenants[0]).backends[index]
    }

    mutating func attach(reused: Bool = false, to backend: Backend? = nil) -> [String] {
        machine.upstreamAttached(backend: backend ?? self.backend(), reused: reused, now: now)
        return drain()
    }

    /// The worker found no available backend.
    mutating func noBackendAvailable() -> [String] {
        machine.noBackendAvailable(now: now)
        return drain()
    }

    mutating func connectFailed(_ failure: ProxyStateMachine.ConnectFailure) -> [String] {
        machine.upstreamConnectFailed(failure, now: now)
        return drain()
    }

    mutating func upstreamClosed() -> [String] {
        machine.upstreamClosed(now: now)
        return drain()
    }

    mutating func clientInputEnded() -> [String] {
        machine.clientInputEnded(now: now)
        return drain()
    }

    mutating func clientClosed() -> [String] {
        machine.clientClosed()
        return drain()
    }

    mutating func beginShutdown() -> [String] {
        machine.beginShutdown()
        return drain()
    }

    /// The client connection's output went over (`false`) or back under (`true`) its high-water mark; on `true`
    /// the transport also reports the output drained, as ``ClientConnectionHandler`` does.
    mutating func clientWritable(_ writable: Bool) -> [String] {
        machine.clientWritabilityChanged(writable, now: now)
        if writable { machine.clientOutputDrained(now: now) }
        return drain()
    }

    /// The transport flushed what the client was sent and stays writable.
    mutating func clientOutputDrained() -> [String] {
        machine.clientOutputDrained(now: now)
        return drain()
    }

    /// Moves the clock on and applies the deadlines that passed.
    mutating func advance(_ amount: TimeAmount) -> [String] {
        now = now + amount
        machine.checkTimeouts(now: now)
        return drain()
    }
}
