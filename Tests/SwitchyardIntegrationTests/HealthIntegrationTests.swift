import NIOCore
import NIOHTTP1
import Testing

@testable import Switchyard

/// Health checks with short intervals, so that every wait is a few intervals at most.
private enum Fast {
    static let interval = TimeAmount.milliseconds(100)
    static let timeout = TimeAmount.milliseconds(100)
    static let rise = 2
    static let fall = 3
    static let health = HealthCheckConfiguration(
        path: "/healthz",
        interval: interval,
        timeout: timeout,
        rise: rise,
        fall: fall
    )
}

private func duration(_ amount: TimeAmount) -> Duration {
    .nanoseconds(amount.nanoseconds)
}

private func milliseconds(_ duration: Duration) -> Int {
    Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
}

/// Backend health end to end on loopback: the in-process balancer with its active health checker on its own event
/// loops, and real backends that stop, come back on the same port, hang, answer 500 or refuse connections. Intervals
/// are 100 ms and timeouts 100 ms, so each test waits a few intervals at most; the detection and recovery times are
/// measured from the log line of the transition and printed.
@Suite("Backend health over loopback", .serialized)
struct HealthIntegrationTests {
    @Test("a stopped backend is marked down within fall × interval + one timeout; then 50 requests all succeed")
    func stoppedBackendDetected() async throws {
        let live = try await RestartableBackend.start(name: "live")
        let dying = try await RestartableBackend.start(name: "dying")
        try await stopping([live.stop, dying.stop]) {
            try await withHealthProxy(backends: [live.address, dying.address], health: Fast.health) { proxy in
                // Both serve, and the dying one is being checked.
                var served: Set<String> = []
                for _ in 0..<4 { served.insert(try proxy.get().body) }
                #expect(served == ["live", "dying"])
                try #require(await HealthHarness.waitUntil(.seconds(10)) { dying.healthRequests >= 1 })

                let stopped = ContinuousClock.now
                await dying.stop()
                let backend = proxy.backends[1]
                try #require(await HealthHarness.waitUntil(.seconds(10)) { !backend.status.isActivelyUp })
                let line = try #require(proxy.logs.lines(containing: "of shop: up → down after 3 failures").first)
                let prefix = "backend 127.0.0.1:\(dying.port) of shop: up → down after 3 failures: "
                #expect(line.message.hasPrefix(prefix))
                #expect(line.message.lowercased().contains("refused"), "\(line.message)")
                let detection = line.at - stopped
                let bound = duration(Fast.interval) * Fast.fall + duration(Fast.timeout)
                print(
                    "[health] stopped backend detected in \(milliseconds(detection)) ms "
                        + "(bound \(milliseconds(bound)) ms)"
                )
                #expect(detection <= bound)

                let before = live.clientRequests
                var failures: [String] = []
                for index in 0..<50 {
                    let reply = try proxy.get("/\(index)")
                    if reply.status != 200 || reply.body != "live" { failures.append("\(index): \(reply.head)") }
                }
                #expect(failures.isEmpty, "\(failures)")
                #expect(live.clientRequests - before == 50)
                // None of them even tried the dead backend.
                #expect(proxy.logs.lines(containing: "connect failed").isEmpty)
            }
        }
    }

    @Test("a stopped backend restarted on the same port is used again within rise × interval (+ jitter)")
    func restartedBackendRecovers() async throws {
        let live = try await RestartableBackend.start(name: "live")
        let phoenix = try await RestartableBackend.start(name: "phoenix")
        try await stopping([live.stop, phoenix.stop]) {
            try await withHealthProxy(backends: [live.address, phoenix.address], health: Fast.health) { proxy in
                let backend = proxy.backends[1]
                let port = phoenix.port
                try #require(await HealthHarness.waitUntil(.seconds(10)) { phoenix.healthRequests >= 1 })
                await phoenix.stop()
                try #require(await HealthHarness.waitUntil(.seconds(10)) { !backend.status.isActivelyUp })

                let restarted = ContinuousClock.now
                try await phoenix.start()
                #expect(phoenix.port == port)
                // Requests keep coming meanwhile: every one succeeds, and once the backend is up again the next one
                // goes to it (the round-robin position was left on it), save one per worker racing the transition.
                var failures: [String] = []
                var elsewhereAfterUp = 0
                let deadline = restarted + .seconds(10)
                while phoenix.clientRequests == 0, ContinuousClock.now < deadline {
                    let sent = ContinuousClock.now
                    let reply = try proxy.get()
                    if reply.status != 200 { failures.append(reply.head) }
                    if let up = proxy.logs.lines(containing: "down → up").first, up.at < sent, reply.body == "live" {
                        elsewhereAfterUp += 1
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(failures.isEmpty, "\(failures)")
                let served = try #require(phoenix.clientRequestTimes.first)
                // One request may race the transition on each of the harness's two workers: each has its own
                // round-robin position (a loaded run once saw two).
                #expect(elsewhereAfterUp <= 2)
                #expect(backend.status.isActivelyUp)
                let line = try #require(proxy.logs.lines(containing: "down → up after 2 successes").first)
                #expect(line.message == "backend 127.0.0.1:\(port) of shop: down → up after 2 successes")
                let recovery = line.at - restarted
                let bound = duration(Fast.interval) * (1.1 * Double(Fast.rise)) + duration(Fast.timeout)
                print(
                    "[health] restarted backend up in \(milliseconds(recovery)) ms (bound \(milliseconds(bound)) ms), "
                        + "its first client request \(milliseconds(served - restarted)) ms after the restart"
                )
                #expect(recovery <= bound)
                #expect(served > line.at)
            }
        }
    }

    @Test("a backend that accepts the health check but never answers is marked down by timeouts")
    func hungBackendTimesOut() async throws {
        let live = try await RestartableBackend.start(name: "live")
        let hung = try await RestartableBackend.start(name: "hung")
        hung.healthAnswer = .hang
        try await stopping([live.stop, hung.stop]) {
            try await withHealthProxy(backends: [hung.address, live.address], health: Fast.health) { proxy in
                let backend = proxy.backends[0]
                try #require(await HealthHarness.waitUntil(.seconds(10)) { !backend.status.isActivelyUp })
                let line = try #require(proxy.logs.lines(containing: "up → down").first)
                #expect(
                    line.message
                        == "backend 127.0.0.1:\(hung.port) of shop: up → down after 3 failures: timed out after 100ms"
                )
                // From the first check: each failed check takes a timeout, and the next comes an interval (± 10 %)
                // later; `fall` × (timeout + interval) leaves room for the jitter.
                let checks = hung.healthRequestTimes
                try #require(checks.count >= Fast.fall)
                let detection = line.at - checks[0]
                let bound = (duration(Fast.timeout) + duration(Fast.interval)) * Fast.fall
                print(
                    "[health] hung backend marked down \(milliseconds(detection)) ms after its first check "
                        + "(bound \(milliseconds(bound)) ms)"
                )
                #expect(detection <= bound)
                for _ in 0..<10 {
                    let reply = try proxy.get()
                    #expect(reply.status == 200)
                    #expect(reply.body == "live")
                }
                #expect(hung.clientRequests == 0)
            }
        }
    }

    @Test("500 on the health path marks a backend down; 301 counts as up (200–399)")
    func statusRange() async throws {
        let sick = try await TestBackend.start(name: "sick") { head in
            head.uri == "/healthz" ? .respond(status: .internalServerError, body: "sick") : .name
        }
        let moved = try await TestBackend.start(name: "moved") { head in
            head.uri == "/healthz"
                ? .respond(status: .movedPermanently, body: "", headers: [("Location", "/healthz/")]) : .name
        }
        try await stopping([sick.stop, moved.stop]) {
            try await withHealthProxy(backends: [sick.address, moved.address], health: Fast.health) { proxy in
                try #require(await HealthHarness.waitUntil(.seconds(10)) { !proxy.backends[0].status.isActivelyUp })
                #expect(
                    proxy.logs.lines(containing: "up → down").map(\.message) == [
                        "backend 127.0.0.1:\(sick.port) of shop: up → down after 3 failures: status 500"
                    ]
                )
                // The 301 one has been checked more than `fall` times and is still up.
                let checkedEnough = await HealthHarness.waitUntil(.seconds(10)) {
                    moved.requests.count > Fast.fall
                }
                #expect(checkedEnough)
                #expect(proxy.backends[1].status.isActivelyUp)
                #expect(proxy.logs.lines(containing: "\(moved.port)").isEmpty)
                // What a check looks like.
                let check = try #require(moved.requests.first?.head)
                #expect(check.method == .GET)
                #expect(check.uri == "/healthz")
                #expect(check.headers["Host"] == [HealthHarness.host])
                #expect(check.headers["User-Agent"] == ["switchyard-health-check"])
                for _ in 0..<10 {
                    let reply = try proxy.get()
                    #expect(reply.status == 200)
                    #expect(reply.body == "moved")
                }
                #expect(sick.requests.allSatisfy { $0.head.uri == "/healthz" })
            }
        }
    }

    @Test("all backends down: 503 with Retry-After in under 100 ms, nothing forwarded")
    func allDown() async throws {
        let behavior: @Sendable (HTTPRequestHead) -> TestBackend.Behavior = { head in
            head.uri == "/healthz" ? .respond(status: .internalServerError, body: "sick") : .name
        }
        let first = try await TestBackend.start(name: "first", behavior: behavior)
        let second = try await TestBackend.start(name: "second", behavior: behavior)
        try await stopping([first.stop, second.stop]) {
            try await withHealthProxy(backends: [first.address, second.address], health: Fast.health) { proxy in
                let allDown = await HealthHarness.waitUntil(.seconds(10)) {
                    proxy.backends.allSatisfy { !$0.status.isActivelyUp }
                }
                try #require(allDown)
                var slowest = Duration.zero
                for _ in 0..<5 {
                    let started = ContinuousClock.now
                    let reply = try proxy.get()
                    let elapsed = ContinuousClock.now - started
                    slowest = max(slowest, elapsed)
                    #expect(reply.status == 503)
                    #expect(reply.head.contains("\r\nRetry-After: 5\r\n"))
                    #expect(elapsed < .milliseconds(100))
                }
                print("[health] 503 with every backend down answered in at most \(milliseconds(slowest)) ms")
                #expect(first.requests.allSatisfy { $0.head.uri == "/healthz" })
                #expect(second.requests.allSatisfy { $0.head.uri == "/healthz" })
            }
        }
    }

    @Test("a backend refusing connections is ejected after 3 failed requests; every request is retried and succeeds")
    func passiveEjection() async throws {
        let live = try await TestBackend.start(name: "live")
        let deadPort = try ExternalProcess.freePort()
        let dead = try SocketAddress(ipAddress: "127.0.0.1", port: deadPort)
        // Active checks too rare to notice anything during the test.
        let health = HealthCheckConfiguration(path: "/healthz", interval: .hours(1), timeout: Fast.timeout)
        try await stopping([live.stop]) {
            try await withHealthProxy(backends: [dead, live.address], health: health) { proxy in
                for index in 0..<20 {
                    let reply = try proxy.get("/\(index)")
                    #expect(reply.status == 200, "request \(index): \(reply.head)")
                    #expect(reply.body == "live")
                }
                let backend = proxy.backends[0]
                #expect(backend.status.isEjected(now: .now()))
                #expect(backend.status.isActivelyUp)
                // Only the first requests tried the dead backend (and were retried on the live one).
                let tries = proxy.logs.lines(containing: "127.0.0.1:\(deadPort) of shop: connect failed")
                #expect(tries.count == BackendStatus.PassiveEjection.threshold)
                #expect(
                    proxy.logs.lines(containing: "ejected").map(\.message) == [
                        "backend 127.0.0.1:\(deadPort) of shop: ejected for 10s after 3 failures in a row"
                    ]
                )
                #expect(live.requests.count == 20)
            }
        }
    }

    @Test("failed active checks that do not reach `fall` do not end a passive ejection")
    func failedCheckKeepsEjection() async throws {
        let live = try await TestBackend.start(name: "live")
        let deadPort = try ExternalProcess.freePort()
        let dead = try SocketAddress(ipAddress: "127.0.0.1", port: deadPort)
        // Checked every interval, but `fall` is far off: the active verdict stays `up` during the test.
        let health = HealthCheckConfiguration(
            path: "/healthz",
            interval: Fast.interval,
            timeout: Fast.timeout,
            rise: 2,
            fall: 50
        )
        try await stopping([live.stop]) {
            try await withHealthProxy(backends: [dead, live.address], health: health) { proxy in
                let backend = proxy.backends[0]
                for _ in 0..<3 {
                    #expect(try proxy.get().status == 200)
                }
                try #require(backend.status.isEjected(now: .now()))
                // A few failed checks of the dead backend happen meanwhile.
                try await Task.sleep(for: duration(Fast.interval) * 3.5)
                #expect(backend.status.isActivelyUp)
                #expect(backend.status.isEjected(now: .now()), "a failed active check ended the ejection")
                for _ in 0..<10 {
                    #expect(try proxy.get().status == 200)
                }
                let tries = proxy.logs.lines(containing: "127.0.0.1:\(deadPort) of shop: connect failed")
                #expect(tries.count == BackendStatus.PassiveEjection.threshold)
            }
        }
    }

    @Test(
        "failures not in a row do not eject: a response in between ends the streak, backend keep-alive or not",
        arguments: [true, false]
    )
    func interleavedFailuresDoNotEject(backendKeepAlive: Bool) async throws {
        let backend = try await TestBackend.start(name: "flaky") { head in
            if head.uri == "/slow" { return .delayed(.seconds(2), body: "late") }
            return .respond(status: .ok, body: "ok", headers: backendKeepAlive ? [] : [("Connection", "close")])
        }
        let health = HealthCheckConfiguration(path: "/healthz", interval: .hours(1), timeout: Fast.timeout)
        let timeouts = Configuration.Timeouts(
            upstreamConnect: .milliseconds(500),
            upstreamResponse: .milliseconds(150)
        )
        try await stopping([backend.stop]) {
            try await withHealthProxy(backends: [backend.address], health: health, timeouts: timeouts) { proxy in
                // Timeout, success, success, timeout, …: never three failures in a row.
                for round in 0..<3 {
                    #expect(try proxy.get("/slow").status == 504, "round \(round)")
                    for _ in 0..<2 {
                        let reply = try proxy.get("/")
                        #expect(reply.status == 200, "round \(round): \(reply.head)")
                    }
                }
                #expect(!proxy.backends[0].status.isEjected(now: .now()))
                #expect(proxy.logs.lines(containing: "ejected").isEmpty)
            }
        }
    }

    @Test("a plain TCP check (no path) marks a stopped backend down and the restarted one up again")
    func tcpCheck() async throws {
        let live = try await RestartableBackend.start(name: "live")
        let phoenix = try await RestartableBackend.start(name: "phoenix")
        var health = Fast.health
        health.path = nil
        try await stopping([live.stop, phoenix.stop]) {
            try await withHealthProxy(backends: [live.address, phoenix.address], health: health) { proxy in
                let backend = proxy.backends[1]
                // A TCP check connects and sends nothing.
                try #require(await HealthHarness.waitUntil(.seconds(10)) { phoenix.connections >= 1 })
                let stopped = ContinuousClock.now
                await phoenix.stop()
                try #require(await HealthHarness.waitUntil(.seconds(10)) { !backend.status.isActivelyUp })
                let down = try #require(proxy.logs.lines(containing: "up → down after 3 failures").first)
                #expect(down.at - stopped <= duration(Fast.interval) * Fast.fall + duration(Fast.timeout))
                let restarted = ContinuousClock.now
                try await phoenix.start()
                try #require(await HealthHarness.waitUntil(.seconds(10)) { backend.status.isActivelyUp })
                let up = try #require(proxy.logs.lines(containing: "down → up after 2 successes").first)
                #expect(
                    up.at - restarted <= duration(Fast.interval) * (1.1 * Double(Fast.rise)) + duration(Fast.timeout)
                )
                print(
                    "[health] TCP check: down in \(milliseconds(down.at - stopped)) ms, up again in "
                        + "\(milliseconds(up.at - restarted)) ms"
                )
                #expect(phoenix.healthRequests == 0)
                var served: Set<String> = []
                for _ in 0..<4 { served.insert(try proxy.get().body) }
                #expect(served == ["live", "phoenix"])
            }
        }
    }
}
