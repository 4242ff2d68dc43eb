import Atomics
import NIOConcurrencyHelpers

/// The configuration's version: a counter that every change advances (an admin drain or undrain, a reload through
/// the API or by SIGHUP), carried by every admin answer (`ETag: "N"`) so that a writer can make a change
/// conditional on nothing having changed since it looked (`If-Match: "N"`, as Caddy's admin API).
///
/// It is also what serialises changes: ``change(ifMatch:by:_:)`` runs one change at a time, from whichever thread
/// (the admin event loop, the SIGHUP task), and compares the writer's version with the current one under the same
/// lock, so two writers that read version 7 cannot both apply a change "at 7": the second gets a mismatch.
///
/// Without a state store (tests of the API alone) it lives in memory, from 1 by default. The balancer starts it at
/// the store's revision (0 for a new store, or when the store cannot be opened) and every change is a store write run through ``commit(ifMatch:_:)``, which takes the version the
/// write committed, so that the version an answer carries is always the store's revision.
public final class ConfigurationVersion: Sendable {
    /// The version, changed only under the lock, by the change that advances it.
    private let value: NIOLockedValueBox<Int64>
    /// A copy of ``value`` stored after each advance, so that readers (every answer's `ETag`) never wait for a
    /// change in progress: a reload holds the lock for as long as the file takes to load.
    private let published: ManagedAtomic<Int64>
    /// Changes that advanced the version, for `switchyard_config_changes_total`.
    private let changes = ManagedAtomic<Int>(0)

    /// - Parameter initial: the version before any change: 1 in memory, the store's revision (0 for a new store)
    ///   with one.
    public init(initial: Int64 = 1) {
        precondition(initial >= 0, "configuration versions are never negative")
        value = NIOLockedValueBox(initial)
        published = ManagedAtomic(initial)
    }

    /// The version now: the last one a finished change left (a change in progress is not counted until it ends).
    public var current: Int64 {
        published.load(ordering: .acquiring)
    }

    /// How many changes advanced the version since the process started.
    public var changeCount: Int {
        changes.load(ordering: .relaxed)
    }

    /// What a writer expects the version to be: `If-Match`.
    public enum Precondition: Sendable, Equatable {
        /// `If-Match: *`: any version (the resource exists).
        case any
        /// One of these versions (`If-Match: "7"`, or a list `"7", "8"`).
        case oneOf([Int64])

        /// Whether `version` satisfies it.
        public func matches(_ version: Int64) -> Bool {
            switch self {
            case .any: return true
            case .oneOf(let versions): return versions.contains(version)
            }
        }
    }

    /// How a change went.
    public enum Outcome<Value> {
        /// The change ran; `version` is the version after it (advanced if and only if it changed something).
        case done(Value, version: Int64)
        /// The writer expected another version; nothing ran. `current` is the version now.
        case mismatch(current: Int64)
    }

    /// Runs `change` while no other change runs, if `precondition` (when given) matches the current version.
    ///
    /// `change` returns its value and whether it changed anything; only then does the version advance, so an
    /// idempotent request (draining a backend already drained) leaves it as it was. `change` must not call back
    /// into this type (the lock is not reentrant) and should be quick: other writers wait for it (readers of
    /// ``current`` do not).
    ///
    /// - Parameter actor: who makes the change, for the audit log the store will keep (unused until then: the
    ///   change logs it itself).
    public func change<Value>(
        ifMatch precondition: Precondition?,
        by actor: ChangeActor,
        _ change: () -> (value: Value, changed: Bool)
    ) -> Outcome<Value> {
        commit(ifMatch: precondition) { version in
            let (result, changed) = change()
            return (result, changed ? version + 1 : version)
        }
    }

    /// Runs `change` as ``change(ifMatch:by:_:)`` does, for a change that decides the version itself: it gets the
    /// current version and returns the one it committed (a store write's revision), which becomes ``current``. A
    /// version lower than the current one is ignored: versions never go back.
    public func commit<Value>(
        ifMatch precondition: Precondition?,
        _ change: (_ current: Int64) -> (value: Value, version: Int64)
    ) -> Outcome<Value> {
        value.withLockedValue { version in
            if let precondition, !precondition.matches(version) {
                return .mismatch(current: version)
            }
            let (result, committed) = change(version)
            if committed > version {
                version = committed
                published.store(version, ordering: .releasing)
                changes.wrappingIncrement(ordering: .relaxed)
            }
            return .done(result, version: version)
        }
    }
}

/// Who made a change, as logs (and later the store's audit log) name them.
public enum ChangeActor: Sendable, Equatable, CustomStringConvertible {
    /// A client of the admin unix socket, by the uid the kernel gives for its end (`SO_PEERCRED`).
    case user(uid: UInt32)
    /// A client of the unix socket whose uid could not be learnt (not on Linux).
    case unknownUser
    /// A client of the TCP listener, by the name of the token it presented.
    case token(name: String)
    /// The process got SIGHUP.
    case signal

    /// `uid 0`, `token 'deploy'`, `SIGHUP`: what follows "by" in a log line.
    public var description: String {
        switch self {
        case .user(let uid): return "uid \(uid)"
        case .unknownUser: return "a local user"
        case .token(let name): return "token '\(name)'"
        case .signal: return "SIGHUP"
        }
    }
}
