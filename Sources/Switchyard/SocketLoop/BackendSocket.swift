import CSocketLoop
import NIOCore

/// A backend connection on the loop: it hands what it reads to the ``ClientSocket`` that owns it, and watches the
/// connection while it idles in the pool, as ``UpstreamConnection`` does on SwiftNIO's channels.
final class BackendSocket: PooledUpstream {
    let descriptor: SocketDescriptor
    /// The slot's token in the loop's epoll set.
    var token: UInt64 = 0
    private let worker: LoopWorker
    /// The backend of the request it serves now (a pooled connection serves every tenant's backend at its address).
    var backend: Backend
    /// The client connection this one serves; `nil` while idle in the pool.
    var owner: ClientSocket?
    /// When it was last released to the pool.
    var idleSince: NIODeadline?
    /// Until when the connect may take, while it is in progress.
    private var connectDeadline: NIODeadline?
    private var output = OutboundQueue()
    private var readable = false
    private var peerClosedInput = false
    /// The last read filled the loop's receive buffer: the next one uses the large buffer.
    private var largeReads = false
    private var inputEnded = false
    private var waitingForOutput = false
    private var shutdownWhenFlushed = false
    private var outputShut = false
    private var closed = false

    init(
        descriptor: SocketDescriptor,
        worker: LoopWorker,
        backend: Backend,
        owner: ClientSocket,
        deadline: NIODeadline?
    ) {
        self.descriptor = descriptor
        self.worker = worker
        self.backend = backend
        self.owner = owner
        self.connectDeadline = deadline
    }

    /// Whether the connect is still in progress.
    var isConnecting: Bool {
        connectDeadline != nil
    }

    /// Open, and neither failed nor closed by the backend.
    var isActive: Bool {
        !closed && !inputEnded
    }

    /// Whether the owner may write more now.
    var isWritable: Bool {
        output.isWritable
    }

    // MARK: Events

    func handle(_ flags: UInt32) {
        if connectDeadline != nil {
            guard flags & (c_loop_out | c_loop_err | c_loop_hup) != 0 else { return }
            finishConnect()
            guard !closed else { return }
        }
        if flags & c_loop_rdhup != 0 { peerClosedInput = true }
        if flags & (c_loop_in | c_loop_rdhup | c_loop_err | c_loop_hup) != 0 { readable = true }
        if flags & c_loop_out != 0, waitingForOutput {
            waitingForOutput = false
            let wasWritable = output.isWritable
            flush()
            if !wasWritable, output.isWritable { owner?.upstreamWritable() }
        }
        readIfWanted()
    }

    private func finishConnect() {
        connectDeadline = nil
        let code = descriptor.pendingError()
        guard let owner else {
            close()
            return
        }
        if code == 0 {
            owner.upstreamConnected(self)
        } else {
            owner.upstreamConnectFailed(self, code: code)
        }
    }

    /// Fails a connect that took longer than `timeouts.upstream_connect`.
    func checkConnectTimeout(now: NIODeadline) {
        guard let deadline = connectDeadline, deadline <= now else { return }
        connectDeadline = nil
        if let owner {
            owner.upstreamConnectFailed(self, code: nil)
        } else {
            close()
        }
    }

    /// Reads while input waits and the owner can take it (always while idle, so that a backend closing the
    /// connection is noticed), within the loop's read budget.
    func readIfWanted() {
        var budget = LoopWorker.readBudget
        while readable, !closed, !inputEnded, connectDeadline == nil {
            if let owner, !owner.wantsUpstreamRead { return }
            guard budget > 0 else {
                worker.markReady(token)
                return
            }
            budget -= 1
            let (result, bytes, filled) = worker.read(descriptor, large: largeReads)
            switch result {
            case .read:
                largeReads = filled
                if !filled, !peerClosedInput { readable = false }
                guard let owner else {
                    // A backend has nothing to say on an idle connection; whatever it sent makes it unusable.
                    close()
                    return
                }
                backend.status.recordSuccess()
                owner.upstreamRead(self, bytes)
            case .wouldBlock:
                readable = false
            case .endOfInput:
                readable = false
                inputEnded = true
                if let owner {
                    owner.upstreamClosed(self)
                    // Our FIN went already: both directions ended.
                    if outputShut { close() }
                } else {
                    close()
                }
            case .failed:
                let owner = self.owner
                close()
                owner?.upstreamClosed(self)
            }
        }
    }

    /// Reads held while the owner could not take more, now that it can.
    func resumeReading() {
        if readable { worker.markReady(token) }
    }

    // MARK: Writing

    func write(_ buffer: ByteBuffer) {
        guard !closed else { return }
        output.append(buffer)
    }

    func flush() {
        guard !closed, !waitingForOutput, connectDeadline == nil else { return }
        if !output.isEmpty {
            switch output.flush(to: descriptor) {
            case .flushed:
                break
            case .wouldBlock:
                waitingForOutput = true
                return
            case .failed:
                let owner = self.owner
                close()
                owner?.upstreamClosed(self)
                return
            }
        }
        if shutdownWhenFlushed, !outputShut {
            outputShut = true
            descriptor.shutdownOutput()
            if inputEnded {
                // Both directions ended: nothing more can pass.
                let owner = self.owner
                close()
                owner?.upstreamClosed(self)
            }
        }
    }

    /// Half-closes once what was written went (tunnels pass a FIN on).
    func shutdownOutputWhenFlushed() {
        shutdownWhenFlushed = true
        flush()
    }

    func close() {
        guard !closed else { return }
        closed = true
        descriptor.close()
        output.removeAll()
        worker.backendClosed(self)
        owner = nil
    }
}

@available(*, unavailable)
extension BackendSocket: Sendable {}
