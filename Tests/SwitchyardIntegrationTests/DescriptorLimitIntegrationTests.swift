import Foundation
import Testing

/// The built `switchyard` binary under a low open-file limit (`prlimit`): out of descriptors it pauses accepting
/// instead of spinning on `EMFILE`, says so once, does not blame healthy backends, and recovers by itself.
@Suite("Descriptor limit", .serialized)
struct DescriptorLimitIntegrationTests {
    @Test(
        "out of descriptors: no busy loop, one warning, health checks not counted, served again once connections close"
    )
    func acceptBackoff() async throws {
        let backend = try await TestBackend.start(name: "alive")
        let port = try ExternalProcess.freePort()
        let path = NSTemporaryDirectory() + "fd-limit-\(UUID().uuidString).yaml"
        try """
        listen:
          http: ["127.0.0.1:\(port)"]
        workers: 2
        access_log: false
        tenants:
          - name: shop
            domains: ["shop.test"]
            backends: ["127.0.0.1:\(backend.port)"]
            health: { interval: 100ms, timeout: 50ms, rise: 1, fall: 1 }
        """.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path], descriptorLimit: "128:128")
        defer { process.stop() }
        #expect(process.waitUntilListening(port: port), "\(process.log)")
        #expect(process.log.contains("the descriptor limit (128, RLIMIT_NOFILE) is below what the configuration"))

        // More idle connections than descriptors: the kernel completes them all into the backlog (4096).
        var clients: [Int32] = []
        defer {
            for client in clients { close(client) }
        }
        for _ in 0..<200 {
            clients.append(try RawClient.connectedSocket(port: port))
        }
        try await Task.sleep(for: .milliseconds(300))
        let cpuBefore = process.cpuSeconds()
        let start = Date()
        try await Task.sleep(for: .milliseconds(1500))
        let cpu = process.cpuSeconds() - cpuBefore
        let elapsed = Date().timeIntervalSince(start)
        // Spinning on EMFILE is a core per listener (close to 2 s of CPU here); paused, it is next to nothing.
        #expect(cpu < 0.25 * elapsed, "\(cpu) s of CPU in \(elapsed) s")
        let log = process.log
        #expect(log.components(separatedBy: "cannot accept connections: ").count - 1 == 1, "\(log)")
        #expect(log.contains("Too many open files"))
        #expect(log.contains("health checks cannot run"), "\(log)")
        #expect(!log.contains("up → down"), "\(log)")

        for client in clients { close(client) }
        clients = []
        let url = "http://127.0.0.1:\(port)/"
        let response = try ExternalProcess.curl(["-H", "Host: shop.test", url], timeout: 20)
        #expect(response.stdout == "alive", "\(process.log)")
        // The end is logged on an accept a second after the last pause.
        try await Task.sleep(for: .milliseconds(1100))
        #expect(try ExternalProcess.curl(["-H", "Host: shop.test", url], timeout: 20).stdout == "alive")
        #expect(process.log.contains("accepting connections again"), "\(process.log)")
        await backend.stop()
    }

    @Test("at start the soft limit is raised to the hard one")
    func raisesSoftLimit() throws {
        let port = try ExternalProcess.freePort()
        let path = NSTemporaryDirectory() + "fd-raise-\(UUID().uuidString).yaml"
        try "listen:\n  http: [\"127.0.0.1:\(port)\"]\nlimits:\n  max_connections: 100\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path], descriptorLimit: "256:4096")
        defer { process.stop() }
        #expect(process.waitUntilListening(port: port), "\(process.log)")
        let limits = (try? String(contentsOfFile: "/proc/\(process.pid)/limits", encoding: .utf8)) ?? ""
        let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
        #expect(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).prefix(2) == ["4096", "4096"])
        #expect(process.log.contains("raised the descriptor limit from 256 to 4096"))
        // 100 connections and their backend connections fit in 4096: no warning.
        #expect(!process.log.contains("descriptor limit (4096"), "\(process.log)")
    }
}
