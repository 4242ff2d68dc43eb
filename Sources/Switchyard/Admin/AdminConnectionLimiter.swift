import NIOCore

/// The admin API's cap on connections open at once, and which refusals are worth a log line.
///
/// The admin socket shares the process's descriptors with the data path, so idle or abandoned admin connections
/// must not be able to use them up: above ``limit``, a new connection is closed as soon as it is accepted. A
/// flood of refusals is logged once per ``logInterval``, not once per connection, each line saying how many were
/// refused since the previous one.
///
/// Not thread-safe: ``AdminServer`` keeps it on its one event loop, where every admin connection lives.
struct AdminConnectionLimiter {
    /// What to do with a connection just accepted.
    enum Decision: Equatable {
        /// Serve it; ``AdminConnectionLimiter/connectionClosed()`` must be called once it closes.
        case accept
        /// Close it at once. `log` says whether to log the refusal; `refusedSinceLastLog` counts the refusals
        /// that were not logged before this one.
        case refuse(log: Bool, refusedSinceLastLog: Int)
    }

    /// The most admin connections open at once.
    let limit: Int
    /// The least time between two log lines about refused connections.
    let logInterval: TimeAmount
    /// The connections accepted and not yet closed.
    private(set) var open = 0
    private var lastLog: NIODeadline?
    private var unlogged = 0

    init(limit: Int, logInterval: TimeAmount = .seconds(10)) {
        self.limit = limit
        self.logInterval = logInterval
    }

    /// Decides on a connection accepted at `now`.
    mutating func connectionOpened(now: NIODeadline) -> Decision {
        if open < limit {
            open += 1
            return .accept
        }
        if let lastLog, now - lastLog < logInterval {
            unlogged += 1
            return .refuse(log: false, refusedSinceLastLog: unlogged)
        }
        let refused = unlogged
        unlogged = 0
        lastLog = now
        return .refuse(log: true, refusedSinceLastLog: refused)
    }

    /// An accepted connection closed.
    mutating func connectionClosed() {
        precondition(open > 0, "an admin connection closed that was never accepted")
        open -= 1
    }
}
