import Foundation
import NIOCore
import Testing

@testable import Switchyard

/// The demo environment's chat, through the balancer: the page over http and https, and two WebSocket clients that
/// see each other's messages over ws and over wss.
@Suite("Demo chat through the balancer", .serialized)
struct DemoChatIntegrationTests {
    private static let script = """
        import asyncio, json, socket, ssl, sys
        import websockets

        async def main():
            scheme, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
            url = f"{scheme}://{host}:{port}/ws/"
            extra = {}
            if scheme == "wss":
                context = ssl.create_default_context(cafile=sys.argv[4])
                extra = {"ssl": context, "server_hostname": host}
            def connect():
                return websockets.connect(url, sock=socket.create_connection(("127.0.0.1", port), timeout=5), **extra)
            async with connect() as alice, connect() as bob:
                await alice.send("hello from alice")
                to_bob = await asyncio.wait_for(bob.recv(), 5)
                to_alice = await asyncio.wait_for(alice.recv(), 5)
                await bob.send("hi alice")
                back = await asyncio.wait_for(alice.recv(), 5)
            print(json.dumps({"bob": to_bob, "alice": to_alice, "back": back}))

        asyncio.run(asyncio.wait_for(main(), 20))
        """

    @Test("two clients see each other's messages over ws and wss", arguments: WebSocketScheme.allCases)
    func chat(scheme: WebSocketScheme) async throws {
        let demo = try await DemoBackend.start(on: try SocketAddress(ipAddress: "127.0.0.1", port: 0))
        guard let address = demo.address else {
            await demo.stop()
            Issue.record("the demo backend has no address")
            return
        }
        let proxy = try await WebSocketProxy.start(backends: [address])
        defer {
            Task {
                await proxy.stop()
                await demo.stop()
            }
        }
        let path = NSTemporaryDirectory() + "demo-chat-\(UUID().uuidString).py"
        try Self.script.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let output = try ExternalProcess.run(
            "/usr/bin/env",
            [
                "python3", path, scheme.rawValue, String(proxy.port(scheme)), WebSocketProxy.domain,
                ExternalProcess.packageRoot + "/Certs/dev-ca.pem",
            ],
            timeout: 30
        )
        #expect(output.status == 0, "\(output.stderr)")
        let line = try #require(output.stdout.split(separator: "\n").last)
        let result = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(result == ["bob": "hello from alice", "alice": "hello from alice", "back": "hi alice"])

        let page = try ExternalProcess.curl([
            "--cacert", ExternalProcess.packageRoot + "/Certs/dev-ca.pem",
            "--resolve", "\(WebSocketProxy.domain):\(proxy.port(.wss)):127.0.0.1",
            "https://\(WebSocketProxy.domain):\(proxy.port(.wss))/",
        ])
        #expect(page.stdout.contains("Switchyard demo chat"))
        #expect(page.stdout.contains("X-Forwarded-Proto: https"))
    }
}
