import Foundation
import Switchyard
import SwitchyardStore

/// Several nodes on one store: what the others wrote, made live here.
///
/// ``applied`` is the store revision the served state reflects. A write of this node on top of it advances it; so
/// does ``synchronize()``, which reads, in one transaction, the revision, the change records after ``applied`` and
/// the rows they touched, and publishes them as one change of the routing table, however many records there are
/// (1,000 changes in a second cost as many rebuilds as synchronisations ran, not 1,000). The change log is keyed by
/// the revision, which every write bumps under the store's write lock, so records are read in commit order and none
/// is skipped.
extension ControlPlane {
    /// What the store holds beyond ``applied``, read in one transaction.
    enum RemoteUpdate {
        /// Nothing: the store is at ``applied``.
        case none
        /// The touched rows as they are now: tenants and certificates by tenant name (`nil`: removed), and every
        /// drain (a small set, read whole).
        case rows(
            revision: Int64,
            records: Int,
            tenants: [String: String?],
            certificates: [String: StoredCertificate?],
            drains: Set<StoredDrain>
        )
        /// The whole store: the log does not reach back to ``applied`` (it was pruned), or it is too long to be
        /// worth reading record by record.
        case snapshot(StoreSnapshot)
    }

    /// Beyond this many records, a synchronisation reads the whole store instead.
    static let maximumRecordsApplied = 20_000

    /// The store revision the served state reflects.
    public var appliedRevision: Int64 {
        applied.withLockedValue { $0 }
    }

    /// The store's revision as this node last saw it: read by its last synchronisation, or made by its own last
    /// write. Ahead of ``appliedRevision`` while this node is behind (a version it cannot serve, a synchronisation
    /// to come).
    public var storeRevision: Int64 {
        max(revisionRead.withLockedValue { $0 }, appliedRevision)
    }

    /// Makes live what other writers committed since ``appliedRevision``, as one change of the version; answers the
    /// revision now applied. Without a store, or with nothing new, it changes nothing.
    @discardableResult
    public func synchronize() -> Result<Int64, StoreError> {
        guard let store else { return .success(appliedRevision) }
        var result: Result<Int64, StoreError> = .success(appliedRevision)
        _ = version.commit(ifMatch: nil) { current in
            do throws(StoreError) {
                let revision = try synchronizeLocked(store)
                result = .success(revision)
                return ((), revision)
            } catch {
                result = .failure(error)
                return ((), current)
            }
        }
        return result
    }

    /// ``synchronize()``'s work, with the version's lock held. (A change that finds the store ahead of it catches up
    /// inside its own write instead: ``catchUp(within:conditional:)``.)
    func synchronizeLocked(_ store: any StateStore) throws(StoreError) -> Int64 {
        let from = appliedRevision
        let update: RemoteUpdate
        do {
            update = try store.read { transaction throws(StoreError) in
                let current = transaction.previousRevision
                revisionRead.withLockedValue { $0 = max($0, current) }
                return try Self.readUpdate(transaction, since: from)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError.unavailable(path: statePath, reason: "\(error)")
        }
        applyUpdate(update, from: from)
        return appliedRevision
    }

    /// Makes `update`, read after revision `from`, live; ``appliedRevision`` advances unless this node cannot serve
    /// it (logged).
    func applyUpdate(_ update: RemoteUpdate, from: Int64) {
        switch update {
        case .none:
            return
        case .rows(let revision, let records, let tenants, let certificates, let drains):
            var next = state.withLockedValue { $0 }
            for (name, document) in tenants {
                next.tenants[name] = document.flatMap { loadTenant(name, document: $0) }
            }
            for (tenant, certificate) in certificates {
                next.certificates[tenant] = certificate
            }
            next.drains = drains
            applyRemote(next, changed: Set(tenants.keys), revision: revision)
            logger.info("state store: applied \(records) changes by other writers, version \(from) → \(revision)")
        case .snapshot(let snapshot):
            var next = state.withLockedValue { $0 }
            next.tenants = [:]
            for (name, document) in snapshot.tenants {
                next.tenants[name] = loadTenant(name, document: document)
            }
            next.certificates = snapshot.certificates
            next.drains = snapshot.drains
            applyRemote(next, changed: nil, revision: snapshot.revision)
            logger.info("state store: read whole at version \(snapshot.revision) (this node was at \(from))")
        }
    }

    /// The update after `revision`, as of `transaction`.
    static func readUpdate(
        _ transaction: borrowing StoreTransaction,
        since revision: Int64
    ) throws(StoreError)
        -> RemoteUpdate
    {
        let current = transaction.previousRevision
        guard current > revision else { return .none }
        let records = try transaction.changes(since: revision, limit: maximumRecordsApplied + 1)
        guard records.first?.revision == revision + 1, records.last?.revision == current,
            records.count <= maximumRecordsApplied
        else {
            return .snapshot(try transaction.snapshot())
        }
        var tenants: [String: String?] = [:]
        var certificates: [String: StoredCertificate?] = [:]
        for record in records {
            switch record.action {
            case .tenantAdd, .tenantReplace, .tenantRemove:
                if tenants[record.subject] == nil {
                    tenants[record.subject] = .some(try transaction.tenant(named: record.subject))
                }
            case .certificateAdd, .certificateReplace, .certificateRemove:
                if certificates[record.subject] == nil {
                    certificates[record.subject] = .some(try transaction.certificate(ofTenant: record.subject))
                }
            case .drainAdd, .drainRemove, .configurationReload:
                // Drains are read whole below; a reload was of the other node's own file.
                break
            }
        }
        return .rows(
            revision: current,
            records: records.count,
            tenants: tenants,
            certificates: certificates,
            drains: try transaction.drains()
        )
    }

    /// A stored tenant parsed, or `nil` (logged) when it no longer loads here, as at start.
    private func loadTenant(_ name: String, document: String) -> ManagedTenant? {
        do {
            return try ManagedTenant(document: document, source: "stored tenant '\(name)'")
        } catch {
            logger.error("state store: tenant '\(name)' does not load and is not served: \(error)")
            return nil
        }
    }

    /// Publishes `next`, what the store holds at `revision`: the table updated for the tenants `changed` (or
    /// rebuilt when `nil`, or when the update does not apply: a domain that a tenant of this node's file serves),
    /// the drains, the uploaded certificates.
    private func applyRemote(_ next: ControlState, changed: Set<String>?, revision: Int64) {
        let plan = Plan(next: next, mutations: [], changed: changed)
        let table: RouteTable
        do {
            if let changed = changed?.subtracting(next.fileIndex.names) {
                let served = changed.sorted().compactMap { name in
                    next.tenants[name].flatMap { next.served($0.configuration).tenant }
                }
                table = try routes.current.replacing(changed, with: served)
                routes.publish(table, replacing: changed)
            } else {
                throw RebuildNeeded()
            }
        } catch {
            let snapshot = ControlSnapshot(next)
            do {
                table = try RouteTable(configuration: snapshot.configuration, previous: routes.current)
            } catch {
                logger.error(
                    "state store: version \(revision) cannot be served here (\(error)); serving the previous one"
                )
                return
            }
            routes.publish(table, replacing: nil)
            for (name, shadowing) in snapshot.shadowed {
                logger.warning("\(Self.describe(shadowing, of: name))")
            }
        }
        Self.applyDrains(next.drains, to: table.tenants)
        do {
            if let certificateStore = try certificateStore(for: plan, table: table), let certificates {
                certificates.publish(certificateStore)
            }
        } catch {
            logger.error("state store: the certificates of version \(revision) cannot be loaded here: \(error)")
        }
        state.withLockedValue { $0 = next }
        applied.withLockedValue { $0 = revision }
    }

    private struct RebuildNeeded: Error {}
}

/// The fleet as the store's heartbeats show it, and waiting for it.
extension ControlPlane {
    /// A node that has not recorded a heartbeat for this long is no longer counted live.
    static let liveWindow: TimeInterval = 10

    /// This node's name and addresses: `node_name`, or the host's name and first listen port.
    static func identity(of file: Configuration) -> FleetNode {
        let addresses = (file.listen.http + file.listen.https).map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" }
        let port = (file.listen.http + file.listen.https).first?.port.map { ":\($0)" } ?? ""
        let now = Date()
        return FleetNode(
            name: file.nodeName ?? ProcessInfo.processInfo.hostName + port,
            address: addresses.joined(separator: ","),
            applied: 0,
            startedAt: now,
            seenAt: now
        )
    }

    /// Records this node's heartbeat with the revision it serves; a store that does not answer is the follower's
    /// to report.
    func heartbeat() {
        var node = self.node
        node.applied = appliedRevision
        node.seenAt = Date()
        try? store?.recordHeartbeat(node)
    }

    /// One node as `GET /v1/fleet` shows it.
    struct FleetMember: Encodable {
        var name: String
        var address: String
        var applied: Int64
        /// Revisions behind the store.
        var lag: Int64
        /// Seconds since its last heartbeat.
        var lastSeen: Double
        var live: Bool
        /// Whether it is the node that answers.
        var this: Bool

        enum CodingKeys: String, CodingKey {
            case name, address, applied, lag, live, this
            case lastSeen = "last_seen_seconds"
        }
    }

    /// Every node that recorded a heartbeat, this one included (from memory, as it may not have recorded one yet),
    /// with the store's revision.
    func fleetMembers() throws(StoreError) -> (revision: Int64, nodes: [FleetMember]) {
        let now = Date()
        var nodes = try store?.fleet() ?? []
        let revision = try store?.revision() ?? appliedRevision
        nodes.removeAll { $0.name == node.name }
        var this = node
        this.applied = appliedRevision
        this.seenAt = now
        nodes.append(this)
        let members = nodes.sorted { $0.name < $1.name }.map { member in
            let age = max(0, now.timeIntervalSince(member.seenAt))
            return FleetMember(
                name: member.name,
                address: member.address,
                applied: member.applied,
                lag: max(0, revision - member.applied),
                lastSeen: (age * 10).rounded() / 10,
                live: age <= Self.liveWindow,
                this: member.name == node.name
            )
        }
        return (revision, members)
    }

    /// How waiting for the fleet to have a revision went.
    struct FleetWait: Encodable {
        var version: Int64
        /// Live nodes, this one included.
        var live: Int
        /// Live nodes that have the version.
        var applied: Int
        /// The live nodes that did not have it in time.
        var behind: [String]
        /// Why the fleet could not be read, if it could not.
        var error: String?
    }

    /// How far the fleet is with `revision`: `nil` while a live node lacks it and `deadline` is not passed, else how
    /// it went. This node has it already (a change is answered once live here); other nodes record a heartbeat as
    /// soon as they have applied a change.
    func fleetProgress(_ revision: Int64, deadline: Date) -> FleetWait? {
        let members: [FleetMember]
        do {
            members = try fleetMembers().nodes.filter(\.live)
        } catch {
            return FleetWait(version: revision, live: 1, applied: 1, behind: [], error: "\(error)")
        }
        let behind = members.filter { $0.applied < revision }.map(\.name)
        guard behind.isEmpty || Date() >= deadline else { return nil }
        return FleetWait(
            version: revision,
            live: members.count,
            applied: members.count - behind.count,
            behind: behind,
            error: nil
        )
    }
}
