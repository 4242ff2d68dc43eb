import COpenSSL
import NIOCore

/// One server-side TLS session: the `SSL` object, the ciphertext buffers its BIO reads and writes, and the
/// certificate SNI selected. Owned by one ``TLSServerHandler`` and used on its event loop only.
final class TLSConnection {
    let ssl: OpaquePointer
    private let store: CertificateStore
    /// The context whose certificate is being served; changed by SNI.
    private(set) var context: TLSContext
    /// The SNI name the client sent, if any.
    private(set) var serverName: String?
    /// The keys of session tickets, for OpenSSL's ticket callback.
    var ticketKeys: TicketKeyRing {
        store.ticketKeys
    }
    /// Ciphertext received and not yet consumed by OpenSSL.
    private var inbound: ByteBuffer?
    /// Ciphertext OpenSSL produced, waiting to be written to the network.
    private var outbound: ByteBuffer
    private let allocator: ByteBufferAllocator
    /// An outbound buffer larger than this is handed over whole rather than kept for the next write, so that a
    /// connection that once sent a large body does not hold its buffer while idle.
    private static let retainedOutboundCapacity = 32 * 1024
    /// Bytes a TLS record adds to its plaintext: a 5-byte header, the content type byte and a 16-byte AEAD tag
    /// (TLS 1.3); TLS 1.2's explicit nonce fits in the margin.
    private static let recordOverhead = 64
    private static let maximumRecordPlaintext = 16 * 1024

    init(store: CertificateStore, allocator: ByteBufferAllocator) throws(TLSError) {
        OpenSSLErrorQueue.clear()
        guard let ssl = SSL_new(store.defaultContext.pointer) else {
            throw .drainingQueue("cannot create a TLS session")
        }
        guard let method = ByteBufferBIO.method, let bio = BIO_new(method) else {
            SSL_free(ssl)
            throw .drainingQueue("cannot create a TLS BIO")
        }
        // One BIO for both directions: SSL_set_bio takes the one reference BIO_new gave.
        SSL_set_bio(ssl, bio, bio)
        SSL_set_accept_state(ssl)
        self.ssl = ssl
        self.store = store
        self.context = store.defaultContext
        self.allocator = allocator
        self.outbound = allocator.buffer(capacity: 0)
        let unretained = Unmanaged.passUnretained(self).toOpaque()
        BIO_set_data(bio, unretained)
        SSL_set_ex_data(ssl, 0, unretained)
    }

    deinit {
        // Frees the BIO too.
        SSL_free(ssl)
    }

    /// Called from OpenSSL's SNI callback during the handshake.
    func selectContext(serverName: String?) {
        self.serverName = serverName
        let selected = store.context(forServerName: serverName)
        if selected !== context {
            _ = SSL_set_SSL_CTX(ssl, selected.pointer)
            context = selected
        }
    }

    func receive(_ buffer: ByteBuffer) {
        if var pending = inbound, pending.readableBytes > 0 {
            inbound = nil
            var buffer = buffer
            pending.writeBuffer(&buffer)
            inbound = pending
        } else {
            inbound = buffer
        }
    }

    var pendingCiphertext: Int {
        inbound?.readableBytes ?? 0
    }

    /// At most how much plaintext reads can return now: what OpenSSL holds of the current record plus the
    /// ciphertext not yet given to it (a record's plaintext is never longer than its ciphertext).
    var readablePlaintextBound: Int {
        Int(SSL_pending(ssl)) + pendingCiphertext
    }

    /// Copies buffered ciphertext into OpenSSL's buffer; called by the BIO.
    func readCiphertext(into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard var buffer = inbound, buffer.readableBytes > 0, let base = destination.baseAddress else { return 0 }
        inbound = nil
        let count = min(destination.count, buffer.readableBytes)
        buffer.readWithUnsafeReadableBytes { source in
            base.copyMemory(from: source.baseAddress!, byteCount: count)
            return count
        }
        // Drop the buffer once drained so the channel can reuse its receive buffer.
        inbound = buffer.readableBytes > 0 ? buffer : nil
        return count
    }

    /// Makes room for the ciphertext of `plaintext` bytes before they are written, so that a large write fills one
    /// buffer instead of growing (and copying) it record by record.
    func reserveOutbound(forPlaintext plaintext: Int) {
        let records = plaintext / Self.maximumRecordPlaintext + 1
        let needed = plaintext + records * Self.recordOverhead
        recycleOutbound(minimumCapacity: needed)
        outbound.reserveCapacity(minimumWritableBytes: needed)
    }

    /// Appends ciphertext OpenSSL produced; called by the BIO.
    func appendCiphertext(_ bytes: UnsafeRawBufferPointer) {
        recycleOutbound(minimumCapacity: bytes.count)
        outbound.writeBytes(bytes)
    }

    /// Starts over in the outbound buffer once everything in it was taken. Once the channel has written (and let go
    /// of) the slice taken last, clearing the buffer costs nothing, where a new buffer per write cost an allocation
    /// per response; while the channel still holds it, a new one is started rather than the old one copied.
    private func recycleOutbound(minimumCapacity: Int) {
        guard outbound.readableBytes == 0 else { return }
        if outbound.modifyIfUniquelyOwned({ $0.clear() }) == nil {
            outbound = allocator.buffer(capacity: max(minimumCapacity, min(outbound.capacity, 4096)))
        }
    }

    /// Takes the ciphertext produced so far. A buffer grown past ``retainedOutboundCapacity`` goes whole, so an idle
    /// connection does not keep it; a smaller one stays, for the next write.
    func takeOutbound() -> ByteBuffer? {
        guard outbound.readableBytes > 0 else { return nil }
        guard outbound.capacity <= Self.retainedOutboundCapacity else {
            defer { outbound = allocator.buffer(capacity: 0) }
            return outbound
        }
        return outbound.readSlice(length: outbound.readableBytes)
    }
}

@available(*, unavailable)
extension TLSConnection: Sendable {}
