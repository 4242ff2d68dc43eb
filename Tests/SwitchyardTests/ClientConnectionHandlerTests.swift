import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Switchyard

/// The client and backend channel handlers on `EmbeddedChannel`s: exact bytes in, exact bytes out, with the
/// backend connection supplied by a connector that hands out embedded channels instead of sockets.
@Suite("ClientConnectionHandler on EmbeddedChannel")
struct ClientConnectionHandlerTests {
    /// Hands out an `EmbeddedChannel` per backend connection, on the test's loop.
    final class EmbeddedUpstreamConnector: UpstreamConnector {
        let loop: EmbeddedEventLoop
        var channels: [EmbeddedChannel] = []

        init(loop: EmbeddedEventLoop) {
            self.loop = loop
        }

        func connect(
            to backend: Backend,
            handler: UpstreamConnection,
            timeout: TimeAmount,
            on eventLoop: EventLoop
        ) -> EventLoopFuture<Channel> {
            let channel = EmbeddedChannel(handler: handler, loop: loop)
            channels.append(channel)
            return channel.connect(to: backend.address).map { channel }
        }
    }

    struct Fixture {
        let loop = EmbeddedEventLoop()
        let connector: EmbeddedUpstreamConnector
        let client: EmbeddedChannel

        init() throws {
            connector = EmbeddedUpstreamConnector(loop: loop)
            let backend = Backend(address: try SocketAddress(ipAddress: "10.0.0.5", port: 8080))
            let routes = RouteSource(
                try RouteTable(tenants: [Tenant(name: "shop", domains: ["shop.test"], backends: [backend])])
            )
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let worker = Worker(
                eventLoop: loop,
                routes: routes,
                configuration: Configuration(),
                connectionCounter: ConnectionCounter(limit: 10),
                logger: logger,
                accessLog: nil,
                upstreamConnector: connector
            )
            client = EmbeddedChannel(handler: ClientConnectionHandler(worker: worker, scheme: "http"), loop: loop)
            try client.connect(to: try SocketAddress(ipAddress: "192.0.2.7", port: 50_000)).wait()
        }

        func send(_ text: String) throws {
            try client.writeInbound(ByteBuffer(string: text))
            loop.run()
        }

        func upstreamReceived(_ index: Int = 0) throws -> String? {
            guard index < connector.channels.count else { return nil }
            return try connector.channels[index].readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }
        }

        func backendSends(_ text: String, _ index: Int = 0) throws {
            try connector.channels[index].writeInbound(ByteBuffer(string: text))
            loop.run()
        }

        func clientReceived() throws -> String {
            var text = ""
            while let buffer = try client.readOutbound(as: ByteBuffer.self) {
                text += String(buffer: buffer)
            }
            return text
        }
    }

    @Test("the forwarded head loses hop-by-hop fields and gains forwarding fields; the answer comes back rewritten")
    func rewriting() throws {
        let fixture = try Fixture()
        try fixture.send(
            "GET /cart HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, X-Trace\r\nX-Trace: 1\r\n"
                + "Keep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 6.6.6.6\r\nAccept: */*\r\n"
                + "X-Request-ID: trace-42\r\n\r\n"
        )
        #expect(
            try fixture.upstreamReceived()
                == "GET /cart HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n"
                + "X-Forwarded-For: 203.0.113.9, 192.0.2.7\r\nX-Real-IP: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
                + "X-Forwarded-Host: shop.test\r\nX-Request-ID: trace-42\r\n\r\n"
        )
        try fixture.backendSends(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=9\r\nConnection: keep-alive\r\n\r\nok"
        )
        #expect(try fixture.clientReceived() == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        #expect(fixture.client.isActive)
    }

    @Test("a response that needs no rewriting is forwarded byte for byte, and the backend connection is reused")
    func passThroughAndReuse() throws {
        let fixture = try Fixture()
        try fixture.send("GET /1 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        _ = try fixture.upstreamReceived()
        let response = "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\none"
        try fixture.backendSends(response)
        #expect(try fixture.clientReceived() == response)
        try fixture.send("GET /2 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        #expect(fixture.connector.channels.count == 1)
        #expect(try fixture.upstreamReceived()?.hasPrefix("GET /2 HTTP/1.1\r\n") == true)
    }

    @Test("an unknown host gets 404 naming it and no backend connection is opened")
    func unknownHost() throws {
        let fixture = try Fixture()
        try fixture.send("GET / HTTP/1.1\r\nHost: Nowhere.Test\r\n\r\n")
        #expect(
            try fixture.clientReceived()
                == "HTTP/1.1 404 Not Found\r\nServer: switchyard\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + "Content-Length: 58\r\n\r\n404 Not Found: no site is served for host 'nowhere.test'.\n"
        )
        #expect(fixture.connector.channels.isEmpty)
        #expect(fixture.client.isActive)
    }

    @Test("a smuggling shape gets 400, the connection closes and nothing is forwarded")
    func smuggling() throws {
        let fixture = try Fixture()
        try fixture.send(
            "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        let answer = try fixture.clientReceived()
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(answer.contains("Connection: close\r\n"))
        #expect(!fixture.client.isActive)
        #expect(fixture.connector.channels.isEmpty)
    }

    @Test("a 101 turns both connections into a tunnel that passes bytes verbatim")
    func tunnel() throws {
        let fixture = try Fixture()
        try fixture.send(
            "GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        #expect(try fixture.upstreamReceived()?.contains("Upgrade: websocket\r\nConnection: upgrade\r\n") == true)
        let switching =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        try fixture.backendSends(switching + "\u{81}\u{02}hi")
        #expect(try fixture.clientReceived() == switching + "\u{81}\u{02}hi")
        try fixture.send("\u{82}\u{03}raw")
        #expect(try fixture.upstreamReceived() == "\u{82}\u{03}raw")
    }
}
