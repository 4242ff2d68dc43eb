import Foundation
import Logging
import NIOCore

@testable import Switchyard

/// The libFuzzer entry point: runs the harness that `SWITCHYARD_FUZZ_TARGET` names on one input. A harness checks
/// invariants with `precondition`: a broken invariant (or any crash, or what AddressSanitizer finds) is a finding,
/// which libFuzzer reports and saves.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    switch FuzzTarget.selected {
    case .requestHead: RequestHeadHarness.run(bytes)
    case .responseHead: ResponseHeadHarness.run(bytes)
    case .body: BodyFramingHarness.run(bytes)
    case .configuration: ConfigurationHarness.run(bytes)
    case .host: HostHarness.run(bytes)
    case .admin: AdminRequestHarness.run(bytes)
    }
    return 0
}

/// libFuzzer's driver: parses its options, runs the inputs, reports. (`-sanitize=fuzzer` links libFuzzer.)
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt
) -> CInt

/// The program's entry point. SwiftPM links an executable with its `main` defined as `<module>_main` (so that tests
/// can link the module), which takes the place of libFuzzer's own `main`: this one hands over to libFuzzer's
/// driver.
@_cdecl("SwitchyardFuzz_main")
public func fuzzMain(
    _ argc: CInt,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { start, size in fuzzOneInput(start, size) }
}

/// What is fuzzed, by `SWITCHYARD_FUZZ_TARGET`.
enum FuzzTarget: String, CaseIterable {
    case requestHead = "request-head"
    case responseHead = "response-head"
    case body
    case configuration
    case host
    case admin

    static let selected: FuzzTarget = {
        let name = ProcessInfo.processInfo.environment["SWITCHYARD_FUZZ_TARGET"] ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            let names = allCases.map(\.rawValue).joined(separator: ", ")
            FileHandle.standardError.write(Data("SWITCHYARD_FUZZ_TARGET must be one of: \(names)\n".utf8))
            exit(2)
        }
        return target
    }()
}

/// Where an input is cut into the reads a connection would see: the first byte seeds the cut points, the rest is
/// the stream. Every harness of a parser that keeps state across reads feeds the same stream whole and cut, and
/// requires the same outcome: a parser whose verdict depends on how TCP split the bytes could be steered.
struct Cuts {
    let stream: UnsafeRawBufferPointer
    /// Ascending ends of the successive reads; the last is the stream's end.
    let ends: [Int]

    init(_ input: UnsafeRawBufferPointer) {
        guard let seed = input.first else {
            stream = input
            ends = [0]
            return
        }
        stream = UnsafeRawBufferPointer(rebasing: input[1...])
        var generator = SplitMix(seed: UInt64(seed))
        var ends: [Int] = []
        var position = 0
        while position < stream.count {
            position = min(stream.count, position + 1 + Int(generator.next() % 64))
            ends.append(position)
        }
        self.ends = ends.isEmpty ? [0] : ends
    }

    /// What `parse` says of the stream as it grows read by read (each call sees the stream up to a cut, as a
    /// connection's buffer would): its first answer other than `pending`, or `pending` at the stream's end.
    func firstVerdict<Verdict: Equatable>(
        pending: Verdict,
        _ parse: (UnsafeRawBufferPointer) -> Verdict
    ) -> Verdict {
        for end in ends {
            let verdict = parse(UnsafeRawBufferPointer(rebasing: stream[..<end]))
            if verdict != pending { return verdict }
        }
        return pending
    }
}

/// A small deterministic generator, so that a saved input replays the same cuts.
struct SplitMix {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The request-head parser on arbitrary bytes: the same verdict however the bytes are cut; a head it takes lies
/// inside the bytes, ends with an empty line, has consistent framing, and once rewritten for the backend parses
/// again to the same request (so the backend reads what the balancer read); a head it refuses is never written.
enum RequestHeadHarness {
    static func parser() -> RequestHeadParser {
        RequestHeadParser(maximumHeadBytes: 16 * 1024, maximumHeaderCount: 100, replacesRequestID: true)
    }

    static func run(_ input: UnsafeRawBufferPointer) {
        let cuts = Cuts(input)
        var whole = parser()
        let verdict = whole.parse(cuts.stream)
        var cut = parser()
        let stepped = cuts.firstVerdict(pending: .incomplete) { cut.parse($0) }
        precondition(stepped == verdict, "the verdict depends on the cuts: \(stepped) vs \(verdict)")
        guard case .complete(let head) = verdict else { return }
        check(head, parser: whole, in: cuts.stream)

        // Rewritten as the proxy forwards it, the head must read the same to a parser as strict as ours.
        var output = ByteBuffer()
        HeadWriter.writeRequest(
            cuts.stream,
            head: head,
            dropped: whole.droppedLines,
            forwardedFor: whole.forwardedFor,
            client: HeadWriter.ClientInfo(address: "192.0.2.1", scheme: "http"),
            upgrade: head.requestsUpgrade,
            requestID: nil,
            into: &output
        )
        output.withUnsafeReadableBytes { forwarded in
            var again = parser()
            guard case .complete(let reread) = again.parse(forwarded) else {
                preconditionFailure(
                    "the forwarded head does not parse: \(again.parse(forwarded)); it was "
                        + String(decoding: forwarded, as: UTF8.self).debugDescription
                )
            }
            precondition(reread.end == forwarded.count, "the forwarded head has bytes after its end")
            precondition(reread.methodKind == head.methodKind && reread.minorVersion == head.minorVersion)
            precondition(
                Array(forwarded[reread.method]) == Array(cuts.stream[head.method]),
                "the forwarded method differs"
            )
            precondition(reread.contentLength == head.contentLength, "the forwarded Content-Length differs")
            precondition(reread.isChunked == head.isChunked, "the forwarded framing differs")
            let host = head.routingHost.map { Array(cuts.stream[$0]) }
            precondition(reread.host.map { Array(forwarded[$0]) } == host, "the forwarded Host differs")
            precondition(reread.absoluteForm == nil, "an absolute-form target was forwarded as such")
        }
    }

    static func check(_ head: RequestHead, parser: RequestHeadParser, in bytes: UnsafeRawBufferPointer) {
        precondition(0 <= head.start && head.start < head.end && head.end <= bytes.count)
        precondition(head.end - head.start >= 4)
        precondition(
            Array(bytes[(head.end - 4)..<head.end]) == Array("\r\n\r\n".utf8),
            "the head ends without CRLFCRLF"
        )
        let inside = head.start..<head.end
        var ranges = [head.method, head.target] + [head.host, head.upgrade, head.http2Settings].compactMap { $0 }
        if let absolute = head.absoluteForm { ranges += [absolute.authority, absolute.originForm] }
        ranges += parser.droppedLines + parser.forwardedFor + parser.cookies + parser.requestIDs
        for range in ranges {
            precondition(range.lowerBound >= inside.lowerBound && range.upperBound <= inside.upperBound)
        }
        precondition(!head.method.isEmpty && !head.target.isEmpty)
        precondition(head.minorVersion == 0 || head.minorVersion == 1)
        precondition(!(head.isChunked && head.contentLength != nil), "both chunked and a Content-Length")
        precondition((head.contentLength ?? 0) >= 0)
        precondition(!(head.isChunked && head.minorVersion == 0), "chunked in HTTP/1.0")
        for (earlier, later) in zip(parser.droppedLines, parser.droppedLines.dropFirst()) {
            precondition(earlier.upperBound <= later.lowerBound, "dropped lines overlap or are out of order")
        }
        if let host = head.host {
            let value = Array(bytes[host])
            precondition(!value.contains(UInt8(ascii: "\r")) && !value.contains(UInt8(ascii: "\n")))
        }
    }
}

/// The response-head parser: the same verdict however the bytes are cut; a head it takes lies inside the bytes,
/// with a three-digit status and consistent framing.
enum ResponseHeadHarness {
    static func run(_ input: UnsafeRawBufferPointer) {
        let cuts = Cuts(input)
        var whole = ResponseHeadParser(maximumHeadBytes: 16 * 1024, maximumHeaderCount: 100)
        let verdict = whole.parse(cuts.stream)
        var cut = ResponseHeadParser(maximumHeadBytes: 16 * 1024, maximumHeaderCount: 100)
        let stepped = cuts.firstVerdict(pending: .incomplete) { cut.parse($0) }
        precondition(stepped == verdict, "the verdict depends on the cuts: \(stepped) vs \(verdict)")
        guard case .complete(let head) = verdict else { return }
        precondition(head.end >= 4 && head.end <= cuts.stream.count)
        precondition(Array(cuts.stream[(head.end - 4)..<head.end]) == Array("\r\n\r\n".utf8))
        precondition((100...999).contains(head.status), "status \(head.status)")
        precondition(!(head.isChunked && head.contentLength != nil), "both chunked and a Content-Length")
        for line in whole.droppedLines {
            precondition(line.lowerBound >= 0 && line.upperBound <= head.end)
        }
    }
}

/// Body framing: the first byte after the cut seed picks a `Content-Length` body (of the next two bytes' length)
/// or a chunked one; the rest is the stream. The body must end at the same byte, or be refused, however the stream
/// is cut, and never end past the bytes given.
enum BodyFramingHarness {
    static func framing(_ selector: UnsafeRawBufferPointer) -> BodyFraming {
        guard selector.count >= 3, selector[0] & 1 == 0 else { return .chunked(ChunkedBodyTracker()) }
        return .length(Int(selector[1]) << 8 | Int(selector[2]))
    }

    /// Where the body ended in `stream` (`nil`: not yet), or why it was refused, fed in reads ending at `ends`.
    static func outcome(
        _ framing: BodyFraming,
        _ stream: UnsafeRawBufferPointer,
        ends: [Int]
    ) -> Result<Int?, Refused> {
        var framing = framing
        var position = 0
        for end in ends where end > position {
            let read = UnsafeRawBufferPointer(rebasing: stream[position..<end])
            switch framing.consume(read) {
            case .needMore:
                position = end
            case .complete(let taken):
                precondition(taken >= 0 && taken <= read.count, "the body ended past the bytes given")
                return .success(position + taken)
            case .invalid(let reason):
                return .failure(Refused(reason: reason))
            }
        }
        return .success(nil)
    }

    struct Refused: Error, Equatable {
        var reason: String
    }

    static func run(_ input: UnsafeRawBufferPointer) {
        let cuts = Cuts(input)
        let selector = UnsafeRawBufferPointer(rebasing: cuts.stream.prefix(3))
        let start = min(3, cuts.stream.count)
        let stream = UnsafeRawBufferPointer(rebasing: cuts.stream[start...])
        let ends = cuts.ends.map { $0 - start }.filter { $0 > 0 }
        let whole = outcome(framing(selector), stream, ends: [stream.count])
        let stepped = outcome(framing(selector), stream, ends: ends)
        switch (whole, stepped) {
        case (.success(let a), .success(let b)):
            precondition(a == b, "the body ends at \(String(describing: a)) whole, \(String(describing: b)) cut")
        case (.failure, .failure):
            break
        default:
            preconditionFailure("refused one way and not the other: \(whole) vs \(stepped)")
        }
    }
}

/// The configuration loader on arbitrary text, as a whole file and as an API tenant's document: a configuration or
/// a `ConfigurationError`, nothing else (no crash, no hang).
enum ConfigurationHarness {
    static func run(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        _ = try? ConfigurationLoader.parse(yaml: text, file: "fuzz.yaml")
        _ = try? ConfigurationLoader.parseManagedTenant(yaml: text, file: "request body")
    }
}

/// `Host` and SNI normalisation: a name it takes is lower case, at most 300 bytes, normalises to itself, and the
/// route table finds a tenant for it only under a domain the tenant has.
enum HostHarness {
    static let table: RouteTable = {
        let backend = Backend(address: try! SocketAddress(ipAddress: "127.0.0.1", port: 9001))
        let tenants = [
            Tenant(name: "shop", domains: ["shop.test", "*.shop.test"], backends: [backend]),
            Tenant(name: "ip", domains: ["127.0.0.1", "[::1]"], backends: [backend]),
        ]
        return try! RouteTable(tenants: tenants)
    }()

    static func run(_ input: UnsafeRawBufferPointer) {
        guard let name = HostName.normalize(input) else { return }
        precondition(name.utf8.count <= HostName.maximumLength)
        precondition(name == name.lowercased(), "not lower case: \(name)")
        precondition(HostName.normalize(name) == name, "normalising \(name) again gives another name")
        precondition(!name.hasSuffix("."), "a trailing dot kept: \(name)")
        if let tenant = table.tenant(forNormalizedHost: name) {
            switch tenant.name {
            case "shop": precondition(name == "shop.test" || name.hasSuffix(".shop.test"), "\(name) routed to shop")
            case "ip": precondition(name == "127.0.0.1" || name == "[::1]", "\(name) routed to ip")
            default: preconditionFailure("an unknown tenant")
            }
        }
    }
}

/// The admin API's request decoding: the first line is `METHOD TARGET`, the rest the body. Whatever it is, the
/// answer is a status from 200 to 599 with a JSON body (the metrics page aside), and an error answer names a code.
enum AdminRequestHarness {
    static let api: AdminAPI = {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        return AdminAPI(routes: RouteSource(HostHarness.table), logger: logger) { 0 }
    }()

    static func run(_ input: UnsafeRawBufferPointer) {
        let newline = input.firstIndex(of: UInt8(ascii: "\n")) ?? input.count
        let line = String(decoding: input[..<newline], as: UTF8.self)
        let parts = line.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return }
        let body = ByteBuffer(bytes: input[min(newline + 1, input.count)...])
        let request = AdminAPI.Request(method: String(parts[0]), target: String(parts[1]), body: body)
        let response = api.respond(to: request, access: .local(.user(uid: 0)))
        precondition((200..<600).contains(response.status), "status \(response.status)")
        guard response.contentType == "application/json" else { return }
        let object = try? JSONSerialization.jsonObject(with: response.body)
        precondition(object != nil, "the answer is not JSON: \(String(decoding: response.body, as: UTF8.self))")
        if response.status >= 400 {
            precondition(response.errorCode != nil, "an error answer without a code")
        }
    }
}
