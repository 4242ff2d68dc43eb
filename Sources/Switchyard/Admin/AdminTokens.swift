import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The bearer tokens of the admin API's TCP listener, read from `admin.token_file` at start.
///
/// The file holds one token a line, `NAME:TOKEN` or just `TOKEN` (then named `token`); blank lines and lines
/// starting with `#` are ignored, and so is whitespace around a line. The name is who made a change, in the logs
/// (`by token 'deploy'`). A token is RFC 6750's `b64token` (letters, digits, `-._~+/`, then `=` padding), at least
/// ``minimumTokenLength`` characters: `openssl rand -hex 32` makes one.
///
/// A file that others could read or change (any group or other permission bit) is refused, as ssh refuses such a
/// key: `chmod 600 FILE`. So is a file without a token, and a name given twice.
public struct AdminTokens: Sendable {
    /// One token and its name.
    struct Entry: Sendable, Equatable {
        var name: String
        var token: [UInt8]
    }

    let entries: [Entry]

    /// The shortest token accepted: 128 bits as hex digits.
    public static let minimumTokenLength = 32
    /// The largest token file read (a file far larger is a mistake, not a list of tokens).
    static let maximumFileBytes = 1 << 20

    init(entries: [Entry]) {
        self.entries = entries
    }

    /// Reads and checks the file at `path`: its permissions, then its lines.
    public static func load(path: String) throws(AdminTokenFileError) -> AdminTokens {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw AdminTokenFileError(file: path, reason: "cannot open it: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        // The mode of the file opened, not of whatever the path names a moment later.
        var information = stat()
        guard fstat(descriptor, &information) == 0 else {
            throw AdminTokenFileError(file: path, reason: "cannot stat it: \(String(cString: strerror(errno)))")
        }
        guard information.st_mode & S_IFMT == S_IFREG else {
            throw AdminTokenFileError(file: path, reason: "is not a regular file")
        }
        let permissions = information.st_mode & 0o777
        guard permissions & 0o077 == 0 else {
            throw AdminTokenFileError(
                file: path,
                reason: "is readable or writable by group or others (mode 0\(String(permissions, radix: 8))); "
                    + "the tokens in it give control of the balancer: chmod 600 \(path)"
            )
        }
        guard Int(information.st_size) <= maximumFileBytes else {
            throw AdminTokenFileError(
                file: path,
                reason: "is \(information.st_size) bytes; a token file is at most \(maximumFileBytes) bytes"
            )
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while bytes.count <= maximumFileBytes {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw AdminTokenFileError(file: path, reason: "cannot read it: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
        }
        return try parse(String(decoding: bytes, as: UTF8.self), file: path)
    }

    /// Parses the lines of a token file; `file` is for error messages.
    public static func parse(_ text: String, file: String) throws(AdminTokenFileError) -> AdminTokens {
        var entries: [Entry] = []
        var lines: [String: Int] = [:]
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            let number = index + 1
            let name: Substring
            let token: Substring
            if let colon = line.firstIndex(of: ":") {
                name = line[..<colon]
                token = line[line.index(after: colon)...]
            } else {
                name = "token"
                token = line
            }
            // Errors name the line and the name, never the token: error lines reach logs.
            guard !name.isEmpty, name.utf8.count <= 64, name.utf8.allSatisfy(Self.isNameByte) else {
                throw AdminTokenFileError(
                    file: file,
                    line: number,
                    reason: "the name before ':' must be 1 to 64 letters, digits, '-', '_' or '.'"
                )
            }
            guard Self.isToken(token.utf8) else {
                throw AdminTokenFileError(
                    file: file,
                    line: number,
                    reason: "the token of '\(name)' is not a bearer token: letters, digits and -._~+/ (then = "
                        + "padding), no spaces"
                )
            }
            guard token.utf8.count >= minimumTokenLength else {
                throw AdminTokenFileError(
                    file: file,
                    line: number,
                    reason: "the token of '\(name)' has \(token.utf8.count) characters, fewer than "
                        + "\(minimumTokenLength); make one with `openssl rand -hex 32`"
                )
            }
            if let earlier = lines[String(name)] {
                throw AdminTokenFileError(
                    file: file,
                    line: number,
                    reason: "the name '\(name)' is already given on line \(earlier); name each token once"
                )
            }
            lines[String(name)] = number
            entries.append(Entry(name: String(name), token: Array(token.utf8)))
        }
        guard !entries.isEmpty else {
            throw AdminTokenFileError(
                file: file,
                reason: "has no token; write one a line, as NAME:TOKEN or TOKEN (make one with `openssl rand -hex 32`)"
            )
        }
        return AdminTokens(entries: entries)
    }

    /// The first token of the file, for a client (`switchyard --admin-url … --token-file FILE`) to present.
    public var firstToken: String? {
        entries.first.map { String(decoding: $0.token, as: UTF8.self) }
    }

    /// The name of the token an `Authorization` field presents (`Bearer TOKEN`, the scheme in any case), or `nil`
    /// when there is no such field, more than one, another scheme, or a token that is none of these.
    ///
    /// The presented token is compared with every token of the file, in full, whatever the outcome of the
    /// comparisons before: the time taken depends on the presented token's length and the number of tokens, not
    /// on how much of a token a guess got right nor on which token it was close to.
    public func name(authorizing fields: [String]) -> String? {
        guard fields.count == 1, let presented = Self.bearerToken(fields[0]) else { return nil }
        var matched: String?
        for entry in entries {
            let equal = Self.constantTimeEquals(presented, entry.token)
            if equal, matched == nil {
                matched = entry.name
            }
        }
        return matched
    }

    /// The name of the user an `Authorization: Basic …` field presents, when its password is that name's token
    /// (the file of `metrics.basic_auth_file` is a token file: `NAME:TOKEN` lines, the name as user). Compared as
    /// ``name(authorizing:)`` compares: every entry, in full.
    public func name(authorizingBasic fields: [String]) -> String? {
        guard fields.count == 1 else { return nil }
        let parts = fields[0].split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "basic",
            let decoded = Data(base64Encoded: String(parts[1]).trimmingCharacters(in: .whitespaces)),
            let colon = decoded.firstIndex(of: UInt8(ascii: ":"))
        else { return nil }
        let user = String(decoding: decoded[decoded.startIndex..<colon], as: UTF8.self)
        let password = Array(decoded[decoded.index(after: colon)...])
        var matched: String?
        for entry in entries {
            let equal = Self.constantTimeEquals(password, entry.token) && entry.name == user
            if equal, matched == nil {
                matched = entry.name
            }
        }
        return matched
    }

    /// Whether `presented` and `secret` are the same bytes, in a time that depends only on `presented.count`.
    ///
    /// Every byte of `presented` is compared (with the secret's bytes taken cyclically, so that the secret's length
    /// does not set the number of steps either), the differences are accumulated with OR and only the total is
    /// tested: no early exit on the first differing byte. A length difference is part of that total.
    static func constantTimeEquals(_ presented: [UInt8], _ secret: [UInt8]) -> Bool {
        guard !secret.isEmpty else { return false }
        var difference = UInt64(truncatingIfNeeded: presented.count ^ secret.count)
        for index in 0..<presented.count {
            difference |= UInt64(presented[index] ^ secret[index % secret.count])
        }
        return difference == 0
    }

    /// The token of `Bearer TOKEN` (RFC 6750 §2.1: the scheme is case-insensitive, one or more spaces follow it).
    static func bearerToken(_ field: String) -> [UInt8]? {
        let bytes = Array(field.utf8)
        let scheme = Array("bearer".utf8)
        guard bytes.count > scheme.count,
            zip(bytes, scheme).allSatisfy({ $0 | 0x20 == $1 }),
            bytes[scheme.count] == UInt8(ascii: " ")
        else { return nil }
        var start = scheme.count
        while start < bytes.count, bytes[start] == UInt8(ascii: " ") { start += 1 }
        var end = bytes.count
        while end > start, bytes[end - 1] == UInt8(ascii: " ") || bytes[end - 1] == UInt8(ascii: "\t") { end -= 1 }
        let token = Array(bytes[start..<end])
        return isToken(token) ? token : nil
    }

    /// RFC 6750's `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
    static func isToken(_ bytes: some Collection<UInt8>) -> Bool {
        var padding = false
        var count = 0
        for byte in bytes {
            if byte == UInt8(ascii: "=") {
                guard count > 0 else { return false }
                padding = true
            } else if padding {
                return false
            } else {
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                    UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                    UInt8(ascii: "~"), UInt8(ascii: "+"), UInt8(ascii: "/"):
                    break
                default:
                    return false
                }
            }
            count += 1
        }
        return count > 0
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }
}

/// Why the token file was refused: the file, the line when it is about one, and what to do.
public struct AdminTokenFileError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    public var line: Int?
    public var reason: String

    public init(file: String, line: Int? = nil, reason: String) {
        self.file = file
        self.line = line
        self.reason = reason
    }

    /// `FILE[:LINE]: admin.token_file: REASON`.
    public var description: String {
        "\(file)\(line.map { ":\($0)" } ?? ""): admin.token_file: \(reason)"
    }
}

extension Substring {
    /// Without leading and trailing spaces, tabs and carriage returns (a file written on Windows).
    fileprivate func trimmingWhitespace() -> Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return self[endIndex...]
        }
        return self[first...last]
    }
}
