import Foundation
import Logging
import NIOCore
import Testing

@testable import Switchyard

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The admin server on a real unix socket, with raw clients that misbehave: it caps its connections, closes idle
/// ones, and stops reading a client that pipelines requests without reading the answers.
@Suite("Admin server budget", .serialized)
struct AdminServerIntegrationTests {
    /// An ``AdminServer`` running in a task on a temporary socket.
    private struct RunningAdmin {
        let path: String
        let task: Task<Void, any Error>

        static func start(limits: AdminServer.Limits) async throws -> RunningAdmin {
            let backend = Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))
            let shop = Tenant(name: "shop", domains: ["shop.test"], backends: [backend])
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let api = AdminAPI(routes: RouteSource(try RouteTable(tenants: [shop])), logger: logger) { 0 }
            let path = NSTemporaryDirectory() + "switchyard-admin-test-\(UUID().uuidString.prefix(8)).sock"
            let server = AdminServer(path: path, logger: logger, api: api, limits: limits)
            let task = Task { try await server.run() }
            let admin = RunningAdmin(path: path, task: task)
            // Ready once a whole request is answered and the probe's connection is closed again (so it no longer
            // counts against the cap).
            // The probe blocks its thread while it waits, and the server's start needs a thread of the same shared
            // pool, which the rest of the suite keeps busy: short waits, many tries, a generous deadline.
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                if let probe = try? UnixClient(path: path) {
                    try? probe.send("GET /v1/status HTTP/1.1\r\nConnection: close\r\n\r\n")
                    if probe.receive(timeout: 0.5).closed { return admin }
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            admin.stop()
            throw UnixClientError.notReady
        }

        func stop() {
            task.cancel()
        }
    }

    private static let request = "GET /v1/status HTTP/1.1\r\n\r\n"

    @Test("connections above the cap are closed at accept; a slot that frees up is used again")
    func connectionCap() async throws {
        let admin = try await RunningAdmin.start(limits: AdminServer.Limits(maximumConnections: 4))
        defer { admin.stop() }
        var clients: [UnixClient] = []
        for _ in 0..<4 {
            let client = try UnixClient(path: admin.path)
            try client.send(Self.request)
            #expect(client.receive(timeout: 5, untilText: "\n}").text.hasPrefix("HTTP/1.1 200 OK"))
            clients.append(client)
        }
        let refused = try UnixClient(path: admin.path)
        try? refused.send(Self.request)
        let answer = refused.receive(timeout: 5)
        #expect(answer.closed, "a fifth connection was kept open over a cap of 4")
        #expect(answer.text == "", "a fifth connection was answered over a cap of 4")

        clients.removeLast()
        var served = false
        for _ in 0..<50 where !served {
            let client = try UnixClient(path: admin.path)
            try? client.send(Self.request)
            served = client.receive(timeout: 5, untilText: "\n}").text.hasPrefix("HTTP/1.1 200 OK")
            if !served { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(served, "no connection was served after one of the four closed")
    }

    @Test("an idle connection is closed after the idle timeout; requests keep it open")
    func idleTimeout() async throws {
        // 2 s, so that a loaded machine (the whole suite runs in parallel) cannot stretch the busy client's pauses
        // past it.
        let admin = try await RunningAdmin.start(limits: AdminServer.Limits(idleTimeout: .seconds(2)))
        defer { admin.stop() }
        let busy = try UnixClient(path: admin.path)
        for _ in 0..<6 {
            try busy.send(Self.request)
            #expect(busy.receive(timeout: 5, untilText: "\n}").text.hasPrefix("HTTP/1.1 200 OK"))
            // A blocking pause, not Task.sleep: on a loaded run the concurrency pool can resume a sleeping task
            // seconds late, past the idle timeout, and the busy client would be closed for a pause it never made.
            usleep(100_000)
        }
        let started = ContinuousClock.now
        let silent = try UnixClient(path: admin.path)
        #expect(silent.receive(timeout: 10).closed, "an idle admin connection was not closed")
        #expect(ContinuousClock.now - started >= .milliseconds(1900))
        #expect(busy.receive(timeout: 10).closed)
    }

    @Test("a client pipelining requests without reading makes the server stop reading; every answer comes after")
    func pipelinedWithoutReading() async throws {
        let admin = try await RunningAdmin.start(limits: AdminServer.Limits())
        defer { admin.stop() }
        let client = try UnixClient(path: admin.path, nonBlocking: true)
        let request = Array(Self.request.utf8)
        let chunk = Array([[UInt8]](repeating: request, count: 100).joined())
        // Before the fix the server read (and answered into memory) everything: the bound is that many requests.
        let maximumRequests = 60_000
        var sent = 0
        var offset = 0
        var blocked = false
        let deadline = ContinuousClock.now + .seconds(30)
        while sent < maximumRequests * request.count, ContinuousClock.now < deadline {
            let written = chunk[offset...].withUnsafeBytes { client.write($0) }
            if written > 0 {
                sent += written
                offset = (offset + written) % chunk.count
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                // The server stopped reading if the socket stays full for long (a busy server drains it sooner).
                if !client.waitWritable(timeout: 3) {
                    blocked = true
                    break
                }
            } else {
                Issue.record("write failed: \(String(cString: strerror(errno)))")
                return
            }
        }
        #expect(blocked, "the server kept reading \(sent / request.count) pipelined requests nobody read answers to")
        #expect(sent < maximumRequests * request.count)

        // Reading the answers lets the server go on: every request is answered, in order, on the same connection.
        let requests = (sent + request.count - 1) / request.count
        let rest = Array(request[(sent % request.count == 0 ? request.count : sent % request.count)...])
        let answers = try client.countAnswers(requests, sendingFirst: rest, timeout: 30)
        #expect(answers == requests)
    }
}

enum UnixClientError: Error {
    case socket(Int32)
    case connect(Int32)
    case write(Int32)
    case notReady
}

/// A stream client on a unix socket, blocking unless asked, with a deadline on every wait.
private final class UnixClient {
    private let descriptor: Int32

    init(path: String, nonBlocking: Bool = false) throws {
        guard let descriptor = AdminServer.connectUnixSocket(path) else { throw UnixClientError.connect(errno) }
        if nonBlocking {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        }
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write($0) }
            guard written > 0 else { throw UnixClientError.write(errno) }
            offset += written
        }
    }

    /// One `send`, as the system call does it (`MSG_NOSIGNAL`: a closed peer is an error, not a signal).
    func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        return Glibc.send(descriptor, base, bytes.count, Int32(MSG_NOSIGNAL))
    }

    /// Whether the socket can take more within `timeout` seconds.
    func waitWritable(timeout: Double) -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        return poll(&poller, 1, Int32(timeout * 1000)) > 0
    }

    /// Reads until the peer closes, `untilText` has come, or `timeout` seconds pass.
    func receive(timeout: Double, untilText: String? = nil) -> (text: String, closed: Bool) {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if let untilText, String(decoding: received, as: UTF8.self).contains(untilText) { break }
            let remaining = deadline - ContinuousClock.now
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let milliseconds =
                remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
            guard poll(&poller, 1, Int32(milliseconds + 1)) > 0 else { break }
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count <= 0 {
                return (String(decoding: received, as: UTF8.self), true)
            }
            received.append(contentsOf: buffer[0..<count])
        }
        return (String(decoding: received, as: UTF8.self), false)
    }

    /// Sends `pending`, then reads until `expected` answers have come (counted by their status lines), the peer
    /// closes or `timeout` seconds pass; returns how many came.
    func countAnswers(_ expected: Int, sendingFirst pending: [UInt8], timeout: Double) throws -> Int {
        var pending = pending[...]
        let statusLine = Array("HTTP/1.1 200 OK\r\n".utf8)
        var answers = 0
        // Matched bytes of the status line, carried across reads.
        var matched = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while answers < expected, ContinuousClock.now < deadline {
            var poller = pollfd(
                fd: descriptor,
                events: Int16(POLLIN) | (pending.isEmpty ? 0 : Int16(POLLOUT)),
                revents: 0
            )
            guard poll(&poller, 1, 1000) >= 0 else { break }
            if !pending.isEmpty, poller.revents & Int16(POLLOUT) != 0 {
                let written = pending.withUnsafeBytes { write($0) }
                if written > 0 { pending = pending.dropFirst(written) }
            }
            guard poller.revents & Int16(POLLIN) != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 { continue }
            for byte in buffer[0..<count] {
                if byte == statusLine[matched] {
                    matched += 1
                    if matched == statusLine.count {
                        answers += 1
                        matched = 0
                    }
                } else {
                    matched = byte == statusLine[0] ? 1 : 0
                }
            }
        }
        return answers
    }
}
