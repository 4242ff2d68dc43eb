import NIOCore
import Testing

@testable import Switchyard

#if canImport(Glibc)
import Glibc
#endif

/// A connected pair of non-blocking Unix stream sockets, closed by the test.
private func socketPair(sendBuffer: CInt? = nil) throws -> (SocketDescriptor, SocketDescriptor) {
    var fds: [CInt] = [-1, -1]
    let flags = CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue)
    try #require(socketpair(AF_UNIX, flags, 0, &fds) == 0)
    if var size = sendBuffer {
        _ = setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<CInt>.size))
        _ = setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<CInt>.size))
    }
    return (SocketDescriptor(raw: fds[0]), SocketDescriptor(raw: fds[1]))
}

/// Reads everything `socket` has now.
private func drain(_ socket: SocketDescriptor, into received: inout [UInt8]) {
    var buffer = ByteBuffer()
    while case .read = socket.read(into: &buffer, minimum: 64 * 1024) {}
    received += buffer.readableBytesView
}

@Suite("The loop's slot table")
struct SlotTableTests {
    @Test("a token names its entry until the slot is freed; a reused slot does not answer to the old token")
    func generations() {
        var table = SlotTable<String>()
        let first = table.insert("a")
        let second = table.insert("b")
        #expect(table[first] == "a")
        #expect(table[second] == "b")
        table.remove(first)
        #expect(table[first] == nil)
        // The freed slot is reused with a new generation: an event queued for "a" must not reach "c".
        let third = table.insert("c")
        #expect(third & 0xffff_ffff == first & 0xffff_ffff)
        #expect(third != first)
        #expect(table[first] == nil)
        #expect(table[third] == "c")
        // Freeing by the stale token frees nothing.
        table.remove(first)
        #expect(table[third] == "c")
        #expect(table.capacity == 2)
        #expect(table[UInt64.max] == nil)
    }
}

@Suite("The loop's socket calls and output queue, on socket pairs")
struct SocketDescriptorTests {
    @Test("reads report EAGAIN, bytes, and the peer's half-close as values")
    func reads() throws {
        let (left, right) = try socketPair()
        defer {
            left.close()
            right.close()
        }
        var buffer = ByteBuffer()
        #expect(right.read(into: &buffer, minimum: 1024) == .wouldBlock)
        let sent = "GET / HTTP/1.1\r\n\r\n"
        #expect(Array(sent.utf8).withUnsafeBytes { left.write($0) } == .wrote(sent.utf8.count))
        #expect(right.read(into: &buffer, minimum: 1024) == .read(sent.utf8.count))
        #expect(buffer.readString(length: buffer.readableBytes) == sent)
        left.shutdownOutput()
        #expect(right.read(into: &buffer, minimum: 1024) == .endOfInput)
        // The other direction still works after the half-close.
        #expect(Array("ok".utf8).withUnsafeBytes { right.write($0) } == .wrote(2))
        #expect(left.read(into: &buffer, minimum: 1024) == .read(2))
    }

    @Test("a write to a peer that is gone fails with EPIPE instead of raising SIGPIPE")
    func writeToClosedPeer() throws {
        let (left, right) = try socketPair()
        right.close()
        defer { left.close() }
        let result = Array("x".utf8).withUnsafeBytes { left.write($0) }
        #expect(result == .failed(EPIPE))
    }

    @Test("a TCP reset is a failed read, and a refused connect a failure of the connect")
    func resetAndRefused() throws {
        let listener = try SocketDescriptor.listen(on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 8)
        defer { listener.close() }
        let address = try #require(listener.localAddress())
        let (client, _) = try SocketDescriptor.connect(to: address)
        defer { client.close() }
        var accepted: SocketDescriptor?
        for _ in 0..<1000 where accepted == nil {
            if case .accepted(let socket, let peer) = listener.accept() {
                #expect(peer == "127.0.0.1")
                accepted = socket
            } else {
                usleep(1000)
            }
        }
        let server = try #require(accepted)
        // SO_LINGER 0: close sends a reset.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(server.raw, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        server.close()
        var buffer = ByteBuffer()
        var result = client.read(into: &buffer, minimum: 1024)
        for _ in 0..<1000 where result == .wouldBlock {
            usleep(1000)
            result = client.read(into: &buffer, minimum: 1024)
        }
        #expect(result == .failed(ECONNRESET))

        // Nobody listens on the closed listener's port any more.
        let port = address.port ?? 0
        listener.close()
        let closed = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        do {
            let (socket, inProgress) = try SocketDescriptor.connect(to: closed)
            defer { socket.close() }
            #expect(inProgress)
            var code: CInt = 0
            for _ in 0..<1000 {
                code = socket.pendingError()
                if code != 0 { break }
                usleep(1000)
            }
            #expect(code == ECONNREFUSED)
        } catch {
            #expect(error.code == ECONNREFUSED)
        }
    }

    @Test(
        "partial writes: the queue keeps what the socket did not take, in order, and pauses the writer between the marks"
    )
    func partialWrites() throws {
        let (left, right) = try socketPair(sendBuffer: 16 * 1024)
        defer {
            left.close()
            right.close()
        }
        var queue = OutboundQueue()
        var expected: [UInt8] = []
        for index in 0..<32 {
            let chunk = [UInt8](repeating: UInt8(index), count: 8 * 1024)
            expected += chunk
            queue.append(ByteBuffer(bytes: chunk))
        }
        queue.append(ByteBuffer())  // empty buffers queue nothing
        #expect(queue.pendingBytes == 256 * 1024)
        #expect(!queue.isWritable)
        // The peer reads nothing yet: the socket takes what fits and the rest stays.
        #expect(queue.flush(to: left) == .wouldBlock)
        #expect(queue.pendingBytes > 0 && queue.pendingBytes < 256 * 1024)
        #expect(queue.flush(to: left) == .wouldBlock)
        var received: [UInt8] = []
        var rounds = 0
        while !queue.isEmpty, rounds < 10_000 {
            drain(right, into: &received)
            _ = queue.flush(to: left)
            rounds += 1
        }
        #expect(queue.isEmpty)
        #expect(queue.isWritable)
        drain(right, into: &received)
        #expect(received == expected)
        #expect(queue.flush(to: left) == .flushed)
    }

    @Test("writability goes off above the high mark and comes back only below the low mark")
    func watermarks() throws {
        let (left, right) = try socketPair(sendBuffer: 4 * 1024)
        defer {
            left.close()
            right.close()
        }
        var queue = OutboundQueue()
        queue.append(ByteBuffer(repeating: 1, count: OutboundQueue.highWatermark))
        #expect(queue.isWritable)
        queue.append(ByteBuffer(repeating: 2, count: 1))
        #expect(!queue.isWritable)
        var received: [UInt8] = []
        var rounds = 0
        while !queue.isEmpty, rounds < 10_000 {
            let before = queue.pendingBytes
            _ = queue.flush(to: left)
            if queue.pendingBytes >= OutboundQueue.lowWatermark {
                #expect(!queue.isWritable, "writable again at \(queue.pendingBytes) bytes (was \(before))")
            } else {
                #expect(queue.isWritable)
            }
            drain(right, into: &received)
            rounds += 1
        }
        drain(right, into: &received)
        #expect(received.count == OutboundQueue.highWatermark + 1)
        #expect(received.last == 2)
    }

    @Test("a queue whose peer left fails its flush with the error, and removeAll forgets the bytes")
    func failedFlush() throws {
        let (left, right) = try socketPair()
        defer { left.close() }
        right.close()
        var queue = OutboundQueue()
        queue.append(ByteBuffer(string: "a"))
        queue.append(ByteBuffer(string: "b"))
        #expect(queue.flush(to: left) == .failed(EPIPE))
        queue.removeAll()
        #expect(queue.isEmpty && queue.pendingBytes == 0 && queue.isWritable)
    }
}
