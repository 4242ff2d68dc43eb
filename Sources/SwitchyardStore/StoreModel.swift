import Foundation

/// Everything the store holds, read in one transaction: what `serve` starts from and what the control plane
/// rebuilds its routing snapshot from.
public struct StoreSnapshot: Sendable, Equatable {
    /// The configuration version: 0 for a new store, one more after each write that changed anything.
    public var revision: Int64
    /// The tenants added through the admin API, by name: each one's document is the tenant as a JSON object in the
    /// configuration file's own keys, exactly as the control plane stored it (the store does not interpret it).
    public var tenants: [String: String]
    /// Backends drained through the admin API, of store and file tenants alike.
    public var drains: Set<StoredDrain>
    /// Certificates uploaded through the admin API, by tenant, private keys included: a snapshot is for building
    /// TLS contexts, never for an answer (``StoredCertificate/summary`` is what may be shown).
    public var certificates: [String: StoredCertificate]

    public init(
        revision: Int64 = 0,
        tenants: [String: String] = [:],
        drains: Set<StoredDrain> = [],
        certificates: [String: StoredCertificate] = [:]
    ) {
        self.revision = revision
        self.tenants = tenants
        self.drains = drains
        self.certificates = certificates
    }
}

/// An admin drain: the backend `HOST:PORT`, as the tenant names it, gets no new requests or tunnels. Kept apart
/// from the tenants (no foreign key) because file tenants can be drained too, and such a drain must outlast a
/// restart as well.
public struct StoredDrain: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public var tenant: String
    public var backend: String

    public init(tenant: String, backend: String) {
        self.tenant = tenant
        self.backend = backend
    }

    public static func < (lhs: StoredDrain, rhs: StoredDrain) -> Bool {
        (lhs.tenant, lhs.backend) < (rhs.tenant, rhs.backend)
    }

    /// `TENANT HOST:PORT`, the subject of its change records.
    public var description: String { "\(tenant) \(backend)" }
}

/// A tenant's own certificate as uploaded: the PEM chain (leaf first) and key, and what the control plane read off
/// the leaf when it validated them. The store keeps the PEM text as given and never puts the key anywhere but its
/// own column: not in change records, not in `description`.
public struct StoredCertificate: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let tenant: String
    public let chainPEM: String
    /// The private key. Never shown, logged or returned by an endpoint.
    public let keyPEM: String
    /// The leaf's SHA-256 fingerprint, as the control plane writes it (e.g. hex, colon-separated).
    public let fingerprint: String
    /// The DNS names the leaf covers (its subjectAltName entries).
    public let names: [String]
    /// The leaf's notAfter, in whole seconds (X.509 times carry none finer; a fraction given here is dropped, so
    /// that what is read back equals what was written).
    public let notAfter: Date

    public init(tenant: String, chainPEM: String, keyPEM: String, fingerprint: String, names: [String], notAfter: Date)
    {
        self.tenant = tenant
        self.chainPEM = chainPEM
        self.keyPEM = keyPEM
        self.fingerprint = fingerprint
        self.names = names
        self.notAfter = Date(timeIntervalSince1970: Double(Self.seconds(notAfter)))
    }

    /// What may be shown of the certificate: fingerprint, names, expiry.
    public var summary: CertificateSummary {
        CertificateSummary(fingerprint: fingerprint, names: names, notAfter: notAfter)
    }

    public var description: String {
        "certificate of '\(tenant)' (\(fingerprint), \(names.joined(separator: ", ")), not after \(notAfter))"
    }

    public var debugDescription: String { description }

    /// Whole seconds since 1970, rounded down; the `not_after` column.
    static func seconds(_ date: Date) -> Int64 {
        let value = date.timeIntervalSince1970.rounded(.down)
        // Dates beyond Int64 seconds (±292 billion years) are clamped rather than trapping.
        guard value > Double(Int64.min), value < Double(Int64.max) else { return value < 0 ? .min : .max }
        return Int64(value)
    }
}

/// The shown part of a certificate, and the `before`/`after` of its change records: `{"fingerprint": "…",
/// "names": […], "not_after": "2027-01-01T00:00:00Z"}`.
public struct CertificateSummary: Sendable, Equatable, Codable {
    public var fingerprint: String
    public var names: [String]
    public var notAfter: Date

    public init(fingerprint: String, names: [String], notAfter: Date) {
        self.fingerprint = fingerprint
        self.names = names
        self.notAfter = notAfter
    }

    enum CodingKeys: String, CodingKey {
        case fingerprint
        case names
        case notAfter = "not_after"
    }
}

/// What a change record says happened. The raw values are what the `change` table's `action` column holds and what
/// `switchyard changes` shows.
public enum ChangeAction: String, Sendable, Hashable, CaseIterable {
    case tenantAdd = "tenant.add"
    case tenantReplace = "tenant.replace"
    case tenantRemove = "tenant.remove"
    case drainAdd = "drain.add"
    case drainRemove = "drain.remove"
    case certificateAdd = "certificate.add"
    case certificateReplace = "certificate.replace"
    case certificateRemove = "certificate.remove"
    /// The configuration file was reloaded (SIGHUP or `switchyard reload`); its subject is the file.
    case configurationReload = "configuration.reload"
}

/// One entry of the audit log. A write that changes several things (an `apply`, a tenant removed together with its
/// certificate) appends several records, all with the write's one new `revision`, numbered by `sequence` from 0 in
/// the order they were made.
public struct ChangeRecord: Sendable, Hashable {
    /// The configuration version this change's write produced.
    public let revision: Int64
    /// Its place within the write, from 0.
    public let sequence: Int
    /// When the write began, to the millisecond.
    public let time: Date
    /// Who made it, as the admin API identified them (`uid 1000`, a token's name).
    public let actor: String
    public let action: ChangeAction
    /// The tenant's name for tenant and certificate changes; `TENANT HOST:PORT` for drains.
    public let subject: String
    /// The state before the change, JSON or `nil` when there was none: a tenant's document, a certificate's
    /// ``CertificateSummary`` (never its key), a drain's `{"backend": …, "tenant": …}`.
    public let before: String?
    /// The state after the change, as `before`; `nil` for a removal.
    public let after: String?

    public init(
        revision: Int64,
        sequence: Int,
        time: Date,
        actor: String,
        action: ChangeAction,
        subject: String,
        before: String?,
        after: String?
    ) {
        self.revision = revision
        self.sequence = sequence
        self.time = time
        self.actor = actor
        self.action = action
        self.subject = subject
        self.before = before
        self.after = after
    }
}

/// What ``StateStore/write(expectedRevision:actor:dryRun:_:)`` did.
public struct StoreCommit: Sendable, Equatable {
    /// The configuration version after the write: one more than ``previousRevision`` when anything changed, equal
    /// to it when nothing did. For a dry run, the version the write would have produced (nothing was committed).
    public let revision: Int64
    /// The version the write started from.
    public let previousRevision: Int64
    /// The change records it appended (or would have, for a dry run), in order.
    public let changes: [ChangeRecord]
    /// `true` when the write was rolled back on purpose, to answer what it would change.
    public let isDryRun: Bool

    public init(revision: Int64, previousRevision: Int64, changes: [ChangeRecord], isDryRun: Bool) {
        self.revision = revision
        self.previousRevision = previousRevision
        self.changes = changes
        self.isDryRun = isDryRun
    }

    /// Tenants the write added, replaced with a different document, and removed, each sorted by name: the answer
    /// of an `apply`.
    public var tenantDifference: TenantDifference {
        var difference = TenantDifference()
        for change in changes {
            switch change.action {
            case .tenantAdd: difference.added.append(change.subject)
            case .tenantReplace: difference.replaced.append(change.subject)
            case .tenantRemove: difference.removed.append(change.subject)
            default: break
            }
        }
        difference.added.sort()
        difference.replaced.sort()
        difference.removed.sort()
        return difference
    }
}

/// Tenants added, replaced (with a different document) and removed, each sorted by name.
public struct TenantDifference: Sendable, Equatable {
    public var added: [String]
    public var replaced: [String]
    public var removed: [String]

    public init(added: [String] = [], replaced: [String] = [], removed: [String] = []) {
        self.added = added
        self.replaced = replaced
        self.removed = removed
    }

    public var isEmpty: Bool { added.isEmpty && replaced.isEmpty && removed.isEmpty }
}

/// A balancer node of a fleet as its heartbeat records it in the shared store: who it is, where it serves, and which
/// revision it has live.
public struct FleetNode: Sendable, Equatable {
    /// The node's name (`node_name`), unique in the fleet.
    public var name: String
    /// Where it serves, as its listen addresses.
    public var address: String
    /// The store revision it serves.
    public var applied: Int64
    /// When it started.
    public var startedAt: Date
    /// Its last heartbeat.
    public var seenAt: Date

    public init(name: String, address: String, applied: Int64, startedAt: Date, seenAt: Date) {
        self.name = name
        self.address = address
        self.applied = applied
        self.startedAt = startedAt
        self.seenAt = seenAt
    }
}

/// How much of the change log a store keeps (`change_log:`). A write's records are kept or pruned together, and
/// the latest write's are always kept, so the log never starts in the middle of a write: a node that finds its
/// next revision missing knows the log was pruned past it and reads the store whole.
public struct ChangeLogRetention: Sendable, Equatable {
    /// Records of writes older than this go; `nil`: kept whatever their age.
    public var maximumAge: Duration?
    /// At most about this many records are kept, the newest (whole writes: a write that straddles the limit is
    /// kept); `nil`: any number.
    public var maximumRecords: Int?

    public init(maximumAge: Duration? = nil, maximumRecords: Int? = nil) {
        self.maximumAge = maximumAge
        self.maximumRecords = maximumRecords
    }
}

/// What ``StateStore/pruneChanges(_:now:)`` removed.
public struct ChangeLogPruning: Sendable, Equatable {
    /// How many change records were deleted.
    public let deleted: Int
    /// The revision through which the log was pruned, when anything was: every record of a revision up to it is
    /// gone.
    public let throughRevision: Int64?

    public init(deleted: Int, throughRevision: Int64?) {
        self.deleted = deleted
        self.throughRevision = throughRevision
    }
}
