import COpenSSL
import NIOConcurrencyHelpers
import ServiceLifecycle

/// The keys that encrypt TLS session tickets, rotated on a schedule and shared by every certificate's context.
///
/// OpenSSL's default is one random key per `SSL_CTX`, made when the context is built and never changed: a ticket
/// stolen today would decrypt every session resumed with that key until a restart. Here a new key is made every
/// ``rotationInterval``; the previous one is kept for one more interval so that tickets issued just before a
/// rotation still resume (and are then replaced by tickets under the new key). One ring serves every context, so a
/// ticket resumes whichever certificate SNI picks, on whichever event loop.
public final class TicketKeyRing: Sendable {
    /// One ticket key: a name the ticket carries in clear, and the AES-256-CBC and HMAC-SHA256 keys.
    struct Key: Equatable {
        var name: [UInt8]
        var cipherKey: [UInt8]
        var macKey: [UInt8]

        static func random() throws(TLSError) -> Key {
            var bytes = [UInt8](repeating: 0, count: 80)
            guard RAND_bytes(&bytes, Int32(bytes.count)) == 1 else {
                throw .drainingQueue("cannot make a session ticket key")
            }
            return Key(name: Array(bytes[0..<16]), cipherKey: Array(bytes[16..<48]), macKey: Array(bytes[48..<80]))
        }
    }

    /// How often a new key is made.
    public let rotationInterval: Duration
    private let keys: NIOLockedValueBox<(current: Key, previous: Key?)>

    public init(rotationInterval: Duration = .seconds(12 * 3600)) throws(TLSError) {
        self.rotationInterval = rotationInterval
        self.keys = NIOLockedValueBox((try Key.random(), nil))
    }

    /// Makes a new current key; the current one becomes the previous one, and the previous one is forgotten.
    public func rotate() throws(TLSError) {
        let next = try Key.random()
        keys.withLockedValue { keys in
            keys = (next, keys.current)
        }
    }

    /// The key new tickets are encrypted with.
    var current: Key {
        keys.withLockedValue { $0.current }
    }

    /// The key a ticket names, and whether it is the current one; `nil` for an unknown (expired) key.
    func key(named name: UnsafePointer<UInt8>) -> (key: Key, isCurrent: Bool)? {
        let wanted = Array(UnsafeBufferPointer(start: name, count: 16))
        return keys.withLockedValue { keys in
            if keys.current.name == wanted {
                return (keys.current, true)
            }
            if let previous = keys.previous, previous.name == wanted {
                return (previous, false)
            }
            return nil
        }
    }
}

extension TicketKeyRing: Service {
    /// Rotates every ``rotationInterval`` until graceful shutdown.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: self.rotationInterval)
                guard !Task.isCancelled else { return }
                try? self.rotate()
            }
        }
    }
}

/// The cipher tickets are encrypted with, fetched once: an implicit fetch on every handshake would take OpenSSL
/// 3.0's global locks each time.
///
/// `nonisolated(unsafe)`: set once by the thread-safe `static let` initialiser and only read afterwards; OpenSSL
/// allows a fetched `EVP_CIPHER` to be used from any thread.
private enum TicketCipher {
    nonisolated(unsafe) static let aes256CBC: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-CBC", nil)
}

/// OpenSSL's session-ticket key callback: encrypts new tickets under the ring's current key, and decrypts tickets
/// under the key they name, asking for a new ticket when that key is the previous one, and always on TLS 1.3.
///
/// TLS 1.3 clients use a ticket once (RFC 8446 §C.4; OpenSSL's client drops a session once it resumed it), so a
/// resumed connection that gets no new ticket makes the client's next connection a full handshake: measured with
/// wrk, every other connection was one, at about twice the CPU of a resumption.
let ticketKeyCallback:
    @convention(c) (
        OpaquePointer?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt8>?, OpaquePointer?, OpaquePointer?,
        Int32
    ) -> Int32 = { ssl, keyName, iv, cipherContext, macContext, encrypt in
        guard let ssl, let keyName, let iv, let state = SSL_get_ex_data(ssl, 0),
            let cipher = TicketCipher.aes256CBC
        else { return -1 }
        let ring = Unmanaged<TLSConnection>.fromOpaque(state).takeUnretainedValue().ticketKeys
        let key: TicketKeyRing.Key
        let result: Int32
        if encrypt == 1 {
            key = ring.current
            guard RAND_bytes(iv, 16) == 1 else { return -1 }
            key.name.withUnsafeBufferPointer { keyName.update(from: $0.baseAddress!, count: 16) }
            let initialised = key.cipherKey.withUnsafeBufferPointer {
                EVP_EncryptInit_ex2(cipherContext, cipher, $0.baseAddress, iv, nil)
            }
            guard initialised == 1 else { return -1 }
            result = 1
        } else {
            guard let found = ring.key(named: keyName) else {
                // Unknown or expired key: a full handshake follows.
                return 0
            }
            key = found.key
            let initialised = key.cipherKey.withUnsafeBufferPointer {
                EVP_DecryptInit_ex2(cipherContext, cipher, $0.baseAddress, iv, nil)
            }
            guard initialised == 1 else { return -1 }
            result = found.isCurrent && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2
        }
        var macKey = key.macKey
        let configured = macKey.withUnsafeMutableBytes { macBytes in
            "key".withCString { keyParameter in
                "digest".withCString { digestParameter in
                    "SHA256".withCString { digest in
                        var parameters = [
                            OSSL_PARAM_construct_octet_string(keyParameter, macBytes.baseAddress, macBytes.count),
                            OSSL_PARAM_construct_utf8_string(
                                digestParameter,
                                UnsafeMutablePointer(mutating: digest),
                                0
                            ),
                            OSSL_PARAM_construct_end(),
                        ]
                        return EVP_MAC_CTX_set_params(macContext, &parameters)
                    }
                }
            }
        }
        return configured == 1 ? result : -1
    }
