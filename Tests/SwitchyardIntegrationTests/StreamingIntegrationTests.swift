import Foundation
import NIOCore
import Testing

@testable import Switchyard

/// Bodies streamed through the real `switchyard` binary: large, chunked, with `Expect: 100-continue`, and the
/// balancer's memory staying flat while 100 MiB pass each way.
@Suite("Streaming bodies through the switchyard binary", .serialized)
struct StreamingIntegrationTests {
    /// Writes a configuration routing `shop.test` to `backend` and starts the binary on a free port.
    private func startBalancer(backend: TestBackend) throws -> (SwitchyardProcess, Int, String) {
        let port = try ExternalProcess.freePort()
        let directory = NSTemporaryDirectory() + "switchyard-stream-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let config = directory + "/switchyard.yaml"
        try """
        listen:
          http: ["127.0.0.1:\(port)"]
        workers: 2
        access_log: false
        tenants:
          - name: shop
            domains: ["shop.test"]
            backends: ["127.0.0.1:\(backend.port)"]
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let process = try SwitchyardProcess(arguments: ["serve", "--config", config])
        return (process, port, directory)
    }

    @Test("100 MiB up and 100 MiB down stream through with the balancer's memory not growing with them")
    func largeBodies() async throws {
        let size = 100 * 1024 * 1024
        let backend = try await TestBackend.start { head in
            head.uri == "/download" ? .stream(bytes: size, chunked: false) : .countBody
        }
        let (balancer, port, directory) = try startBalancer(backend: backend)
        defer {
            balancer.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        #expect(balancer.waitUntilListening(port: port), "\(balancer.log)")
        // Warm up so the baseline includes the pools and buffers any request needs.
        _ = try ExternalProcess.curl(["-H", "Host: shop.test", "http://127.0.0.1:\(port)/"])
        let baseline = balancer.memory().rss

        let upload = directory + "/upload.bin"
        _ = FileManager.default.createFile(atPath: upload, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: upload))
        try handle.truncate(atOffset: UInt64(size))
        try handle.close()
        let up = try ExternalProcess.curl([
            "-H", "Host: shop.test", "--data-binary", "@\(upload)", "http://127.0.0.1:\(port)/upload",
        ])
        #expect(up.stdout == String(size))

        let down = try ExternalProcess.curl([
            "-H", "Host: shop.test", "-o", "/dev/null", "-w", "%{size_download}", "http://127.0.0.1:\(port)/download",
        ])
        #expect(down.stdout == String(size))

        let peak = balancer.memory().peak
        // 200 MiB went through; the balancer may grow by buffers, not by bodies.
        #expect(peak - baseline < 48 * 1024, "baseline \(baseline) KiB, peak \(peak) KiB")
        await backend.stop()
    }

    @Test("chunked bodies stream both ways, and Expect: 100-continue works")
    func chunkedBothWays() async throws {
        let backend = try await TestBackend.start { head in
            head.uri == "/chunked" ? .stream(bytes: 3 * 1024 * 1024 + 7, chunked: true) : .countBody
        }
        let (balancer, port, directory) = try startBalancer(backend: backend)
        defer {
            balancer.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
        #expect(balancer.waitUntilListening(port: port), "\(balancer.log)")
        let payload = directory + "/payload.bin"
        try Data(repeating: 0x61, count: 2 * 1024 * 1024 + 3).write(to: URL(fileURLWithPath: payload))
        let up = try ExternalProcess.curl([
            "-H", "Host: shop.test", "-H", "Transfer-Encoding: chunked", "--data-binary", "@\(payload)",
            "http://127.0.0.1:\(port)/upload",
        ])
        #expect(up.stdout == String(2 * 1024 * 1024 + 3))
        let expectContinue = try ExternalProcess.curl([
            "-H", "Host: shop.test", "-H", "Expect: 100-continue", "--data-binary", "@\(payload)",
            "http://127.0.0.1:\(port)/upload",
        ])
        #expect(expectContinue.stdout == String(2 * 1024 * 1024 + 3))
        let down = try ExternalProcess.curl([
            "-H", "Host: shop.test", "-o", "/dev/null", "-w", "%{size_download}", "http://127.0.0.1:\(port)/chunked",
        ])
        #expect(down.stdout == String(3 * 1024 * 1024 + 7))
        let requests = backend.requests
        #expect(requests.first?.head.headers["Transfer-Encoding"] == ["chunked"])
        await backend.stop()
    }
}
