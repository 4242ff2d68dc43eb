import NIOCore

/// A `HOST:PORT` pair as written in the configuration (or on the command line), split and checked for form but not
/// resolved.
///
/// IPv6 literals must be in brackets (`[::1]:8080`), as in URLs, so that the last colon always separates the port.
struct HostAndPort: Equatable, Sendable {
    /// The host without brackets: an IPv4 literal, an IPv6 literal or a name.
    var host: String
    /// Whether the host was written in brackets, which makes it an IPv6 literal.
    var isBracketed: Bool
    /// 1...65535.
    var port: Int

    /// What the configuration accepts, for error messages.
    static let syntaxExample = "HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)"

    /// Why ``parse(_:)`` refused a text.
    enum ParsingFailure: Error, Equatable {
        /// No `HOST:PORT` shape at all (no colon, empty host, junk after the bracket, a non-numeric port).
        case malformed
        /// An IPv6 address written without brackets, e.g. `::1:8080`.
        case unbracketedIPv6
        /// The port is a number but not in 1...65535.
        case portOutOfRange(String)
    }

    /// Splits `text` into host and port. The host is only checked for shape here; whether it is an IP literal or a
    /// resolvable name is for the caller to decide.
    static func parse(_ text: String) -> Result<HostAndPort, ParsingFailure> {
        let host: Substring
        let portText: Substring
        let isBracketed: Bool
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                return .failure(.malformed)
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else {
                return .failure(.malformed)
            }
            portText = rest.dropFirst()
            isBracketed = true
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                return .failure(.malformed)
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            isBracketed = false
            if host.contains(":") {
                return .failure(.unbracketedIPv6)
            }
        }
        guard !host.isEmpty, !host.contains(where: { $0.isWhitespace || $0 == "[" || $0 == "]" || $0 == "/" })
        else {
            return .failure(.malformed)
        }
        guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            return .failure(.malformed)
        }
        guard portText.count <= 5, let port = Int(portText), (1...65535).contains(port) else {
            return .failure(.portOutOfRange(String(portText)))
        }
        return .success(HostAndPort(host: String(host), isBracketed: isBracketed, port: port))
    }

    /// The address if the host is an IP literal of the kind its brackets promise (IPv6 in brackets, IPv4 without),
    /// `nil` otherwise.
    func ipLiteralAddress() -> SocketAddress? {
        guard let address = try? SocketAddress(ipAddress: self.host, port: self.port) else {
            return nil
        }
        switch (address, self.isBracketed) {
        case (.v6, true), (.v4, false):
            return address
        default:
            return nil
        }
    }
}
