import NIOCore
import NIOPosix

/// One active check of one backend: a TCP connect, or an HTTP `GET` whose status must be in 200–399.
///
/// Runs on an event loop as ordinary non-blocking I/O; the result is delivered once, whatever happens first:
/// the answer, a failure, or the timeout.
enum HealthProbe {
    /// What one probe tells about its backend.
    enum Outcome: Equatable {
        /// The backend answered, or failed to: a success or a failure to count.
        case verdict(HealthCheckResult)
        /// The probe could not be made for a reason of this process, not of the backend (no descriptor left for
        /// its socket: `EMFILE`, `ENFILE`, or no buffers): counted neither way.
        case noVerdict(String)
    }

    static func run(
        backend: Backend,
        settings: HealthCheckConfiguration,
        host: String,
        on eventLoop: EventLoop
    ) -> EventLoopFuture<Outcome> {
        let promise = eventLoop.makePromise(of: HealthCheckResult.self)
        let request = settings.path.map { path in
            "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: switchyard-health-check\r\nConnection: close\r\n\r\n"
        }
        let connected = ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let request {
                        try channel.pipeline.syncOperations.addHandler(
                            HealthProbeHandler(request: request, expected: settings.expectedStatus, promise: promise)
                        )
                    }
                }
            }
            .connect(to: backend.address)
        let timeout = eventLoop.scheduleTask(in: settings.timeout) {
            promise.fail(HealthProbeTimeout(timeout: settings.timeout))
        }
        connected.whenComplete { result in
            switch result {
            case .success(let channel):
                if request == nil {
                    promise.succeed(.success)
                }
                promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult.always { _ in timeout.cancel() }.map { .verdict($0) }.flatMapErrorThrowing {
            HealthProbe.outcome(of: $0)
        }
    }

    /// A failed probe's outcome: a failure of the backend, unless the error is this process's own shortage.
    static func outcome(of error: any Error) -> Outcome {
        guard DescriptorLimit.isLocalShortage(error) else { return .verdict(.failure(describe(error))) }
        let code = (error as? IOError)?.errnoCode ?? EMFILE
        return .noVerdict("no socket for the probe: \(DescriptorLimit.describe(errno: code))")
    }

    /// A short reason for logs: "connection refused", "timed out after 2s", "status 500".
    static func describe(_ error: any Error) -> String {
        if let error = error as? HealthProbeTimeout {
            return "timed out after \(error.timeout.nanoseconds / 1_000_000)ms"
        }
        if let error = error as? IOError {
            return error.description
        }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return "\(first.error)"
        }
        if case ChannelError.connectTimeout = error {
            return "connect timed out"
        }
        return "\(error)"
    }
}

struct HealthProbeTimeout: Error {
    var timeout: TimeAmount
}

/// Sends the check request and reads the status line of the answer.
private final class HealthProbeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let request: String
    private let expected: ClosedRange<Int>
    private let promise: EventLoopPromise<HealthCheckResult>
    private var received = ByteBuffer()

    init(request: String, expected: ClosedRange<Int>, promise: EventLoopPromise<HealthCheckResult>) {
        self.request = request
        self.expected = expected
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received.writeBuffer(&buffer)
        // "HTTP/1.1 200" is all that matters.
        guard received.readableBytes >= 12, let line = received.getString(at: received.readerIndex, length: 12)
        else {
            if received.readableBytes > 1024 { promise.succeed(.failure("not an HTTP response")) }
            return
        }
        let parts = line.split(separator: " ")
        guard parts.count == 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            promise.succeed(.failure("not an HTTP response"))
            return
        }
        promise.succeed(expected.contains(status) ? .success : .failure("status \(status)"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.succeed(.failure("closed before answering"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
