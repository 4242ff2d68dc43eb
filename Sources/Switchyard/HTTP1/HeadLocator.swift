#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds where an HTTP/1 head ends in bytes that arrive in pieces, without rescanning what it has seen.
///
/// Line ends must be CRLF: a bare LF is refused rather than guessed at, because two parsers disagreeing on line
/// ends is how requests get smuggled.
struct HeadLocator {
    /// Bytes already known not to contain the end of the head.
    private var scanned = 0

    /// Forgets progress; call when a new head starts.
    mutating func reset() {
        scanned = 0
    }

    enum Result: Equatable {
        /// More bytes are needed.
        case incomplete
        /// The head ends just before this offset (after its empty line).
        case complete(end: Int)
        /// A bare LF ends a line.
        case bareLineFeed
    }

    /// Looks for the empty line ending the head in `bytes`, whose first `start` bytes are skipped (leading empty
    /// lines before a request line).
    mutating func locate(in bytes: UnsafeRawBufferPointer, start: Int) -> Result {
        guard let base = bytes.baseAddress else { return .incomplete }
        var index = max(scanned, start)
        while index < bytes.count {
            guard let found = memchr(base + index, Int32(HTTPSyntax.lf), bytes.count - index) else {
                break
            }
            let lf = base.distance(to: UnsafeRawPointer(found))
            if lf == start || bytes[lf - 1] != HTTPSyntax.cr {
                return .bareLineFeed
            }
            // "\r\n\r\n": the line that just ended was empty.
            if lf >= start + 3, bytes[lf - 2] == HTTPSyntax.lf {
                return .complete(end: lf + 1)
            }
            index = lf + 1
        }
        // Keep the last three bytes unscanned: they may begin the terminator.
        scanned = max(start, bytes.count - 3)
        return .incomplete
    }
}
