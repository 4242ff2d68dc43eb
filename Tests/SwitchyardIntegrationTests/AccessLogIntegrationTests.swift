import Foundation
import Testing

/// The access log end to end: the real binary writing JSON lines to a file, read back and parsed, each with the
/// request id its backend saw; the file reopened on SIGUSR1 as logrotate expects.
///
/// Serialized: its tests wait on child processes (see ``ControlPlaneIntegrationTests``).
@Suite("Access log", .serialized)
struct AccessLogIntegrationTests {
    /// The JSON objects of the file's lines; fails on a line that is not one.
    static func lines(_ path: String) throws -> [[String: Any]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { line in
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw Failure(description: "not a JSON object: \(line)")
            }
            return object
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Waits (off the concurrency pool) until the file has `count` lines; the log is handed over within a second.
    static func waitForLines(_ path: String, count: Int) async throws -> [[String: Any]] {
        try await offThePool {
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                if text.split(separator: "\n").count >= count { return }
                usleep(100_000)
            }
        }
        return try lines(path)
    }

    @Test("JSON lines carry the request id the backend saw, the client's when sane; SIGUSR1 reopens the file")
    func jsonLinesAndReopen() async throws {
        let backend = try await TestBackend.start(name: "shop")
        let port = try ExternalProcess.freePort()
        let directory = NSTemporaryDirectory() + "switchyard-log-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/access.log"
        let balancer = try ServedBalancer(
            """
            listen:
              http: ["127.0.0.1:\(port)"]
            workers: 2
            access_log: { format: json, path: \(path) }
            tenants:
              - name: shop
                domains: [shop.test]
                backends: ["127.0.0.1:\(backend.port)"]
            """,
            port: port
        )
        defer { balancer.stop() }

        let clientID = "5f0c6e2a-8d3b-4c1e-9b7a-2e4d6f8a0b1c"
        for headers in [["X-Request-ID: \(clientID)"], [], ["X-Request-ID: bad id"]] {
            let code = try ExternalProcess.curl(
                ["-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: shop.test"] + headers.flatMap { ["-H", $0] }
                    + [balancer.url + "/cart?x=1"]
            )
            #expect(code.stdout == "200")
        }
        _ = try ExternalProcess.curl(["-o", "/dev/null", "-H", "Host: nobody.test", balancer.url + "/"])
        let lines = try await Self.waitForLines(path, count: 4)
        #expect(lines.count == 4)
        let seen = backend.requests.map { $0.head.headers["X-Request-ID"] }
        #expect(seen.allSatisfy { $0.count == 1 }, "\(seen)")
        // Each worker hands over its own lines, so the file is in order per worker, not overall.
        let answered = lines.filter { $0["status"] as? Int == 200 }
        let logged = Set(answered.map { $0["request_id"] as? String ?? "" })
        #expect(logged == Set(seen.map { $0.first ?? "" }))
        #expect(logged.contains(clientID))
        #expect(logged.filter { $0 != clientID }.allSatisfy { $0.count == 32 })
        #expect(logged.count == 3)
        let first = try #require(answered.first { $0["request_id"] as? String == clientID })
        #expect(first["tenant"] as? String == "shop")
        #expect(first["host"] as? String == "shop.test")
        #expect(first["backend"] as? String == "127.0.0.1:\(backend.port)")
        #expect(first["method"] as? String == "GET")
        #expect(first["target"] as? String == "/cart?x=1")
        #expect((first["bytes_sent"] as? Int ?? 0) > 0)
        #expect((first["bytes_received"] as? Int ?? 0) > 0)
        #expect(first["upstream_connect_ms"] is Double)
        #expect(first["upstream_header_ms"] is Double)
        #expect(first["duration_ms"] is Double)
        let unknown = try #require(lines.first { $0["status"] as? Int == 404 })
        #expect(unknown["tenant"] is NSNull)
        #expect(unknown["upstream_connect_ms"] is NSNull)
        #expect((unknown["request_id"] as? String)?.count == 32)

        // logrotate: move the file, signal, and the next lines go to a new file at the path.
        let rotated = path + ".1"
        try FileManager.default.moveItem(atPath: path, toPath: rotated)
        kill(balancer.process.pid, SIGUSR1)
        try await offThePool {
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline, !FileManager.default.fileExists(atPath: path) { usleep(50_000) }
        }
        #expect(FileManager.default.fileExists(atPath: path), "no new file after SIGUSR1")
        _ = try ExternalProcess.curl(["-o", "/dev/null", "-H", "Host: shop.test", balancer.url + "/after"])
        let after = try await Self.waitForLines(path, count: 1)
        #expect(after.count == 1)
        #expect(after.first?["target"] as? String == "/after")
        #expect(try Self.lines(rotated).count == 4)
        #expect(balancer.process.log.contains("access log reopened"))
        await backend.stop()
    }
}
