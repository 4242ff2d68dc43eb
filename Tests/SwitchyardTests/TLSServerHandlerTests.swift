import COpenSSL
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import SwitchyardTestSupport
import Testing

@testable import SwitchyardTLS

/// `TLSServerHandler` on an `EmbeddedChannel`, talking to an in-process OpenSSL client: every ciphertext byte is
/// shuttled by hand between the two, so handshakes, records split at any byte, alerts, close_notify and the
/// handshake timer are all deterministic.
///
/// Everything runs on the test's thread, which is the embedded event loop's thread, so OpenSSL's per-thread error
/// queue is checked after every server-side step: the handler must leave it empty.
@Suite("TLSServerHandler on EmbeddedChannel")
struct TLSServerHandlerTests {
    typealias HandshakeStatus = InProcessTLSClient.HandshakeStatus

    // MARK: Fixtures

    /// The repository's development certificates (Certs/), found from this file's path.
    enum DevelopmentCertificates {
        static let directory: String = {
            var url = URL(fileURLWithPath: #filePath)
            for _ in 0..<3 { url.deleteLastPathComponent() }
            return url.appendingPathComponent("Certs").path
        }()
        static let caFile = directory + "/dev-ca.pem"
        static let chainFile = directory + "/localhost.pem"
        static let keyFile = directory + "/localhost.key"

        /// The `localhost` certificate (SANs localhost, demo.localhost, *.demo.localhost, *.localhost).
        static func context() throws -> TLSContext {
            try TLSContext(certificatePath: chainFile, keyPath: keyFile)
        }
    }

    /// A self-signed certificate made with the `openssl` command-line tool in a temporary directory, for a tenant
    /// with its own certificate. Clients trust it by loading its PEM file as a CA.
    struct SelfSignedCertificate {
        let directory: String
        let certificateFile: String
        let keyFile: String

        init(commonName: String, names: [String]) throws {
            directory = NSTemporaryDirectory() + "switchyard-tls-unit-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            certificateFile = directory + "/tenant.pem"
            keyFile = directory + "/tenant.key"
            try Self.openssl([
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", keyFile, "-out", certificateFile, "-days", "2", "-subj", "/CN=\(commonName)",
                "-addext", "subjectAltName=" + names.map { "DNS:\($0)" }.joined(separator: ","),
            ])
        }

        func remove() {
            try? FileManager.default.removeItem(atPath: directory)
        }

        private static func openssl(_ arguments: [String]) throws {
            let result = try ChildProcess.run("/usr/bin/env", ["openssl"] + arguments, timeout: 30)
            guard result.status == 0 else {
                throw InProcessTLSClient.Failure(
                    description: "openssl \(arguments.joined(separator: " ")) failed: " + result.stderr
                )
            }
        }
    }

    /// Sits behind the TLS handler and records what reaches the HTTP layer: plaintext, handshake results, the
    /// end of the client's input, and the channel going inactive.
    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        /// What arrived, in order (consecutive reads count once).
        enum Event: Equatable {
            case handshakeCompleted
            case read
            case inputClosed
            case inactive
        }

        var received: [UInt8] = []
        var handshakes: [TLSHandshakeCompleted] = []
        private(set) var events: [Event] = []

        var inputClosed: Bool { events.contains(.inputClosed) }
        var inactive: Bool { events.contains(.inactive) }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytesView
            if events.last != .read { events.append(.read) }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let completed = event as? TLSHandshakeCompleted {
                handshakes.append(completed)
                events.append(.handshakeCompleted)
            } else if let event = event as? ChannelEvent, event == .inputClosed {
                events.append(.inputClosed)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            events.append(.inactive)
        }
    }

    /// A `TLSServerHandler` and a ``Recorder`` on an `EmbeddedChannel` that is connected (active), plus the
    /// plumbing that carries ciphertext between it and an ``InProcessTLSClient``.
    ///
    /// Every step that runs server code ends with a look at the thread's OpenSSL error queue; anything found
    /// there is kept in ``errorQueueLeftovers`` (and cleared, so the next step is judged on its own).
    final class Harness {
        let channel: EmbeddedChannel
        let recorder = Recorder()
        /// Error codes the server left on the queue, one per step that left any.
        private(set) var errorQueueLeftovers: [UInt] = []
        /// All ciphertext (or plaintext refusal) the server wrote.
        private(set) var serverWrote: [UInt8] = []

        var loop: EmbeddedEventLoop { channel.embeddedEventLoop }

        init(store: CertificateStore, handshakeTimeout: TimeAmount = .seconds(10), logger: Logger? = nil) throws {
            var logger = logger ?? Logger(label: "TLSServerHandlerTests")
            if logger.logLevel > .debug { logger.logLevel = .critical }
            let handler = TLSServerHandler(
                certificates: CertificateSource(store),
                handshakeTimeout: handshakeTimeout,
                logger: logger
            )
            channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandlers([handler, recorder])
            try channel.connect(to: SocketAddress(ipAddress: "192.0.2.7", port: 50_000)).wait()
        }

        /// Runs server code and checks it left the OpenSSL error queue empty.
        @discardableResult
        func onServer<Result>(_ body: () throws -> Result) rethrows -> Result {
            let result = try body()
            let code = ERR_peek_error()
            if code != 0 {
                errorQueueLeftovers.append(code)
                ERR_clear_error()
            }
            return result
        }

        /// Delivers `bytes` to the server, split into reads of `chunkSizes` bytes (cycling through the list).
        func send(_ bytes: [UInt8], chunkSizes: [Int] = [Int.max]) throws {
            var offset = 0
            var index = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + max(1, min(chunkSizes[index % chunkSizes.count], bytes.count)))
                var buffer = channel.allocator.buffer(capacity: end - offset)
                buffer.writeBytes(bytes[offset..<end])
                try onServer { _ = try channel.writeInbound(buffer) }
                offset = end
                index += 1
            }
        }

        func send(_ text: String) throws {
            try send(Array(text.utf8))
        }

        /// What the server wrote since the last call.
        func takeServerOutput() throws -> [UInt8] {
            var output: [UInt8] = []
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                output += buffer.readableBytesView
            }
            serverWrote += output
            return output
        }

        /// Carries ciphertext both ways until neither side has anything to send, continuing the client's
        /// handshake whenever the server answered. Returns the client's handshake status at the end.
        @discardableResult
        func pump(_ client: InProcessTLSClient, chunkSizes: [Int] = [Int.max]) throws -> HandshakeStatus {
            var status: HandshakeStatus = client.isHandshakeDone ? .done : client.handshake()
            // A handshake is a few flights; the bound only stops a test that would otherwise spin.
            for _ in 0..<20 {
                let toServer = client.takeOutput()
                try send(toServer, chunkSizes: chunkSizes)
                let toClient = try takeServerOutput()
                client.feed(toClient)
                if status == .inProgress, !toClient.isEmpty {
                    status = client.handshake()
                    continue
                }
                if toServer.isEmpty, toClient.isEmpty { break }
            }
            return status
        }

        /// Closes the channel from the server side (what the HTTP layer does after a response).
        func closeFromServer() {
            onServer {
                channel.close(promise: nil)
                loop.run()
            }
        }

        func advanceTime(by amount: TimeAmount) {
            onServer { loop.advanceTime(by: amount) }
        }
    }

    /// The development certificate alone, with a fresh ticket key ring.
    static func defaultStore() throws -> CertificateStore {
        try store(defaultContext: DevelopmentCertificates.context())
    }

    static func store(defaultContext: TLSContext, contexts: [TLSContext] = []) throws -> CertificateStore {
        CertificateStore(defaultContext: defaultContext, contexts: contexts, ticketKeys: try TicketKeyRing())
    }

    static func client(
        serverName: String? = "demo.localhost",
        verifyHost: Bool = true,
        trusting caFiles: [String] = [DevelopmentCertificates.caFile],
        alpn: [String] = ["h2", "http/1.1"],
        minVersion: Int32? = nil,
        maxVersion: Int32? = nil,
        cipherList: String? = nil,
        session: InProcessTLSClient.Session? = nil
    ) throws -> InProcessTLSClient {
        try InProcessTLSClient(
            serverName: serverName,
            verifyHost: verifyHost,
            trustedCAFiles: caFiles,
            alpn: alpn,
            minVersion: minVersion,
            maxVersion: maxVersion,
            cipherList: cipherList,
            session: session
        )
    }

    /// `count` pseudo-random bytes, different for each seed and not periodic, so a lost, repeated or reordered
    /// piece shows.
    static func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    /// Where two byte strings first differ; nil when equal. Keeps failure messages short for large payloads.
    static func firstDifference(_ left: [UInt8], _ right: [UInt8]) -> Int? {
        if let index = zip(left, right).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            return index
        }
        return left.count == right.count ? nil : min(left.count, right.count)
    }

    /// Whether `bytes` contain a TLS alert record (content type 21) at a record boundary.
    static func containsAlertRecord(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset + 5 <= bytes.count {
            if bytes[offset] == 21 { return true }
            let length = Int(bytes[offset + 3]) << 8 | Int(bytes[offset + 4])
            offset += 5 + length
        }
        return false
    }

    // MARK: Handshakes

    @Test(
        "a TLS 1.3 handshake completes; the event names the SNI, the served context and TLSv1.3",
        arguments: [[Int.max], [1, 7, 1000]]
    )
    func tls13Handshake(chunkSizes: [Int]) throws {
        let context = try DevelopmentCertificates.context()
        let harness = try Harness(store: Self.store(defaultContext: context))
        let client = try Self.client(serverName: "demo.localhost")

        #expect(try harness.pump(client, chunkSizes: chunkSizes) == .done, "client: \(client.errors)")

        #expect(client.version == "TLSv1.3")
        #expect(client.verifyResult == Int(X509_V_OK))
        #expect(client.alpnProtocol == "http/1.1")
        #expect(client.peerCertificateCovers("demo.localhost"))
        #expect(harness.recorder.handshakes.count == 1)
        let completed = try #require(harness.recorder.handshakes.first)
        #expect(completed.serverName == "demo.localhost")
        #expect(completed.certificate === context)
        #expect(completed.version == "TLSv1.3")
        #expect(harness.channel.isActive)
        #expect(harness.recorder.received.isEmpty)
        #expect(client.errors.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("a client that offers no protocol the balancer speaks still completes the handshake, without ALPN")
    func alpnWithoutCommonProtocol() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client(alpn: ["h2"])

        #expect(try harness.pump(client) == .done, "client: \(client.errors)")
        #expect(client.alpnProtocol == nil)
        #expect(harness.recorder.handshakes.count == 1)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("a TLS 1.2 client completes the handshake and exchanges data")
    func tls12Handshake() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client(maxVersion: TLS1_2_VERSION)

        #expect(try harness.pump(client) == .done, "client: \(client.errors)")
        #expect(client.version == "TLSv1.2")
        #expect(client.alpnProtocol == "http/1.1")
        #expect(harness.recorder.handshakes.first?.version == "TLSv1.2")
        #expect(harness.recorder.handshakes.first?.serverName == "demo.localhost")

        try client.write(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        try harness.pump(client)
        #expect(harness.recorder.received == Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(harness.channel.isActive)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("a TLS 1.1-only client is refused with an alert and the connection closes")
    func tls11Refused() throws {
        let harness = try Harness(store: try Self.defaultStore())
        // OpenSSL 3's default security level would not even offer TLS 1.1.
        let client = try Self.client(
            minVersion: TLS1_1_VERSION,
            maxVersion: TLS1_1_VERSION,
            cipherList: "DEFAULT:@SECLEVEL=0"
        )

        #expect(try harness.pump(client) == .failed)
        #expect(!client.isHandshakeDone)
        #expect(client.errors.contains { $0.contains("protocol version") }, "client: \(client.errors)")
        #expect(Self.containsAlertRecord(harness.serverWrote))
        #expect(!harness.channel.isActive)
        #expect(harness.recorder.handshakes.isEmpty)
        #expect(harness.recorder.received.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    @Test("SNI selects a tenant's own certificate; an unknown name and no SNI get the default one")
    func sniSelection() throws {
        let tenant = try SelfSignedCertificate(commonName: "shop.test", names: ["shop.test", "*.shop.test"])
        defer { tenant.remove() }
        let defaultContext = try DevelopmentCertificates.context()
        let shop = try TLSContext(certificatePath: tenant.certificateFile, keyPath: tenant.keyFile)
        let store = try Self.store(defaultContext: defaultContext, contexts: [shop])
        let trusted = [DevelopmentCertificates.caFile, tenant.certificateFile]

        // The tenant's name, then a name its wildcard covers.
        for name in ["shop.test", "www.shop.test"] {
            let harness = try Harness(store: store)
            let client = try Self.client(serverName: name, trusting: trusted)
            #expect(try harness.pump(client) == .done, "\(name): \(client.errors)")
            #expect(client.verifyResult == Int(X509_V_OK))
            #expect(client.peerCertificateCovers(name))
            #expect(!client.peerCertificateCovers("localhost"))
            #expect(client.peerSubject == "/CN=shop.test")
            #expect(harness.recorder.handshakes.first?.certificate === shop)
            #expect(harness.recorder.handshakes.first?.serverName == name)
            #expect(client.alpnProtocol == "http/1.1")
            #expect(harness.errorQueueLeftovers.isEmpty)
        }

        // Unknown SNI, and none at all: the default certificate.
        for name in ["unknown.example", nil] as [String?] {
            let harness = try Harness(store: store)
            let client = try Self.client(serverName: name, verifyHost: false, trusting: trusted)
            #expect(try harness.pump(client) == .done, "\(name ?? "no SNI"): \(client.errors)")
            #expect(client.verifyResult == Int(X509_V_OK))
            #expect(client.peerCertificateCovers("localhost"))
            #expect(!client.peerCertificateCovers("shop.test"))
            #expect(client.peerSubject == "/CN=localhost")
            #expect(harness.recorder.handshakes.first?.certificate === defaultContext)
            #expect(harness.recorder.handshakes.first?.serverName == name)
            #expect(harness.errorQueueLeftovers.isEmpty)
        }
    }

    @Test("a client that does not trust the certificate aborts; the server closes and keeps its error queue clean")
    func clientRejectsCertificate() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client(trusting: [])

        #expect(try harness.pump(client) == .failed)
        #expect(client.verifyResult != Int(X509_V_OK))
        #expect(!harness.channel.isActive)
        #expect(harness.recorder.handshakes.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    @Test("a failed handshake logs the client's server name escaped: CR/LF cannot forge a line")
    func serverNameIsEscapedInTheLog() throws {
        let lines = CapturedLog()
        var logger = Logger(label: "TLSServerHandlerTests") { _ in lines }
        logger.logLevel = .debug
        let harness = try Harness(store: try Self.defaultStore(), logger: logger)
        let client = try Self.client(serverName: "a.test\r\n\u{1B}[2Jforged", verifyHost: false, trusting: [])

        #expect(try harness.pump(client) == .failed)
        let logged = lines.entries.map { "\($0.message) \($0.metadata)" }
        let failure = try #require(logged.first { $0.contains("TLS handshake failed") })
        #expect(failure.contains("a.test\\x0D\\x0A\\x1B[2Jforged"), "\(failure)")
        #expect(!logged.joined().contains("\r"))
        #expect(!logged.joined().contains("\u{1B}"))
    }

    // MARK: Application data

    @Test("client data of 1 byte, 16 KiB and 100 KiB arrives exactly, however the records are split")
    func clientToServerData() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        for (index, size) in [1, 16 * 1024, 100 * 1024].enumerated() {
            let message = Self.pattern(size, seed: UInt64(index + 1))
            harness.recorder.received = []
            try client.write(message)
            try harness.send(client.takeOutput(), chunkSizes: [1, 7, 1000])
            #expect(Self.firstDifference(harness.recorder.received, message) == nil, "\(size) bytes")
            #expect(harness.recorder.received.count == message.count)
            // Whatever the server answered (nothing, or TLS housekeeping) must not upset the client.
            client.feed(try harness.takeServerOutput())
            #expect(client.read().bytes.isEmpty)
        }
        #expect(harness.channel.isActive)
        #expect(!harness.recorder.inputClosed)
        #expect(client.errors.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("100 KiB written by the layer above arrives intact at the client")
    func serverToClientData() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        let message = Self.pattern(100 * 1024, seed: 42)
        try harness.onServer { try harness.channel.writeOutbound(ByteBuffer(bytes: message)) }
        let ciphertext = try harness.takeServerOutput()
        #expect(ciphertext.count > message.count)
        client.feed(ciphertext)
        let read = client.read()
        #expect(!read.failed, "client: \(client.errors)")
        #expect(Self.firstDifference(read.bytes, message) == nil)
        #expect(read.bytes.count == message.count)
        #expect(harness.channel.isActive)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test(
        "writes before a flush, small and large, and writes after it arrive in order (the ciphertext buffer is reused)"
    )
    func consecutiveWrites() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")
        _ = client.read()

        var expected: [UInt8] = []
        for (round, sizes) in [[10, 40 * 1024, 100], [5], [70 * 1024, 1], [3]].enumerated() {
            harness.onServer {
                for (index, size) in sizes.enumerated() {
                    let message = Self.pattern(size, seed: UInt64(round * 10 + index))
                    expected += message
                    harness.channel.write(ByteBuffer(bytes: message), promise: nil)
                }
                harness.channel.flush()
            }
            client.feed(try harness.takeServerOutput())
            let read = client.read()
            #expect(!read.failed, "client: \(client.errors)")
            #expect(read.bytes == expected, "round \(round)")
            expected = []
        }
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("a record whose authentication tag was tampered with closes the connection and delivers nothing")
    func corruptedRecord() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        try client.write(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        var ciphertext = client.takeOutput()
        ciphertext[ciphertext.count - 1] ^= 0x01
        try harness.send(ciphertext)

        #expect(harness.recorder.received.isEmpty)
        #expect(!harness.channel.isActive)
        // TLS 1.3 encrypts the alert (outer type application data): the client decrypts it.
        client.feed(try harness.takeServerOutput())
        #expect(client.read().failed)
        #expect(client.errors.contains { $0.contains("bad record mac") }, "client: \(client.errors)")
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    @Test("a request sent together with the client's Finished is delivered right after the handshake event")
    func requestWithFinished() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(client.handshake() == .inProgress)
        try harness.send(client.takeOutput())
        client.feed(try harness.takeServerOutput())
        #expect(client.handshake() == .done, "client: \(client.errors)")
        #expect(harness.recorder.handshakes.isEmpty)

        // Finished and the first request in one read, as browsers send them.
        let request = Array("GET / HTTP/1.1\r\nHost: demo.localhost\r\n\r\n".utf8)
        try client.write(request)
        try harness.send(client.takeOutput())
        // The HTTP layer needs the served certificate before the request (its 421 check).
        #expect(harness.recorder.events == [.handshakeCompleted, .read])
        #expect(harness.recorder.received == request)
        #expect(harness.channel.isActive)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("a TLS 1.3 key update requested by the client is answered, and data keeps flowing both ways")
    func keyUpdate() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        try client.requestKeyUpdate()
        try client.write(Array("after update".utf8))
        try harness.send(client.takeOutput())
        #expect(harness.recorder.received == Array("after update".utf8))

        try harness.onServer { try harness.channel.writeOutbound(ByteBuffer(string: "answer")) }
        client.feed(try harness.takeServerOutput())
        let read = client.read()
        #expect(read.bytes == Array("answer".utf8))
        #expect(!read.failed, "client: \(client.errors)")
        // The server's answer came under its new key: the client can send under its own again.
        try client.write(Array("more".utf8))
        try harness.send(client.takeOutput())
        #expect(harness.recorder.received == Array("after updatemore".utf8))
        #expect(harness.channel.isActive)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("a TLS 1.2 renegotiation attempt is refused and the connection ends cleanly")
    func renegotiationRefused() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client(maxVersion: TLS1_2_VERSION)
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        #expect(SSL_renegotiate(client.ssl) == 1)
        #expect(client.handshake() == .inProgress)
        try harness.pump(client)
        // The server answers no_renegotiation; OpenSSL's client gives up with a fatal alert.
        #expect(client.read().failed)
        #expect(client.errors.contains { $0.contains("no renegotiation") }, "client: \(client.errors)")
        try harness.pump(client)
        #expect(!harness.channel.isActive)
        #expect(harness.recorder.received.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    // MARK: Resumption

    @Test("a session ticket from one connection resumes the next; a ticket from another key ring does not")
    func resumption() throws {
        let store = try Self.defaultStore()
        let first = try Harness(store: store)
        let firstClient = try Self.client()
        #expect(try first.pump(firstClient) == .done, "client: \(firstClient.errors)")
        // The NewSessionTicket follows the handshake; reading processes it.
        #expect(!firstClient.read().failed)
        let session = try #require(firstClient.takeSession())

        let second = try Harness(store: store)
        let secondClient = try Self.client(session: session)
        #expect(try second.pump(secondClient) == .done, "client: \(secondClient.errors)")
        #expect(secondClient.sessionReused)
        #expect(second.recorder.handshakes.first?.serverName == "demo.localhost")
        #expect(second.errorQueueLeftovers.isEmpty)

        // TLS 1.3 tickets are used once: the resumed connection brings a new one, which resumes the next.
        #expect(!secondClient.read().failed)
        let renewed = try #require(secondClient.takeSession())
        #expect(!renewed.ticket.isEmpty)
        #expect(renewed.ticket != session.ticket, "the resumed connection brought no new ticket")
        let chained = try Harness(store: store)
        let chainedClient = try Self.client(session: renewed)
        #expect(try chained.pump(chainedClient) == .done, "client: \(chainedClient.errors)")
        #expect(chainedClient.sessionReused)

        // Same certificate, other ring (a restart): the ticket cannot be decrypted, a full handshake follows.
        let third = try Harness(store: try Self.defaultStore())
        let thirdClient = try Self.client(session: session)
        #expect(try third.pump(thirdClient) == .done, "client: \(thirdClient.errors)")
        #expect(!thirdClient.sessionReused)
        #expect(third.recorder.handshakes.count == 1)
        #expect(third.errorQueueLeftovers.isEmpty)
    }

    // MARK: Closing

    @Test("the client's close_notify reaches the layer above as inputClosed; the server can still answer")
    func clientCloseNotify() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        try client.write(Array("last request".utf8))
        client.shutdown()
        try harness.send(client.takeOutput())

        #expect(harness.recorder.received == Array("last request".utf8))
        #expect(harness.recorder.events == [.handshakeCompleted, .read, .inputClosed])
        // A half-close, as with TCP: the response can still be sent.
        #expect(harness.channel.isActive)
        try harness.onServer { try harness.channel.writeOutbound(ByteBuffer(string: "last response")) }
        client.feed(try harness.takeServerOutput())
        #expect(client.read().bytes == Array("last response".utf8))
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    @Test("closing the channel sends close_notify, which the client reads as a clean end")
    func serverCloseNotify() throws {
        let harness = try Harness(store: try Self.defaultStore())
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")
        client.feed(try harness.takeServerOutput())
        _ = client.read()

        harness.closeFromServer()
        #expect(!harness.channel.isActive)
        client.feed(try harness.takeServerOutput())
        let read = client.read()
        #expect(read.closeNotify)
        #expect(!read.failed, "client: \(client.errors)")
        #expect(client.receivedShutdown)
        #expect(harness.errorQueueLeftovers.isEmpty)
    }

    // MARK: Not TLS

    @Test("plain HTTP on the TLS port gets a readable 400 and the connection closes")
    func plainHTTP() throws {
        let harness = try Harness(store: try Self.defaultStore())
        try harness.send("GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")

        let expected =
            "HTTP/1.1 400 Bad Request\r\nServer: switchyard\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: 62\r\nConnection: close\r\n\r\n"
            + "400 Bad Request: this port speaks HTTPS; use an https:// URL.\n"
        #expect(String(decoding: try harness.takeServerOutput(), as: UTF8.self) == expected)
        #expect(!harness.channel.isActive)
        #expect(harness.recorder.received.isEmpty)
        #expect(harness.recorder.handshakes.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    @Test(
        "bytes that are neither TLS nor HTTP close the connection without an answer",
        arguments: [[0x00, 0x01, 0x02, 0xFF], [0x80, 0x2E, 0x01, 0x03, 0x01], Array("\r\n\r\n".utf8)] as [[UInt8]]
    )
    func garbage(bytes: [UInt8]) throws {
        let harness = try Harness(store: try Self.defaultStore())
        try harness.send(bytes)

        #expect(try harness.takeServerOutput().isEmpty)
        #expect(!harness.channel.isActive)
        #expect(harness.recorder.received.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    @Test(
        "a handshake record holding junk fails the handshake with an alert and delivers nothing",
        arguments: [
            // An unknown handshake message type.
            [0x16, 0x03, 0x01, 0x00, 0x0C, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77],
            // A ClientHello whose body is junk.
            [0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0xFF, 0xFF, 0xFF, 0xFF],
            // Application data before any handshake.
            [0x16, 0x03, 0x01, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04],
        ] as [[UInt8]]
    )
    func junkHandshakeRecord(bytes: [UInt8]) throws {
        let harness = try Harness(store: try Self.defaultStore())
        try harness.send(bytes)

        #expect(!harness.channel.isActive)
        #expect(Self.containsAlertRecord(try harness.takeServerOutput()))
        #expect(harness.recorder.received.isEmpty)
        #expect(harness.recorder.handshakes.isEmpty)
        #expect(harness.errorQueueLeftovers.isEmpty)
        #expect(ERR_peek_error() == 0)
    }

    // MARK: Handshake timeout

    @Test("a connection that does not finish the handshake in time is closed; silence and a stalled one alike")
    func handshakeTimeout() throws {
        for sendsClientHello in [false, true] {
            let harness = try Harness(store: try Self.defaultStore(), handshakeTimeout: .seconds(10))
            if sendsClientHello {
                let client = try Self.client()
                #expect(client.handshake() == .inProgress)
                try harness.send(client.takeOutput())
                #expect(try !harness.takeServerOutput().isEmpty)
            }
            harness.advanceTime(by: .seconds(9))
            #expect(harness.channel.isActive)
            harness.advanceTime(by: .seconds(2))
            #expect(!harness.channel.isActive)
            #expect(harness.recorder.inactive)
            #expect(harness.recorder.handshakes.isEmpty)
            #expect(harness.errorQueueLeftovers.isEmpty)
            #expect(ERR_peek_error() == 0)
        }
    }

    @Test("a completed handshake is not closed by the handshake timer")
    func completedHandshakeOutlivesTimer() throws {
        let harness = try Harness(store: try Self.defaultStore(), handshakeTimeout: .seconds(10))
        let client = try Self.client()
        #expect(try harness.pump(client) == .done, "client: \(client.errors)")

        harness.advanceTime(by: .seconds(60))
        #expect(harness.channel.isActive)
        try client.write(Array("still here".utf8))
        try harness.send(client.takeOutput())
        #expect(harness.recorder.received == Array("still here".utf8))
        #expect(harness.errorQueueLeftovers.isEmpty)
    }
}

/// A log handler that keeps what it is given, for tests that check what a log line says.
final class CapturedLog: LogHandler, @unchecked Sendable {
    // @unchecked: the tests that use it log from one thread (the embedded event loop's, which is the test's), and
    // read the entries afterwards on that same thread.
    struct Entry {
        var message: String
        var metadata: String
    }

    private(set) var entries: [Entry] = []
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = (event.metadata ?? [:]).map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")
        entries.append(Entry(message: event.message.description, metadata: fields))
    }
}
