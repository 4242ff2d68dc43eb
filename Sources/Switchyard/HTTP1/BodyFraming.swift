/// Where a message body ends, tracked over bytes that are forwarded unchanged.
///
/// The proxy never decodes a body: it only needs to know which forwarded bytes still belong to the current
/// message, so that the next message (a pipelined request, or the next response on a pooled connection) starts
/// in the right place.
enum BodyFraming: Equatable {
    /// No body, or the body is complete.
    case done
    /// `Content-Length`: this many bytes remain.
    case length(Int)
    /// `Transfer-Encoding: chunked`, tracked by a ``ChunkedBodyTracker``.
    case chunked(ChunkedBodyTracker)
    /// The body runs until the sender closes (a response with neither length nor chunking).
    case untilClose

    /// Outcome of ``consume(_:)``.
    enum Progress: Equatable {
        /// All given bytes belong to the body and more are expected.
        case needMore
        /// The body ends after this many of the given bytes.
        case complete(Int)
        /// The chunked framing is invalid.
        case invalid(String)
    }

    /// Accounts for `bytes`, which follow what was consumed before.
    mutating func consume(_ bytes: UnsafeRawBufferPointer) -> Progress {
        switch self {
        case .done:
            return .complete(0)
        case .untilClose:
            return .needMore
        case .length(let remaining):
            if bytes.count < remaining {
                self = .length(remaining - bytes.count)
                return .needMore
            }
            self = .done
            return .complete(remaining)
        case .chunked(var tracker):
            let progress = tracker.consume(bytes)
            switch progress {
            case .needMore:
                self = .chunked(tracker)
            case .complete:
                self = .done
            case .invalid:
                self = .done
            }
            return progress
        }
    }

    var isComplete: Bool {
        self == .done
    }
}

/// Follows the framing of a chunked body (RFC 9112 §7.1) byte by byte, skipping chunk data in one step.
///
/// Chunk sizes must be hexadecimal digits with no sign, prefix or whitespace and at most 15 digits; extensions are
/// tolerated but bounded. Trailer fields follow the header grammar strictly (`token ":" OWS value CRLF`, no
/// obs-fold), and fields that must not be trailers (framing, routing, hop-by-hop, authentication, cookies,
/// content metadata; RFC 9110 §6.5.1) are errors, which RFC 9110 allows in place of ignoring them: a backend that
/// ends the body at the last chunk would otherwise read `0\r\nGET /smuggled …` as a second request. Anything else
/// is invalid, which the proxy answers with 400 (a lax chunk parser is a classic request-smuggling vector).
struct ChunkedBodyTracker: Equatable {
    private enum State: Equatable {
        case size(digits: Int, value: Int)
        case sizeExtension
        case sizeLineFeed
        case data(remaining: Int)
        case dataCarriageReturn
        case dataLineFeed
        case trailerLineStart
        case trailerName
        case trailerValue
        case trailerLineFeed
        case finalLineFeed
    }

    private var state: State = .size(digits: 0, value: 0)
    /// The size of the chunk whose size line is being read.
    private var pendingSize = 0
    /// Bytes spent on extensions and trailers, which carry no payload and so are bounded.
    private var overhead = 0
    /// Most extension and trailer bytes accepted for one body.
    static let maximumOverhead = 16 * 1024
    /// The lower-cased name of the trailer field being read, up to the longest forbidden name (a longer name is
    /// allowed whatever it is). Empty, and so allocation-free, for bodies without trailers.
    private var trailerName: [UInt8] = []

    init() {}

    mutating func consume(_ bytes: UnsafeRawBufferPointer) -> BodyFraming.Progress {
        var index = 0
        let count = bytes.count
        while index < count {
            switch state {
            case .data(let remaining):
                let take = min(remaining, count - index)
                index += take
                state = remaining == take ? .dataCarriageReturn : .data(remaining: remaining - take)
                continue
            default:
                break
            }
            let byte = bytes[index]
            index += 1
            switch state {
            case .size(let digits, let value):
                if let digit = Self.hexValue(byte) {
                    guard digits < 15 else { return .invalid("chunk size too large") }
                    state = .size(digits: digits + 1, value: value << 4 | digit)
                } else if digits == 0 {
                    return .invalid("invalid chunk size")
                } else if byte == HTTPSyntax.cr {
                    pendingSize = value
                    state = .sizeLineFeed
                } else if byte == HTTPSyntax.semicolon || byte == HTTPSyntax.space || byte == HTTPSyntax.tab {
                    pendingSize = value
                    state = .sizeExtension
                } else {
                    return .invalid("invalid chunk size")
                }
            case .sizeExtension:
                overhead += 1
                guard overhead <= Self.maximumOverhead else { return .invalid("chunk extensions too large") }
                if byte == HTTPSyntax.cr {
                    state = .sizeLineFeed
                } else if !HTTPSyntax.isFieldValueCharacter(byte) {
                    return .invalid("invalid chunk extension")
                }
            case .sizeLineFeed:
                guard byte == HTTPSyntax.lf else { return .invalid("chunk size line without LF") }
                state = pendingSize == 0 ? .trailerLineStart : .data(remaining: pendingSize)
            case .data:
                break  // handled above
            case .dataCarriageReturn:
                guard byte == HTTPSyntax.cr else { return .invalid("chunk data longer than its size") }
                state = .dataLineFeed
            case .dataLineFeed:
                guard byte == HTTPSyntax.lf else { return .invalid("chunk data without CRLF") }
                state = .size(digits: 0, value: 0)
            case .trailerLineStart:
                if byte == HTTPSyntax.cr {
                    state = .finalLineFeed
                } else {
                    guard HTTPSyntax.isTokenCharacter(byte) else { return .invalid("invalid trailer field name") }
                    trailerName.removeAll(keepingCapacity: true)
                    trailerName.append(HTTPSyntax.lowercase(byte))
                    state = .trailerName
                }
            case .trailerName:
                overhead += 1
                guard overhead <= Self.maximumOverhead else { return .invalid("trailer section too large") }
                if byte == HTTPSyntax.colon {
                    guard !Self.isForbiddenTrailer(trailerName) else {
                        return .invalid("field not allowed in trailers")
                    }
                    state = .trailerValue
                } else if HTTPSyntax.isTokenCharacter(byte) {
                    if trailerName.count <= Self.longestForbiddenTrailer {
                        trailerName.append(HTTPSyntax.lowercase(byte))
                    }
                } else {
                    return .invalid("invalid trailer field name")
                }
            case .trailerValue:
                overhead += 1
                guard overhead <= Self.maximumOverhead else { return .invalid("trailer section too large") }
                if byte == HTTPSyntax.cr {
                    state = .trailerLineFeed
                } else if !HTTPSyntax.isFieldValueCharacter(byte) {
                    return .invalid("invalid trailer field value")
                }
            case .trailerLineFeed:
                guard byte == HTTPSyntax.lf else { return .invalid("trailer line without LF") }
                state = .trailerLineStart
            case .finalLineFeed:
                guard byte == HTTPSyntax.lf else { return .invalid("last chunk without final CRLF") }
                return .complete(index)
            }
        }
        return .needMore
    }

    /// Fields a trailer must not carry: they frame, route or authorise the message, or are hop-by-hop, and a
    /// recipient that merged them into the header section would act on what the balancer never checked.
    private static let forbiddenTrailers: Set<[UInt8]> = Set(
        [
            "content-length", "transfer-encoding", "host", "connection", "keep-alive", "proxy-connection", "te",
            "trailer", "upgrade", "expect", "max-forwards", "range", "if-match", "if-none-match", "if-modified-since",
            "if-unmodified-since", "if-range", "authorization", "proxy-authorization", "proxy-authenticate",
            "www-authenticate", "cookie", "set-cookie", "content-type", "content-encoding", "content-range",
            "cache-control", "pragma", "age", "expires", "date", "location", "retry-after", "vary",
            "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "forwarded",
        ].map { Array($0.utf8) }
    )
    private static let longestForbiddenTrailer = forbiddenTrailers.map(\.count).max() ?? 0

    private static func isForbiddenTrailer(_ name: [UInt8]) -> Bool {
        name.count <= longestForbiddenTrailer && forbiddenTrailers.contains(name)
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(byte - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }
}
