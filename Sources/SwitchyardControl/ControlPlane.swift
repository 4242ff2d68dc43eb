import Foundation
import Logging
import NIOConcurrencyHelpers
import Switchyard
import SwitchyardStore
import SwitchyardTLS

/// The control plane: what the admin API changes, made durable in the state store and then live.
///
/// A change runs as one change of the ``ConfigurationVersion`` (one at a time, conditional on `If-Match`): it is
/// checked against the in-memory ``ControlState``, its routing snapshot is built (so a change that cannot be
/// served is refused before anything is written), it is written to the store in one transaction with its audit
/// records, and only then is the new ``RouteTable`` (and ``CertificateStore``) published. The answer goes out after
/// the publication: every worker loads the table once per request, so the next request on any worker sees it.
/// The version is the store's revision.
///
/// The data path never sees the store: this target depends on both, `Switchyard` on neither.
public final class ControlPlane: Sendable {
    /// The configuration version, the store's revision.
    public let version: ConfigurationVersion
    /// The path of the configuration file (what reload records).
    let configurationPath: String
    let store: (any StateStore)?
    /// Why the store cannot be used, when it cannot: every change is then refused with 503.
    let storeProblem: String?
    /// Where the store is: the file, or the database's URL (never with a password).
    let statePath: String
    /// The routing snapshot the workers read.
    public let routes: RouteSource
    /// The certificates the TLS listeners serve; `nil` without HTTPS.
    public let certificates: CertificateSource?
    let logger: Logger
    let state: NIOLockedValueBox<ControlState>
    /// The store revision the served state reflects (see ``synchronize()``).
    let applied: NIOLockedValueBox<Int64>
    /// The store's revision when a synchronisation last read it (``storeRevision``).
    let revisionRead = NIOLockedValueBox<Int64>(0)
    /// This node, as its heartbeats name it in the store.
    let node: FleetNode
    /// Why the last synchronisation with the store failed, while it fails (the database stopped answering, or did
    /// not answer at start).
    let storeTrouble: NIOLockedValueBox<String?>
    /// This node's copy of a shared store, and the revision last written to it.
    let cache: StateCache?
    let cachedRevision = NIOLockedValueBox<Int64>(-1)
    /// How much of the change log is kept (`change_log`, read at start).
    let changeLogRetention: ChangeLogRetention

    /// Opens the store at `statePath` (a file's path or a PostgreSQL URL, ``StateLocation``; the database's password
    /// from `passwordFile` or `PGPASSWORD`) and builds what to serve from the file and the store.
    ///
    /// A store that cannot be opened (permissions, a newer schema, a damaged file) does not stop the balancer: it
    /// serves the file's tenants, logs why, and refuses changes with 503 until restarted with a usable store. A
    /// stored tenant that no longer loads (its backend's host name stopped resolving) is left out and logged.
    ///
    /// - Throws: what the file's own tenants or certificates fail with (``RouteTableError``, ``TLSError``): the
    ///   balancer refuses to start on those, as before.
    public init(
        file: Configuration,
        configurationPath: String,
        statePath: String,
        passwordFile: String? = nil,
        logger: Logger
    ) throws {
        self.configurationPath = configurationPath
        self.node = Self.identity(of: file)
        self.changeLogRetention = ChangeLogRetention(
            maximumAge: file.changeLog.maximumAge.map { .nanoseconds($0.nanoseconds) },
            maximumRecords: file.changeLog.maximumChanges
        )
        // As status and logs show it: a URL that does not parse may hold a password, so it is not repeated.
        self.statePath = (try? StateLocation(parsing: statePath))?.description ?? "the `state` URL"
        self.logger = logger
        var state = ControlState(file: file)
        var revision: Int64 = 0
        var store: (any StateStore)?
        var problem: String?
        var trouble: String?
        let cache = StateCache(path: file.stateCachePath)
        let location = self.statePath
        do {
            let opened = try Self.openStore(statePath, passwordFile: passwordFile, logger: logger)
            var snapshot = StoreSnapshot()
            do {
                snapshot = try opened.snapshot()
            } catch {
                guard opened is PostgresStateStore, error.isUnavailable else { throw error }
                // The database is down: serve this node's copy, if it has one, and catch up once it answers.
                trouble = "\(error)"
                if let cached = cache.load(for: location) {
                    let age = Int(Date().timeIntervalSince(cached.savedAt))
                    logger.error(
                        "state store: \(error); serving this node's copy of version \(cached.revision), saved \(age) s ago (\(cache.path)), until it answers"
                    )
                    snapshot = cached.snapshot
                } else {
                    logger.error(
                        "state store: \(error); no copy of it here (\(cache.path)): serving the configuration file's tenants until it answers"
                    )
                }
            }
            store = opened
            revision = snapshot.revision
            state.drains = snapshot.drains
            state.certificates = snapshot.certificates
            for (name, document) in snapshot.tenants {
                do {
                    state.tenants[name] = try ManagedTenant(document: document, source: "stored tenant '\(name)'")
                } catch {
                    logger.error("state store: tenant '\(name)' does not load and is not served: \(error)")
                }
            }
        } catch {
            problem = "\(error)"
            logger.error(
                "state store \(self.statePath) cannot be used: \(error); serving the configuration file's tenants only, admin changes are refused until it is fixed and the balancer restarted"
            )
        }
        self.store = store
        self.storeProblem = problem
        self.cache = store is PostgresStateStore ? cache : nil
        self.storeTrouble = NIOLockedValueBox(trouble)
        let snapshot = ControlSnapshot(state)
        let table = try RouteTable(configuration: snapshot.configuration)
        self.routes = RouteSource(table)
        Self.applyDrains(state.drains, to: table.tenants)
        self.certificates = try CertificateStore.load(
            configuration: snapshot.configuration,
            uploaded: ControlSnapshot.uploadedCertificates(state, table: table)
        ).map(CertificateSource.init)
        self.state = NIOLockedValueBox(state)
        self.applied = NIOLockedValueBox(revision)
        self.version = ConfigurationVersion(initial: revision)
        for (name, shadowing) in snapshot.shadowed {
            logger.warning("\(Self.describe(shadowing, of: name))")
        }
        let managed = state.tenants.count
        if managed > 0 || revision > 0 {
            logger.info("state store \(self.statePath): \(managed) tenants, version \(revision)")
        }
    }

    /// The store `statePath` names: an SQLite file, or a PostgreSQL database.
    static func openStore(_ statePath: String, passwordFile: String?, logger: Logger) throws -> any StateStore {
        let location: StateLocation
        do {
            location = try StateLocation(parsing: statePath)
        } catch {
            throw StoreError.unavailable(path: "the `state` URL", reason: "it \(error)")
        }
        switch location {
        case .file(let path):
            return try SQLiteStateStore(path: path)
        case .postgres(let url):
            let password =
                try passwordFile.map { try StatePassword.read(from: $0, for: location.description) }
                ?? ProcessInfo.processInfo.environment["PGPASSWORD"]
            let settings = PostgresStateStore.Settings(
                host: url.host,
                port: url.port,
                user: url.user,
                password: password,
                database: url.database,
                tls: PostgresStateStore.Settings.TLSMode(rawValue: url.sslMode) ?? .prefer,
                rootCertificates: url.rootCertificates
            )
            return try PostgresStateStore(settings: settings, waitingForDatabase: true, logger: logger)
        }
    }

    /// Marks each backend of `tenants` drained by the operator or not as the stored drains say.
    static func applyDrains(_ drains: Set<StoredDrain>, to tenants: some Sequence<Tenant>) {
        for tenant in tenants {
            for backend in tenant.backends {
                backend.status.isDrainedByOperator = drains.contains(
                    StoredDrain(tenant: tenant.name, backend: backend.description)
                )
            }
        }
    }

    static func describe(_ shadowing: Shadowing, of name: String) -> String {
        shadowing.byName
            ? "tenant '\(name)' of the state store is not served: the configuration file has a tenant of that name, "
                + "or serves all its domains (\(shadowing.domains.joined(separator: ", ")))"
            : "tenant '\(name)' of the state store is served without \(shadowing.domains.joined(separator: ", ")): "
                + "the configuration file's tenants serve them"
    }

    // MARK: Changes

    /// One write to the store, in the order given.
    enum Mutation {
        case putTenant(ManagedTenant)
        case removeTenant(String)
        case replaceTenants([String: String])
        case addDrain(StoredDrain)
        case removeDrain(StoredDrain)
        case putCertificate(StoredCertificate)
        case removeCertificate(tenant: String)
        case reload(file: String, tenants: Int)

        func apply(to transaction: inout StoreTransaction) throws(StoreError) {
            switch self {
            case .putTenant(let tenant): _ = try transaction.putTenant(tenant.name, document: tenant.document)
            case .removeTenant(let name): _ = try transaction.removeTenant(name)
            case .replaceTenants(let documents): try transaction.replaceTenants(with: documents)
            case .addDrain(let drain): try transaction.addDrain(tenant: drain.tenant, backend: drain.backend)
            case .removeDrain(let drain): try transaction.removeDrain(tenant: drain.tenant, backend: drain.backend)
            case .putCertificate(let certificate): try transaction.putCertificate(certificate)
            case .removeCertificate(let tenant): try transaction.removeCertificate(ofTenant: tenant)
            case .reload(let file, let tenants): try transaction.recordReload(of: file, tenants: tenants)
            }
        }
    }

    /// What a change decided: the state after it, the writes that make it durable, and whether the certificates
    /// served change with it.
    struct Plan {
        var next: ControlState
        var mutations: [Mutation]
        /// The managed tenants the change adds, replaces or removes, when it is only those: the routing table is
        /// then updated for them alone (``RouteTable/replacing(_:with:)``). `nil` rebuilds it whole (apply, reload).
        var changed: Set<String>?
        /// Whether the file's certificates must be read again (a reload).
        var reloadsFileCertificates = false
    }

    /// Why a change was refused: the answer to give (the admin API's own type).
    typealias Refusal = AdminAPI.Refusal

    /// The answer to a change while the store cannot be used at all (it did not open at start).
    var storeUnusable: Refusal {
        Refusal(
            503,
            .unavailable,
            "the state store cannot be used (\(storeProblem ?? "not opened")); nothing was changed. Fix it and restart "
                + "the balancer"
        )
    }

    /// The answer to a change the store failed to write (full disk, I/O error); nothing of it was committed.
    func storeFailed(_ error: any Error, by actor: ChangeActor) -> Refusal {
        logger.error("state store: a change by \(actor) was not written: \(error)")
        return Refusal(503, .unavailable, "the state store cannot be written: \(error); nothing was changed")
    }

    /// What a committed change answers with.
    struct Committed {
        var commit: StoreCommit
        var table: RouteTable
        /// What the file shadows of the managed tenants, for a whole rebuild (`nil` for an incremental one).
        var shadowed: [String: Shadowing]?
    }

    /// Runs a change: `decide` plans it from the current state (or refuses it), then the plan is built, written
    /// and published as the type's documentation says, and `answer` makes the response from what was committed.
    /// `dryRun` stops after the write, which is rolled back: nothing is published.
    func change(
        _ request: AdminAPI.Request,
        actor: ChangeActor,
        dryRun: Bool = false,
        decide: (ControlState) throws(Refusal) -> Plan,
        answer: (Committed) -> AdminAPI.Response
    ) -> AdminAPI.Response {
        let precondition: ConfigurationVersion.Precondition?
        switch AdminAPI.parseIfMatch(request.ifMatch) {
        case .success(let parsed): precondition = parsed
        case .failure(let refusal): return refusal.response
        }
        // What other nodes wrote first, so that the change is checked against it and If-Match compared with it. (A
        // store that does not answer is found again by the write, which refuses the change.)
        _ = synchronize()
        let outcome = version.commit(ifMatch: precondition) { current -> (value: AdminAPI.Response, version: Int64) in
            do throws(Refusal) {
                let committed = try self.run(
                    decide: decide,
                    actor: actor,
                    dryRun: dryRun,
                    conditional: precondition != nil
                )
                var response = answer(committed)
                response.version = dryRun ? current : committed.commit.revision
                return (response, dryRun ? current : committed.commit.revision)
            } catch {
                var response = error.response
                response.version = current
                return (response, current)
            }
        }
        switch outcome {
        case .mismatch(let current):
            return AdminAPI.versionMismatch(current: current, expected: request.ifMatch)
        case .done(let response, _):
            return waitingForFleet(response, request: request, dryRun: dryRun)
        }
    }

    /// With `?wait=fleet`, a committed change's answer once every live node serves it (or `wait_timeout` seconds,
    /// 10 by default, at most 60, passed), with a `fleet` member saying how many do. The answer is completed by a
    /// continuation that the admin loop asks every 20 ms (one read of the heartbeats each time), so other admin
    /// clients are served while it waits; nodes normally have a change within milliseconds.
    public func waitingForFleet(_ response: AdminAPI.Response, request: AdminAPI.Request) -> AdminAPI.Response {
        waitingForFleet(response, request: request, dryRun: false)
    }

    private func waitingForFleet(
        _ response: AdminAPI.Response,
        request: AdminAPI.Request,
        dryRun: Bool
    ) -> AdminAPI.Response {
        let query = Self.query(request.target)
        guard query["wait"] == "fleet", !dryRun, (200..<300).contains(response.status), let version = response.version,
            (try? JSONSerialization.jsonObject(with: response.body)) is [String: Any]
        else { return response }
        let timeout = query["wait_timeout"].flatMap(Double.init).map { min(max($0, 0), 60) } ?? 10
        let deadline = Date().addingTimeInterval(timeout)
        // The answer as JSON again inside the continuation: a [String: Any] is not Sendable.
        let body = response.body
        let status = response.status
        var waiting = response
        waiting.continuation = AdminAPI.Continuation(every: .milliseconds(20)) { [self] in
            guard let wait = fleetProgress(version, deadline: deadline),
                var object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
            else { return nil }
            var fleet: [String: Any] = [
                "version": wait.version, "live": wait.live, "applied": wait.applied, "behind": wait.behind,
            ]
            if let error = wait.error { fleet["error"] = error }
            object["fleet"] = fleet
            var answer = Self.answer(status, object)
            answer.version = version
            return answer
        }
        return waiting
    }

    /// Plans, builds, writes and publishes one change; called inside the version's change.
    ///
    /// With a store, everything happens inside its write, which holds the store's write lock: when another writer
    /// (another node) committed since ``appliedRevision``, what it wrote is read in the same transaction and made
    /// live first, then the change is decided against that. So a change is never decided against a state another
    /// node has moved on from, and no writer ever has to retry. A `conditional` change (If-Match) is refused
    /// instead, as the configuration changed since its writer looked.
    func run(
        decide: (ControlState) throws(Refusal) -> Plan,
        actor: ChangeActor,
        dryRun: Bool,
        conditional: Bool = false
    ) throws(Refusal) -> Committed {
        guard let store else {
            // Without a store only a reload of the file goes on, versioned in memory: the file is still the
            // operator's to change.
            let built = try build(decide: decide)
            guard !dryRun, built.plan.mutations.allSatisfy({ if case .reload = $0 { true } else { false } }) else {
                throw storeUnusable
            }
            let current = version.current
            let commit = StoreCommit(revision: current + 1, previousRevision: current, changes: [], isDryRun: false)
            return publish(built, commit, actor)
        }
        var built: Built?
        let commit: StoreCommit
        do {
            commit = try store.write(expectedRevision: nil, actor: "\(actor)", dryRun: dryRun) { transaction in
                try catchUp(within: transaction, conditional: conditional)
                let decided = try build(decide: decide)
                for mutation in decided.plan.mutations {
                    try mutation.apply(to: &transaction)
                }
                built = decided
            }
        } catch let refusal as Refusal {
            throw refusal
        } catch {
            throw storeFailed(error, by: actor)
        }
        guard let built else {
            throw storeFailed(
                StoreError.unavailable(path: statePath, reason: "the write ended without a plan"),
                by: actor
            )
        }
        guard !dryRun, commit.revision != commit.previousRevision else {
            return Committed(commit: commit, table: built.table, shadowed: built.shadowed)
        }
        return publish(built, commit, actor)
    }

    /// Inside a write: makes live what other writers committed since ``appliedRevision``, as the write's
    /// transaction sees it. Refuses the change when it was `conditional`, or when this node cannot serve what it
    /// read (it would otherwise write on top of a state it does not have).
    func catchUp(within transaction: borrowing StoreTransaction, conditional: Bool) throws {
        let from = appliedRevision
        let revision = transaction.previousRevision
        guard revision != from else { return }
        let update = try Self.readUpdate(transaction, since: from)
        applyUpdate(update, from: from)
        guard appliedRevision == revision else {
            throw Refusal(
                503,
                .unavailable,
                "this node cannot serve the store's version \(revision) (see its log); nothing was changed"
            )
        }
        if conditional {
            throw Refusal(
                412,
                .versionMismatch,
                "the configuration changed on another node (it is at version \(revision) now); nothing was changed. "
                    + "Look again and retry with If-Match: \"\(revision)\" if the change still makes sense"
            )
        }
    }

    /// A change decided and built: its plan, the routing table and certificates to publish.
    struct Built {
        var plan: Plan
        var table: RouteTable
        /// The managed tenants the change replaces in the table; `nil` when the table was rebuilt whole.
        var replaced: Set<String>?
        /// The tenants whose backends the change touches: those it names, or all of them.
        var touched: [Tenant]
        var shadowed: [String: Shadowing]?
        var certificates: CertificateStore?
    }

    /// Decides a change against the state now and builds what it serves; refuses one that cannot be served.
    private func build(decide: (ControlState) throws(Refusal) -> Plan) throws(Refusal) -> Built {
        let current = state.withLockedValue { $0 }
        var plan = try decide(current)
        let table: RouteTable
        var shadowed: [String: Shadowing]?
        let touched: [Tenant]
        let replaced = plan.changed?.subtracting(plan.next.fileIndex.names)
        do {
            if let changed = replaced {
                let served = changed.sorted().compactMap { name in
                    plan.next.tenants[name].flatMap { plan.next.served($0.configuration).tenant }
                }
                table = try routes.current.replacing(changed, with: served)
                touched = changed.compactMap { table.tenant(named: $0) }
            } else {
                let snapshot = ControlSnapshot(plan.next)
                shadowed = snapshot.shadowed
                table = try RouteTable(configuration: snapshot.configuration, previous: routes.current)
                touched = table.tenants
            }
        } catch {
            throw Refusal(409, .domainTaken, "\(error); nothing was changed")
        }
        // A drain ends with its backend (removed from its tenant, its tenant removed, from the API or the file), so
        // that a backend added again later is not drained by a leftover.
        let served = Set(
            touched.lazy.flatMap { tenant in
                tenant.backends.lazy.map { StoredDrain(tenant: tenant.name, backend: $0.description) }
            }
        )
        let names = plan.changed
        for drain in plan.next.drains.sorted()
        where (names?.contains(drain.tenant) ?? true) && !served.contains(drain) {
            plan.next.drains.remove(drain)
            plan.mutations.append(.removeDrain(drain))
        }
        let certificateStore: CertificateStore?
        do {
            certificateStore = try self.certificateStore(for: plan, table: table)
        } catch {
            throw Refusal(400, .invalidCertificate, "\(error); nothing was changed")
        }
        return Built(
            plan: plan,
            table: table,
            replaced: replaced,
            touched: touched,
            shadowed: shadowed,
            certificates: certificateStore
        )
    }

    /// Makes a written change live.
    private func publish(_ built: Built, _ commit: StoreCommit, _ actor: ChangeActor) -> Committed {
        Self.applyDrains(built.plan.next.drains, to: built.touched)
        // A change of certificates alone leaves the routes as they are (and the health checker idle).
        if built.plan.changed?.isEmpty != true {
            routes.publish(built.table, replacing: built.replaced)
        }
        if let certificateStore = built.certificates, let certificates {
            certificates.publish(certificateStore)
        }
        state.withLockedValue { $0 = built.plan.next }
        applied.withLockedValue { $0 = commit.revision }
        for record in commit.changes {
            logger.notice("admin: \(record.action.rawValue) \(record.subject) by \(actor) (version \(record.revision))")
        }
        // The fleet's view of this node, at once rather than at the next tick.
        heartbeat()
        return Committed(commit: commit, table: built.table, shadowed: built.shadowed)
    }

    /// The certificate store to publish with a plan: the file's certificates read again for a reload, the
    /// uploaded ones (which a tenant added or removed changes too) made again from `table` always.
    func certificateStore(for plan: Plan, table: RouteTable) throws -> CertificateStore? {
        guard let running = certificates?.current else { return nil }
        let uploaded = ControlSnapshot.uploadedCertificates(plan.next, table: table)
        if plan.reloadsFileCertificates {
            return try CertificateStore.load(
                configuration: plan.next.file,
                ticketKeys: running.ticketKeys,
                uploaded: uploaded,
                cache: running.cache
            )
        }
        return running.replacingUploaded(uploaded)
    }
}

extension ControlPlane: ConfigurationPublisher {
    /// A reload: the new file with the store's tenants, recorded in the store as a change of its own.
    public func publish(
        file: Configuration,
        by actor: ChangeActor
    ) -> Result<(tenants: Int, version: Int64), ReloadFailure> {
        do throws(Refusal) {
            let committed = try run(
                decide: { current throws(Refusal) in
                    var next = current
                    next.file = file
                    let served = ControlSnapshot(next).configuration.tenants.count
                    return Plan(
                        next: next,
                        mutations: [.reload(file: configurationPath, tenants: served)],
                        changed: nil,
                        reloadsFileCertificates: true
                    )
                },
                actor: actor,
                dryRun: false
            )
            for (name, shadowing) in committed.shadowed ?? [:] {
                logger.warning("\(Self.describe(shadowing, of: name))")
            }
            return .success((committed.table.tenants.count, committed.commit.revision))
        } catch {
            let kind: ReloadFailure.Kind
            switch error.response.status {
            case 503: kind = .unavailable
            case 409: kind = .conflict
            default: kind = .certificate
            }
            let message = error.response.errorMessage ?? "refused"
            return .failure(ReloadFailure(kind: kind, description: message))
        }
    }
}

extension ControlPlane: AdminResources {
    public func synchronizeStore() {
        _ = synchronize()
    }

    public var storeStatus: StatusReport.Store {
        StatusReport.Store(path: statePath, problem: storeProblem ?? storeTrouble.withLockedValue { $0 })
    }

    public func recordDrain(
        _ drained: Bool,
        tenant: String,
        backend: Backend,
        by actor: ChangeActor
    ) -> Result<Int64, AdminAPI.Refusal> {
        let drain = StoredDrain(tenant: tenant, backend: backend.description)
        guard let store else { return .failure(storeUnusable) }
        do {
            let commit = try store.write(actor: "\(actor)") { transaction in
                try catchUp(within: transaction, conditional: false)
                if drained {
                    try transaction.addDrain(tenant: drain.tenant, backend: drain.backend)
                } else {
                    try transaction.removeDrain(tenant: drain.tenant, backend: drain.backend)
                }
            }
            state.withLockedValue { state in
                if drained {
                    state.drains.insert(drain)
                } else {
                    state.drains.remove(drain)
                }
            }
            if commit.revision != commit.previousRevision {
                applied.withLockedValue { $0 = commit.revision }
                heartbeat()
            }
            return .success(commit.revision)
        } catch {
            return .failure(storeFailed(error, by: actor))
        }
    }
}
