import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Runs the active health checks of every backend of every tenant and publishes each verdict to the data path
/// through the backend's ``BackendStatus``.
///
/// Checks are tasks scheduled on the event loops (spread over them), never a thread per check. Each backend's first
/// check comes at a random point of its interval, and each later one at the interval ± 10 %, so that thousands of
/// backends are not probed in lockstep. The checker follows the route table: backends added by a reload get
/// checks, removed ones stop being checked. Every up/down transition is logged once.
///
/// A check that cannot be made for lack of descriptors (the balancer at its `RLIMIT_NOFILE`) is no verdict on the
/// backend: it is counted neither way, and logged as the balancer's own problem.
public final class HealthChecker: Service {
    private let routes: RouteSource
    private let group: EventLoopGroup
    private let logger: Logger
    private let skipped: SkippedChecks

    public init(routes: RouteSource, group: EventLoopGroup, logger: Logger) {
        self.routes = routes
        self.group = group
        self.logger = logger
        self.skipped = SkippedChecks(logger: logger)
    }

    public func run() async throws {
        let checks = await cancelWhenGracefulShutdown {
            var checks: [ObjectIdentifier: NIOLoopBoundBox<BackendCheck>] = [:]
            while !Task.isCancelled {
                checks = await self.reconcile(checks)
                try? await Task.sleep(for: .seconds(1))
            }
            return checks
        }
        for check in checks.values {
            check.eventLoop.execute { check.value.stop() }
        }
    }

    /// Starts checks for backends that have none and stops those of backends no longer routed to.
    private func reconcile(
        _ checks: [ObjectIdentifier: NIOLoopBoundBox<BackendCheck>]
    ) async -> [ObjectIdentifier: NIOLoopBoundBox<BackendCheck>] {
        var next: [ObjectIdentifier: NIOLoopBoundBox<BackendCheck>] = [:]
        for tenant in routes.current.tenants {
            let host =
                tenant.domains.first { !$0.hasPrefix("*.") } ?? tenant.domains.first.map { String($0.dropFirst(2)) }
            for backend in tenant.backends {
                let key = ObjectIdentifier(backend)
                if let existing = checks[key] {
                    next[key] = existing
                    continue
                }
                let loop = group.next()
                let check = BackendCheck(
                    backend: backend,
                    tenant: tenant.name,
                    settings: tenant.health,
                    host: tenant.health.host ?? host ?? "localhost",
                    eventLoop: loop,
                    logger: logger,
                    skipped: skipped
                )
                let box = NIOLoopBoundBox.makeBoxSendingValue(check, eventLoop: loop)
                loop.execute { box.value.start() }
                next[key] = box
            }
        }
        for (key, check) in checks where next[key] == nil {
            check.eventLoop.execute { check.value.stop() }
        }
        return next
    }
}

/// The checks of one backend, on one event loop.
final class BackendCheck {
    let backend: Backend
    let tenant: String
    let settings: HealthCheckConfiguration
    let host: String
    let eventLoop: EventLoop
    let logger: Logger
    private let skipped: SkippedChecks
    private(set) var machine: BackendHealthMachine
    private var scheduled: Scheduled<Void>?
    private var stopped = false

    init(
        backend: Backend,
        tenant: String,
        settings: HealthCheckConfiguration,
        host: String,
        eventLoop: EventLoop,
        logger: Logger,
        skipped: SkippedChecks? = nil
    ) {
        self.backend = backend
        self.tenant = tenant
        self.settings = settings
        self.host = host
        self.eventLoop = eventLoop
        self.logger = logger
        self.skipped = skipped ?? SkippedChecks(logger: logger)
        self.machine = BackendHealthMachine(rise: settings.rise, fall: settings.fall)
    }

    func start() {
        let interval = settings.interval.nanoseconds
        schedule(after: .nanoseconds(Int64.random(in: 0..<max(1, interval))))
    }

    func stop() {
        stopped = true
        scheduled?.cancel()
        scheduled = nil
    }

    private func schedule(after delay: TimeAmount) {
        guard !stopped else { return }
        let check = NIOLoopBound(self, eventLoop: eventLoop)
        scheduled = eventLoop.scheduleTask(in: delay) { check.value.runCheck() }
    }

    private func runCheck() {
        guard !stopped else { return }
        let check = NIOLoopBound(self, eventLoop: eventLoop)
        HealthProbe.run(backend: backend, settings: settings, host: host, on: eventLoop).whenSuccess { outcome in
            check.value.record(outcome)
        }
    }

    /// Counts a probe's verdict, or skips a probe that told nothing about the backend, and schedules the next.
    func record(_ outcome: HealthProbe.Outcome) {
        guard !stopped else { return }
        switch outcome {
        case .verdict(let result):
            skipped.checkRan()
            record(result)
        case .noVerdict(let reason):
            skipped.checkSkipped(backend: backend, tenant: tenant, reason: reason)
        }
        let interval = settings.interval.nanoseconds
        let jitter = Int64.random(in: -(interval / 10)...(interval / 10))
        schedule(after: .nanoseconds(interval + jitter))
    }

    private func record(_ result: HealthCheckResult) {
        backend.status.recordCheck(result)
        switch machine.record(result) {
        case .none:
            break
        case .wentDown(let failures, let reason):
            logger.warning("backend \(backend) of \(tenant): up → down after \(failures) failures: \(reason)")
        case .cameUp(let successes):
            logger.notice("backend \(backend) of \(tenant): down → up after \(successes) successes")
        }
        // A failed check below `fall` changes nothing: in particular it must not end a passive ejection.
        if machine.state == .down {
            backend.status.setActivelyUp(false)
        } else if result == .success {
            backend.status.setActivelyUp(true)
        }
    }
}

@available(*, unavailable)
extension BackendCheck: Sendable {}

/// Health checks that could not be made for a local shortage, across every backend: one warning when they start
/// (not one per backend), a reminder with a count at most once a minute, and one line when checks run again.
final class SkippedChecks: Sendable {
    private let log = EpisodeLog()
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func checkSkipped(backend: Backend, tenant: String, reason: String) {
        switch log.occurred() {
        case .started:
            let limit = DescriptorLimit.current().map { " (descriptor limit \($0.soft))" } ?? ""
            let message =
                "health checks cannot run: \(reason)\(limit), first on backend \(backend) of \(tenant); a problem of "
                + "this balancer, not of the backends: not counted for or against them"
            logger.warning("\(message)")
        case .continuing(let count):
            logger.warning("health checks still cannot run: \(reason); \(count) skipped since the last report")
        case nil:
            break
        }
    }

    func checkRan() {
        if log.succeeded() {
            logger.notice("health checks run again")
        }
    }
}
