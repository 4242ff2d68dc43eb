import Foundation
import NIOConcurrencyHelpers
import Testing

/// `switchyard top` in a real terminal: tmux runs it against the real binary while curl sends traffic to one
/// tenant; the pane is read with `capture-pane` and driven with `send-keys`.
///
/// Serialized: its tests wait on child processes (see ``ControlPlaneIntegrationTests``).
@Suite("switchyard top", .serialized)
struct TopIntegrationTests {
    static func tmux(_ arguments: [String]) throws -> ExternalProcess.Output {
        try ExternalProcess.run("/usr/bin/env", ["tmux"] + arguments, timeout: 10)
    }

    @Test("the tenant that gets traffic is at the top; s changes the sort; q quits; --once and --json print one view")
    func liveView() async throws {
        let backend = try await TestBackend.start(name: "busy")
        let port = try ExternalProcess.freePort()
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            workers: 2
            access_log: false
            tenants:
              - name: aaa-quiet
                domains: [quiet.test]
                backends: ["127.0.0.1:\(backend.port)"]
              - name: busy
                domains: [busy.test]
                backends: ["127.0.0.1:\(backend.port)"]
              - name: zzz-idle
                domains: [idle.test]
                backends: ["127.0.0.1:\(backend.port)"]
            """,
            port: port
        )
        defer { balancer.stop() }
        let url = balancer.url
        // Traffic for `busy` for as long as the test looks (bounded: 40 s, 8,000 requests).
        let stop = NIOLockedValueBox(false)
        let traffic = Thread {
            let deadline = Date().addingTimeInterval(40)
            var sent = 0
            while Date() < deadline, sent < 8_000, !stop.withLockedValue({ $0 }) {
                _ = try? ExternalProcess.curl(["-o", "/dev/null", "-H", "Host: busy.test", url + "/", url + "/"])
                sent += 2
            }
        }
        traffic.start()

        let session = "switchyard-top-\(UUID().uuidString.prefix(8))"
        let command = "\(ExternalProcess.switchyardBinary) top --admin \(balancer.process.adminPath)"
        let started = try Self.tmux(["new-session", "-d", "-s", session, "-x", "160", "-y", "30", command])
        #expect(started.status == 0, "\(started.stderr)")
        defer { _ = try? Self.tmux(["kill-session", "-t", session]) }

        let pane = try await offThePool { () -> String in
            let deadline = Date().addingTimeInterval(10)
            var text = ""
            while Date() < deadline {
                text = (try? Self.tmux(["capture-pane", "-p", "-t", session]).stdout) ?? ""
                let rows = text.split(separator: "\n").filter {
                    !$0.hasPrefix("switchyard top") && !$0.hasPrefix("TENANT")
                }
                if let first = rows.first, first.hasPrefix("busy"),
                    let rate = first.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first,
                    (Double(rate) ?? 0) > 0
                {
                    return text
                }
                usleep(200_000)
            }
            return text
        }
        let rows = pane.split(separator: "\n")
        #expect(rows.first?.hasPrefix("switchyard top") == true, "\(pane)")
        #expect(rows.dropFirst().first?.hasPrefix("TENANT") == true, "\(pane)")
        #expect(rows.dropFirst(2).first?.hasPrefix("busy") == true, "the busy tenant is not on top:\n\(pane)")
        #expect(pane.contains("sorted by requests"))

        _ = try Self.tmux(["send-keys", "-t", session, "s"])
        let sorted = try await offThePool { () -> String in
            let deadline = Date().addingTimeInterval(5)
            var text = ""
            while Date() < deadline {
                text = (try? Self.tmux(["capture-pane", "-p", "-t", session]).stdout) ?? ""
                if text.contains("sorted by errors") { break }
                usleep(100_000)
            }
            return text
        }
        #expect(sorted.contains("sorted by errors"), "\(sorted)")

        _ = try Self.tmux(["send-keys", "-t", session, "q"])
        let quit = try await offThePool { () -> Bool in
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline {
                if (try? Self.tmux(["has-session", "-t", session]).status) != 0 { return true }
                usleep(100_000)
            }
            return false
        }
        #expect(quit, "top did not quit on q")

        let admin = balancer.process.adminPath
        let once = try await offThePool {
            try ExternalProcess.run(ExternalProcess.switchyardBinary, ["top", "--once", "--admin", admin])
        }
        #expect(once.status == 0, "\(once.stderr)")
        #expect(once.stdout.split(separator: "\n").dropFirst(2).first?.hasPrefix("busy") == true, "\(once.stdout)")
        let json = try await offThePool {
            try ExternalProcess.run(ExternalProcess.switchyardBinary, ["top", "--json", "--admin", admin])
        }
        let views = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
        #expect(views?.count == 3)
        #expect(views?.first?["tenant"] as? String == "busy")
        #expect((views?.first?["requestsPerSecond"] as? Double ?? 0) > 0)
        stop.withLockedValue { $0 = true }
        while traffic.isExecuting { try await Task.sleep(for: .milliseconds(100)) }
        await backend.stop()
    }
}
