import NIOCore

/// One event loop's access log: lines formatted into the loop's own ``AccessLogBuffer``, handed to the shared
/// ``AccessLogWriter`` when the buffer is full or its oldest line has waited ``AccessLogWriter/flushInterval``.
struct LoopAccessLog {
    let writer: AccessLogWriter
    private var buffer: AccessLogBuffer

    init(writer: AccessLogWriter) {
        self.writer = writer
        self.buffer = AccessLogBuffer(format: writer.format)
    }

    /// Adds a request's line, handing the buffer over when it is full.
    mutating func append(_ record: AccessLogRecord, now: NIODeadline) {
        if buffer.append(record, now: now) {
            writer.write(buffer.take())
        }
    }

    /// Hands over the buffered lines if the oldest waited long enough (or `force`).
    mutating func flush(now: NIODeadline, force: Bool = false) {
        guard let since = buffer.since, force || now - since >= AccessLogWriter.flushInterval else { return }
        writer.write(buffer.take())
    }
}
