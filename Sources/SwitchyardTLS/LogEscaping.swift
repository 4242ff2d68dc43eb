/// Escapes client-supplied text (the TLS server name, a request's target or `Host`) for a log line.
///
/// Every byte outside printable ASCII, and `"` and `\`, becomes `\xHH`, as nginx writes its logs: a CR/LF in a
/// server name cannot forge a second log line, an ESC sequence cannot reach the operator's terminal, and a `"`
/// cannot end a quoted field early. Shared by the TLS layer and the access log, hence public.
public enum LogEscaping {
    /// `text` with every unsafe byte written as `\xHH`; `text` itself when nothing needs escaping.
    public static func escaped(_ text: String) -> String {
        let utf8 = text.utf8
        guard utf8.contains(where: { !isSafe($0) }) else { return text }
        return escapedCopy(utf8)
    }

    /// The bytes as text, every unsafe byte written as `\xHH`. Checking costs one pass and no allocation when
    /// nothing needs escaping (every request target of a well-behaved client), so it can sit on the request path.
    public static func escaped(bytes: UnsafeRawBufferPointer) -> String {
        guard bytes.contains(where: { !isSafe($0) }) else { return String(decoding: bytes, as: UTF8.self) }
        return escapedCopy(bytes)
    }

    private static func escapedCopy(_ bytes: some Collection<UInt8>) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        for byte in bytes {
            if isSafe(byte) {
                output.append(byte)
            } else {
                output.append(UInt8(ascii: "\\"))
                output.append(UInt8(ascii: "x"))
                output.append(hexDigits[Int(byte >> 4)])
                output.append(hexDigits[Int(byte & 0x0F)])
            }
        }
        return String(decoding: output, as: UTF8.self)
    }

    @inline(__always)
    private static func isSafe(_ byte: UInt8) -> Bool {
        byte >= 0x20 && byte < 0x7F && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\")
    }

    private static let hexDigits: [UInt8] = Array("0123456789ABCDEF".utf8)
}
