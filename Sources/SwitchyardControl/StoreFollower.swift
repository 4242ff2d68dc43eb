import Logging
import NIOPosix
import ServiceLifecycle
import SwitchyardStore

/// Keeps this node's served configuration up to a store that other nodes write too: a
/// ``ControlPlane/synchronize()`` whenever the store's watch rings (PostgreSQL's `NOTIFY`, and each time its
/// listening connection is back), and every ``interval`` in case the bell stops ringing without a word.
/// Synchronisations run one at a time, off the event loops (on NIO's thread pool, as they block on the database);
/// bells that ring while one runs are coalesced into one more, so a burst of changes costs a few rebuilds.
///
/// With a store no one else writes (SQLite) it does nothing.
public struct StoreFollower: Service {
    let controlPlane: ControlPlane
    let interval: Duration

    public init(controlPlane: ControlPlane, interval: Duration = .seconds(2)) {
        self.controlPlane = controlPlane
        self.interval = interval
    }

    public func run() async throws {
        let (bells, ring) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        // A service that returns ends the group: with nothing to follow, it waits for the shutdown.
        guard let store = controlPlane.store, let watch = store.watch({ ring.yield() }) else {
            try await gracefulShutdown()
            return
        }
        defer { watch.stop() }
        let interval = self.interval
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                ring.yield()
            }
        }
        defer { ticker.cancel() }
        let controlPlane = self.controlPlane
        await withGracefulShutdownHandler {
            var cacheSaved = ContinuousClock.now - interval
            for await _ in bells {
                // The copy at most once an interval: it is written whole and fsynced (megabytes at 10,000 tenants),
                // which after every bell of a burst would hold up the synchronisations behind it.
                let saveCache = ContinuousClock.now - cacheSaved >= interval
                if saveCache { cacheSaved = .now }
                _ = try? await NIOThreadPool.singleton.runIfActive {
                    controlPlane.synchronizeReporting()
                    // At once, so that a writer waiting for the fleet (`?wait=fleet`) sees this node has it.
                    controlPlane.heartbeat()
                    if saveCache { controlPlane.saveCache() }
                }
            }
        } onGracefulShutdown: {
            ring.finish()
        }
    }
}

extension ControlPlane {
    /// ``synchronize()``, saying once when the store stops answering (this node then serves what it has) and once
    /// when it answers again; ``storeStatus`` shows the trouble meanwhile.
    func synchronizeReporting() {
        let result = synchronize()
        let previous = storeTrouble.withLockedValue { trouble in
            defer {
                if case .failure(let error) = result { trouble = "\(error)" } else { trouble = nil }
            }
            return trouble
        }
        switch (result, previous) {
        case (.failure(let error), nil):
            logger.error(
                "state store: cannot read other nodes' changes (\(error)); serving version \(appliedRevision) until it answers again"
            )
        case (.success(let revision), .some):
            logger.notice("state store: answering again; at version \(revision)")
        default:
            break
        }
    }
}

extension ControlPlane {
    /// Writes this node's copy of the store when it serves a revision the copy does not have yet (the follower's
    /// thread, after a synchronisation: never on a change's path).
    func saveCache() {
        guard let cache, storeTrouble.withLockedValue({ $0 == nil }) else { return }
        // Under the version's lock, so that the state and its revision are of the same change.
        let outcome = version.commit(ifMatch: nil) { current in
            ((self.state.withLockedValue { $0 }, appliedRevision), current)
        }
        guard case .done(let (state, revision), _) = outcome, revision > cachedRevision.withLockedValue({ $0 })
        else { return }
        do {
            try cache.save(state, revision: revision, store: statePath)
            cachedRevision.withLockedValue { $0 = revision }
        } catch {
            logger.warning("state store: this node's copy could not be written: \(error)")
        }
    }
}
