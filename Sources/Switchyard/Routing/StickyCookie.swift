/// A tenant's sticky-session cookie: which backend a cookie names, and the `Set-Cookie` line that pins a client to
/// a backend.
///
/// The cookie's value identifies a backend by a 64-bit FNV-1a hash of the tenant's name and the backend's `HOST:PORT`
/// as written in the configuration, as 16 hex digits. The hash is the same on every balancer of a fleet and across
/// restarts and reloads (a host name is hashed, not what it resolves to), so a client keeps its backend whichever
/// node answers it. The address is not shown in clear, though the hash is not a secret: a client that forges a
/// value can only pick among the tenant's backends, which balancing would send it to anyway. A value naming no
/// current backend is ignored (the request is balanced and the cookie reissued).
///
/// The response that sets the cookie also gets `Cache-Control: private`, as HAProxy's `cookie … nocache` does, so
/// that a shared cache cannot hand one client's cookie to everyone.
public struct StickyCookie: Sendable {
    /// The cookie's name.
    public let name: String
    /// The identifier of each backend, in the tenant's backend order.
    let identifiers: [UInt64]
    /// The `Set-Cookie` field line of each backend, for plain HTTP and for HTTPS (with `Secure`).
    private let plainLines: [String]
    private let secureLines: [String]

    /// - Parameters:
    ///   - backends: the tenant's backends as `HOST:PORT` text, in order.
    public init(configuration: StickySessionConfiguration, tenant: String, backends: [String]) {
        self.name = configuration.cookie
        self.identifiers = backends.map { Self.identifier(tenant: tenant, backend: $0) }
        var attributes = "; Path=/; HttpOnly"
        if let maxAge = configuration.maxAge {
            attributes += "; Max-Age=\(maxAge.nanoseconds / 1_000_000_000)"
        }
        let lines = identifiers.map { "Set-Cookie: \(configuration.cookie)=\(Self.hex($0))\(attributes)" }
        // Browsers refuse `SameSite=None` without `Secure`, which a plain-HTTP answer cannot carry: there the
        // attribute is left out and browsers apply their default (Lax).
        let plainSameSite = configuration.sameSite == .none ? "" : "; SameSite=\(configuration.sameSite.attribute)"
        self.plainLines = lines.map { $0 + plainSameSite + "\r\nCache-Control: private\r\n" }
        self.secureLines = lines.map {
            $0 + "; SameSite=\(configuration.sameSite.attribute); Secure\r\nCache-Control: private\r\n"
        }
    }

    /// The `Set-Cookie` line that pins a client to the backend at `index`, and a `Cache-Control: private` line, each
    /// with its CRLF.
    func setCookieLine(forBackendAt index: Int, secure: Bool) -> String {
        secure ? secureLines[index] : plainLines[index]
    }

    /// The index of the backend named by this cookie among the request's `Cookie` fields, or `nil` when the cookie
    /// is absent or names no current backend.
    ///
    /// Every cookie of that name is tried, in order: another cookie with the same name (the application's, or an
    /// older balancer's for a wider path or domain, which browsers send along) must not hide ours.
    ///
    /// - Parameters:
    ///   - fields: the values of the request's `Cookie` fields within `bytes`.
    func backendIndex(in bytes: UnsafeRawBufferPointer, fields: [Range<Int>]) -> Int? {
        for field in fields {
            var rest = field
            while let (value, next) = Self.nextValue(of: name, in: bytes, field: rest) {
                if let identifier = Self.parseHex(bytes, value), let index = identifiers.firstIndex(of: identifier) {
                    return index
                }
                rest = next..<field.upperBound
            }
        }
        return nil
    }

    /// The value of the first cookie `name` in one `Cookie` field (`a=1; b=2`), if present.
    static func value(of name: String, in bytes: UnsafeRawBufferPointer, field: Range<Int>) -> Range<Int>? {
        nextValue(of: name, in: bytes, field: field)?.value
    }

    /// The value of the first cookie `name` in `field`, and where the pairs after it start. Pairs are split on `;`
    /// and names and values trimmed of spaces and tabs, as servers read them (RFC 6265 §5.2, §5.4).
    private static func nextValue(
        of name: String,
        in bytes: UnsafeRawBufferPointer,
        field: Range<Int>
    ) -> (value: Range<Int>, next: Int)? {
        func isBlank(_ byte: UInt8) -> Bool { byte == HTTPSyntax.space || byte == HTTPSyntax.tab }
        var index = field.lowerBound
        while index < field.upperBound {
            while index < field.upperBound, isBlank(bytes[index]) { index += 1 }
            let pairStart = index
            while index < field.upperBound, bytes[index] != HTTPSyntax.semicolon { index += 1 }
            let pair = pairStart..<index
            index = min(index + 1, field.upperBound)
            guard let equals = pair.first(where: { bytes[$0] == UInt8(ascii: "=") }) else { continue }
            var nameEnd = equals
            while nameEnd > pair.lowerBound, isBlank(bytes[nameEnd - 1]) { nameEnd -= 1 }
            guard nameEnd - pair.lowerBound == name.utf8.count,
                zip(bytes[pair.lowerBound..<nameEnd], name.utf8).allSatisfy({ $0 == $1 })
            else { continue }
            var valueStart = equals + 1
            var valueEnd = pair.upperBound
            while valueStart < valueEnd, isBlank(bytes[valueStart]) { valueStart += 1 }
            while valueEnd > valueStart, isBlank(bytes[valueEnd - 1]) { valueEnd -= 1 }
            // A quoted value is the same value (RFC 6265 §4.1.1).
            if valueEnd - valueStart >= 2, bytes[valueStart] == UInt8(ascii: "\""),
                bytes[valueEnd - 1] == UInt8(ascii: "\"")
            {
                valueStart += 1
                valueEnd -= 1
            }
            return (valueStart..<valueEnd, index)
        }
        return nil
    }

    /// A backend's identifier: FNV-1a (64 bit) of `tenant`, a NUL byte and `backend`.
    static func identifier(tenant: String, backend: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in tenant.utf8 + [0] + backend.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// Exactly 16 hex digits (either case) as a number.
    private static func parseHex(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> UInt64? {
        guard range.count == 16 else { return nil }
        var value: UInt64 = 0
        for index in range {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }
}
