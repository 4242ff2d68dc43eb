import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Switchyard

/// `balance:` — round robin and least connections, as the worker picks backends.
@Suite("Balancing")
struct BalancingTests {
    private func worker(_ tenant: Tenant) throws -> Worker {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return Worker(
            eventLoop: EmbeddedEventLoop(),
            routes: RouteSource(try RouteTable(tenants: [tenant])),
            configuration: Configuration(),
            connectionCounter: ConnectionCounter(limit: 10),
            logger: logger,
            accessLog: nil
        )
    }

    private func backends(_ count: Int) throws -> [Backend] {
        try (0..<count).map { Backend(address: try SocketAddress(ipAddress: "10.0.0.\($0 + 1)", port: 8080)) }
    }

    @Test("least connections picks the backend with the fewest in progress, and rotates among equals")
    func leastConnections() throws {
        let backends = try backends(3)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends, balance: .leastConnections)
        let worker = try worker(tenant)
        let now = NIODeadline.now()
        backends[0].status.connectionOpened()
        backends[0].status.connectionOpened()
        backends[1].status.connectionOpened()
        #expect(worker.nextBackend(of: tenant, excluding: nil, now: now) === backends[2])
        backends[2].status.connectionOpened()
        backends[2].status.connectionOpened()
        // 2, 1, 2 in progress: the idle-most is the second.
        #expect(worker.nextBackend(of: tenant, excluding: nil, now: now) === backends[1])
        backends[1].status.connectionOpened()
        // All at 2: ties rotate from where the last pick left off.
        let picks = (0..<3).map { _ in worker.nextBackend(of: tenant, excluding: nil, now: now) }
        #expect(Set(picks.compactMap { $0.map(ObjectIdentifier.init) }).count == 3)
    }

    @Test("least connections skips unavailable backends and the excluded one")
    func leastConnectionsSkips() throws {
        let backends = try backends(2)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends, balance: .leastConnections)
        let worker = try worker(tenant)
        backends[1].status.connectionOpened()
        backends[0].status.setActivelyUp(false)
        #expect(worker.nextBackend(of: tenant, excluding: nil, now: .now()) === backends[1])
        backends[0].status.setActivelyUp(true)
        #expect(worker.nextBackend(of: tenant, excluding: backends[0], now: .now()) === backends[1])
    }

    @Test("round robin is the default; balance is read from the configuration and a wrong name is refused")
    func configuration() throws {
        let yaml = """
            tenants:
              - name: a
                domains: ["a.test"]
                backends: ["127.0.0.1:1"]
              - name: b
                domains: ["b.test"]
                backends: ["127.0.0.1:2"]
                balance: least_connections
            """
        let parsed = try ConfigurationLoader.parse(yaml: yaml, file: "t.yaml")
        #expect(parsed.tenants.map(\.balance) == [.roundRobin, .leastConnections])
        #expect {
            _ = try ConfigurationLoader.parse(
                yaml: yaml.replacingOccurrences(of: "least_connections", with: "random"),
                file: "t.yaml"
            )
        } throws: { error in
            "\(error)".contains("tenants[1].balance: 'random' is not a balancing algorithm")
        }
    }

    @Test("weights 5, 1, 1 give a a b a c a a: smooth, never five in a row")
    func smoothWeightedRoundRobin() throws {
        let backends = try backends(3)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends, weights: [5, 1, 1])
        let worker = try worker(tenant)
        let names = (0..<14).map { _ -> String in
            guard let picked = worker.nextBackend(of: tenant, excluding: nil, now: .now()),
                let index = backends.firstIndex(where: { $0 === picked })
            else { return "-" }
            return ["a", "b", "c"][index]
        }
        #expect(names.joined() == "aabacaa" + "aabacaa")
    }

    @Test("a weighted backend that is down is skipped; the others share its turns")
    func weightedSkipsUnavailable() throws {
        let backends = try backends(2)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends, weights: [3, 1])
        let worker = try worker(tenant)
        backends[0].status.setActivelyUp(false)
        for _ in 0..<4 {
            #expect(worker.nextBackend(of: tenant, excluding: nil, now: .now()) === backends[1])
        }
    }

    @Test("weights are read as nginx writes them; a bad weight is refused")
    func weightConfiguration() throws {
        let yaml = """
            tenants:
              - name: a
                domains: ["a.test"]
                backends: ["127.0.0.1:1 weight=3", "127.0.0.1:2"]
            """
        let parsed = try ConfigurationLoader.parse(yaml: yaml, file: "t.yaml")
        let table = try RouteTable(configuration: parsed)
        #expect(table.tenants.first?.weights == [3, 1])
        #expect {
            _ = try ConfigurationLoader.parse(
                yaml: yaml.replacingOccurrences(of: "weight=3", with: "weight=0"),
                file: "t.yaml"
            )
        } throws: { error in
            "\(error)".contains("is not HOST:PORT [weight=N] [drain] (N from 1 to 1000")
        }
    }

    // MARK: - Sticky sessions: the backend a cookie names

    /// Ways a backend stops being available for new requests.
    enum Unavailability: String, CaseIterable, Sendable {
        case down, draining, ejected

        func apply(to status: BackendStatus) {
            switch self {
            case .down:
                status.setActivelyUp(false)
            case .draining:
                status.isDrainedByOperator = true
            case .ejected:
                let now = NIODeadline.now()
                for _ in 0..<BackendStatus.PassiveEjection.threshold { _ = status.recordFailure(now: now) }
            }
        }

        func lift(from status: BackendStatus) {
            switch self {
            case .down, .ejected:
                // An `up` verdict of the active checks also ends an ejection.
                status.setActivelyUp(true)
            case .draining:
                status.isDrainedByOperator = false
            }
        }
    }

    /// The index of the backend `worker` picks for a request to `tenant`; `nil` when it picks none.
    private func pick(
        _ worker: Worker,
        _ tenant: Tenant,
        preferring preferred: Backend? = nil,
        excluding excluded: Backend? = nil
    ) -> Int? {
        let picked = worker.nextBackend(of: tenant, preferring: preferred, excluding: excluded, now: .now())
        return tenant.backends.firstIndex { $0 === picked }
    }

    @Test("an available preferred backend is picked every time, and round robin does not move meanwhile")
    func preferredIsPicked() throws {
        let backends = try backends(3)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends)
        let worker = try worker(tenant)
        #expect(pick(worker, tenant) == 0)
        #expect((0..<10).map { _ in pick(worker, tenant, preferring: backends[2]) } == Array(repeating: 2, count: 10))
        // Clients without a cookie carry on from where they were.
        #expect((0..<3).map { _ in pick(worker, tenant) } == [1, 2, 0])
    }

    @Test(
        "an unavailable preferred backend is passed over: the others take turns, until it is back",
        arguments: Unavailability.allCases
    )
    func unavailablePreferred(_ unavailability: Unavailability) throws {
        let backends = try backends(3)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends)
        let worker = try worker(tenant)
        unavailability.apply(to: backends[1].status)
        #expect((0..<4).map { _ in pick(worker, tenant, preferring: backends[1]) } == [0, 2, 0, 2])
        unavailability.lift(from: backends[1].status)
        #expect((0..<3).map { _ in pick(worker, tenant, preferring: backends[1]) } == [1, 1, 1])
    }

    @Test("an excluded preferred backend (whose connect just failed) is passed over unless it is the only one left")
    func excludedPreferred() throws {
        let backends = try backends(3)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends)
        let worker = try worker(tenant)
        let retries = (0..<4).map { _ in pick(worker, tenant, preferring: backends[0], excluding: backends[0]) }
        #expect(retries == [1, 2, 1, 2])
        // Excluding another backend does not affect the preference.
        #expect(pick(worker, tenant, preferring: backends[0], excluding: backends[1]) == 0)
        // The others are down: the excluded one is all there is, as without a cookie.
        backends[1].status.setActivelyUp(false)
        backends[2].status.setActivelyUp(false)
        #expect(pick(worker, tenant, preferring: backends[0], excluding: backends[0]) == 0)
        // Nothing available at all.
        backends[0].status.isDrainedByOperator = true
        #expect(pick(worker, tenant, preferring: backends[0]) == nil)
    }

    @Test("with weights, the preferred backend is picked whatever its weight; when it is down the rest share by weight")
    func weightedPreferred() throws {
        let backends = try backends(3)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends, weights: [5, 1, 1])
        let worker = try worker(tenant)
        #expect((0..<7).map { _ in pick(worker, tenant, preferring: backends[2]) } == Array(repeating: 2, count: 7))
        backends[2].status.setActivelyUp(false)
        var counts = [0, 0, 0]
        for _ in 0..<12 {
            if let index = pick(worker, tenant, preferring: backends[2]) { counts[index] += 1 }
        }
        #expect(counts == [10, 2, 0])
        // The heavy one preferred but excluded: the light one that is up takes the request.
        #expect(pick(worker, tenant, preferring: backends[0], excluding: backends[0]) == 1)
    }

    @Test("with least connections, the preferred backend is picked even when it is the busiest")
    func leastConnectionsPreferred() throws {
        let backends = try backends(2)
        let tenant = Tenant(name: "t", domains: ["t.test"], backends: backends, balance: .leastConnections)
        let worker = try worker(tenant)
        for _ in 0..<3 { backends[0].status.connectionOpened() }
        #expect(pick(worker, tenant) == 1)
        #expect(pick(worker, tenant, preferring: backends[0]) == 0)
        backends[0].status.isDrainedByOperator = true
        #expect(pick(worker, tenant, preferring: backends[0]) == 1)
    }
}
