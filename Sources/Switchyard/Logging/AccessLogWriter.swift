import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where access-log lines end up: standard output or a file, written on a thread of its own.
///
/// Workers never write: each formats its lines into a buffer of its own (``AccessLogBuffer``) and hands it over
/// when it holds 64 KiB or is a second old (nginx's `access_log … buffer=64k flush=1s`), so a line costs a copy
/// into memory on the event loop, and a slow disk or a full pipe delays the log, never a request. SIGUSR1 reopens
/// the file, logrotate's convention: lines handed over before the signal go to the old file, later ones to the new.
public final class AccessLogWriter: Service, Sendable {
    /// Where lines go.
    public enum Destination: Sendable, Equatable {
        case standardOutput
        case file(String)
    }

    /// A buffer is handed over when it holds this much, or at the worker's first timeout sweep after
    /// ``flushInterval``.
    static let batchBytes = 64 * 1024
    /// Lines wait at most about this long before they are handed over.
    public static let flushInterval = TimeAmount.seconds(1)

    /// The format of every line.
    public let format: AccessLogFormat
    private let destination: Destination
    private let logger: Logger
    /// The thread that writes. One thread, so batches are written in the order they are handed over.
    private let thread = NIOThreadPool(numberOfThreads: 1)
    /// The descriptor written to; replaced by a reopen, used only on `thread` (the lock makes that visible).
    private let descriptor: NIOLockedValueBox<Int32>

    /// Opens the destination.
    ///
    /// - Throws: ``AccessLogError`` when the file cannot be opened for appending.
    public init(format: AccessLogFormat, destination: Destination, logger: Logger) throws(AccessLogError) {
        self.format = format
        self.destination = destination
        self.logger = logger
        switch destination {
        case .standardOutput:
            descriptor = NIOLockedValueBox(STDOUT_FILENO)
        case .file(let path):
            descriptor = NIOLockedValueBox(try Self.open(path))
        }
        thread.start()
    }

    /// Writes `bytes` on the writer's thread; returns at once.
    func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let descriptor = self.descriptor
        thread.submit { state in
            guard case .active = state else { return }
            Self.writeAll(bytes, to: descriptor.withLockedValue { $0 })
        }
    }

    /// Opens the file again (after logrotate moved it) and closes the old descriptor once the lines handed over
    /// before are written. Standard output is left as it is.
    public func reopen() {
        guard case .file(let path) = destination else { return }
        let descriptor = self.descriptor
        let logger = self.logger
        thread.submit { state in
            guard case .active = state else { return }
            do {
                let new = try Self.open(path)
                let old = descriptor.withLockedValue { current in
                    defer { current = new }
                    return current
                }
                close(old)
                logger.notice("access log reopened: \(path)")
            } catch {
                logger.error("access log not reopened, still writing to the old file: \(error)")
            }
        }
    }

    /// Reopens on SIGUSR1 until graceful shutdown; then waits for what was handed over to be written. Listed
    /// before the proxy in the service group, it stops after it, once the workers have handed over their last
    /// lines.
    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sigusr1)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                self.reopen()
            }
        }
        try? await thread.shutdownGracefully()
        if case .file = destination {
            close(descriptor.withLockedValue { $0 })
        }
    }

    private static func open(_ path: String) throws(AccessLogError) -> Int32 {
        let descriptor = openFile(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw AccessLogError(path: path, reason: String(cString: strerror(errno)))
        }
        return descriptor
    }

    private static func writeAll(_ bytes: [UInt8], to descriptor: Int32) {
        bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            var offset = 0
            while offset < buffer.count {
                let written = writeBytes(descriptor, base + offset, buffer.count - offset)
                if written < 0 && errno == EINTR { continue }
                // A log that cannot be written (a closed descriptor, a full disk) must not stop the balancer.
                guard written > 0 else { return }
                offset += written
            }
        }
    }
}

/// `open(2)` and `write(2)`, under names the writer's own methods do not shadow.
private func openFile(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 {
    open(path, flags, mode)
}

private func writeBytes(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, bytes, count)
}

/// The access log's file cannot be opened.
public struct AccessLogError: Error, CustomStringConvertible {
    public var path: String
    public var reason: String

    public var description: String {
        "cannot open the access log \(path) for appending: \(reason) (access_log.path: create its directory, or "
            + "let the balancer's user write there)"
    }
}
