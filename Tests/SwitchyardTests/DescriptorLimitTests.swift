import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import Switchyard

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What running short of descriptors does: the start-up budget, the episode logging, and health checks that
/// cannot run counted neither way.
@Suite("Descriptor limit")
struct DescriptorLimitTests {
    @Test("the budget counts client and backend connections, pools per backend and worker, checks and the rest")
    func budget() throws {
        var configuration = Configuration(listen: .init(http: [try SocketAddress(ipAddress: "127.0.0.1", port: 80)]))
        configuration.limits.maxConnections = 1000
        configuration.limits.upstreamKeepAlive = 8
        let budget = DescriptorBudget(configuration: configuration, backends: 3, workers: 2)
        #expect(budget.clientConnections == 1000)
        #expect(budget.backendConnections == 1000)
        #expect(budget.pooledConnections == 48)
        #expect(budget.healthChecks == 3)
        // 2 listeners, the admin socket, its 64 connections, 3 per event loop, 19 for the process.
        #expect(budget.fixed == 2 + 1 + AdminServer.Limits.defaultMaximumConnections + 6 + 19)
        #expect(budget.fixed == 92)
        #expect(budget.total == 2143)
        #expect(budget.warning(limit: 2143) == nil)
        let warning = try #require(budget.warning(limit: 1024))
        #expect(
            warning.hasPrefix("the descriptor limit (1024, RLIMIT_NOFILE) is below what the configuration may need")
        )
        #expect(warning.contains("(2143)"))
        #expect(warning.contains("48 idle pooled backend connections (limits.upstream_keepalive 8 × 3 backends × 2"))
        // (1024 - 48 - 3 - 92) / 2
        #expect(warning.hasSuffix("lower limits.max_connections to 440"))
    }

    @Test("a huge max_connections saturates instead of overflowing")
    func budgetSaturates() {
        var configuration = Configuration()
        configuration.limits.maxConnections = Int.max
        configuration.limits.upstreamKeepAlive = Int.max
        let budget = DescriptorBudget(configuration: configuration, backends: 2, workers: 2)
        #expect(budget.total == Int.max)
        #expect(
            budget.warning(limit: 1 << 20)?.hasSuffix("lower limits.upstream_keepalive or limits.max_connections")
                == true
        )
    }

    @Test("EMFILE, ENFILE, ENOBUFS and ENOMEM are local shortages; a refused connection is not")
    func localShortages() {
        for code in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            #expect(DescriptorLimit.isLocalShortage(IOError(errnoCode: code, reason: "socket")))
        }
        #expect(!DescriptorLimit.isLocalShortage(IOError(errnoCode: ECONNREFUSED, reason: "connect")))
        #expect(!DescriptorLimit.isLocalShortage(ChannelError.connectTimeout(.seconds(1))))
    }

    @Test("the soft limit can be read and is raised no higher than the hard one")
    func limitsReadable() throws {
        let limits = try #require(DescriptorLimit.current())
        #expect(limits.soft <= limits.hard)
    }

    @Test("a probe whose socket cannot be opened is no verdict; a refused connect is a failure")
    func probeOutcome() {
        let emfile = IOError(errnoCode: EMFILE, reason: "socket")
        #expect(
            HealthProbe.outcome(of: emfile) == .noVerdict("no socket for the probe: Too many open files (errno 24)")
        )
        let refused = IOError(errnoCode: ECONNREFUSED, reason: "connect")
        #expect(HealthProbe.outcome(of: refused) == .verdict(.failure(refused.description)))
    }

    @Test("a check without verdict counts neither way: fall 1 does not take the backend down, nor breaks a streak")
    func noVerdictNotCounted() throws {
        let loop = EmbeddedEventLoop()
        let backend = Backend(address: try SocketAddress(ipAddress: "10.0.0.1", port: 8080))
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let check = BackendCheck(
            backend: backend,
            tenant: "shop",
            settings: HealthCheckConfiguration(interval: .seconds(1), timeout: .milliseconds(500), rise: 2, fall: 1),
            host: "shop.test",
            eventLoop: loop,
            logger: logger
        )
        let emfile = IOError(errnoCode: EMFILE, reason: "socket")
        for _ in 0..<5 {
            check.record(HealthProbe.outcome(of: emfile))
        }
        #expect(backend.status.isActivelyUp)
        #expect(check.machine.consecutiveFailures == 0)
        #expect(backend.status.lastCheck == nil)

        check.record(.verdict(.failure("connection refused")))
        #expect(!backend.status.isActivelyUp)
        check.record(.verdict(.success))
        check.record(HealthProbe.outcome(of: emfile))
        check.record(.verdict(.success))
        #expect(backend.status.isActivelyUp, "a skipped check does not break the success streak")
        check.stop()
        try loop.syncShutdownGracefully()
    }

    @Test("an episode is reported when it starts, reminded at most once an interval, and its end once")
    func episodes() {
        let log = EpisodeLog(interval: .seconds(60), settle: .seconds(1))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        #expect(!log.succeeded(at: start))
        #expect(log.occurred(at: start) == .started)
        #expect(log.occurred(at: start + .milliseconds(500)) == nil)
        // A success right after a failure is no end yet; one a second after the last failure is, once.
        #expect(!log.succeeded(at: start + .milliseconds(600)))
        #expect(log.succeeded(at: start + .milliseconds(1500)))
        #expect(!log.succeeded(at: start + .seconds(2)))
        #expect(log.occurred(at: start + .seconds(30)) == nil)
        #expect(log.occurred(at: start + .seconds(61)) == .continuing(count: 3))
        #expect(log.occurred(at: start + .seconds(62)) == nil)
        #expect(log.succeeded(at: start + .seconds(63)))
        // Quiet for longer than the interval: a new start.
        #expect(log.occurred(at: start + .seconds(200)) == .started)
    }
}
