import CSocketLoop
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A non-blocking TCP socket of the data path's own loop (``SocketLoop``), and the system calls made on it.
///
/// Every call reports `EAGAIN` as a value, never as an error, and sends with `MSG_NOSIGNAL`: a peer that went away
/// is an `EPIPE` to handle, not a signal that kills the process.
struct SocketDescriptor: Hashable {
    /// The file descriptor.
    let raw: CInt

    /// What a read gave.
    enum ReadResult: Equatable {
        /// This many bytes were appended.
        case read(Int)
        /// Nothing to read now.
        case wouldBlock
        /// The peer closed its sending side.
        case endOfInput
        /// The connection failed (reset, timed out…), with `errno`.
        case failed(CInt)
    }

    /// What a write gave.
    enum WriteResult: Equatable {
        /// This many bytes went (possibly fewer than offered).
        case wrote(Int)
        /// The socket's send buffer is full.
        case wouldBlock
        /// The connection failed (`EPIPE`, reset…), with `errno`.
        case failed(CInt)
    }

    /// Reads at most `buffer`'s writable bytes (at least `minimum` made writable first) into it.
    func read(into buffer: inout ByteBuffer, minimum: Int) -> ReadResult {
        var result = 0
        var code: CInt = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: minimum) { pointer -> Int in
            result = Glibc.read(raw, pointer.baseAddress, pointer.count)
            if result < 0 { code = errno }
            return max(result, 0)
        }
        if result > 0 { return .read(result) }
        if result == 0 { return .endOfInput }
        switch code {
        case EAGAIN, EWOULDBLOCK, EINTR: return .wouldBlock
        default: return .failed(code)
        }
    }

    /// Sends the readable bytes of `buffers` (up to 64 of them) in one system call.
    func write(_ buffers: UnsafeBufferPointer<iovec>) -> WriteResult {
        var message = msghdr()
        message.msg_iov = UnsafeMutablePointer(mutating: buffers.baseAddress)
        message.msg_iovlen = buffers.count
        let result = sendmsg(raw, &message, c_loop_msg_nosignal)
        if result >= 0 { return .wrote(result) }
        switch errno {
        case EAGAIN, EWOULDBLOCK, EINTR: return .wouldBlock
        case let code: return .failed(code)
        }
    }

    /// Sends one contiguous run of bytes.
    func write(_ bytes: UnsafeRawBufferPointer) -> WriteResult {
        let result = send(raw, bytes.baseAddress, bytes.count, c_loop_msg_nosignal)
        if result >= 0 { return .wrote(result) }
        switch errno {
        case EAGAIN, EWOULDBLOCK, EINTR: return .wouldBlock
        case let code: return .failed(code)
        }
    }

    /// Sends a FIN once everything written so far has gone: the other direction stays open.
    func shutdownOutput() {
        _ = shutdown(raw, CInt(SHUT_WR))
    }

    /// Closes the descriptor, which also takes it out of any epoll set.
    func close() {
        _ = Glibc.close(raw)
    }

    /// The error of a non-blocking connect (0 once connected): `SO_ERROR`, which reading also clears.
    func pendingError() -> CInt {
        var code: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(raw, SOL_SOCKET, SO_ERROR, &code, &length) == 0 else { return errno }
        return code
    }

    /// Sends small writes at once (Nagle off), as SwiftNIO's bootstraps do by default.
    func disableNagle() {
        var one: CInt = 1
        _ = setsockopt(raw, CInt(IPPROTO_TCP), c_loop_tcp_nodelay, &one, socklen_t(MemoryLayout<CInt>.size))
    }

    /// A new non-blocking, close-on-exec stream socket of `address`'s family, and the family.
    private static func open(for address: SocketAddress) throws(SocketFailure) -> (SocketDescriptor, CInt) {
        let family: CInt
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        case .unixDomainSocket: family = AF_UNIX
        }
        let raw = socket(family, CInt(SOCK_STREAM.rawValue) | c_loop_sock_nonblock_cloexec, 0)
        guard raw >= 0 else { throw SocketFailure(operation: "socket", code: errno) }
        return (SocketDescriptor(raw: raw), family)
    }

    /// A non-blocking connect to `address` started: `inProgress` until the socket reports writable, or already
    /// connected (loopback sometimes is).
    static func connect(to address: SocketAddress) throws(SocketFailure) -> (SocketDescriptor, inProgress: Bool) {
        let (descriptor, family) = try open(for: address)
        let raw = descriptor.raw
        if family != AF_UNIX { descriptor.disableNagle() }
        let result = address.withSockAddr { pointer, length in
            Glibc.connect(raw, pointer, socklen_t(length))
        }
        if result == 0 { return (descriptor, false) }
        let code = errno
        guard code == EINPROGRESS else {
            descriptor.close()
            throw SocketFailure(operation: "connect", code: code)
        }
        return (descriptor, true)
    }

    /// A listening socket on `address` with `SO_REUSEPORT` (one per loop: the kernel spreads connections over
    /// them) and `SO_REUSEADDR`.
    static func listen(on address: SocketAddress, backlog: CInt) throws(SocketFailure) -> SocketDescriptor {
        let (descriptor, family) = try open(for: address)
        let raw = descriptor.raw
        var one: CInt = 1
        let size = socklen_t(MemoryLayout<CInt>.size)
        _ = setsockopt(raw, SOL_SOCKET, SO_REUSEADDR, &one, size)
        _ = setsockopt(raw, SOL_SOCKET, SO_REUSEPORT, &one, size)
        if family == AF_INET6 {
            // `[::]` serves IPv6 only, as SwiftNIO's listeners do; IPv4 is a listen address of its own.
            _ = setsockopt(raw, CInt(IPPROTO_IPV6), IPV6_V6ONLY, &one, size)
        }
        let bound = address.withSockAddr { pointer, length in Glibc.bind(raw, pointer, socklen_t(length)) }
        guard bound == 0 else {
            let code = errno
            descriptor.close()
            throw SocketFailure(operation: "bind", code: code)
        }
        guard Glibc.listen(raw, backlog) == 0 else {
            let code = errno
            descriptor.close()
            throw SocketFailure(operation: "listen", code: code)
        }
        return descriptor
    }

    /// The address the socket is bound to.
    func localAddress() -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(raw, $0, &length) }
        }
        guard result == 0 else { return nil }
        return Self.address(storage)
    }

    /// What an accept gave.
    enum AcceptResult {
        /// A connection, non-blocking, with its peer's IP address as text.
        case accepted(SocketDescriptor, peer: String)
        /// No connection is waiting.
        case wouldBlock
        /// Accepting failed with `errno` (`EMFILE` and its kin: see ``DescriptorLimit/isLocalShortage(errno:)``).
        case failed(CInt)
    }

    /// Takes the next waiting connection.
    func accept() -> AcceptResult {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                c_loop_accept(raw, $0, &length)
            }
        }
        guard result >= 0 else {
            switch errno {
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            // The connection was reset while queued, or the call was interrupted: try the next one.
            case ECONNABORTED, EINTR, EPROTO: return accept()
            case let code: return .failed(code)
            }
        }
        let descriptor = SocketDescriptor(raw: result)
        if storage.ss_family != sa_family_t(AF_UNIX) { descriptor.disableNagle() }
        return .accepted(descriptor, peer: Self.ipAddress(storage) ?? "unknown")
    }

    /// An IPv4 or IPv6 address as text (`127.0.0.1`, `::1`).
    static func ipAddress(_ storage: sockaddr_storage) -> String? {
        var storage = storage
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let converted: UnsafePointer<CChar>? = withUnsafePointer(to: &storage) { pointer in
            switch CInt(pointer.pointee.ss_family) {
            case AF_INET:
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    var bytes = address.pointee.sin_addr
                    return inet_ntop(AF_INET, &bytes, &text, socklen_t(text.count))
                }
            case AF_INET6:
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var bytes = address.pointee.sin6_addr
                    return inet_ntop(AF_INET6, &bytes, &text, socklen_t(text.count))
                }
            default:
                return nil
            }
        }
        guard converted != nil else { return nil }
        let length = text.firstIndex(of: 0) ?? text.count
        return String(decoding: text[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func address(_ storage: sockaddr_storage) -> SocketAddress? {
        let host = ipAddress(storage) ?? ""
        var storage = storage
        return withUnsafePointer(to: &storage) { pointer -> SocketAddress? in
            switch CInt(pointer.pointee.ss_family) {
            case AF_INET:
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    SocketAddress(address.pointee, host: host)
                }
            case AF_INET6:
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    SocketAddress(address.pointee, host: host)
                }
            default:
                return nil
            }
        }
    }
}

/// A system call on a socket failed.
struct SocketFailure: Error, CustomStringConvertible {
    /// The call: `socket`, `connect`, `bind`…
    let operation: StaticString
    /// Its `errno`.
    let code: CInt

    var description: String {
        "\(operation) failed: \(String(cString: strerror(code))) (errno \(code))"
    }
}
