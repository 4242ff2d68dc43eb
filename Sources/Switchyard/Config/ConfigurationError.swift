/// Why a configuration file was refused, and where.
///
/// Every error names the file, the line when it is known, the key path of the offending value and a reason that
/// says both what is wrong and what is expected, so an operator can fix the file without reading the source:
///
/// ```
/// Config/switchyard.yaml:12: tenants[1].backends[0]: 'foo' is not HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)
/// ```
public struct ConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file, as given to ``ConfigurationLoader/load(path:)`` or ``ConfigurationLoader/parse(yaml:file:)``.
    public var file: String
    /// The 1-based line of the offending value, when known.
    public var line: Int?
    /// Key path of the offending value, e.g. `tenants[1].backends[0]` or `timeouts.keepalive`; empty when the error
    /// is about the document as a whole (a YAML syntax error, an unreadable file).
    public var key: String
    /// What is wrong and what is expected.
    public var reason: String

    public init(file: String, line: Int?, key: String, reason: String) {
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason
    }

    /// `FILE:LINE: KEY: REASON`, leaving out the line and the key when they are unknown or empty.
    public var description: String {
        var text = self.file
        if let line = self.line {
            text += ":\(line)"
        }
        text += ": "
        if !self.key.isEmpty {
            text += "\(self.key): "
        }
        return text + self.reason
    }

    /// The most characters of an operator's value an error quotes; see ``quoted(_:)``.
    static let maximumQuotedCharacters = 80

    /// `text` in single quotes, as errors quote what the operator wrote: whole when it is short, otherwise its first
    /// ``maximumQuotedCharacters`` characters, an ellipsis and its length (`'aaaa…' (52428800 bytes)`), so that a
    /// huge value (a 50 MB scalar) does not flood the terminal or the log with itself.
    ///
    /// Only the first characters are looked at, and the length is the UTF-8 count, so quoting is cheap whatever the
    /// size of the value. Control characters are written `\xHH`, so that a value cannot move the operator's
    /// terminal (an ESC sequence) or forge a line of the log the error goes to.
    static func quoted(_ text: some StringProtocol) -> String {
        let head = text.prefix(Self.maximumQuotedCharacters)
        guard head.endIndex < text.endIndex else {
            return "'\(escapingControlCharacters(text))'"
        }
        return "'\(escapingControlCharacters(head))…' (\(text.utf8.count) bytes)"
    }

    private static func escapingControlCharacters(_ text: some StringProtocol) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return String(text) }
        var result = ""
        for scalar in text.unicodeScalars {
            if isControl(scalar) {
                let hex = String(scalar.value, radix: 16, uppercase: true)
                result += "\\x" + (hex.count < 2 ? "0" + hex : hex)
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F..<0xA0).contains(scalar.value)
    }

    /// `text` as is when short, otherwise its first ``maximumQuotedCharacters`` characters and an ellipsis; for
    /// names inside a key path (`tenants[0].aaaa…`), where a length would read as part of the path.
    static func abbreviated(_ text: some StringProtocol) -> String {
        let head = text.prefix(Self.maximumQuotedCharacters)
        guard head.endIndex < text.endIndex else {
            return String(text)
        }
        return "\(head)…"
    }
}
