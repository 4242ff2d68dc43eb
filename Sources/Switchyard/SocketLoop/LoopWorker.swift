import CSocketLoop
import Logging
import NIOCore
import SwitchyardTLS

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The data path's state on one ``SocketLoop`` thread: its listeners, client connections, backend connections and
/// pool, balancing positions, access-log buffer, and the sweep that enforces timeouts.
///
/// Every socket is registered once in the loop's epoll set, edge-triggered for input, output and the peer's
/// half-close, with a token that names its slot and the slot's generation: an event for a descriptor closed (and
/// its number reused) earlier in the same batch names an old generation and is ignored. The clock is read once per
/// wake-up (``now``). Nothing here is shared with another thread.
final class LoopWorker {
    /// The token of the loop's eventfd.
    static let wakeupToken = UInt64.max
    /// Reads one connection may make per wake-up before the others get their turn (its remaining input is read on
    /// the next pass, before the loop sleeps again).
    static let readBudget = 4
    /// Connections accepted per listener per pass.
    static let acceptBudget = 64
    /// Bytes read at once: a TLS record's worth, HAProxy's buffer size.
    static let receiveCapacity = 16 * 1024
    /// Bytes read at once by a connection whose last read filled ``receiveCapacity``: a bulk transfer, which then
    /// takes a quarter of the system calls.
    static let largeReceiveCapacity = 64 * 1024
    private static let eventCapacity = 256

    let loop: SocketLoop
    let configuration: Configuration
    let routes: RouteSource
    let logger: Logger
    let metrics: ProxyMeters
    let accounting: ProxyAccounting
    let connectionCounter: ConnectionCounter
    private let acceptPauses: AcceptPauses
    /// Whether requests are logged.
    let logsAccess: Bool
    private var accessLog: LoopAccessLog?

    /// The time of the current wake-up.
    private(set) var now: NIODeadline
    var selector = BackendSelector()
    private(set) var pool: UpstreamPool<BackendSocket>
    private(set) var shuttingDown = false
    private var running = true

    private var slots = SlotTable<Entry>()
    private var listeners: [Listener] = []
    /// Connections with input left unread by their budget, or whose reading was resumed: read before sleeping.
    private var ready: [UInt64] = []
    private(set) var clientCount = 0
    private var nextSweep: NIODeadline
    private let sweepInterval: TimeAmount
    /// The buffer reads go into; its slices are what the state machine receives. Reused whenever the last slice
    /// was let go (the usual case: a request is forwarded as soon as it is read).
    private var receiveBuffer: ByteBuffer
    /// The same for bulk reads (``largeReceiveCapacity``). Kept apart so that a small request, which a connection
    /// may hold for a while (a head still incomplete, say), never pins a large buffer.
    private var largeReceiveBuffer: ByteBuffer
    private let events: UnsafeMutableRawPointer
    private let allocator = ByteBufferAllocator()

    private enum Entry {
        case client(ClientSocket)
        case backend(BackendSocket)
        case listener(Int)
    }

    private struct Listener {
        let descriptor: SocketDescriptor
        let token: UInt64
        let scheme: StaticString
        /// The certificates of an HTTPS listener; `nil` for plain HTTP.
        let certificates: CertificateSource?
        /// Accepting stopped for lack of descriptors until then.
        var pausedUntil: NIODeadline?
    }

    init(
        loop: SocketLoop,
        configuration: Configuration,
        routes: RouteSource,
        metrics: ProxyMeters,
        connectionCounter: ConnectionCounter,
        acceptPauses: AcceptPauses,
        accessLog: AccessLogWriter?,
        logger: Logger
    ) {
        self.loop = loop
        self.configuration = configuration
        self.routes = routes
        self.logger = logger
        self.metrics = metrics
        self.accounting = ProxyAccounting(loop: loop.index, metrics: metrics, logger: logger)
        self.connectionCounter = connectionCounter
        self.acceptPauses = acceptPauses
        self.logsAccess = accessLog != nil
        self.accessLog = accessLog.map { LoopAccessLog(writer: $0) }
        self.pool = UpstreamPool(capacityPerBackend: configuration.limits.upstreamKeepAlive)
        self.now = .now()
        self.sweepInterval = Worker.sweepInterval(for: configuration)
        self.nextSweep = now + sweepInterval
        self.receiveBuffer = allocator.buffer(capacity: Self.receiveCapacity)
        self.largeReceiveBuffer = allocator.buffer(capacity: Self.largeReceiveCapacity)
        self.events = UnsafeMutableRawPointer.allocate(
            byteCount: c_loop_event_size() * Self.eventCapacity,
            alignment: 16
        )
    }

    deinit {
        events.deallocate()
    }

    // MARK: The loop

    /// Waits for events and handles them until ``stop()``.
    func run() {
        let events = self.events.assumingMemoryBound(to: epoll_event.self)
        while running {
            let timeout: CInt
            if ready.isEmpty {
                let wait = nextSweep - NIODeadline.now()
                timeout = CInt(max(0, min(wait.nanoseconds / 1_000_000 + 1, 1000)))
            } else {
                timeout = 0
            }
            let count = c_loop_epoll_wait(loop.epoll, events, CInt(Self.eventCapacity), timeout)
            now = .now()
            if count > 0 {
                for index in 0..<Int(count) {
                    dispatch(c_loop_event_flags(events, CInt(index)), token: c_loop_event_data(events, CInt(index)))
                }
            }
            runReady()
            if now >= nextSweep {
                sweep()
                nextSweep = now + sweepInterval
            }
        }
    }

    private func dispatch(_ flags: UInt32, token: UInt64) {
        if token == Self.wakeupToken {
            for task in loop.takeTasks() { task(self) }
            return
        }
        guard let entry = slots[token] else { return }
        switch entry {
        case .client(let client): client.handle(flags)
        case .backend(let backend): backend.handle(flags)
        case .listener(let index): accept(from: index)
        }
    }

    /// Reads what connections on the ready list left unread.
    private func runReady() {
        guard !ready.isEmpty else { return }
        let tokens = ready
        ready.removeAll(keepingCapacity: true)
        for token in tokens {
            switch slots[token] {
            case .client(let client): client.readIfWanted()
            case .backend(let backend): backend.readIfWanted()
            case .listener(let index): accept(from: index)
            case nil: break
            }
        }
    }

    /// Reads `token`'s connection before the loop sleeps again.
    func markReady(_ token: UInt64) {
        ready.append(token)
    }

    /// Ends ``run()`` after the current pass.
    func stop() {
        running = false
    }

    /// Closes everything the loop still holds; called on its thread when ``run()`` returned.
    func finish() {
        closeListeners()
        closeAll()
        for connection in pool.removeAll() { connection.close() }
    }

    // MARK: Slots

    /// Registers `descriptor` for input, output and half-close, edge-triggered; returns its token.
    private func register(_ descriptor: SocketDescriptor, _ entry: Entry) throws(SocketFailure) -> UInt64 {
        let token = slots.insert(entry)
        let flags = c_loop_in | c_loop_out | c_loop_rdhup | c_loop_et
        guard c_loop_epoll_add(loop.epoll, descriptor.raw, flags, token) == 0 else {
            let code = errno
            slots.remove(token)
            throw SocketFailure(operation: "epoll_ctl", code: code)
        }
        return token
    }

    /// Frees `token`'s slot (its descriptor was closed): events still queued for it are ignored from now on.
    func release(_ token: UInt64) {
        slots.remove(token)
    }

    // MARK: Reading

    /// Reads from `descriptor` into the loop's receive buffer (the large one with `large`). `.read` comes with the
    /// bytes and whether the read filled the buffer: when it did not, the socket had nothing more (edge-triggered,
    /// new input raises a new event), and the next read may be small again.
    func read(_ descriptor: SocketDescriptor, large: Bool) -> (SocketDescriptor.ReadResult, ByteBuffer, filled: Bool) {
        if large {
            return Self.read(descriptor, into: &largeReceiveBuffer, capacity: Self.largeReceiveCapacity, allocator)
        }
        return Self.read(descriptor, into: &receiveBuffer, capacity: Self.receiveCapacity, allocator)
    }

    private static func read(
        _ descriptor: SocketDescriptor,
        into buffer: inout ByteBuffer,
        capacity: Int,
        _ allocator: ByteBufferAllocator
    ) -> (SocketDescriptor.ReadResult, ByteBuffer, filled: Bool) {
        if buffer.modifyIfUniquelyOwned({ $0.clear() }) == nil {
            buffer = allocator.buffer(capacity: capacity)
        }
        let offered = buffer.writableBytes
        let result = descriptor.read(into: &buffer, minimum: capacity)
        guard case .read(let count) = result, let bytes = buffer.readSlice(length: count) else {
            return (result, ByteBuffer(), false)
        }
        return (result, bytes, count >= offered)
    }

    // MARK: Listeners

    /// Starts accepting on `descriptor`, a listening socket of this loop's own: HTTPS with `certificates`, else
    /// plain HTTP.
    func addListener(_ descriptor: SocketDescriptor, certificates: CertificateSource?) {
        let index = listeners.count
        do {
            let token = try register(descriptor, .listener(index))
            listeners.append(
                Listener(
                    descriptor: descriptor,
                    token: token,
                    scheme: certificates == nil ? "http" : "https",
                    certificates: certificates
                )
            )
        } catch {
            logger.error("cannot listen on this loop: \(error)")
            descriptor.close()
        }
    }

    private func accept(from index: Int) {
        guard index < listeners.count, listeners[index].pausedUntil == nil else { return }
        let listener = listeners[index]
        for _ in 0..<Self.acceptBudget {
            switch listener.descriptor.accept() {
            case .accepted(let descriptor, let peer):
                acceptPauses.accepted()
                open(descriptor, peer: peer, listener: listener)
            case .wouldBlock:
                return
            case .failed(let code) where DescriptorLimit.isLocalShortage(errno: code):
                acceptPauses.paused(errno: code)
                listeners[index].pausedUntil = now + AcceptPauseHandler.pause
                return
            case .failed(let code):
                logger.warning("accept failed: \(DescriptorLimit.describe(errno: code))")
                return
            }
        }
        // More may be waiting: edge-triggered, no new event comes for them.
        markReady(listener.token)
    }

    private func open(_ descriptor: SocketDescriptor, peer: String, listener: Listener) {
        guard connectionCounter.acquire() else {
            metrics.add(1, to: .refusedConnections, loop: loop.index)
            logger.warning(
                "connection refused: limits.max_connections reached",
                metadata: ["limit": "\(connectionCounter.limit)"]
            )
            descriptor.close()
            return
        }
        metrics.add(1, to: .acceptedConnections, loop: loop.index)
        var session: TLSServerSession?
        if let certificates = listener.certificates {
            do {
                session = try TLSServerSession(store: certificates.current, allocator: allocator)
            } catch {
                logger.error("cannot start TLS: \(error)")
                connectionCounter.release()
                descriptor.close()
                return
            }
        }
        let client = ClientSocket(
            descriptor: descriptor,
            worker: self,
            peer: peer,
            scheme: listener.scheme,
            tls: session
        )
        do {
            client.token = try register(descriptor, .client(client))
        } catch {
            connectionCounter.release()
            descriptor.close()
            return
        }
        clientCount += 1
        if shuttingDown { client.beginShutdown() }
    }

    /// A client connection closed: its slot and its share of `limits.max_connections` are free.
    func clientClosed(_ client: ClientSocket) {
        release(client.token)
        clientCount -= 1
        connectionCounter.release()
    }

    /// Stops accepting: the listeners close (another process, or nobody, takes new connections).
    func closeListeners() {
        for listener in listeners {
            release(listener.token)
            listener.descriptor.close()
        }
        listeners = []
    }

    // MARK: Backend connections

    /// Starts a connection to `backend` for `owner`; it reports to the owner when connected or failed.
    func connect(to backend: Backend, for owner: ClientSocket) throws(SocketFailure) -> BackendSocket {
        let (descriptor, inProgress) = try SocketDescriptor.connect(to: backend.address)
        let socket = BackendSocket(
            descriptor: descriptor,
            worker: self,
            backend: backend,
            owner: owner,
            deadline: inProgress ? now + configuration.timeouts.upstreamConnect : nil
        )
        do {
            socket.token = try register(descriptor, .backend(socket))
        } catch {
            descriptor.close()
            throw error
        }
        return socket
    }

    /// An idle pooled connection to `backend`, if any.
    func takeUpstream(_ backend: Backend) -> BackendSocket? {
        pool.take(backend)
    }

    /// Returns a connection to the pool, or closes it when the pool is full or the loop is stopping.
    func releaseUpstream(_ connection: BackendSocket) {
        connection.owner = nil
        connection.idleSince = now
        if shuttingDown || !connection.isActive || !pool.put(connection) {
            connection.close()
        } else {
            // A backend closing an idle connection (or sending what it should not) is noticed by reading.
            connection.readIfWanted()
        }
    }

    /// A backend connection closed: its slot is free, and the pool forgets it.
    func backendClosed(_ connection: BackendSocket) {
        release(connection.token)
        if connection.owner == nil, connection.idleSince != nil {
            pool.remove(connection)
        }
    }

    // MARK: Logging

    /// Adds a request's line to this loop's buffer.
    func logAccess(_ record: AccessLogRecord) {
        accessLog?.append(record, now: now)
    }

    // MARK: Timeouts and shutdown

    private func sweep() {
        accessLog?.flush(now: now)
        for index in 0..<slots.capacity {
            switch slots.entry(at: index) {
            case .client(let client): client.checkTimeouts(now: now)
            case .backend(let backend): backend.checkConnectTimeout(now: now)
            case .listener, nil: break
            }
        }
        for connection in pool.expire(idleSince: now - configuration.timeouts.upstreamIdle) {
            connection.close()
        }
        for index in listeners.indices {
            if let until = listeners[index].pausedUntil, until <= now {
                listeners[index].pausedUntil = nil
                accept(from: index)
            }
        }
    }

    private var clients: [ClientSocket] {
        (0..<slots.capacity).compactMap { index in
            if case .client(let client) = slots.entry(at: index) { return client }
            return nil
        }
    }

    /// Stops keep-alive: idle client connections close now, busy ones after their current response; pooled backend
    /// connections close.
    func beginShutdown() {
        shuttingDown = true
        for client in clients { client.beginShutdown() }
        for connection in pool.removeAll() { connection.close() }
    }

    /// Closes every remaining client connection: the drain time is over.
    func closeAll() {
        for client in clients { client.close() }
        accessLog?.flush(now: now, force: true)
    }
}

@available(*, unavailable)
extension LoopWorker: Sendable {}
