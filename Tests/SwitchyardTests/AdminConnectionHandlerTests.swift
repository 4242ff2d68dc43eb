import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Switchyard

/// One admin connection's pipeline, as ``AdminServer`` builds it, on an `EmbeddedChannel` with exact bytes and
/// the embedded loop's clock.
@Suite("Admin connection")
struct AdminConnectionHandlerTests {
    /// Counts the `read` calls that reach the socket, i.e. that the handlers did not hold back.
    private final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = Any
        var reads = 0

        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    private let api: AdminAPI
    private let channel: EmbeddedChannel
    private let counter = ReadCounter()
    private let idleTimeout = TimeAmount.seconds(60)

    init() throws {
        let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        let shop = Tenant(name: "shop", domains: ["shop.test"], backends: [backend])
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        api = AdminAPI(routes: RouteSource(try RouteTable(tenants: [shop])), logger: logger) { 0 }
        channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(counter)
        try AdminServer.configureConnection(
            channel.pipeline.syncOperations,
            api: api,
            access: .local(.user(uid: 0)),
            limits: AdminServer.Limits(idleTimeout: idleTimeout)
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    /// The exact answer the handler gives to `method target` on HTTP/1.1.
    private func answer(_ method: String, _ target: String) -> String {
        render(api.respond(to: AdminAPI.Request(method: method, target: target), access: .local(.user(uid: 0))))
    }

    private func render(_ response: AdminAPI.Response, close: Bool = false) -> String {
        let reason = HTTPResponseStatus(statusCode: response.status).reasonPhrase
        let fields = response.headers.map { "\($0.name): \($0.value)\r\n" }.joined()
        return "HTTP/1.1 \(response.status) \(reason)\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(response.body.count)\r\n\(fields)\(close ? "Connection: close\r\n" : "")\r\n"
            + String(decoding: response.body, as: UTF8.self)
    }

    private func send(_ text: String) throws {
        try channel.writeInbound(ByteBuffer(string: text))
    }

    /// Everything written to the socket so far.
    private func written() throws -> String {
        var text = ""
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            text += buffer.readString(length: buffer.readableBytes) ?? ""
        }
        return text
    }

    @Test("while answers cannot be written, pipelined requests wait and the connection is not read")
    func backpressure() throws {
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        try send("GET /v1/status HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\n")
        #expect(try written() == "")
        let readsBefore = counter.reads
        channel.read()
        #expect(counter.reads == readsBefore, "a read went through while two answers wait")

        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(try written() == answer("GET", "/v1/status") + answer("GET", "/nothing"))
        #expect(counter.reads == readsBefore + 1, "the held read is released once the answers are out")
        channel.read()
        #expect(counter.reads == readsBefore + 2)
        #expect(channel.isActive)
    }

    @Test("a malformed request is answered 400 after the answers before it, and the connection is closed")
    func malformed() throws {
        try send("GET /v1/status HTTP/1.1\r\n\r\nGET /v1/status HTTP/1.1\r\nBad Header\r\n\r\n")
        #expect(
            try written()
                == answer("GET", "/v1/status")
                + "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }

    @Test("the answer carries the version as ETag, and If-Match reaches the API")
    func versionFields() throws {
        try send("GET /v1/status HTTP/1.1\r\n\r\n")
        #expect(try written().contains("\r\nETag: \"1\"\r\n"))
        try send("POST /v1/tenants/shop/backends/127.0.0.1:9001/drain HTTP/1.1\r\nIf-Match: \"7\"\r\n\r\n")
        let refused = try written()
        #expect(refused.hasPrefix("HTTP/1.1 412 Precondition Failed\r\n"), "\(refused)")
        try send("POST /v1/tenants/shop/backends/127.0.0.1:9001/drain HTTP/1.1\r\nIf-Match: \"1\"\r\n\r\n")
        let drained = try written()
        #expect(drained.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(drained)")
        #expect(drained.contains("\r\nETag: \"2\"\r\n"))
        #expect(drained.contains("\"version\" : 2"))
    }

    @Test("a body declared over 1 MiB is answered 413 before it is read, after the answers before it, and closed")
    func declaredBodyTooLarge() throws {
        try send(
            "GET /v1/status HTTP/1.1\r\n\r\nPOST /v1/reload HTTP/1.1\r\nContent-Length: \(AdminAPI.maximumBodyBytes + 1)\r\n\r\n"
        )
        let text = try written()
        #expect(text == answer("GET", "/v1/status") + render(api.bodyTooLarge(), close: true))
        #expect(text.contains("\"code\" : \"body_too_large\""))
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }

    @Test("a chunked body growing over 1 MiB is answered 413 and the connection closed; 1 MiB is taken")
    func chunkedBodyTooLarge() throws {
        let chunk = String(repeating: "x", count: 65536)
        var request = "POST /v1/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        for _ in 0..<(AdminAPI.maximumBodyBytes / chunk.count) {
            request += "10000\r\n\(chunk)\r\n"
        }
        try send(request + "0\r\n\r\n")
        // Exactly the limit: answered (405 here: the endpoint takes no POST), the connection kept.
        #expect(try written().hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"))
        #expect(channel.isActive)
        try send(request + "1\r\nx\r\n0\r\n\r\n")
        #expect(try written() == render(api.bodyTooLarge(), close: true))
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }

    @Test("a connection without a request for the idle timeout is closed; each request starts it over")
    func idle() throws {
        channel.embeddedEventLoop.advanceTime(by: idleTimeout - .milliseconds(1))
        #expect(channel.isActive)
        try send("GET /v1/status HTTP/1.1\r\n\r\n")
        #expect(try written() == answer("GET", "/v1/status"))
        channel.embeddedEventLoop.advanceTime(by: idleTimeout - .milliseconds(1))
        #expect(channel.isActive, "closed although a request came less than the idle timeout ago")
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive)
    }

    @Test("a client that stops reading its answers is closed after the idle timeout too")
    func stalledReader() throws {
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        try send("GET /v1/status HTTP/1.1\r\n\r\n")
        channel.embeddedEventLoop.advanceTime(by: idleTimeout)
        #expect(!channel.isActive)
    }
    /// `POST /v1/slow` answers after its continuation was asked three times; every other path is not found.
    private final class SlowResources: AdminResources {
        let polls = NIOLockedValueBox(0)
        var storeStatus: StatusReport.Store { StatusReport.Store(path: "test", problem: nil) }

        func respond(to request: AdminAPI.Request, path: [String], actor: ChangeActor) -> AdminAPI.Response? {
            guard path == ["slow"] else { return nil }
            var waiting = AdminAPI.Response(status: 200, body: Data(#"{"waiting":true}"#.utf8))
            waiting.continuation = AdminAPI.Continuation(every: .milliseconds(20)) { [polls] in
                let count = polls.withLockedValue { count in
                    count += 1
                    return count
                }
                return count < 3 ? nil : AdminAPI.Response(status: 201, body: Data(#"{"done":true}"#.utf8))
            }
            return waiting
        }

        func synchronizeStore() {}

        func waitingForFleet(_ response: AdminAPI.Response, request: AdminAPI.Request) -> AdminAPI.Response {
            response
        }

        func recordDrain(
            _ drained: Bool,
            tenant: String,
            backend: Backend,
            by actor: ChangeActor
        ) -> Result<Int64, AdminAPI.Refusal> {
            .success(0)
        }
    }

    @Test(
        "an answer completed later is asked for on the loop's timer: written once final, pipelined requests and reads wait for it"
    )
    func continuedAnswer() throws {
        let resources = SlowResources()
        let routes = RouteSource(try RouteTable(tenants: []))
        let slowAPI = AdminAPI(routes: routes, logger: Logger(label: "test"), resources: resources) { 0 }
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        try channel.pipeline.syncOperations.addHandler(counter)
        try AdminServer.configureConnection(
            channel.pipeline.syncOperations,
            api: slowAPI,
            access: .local(.user(uid: 0)),
            limits: AdminServer.Limits(idleTimeout: .milliseconds(50))
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        func written() throws -> String {
            var text = ""
            while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
                text += buffer.readString(length: buffer.readableBytes) ?? ""
            }
            return text
        }

        try channel.writeInbound(ByteBuffer(string: "POST /v1/slow HTTP/1.1\r\n\r\nGET /v1/nothing HTTP/1.1\r\n\r\n"))
        #expect(try written() == "")
        let readsBefore = counter.reads
        channel.read()
        #expect(counter.reads == readsBefore, "a read went through while an answer is awaited")
        // Two looks give nothing; the idle timeout (50 ms) does not close a connection whose answer is awaited.
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(40))
        #expect(try written() == "" && resources.polls.withLockedValue { $0 } == 2)
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(20))
        let text = try written()
        #expect(text.hasPrefix("HTTP/1.1 201 Created\r\n"), "\(text)")
        #expect(text.contains(#"{"done":true}"#) && !text.contains("waiting"))
        #expect(text.contains("HTTP/1.1 404 Not Found\r\n"), "the pipelined request is answered after it: \(text)")
        let created = try #require(text.range(of: "201 Created"))
        let notFound = try #require(text.range(of: "404 Not Found"))
        #expect(created.lowerBound < notFound.lowerBound)
        #expect(counter.reads == readsBefore + 1, "the held read is released once the answer is out")
        _ = try? channel.finish()
    }
}

@Suite("Admin connection limiter")
struct AdminConnectionLimiterTests {
    @Test("connections over the cap are refused; one log line per interval counts the refusals in between")
    func cap() {
        var limiter = AdminConnectionLimiter(limit: 2, logInterval: .seconds(10))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(limiter.connectionOpened(now: start) == .accept)
        #expect(limiter.connectionOpened(now: start) == .accept)
        #expect(limiter.connectionOpened(now: start) == .refuse(log: true, refusedSinceLastLog: 0))
        #expect(limiter.connectionOpened(now: start + .seconds(1)) == .refuse(log: false, refusedSinceLastLog: 1))
        #expect(limiter.connectionOpened(now: start + .seconds(9)) == .refuse(log: false, refusedSinceLastLog: 2))
        #expect(limiter.connectionOpened(now: start + .seconds(10)) == .refuse(log: true, refusedSinceLastLog: 2))
        limiter.connectionClosed()
        #expect(limiter.open == 1)
        #expect(limiter.connectionOpened(now: start + .seconds(11)) == .accept)
        #expect(limiter.connectionOpened(now: start + .seconds(30)) == .refuse(log: true, refusedSinceLastLog: 0))
    }
}
