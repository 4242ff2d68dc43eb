import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Switchyard

/// ``BackendHealthMachine``: the rise/fall counting of active checks, with no clock and no I/O.
@Suite("BackendHealthMachine")
struct BackendHealthMachineTests {
    @Test("a backend is up at start, before any check")
    func upAtStart() {
        let machine = BackendHealthMachine(rise: 2, fall: 3)
        #expect(machine.state == .up)
        #expect(machine.consecutiveFailures == 0)
        #expect(machine.consecutiveSuccesses == 0)
    }

    @Test("`fall` failures in a row take it down, reporting the last failure's reason, once")
    func fallFailuresGoDown() {
        var machine = BackendHealthMachine(rise: 2, fall: 3)
        #expect(machine.record(.failure("connection refused")) == .none)
        #expect(machine.record(.failure("status 500")) == .none)
        #expect(machine.state == .up)
        #expect(
            machine.record(.failure("timed out after 100ms")) == .wentDown(failures: 3, reason: "timed out after 100ms")
        )
        #expect(machine.state == .down)
        // Further failures are no new transition.
        #expect(machine.record(.failure("connection refused")) == .none)
        #expect(machine.state == .down)
    }

    @Test("`rise` successes in a row bring a down backend up, once")
    func riseSuccessesComeUp() {
        var machine = BackendHealthMachine(rise: 2, fall: 1)
        #expect(machine.record(.failure("connection refused")) == .wentDown(failures: 1, reason: "connection refused"))
        #expect(machine.record(.success) == .none)
        #expect(machine.state == .down)
        #expect(machine.record(.success) == .cameUp(successes: 2))
        #expect(machine.state == .up)
        #expect(machine.record(.success) == .none)
        #expect(machine.state == .up)
    }

    @Test("a success interrupts a failure streak and a failure interrupts a success streak")
    func interleavedResultsResetStreaks() {
        var machine = BackendHealthMachine(rise: 2, fall: 2)
        #expect(machine.record(.failure("a")) == .none)
        #expect(machine.record(.success) == .none)
        #expect(machine.record(.failure("b")) == .none)
        #expect(machine.state == .up)
        #expect(machine.consecutiveFailures == 1)
        #expect(machine.record(.failure("c")) == .wentDown(failures: 2, reason: "c"))
        #expect(machine.record(.success) == .none)
        #expect(machine.record(.failure("d")) == .none)
        #expect(machine.record(.success) == .none)
        #expect(machine.state == .down)
        #expect(machine.consecutiveSuccesses == 1)
        #expect(machine.record(.success) == .cameUp(successes: 2))
    }

    @Test("rise and fall below 1 are taken as 1", arguments: [0, -3])
    func thresholdsClamped(value: Int) {
        var machine = BackendHealthMachine(rise: value, fall: value)
        #expect(machine.rise == 1)
        #expect(machine.fall == 1)
        #expect(machine.record(.failure("x")) == .wentDown(failures: 1, reason: "x"))
        #expect(machine.record(.success) == .cameUp(successes: 1))
    }
}

/// ``BackendStatus``: what the data path reads (active verdict, draining, passive ejection with its doubling
/// backoff) and the connection gauge, on an explicit clock.
@Suite("BackendStatus")
struct BackendStatusTests {
    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    /// Records `count` failures at `now`; returns the last one's ejection length.
    @discardableResult
    private func fail(_ status: BackendStatus, times count: Int, at now: NIODeadline) -> TimeAmount? {
        var length: TimeAmount?
        for _ in 0..<count { length = status.recordFailure(now: now) }
        return length
    }

    @Test("a new backend is available, actively up, not draining, not ejected, with no connections")
    func availableByDefault() {
        let status = BackendStatus()
        #expect(status.isAvailable(now: start))
        #expect(status.isActivelyUp)
        #expect(!status.isDraining)
        #expect(!status.isEjected(now: start))
        #expect(status.connections == 0)
    }

    @Test("an active `down` verdict makes it unavailable; `up` makes it available again")
    func activelyDown() {
        let status = BackendStatus()
        status.setActivelyUp(false)
        #expect(!status.isActivelyUp)
        #expect(!status.isAvailable(now: start))
        status.setActivelyUp(true)
        #expect(status.isAvailable(now: start))
    }

    @Test("a draining backend is unavailable, whatever its health")
    func draining() {
        let status = BackendStatus()
        status.isDrainedByOperator = true
        #expect(status.isDraining)
        #expect(!status.isAvailable(now: start))
        status.setActivelyUp(true)
        #expect(!status.isAvailable(now: start))
        status.isDrainedByOperator = false
        #expect(status.isAvailable(now: start))
    }

    @Test("three failures in a row eject it for 10 s, then it is available again")
    func threeFailuresEject() {
        let status = BackendStatus()
        #expect(status.recordFailure(now: start) == nil)
        #expect(status.recordFailure(now: start) == nil)
        #expect(status.isAvailable(now: start))
        #expect(status.recordFailure(now: start) == .seconds(10))
        #expect(status.isEjected(now: start))
        #expect(!status.isAvailable(now: start))
        #expect(!status.isAvailable(now: start + .milliseconds(9_900)))
        #expect(status.isAvailable(now: start + .milliseconds(10_100)))
        #expect(!status.isEjected(now: start + .milliseconds(10_100)))
        // Ejection does not touch the active verdict.
        #expect(status.isActivelyUp)
    }

    @Test("a success between failures ends the streak")
    func successResetsStreak() {
        let status = BackendStatus()
        fail(status, times: 2, at: start)
        status.recordSuccess()
        #expect(fail(status, times: 2, at: start) == nil)
        #expect(status.isAvailable(now: start))
        #expect(status.recordFailure(now: start) == .seconds(10))
        #expect(!status.isAvailable(now: start))
    }

    @Test("failures while ejected do not extend the ejection")
    func failuresWhileEjected() {
        let status = BackendStatus()
        #expect(fail(status, times: 3, at: start) == .seconds(10))
        #expect(fail(status, times: 3, at: start + .seconds(5)) == nil)
        #expect(status.isAvailable(now: start + .milliseconds(10_100)))
    }

    @Test("each new ejection lasts twice as long as the previous one: 10 s, then 20 s")
    func secondEjectionDoubles() {
        let status = BackendStatus()
        #expect(fail(status, times: 3, at: start) == .seconds(10))
        let second = start + .seconds(11)
        #expect(status.isAvailable(now: second))
        #expect(fail(status, times: 3, at: second) == .seconds(20))
        #expect(!status.isAvailable(now: second + .milliseconds(19_900)))
        #expect(status.isAvailable(now: second + .milliseconds(20_100)))
    }

    @Test("the ejection's length is capped at 5 minutes")
    func lengthCapped() {
        let status = BackendStatus()
        var now = start
        var lengths: [Int64] = []
        for _ in 0..<12 {
            let length = fail(status, times: 3, at: now)
            lengths.append((length ?? .zero).nanoseconds / 1_000_000_000)
            now = now + (length ?? .zero) + .seconds(1)
        }
        #expect(lengths == [10, 20, 40, 80, 160, 300, 300, 300, 300, 300, 300, 300])
        // The last one holds for exactly 5 minutes.
        let last = now - .seconds(301)
        #expect(!status.isAvailable(now: last + .milliseconds(299_900)))
        #expect(status.isAvailable(now: last + .milliseconds(300_100)))
    }

    @Test("an active `up` verdict ends an ejection and the failure streak")
    func activeUpEndsEjection() {
        let status = BackendStatus()
        fail(status, times: 3, at: start)
        #expect(!status.isAvailable(now: start + .seconds(1)))
        status.setActivelyUp(true)
        #expect(!status.isEjected(now: start + .seconds(1)))
        #expect(status.isAvailable(now: start + .seconds(1)))
        // The streak starts again from zero.
        #expect(fail(status, times: 2, at: start + .seconds(1)) == nil)
        #expect(status.isAvailable(now: start + .seconds(1)))
    }

    @Test("the connection gauge counts opened minus closed")
    func connectionsCounter() {
        let status = BackendStatus()
        status.connectionOpened()
        status.connectionOpened()
        status.connectionOpened()
        #expect(status.connections == 3)
        status.connectionClosed()
        #expect(status.connections == 2)
        status.connectionClosed()
        status.connectionClosed()
        #expect(status.connections == 0)
    }
}

/// ``Worker/nextBackend(of:preferring:excluding:now:)``: round-robin over a tenant's available backends, skipping down,
/// ejected and draining ones, avoiding the backend a retry excludes unless it is the only one left.
@Suite("Worker backend selection")
struct WorkerBackendSelectionTests {
    let loop = EmbeddedEventLoop()
    let worker: Worker
    let tenant: Tenant
    let backends: [Backend]
    let now = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    init() throws {
        backends = try (1...3).map { Backend(address: try SocketAddress(ipAddress: "10.0.0.\($0)", port: 8080)) }
        tenant = Tenant(name: "shop", domains: ["shop.test"], backends: backends)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        worker = Worker(
            eventLoop: loop,
            routes: RouteSource(try RouteTable(tenants: [tenant])),
            configuration: Configuration(),
            connectionCounter: ConnectionCounter(limit: 10),
            logger: logger,
            accessLog: nil
        )
    }

    /// The indexes (1-based, as in the addresses) of the next `count` picks; 0 for `nil`.
    private func picks(_ count: Int, excluding excluded: Backend? = nil) -> [Int] {
        (0..<count).map { _ in
            guard let backend = worker.nextBackend(of: tenant, excluding: excluded, now: now) else { return 0 }
            return (backends.firstIndex { $0 === backend } ?? -1) + 1
        }
    }

    @Test("all available: strict round-robin")
    func roundRobin() {
        #expect(picks(7) == [1, 2, 3, 1, 2, 3, 1])
    }

    @Test("down, draining and ejected backends are skipped")
    func skipsUnavailable() {
        backends[1].status.setActivelyUp(false)
        #expect(picks(4) == [1, 3, 1, 3])
        backends[2].status.isDrainedByOperator = true
        #expect(picks(3) == [1, 1, 1])
        backends[1].status.setActivelyUp(true)
        for _ in 0..<3 { _ = backends[0].status.recordFailure(now: now) }
        #expect(picks(3) == [2, 2, 2])
    }

    @Test("the excluded backend is avoided while another is available")
    func avoidsExcluded() {
        #expect(picks(6, excluding: backends[0]) == [2, 3, 2, 3, 2, 3])
        backends[2].status.setActivelyUp(false)
        #expect(picks(3, excluding: backends[1]) == [1, 1, 1])
    }

    @Test("the excluded backend is returned when it is the only available one")
    func excludedWhenOnlyOne() {
        backends[1].status.setActivelyUp(false)
        backends[2].status.isDrainedByOperator = true
        #expect(picks(2, excluding: backends[0]) == [1, 1])
    }

    @Test("nil when no backend is available, with or without an exclusion")
    func noneAvailable() {
        for backend in backends { backend.status.setActivelyUp(false) }
        #expect(picks(2) == [0, 0])
        #expect(picks(1, excluding: backends[0]) == [0])
        backends[0].status.setActivelyUp(true)
        #expect(picks(2) == [1, 1])
    }
}

/// The state machine's answer when the handler finds no available backend: a 503 at once, nothing forwarded.
@Suite("ProxyStateMachine with no available backend")
struct NoBackendAvailableTests {
    private func harness() throws -> ProxyStateMachineHarness {
        let backends = try [9001, 9002].map { Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: $0)) }
        let routes = RouteSource(
            try RouteTable(tenants: [Tenant(name: "shop", domains: ["shop.test"], backends: backends)])
        )
        return ProxyStateMachineHarness(routes: routes, accessLog: true, scheme: "http")
    }

    @Test("503 with Retry-After: 5, the connection kept alive, nothing forwarded, the next request served")
    func serviceUnavailable() throws {
        var h = try harness()
        #expect(h.client("GET /cart HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
        #expect(h.state == .connecting)
        let actions = h.noBackendAvailable()
        #expect(!actions.contains { $0.hasPrefix("upstream ") || $0.hasPrefix("backend failed") })
        try #require(actions.count == 2)
        #expect(actions[1] == "log 503")
        let response = actions[0]
        #expect(response.hasPrefix("client HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(response.contains("\r\nRetry-After: 5\r\n"))
        #expect(!response.contains("Connection: close"))
        #expect(response.hasSuffix("\r\n\r\n503 Service Unavailable: the site has no healthy backend right now.\n"))
        #expect(h.state == .idle)
        // The connection goes on: the next request asks for a backend again.
        #expect(h.client("GET /next HTTP/1.1\r\nHost: shop.test\r\n\r\n") == ["acquire shop"])
    }

    @Test("with Connection: close the 503 closes the connection")
    func serviceUnavailableClose() throws {
        var h = try harness()
        #expect(h.client("GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n") == ["acquire shop"])
        let actions = h.noBackendAvailable()
        try #require(actions.count == 3)
        #expect(actions[0].hasPrefix("client HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(actions[0].contains("\r\nRetry-After: 5\r\n"))
        #expect(actions[0].contains("\r\nConnection: close\r\n"))
        #expect(actions[1...] == ["log 503", "close"])
        #expect(h.state == .closed)
    }

    @Test("outside of connecting it is ignored")
    func ignoredWhenIdle() throws {
        var h = try harness()
        #expect(h.noBackendAvailable().isEmpty)
        #expect(h.state == .idle)
    }
}
