import Testing

@testable import Switchyard

private func consume(_ framing: inout BodyFraming, _ text: String) -> BodyFraming.Progress {
    Array(text.utf8).withUnsafeBytes { framing.consume($0) }
}

private func consume(_ framing: inout BodyFraming, _ bytes: ArraySlice<UInt8>) -> BodyFraming.Progress {
    bytes.withUnsafeBytes { framing.consume($0) }
}

/// The progress of a fresh chunked body fed `text` in one piece.
private func chunked(_ text: String) -> BodyFraming.Progress {
    var framing = BodyFraming.chunked(ChunkedBodyTracker())
    return consume(&framing, text)
}

private func isInvalid(_ progress: BodyFraming.Progress) -> Bool {
    if case .invalid = progress { return true }
    return false
}

/// A chunked body with extensions, several chunks and a trailer section.
private let richChunkedBody =
    "5\r\nhello\r\n"
    + "1A;name=value;flag\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    + "3 ; ext=\"quoted ; value\"\r\n\r\n\r\r\n"
    + "0;last\r\n"
    + "X-Checksum: abc\r\n"
    + "X-Other:\t1\r\n"
    + "\r\n"

/// Where message bodies end: Content-Length bodies across pieces, chunked bodies in any split (extensions,
/// trailers, bytes after the end), and every chunked framing error that could let a request be read two ways.
@Suite("BodyFraming and ChunkedBodyTracker")
struct BodyFramingTests {
    @Test("a Content-Length body across pieces")
    func lengthAcrossPieces() {
        var framing = BodyFraming.length(10)
        #expect(consume(&framing, "abc") == .needMore)
        #expect(framing == .length(7))
        #expect(!framing.isComplete)
        #expect(consume(&framing, "") == .needMore)
        #expect(framing == .length(7))
        #expect(consume(&framing, "defg") == .needMore)
        #expect(framing == .length(3))
        // The last piece holds the end of this body and the start of the next message.
        #expect(consume(&framing, "hijGET /") == .complete(3))
        #expect(framing == .done)
        #expect(framing.isComplete)
        #expect(consume(&framing, "more") == .complete(0))
    }

    @Test("a Content-Length body in one exact piece")
    func lengthExact() {
        var framing = BodyFraming.length(5)
        #expect(consume(&framing, "hello") == .complete(5))
        #expect(framing.isComplete)
    }

    @Test("a zero length body is complete at once")
    func zeroLength() {
        var framing = BodyFraming.length(0)
        #expect(consume(&framing, "") == .complete(0))
        #expect(framing.isComplete)
    }

    @Test("done and until-close bodies")
    func doneAndUntilClose() {
        var done = BodyFraming.done
        #expect(consume(&done, "anything") == .complete(0))
        var untilClose = BodyFraming.untilClose
        #expect(consume(&untilClose, "abc") == .needMore)
        #expect(consume(&untilClose, String(repeating: "x", count: 100_000)) == .needMore)
        #expect(untilClose == .untilClose)
        #expect(!untilClose.isComplete)
    }

    @Test("a simple chunked body")
    func simpleChunked() {
        let body = "5\r\nhello\r\n0\r\n\r\n"
        var framing = BodyFraming.chunked(ChunkedBodyTracker())
        #expect(consume(&framing, body) == .complete(body.utf8.count))
        #expect(framing.isComplete)
        #expect(chunked("0\r\n\r\n") == .complete(5))
    }

    @Test("chunk sizes are hexadecimal, either case, leading zeros allowed")
    func chunkSizes() {
        let body = "a\r\n0123456789\r\nB\r\n0123456789a\r\n00000000000001\r\nz\r\n000\r\n\r\n"
        #expect(chunked(body) == .complete(body.utf8.count))
        // Fifteen digits are accepted.
        let fifteen = "000000000000003\r\nabc\r\n0\r\n\r\n"
        #expect(chunked(fifteen) == .complete(fifteen.utf8.count))
    }

    @Test("chunk extensions are skipped")
    func extensions() {
        let body = "5;name=value\r\nhello\r\n5 ;a;b=\"c d\"\r\nworld\r\n0;end=1\r\n\r\n"
        #expect(chunked(body) == .complete(body.utf8.count))
    }

    @Test("a trailer section is skipped")
    func trailers() {
        let body = "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
        #expect(chunked(body) == .complete(body.utf8.count))
    }

    @Test("chunk data may contain CR, LF and anything else")
    func binaryData() {
        let body = "6\r\n\r\n0\r\n\r\r\n0\r\n\r\n"
        #expect(chunked(body) == .complete(body.utf8.count))
    }

    @Test("a chunked body split in two at every byte completes exactly at its end")
    func everySplit() {
        let body = Array(richChunkedBody.utf8)
        let next = Array("GET /next HTTP/1.1\r\n".utf8)
        let stream = body + next
        for split in 0...stream.count {
            var framing = BodyFraming.chunked(ChunkedBodyTracker())
            let first = consume(&framing, stream[0..<split])
            if split < body.count {
                #expect(first == .needMore, "split at \(split)")
                let second = consume(&framing, stream[split...])
                #expect(second == .complete(body.count - split), "split at \(split)")
            } else {
                #expect(first == .complete(body.count), "split at \(split)")
            }
            #expect(framing.isComplete, "split at \(split)")
        }
    }

    @Test("a chunked body fed one byte at a time")
    func byteByByte() {
        let body = Array(richChunkedBody.utf8)
        var framing = BodyFraming.chunked(ChunkedBodyTracker())
        for index in 0..<(body.count - 1) {
            #expect(consume(&framing, body[index...index]) == .needMore, "byte \(index)")
        }
        #expect(consume(&framing, body[(body.count - 1)...]) == .complete(1))
    }

    @Test("bytes after the end of a chunked body are not counted")
    func bytesAfterEnd() {
        let body = "3\r\nabc\r\n0\r\n\r\n"
        #expect(chunked(body + "GET / HTTP/1.1\r\n") == .complete(body.utf8.count))
        #expect(chunked(body + "\r\n") == .complete(body.utf8.count))
    }

    @Test(
        "invalid chunk sizes",
        arguments: [
            "0x5\r\nhello\r\n0\r\n\r\n",
            "-1\r\n",
            "+5\r\nhello\r\n0\r\n\r\n",
            "g\r\n",
            "5g\r\nhello\r\n0\r\n\r\n",
            "\r\n",
            "\r\n5\r\nhello\r\n0\r\n\r\n",
            " 5\r\nhello\r\n0\r\n\r\n",
            ";ext\r\n",
            "1000000000000000\r\n",
            "ffffffffffffffff\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "5\r\rhello\r\n0\r\n\r\n",
            "5\r\nhello\r\n0\n\r\n",
        ]
    )
    func invalidSize(body: String) {
        #expect(isInvalid(chunked(body)), "\(chunked(body))")
    }

    @Test("chunk data longer than its size")
    func dataTooLong() {
        #expect(isInvalid(chunked("5\r\nhelloX\r\n0\r\n\r\n")))
        #expect(isInvalid(chunked("3\r\nhello\r\n0\r\n\r\n")))
    }

    @Test("chunk data without its CRLF")
    func missingDataCRLF() {
        #expect(isInvalid(chunked("5\r\nhello0\r\n\r\n")))
        #expect(isInvalid(chunked("5\r\nhello\rX")))
        #expect(isInvalid(chunked("5\r\nhello\n0\r\n\r\n")))
    }

    @Test("invalid extensions and trailers")
    func invalidExtensionsAndTrailers() {
        #expect(isInvalid(chunked("5;a\u{1}b\r\nhello\r\n0\r\n\r\n")))
        #expect(isInvalid(chunked("5;a\nb\r\nhello\r\n0\r\n\r\n")))
        #expect(isInvalid(chunked("0\r\n X-Folded: 1\r\n\r\n")))
        #expect(isInvalid(chunked("0\r\nX-A: a\u{0}b\r\n\r\n")))
        #expect(isInvalid(chunked("0\r\nX-A: 1\n\r\n")))
        #expect(isInvalid(chunked("0\r\n\rX")))
    }

    @Test("extensions and trailers are bounded")
    func overheadBounded() {
        let longExtension = "1;" + String(repeating: "e", count: ChunkedBodyTracker.maximumOverhead + 1) + "\r\na\r\n"
        #expect(isInvalid(chunked(longExtension)))
        let longTrailer = "0\r\nX: " + String(repeating: "t", count: ChunkedBodyTracker.maximumOverhead + 1) + "\r\n"
        #expect(isInvalid(chunked(longTrailer)))
    }

    @Test("an invalid body leaves the framing finished")
    func invalidEndsFraming() {
        var framing = BodyFraming.chunked(ChunkedBodyTracker())
        #expect(isInvalid(consume(&framing, "zz\r\n")))
        #expect(framing.isComplete)
    }

    @Test("a large chunk is skipped in one step across pieces")
    func largeChunk() {
        var framing = BodyFraming.chunked(ChunkedBodyTracker())
        #expect(consume(&framing, "10000\r\n") == .needMore)
        #expect(consume(&framing, String(repeating: "x", count: 40_000)) == .needMore)
        #expect(consume(&framing, String(repeating: "y", count: 25_536)) == .needMore)
        #expect(consume(&framing, "\r\n0\r\n\r\nNEXT") == .complete(7))
    }
}
