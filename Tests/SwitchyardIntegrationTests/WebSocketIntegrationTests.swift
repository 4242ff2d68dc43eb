import Foundation
import NIOCore
import Testing

@testable import Switchyard

/// WebSockets through the balancer, over ws and wss, with a real client (Python `websockets`) and a real server
/// (``WebSocketEchoBackend``, on NIOWebSocket): messages of every length encoding echoed intact, ping/pong and the
/// close handshake passing through, either side vanishing closing the other, the tenant's tunnel idle timeout and
/// tunnel cap, and plain requests on the WebSocket path still served. After each scenario the tenant's tunnel
/// gauge must be back to zero.
@Suite("WebSocket tunnels through the balancer", .serialized)
struct WebSocketIntegrationTests {
    /// Seconds within which one side's end must reach the other.
    private static let prompt = 2.0

    @Test("text and binary messages of 1 B to 1 MiB are echoed intact", arguments: WebSocketScheme.allCases)
    func echo(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend) { proxy in
            let result = try WebSocketClient.run("echo", scheme: scheme, proxy: proxy)
            #expect(result.bool("ok") == true, "\(result)")
            #expect(result.int("checked") == 13, "\(result)")
            #expect(backend.webSockets == 1)
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test("a client's ping is answered with its pong", arguments: WebSocketScheme.allCases)
    func pingPong(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend) { proxy in
            let result = try WebSocketClient.run("ping", scheme: scheme, proxy: proxy)
            #expect(result.bool("pong") == true, "\(result)")
            #expect(result.string("after") == "after ping", "\(result)")
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test(
        "the close handshake passes through: the client gets the backend's close frame",
        arguments: WebSocketScheme.allCases
    )
    func closeHandshake(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend) { proxy in
            let result = try WebSocketClient.run("close", scheme: scheme, proxy: proxy)
            #expect(result.int("code") == 1000, "\(result)")
            #expect(result.string("reason") == WebSocketEchoBackend.closeReason, "\(result)")
            #expect(result.int("closeCode") == 1000, "\(result)")
            #expect(await backend.wait(timeout: Self.prompt) { $0.openWebSockets == 0 } != nil)
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test(
        "the backend dying mid-stream (FIN or RST) closes the client promptly",
        arguments: WebSocketScheme.allCases,
        [WebSocketEchoBackend.closeCommand, WebSocketEchoBackend.resetCommand]
    )
    func backendDies(scheme: WebSocketScheme, command: String) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend) { proxy in
            let result = try WebSocketClient.run(
                "backend-dies",
                scheme: scheme,
                proxy: proxy,
                arguments: ["--command", command]
            )
            #expect(result.bool("closed") == true, "\(result)")
            #expect((result.double("elapsed") ?? .infinity) < Self.prompt, "\(result)")
            #expect(result.bool("closeFrame") == false, "no close frame was sent by anyone: \(result)")
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test(
        "the client vanishing without a close frame closes the backend side promptly",
        arguments: WebSocketScheme.allCases
    )
    func clientVanishes(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend) { proxy in
            let result = try WebSocketClient.run("vanish", scheme: scheme, proxy: proxy)
            #expect(result.bool("ok") == true, "\(result)")
            #expect(backend.webSockets == 1)
            let waited = await backend.wait(timeout: 5) { $0.openWebSockets == 0 }
            #expect(waited != nil, "the backend side is still open after 5 s")
            #expect((waited ?? .infinity) < Self.prompt, "the backend side closed after \(waited ?? -1) s")
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test(
        "an idle tunnel is closed after the tenant's tunnel_idle; one in use stays open",
        arguments: WebSocketScheme.allCases
    )
    func idleTimeout(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend, tunnelIdle: .milliseconds(500)) { proxy in
            let idle = try WebSocketClient.run("idle", scheme: scheme, proxy: proxy)
            #expect(idle.bool("closed") == true, "\(idle)")
            let elapsed = idle.double("elapsed") ?? .infinity
            // Timeouts are checked by a sweep (every second with the default timeouts), hence the margin.
            #expect(elapsed >= 0.45 && elapsed < 2.5, "closed after \(elapsed) s: \(idle)")
            #expect(await backend.wait(timeout: Self.prompt) { $0.openWebSockets == 0 } != nil)

            let busy = try WebSocketClient.run(
                "busy",
                scheme: scheme,
                proxy: proxy,
                arguments: ["--seconds", "1.5", "--interval", "0.2"]
            )
            #expect(busy.bool("ok") == true, "\(busy)")
            #expect((busy.int("count") ?? 0) >= 6, "\(busy)")
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test(
        "the tenant's tunnel cap answers 503 with Retry-After, and a closed tunnel frees its slot",
        arguments: WebSocketScheme.allCases
    )
    func tunnelCap(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend, maxTunnels: 2) { proxy in
            let result = try WebSocketClient.run("cap", scheme: scheme, proxy: proxy)
            let third = result.object("third")
            #expect((third?["status"] as? NSNumber)?.intValue == 503, "\(result)")
            #expect(third?["retryAfter"] as? String != nil, "\(result)")
            #expect(result.string("fourth") == "fourth", "\(result)")
            #expect(result.string("second") == "second still open", "\(result)")
            // The refused upgrade never reached the backend.
            #expect(backend.webSockets == 3, "\(result)")
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }

    @Test(
        "a plain GET on the WebSocket path is served normally, before and after a tunnel",
        arguments: WebSocketScheme.allCases
    )
    func plainRequestOnWebSocketPath(scheme: WebSocketScheme) async throws {
        let backend = try await WebSocketEchoBackend.start()
        try await withWebSocketProxy(backend: backend) { proxy in
            let port = proxy.port(scheme)
            let url = "\(scheme == .ws ? "http" : "https")://\(WebSocketProxy.domain):\(port)/ws/"
            let curl = [
                "--resolve", "\(WebSocketProxy.domain):\(port):127.0.0.1", "--cacert", WebSocketProxy.caCertificate,
                "-w", "\n%{http_code}", url,
            ]
            let before = try ExternalProcess.curl(curl, timeout: 10)
            #expect(before.stdout == WebSocketEchoBackend.plainBody + "\n200", "\(before)")

            let tunnel = try WebSocketClient.run("ping", scheme: scheme, proxy: proxy)
            #expect(tunnel.bool("pong") == true, "\(tunnel)")

            let after = try ExternalProcess.curl(curl, timeout: 10)
            #expect(after.stdout == WebSocketEchoBackend.plainBody + "\n200", "\(after)")
            #expect(backend.plainRequests == 2)
            #expect(backend.webSockets == 1)
            #expect(await proxy.waitForOpenTunnels(0), "tunnels still counted: \(proxy.openTunnels)")
        }
    }
}
