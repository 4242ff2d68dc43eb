/// Byte classes of RFC 9110/9112 used by the head parsers.
enum HTTPSyntax {
    static let cr = UInt8(ascii: "\r")
    static let lf = UInt8(ascii: "\n")
    static let space = UInt8(ascii: " ")
    static let tab = UInt8(ascii: "\t")
    static let colon = UInt8(ascii: ":")
    static let comma = UInt8(ascii: ",")
    static let semicolon = UInt8(ascii: ";")

    /// `tchar` of RFC 9110 §5.6.2, as a 256-entry table so the check is one load.
    private static let tcharTable: [Bool] = {
        var table = [Bool](repeating: false, count: 256)
        for byte in UInt8(ascii: "0")...UInt8(ascii: "9") { table[Int(byte)] = true }
        for byte in UInt8(ascii: "a")...UInt8(ascii: "z") { table[Int(byte)] = true }
        for byte in UInt8(ascii: "A")...UInt8(ascii: "Z") { table[Int(byte)] = true }
        for byte in "!#$%&'*+-.^_`|~".utf8 { table[Int(byte)] = true }
        return table
    }()

    @inline(__always)
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        tcharTable.withUnsafeBufferPointer { $0[Int(byte)] }
    }

    /// `field-vchar`, `SP` and `HTAB` (obs-text included, as RFC 9110 §5.5 allows).
    @inline(__always)
    static func isFieldValueCharacter(_ byte: UInt8) -> Bool {
        byte == tab || (byte >= 0x20 && byte != 0x7F)
    }

    /// Characters allowed in a request target: visible ASCII.
    @inline(__always)
    static func isTargetCharacter(_ byte: UInt8) -> Bool {
        byte > 0x20 && byte < 0x7F
    }

    @inline(__always)
    static func lowercase(_ byte: UInt8) -> UInt8 {
        (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) ? byte | 0x20 : byte
    }

    /// Case-insensitive comparison of `bytes[range]` with a lower-case ASCII literal.
    @inline(__always)
    static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ literal: StaticString) -> Bool {
        guard range.count == literal.utf8CodeUnitCount else { return false }
        let literalBytes = literal.utf8Start
        var offset = 0
        for index in range {
            guard lowercase(bytes[index]) == literalBytes[offset] else { return false }
            offset += 1
        }
        return true
    }

    /// Calls `body` with each comma-separated element of a list-valued field (RFC 9110 §5.6.1), trimmed of
    /// whitespace; empty elements are skipped as the RFC requires.
    @inline(__always)
    static func forEachListElement(
        _ bytes: UnsafeRawBufferPointer,
        _ range: Range<Int>,
        _ body: (Range<Int>) -> Void
    ) {
        var start = range.lowerBound
        var index = range.lowerBound
        while index <= range.upperBound {
            if index == range.upperBound || bytes[index] == comma {
                var lower = start
                var upper = index
                while lower < upper, bytes[lower] == space || bytes[lower] == tab { lower += 1 }
                while upper > lower, bytes[upper - 1] == space || bytes[upper - 1] == tab { upper -= 1 }
                if lower < upper { body(lower..<upper) }
                start = index + 1
            }
            index += 1
        }
    }
}
