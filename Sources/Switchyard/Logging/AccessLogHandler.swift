import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The swift-log handler for the access log (`switchyard.access`): one line per request, written to a file
/// descriptor in batches.
///
/// Writing each line as it comes (what `StreamLogHandler` does: a lock, a formatted prefix and a flush per line)
/// cost about a third of the balancer's CPU at 30,000 requests/s in the referee benchmark. Like nginx's
/// `access_log ... buffer=64k flush=1s`, lines are appended to a buffer that is written when it holds 64 KiB
/// and at least every ``AccessLogSink/flushInterval``, so a quiet server's log is still current within a second.
public struct AccessLogHandler: LogHandler {
    private let sink: AccessLogSink
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]

    public init(sink: AccessLogSink) {
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        sink.append(event.message.description)
    }
}

/// The buffer behind ``AccessLogHandler``, shared by every worker.
public final class AccessLogSink: Sendable {
    /// Lines wait at most this long before they are written.
    public static let flushInterval = Duration.seconds(1)
    private static let batchBytes = 64 * 1024

    private struct State {
        var pending: [UInt8] = []
        var second: Int = -1
        var timestamp: [UInt8] = []
    }

    private let descriptor: Int32
    private let state = NIOLockedValueBox(State())

    /// - Parameter descriptor: where lines go; standard output by default.
    public init(descriptor: Int32 = 1) {
        self.descriptor = descriptor
        state.withLockedValue { $0.pending.reserveCapacity(Self.batchBytes + 1024) }
    }

    /// Appends `line` with a UTC timestamp in front and a newline after.
    func append(_ line: String) {
        let full: [UInt8]? = state.withLockedValue { state in
            Self.appendTimestamp(to: &state)
            state.pending.append(UInt8(ascii: " "))
            state.pending.append(contentsOf: line.utf8)
            state.pending.append(UInt8(ascii: "\n"))
            guard state.pending.count >= Self.batchBytes else { return nil }
            defer { state.pending.removeAll(keepingCapacity: true) }
            return state.pending
        }
        if let full { writeOut(full) }
    }

    /// Writes whatever is buffered.
    public func flush() {
        let pending: [UInt8] = state.withLockedValue { state in
            defer { state.pending.removeAll(keepingCapacity: true) }
            return state.pending
        }
        if !pending.isEmpty { writeOut(pending) }
    }

    private func writeOut(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 && errno == EINTR { continue }
                // A log that cannot be written (closed descriptor, full disk) must not stop the balancer.
                guard written > 0 else { return }
                offset += written
            }
        }
    }

    /// `2026-11-26T20:18:25Z`, formatted once per second.
    private static func appendTimestamp(to state: inout State) {
        var now = time(nil)
        if now != state.second {
            state.second = now
            var parts = tm()
            gmtime_r(&now, &parts)
            func two(_ value: Int32) -> [UInt8] {
                [UInt8(ascii: "0") + UInt8(value / 10), UInt8(ascii: "0") + UInt8(value % 10)]
            }
            let year = Array(String(parts.tm_year + 1900).utf8)
            state.timestamp =
                year + [UInt8(ascii: "-")] + two(parts.tm_mon + 1) + [UInt8(ascii: "-")] + two(parts.tm_mday)
                + [UInt8(ascii: "T")] + two(parts.tm_hour) + [UInt8(ascii: ":")] + two(parts.tm_min)
                + [UInt8(ascii: ":")] + two(parts.tm_sec) + [UInt8(ascii: "Z")]
        }
        state.pending.append(contentsOf: state.timestamp)
    }
}

extension AccessLogSink: Service {
    /// Flushes every ``flushInterval`` until graceful shutdown, then once more. Listed first in the service group,
    /// it stops last, after the proxy has logged its final requests.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: Self.flushInterval)
                self.flush()
            }
        }
        flush()
    }
}
