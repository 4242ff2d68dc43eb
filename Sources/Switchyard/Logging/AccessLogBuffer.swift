import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `access_log.format`.
public enum AccessLogFormat: String, Sendable, Equatable, CaseIterable {
    /// `TIME CLIENT HOST TENANT BACKEND "METHOD TARGET" STATUS BYTES DURATION id=ID connect=MS header=MS`.
    case text
    /// One JSON object per line (see README, "Access log").
    case json
}

/// One worker's access-log lines not yet handed to the ``AccessLogWriter``: formatted on the worker's loop, into
/// memory of its own, so that logging a request takes no lock and no system call.
struct AccessLogBuffer {
    let format: AccessLogFormat
    private(set) var bytes: [UInt8] = []
    /// When the first line still here was added.
    private(set) var since: NIODeadline?
    private var second: Int = -1
    private var timestamp: [UInt8] = []

    init(format: AccessLogFormat) {
        self.format = format
        bytes.reserveCapacity(AccessLogWriter.batchBytes + 1024)
    }

    /// Appends the line of `record`; returns whether the buffer is full enough to hand over.
    mutating func append(_ record: AccessLogRecord, now: NIODeadline) -> Bool {
        if since == nil { since = now }
        updateTimestamp()
        switch format {
        case .text: appendText(record)
        case .json: appendJSON(record)
        }
        return bytes.count >= AccessLogWriter.batchBytes
    }

    /// The lines, leaving the buffer empty.
    mutating func take() -> [UInt8] {
        since = nil
        defer {
            bytes = []
            bytes.reserveCapacity(AccessLogWriter.batchBytes + 1024)
        }
        return bytes
    }

    // MARK: Formats

    private mutating func appendText(_ record: AccessLogRecord) {
        // The target was escaped when the record was made (the method is a token, a request id is checked):
        // client bytes cannot end the quoted field or forge a line.
        bytes.append(contentsOf: timestamp)
        bytes.append(UInt8(ascii: " "))
        for field in [record.client, record.host, record.tenant, record.backend] {
            bytes.append(contentsOf: field.utf8)
            bytes.append(UInt8(ascii: " "))
        }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: record.method.utf8)
        bytes.append(UInt8(ascii: " "))
        bytes.append(contentsOf: record.target.utf8)
        bytes.append(contentsOf: "\" \(record.status) \(record.bytes) ".utf8)
        appendMilliseconds(record.duration)
        bytes.append(contentsOf: "ms id=".utf8)
        bytes.append(contentsOf: record.requestID.utf8)
        bytes.append(contentsOf: " connect=".utf8)
        appendOptionalMilliseconds(record.upstreamConnect, unit: "ms")
        bytes.append(contentsOf: " header=".utf8)
        appendOptionalMilliseconds(record.upstreamHeader, unit: "ms")
        bytes.append(UInt8(ascii: "\n"))
    }

    private mutating func appendJSON(_ record: AccessLogRecord) {
        bytes.append(contentsOf: #"{"time":""#.utf8)
        bytes.append(contentsOf: timestamp)
        bytes.append(UInt8(ascii: "\""))
        appendJSONField("request_id", record.requestID)
        appendJSONField("client", record.client)
        appendJSONField("host", record.host)
        appendJSONField("tenant", record.tenant == "-" ? nil : record.tenant)
        appendJSONField("backend", record.backend == "-" ? nil : record.backend)
        appendJSONField("method", record.method)
        appendJSONField("target", record.target)
        bytes.append(contentsOf: ",\"status\":\(record.status),\"bytes_sent\":\(record.bytes)".utf8)
        bytes.append(contentsOf: ",\"bytes_received\":\(record.received),\"duration_ms\":".utf8)
        appendMilliseconds(record.duration)
        bytes.append(contentsOf: #","upstream_connect_ms":"#.utf8)
        appendOptionalMilliseconds(record.upstreamConnect, unit: "")
        bytes.append(contentsOf: #","upstream_header_ms":"#.utf8)
        appendOptionalMilliseconds(record.upstreamHeader, unit: "")
        bytes.append(contentsOf: "}\n".utf8)
    }

    /// `,"name":"value"` with the value escaped as JSON wants, or `,"name":null`.
    private mutating func appendJSONField(_ name: StaticString, _ value: String?) {
        bytes.append(contentsOf: ",\"".utf8)
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: "\":".utf8)
        guard let value else {
            bytes.append(contentsOf: "null".utf8)
            return
        }
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: #"\\"#.utf8)
            case 0..<0x20:
                bytes.append(contentsOf: #"\u00"#.utf8)
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// `12.3`: milliseconds with one decimal.
    private mutating func appendMilliseconds(_ duration: TimeAmount) {
        let tenths = max(0, duration.nanoseconds) / 100_000
        bytes.append(contentsOf: "\(tenths / 10).\(tenths % 10)".utf8)
    }

    private mutating func appendOptionalMilliseconds(_ duration: TimeAmount?, unit: StaticString) {
        guard let duration else {
            bytes.append(contentsOf: (unit.utf8CodeUnitCount == 0 ? "null" : "-").utf8)
            return
        }
        appendMilliseconds(duration)
        unit.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    /// `2026-11-26T20:18:25Z`, formatted once per second.
    private mutating func updateTimestamp() {
        var now = time(nil)
        guard now != second else { return }
        second = now
        var parts = tm()
        gmtime_r(&now, &parts)
        func two(_ value: Int32) -> String {
            value < 10 ? "0\(value)" : "\(value)"
        }
        let text =
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):"
            + "\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
        timestamp = Array(text.utf8)
    }
}
