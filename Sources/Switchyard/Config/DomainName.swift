import NIOCore

/// Checks and normalises the names a tenant owns and the host names of backends.
///
/// A tenant domain is matched against the TLS SNI name and the `Host` header, so it is kept in the one form those
/// are compared in: lower case, without the trailing dot of a fully qualified name. IPv6 literals are kept in
/// brackets, as they appear in a `Host` header (`[::1]`).
enum DomainName {
    /// Why a name was refused; `reason` completes a sentence about the name as written.
    struct Problem: Error, Equatable {
        var reason: String
    }

    /// Longest name DNS allows, without the trailing dot.
    static let maximumLength = 253
    /// Longest label DNS allows.
    static let maximumLabelLength = 63

    /// Normalises a tenant domain: lower-cases it, removes one trailing dot and checks it is an exact name, a
    /// wildcard whose only `*` is a whole leading label (`*.shop.test`, which matches `a.shop.test` but not
    /// `shop.test`), or an IP literal.
    static func normaliseTenantDomain(_ text: String) -> Result<String, Problem> {
        var name = text.lowercased()
        // The common case, a plain name, in one pass; the checks below take longer and say what is wrong.
        let plain = Self.withoutTrailingDot(name)
        if Self.isPlainName(plain.utf8, allowingWildcard: true) {
            return .success(String(plain))
        }
        if name.hasPrefix("[") || name.contains(":") {
            // Only an IPv6 literal has colons; anything else with one is most likely a name with a port or a URL.
            let literal = name.hasPrefix("[") && name.hasSuffix("]") ? String(name.dropFirst().dropLast()) : name
            guard case .v6 = try? SocketAddress(ipAddress: literal, port: 0) else {
                return .failure(
                    Problem(
                        reason: "is not a domain name; write the name alone, without scheme or port (e.g. shop.test)"
                    )
                )
            }
            return .success("[\(literal)]")
        }
        if name.hasSuffix(".") {
            name.removeLast()
        }
        var labels = name.split(separator: ".", omittingEmptySubsequences: false)
        let isWildcard = labels.first == "*"
        if isWildcard {
            labels.removeFirst()
            guard !labels.isEmpty else {
                return .failure(
                    Problem(reason: "is a bare wildcard; a wildcard needs a parent domain (e.g. *.shop.test)")
                )
            }
        }
        if labels.contains(where: { $0.contains("*") }) {
            return .failure(
                Problem(reason: "has a '*' that is not a whole leading label; only '*.' may start a domain")
            )
        }
        if isWildcard, let last = labels.last, last.allSatisfy(Self.isDigit) {
            return .failure(Problem(reason: "is a wildcard over an IP address, which can match nothing"))
        }
        if let problem = self.problem(labels: labels, wholeName: name) {
            return .failure(problem)
        }
        return .success(name)
    }

    /// Whether a normalised tenant domain is a wildcard directly under a single label, a top-level domain such as
    /// `*.com`, `*.test` or `*.localhost`: it would claim every name of that domain for one tenant, which is almost
    /// always a mistake (`*.shop.test` was meant). Only single-label suffixes are recognised; multi-label public
    /// suffixes (`*.co.uk`, `*.github.io`) would need the Public Suffix List, which is not shipped.
    static func isBroadWildcard(_ domain: String) -> Bool {
        guard domain.hasPrefix("*.") else {
            return false
        }
        return !domain.utf8.dropFirst(2).contains(UInt8(ascii: "."))
    }

    /// Checks a backend host name (not an IP literal): the same label rules as a tenant domain, no wildcard. Returns
    /// `nil` when the name is acceptable.
    static func hostnameProblem(_ name: String) -> Problem? {
        if name.utf8.count <= Self.maximumLength,
            Self.isPlainName(Self.withoutTrailingDot(name).utf8, allowingWildcard: false)
        {
            return nil
        }
        let withoutDot = name.hasSuffix(".") ? String(name.dropLast()) : name
        return self.problem(labels: withoutDot.split(separator: ".", omittingEmptySubsequences: false), wholeName: name)
    }

    /// See ``ConfigurationError/quoted(_:)``: how errors quote an operator's value.
    private static func quoted(_ text: some StringProtocol) -> String {
        ConfigurationError.quoted(text)
    }

    /// `name` without one trailing dot; cut as a byte, so that a dot joined to what precedes it in one character
    /// cannot take that character with it.
    private static func withoutTrailingDot(_ name: String) -> Substring {
        name.utf8.last == UInt8(ascii: ".") ? Substring(name.utf8.dropLast()) : name[...]
    }

    /// Whether `name` (without its trailing dot) is certainly acceptable, checked in one pass over its bytes without
    /// allocating: at most ``maximumLength`` bytes, optionally a leading `*.`, then labels of 1 to
    /// ``maximumLabelLength`` ASCII letters, digits, `-` and `_` that neither start nor end with `-`, the last one not
    /// all digits (which could only be an IPv4 address).
    ///
    /// The common case, so that a tenant with 100,000 domains loads quickly. `false` says nothing: the name then
    /// takes the slower checks of ``normaliseTenantDomain(_:)``, which accept IP addresses and say what is wrong
    /// with the rest. Everything accepted here is accepted there.
    private static func isPlainName(_ name: Substring.UTF8View, allowingWildcard: Bool) -> Bool {
        guard name.count <= Self.maximumLength else {
            return false
        }
        var bytes = name[...]
        if allowingWildcard, bytes.starts(with: "*.".utf8) {
            bytes = bytes.dropFirst(2)
        }
        var labelLength = 0
        var lastLabelIsDigits = true
        var previous = UInt8(ascii: ".")
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "."):
                guard labelLength > 0, previous != UInt8(ascii: "-") else {
                    return false
                }
                labelLength = 0
                lastLabelIsDigits = true
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                labelLength += 1
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"):
                labelLength += 1
                lastLabelIsDigits = false
            case UInt8(ascii: "-"):
                guard labelLength > 0 else {
                    return false
                }
                labelLength += 1
                lastLabelIsDigits = false
            default:
                return false
            }
            guard labelLength <= Self.maximumLabelLength else {
                return false
            }
            previous = byte
        }
        return labelLength > 0 && previous != UInt8(ascii: "-") && !lastLabelIsDigits
    }

    private static func isDigit(_ character: Character) -> Bool {
        character.isASCII && character.isNumber
    }

    private static func problem(labels: [Substring], wholeName: String) -> Problem? {
        if wholeName.isEmpty {
            return Problem(reason: "is empty")
        }
        if wholeName.count > Self.maximumLength {
            return Problem(reason: "is longer than \(Self.maximumLength) characters")
        }
        for label in labels {
            if label.isEmpty {
                return Problem(reason: "has an empty label (two dots in a row, or a leading dot)")
            }
            if label.count > Self.maximumLabelLength {
                return Problem(
                    reason: "has a label longer than \(Self.maximumLabelLength) characters (\(Self.quoted(label)))"
                )
            }
            if let bad = label.first(where: { !Self.isLabelCharacter($0) }) {
                let hint = bad.isASCII ? "" : "; write internationalised names in their punycode form (xn--...)"
                return Problem(
                    reason: "contains \(Self.quoted(String(bad))); labels may only contain letters a-z, digits, '-' "
                        + "and '_'\(hint)"
                )
            }
            // RFC 952 and 1123: a label neither starts nor ends with a hyphen. ``HostName`` refuses such a Host, so
            // a domain with one could never be reached.
            if label.hasPrefix("-") || label.hasSuffix("-") {
                return Problem(
                    reason: "has a label that starts or ends with '-' (\(Self.quoted(label))), which no host name has"
                )
            }
        }
        // No top-level domain is all digits, so such a name can only be meant as an IPv4 address.
        guard let last = labels.last, last.allSatisfy(Self.isDigit) else {
            return nil
        }
        guard labels.allSatisfy({ $0.allSatisfy(Self.isDigit) }),
            case .v4 = try? SocketAddress(ipAddress: labels.joined(separator: "."), port: 0)
        else {
            return Problem(reason: "is not a valid IPv4 address (and no top-level domain is all digits)")
        }
        return nil
    }

    private static func isLabelCharacter(_ character: Character) -> Bool {
        guard character.isASCII else {
            return false
        }
        switch character {
        case "a"..."z", "A"..."Z", "0"..."9", "-", "_": return true
        default: return false
        }
    }
}
