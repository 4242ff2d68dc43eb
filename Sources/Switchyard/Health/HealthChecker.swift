import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Runs the active health checks of every backend of every tenant and publishes each verdict to the data path
/// through the backend's ``BackendStatus``.
///
/// Checks are deduplicated: tenants' backends at the same address with the same check (settings, and for an HTTP
/// check the `Host` it sends) share one probe, whose verdict goes to every one of them, so 10,000 tenants on a few
/// backend addresses are not probed 10,000 times an interval. Checks are tasks scheduled on the event loops (spread
/// over them), never a thread per check. Each check's first probe comes at a random point of its interval, and each
/// later one at the interval ± 10 %, so that thousands of checks are not probed in lockstep. The checker follows the
/// route table: backends added by a reload get checks (or join one), removed ones stop being checked. Every up/down
/// transition is logged once per check.
///
/// A check that cannot be made for lack of descriptors (the balancer at its `RLIMIT_NOFILE`) is no verdict on the
/// backend: it is counted neither way, and logged as the balancer's own problem.
public final class HealthChecker: Service {
    private let routes: RouteSource
    private let group: EventLoopGroup
    private let logger: Logger
    private let skipped: SkippedChecks
    private let metrics: SwitchyardMetrics?

    /// - Parameter metrics: where checks are counted (`switchyard_health_checks_total`).
    public init(routes: RouteSource, group: EventLoopGroup, logger: Logger, metrics: SwitchyardMetrics? = nil) {
        self.metrics = metrics
        self.routes = routes
        self.group = group
        self.logger = logger
        self.skipped = SkippedChecks(logger: logger)
    }

    /// How often the checker looks for a newly published table.
    static let tick = Duration.milliseconds(100)
    /// Most new checks a change may add and still have them probed at once.
    static let immediateChecks = 64

    public func run() async throws {
        let checks = await cancelWhenGracefulShutdown {
            var checks: [HealthCheckKey: NIOLoopBoundBox<BackendCheck>] = [:]
            var reconciled: Int?
            while !Task.isCancelled {
                // Looked at ten times a second, so that an added backend is checked at once (and a removed one no
                // more); only a newly published table is reconciled, since walking 10,000 tenants for nothing
                // costs, and a burst of changes within the tick costs one reconcile.
                let (table, generation) = self.routes.currentWithGeneration
                if generation != reconciled {
                    checks = await self.reconcile(checks, with: table, isFirst: reconciled == nil)
                    reconciled = generation
                }
                try? await Task.sleep(for: Self.tick)
            }
            return checks
        }
        for check in checks.values {
            check.eventLoop.execute { check.value.stop() }
        }
    }

    /// The checks the route table needs: one per ``HealthCheckKey``, with every backend that shares it.
    static func plan(_ table: RouteTable) -> [HealthCheckKey: [BackendCheck.Subscriber]] {
        var plan: [HealthCheckKey: [BackendCheck.Subscriber]] = [:]
        for tenant in table.tenants {
            let domain =
                tenant.domains.first { !$0.hasPrefix("*.") } ?? tenant.domains.first.map { String($0.dropFirst(2)) }
            let host = tenant.health.host ?? domain ?? "localhost"
            for backend in tenant.backends {
                let key = HealthCheckKey(address: backend.address, settings: tenant.health, host: host)
                plan[key, default: []].append(BackendCheck.Subscriber(backend: backend, tenant: tenant.name))
            }
        }
        return plan
    }

    /// Starts the checks the route table needs and has none, gives the running ones their current backends, and
    /// stops those no longer needed.
    ///
    /// A new check's first probe comes at once when a change adds a few (a backend added live is checked right
    /// away), at a random point of its interval at start and when a change adds many (an `apply` of thousands of
    /// tenants), so that they are not all probed in the same instant.
    private func reconcile(
        _ checks: [HealthCheckKey: NIOLoopBoundBox<BackendCheck>],
        with table: RouteTable,
        isFirst: Bool
    ) async -> [HealthCheckKey: NIOLoopBoundBox<BackendCheck>] {
        var next: [HealthCheckKey: NIOLoopBoundBox<BackendCheck>] = [:]
        let plan = Self.plan(table)
        let spread = isFirst || plan.keys.lazy.filter { checks[$0] == nil }.count > Self.immediateChecks
        for (key, subscribers) in plan {
            if let existing = checks[key] {
                next[key] = existing
                existing.eventLoop.execute { existing.value.update(subscribers) }
                continue
            }
            let loop = group.next()
            let check = BackendCheck(
                subscribers: subscribers,
                settings: key.settings,
                host: key.host,
                eventLoop: loop,
                logger: logger,
                skipped: skipped,
                metrics: metrics
            )
            let box = NIOLoopBoundBox.makeBoxSendingValue(check, eventLoop: loop)
            loop.execute { box.value.start(spread: spread) }
            next[key] = box
        }
        for (key, check) in checks where next[key] == nil {
            check.eventLoop.execute { check.value.stop() }
        }
        return next
    }
}

/// What makes two tenants' backend checks the same probe: the address, the check's settings and, for an HTTP
/// check, the `Host` it sends (a TCP connect sends none, so it is left out).
struct HealthCheckKey: Hashable {
    var address: SocketAddress
    var settings: HealthCheckConfiguration
    var host: String

    init(address: SocketAddress, settings: HealthCheckConfiguration, host: String) {
        self.address = address
        self.settings = settings
        self.host = settings.path == nil ? "" : host
    }
}

/// One check, on one event loop, and the tenants' backends its verdicts go to.
final class BackendCheck {
    /// A tenant's backend that takes this check's verdicts.
    struct Subscriber {
        var backend: Backend
        var tenant: String
    }

    let settings: HealthCheckConfiguration
    let host: String
    let eventLoop: EventLoop
    let logger: Logger
    private(set) var subscribers: [Subscriber]
    private let skipped: SkippedChecks
    private let metrics: SwitchyardMetrics?
    private(set) var machine: BackendHealthMachine
    private var scheduled: Scheduled<Void>?
    private var stopped = false

    /// The backend probed (every subscriber has its address).
    var backend: Backend { subscribers[0].backend }

    init(
        subscribers: [Subscriber],
        settings: HealthCheckConfiguration,
        host: String,
        eventLoop: EventLoop,
        logger: Logger,
        skipped: SkippedChecks? = nil,
        metrics: SwitchyardMetrics? = nil
    ) {
        precondition(!subscribers.isEmpty, "a check serves at least one backend")
        self.metrics = metrics
        self.subscribers = subscribers
        self.settings = settings
        self.host = host
        self.eventLoop = eventLoop
        self.logger = logger
        self.skipped = skipped ?? SkippedChecks(logger: logger)
        self.machine = BackendHealthMachine(rise: settings.rise, fall: settings.fall)
    }

    /// A check for one tenant's backend.
    convenience init(
        backend: Backend,
        tenant: String,
        settings: HealthCheckConfiguration,
        host: String,
        eventLoop: EventLoop,
        logger: Logger,
        skipped: SkippedChecks? = nil
    ) {
        self.init(
            subscribers: [Subscriber(backend: backend, tenant: tenant)],
            settings: settings,
            host: host,
            eventLoop: eventLoop,
            logger: logger,
            skipped: skipped
        )
    }

    /// Starts probing: at once, or with `spread` at a random point of the interval.
    func start(spread: Bool = true) {
        let interval = settings.interval.nanoseconds
        schedule(after: .nanoseconds(spread ? Int64.random(in: 0..<max(1, interval)) : 0))
    }

    func stop() {
        stopped = true
        scheduled?.cancel()
        scheduled = nil
    }

    /// The backends that share this check now (a reload added or removed tenants). One that joins a check whose
    /// backend is down is down at once, as the others are.
    func update(_ current: [Subscriber]) {
        guard !current.isEmpty else { return }
        if machine.state == .down {
            let known = Set(subscribers.map { ObjectIdentifier($0.backend) })
            for subscriber in current where !known.contains(ObjectIdentifier(subscriber.backend)) {
                subscriber.backend.status.setActivelyUp(false)
            }
        }
        subscribers = current
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
            metrics?.countHealthCheck(passed: result == .success)
            record(result)
        case .noVerdict(let reason):
            skipped.checkSkipped(backend: backend, tenant: subscribers[0].tenant, reason: reason)
        }
        let interval = settings.interval.nanoseconds
        let jitter = Int64.random(in: -(interval / 10)...(interval / 10))
        schedule(after: .nanoseconds(interval + jitter))
    }

    /// Names the check's backend in a log line: its first tenant, and how many more share it.
    private var subject: String {
        let others = subscribers.count - 1
        let first = "backend \(subscribers[0].backend) of \(subscribers[0].tenant)"
        return others == 0 ? first : first + " (and \(others) more tenant\(others == 1 ? "" : "s"))"
    }

    private func record(_ result: HealthCheckResult) {
        let transition = machine.record(result)
        // The verdict reaches the data path before the line that announces it, so that what the log says is
        // already true when it is read.
        let now = Date()
        for subscriber in subscribers {
            let status = subscriber.backend.status
            status.recordCheck(result, at: now)
            // A failed check below `fall` changes nothing: in particular it must not end a passive ejection.
            if machine.state == .down {
                status.setActivelyUp(false)
            } else if result == .success {
                status.setActivelyUp(true)
            }
        }
        switch transition {
        case .none:
            break
        case .wentDown(let failures, let reason):
            logger.warning("\(subject): up → down after \(failures) failures: \(reason)")
        case .cameUp(let successes):
            logger.notice("\(subject): down → up after \(successes) successes")
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
