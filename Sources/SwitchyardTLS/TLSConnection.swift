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
    /// A drained outbound buffer larger than this is dropped rather than kept for the next write, so that a
    /// connection that once sent a large body does not hold its buffer while idle.
    private static let retainedOutboundCapacity = 32 * 1024

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

    /// Appends ciphertext OpenSSL produced; called by the BIO.
    ///
    /// The buffer is reused from one write to the next: once the channel has written (and let go of) the slice
    /// taken last, clearing it costs nothing, where a new buffer per write cost an allocation per response.
    func appendCiphertext(_ bytes: UnsafeRawBufferPointer) {
        if outbound.readableBytes == 0,
            outbound.capacity > Self.retainedOutboundCapacity || outbound.modifyIfUniquelyOwned({ $0.clear() }) == nil
        {
            outbound = allocator.buffer(capacity: bytes.count)
        }
        outbound.writeBytes(bytes)
    }

    /// Takes the ciphertext produced so far.
    func takeOutbound() -> ByteBuffer? {
        guard outbound.readableBytes > 0 else { return nil }
        return outbound.readSlice(length: outbound.readableBytes)
    }
}

@available(*, unavailable)
extension TLSConnection: Sendable {}
