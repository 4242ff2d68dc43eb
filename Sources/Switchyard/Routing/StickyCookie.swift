/// A tenant's sticky-session cookie: which backend a cookie names, and the `Set-Cookie` line that pins a client to
/// a backend.
///
/// The cookie's value identifies a backend by a 64-bit FNV-1a hash of the tenant's name and the backend's address,
/// written as 16 hex digits. The hash is the same on every balancer of a fleet and across restarts and reloads, so a
/// client keeps its backend whichever node answers it; it does not show the backend's address to the client, and a
/// value naming no current backend is simply ignored (the request is balanced and the cookie reissued).
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
        var attributes = "; Path=/; HttpOnly; SameSite=Lax"
        if let maxAge = configuration.maxAge {
            attributes += "; Max-Age=\(maxAge.nanoseconds / 1_000_000_000)"
        }
        let lines = identifiers.map { "Set-Cookie: \(configuration.cookie)=\(Self.hex($0))\(attributes)" }
        self.plainLines = lines.map { $0 + "\r\n" }
        self.secureLines = lines.map { $0 + "; Secure\r\n" }
    }

    /// The `Set-Cookie` line (with its CRLF) that pins a client to the backend at `index`.
    func setCookieLine(forBackendAt index: Int, secure: Bool) -> String {
        secure ? secureLines[index] : plainLines[index]
    }

    /// The index of the backend named by this cookie among the request's `Cookie` fields, or `nil` when the cookie
    /// is absent or names no current backend.
    ///
    /// - Parameters:
    ///   - fields: the values of the request's `Cookie` fields within `bytes`.
    func backendIndex(in bytes: UnsafeRawBufferPointer, fields: [Range<Int>]) -> Int? {
        for field in fields {
            guard let value = Self.value(of: name, in: bytes, field: field) else { continue }
            // The first cookie of that name decides: browsers send the most specific one first (RFC 6265 §5.4).
            guard let identifier = Self.parseHex(bytes, value) else { return nil }
            return identifiers.firstIndex(of: identifier)
        }
        return nil
    }

    /// The value of the cookie `name` in one `Cookie` field (`a=1; b=2`), if present. Pairs are split on `;` and
    /// trimmed of spaces, as browsers send them and as servers read them (RFC 6265 §5.4, §4.2.1).
    static func value(of name: String, in bytes: UnsafeRawBufferPointer, field: Range<Int>) -> Range<Int>? {
        var index = field.lowerBound
        while index < field.upperBound {
            while index < field.upperBound, bytes[index] == HTTPSyntax.space || bytes[index] == HTTPSyntax.tab {
                index += 1
            }
            let pairStart = index
            while index < field.upperBound, bytes[index] != HTTPSyntax.semicolon { index += 1 }
            let pair = pairStart..<index
            index += 1
            guard let equals = pair.first(where: { bytes[$0] == UInt8(ascii: "=") }) else { continue }
            var nameEnd = equals
            while nameEnd > pair.lowerBound, bytes[nameEnd - 1] == HTTPSyntax.space { nameEnd -= 1 }
            guard nameEnd - pair.lowerBound == name.utf8.count,
                zip(bytes[pair.lowerBound..<nameEnd], name.utf8).allSatisfy({ $0 == $1 })
            else { continue }
            var valueStart = equals + 1
            var valueEnd = pair.upperBound
            while valueStart < valueEnd, bytes[valueStart] == HTTPSyntax.space { valueStart += 1 }
            while valueEnd > valueStart, bytes[valueEnd - 1] == HTTPSyntax.space { valueEnd -= 1 }
            // A quoted value is the same value (RFC 6265 §4.1.1).
            if valueEnd - valueStart >= 2, bytes[valueStart] == UInt8(ascii: "\""),
                bytes[valueEnd - 1] == UInt8(ascii: "\"")
            {
                valueStart += 1
                valueEnd -= 1
            }
            return valueStart..<valueEnd
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
