import Foundation
import Logging
import NIOCore
import NIOPosix
import SwitchyardTLS
import Testing

@testable import Switchyard

/// A balancer in the test process that listens for both ws (plain HTTP) and wss (HTTPS with the repository's
/// development certificates, `Certs/localhost.pem`), for one tenant, ``domain``, whose tunnel options a test sets.
final class WebSocketProxy: Sendable {
    /// The tenant's domain, covered by the development certificate's `*.demo.localhost`.
    static let domain = "ws.demo.localhost"
    /// The development CA that signed `Certs/localhost.pem`, for clients to verify the balancer with.
    static let caCertificate = ExternalProcess.packageRoot + "/Certs/dev-ca.pem"

    let server: ProxyServer
    let group: MultiThreadedEventLoopGroup
    let routes: RouteSource
    let httpPort: Int
    let httpsPort: Int

    private init(
        server: ProxyServer,
        group: MultiThreadedEventLoopGroup,
        routes: RouteSource,
        httpPort: Int,
        httpsPort: Int
    ) {
        self.server = server
        self.group = group
        self.routes = routes
        self.httpPort = httpPort
        self.httpsPort = httpsPort
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts a balancer routing ``domain`` to `backends`, with the tenant's `tunnelIdle` and `maxTunnels`.
    static func start(
        backends: [SocketAddress],
        tunnelIdle: TimeAmount? = nil,
        maxTunnels: Int = 10_000,
        workers: Int = 2
    ) async throws -> WebSocketProxy {
        let loopback = try SocketAddress(ipAddress: "127.0.0.1", port: 0)
        let configuration = Configuration(
            listen: .init(http: [loopback], https: [loopback]),
            workers: workers,
            tls: .init(
                certificate: ExternalProcess.packageRoot + "/Certs/localhost.pem",
                key: ExternalProcess.packageRoot + "/Certs/localhost.key"
            ),
            tenants: [
                TenantConfiguration(
                    name: "ws",
                    domains: [domain],
                    backends: backends,
                    tunnelIdle: tunnelIdle,
                    maxTunnels: maxTunnels
                )
            ],
            accessLog: false
        )
        guard let store = try CertificateStore.load(configuration: configuration) else {
            throw Failure(description: "CertificateStore.load returned no store for a configuration with tls")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: workers)
        var logger = Logger(label: "switchyard.test")
        logger.logLevel = .critical
        let routes = RouteSource(try RouteTable(configuration: configuration))
        let server = ProxyServer(
            configuration: configuration,
            group: group,
            routes: routes,
            certificates: CertificateSource(store),
            logger: logger
        )
        do {
            try await server.start()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        // Addresses are reported in the order of the configuration: http, then https.
        let bound = server.boundAddresses
        guard bound.count == 2, let httpPort = bound[0].port, let httpsPort = bound[1].port else {
            await server.shutdown()
            try? await group.shutdownGracefully()
            throw Failure(description: "expected one http and one https address, got \(bound)")
        }
        return WebSocketProxy(server: server, group: group, routes: routes, httpPort: httpPort, httpsPort: httpsPort)
    }

    /// The tenant's open tunnels as its gauge counts them.
    var openTunnels: Int {
        routes.current.tenant(forNormalizedHost: Self.domain)?.tunnels.current ?? -1
    }

    /// The port of `scheme`'s listener.
    func port(_ scheme: WebSocketScheme) -> Int {
        scheme == .ws ? httpPort : httpsPort
    }

    /// The URL of `path` on the tenant over `scheme`.
    func url(_ scheme: WebSocketScheme, path: String = "/ws/") -> String {
        "\(scheme.rawValue)://\(Self.domain):\(port(scheme))\(path)"
    }

    /// Waits until the tenant's gauge reads `count`, at most `timeout` seconds; returns whether it did.
    func waitForOpenTunnels(_ count: Int, timeout: Double = 3) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if openTunnels == count { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return openTunnels == count
    }

    func stop() async {
        await server.shutdown()
        try? await group.shutdownGracefully()
    }
}

/// Runs `body` with `backend` behind a ``WebSocketProxy``, and stops both afterwards, whether `body` throws or not.
func withWebSocketProxy(
    backend: WebSocketEchoBackend,
    tunnelIdle: TimeAmount? = nil,
    maxTunnels: Int = 10_000,
    _ body: (WebSocketProxy) async throws -> Void
) async throws {
    let proxy: WebSocketProxy
    do {
        proxy = try await WebSocketProxy.start(
            backends: [backend.address],
            tunnelIdle: tunnelIdle,
            maxTunnels: maxTunnels
        )
    } catch {
        await backend.stop()
        throw error
    }
    do {
        try await body(proxy)
    } catch {
        await proxy.stop()
        await backend.stop()
        throw error
    }
    await proxy.stop()
    await backend.stop()
}

/// ws or wss.
enum WebSocketScheme: String, Sendable, CaseIterable, CustomTestStringConvertible {
    case ws
    case wss

    var testDescription: String { rawValue }
}

/// A real WebSocket client: the Python `websockets` library, driven by a small script with one mode per scenario.
/// Each run prints one JSON object, which ``run(_:scheme:proxy:arguments:timeout:)`` returns.
///
/// The script connects its own socket to 127.0.0.1 and hands it to `websockets.connect`, so test host names need
/// no DNS; over wss it verifies the balancer's certificate against the development CA and the tenant's name.
enum WebSocketClient {
    /// What a run printed, or why it printed nothing usable.
    struct Result: CustomStringConvertible {
        var fields: [String: Any]
        var output: ExternalProcess.Output

        subscript(key: String) -> Any? {
            fields[key]
        }

        func bool(_ key: String) -> Bool? {
            fields[key] as? Bool
        }

        func double(_ key: String) -> Double? {
            (fields[key] as? NSNumber)?.doubleValue
        }

        func int(_ key: String) -> Int? {
            (fields[key] as? NSNumber)?.intValue
        }

        func string(_ key: String) -> String? {
            fields[key] as? String
        }

        func object(_ key: String) -> [String: Any]? {
            fields[key] as? [String: Any]
        }

        var description: String {
            "status \(output.status), stdout: \(output.stdout), stderr: \(output.stderr)"
        }
    }

    /// Runs the script in `mode` against `proxy` over `scheme`, at most `timeout` seconds.
    static func run(
        _ mode: String,
        scheme: WebSocketScheme,
        proxy: WebSocketProxy,
        path: String = "/ws/",
        arguments: [String] = [],
        timeout: Double = 30
    ) throws -> Result {
        let script = NSTemporaryDirectory() + "switchyard-ws-client-\(UUID().uuidString).py"
        try source.write(toFile: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: script) }
        var options = [mode, "--port", String(proxy.port(scheme)), "--url", proxy.url(scheme, path: path)]
        if scheme == .wss {
            options += ["--ca", WebSocketProxy.caCertificate, "--server-hostname", WebSocketProxy.domain]
        }
        options += ["--timeout", String(Int(timeout) - 2)]
        let output = try ExternalProcess.run(
            "/usr/bin/env",
            ["python3", script] + options + arguments,
            timeout: timeout
        )
        let line = output.stdout.split(separator: "\n").last(where: { $0.hasPrefix("{") }) ?? ""
        let fields = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
        return Result(fields: fields, output: output)
    }

    /// The script. Every mode prints one JSON line; failures print `{"error": ...}`.
    private static let source = #"""
        import argparse
        import asyncio
        import json
        import os
        import random
        import socket
        import ssl
        import string
        import sys
        import time

        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--url", required=True)
        parser.add_argument("--ca")
        parser.add_argument("--server-hostname")
        parser.add_argument("--timeout", type=float, default=20)
        parser.add_argument("--command")
        parser.add_argument("--seconds", type=float, default=1.5)
        parser.add_argument("--interval", type=float, default=0.2)
        args = parser.parse_args()


        def connect():
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=5)
            options = dict(sock=sock, max_size=None, ping_interval=None, open_timeout=5, close_timeout=5)
            if args.ca:
                context = ssl.create_default_context(cafile=args.ca)
                options.update(ssl=context, server_hostname=args.server_hostname)
            return websockets.connect(args.url, **options)


        async def receive(ws, timeout=5):
            return await asyncio.wait_for(ws.recv(), timeout)


        async def echo():
            rng = random.Random(6455)
            failures = []
            checked = 0
            async with connect() as ws:
                for size in [1, 125, 126, 65535, 65536, 1 << 20]:
                    text = "".join(rng.choices(string.ascii_letters + string.digits, k=size))
                    await ws.send(text)
                    back = await receive(ws, 10)
                    if not isinstance(back, str) or back != text:
                        failures.append(f"text {size}: got {type(back).__name__} of {len(back)}")
                    data = rng.randbytes(size)
                    await ws.send(data)
                    back = await receive(ws, 10)
                    if not isinstance(back, bytes) or back != data:
                        failures.append(f"binary {size}: got {type(back).__name__} of {len(back)}")
                    checked += 2
                # A fragmented message passes through too.
                await ws.send(["frag", "mented"])
                back = await receive(ws)
                if back != "fragmented":
                    failures.append(f"fragmented: got {back!r}")
                checked += 1
            return {"ok": not failures, "checked": checked, "failures": failures}


        async def ping():
            async with connect() as ws:
                waiter = await ws.ping(b"switchyard")
                latency = await asyncio.wait_for(waiter, 5)
                await ws.send("after ping")
                after = await receive(ws)
            return {"pong": True, "latency": latency, "after": after}


        async def close():
            async with connect() as ws:
                await ws.send("before close")
                await receive(ws)
                await ws.close(1000, "bye")
                received = ws.protocol.close_rcvd
                return {
                    "code": received.code if received else None,
                    "reason": received.reason if received else None,
                    "closeCode": ws.close_code,
                }


        async def backend_dies():
            async with connect() as ws:
                await ws.send("hello")
                await receive(ws)
                await ws.send(args.command)
                start = time.monotonic()
                try:
                    message = await receive(ws)
                    return {"closed": False, "message": str(message)}
                except ConnectionClosed as error:
                    return {
                        "closed": True,
                        "elapsed": time.monotonic() - start,
                        "closeFrame": error.rcvd is not None,
                    }
                except asyncio.TimeoutError:
                    return {"closed": False, "elapsed": time.monotonic() - start}


        async def vanish():
            async with connect() as ws:
                await ws.send("hello")
                back = await receive(ws)
                print(json.dumps({"ok": back == "hello"}), flush=True)
                # Gone without a close frame, a TLS close_notify or a FIN sent by the library: the process exits.
                os._exit(0)


        async def idle():
            async with connect() as ws:
                await ws.send("hello")
                await receive(ws)
                start = time.monotonic()
                try:
                    message = await receive(ws, 5)
                    return {"closed": False, "message": str(message)}
                except ConnectionClosed:
                    return {"closed": True, "elapsed": time.monotonic() - start}
                except asyncio.TimeoutError:
                    return {"closed": False, "elapsed": time.monotonic() - start}


        async def busy():
            start = time.monotonic()
            count = 0
            async with connect() as ws:
                try:
                    while time.monotonic() - start < args.seconds:
                        message = f"tick {count}"
                        await ws.send(message)
                        if await receive(ws, 2) != message:
                            return {"ok": False, "count": count, "reason": "wrong echo"}
                        count += 1
                        await asyncio.sleep(args.interval)
                    await ws.send("still open")
                    final = await receive(ws, 2)
                except ConnectionClosed:
                    return {"ok": False, "count": count, "closedAfter": time.monotonic() - start}
            return {"ok": final == "still open", "count": count, "elapsed": time.monotonic() - start}


        async def cap():
            first = await connect()
            second = await connect()
            for ws in (first, second):
                await ws.send("open")
                await receive(ws)
            try:
                third = await connect()
                result = {"status": 101}
                await third.close()
            except InvalidStatus as error:
                result = {
                    "status": error.response.status_code,
                    "retryAfter": error.response.headers.get("Retry-After"),
                }
            await first.close()
            # The slot is free once the balancer has seen the first tunnel end, a moment after close() returns.
            attempts = 0
            deadline = time.monotonic() + 2
            fourth = None
            while True:
                attempts += 1
                try:
                    ws = await connect()
                    await ws.send("fourth")
                    fourth = await receive(ws)
                    await ws.close()
                    break
                except InvalidStatus as error:
                    if time.monotonic() > deadline:
                        fourth = f"status {error.response.status_code}"
                        break
                    await asyncio.sleep(0.05)
            await second.send("second still open")
            second_echo = await receive(second)
            await second.close()
            return {"third": result, "fourth": fourth, "attempts": attempts, "second": second_echo}


        async def main():
            modes = {
                "echo": echo,
                "ping": ping,
                "close": close,
                "backend-dies": backend_dies,
                "vanish": vanish,
                "idle": idle,
                "busy": busy,
                "cap": cap,
            }
            return await asyncio.wait_for(modes[args.mode](), args.timeout)


        try:
            result = asyncio.run(main())
        except BaseException as error:
            result = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result), flush=True)

        """#
}
