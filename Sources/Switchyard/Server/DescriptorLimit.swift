import Atomics
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's open-file limit (`RLIMIT_NOFILE`): every client connection, backend connection, health check,
/// listener and admin connection takes one descriptor of it.
public enum DescriptorLimit {
    /// The soft (enforced) and hard (ceiling) limits.
    public struct Limits: Sendable, Equatable {
        public var soft: Int
        public var hard: Int

        public init(soft: Int, hard: Int) {
            self.soft = soft
            self.hard = hard
        }
    }

    /// The limits now, `nil` if they cannot be read.
    public static func current() -> Limits? {
        var limit = rlimit()
        guard getrlimit(resourceNoFile, &limit) == 0 else { return nil }
        return Limits(soft: clamp(limit.rlim_cur), hard: clamp(limit.rlim_max))
    }

    /// Raises the soft limit to the hard one, as nginx's `worker_rlimit_nofile` or systemd's `LimitNOFILE=` would:
    /// the soft default (often 1024) is a compatibility value for programs using `select(2)`, which the event loops
    /// do not. A hard limit of "unlimited" is not a value the kernel takes for the soft one (Linux caps it at
    /// `fs.nr_open`, Darwin at `kern.maxfilesperproc`), so the soft limit is then raised as far as the kernel allows.
    ///
    /// - Returns: the limits before and after; equal when nothing could be raised.
    @discardableResult
    public static func raiseSoftLimitToHard() -> (before: Limits, after: Limits)? {
        var limit = rlimit()
        guard getrlimit(resourceNoFile, &limit) == 0 else { return nil }
        let before = Limits(soft: clamp(limit.rlim_cur), hard: clamp(limit.rlim_max))
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resourceNoFile, &raised) != 0 {
                // An unlimited (or above the kernel's maximum) hard limit: the largest the kernel accepts.
                for candidate in [rlim_t(1 << 20), rlim_t(1 << 16), rlim_t(10_240)]
                where candidate > limit.rlim_cur && candidate < limit.rlim_max {
                    raised.rlim_cur = candidate
                    if setrlimit(resourceNoFile, &raised) == 0 { break }
                }
            }
        }
        return (before, current() ?? before)
    }

    /// Whether `error` is the system running short of descriptors or buffers for this process (`EMFILE`,
    /// `ENFILE`, `ENOBUFS`, `ENOMEM`): a local problem, not a verdict on whoever was at the other end.
    public static func isLocalShortage(_ error: any Error) -> Bool {
        if let error = error as? IOError {
            return isLocalShortage(errno: error.errnoCode)
        }
        if let error = error as? NIOConnectionError {
            return !error.connectionErrors.isEmpty && error.connectionErrors.allSatisfy { isLocalShortage($0.error) }
        }
        return false
    }

    /// See ``isLocalShortage(_:)``.
    public static func isLocalShortage(errno code: CInt) -> Bool {
        code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM
    }

    /// The system's words for an errno, with its number: "Too many open files (errno 24)".
    static func describe(errno code: CInt) -> String {
        "\(String(cString: strerror(code))) (errno \(code))"
    }

    private static func clamp(_ value: rlim_t) -> Int {
        value >= rlim_t(Int.max) ? Int.max : Int(value)
    }

    #if canImport(Glibc)
    private static let resourceNoFile = __rlimit_resource_t(UInt32(RLIMIT_NOFILE.rawValue))
    #else
    private static let resourceNoFile = RLIMIT_NOFILE
    #endif
}

/// What a configuration may need of ``DescriptorLimit`` at the worst moment, counted as nginx counts its
/// `worker_connections` for a proxy: every client connection may hold a backend connection, and on top of those
/// the idle pools, one health check per backend, the listeners, the admin socket and the event loops themselves.
public struct DescriptorBudget: Sendable, Equatable {
    /// Connections the admin API may have open at once by default (`admin.max_connections`), counted against the
    /// limit.
    public static let adminConnections = AdminServer.Limits.defaultMaximumConnections
    /// Descriptors each event loop holds (epoll, its wake-up eventfd and timerfd).
    static let perEventLoop = 3
    /// Standard input, output and error, and a margin for the odd file (configuration, certificates on reload).
    static let process = 3 + 16

    /// `limits.max_connections`.
    public var clientConnections: Int
    /// One backend connection per client connection (a request in flight or a tunnel).
    public var backendConnections: Int
    /// Idle keep-alive backend connections: `limits.upstream_keepalive` per backend and per worker.
    public var pooledConnections: Int
    /// One per backend.
    public var healthChecks: Int
    /// Listeners, the admin socket and its connections, the event loops, standard streams.
    public var fixed: Int
    private let keepAlive: Int
    private let backends: Int
    private let workers: Int

    /// All of the above.
    public var total: Int {
        [clientConnections, backendConnections, pooledConnections, healthChecks, fixed].reduce(0, Self.add)
    }

    /// - Parameters:
    ///   - backends: backends over all tenants.
    ///   - workers: event-loop threads.
    public init(configuration: Configuration, backends: Int, workers: Int) {
        let listeners = Self.multiply(configuration.listen.http.count + configuration.listen.https.count, workers)
        clientConnections = configuration.limits.maxConnections
        backendConnections = configuration.limits.maxConnections
        pooledConnections = Self.multiply(Self.multiply(configuration.limits.upstreamKeepAlive, backends), workers)
        healthChecks = backends
        // The admin socket, its TCP listener if any, and the connections both may have open (admin.max_connections).
        let admin = (configuration.admin.listen == nil ? 1 : 2) + configuration.admin.maximumConnections
        fixed = [listeners, admin, Self.multiply(Self.perEventLoop, workers), Self.process].reduce(0, Self.add)
        keepAlive = configuration.limits.upstreamKeepAlive
        self.backends = backends
        self.workers = workers
    }

    /// One log line when the budget does not fit in `limit` descriptors, saying how it adds up and what to do;
    /// `nil` when it fits.
    public func warning(limit: Int) -> String? {
        guard total > limit else { return nil }
        let reserved = [pooledConnections, healthChecks, fixed].reduce(0, Self.add)
        let room = reserved < limit ? limit - reserved : 0
        let advice =
            room >= 2
            ? "lower limits.max_connections to \(room / 2)"
            : "lower limits.upstream_keepalive or limits.max_connections"
        return "the descriptor limit (\(limit), RLIMIT_NOFILE) is below what the configuration may need (\(total)): "
            + "\(clientConnections) client connections (limits.max_connections) and as many backend connections, "
            + "\(pooledConnections) idle pooled backend connections (limits.upstream_keepalive \(keepAlive) × "
            + "\(Self.count(backends, "backend")) × \(Self.count(workers, "worker"))), "
            + "\(Self.count(healthChecks, "health check")), \(fixed) for listeners, admin and event loops; past the "
            + "limit accepting pauses and new clients wait. Raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) "
            + "or \(advice)"
    }

    private static func count(_ number: Int, _ noun: String) -> String {
        "\(number) \(noun)\(number == 1 ? "" : "s")"
    }

    private static func add(_ a: Int, _ b: Int) -> Int {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? Int.max : sum
    }

    private static func multiply(_ a: Int, _ b: Int) -> Int {
        let (product, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? Int.max : product
    }
}

/// Rate-limits the log lines of a recurring local problem (accepts or health checks failing for lack of
/// descriptors) to one when it starts, a reminder with a count at most every `interval` while it lasts, and one
/// when it is over: on the first success at least `settle` after the last failure, so that a success squeezed
/// between two failures (a descriptor freed and taken again at once) does not announce an end.
///
/// Thread-safe (atomics), so one value can be shared by every event loop. Races between loops may at worst merge
/// or split a count; they never log twice for the same start.
final class EpisodeLog: Sendable {
    /// What to log for an occurrence.
    enum Report: Equatable {
        /// The first occurrence after a quiet `interval`.
        case started
        /// Still happening: `count` occurrences since the previous report, `interval` or more ago.
        case continuing(count: Int)
    }

    let interval: TimeAmount
    let settle: TimeAmount
    /// Uptime nanoseconds of the last report; 0 before any.
    private let lastReport = ManagedAtomic<Int64>(0)
    private let lastOccurrence = ManagedAtomic<Int64>(0)
    private let unreported = ManagedAtomic<Int>(0)
    /// Whether a report was made and its end not yet logged.
    private let open = ManagedAtomic<Bool>(false)

    init(interval: TimeAmount = .seconds(60), settle: TimeAmount = .seconds(1)) {
        self.interval = interval
        self.settle = settle
    }

    /// The problem happened at `now`; returns what to log, if anything.
    func occurred(at now: NIODeadline = .now()) -> Report? {
        let time = Int64(clamping: now.uptimeNanoseconds)
        let previous = lastOccurrence.exchange(time, ordering: .relaxed)
        let count = unreported.wrappingIncrementThenLoad(ordering: .relaxed)
        let reported = lastReport.load(ordering: .relaxed)
        guard reported == 0 || time - reported >= interval.nanoseconds else { return nil }
        guard lastReport.compareExchange(expected: reported, desired: time, ordering: .relaxed).exchanged else {
            return nil
        }
        unreported.store(0, ordering: .relaxed)
        open.store(true, ordering: .relaxed)
        if previous == 0 || time - previous >= interval.nanoseconds {
            return .started
        }
        return .continuing(count: count)
    }

    /// The operation succeeded at `now`; `true` once after each report, when the end of the problem is worth a
    /// line. Cheap when nothing was reported (one relaxed load), so it can sit on the accept path.
    func succeeded(at now: @autoclosure () -> NIODeadline = .now()) -> Bool {
        guard open.load(ordering: .relaxed) else { return false }
        let time = Int64(clamping: now().uptimeNanoseconds)
        guard time - lastOccurrence.load(ordering: .relaxed) >= settle.nanoseconds else { return false }
        return open.exchange(false, ordering: .relaxed)
    }
}
