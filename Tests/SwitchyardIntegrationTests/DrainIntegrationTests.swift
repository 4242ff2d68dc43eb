import Foundation
import NIOCore
import SwitchyardTestSupport
import Testing

/// `switchyard backends drain|undrain` against a running balancer: a draining backend receives nothing new, what
/// it was serving finishes, and `--wait` returns once it is idle.
@Suite("Backend drain over the admin socket", .serialized)
struct DrainIntegrationTests {
    @Test("a drained backend gets no new requests while its slow request finishes; undrain brings it back")
    func drainAndUndrain() async throws {
        // The slow request is answered when the test says so, not after a delay: a loaded CI run once took over
        // 10 s to start the drain and status commands, and the request had finished by then.
        let gate = TestBackend.ResponseGate()
        defer { gate.open() }
        let first = try await TestBackend.start(name: "first") { head in
            head.uri == "/slow" ? .gated(gate, body: "slow-first") : .name
        }
        let second = try await TestBackend.start(name: "second")
        let port = try ExternalProcess.freePort()
        // One worker: its round robin starts at the first backend, so the slow request lands there.
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            workers: 1
            tenants:
              - name: shop
                domains: ["shop.test"]
                backends: ["127.0.0.1:\(first.port)", "127.0.0.1:\(second.port)"]
            """,
            port: port
        )
        defer { balancer.stop() }
        let url = balancer.url
        let admin = balancer.admin

        let slow = try BackgroundCurl(["-H", "Host: shop.test", url + "/slow"])
        for _ in 0..<100 where !first.requests.contains(where: { $0.head.uri == "/slow" }) {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(first.requests.contains { $0.head.uri == "/slow" })

        let drain = try admin(["backends", "drain", "shop", "127.0.0.1:\(first.port)"])
        #expect(drain.status == 0, "\(drain.stderr)")
        #expect(drain.stdout.contains("draining 127.0.0.1:\(first.port) of shop: 1 in progress"), "\(drain.stdout)")

        let status = try admin(["status"])
        #expect(status.stdout.contains("127.0.0.1:\(first.port)  draining (admin)  connections 1"), "\(status.stdout)")

        let before = first.requests.count
        for _ in 0..<20 {
            let answer = try ExternalProcess.curl(["-H", "Host: shop.test", url + "/"])
            #expect(answer.stdout == "second")
        }
        #expect(first.requests.count == before, "the draining backend received new requests")

        // --wait waits while the slow request is in progress, and returns once it is done; that request was served
        // in full.
        let waiting = try ChildProcess(
            ExternalProcess.switchyardBinary,
            [
                "backends", "drain", "shop", "127.0.0.1:\(first.port)", "--wait", "--timeout", "30s",
                "--admin", balancer.process.adminPath,
            ]
        )
        try await Task.sleep(for: .seconds(1))
        #expect(waiting.isRunning, "drain --wait returned while a request was in progress")
        gate.open()
        let wait = waiting.finish(timeout: 40)
        #expect(wait.status == 0, "\(wait.stderr)")
        #expect(wait.stdout.contains("drained: nothing in progress on 127.0.0.1:\(first.port)"), "\(wait.stdout)")
        let slowAnswer = slow.wait()
        #expect(slowAnswer.status == 0)
        #expect(slowAnswer.stdout == "slow-first")

        let undrain = try admin(["backends", "undrain", "shop", "127.0.0.1:\(first.port)"])
        #expect(undrain.status == 0, "\(undrain.stderr)")
        #expect(undrain.stdout.contains("127.0.0.1:\(first.port) of shop: in rotation"), "\(undrain.stdout)")
        var names: Set<String> = []
        for _ in 0..<4 {
            names.insert(try ExternalProcess.curl(["-H", "Host: shop.test", url + "/"]).stdout)
        }
        #expect(names == ["first", "second"])
        #expect(
            balancer.process.log.contains("admin: drain backend 127.0.0.1:\(first.port) of shop by uid \(getuid())")
        )
        #expect(
            balancer.process.log.contains("admin: undrain backend 127.0.0.1:\(first.port) of shop by uid \(getuid())")
        )
        await first.stop()
        await second.stop()
    }

    @Test(
        "a backend marked drain in the file gets nothing; undrain is refused; a reload without the mark brings it back"
    )
    func drainInConfiguration() async throws {
        let first = try await TestBackend.start(name: "first")
        let second = try await TestBackend.start(name: "second")
        let port = try ExternalProcess.freePort()
        func configuration(drain: Bool) -> String {
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            tenants:
              - name: shop
                domains: ["shop.test"]
                backends: ["127.0.0.1:\(first.port)\(drain ? " drain" : "")", "127.0.0.1:\(second.port)"]
            """
        }
        let balancer = try ServedBalancer(configuration(drain: true), port: port)
        defer { balancer.stop() }
        let url = balancer.url + "/"
        let admin = balancer.admin

        for _ in 0..<10 {
            #expect(try ExternalProcess.curl(["-H", "Host: shop.test", url]).stdout == "second")
        }
        #expect(first.requests.isEmpty)
        let undrain = try admin(["backends", "undrain", "shop", "127.0.0.1:\(first.port)"])
        #expect(undrain.status == 1)
        #expect(undrain.stderr.contains("is marked drain in the configuration file"), "\(undrain.stderr)")
        let json = try admin(["status", "--json"])
        #expect(json.stdout.contains("\"configuration\""), "\(json.stdout)")

        try balancer.rewrite(configuration(drain: false))
        kill(balancer.process.pid, SIGHUP)
        var names: Set<String> = []
        for _ in 0..<50 where names.count < 2 {
            names.insert(try ExternalProcess.curl(["-H", "Host: shop.test", url]).stdout)
            if names.count < 2 { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(names == ["first", "second"])
        await first.stop()
        await second.stop()
    }

    @Test("drain names what is wrong: an unknown tenant or backend, a bad --timeout; nothing changes")
    func drainErrors() async throws {
        let backend = try await TestBackend.start()
        let port = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            tenants:
              - name: shop
                domains: ["shop.test"]
                backends: ["127.0.0.1:\(backend.port)"]
            """,
            port: port
        )
        defer { balancer.stop() }
        let admin = balancer.admin

        let tenant = try admin(["backends", "drain", "nope", "127.0.0.1:1"])
        #expect(tenant.status == 1)
        #expect(tenant.stderr.contains("no tenant 'nope'"), "\(tenant.stderr)")
        let unknown = try admin(["backends", "drain", "shop", "127.0.0.1:1"])
        #expect(unknown.status == 1)
        #expect(
            unknown.stderr.contains(
                "tenant 'shop' has no backend 127.0.0.1:1; its backends: 127.0.0.1:\(backend.port)"
            ),
            "\(unknown.stderr)"
        )
        let timeout = try admin([
            "backends", "drain", "shop", "127.0.0.1:\(backend.port)", "--wait", "--timeout", "soon",
        ])
        #expect(timeout.status != 0)
        #expect(timeout.stderr.contains("--timeout 'soon' is not a duration"), "\(timeout.stderr)")
        let alone = try admin(["backends", "drain", "shop", "127.0.0.1:\(backend.port)", "--timeout", "5s"])
        #expect(alone.status != 0)
        #expect(alone.stderr.contains("--timeout only applies with --wait"), "\(alone.stderr)")
        let status = try admin(["status"])
        #expect(status.stdout.contains("127.0.0.1:\(backend.port)  up"), "\(status.stdout)")
        #expect(try ExternalProcess.curl(["-H", "Host: shop.test", "http://127.0.0.1:\(port)/"]).stdout == "backend")
        await backend.stop()
    }
}

/// curl running in the background while a test goes on.
private final class BackgroundCurl {
    private let process: ChildProcess

    init(_ arguments: [String]) throws {
        process = try ChildProcess("/usr/bin/curl", ["-s", "--max-time", "30"] + arguments)
    }

    /// Waits for curl to exit (its output is small: it fits the pipe, so curl never blocks on it).
    func wait() -> ExternalProcess.Output {
        process.finish(timeout: 40)
    }
}
