import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Bytes written to a socket of the loop and not yet taken by the kernel, in order, with the writability the
/// proxy's backpressure follows: unwritable above ``highWatermark`` queued bytes, writable again below
/// ``lowWatermark`` (SwiftNIO's channel defaults, so both transports pace the same way).
///
/// A flush sends the queued buffers with one gathering write; what the kernel did not take stays here until the
/// socket reports it can take more (`EPOLLOUT`).
struct OutboundQueue {
    static let lowWatermark = 32 * 1024
    static let highWatermark = 64 * 1024
    /// Buffers gathered into one write at most.
    static let gatherLimit = 64

    private var buffers = CircularBuffer<ByteBuffer>(initialCapacity: 4)
    /// Bytes queued.
    private(set) var pendingBytes = 0
    /// Whether the writer may go on writing (``pendingBytes`` went over the high mark and not yet back under the
    /// low one).
    private(set) var isWritable = true

    var isEmpty: Bool {
        buffers.isEmpty
    }

    /// Queues `buffer`'s readable bytes.
    mutating func append(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        buffers.append(buffer)
        pendingBytes += buffer.readableBytes
        if isWritable, pendingBytes > Self.highWatermark {
            isWritable = false
        }
    }

    /// What a flush achieved.
    enum FlushResult: Equatable {
        /// Everything queued went.
        case flushed
        /// The socket took what it could; the rest waits for it to be writable.
        case wouldBlock
        /// The connection failed with `errno`.
        case failed(CInt)
    }

    /// Writes as much as `socket` takes now.
    mutating func flush(to socket: SocketDescriptor) -> FlushResult {
        while !buffers.isEmpty {
            let offered: Int
            let result: SocketDescriptor.WriteResult
            if buffers.count == 1 {
                offered = pendingBytes
                result = buffers[buffers.startIndex].withUnsafeReadableBytes { socket.write($0) }
            } else {
                let count = min(buffers.count, Self.gatherLimit)
                offered = count == buffers.count ? pendingBytes : offeredBytes(count)
                result = withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { vectors in
                    gather(0, count: count, into: vectors, socket: socket)
                }
            }
            switch result {
            case .wrote(let written):
                consume(written)
                // A short write means the send buffer is full: another call would only return EAGAIN.
                if written < offered { return .wouldBlock }
            case .wouldBlock:
                return .wouldBlock
            case .failed(let code):
                return .failed(code)
            }
        }
        return .flushed
    }

    /// Drops everything queued (the connection is gone).
    mutating func removeAll() {
        buffers.removeAll()
        pendingBytes = 0
        isWritable = true
    }

    private func offeredBytes(_ count: Int) -> Int {
        var total = 0
        var index = buffers.startIndex
        for _ in 0..<count {
            total += buffers[index].readableBytes
            index = buffers.index(after: index)
        }
        return total
    }

    /// Fills `vectors` with the first `count` buffers' bytes, each pinned by its own `withUnsafeReadableBytes` for
    /// as long as the write takes, and writes them.
    private func gather(
        _ position: Int,
        count: Int,
        into vectors: UnsafeMutableBufferPointer<iovec>,
        socket: SocketDescriptor
    ) -> SocketDescriptor.WriteResult {
        guard position < count else {
            return socket.write(UnsafeBufferPointer(vectors))
        }
        let index = buffers.index(buffers.startIndex, offsetBy: position)
        return buffers[index].withUnsafeReadableBytes { bytes in
            vectors[position] = iovec(
                iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress),
                iov_len: bytes.count
            )
            return gather(position + 1, count: count, into: vectors, socket: socket)
        }
    }

    private mutating func consume(_ written: Int) {
        var remaining = written
        pendingBytes -= written
        while remaining > 0, var first = buffers.first {
            if first.readableBytes <= remaining {
                remaining -= first.readableBytes
                buffers.removeFirst()
            } else {
                first.moveReaderIndex(forwardBy: remaining)
                buffers[buffers.startIndex] = first
                remaining = 0
            }
        }
        if !isWritable, pendingBytes < Self.lowWatermark {
            isWritable = true
        }
    }
}
