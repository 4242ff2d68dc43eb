import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import SwitchyardStore

/// Keeps the store's change log within `change_log` (``ControlPlane/changeLogRetention``): prunes it once at
/// start and then every ``interval``, off the event loops. Every node of a fleet prunes; the store runs one pruning
/// at a time under its write lock, and a second finds nothing left to do.
public struct ChangeLogPruner: Service {
    let controlPlane: ControlPlane
    let interval: Duration

    public init(controlPlane: ControlPlane, interval: Duration = .seconds(3600)) {
        self.controlPlane = controlPlane
        self.interval = interval
    }

    public func run() async throws {
        guard controlPlane.store != nil else { return try await gracefulShutdown() }
        let controlPlane = self.controlPlane
        let interval = self.interval
        // The sleep ends (throws) when the service group shuts down: so does the loop.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = try? await NIOThreadPool.singleton.runIfActive { controlPlane.pruneChangeLog(now: Date()) }
                try await Task.sleep(for: interval)
            }
        }
    }
}

extension ControlPlane {
    /// Prunes the change log to ``changeLogRetention`` as of `now`, logging what went; a store that does not answer
    /// is the follower's to report (the next pruning tries again). `nil` without a store or when it failed.
    @discardableResult
    public func pruneChangeLog(now: Date) -> ChangeLogPruning? {
        guard let store else { return nil }
        do {
            let pruning = try store.pruneChanges(changeLogRetention, now: now)
            if let through = pruning.throughRevision {
                logger.info("state store: pruned \(pruning.deleted) change records, versions up to \(through)")
            }
            return pruning
        } catch {
            logger.warning("state store: the change log could not be pruned: \(error)")
            return nil
        }
    }
}
