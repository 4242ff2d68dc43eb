import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

@testable import Switchyard

/// Keeps the balancer's log lines (warnings and up) with the moment each was logged, so that a test can see
/// health transitions and ejections, and time them from the moment they happened rather than from when it looked.
final class LogCapture: Sendable {
    struct Line: Sendable {
        var at: ContinuousClock.Instant
        var level: Logger.Level
        var message: String
    }

    private let stored = NIOLockedValueBox<[Line]>([])

    var lines: [Line] {
        stored.withLockedValue { $0 }
    }

    /// Lines containing every one of `parts`.
    func lines(containing parts: String...) -> [Line] {
        lines.filter { line in parts.allSatisfy { line.message.contains($0) } }
    }

    func append(_ line: Line) {
        stored.withLockedValue { $0.append(line) }
    }

    /// A logger writing into this capture.
    func logger(level: Logger.Level = .notice) -> Logger {
        var logger = Logger(label: "switchyard.test") { _ in CapturingLogHandler(capture: self) }
        logger.logLevel = level
        return logger
    }
}

private struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .notice

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        capture.append(LogCapture.Line(at: .now, level: event.level, message: event.message.description))
    }
}

/// A balancer for one tenant (`shop.test`) running in the test process with the active health checker started on
/// its event loops, as `serve` runs it; the tenant's live ``Backend`` objects are at hand to read their health.
final class HealthHarness: Sendable {
    static let host = "shop.test"

    let server: ProxyServer
    let group: MultiThreadedEventLoopGroup
    let routes: RouteSource
    let port: Int
    let logs: LogCapture
    private let checker: Task<Void, Never>

    private init(
        server: ProxyServer,
        group: MultiThreadedEventLoopGroup,
        routes: RouteSource,
        port: Int,
        logs: LogCapture,
        checker: Task<Void, Never>
    ) {
        self.server = server
        self.group = group
        self.routes = routes
        self.port = port
        self.logs = logs
        self.checker = checker
    }

    /// Starts a balancer whose tenant `shop` has `backends`, checked as `health` says, with sticky sessions if
    /// `sticky` is set.
    static func start(
        backends: [SocketAddress],
        health: HealthCheckConfiguration,
        workers: Int = 2,
        timeouts: Configuration.Timeouts = .init(upstreamConnect: .milliseconds(500)),
        sticky: StickySessionConfiguration? = nil
    ) async throws -> HealthHarness {
        var tenant = TenantConfiguration(name: "shop", domains: [host], backends: backends, health: health)
        tenant.sticky = sticky
        var configuration = Configuration(
            listen: .init(http: [try SocketAddress(ipAddress: "127.0.0.1", port: 0)]),
            workers: workers,
            tenants: [tenant],
            timeouts: timeouts
        )
        configuration.accessLog = false
        let group = MultiThreadedEventLoopGroup(numberOfThreads: workers)
        let logs = LogCapture()
        let logger = logs.logger()
        let routes = RouteSource(try RouteTable(configuration: configuration))
        let server = ProxyServer(configuration: configuration, group: group, routes: routes, logger: logger)
        do {
            try await server.start()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        let checker = HealthChecker(routes: routes, group: group, logger: logger)
        let task = Task { _ = try? await checker.run() }
        let port = server.boundAddresses.first?.port ?? 0
        return HealthHarness(server: server, group: group, routes: routes, port: port, logs: logs, checker: task)
    }

    /// The tenant's backends, in declaration order.
    var backends: [Backend] {
        routes.current.tenants[0].backends
    }

    func stop() async {
        checker.cancel()
        await checker.value
        await server.shutdown()
        try? await group.shutdownGracefully()
    }

    /// A client's answer.
    struct Reply {
        var status: Int
        var head: String
        var body: String

        /// The answer in `text`, one whole response as ``RawClient/receiveResponse(timeout:)`` reads it; status 0
        /// when no whole head came.
        init(parsing text: String) {
            guard let end = text.range(of: "\r\n\r\n") else {
                self.init(status: 0, head: text, body: "")
                return
            }
            let head = String(text[..<end.lowerBound])
            let parts = head.prefix { $0 != "\r\n" }.split(separator: " ")
            let status = parts.count >= 2 ? Int(parts[1]) ?? 0 : 0
            self.init(status: status, head: head, body: String(text[end.upperBound...]))
        }

        init(status: Int, head: String, body: String) {
            self.status = status
            self.head = head
            self.body = body
        }
    }

    /// Sends `GET path` with `headers` on a new client connection (closed after the answer) and reads the answer.
    func get(_ path: String = "/", headers: [(String, String)] = [], timeout: Double = 3) throws -> Reply {
        let client = try RawClient(port: port)
        let fields = headers.map { "\($0.0): \($0.1)\r\n" }.joined()
        try client.send("GET \(path) HTTP/1.1\r\nHost: \(Self.host)\r\n\(fields)Connection: close\r\n\r\n")
        return Reply(parsing: client.receiveResponse(timeout: timeout))
    }
}

/// Runs `body` with a ``HealthHarness`` and stops it afterwards, whether `body` throws or not.
func withHealthProxy(
    backends: [SocketAddress],
    health: HealthCheckConfiguration,
    timeouts: Configuration.Timeouts = .init(upstreamConnect: .milliseconds(500)),
    sticky: StickySessionConfiguration? = nil,
    _ body: (HealthHarness) async throws -> Void
) async throws {
    let harness = try await HealthHarness.start(
        backends: backends,
        health: health,
        timeouts: timeouts,
        sticky: sticky
    )
    do {
        try await body(harness)
    } catch {
        await harness.stop()
        throw error
    }
    await harness.stop()
}

extension HealthHarness {
    /// Waits until `condition` holds, checking every few milliseconds, for at most `timeout`.
    /// - Returns: whether it held in time.
    @discardableResult
    static func waitUntil(
        _ timeout: Duration,
        every step: Duration = .milliseconds(5),
        _ condition: () throws -> Bool
    ) async rethrows -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return true }
            try? await Task.sleep(for: step)
        }
        return try condition()
    }
}

/// Runs `body`, then `stops`, whether `body` throws or not.
func stopping(_ stops: [() async -> Void], _ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch {
        for stop in stops { await stop() }
        throw error
    }
    for stop in stops { await stop() }
}
