import Foundation
import Testing

/// The `switchyard` executable as an operator runs it.
@Suite("Command line", .serialized)
struct CommandLineIntegrationTests {
    @Test("check-config accepts the default configuration")
    func checkDefaultConfig() throws {
        let output = try ExternalProcess.run(
            ExternalProcess.switchyardBinary,
            ["check-config", ExternalProcess.packageRoot + "/Config/switchyard.yaml"]
        )
        #expect(output.status == 0)
        #expect(output.stdout.contains("OK"))
    }

    @Test("check-config refuses a bad file naming the file, line, key and reason")
    func checkBadConfig() throws {
        let path = NSTemporaryDirectory() + "bad-\(UUID().uuidString).yaml"
        try
            "listen:\n  http: [\"127.0.0.1:8080\"]\ntenants:\n  - name: shop\n    domains: [\"shop.test\"]\n    backends: [\"nowhere\"]\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let output = try ExternalProcess.run(ExternalProcess.switchyardBinary, ["check-config", path])
        #expect(output.status != 0)
        #expect(output.stdout.contains("\(path):6: tenants[0].backends[0]"))
    }

    @Test("serve stops gracefully on SIGTERM")
    func gracefulStop() throws {
        let port = try ExternalProcess.freePort()
        let path = NSTemporaryDirectory() + "serve-\(UUID().uuidString).yaml"
        try "listen:\n  http: [\"127.0.0.1:\(port)\"]\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = try SwitchyardProcess(arguments: ["serve", "--config", path])
        #expect(process.waitUntilListening(port: port), "\(process.log)")
        let status = process.stop()
        #expect(status == 0)
    }
}
