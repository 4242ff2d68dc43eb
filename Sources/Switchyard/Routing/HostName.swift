/// Normalisation of the `Host` header and of TLS server names into the form the ``RouteTable`` is keyed by.
///
/// Normalising means: ASCII lower case, the port removed (`shop.test:8080`), a trailing dot removed
/// (`shop.test.`), and IPv6 literals kept in brackets (`[::1]:8080` → `[::1]`). Anything that is not a
/// syntactically valid host is refused, so nothing odd reaches a map lookup or a log line: a name is at most 253
/// bytes (without its trailing dot) of labels of 1 to 63 letters, digits, `-` and `_`, none starting or ending with
/// `-` (RFC 1035 §2.3.4, RFC 1123 §2.1; `_` is allowed, as in service names such as `my_service.internal`).
///
/// It runs on every request, so it only reads the bytes once and allocates nothing but the normalised string.
public enum HostName {
    /// The longest `Host` value looked at: a name, a trailing dot and a port, or a bracketed IPv6 literal and a port.
    static let maximumLength = 300
    /// The longest name (RFC 1035 §2.3.4), without its trailing dot and port.
    static let maximumNameLength = 253
    /// The longest label (RFC 1035 §2.3.4).
    static let maximumLabelLength = 63

    /// Normalises the bytes of a `Host` value; `nil` when they are not a valid host.
    public static func normalize(_ bytes: UnsafeRawBufferPointer) -> String? {
        let count = bytes.count
        guard count > 0, count <= maximumLength else { return nil }
        // IPv6 literal: "[...]" optionally followed by ":port".
        if bytes[0] == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")), close > 1 else { return nil }
            for index in 1..<close {
                let byte = bytes[index]
                guard isHexDigit(byte) || byte == UInt8(ascii: ":") || byte == UInt8(ascii: ".") else { return nil }
            }
            guard isValidPortSuffix(bytes, from: close + 1) else { return nil }
            return lowercased(bytes, upTo: close + 1)
        }
        var end = count
        if let colon = bytes.lastIndex(of: UInt8(ascii: ":")) {
            guard isValidPortSuffix(bytes, from: colon) else { return nil }
            end = colon
        }
        if end > 0, bytes[end - 1] == UInt8(ascii: ".") {
            end -= 1
        }
        guard end > 0, end <= maximumNameLength else { return nil }
        // `previous` is "." at the start of each label, so one comparison finds both an empty label and a leading
        // hyphen.
        var previous: UInt8 = UInt8(ascii: ".")
        var labelLength = 0
        for index in 0..<end {
            let byte = bytes[index]
            if byte == UInt8(ascii: ".") {
                // Empty labels ("a..b", ".a") are not host names, nor are labels ending with a hyphen ("a-.b").
                guard previous != UInt8(ascii: "."), previous != UInt8(ascii: "-") else { return nil }
                labelLength = 0
            } else {
                guard isHostCharacter(byte) else { return nil }
                // Nor are labels starting with a hyphen ("-a.b").
                guard byte != UInt8(ascii: "-") || previous != UInt8(ascii: ".") else { return nil }
                labelLength += 1
                guard labelLength <= maximumLabelLength else { return nil }
            }
            previous = byte
        }
        // "shop.test.." would leave an empty last label, and "shop.test-" a last label ending with a hyphen.
        guard previous != UInt8(ascii: "."), previous != UInt8(ascii: "-") else { return nil }
        return lowercased(bytes, upTo: end)
    }

    /// Normalises a host given as a string (SNI, configuration, CLI).
    public static func normalize(_ host: String) -> String? {
        var host = host
        return host.withUTF8 { normalize(UnsafeRawBufferPointer($0)) }
    }

    private static func isValidPortSuffix(_ bytes: UnsafeRawBufferPointer, from index: Int) -> Bool {
        if index == bytes.count { return true }
        guard bytes[index] == UInt8(ascii: ":") else { return false }
        let digits = bytes.count - index - 1
        // An empty port ("host:") is allowed by RFC 3986's authority grammar.
        guard digits <= 5 else { return false }
        var port = 0
        for position in (index + 1)..<bytes.count {
            let byte = bytes[position]
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return false }
            port = port * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return port <= 65535
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"),
            UInt8(ascii: "A")...UInt8(ascii: "F"):
            return true
        default:
            return false
        }
    }

    private static func isHostCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    private static func lowercased(_ bytes: UnsafeRawBufferPointer, upTo end: Int) -> String {
        String(unsafeUninitializedCapacity: end) { buffer in
            for index in 0..<end {
                let byte = bytes[index]
                buffer[index] = (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) ? byte | 0x20 : byte
            }
            return end
        }
    }
}
