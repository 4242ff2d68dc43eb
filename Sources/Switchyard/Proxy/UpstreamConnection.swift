import NIOCore

/// The handler on a backend connection: it hands what it reads to the client connection that owns it, and
/// watches the connection while it idles in the pool.
///
/// It lives on the same event loop as its owner, so the two call each other directly.
final class UpstreamConnection: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The backend of the request it serves now: a pooled connection is shared by every tenant's backend at the same
    /// address (``BackendEndpoint``), so it takes the backend of whoever attaches it, whose counters it then updates.
    var backend: Backend
    /// The client connection this one serves; `nil` while idle in the pool.
    var owner: ClientConnectionHandler?
    /// When it was last released to the pool.
    var idleSince: NIODeadline?
    /// The worker whose pool holds this connection while it idles, told when the connection closes there.
    /// (A reference rather than a closure: releasing a connection happens on every request.)
    weak var pool: Worker?

    private var context: ChannelHandlerContext?
    private var readPending = false
    private var needsFlush = false
    private(set) var isActive = false

    init(backend: Backend) {
        self.backend = backend
    }

    var isWritable: Bool {
        context?.channel.isWritable ?? false
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        isActive = context.channel.isActive
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        isActive = true
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        isActive = false
        if let owner {
            owner.upstreamClosed(self)
        } else {
            pool?.idleConnectionClosed(self)
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if let owner {
            owner.upstreamRead(self, buffer)
        } else {
            // A backend has nothing to say on an idle connection; whatever it sent makes the connection unusable.
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner?.flushClient()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            if let owner {
                owner.upstreamClosed(self)
            } else {
                context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        owner?.upstreamWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Resets and the like: the close that follows is what the owner acts on.
        context.close(promise: nil)
    }

    /// Reads are held while the client cannot take more (backpressure), and always allowed while idle so that a
    /// backend closing the connection is noticed.
    func read(context: ChannelHandlerContext) {
        if let owner, !owner.wantsUpstreamRead {
            readPending = true
            return
        }
        readPending = false
        context.read()
    }

    /// Issues a read held back by ``read(context:)``, if the owner wants one now.
    func resumeReading() {
        guard readPending, let context else { return }
        if let owner, !owner.wantsUpstreamRead { return }
        readPending = false
        context.read()
    }

    func write(_ buffer: ByteBuffer) {
        guard let context else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
        needsFlush = true
    }

    func flush() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
    }

    func shutdownOutput() {
        guard let context else { return }
        flush()
        context.close(mode: .output, promise: nil)
    }

    func close() {
        owner = nil
        pool = nil
        context?.close(promise: nil)
    }
}

@available(*, unavailable)
extension UpstreamConnection: Sendable {}
