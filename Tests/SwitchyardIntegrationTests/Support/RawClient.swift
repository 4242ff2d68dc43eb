#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A blocking TCP client for exact-byte tests: it sends what a test writes and returns what comes back, with a
/// deadline on every read so no test can hang.
struct RawClient: ~Copyable {
    private let descriptor: Int32

    init(port: Int) throws {
        self.descriptor = try Self.connectedSocket(port: port)
    }

    /// A blocking TCP socket connected to 127.0.0.1:`port`; the caller closes it. `configure` runs on the socket
    /// before it connects (for options that must be set first, such as buffer sizes).
    static func connectedSocket(port: Int, configure: (Int32) -> Void = { _ in }) throws -> Int32 {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw RawClientError.socket(errno) }
        configure(descriptor)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            close(descriptor)
            throw RawClientError.connect(errno)
        }
        return descriptor
    }

    deinit {
        close(descriptor)
    }

    func send(_ text: String) throws {
        var bytes = Array(text.utf8)
        try send(bytes: &bytes)
    }

    func send(bytes: inout [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            guard written > 0 else { throw RawClientError.write(errno) }
            offset += written
        }
    }

    /// Half-closes the sending side.
    func shutdownOutput() {
        shutdown(descriptor, Int32(SHUT_WR))
    }

    /// Reads until the server closes, `expectedBytes` have come, or `timeout` seconds pass.
    /// - Returns: the bytes read and whether the server closed the connection.
    func receive(timeout: Double = 5, until expectedBytes: Int = Int.max) -> (text: String, closed: Bool) {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Self.now() + timeout
        while received.count < expectedBytes {
            let remaining = deadline - Self.now()
            guard remaining > 0 else { break }
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(remaining * 1000))
            guard ready > 0 else { break }
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress!, $0.count) }
            if count <= 0 {
                return (String(decoding: received, as: UTF8.self), true)
            }
            received.append(contentsOf: buffer[0..<count])
        }
        return (String(decoding: received, as: UTF8.self), false)
    }

    /// Reads one whole response whose body has a `Content-Length` (enough for the balancer's own answers and the
    /// test backend's).
    func receiveResponse(timeout: Double = 5) -> String {
        var text = ""
        let deadline = Self.now() + timeout
        while Self.now() < deadline {
            let (more, closed) = receive(timeout: max(0.01, deadline - Self.now()), until: 1)
            text += more
            if let end = text.range(of: "\r\n\r\n") {
                let head = text[..<end.lowerBound].lowercased()
                var length = 0
                if let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }) {
                    length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: " ")) ?? 0
                }
                let have = text.utf8.count - text[..<end.upperBound].utf8.count
                if have >= length { return text }
            }
            if closed { return text }
        }
        return text
    }

    private static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}

enum RawClientError: Error {
    case socket(Int32)
    case connect(Int32)
    case write(Int32)
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        var result = self
        while let first = result.first, set.contains(first) { result = result.dropFirst() }
        while let last = result.last, set.contains(last) { result = result.dropLast() }
        return result
    }
}
