import NIOCore

/// The id a request is known by in the balancer's access log and in its backend's logs: the client's
/// `X-Request-ID` when it has exactly one and it is sane, else one the balancer makes (as Envoy's `x-request-id`
/// and nginx's `$request_id`). The backend always gets exactly one `X-Request-ID` field, written by the balancer.
enum RequestID {
    /// The client's value, in the bytes of the request.
    case client(Range<Int>)
    /// One the balancer made: 128 bits, written as 32 hexadecimal digits.
    case generated(UInt64, UInt64)

    /// The longest client value passed on.
    static let maximumLength = 200

    /// The id of a request whose `X-Request-ID` values are `values`: the client's when there is one value of 1 to
    /// ``maximumLength`` bytes of letters, digits and `-_.:+/=` (UUIDs, ULIDs, hex and base64 ids all are), so that
    /// nothing a backend or a log reader could misparse is passed on; otherwise a new one from `generator`.
    static func choose(
        _ values: [Range<Int>],
        in bytes: UnsafeRawBufferPointer,
        generator: inout RequestIDGenerator
    ) -> RequestID {
        if values.count == 1, let value = values.first, isAcceptable(UnsafeRawBufferPointer(rebasing: bytes[value])) {
            return .client(value)
        }
        return generator.next()
    }

    static func isAcceptable(_ value: UnsafeRawBufferPointer) -> Bool {
        guard !value.isEmpty, value.count <= maximumLength else { return false }
        return value.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            case UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: "+"),
                UInt8(ascii: "/"), UInt8(ascii: "="):
                return true
            default:
                return false
            }
        }
    }

    /// Writes the id (the client's bytes from `bytes`, or the generated digits).
    func write(from bytes: UnsafeRawBufferPointer, into output: inout ByteBuffer) {
        switch self {
        case .client(let range):
            output.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[range]))
        case .generated(let high, let low):
            Self.writeHex(high, into: &output)
            Self.writeHex(low, into: &output)
        }
    }

    /// The id as text, for the access log.
    func text(from bytes: UnsafeRawBufferPointer) -> String {
        switch self {
        case .client(let range):
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        case .generated:
            var buffer = ByteBuffer()
            write(from: bytes, into: &buffer)
            return String(buffer: buffer)
        }
    }

    private static func writeHex(_ value: UInt64, into output: inout ByteBuffer) {
        let digits: StaticString = "0123456789abcdef"
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: 16) { buffer in
            digits.withUTF8Buffer { hex in
                for index in 0..<16 {
                    buffer[index] = hex[Int((value >> UInt64(60 - 4 * index)) & 0xF)]
                }
            }
            return 16
        }
    }
}

/// Makes the request ids of one client connection: 96 random bits drawn when the connection opens and a 32-bit
/// count of its requests, so each id is unique without a random draw (a system call) per request.
struct RequestIDGenerator {
    private let high: UInt64
    private let low: UInt32
    private var count: UInt32 = 0

    /// A generator with a prefix from the system's random source.
    init() {
        var random = SystemRandomNumberGenerator()
        self.init(high: random.next(), low: UInt32(truncatingIfNeeded: random.next() as UInt64))
    }

    /// A generator with a given prefix (tests).
    init(high: UInt64, low: UInt32) {
        self.high = high
        self.low = low
    }

    mutating func next() -> RequestID {
        count &+= 1
        return .generated(high, UInt64(low) << 32 | UInt64(count))
    }
}
