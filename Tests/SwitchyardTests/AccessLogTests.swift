import Foundation
import NIOCore
import SwitchyardTLS
import Testing

@testable import Switchyard

@Suite("Request ids and the access log's formats")
struct AccessLogTests {
    static func routes() throws -> RouteSource {
        RouteSource(
            try RouteTable(tenants: [
                Tenant(
                    name: "shop",
                    domains: ["shop.test"],
                    backends: [Backend(address: try SocketAddress(ipAddress: "127.0.0.1", port: 9001))]
                )
            ])
        )
    }

    /// A harness whose machine adds request ids (and logs, when `accessLog`).
    static func harness(accessLog: Bool = true) throws -> ProxyStateMachineHarness {
        ProxyStateMachineHarness(routes: try routes(), accessLog: accessLog, requestIDs: true)
    }

    /// The `X-Request-ID` values of the head the backend got.
    static func forwardedIDs(_ actions: [String]) -> [String] {
        actions.filter { $0.hasPrefix("upstream ") }.flatMap { action in
            action.split(separator: "\r\n").filter { $0.hasPrefix("X-Request-ID: ") }.map {
                String($0.dropFirst("X-Request-ID: ".count))
            }
        }
    }

    // MARK: Request ids

    @Test("a sane client id is passed on as the only X-Request-ID and logged")
    func clientID() throws {
        var h = try Self.harness()
        _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\nX-Request-ID: 7b0c2a9e-1f5e-4f8e-9a43-2f0d1c9b8e11\r\n\r\n")
        #expect(Self.forwardedIDs(h.attach()) == ["7b0c2a9e-1f5e-4f8e-9a43-2f0d1c9b8e11"])
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(h.logs.last?.requestID == "7b0c2a9e-1f5e-4f8e-9a43-2f0d1c9b8e11")
    }

    @Test("no id, two ids, or one with bytes a backend or a log could misread: a new id replaces them")
    func replacedIDs() throws {
        var seen: Set<String> = []
        for fields in [
            "", "X-Request-ID: a\r\nX-Request-ID: b\r\n", "X-Request-ID: has space\r\n",
            "X-Request-ID: quote\"d\r\n", "X-Request-ID: \(String(repeating: "x", count: 201))\r\n",
            "X-Request-ID:\r\n",
        ] {
            var h = try Self.harness()
            _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\(fields)\r\n")
            let ids = Self.forwardedIDs(h.attach())
            #expect(ids.count == 1, "\(fields)")
            let id = ids.first ?? ""
            #expect(id.count == 32 && id.allSatisfy(\.isHexDigit), "\(id)")
            seen.insert(id)
            _ = h.upstream("HTTP/1.1 204 No Content\r\n\r\n")
            #expect(h.logs.last?.requestID == id)
        }
        #expect(seen.count == 6, "ids repeat across connections")
    }

    @Test("the ids of one connection's requests differ; a 404 the balancer answers is logged with its id")
    func idsPerRequest() throws {
        var h = try Self.harness()
        _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        let first = Self.forwardedIDs(h.attach())
        _ = h.upstream("HTTP/1.1 204 No Content\r\n\r\n")
        _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        let second = Self.forwardedIDs(h.attach())
        #expect(first.count == 1 && second.count == 1 && first != second)
        _ = h.upstream("HTTP/1.1 204 No Content\r\n\r\n")
        _ = h.client("GET / HTTP/1.1\r\nHost: nobody.test\r\nX-Request-ID: lost-1\r\n\r\n")
        #expect(h.logs.last?.status == 404)
        #expect(h.logs.last?.requestID == "lost-1")
    }

    @Test("without request_id nothing is added, and the client's X-Request-ID goes through unchanged")
    func withoutRequestIDs() throws {
        var h = ProxyStateMachineHarness(routes: try Self.routes())
        _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\nX-Request-ID: x y\r\n\r\n")
        let forwarded = h.attach().joined()
        #expect(forwarded.contains("X-Request-ID: x y\r\n"))
        #expect(forwarded.components(separatedBy: "X-Request-ID").count == 2)
    }

    @Test("the log record has the backend's connect and header times")
    func upstreamTimes() throws {
        var h = try Self.harness()
        _ = h.client("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        _ = h.advance(.milliseconds(3))
        _ = h.attach()
        _ = h.advance(.milliseconds(20))
        _ = h.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        _ = h.advance(.milliseconds(5))
        _ = h.upstream("ok")
        let record = try #require(h.logs.last)
        #expect(record.upstreamConnect == .milliseconds(3))
        #expect(record.upstreamHeader == .milliseconds(20))
        #expect(record.duration == .milliseconds(28))
    }

    // MARK: Formats

    static let record = AccessLogRecord(
        client: "192.0.2.10",
        host: "shop.test",
        tenant: "shop",
        backend: "127.0.0.1:9001",
        method: "GET",
        target: LogEscaping.escaped("/a\"b\\c\u{1}"),
        status: 200,
        bytes: 1827,
        received: 90,
        duration: .microseconds(1350),
        requestID: "abc-1",
        upstreamConnect: .microseconds(200),
        upstreamHeader: nil
    )

    @Test("a JSON line is one object with every field, the client's bytes escaped, absent times null")
    func jsonLine() throws {
        var buffer = AccessLogBuffer(format: .json)
        let full = buffer.append(Self.record, now: .now())
        #expect(!full)
        var unknown = Self.record
        unknown.tenant = "-"
        unknown.backend = "-"
        _ = buffer.append(unknown, now: .now())
        let text = String(decoding: buffer.take(), as: UTF8.self)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 2)
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
        )
        #expect(object["request_id"] as? String == "abc-1")
        #expect(object["target"] as? String == #"/a\x22b\x5Cc\x01"#)
        #expect(object["status"] as? Int == 200)
        #expect(object["bytes_sent"] as? Int == 1827)
        #expect(object["bytes_received"] as? Int == 90)
        #expect(object["duration_ms"] as? Double == 1.3)
        #expect(object["upstream_connect_ms"] as? Double == 0.2)
        #expect(object["upstream_header_ms"] is NSNull)
        #expect((object["time"] as? String)?.hasSuffix("Z") == true)
        let second = try #require(try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        #expect(second["tenant"] is NSNull)
        #expect(second["backend"] is NSNull)
        #expect(buffer.since == nil)
    }

    @Test("a text line keeps its fields in order and adds the id and the backend's times")
    func textLine() {
        var buffer = AccessLogBuffer(format: .text)
        _ = buffer.append(Self.record, now: .now())
        let line = String(decoding: buffer.take(), as: UTF8.self)
        let expected =
            #" 192.0.2.10 shop.test shop 127.0.0.1:9001 "GET /a\x22b\x5Cc\x01" 200 1827 1.3ms id=abc-1 connect=0.2ms header=-"#
            + "\n"
        #expect(line.hasSuffix(expected), "\(line)")
    }

    @Test("the buffer asks to be handed over once it holds 64 KiB")
    func fullBuffer() {
        var buffer = AccessLogBuffer(format: .text)
        var appended = 0
        while !buffer.append(Self.record, now: .now()) { appended += 1 }
        #expect(buffer.bytes.count >= AccessLogWriter.batchBytes)
        #expect(appended > 100)
    }

    // MARK: Configuration

    @Test("access_log is a boolean or a mapping of format and path; request_id a boolean")
    func configuration() throws {
        let plain = try ConfigurationLoader.parse(yaml: "access_log: false", file: "t.yaml")
        #expect(!plain.accessLog)
        let json = try ConfigurationLoader.parse(
            yaml: "access_log: { format: json, path: /var/log/switchyard.log }\nrequest_id: false",
            file: "t.yaml"
        )
        #expect(json.accessLog && json.accessLogFormat == .json && json.accessLogPath == "/var/log/switchyard.log")
        #expect(!json.requestID)
        let stdout = try ConfigurationLoader.parse(yaml: "access_log: { path: stdout }", file: "t.yaml")
        #expect(stdout.accessLogPath == nil && stdout.accessLogFormat == .text)
        #expect(try ConfigurationLoader.parse(yaml: "", file: "t.yaml").requestID)
        #expect {
            try ConfigurationLoader.parse(yaml: "access_log: { format: xml }", file: "t.yaml")
        } throws: { error in
            "\(error)".contains("access_log.format") && "\(error)".contains("use text or json")
        }
        #expect(throws: ConfigurationError.self) {
            try ConfigurationLoader.parse(yaml: "access_log: { colour: true }", file: "t.yaml")
        }
    }
}
