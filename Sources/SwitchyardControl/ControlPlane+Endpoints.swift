import Foundation
import NIOCore
import Switchyard
import SwitchyardStore
import SwitchyardTLS

/// The admin API's endpoints of the control plane (see README, "Admin API"). Bodies are JSON (a tenant may also
/// be YAML); answers are JSON with the configuration version after the change.
///
/// - `GET /v1/tenants`, `POST /v1/tenants` (a tenant document: add), `GET|PUT|DELETE /v1/tenants/NAME`
/// - `POST /v1/tenants/NAME/domains` `{"domain": D}`, `DELETE /v1/tenants/NAME/domains/D`
/// - `POST /v1/tenants/NAME/backends` `{"backend": "HOST:PORT", "weight": N}`,
///   `DELETE /v1/tenants/NAME/backends/HOST:PORT`, `PUT /v1/tenants/NAME/backends/HOST:PORT/weight` `{"weight": N}`
/// - `GET|PUT|DELETE /v1/tenants/NAME/certificate` (`{"certificate": PEM, "key": PEM}`), `GET /v1/certificates`
/// - `POST /v1/apply[?dry_run=true]` (a list of tenants), `GET /v1/changes[?since=V&limit=N]`
extension ControlPlane {
    /// Answers the endpoints above; `nil` for a path none of them has (``AdminAPI`` then answers 404, or serves
    /// it itself: status, reading, draining and undraining a backend, reload).
    public func respond(to request: AdminAPI.Request, path: [String], actor: ChangeActor) -> AdminAPI.Response? {
        let method = request.method
        switch (path.first, path.count) {
        case ("tenants", 1):
            switch method {
            case "GET": return listTenants()
            case "POST": return addTenant(request, actor: actor)
            default: return Self.notAllowed(method, "/v1/tenants", allow: "GET, POST")
            }
        case ("tenants", 2):
            let name = path[1]
            switch method {
            case "GET": return showTenant(name)
            case "PUT": return putTenant(request, name: name, actor: actor)
            case "DELETE": return removeTenant(request, name: name, actor: actor)
            default: return Self.notAllowed(method, "/v1/tenants/\(name)", allow: "GET, PUT, DELETE")
            }
        case ("tenants", 3) where path[2] == "domains":
            guard method == "POST" else { return Self.notAllowed(method, "…/domains", allow: "POST") }
            return addDomain(request, tenant: path[1], actor: actor)
        case ("tenants", 4) where path[2] == "domains":
            guard method == "DELETE" else { return Self.notAllowed(method, "…/domains/DOMAIN", allow: "DELETE") }
            return removeDomain(request, tenant: path[1], domain: path[3], actor: actor)
        case ("tenants", 3) where path[2] == "backends":
            guard method == "POST" else { return Self.notAllowed(method, "…/backends", allow: "POST") }
            return addBackend(request, tenant: path[1], actor: actor)
        case ("tenants", 4) where path[2] == "backends" && method == "DELETE":
            return removeBackend(request, tenant: path[1], backend: path[3], actor: actor)
        case ("tenants", 5) where path[2] == "backends" && path[4] == "weight":
            guard method == "PUT" else { return Self.notAllowed(method, "…/weight", allow: "PUT") }
            return setWeight(request, tenant: path[1], backend: path[3], actor: actor)
        case ("tenants", 3) where path[2] == "certificate":
            switch method {
            case "GET": return showCertificate(path[1])
            case "PUT": return putCertificate(request, tenant: path[1], actor: actor)
            case "DELETE": return removeCertificate(request, tenant: path[1], actor: actor)
            default: return Self.notAllowed(method, "…/certificate", allow: "GET, PUT, DELETE")
            }
        case ("certificates", 1):
            guard method == "GET" else { return Self.notAllowed(method, "/v1/certificates", allow: "GET") }
            return listCertificates()
        case ("apply", 1):
            guard method == "POST" else { return Self.notAllowed(method, "/v1/apply", allow: "POST") }
            return apply(request, actor: actor)
        case ("changes", 1):
            guard method == "GET" else { return Self.notAllowed(method, "/v1/changes", allow: "GET") }
            return changes(request)
        case ("fleet", 1):
            guard method == "GET" else { return Self.notAllowed(method, "/v1/fleet", allow: "GET") }
            return fleet()
        default:
            return nil
        }
    }

    // MARK: Reading

    private func listTenants() -> AdminAPI.Response {
        let state = self.state.withLockedValue { $0 }
        let table = routes.current
        // What the file shadows, tenant by tenant: the merged snapshot of every tenant is not needed for it.
        let shadowed = state.tenants.compactMapValues { state.served($0.configuration).shadowing }
        var items: [[String: Any]] = []
        for tenant in table.tenants {
            let managed = state.tenants[tenant.name] != nil && !state.fileIndex.names.contains(tenant.name)
            var item: [String: Any] = [
                "name": tenant.name,
                "source": managed ? "api" : "file",
                "domains": tenant.domains,
                "backends": tenant.backends.count,
                "backends_up": tenant.backends.filter { $0.status.isAvailable(now: .now()) }.count,
            ]
            if managed { item["certificate"] = state.certificates[tenant.name] != nil }
            if managed, let shadowing = shadowed[tenant.name] { item["shadowed_domains"] = shadowing.domains }
            items.append(item)
        }
        for (name, shadowing) in shadowed.sorted(by: { $0.key < $1.key }) where shadowing.byName {
            items.append(["name": name, "source": "api", "shadowed": true, "shadowed_domains": shadowing.domains])
        }
        return Self.answer(200, ["tenants": items])
    }

    private func showTenant(_ name: String) -> AdminAPI.Response {
        guard let item = tenantObject(name) else { return Self.noTenant(name) }
        return Self.answer(200, item)
    }

    /// What `GET /v1/tenants/NAME` answers, `nil` when there is no such tenant.
    private func tenantObject(_ name: String) -> [String: Any]? {
        let state = self.state.withLockedValue { $0 }
        let served = routes.current.tenant(named: name)
        let fileTenant = state.fileIndex.names.contains(name)
        guard served != nil || state.tenants[name] != nil else { return nil }
        var item: [String: Any] = ["name": name, "source": fileTenant ? "file" : "api"]
        if let served {
            item["domains"] = served.domains
            item["backends"] = served.backends.map { Self.object(StatusReport.Backend($0)) }
            item["tunnels"] = served.tunnels.current
        }
        if !fileTenant, let managed = state.tenants[name] {
            item["document"] = managed.object
            if let shadowing = state.served(managed.configuration).shadowing {
                item["shadowed"] = shadowing.byName
                item["shadowed_domains"] = shadowing.domains
            }
            if let certificate = state.certificates[name] {
                item["certificate"] = Self.summary(certificate)
            }
        } else if fileTenant {
            item["file"] = configurationPath
        }
        if fileTenant, let hidden = state.tenants[name] {
            // An API tenant of the same name, not served while the file has one.
            item["shadowed_api_tenant"] = hidden.object
        }
        return item
    }

    private func showCertificate(_ tenant: String) -> AdminAPI.Response {
        let state = self.state.withLockedValue { $0 }
        guard let certificate = state.certificates[tenant] else {
            return AdminAPI.error(404, .notFound, "tenant '\(tenant)' has no uploaded certificate")
        }
        return Self.answer(200, Self.summary(certificate))
    }

    private func listCertificates() -> AdminAPI.Response {
        let state = self.state.withLockedValue { $0 }
        let items = state.certificates.keys.sorted().compactMap { state.certificates[$0].map(Self.summary) }
        return Self.answer(200, ["certificates": items])
    }

    private func fleet() -> AdminAPI.Response {
        do {
            let (revision, members) = try fleetMembers()
            return AdminAPI.json(200, FleetAnswer(version: revision, nodes: members))
        } catch {
            return storeFailed(error, by: .unknownUser).response
        }
    }

    private struct FleetAnswer: Encodable {
        var version: Int64
        var nodes: [FleetMember]
    }

    private func changes(_ request: AdminAPI.Request) -> AdminAPI.Response {
        guard let store else { return storeUnusable.response }
        let query = Self.query(request.target)
        var since: Int64 = 0
        var limit = 1000
        if let text = query["since"] {
            guard let value = Int64(text), value >= 0 else {
                return AdminAPI.error(400, .invalidRequest, "since must be a version (0 or more); found '\(text)'")
            }
            since = value
        }
        if let text = query["limit"] {
            guard let value = Int(text), (1...100_000).contains(value) else {
                return AdminAPI.error(400, .invalidRequest, "limit must be from 1 to 100000; found '\(text)'")
            }
            limit = value
        }
        do {
            let records = try store.changes(since: since, limit: limit)
            let items: [[String: Any]] = records.map { record in
                var item: [String: Any] = [
                    "version": record.revision,
                    // Every write advances the version by exactly one: this is what it was before.
                    "previous_version": record.revision - 1,
                    "sequence": record.sequence,
                    "time": record.time.formatted(.iso8601),
                    "actor": record.actor,
                    "action": record.action.rawValue,
                    "subject": record.subject,
                ]
                item["before"] = record.before.flatMap(Self.parsedJSON)
                item["after"] = record.after.flatMap(Self.parsedJSON)
                return item
            }
            return Self.answer(200, ["changes": items])
        } catch {
            return AdminAPI.error(503, .unavailable, "the state store cannot be read: \(error)")
        }
    }

    // MARK: Tenants

    private func addTenant(_ request: AdminAPI.Request, actor: ChangeActor) -> AdminAPI.Response {
        let tenant: ManagedTenant
        // `?name=NAME` names the tenant of a body that may leave its name out (`tenants add NAME --file F`).
        switch Self.tenant(from: request, source: "request body", name: Self.query(request.target)["name"]) {
        case .success(let parsed): tenant = parsed
        case .failure(let refusal): return refusal.response
        }
        return change(request, actor: actor) { state throws(Refusal) in
            try Self.checkWritable(tenant.name, in: state, file: configurationPath, mayBeNew: true)
            guard state.tenants[tenant.name] == nil else {
                throw Refusal(
                    409,
                    .tenantExists,
                    "tenant '\(tenant.name)' exists already; replace it with PUT /v1/tenants/\(tenant.name)"
                )
            }
            try self.checkDomains(of: tenant.configuration)
            var next = state
            next.tenants[tenant.name] = tenant
            return Plan(next: next, mutations: [.putTenant(tenant)], changed: [tenant.name])
        } answer: { committed in
            self.tenantAnswer(201, tenant.name, committed)
        }
    }

    private func putTenant(_ request: AdminAPI.Request, name: String, actor: ChangeActor) -> AdminAPI.Response {
        let tenant: ManagedTenant
        switch Self.tenant(from: request, source: "request body", name: name) {
        case .success(let parsed): tenant = parsed
        case .failure(let refusal): return refusal.response
        }
        var created = false
        return change(request, actor: actor) { state throws(Refusal) in
            try Self.checkWritable(name, in: state, file: configurationPath, mayBeNew: true)
            try self.checkDomains(of: tenant.configuration)
            created = state.tenants[name] == nil
            var next = state
            next.tenants[name] = tenant
            return Plan(next: next, mutations: [.putTenant(tenant)], changed: [tenant.name])
        } answer: { committed in
            self.tenantAnswer(created ? 201 : 200, name, committed)
        }
    }

    private func removeTenant(_ request: AdminAPI.Request, name: String, actor: ChangeActor) -> AdminAPI.Response {
        change(request, actor: actor) { state throws(Refusal) in
            try Self.checkWritable(name, in: state, file: configurationPath)
            var next = state
            next.tenants[name] = nil
            next.certificates[name] = nil
            return Plan(
                next: next,
                mutations: [.removeTenant(name), .removeCertificate(tenant: name)],
                changed: [name]
            )
        } answer: { committed in
            Self.answer(200, ["removed": name, "version": committed.commit.revision])
        }
    }

    // MARK: Domains and backends

    private func addDomain(_ request: AdminAPI.Request, tenant name: String, actor: ChangeActor) -> AdminAPI.Response {
        let domain: String
        switch Self.field("domain", of: request, expected: "a domain name, e.g. {\"domain\": \"www.shop.test\"}") {
        case .success(let value): domain = value
        case .failure(let refusal): return refusal.response
        }
        return edit(request, tenant: name, actor: actor) { tenant throws(Refusal) in
            try Self.edited(tenant) { object in
                object["domains"] = ((object["domains"] as? [Any]) ?? []) + [domain]
            }
        }
    }

    private func removeDomain(
        _ request: AdminAPI.Request,
        tenant name: String,
        domain: String,
        actor: ChangeActor
    ) -> AdminAPI.Response {
        edit(request, tenant: name, actor: actor) { tenant throws(Refusal) in
            var wanted = domain.lowercased()
            if wanted.hasSuffix(".") { wanted.removeLast() }
            guard let index = tenant.configuration.domains.firstIndex(of: wanted) else {
                throw Refusal(
                    404,
                    .notFound,
                    "tenant '\(name)' has no domain '\(domain)'; its domains: "
                        + tenant.configuration.domains.joined(separator: ", ")
                )
            }
            guard tenant.configuration.domains.count > 1 else {
                throw Refusal(
                    409,
                    .conflict,
                    "'\(domain)' is the last domain of tenant '\(name)'; add another first, or remove the tenant"
                )
            }
            return try Self.edited(tenant) { object in
                var domains = (object["domains"] as? [Any]) ?? []
                if index < domains.count { domains.remove(at: index) }
                object["domains"] = domains
            }
        }
    }

    private func addBackend(_ request: AdminAPI.Request, tenant name: String, actor: ChangeActor) -> AdminAPI.Response {
        let body: [String: Any]
        switch Self.jsonObject(request) {
        case .success(let object): body = object
        case .failure(let refusal): return refusal.response
        }
        guard let backend = body["backend"] as? String, !backend.isEmpty, !backend.contains(" ") else {
            return AdminAPI.error(
                400,
                .invalidRequest,
                "the body must be {\"backend\": \"HOST:PORT\"}, optionally with \"weight\": N (1 to 1000)"
            )
        }
        var entry = backend
        if let weight = body["weight"] {
            guard let number = weight as? Int, (1...1000).contains(number) else {
                return AdminAPI.error(400, .invalidRequest, "weight must be a whole number from 1 to 1000")
            }
            entry += " weight=\(number)"
        }
        return edit(request, tenant: name, actor: actor) { tenant throws(Refusal) in
            guard tenant.backendIndex(backend) == nil else {
                throw Refusal(409, .conflict, "tenant '\(name)' has backend \(backend) already")
            }
            return try Self.edited(tenant) { object in
                object["backends"] = ((object["backends"] as? [Any]) ?? []) + [entry]
            }
        }
    }

    private func removeBackend(
        _ request: AdminAPI.Request,
        tenant name: String,
        backend: String,
        actor: ChangeActor
    ) -> AdminAPI.Response {
        edit(request, tenant: name, actor: actor) { tenant throws(Refusal) in
            let index = try Self.backendIndex(backend, of: tenant)
            guard tenant.backendEntries.count > 1 else {
                throw Refusal(
                    409,
                    .conflict,
                    "\(backend) is the last backend of tenant '\(name)'; add another first, or remove the tenant"
                )
            }
            return try Self.edited(tenant) { object in
                var backends = (object["backends"] as? [Any]) ?? []
                if index < backends.count { backends.remove(at: index) }
                object["backends"] = backends
            }
        }
    }

    private func setWeight(
        _ request: AdminAPI.Request,
        tenant name: String,
        backend: String,
        actor: ChangeActor
    ) -> AdminAPI.Response {
        let body: [String: Any]
        switch Self.jsonObject(request) {
        case .success(let object): body = object
        case .failure(let refusal): return refusal.response
        }
        guard let weight = body["weight"] as? Int, (1...1000).contains(weight) else {
            return AdminAPI.error(400, .invalidRequest, "the body must be {\"weight\": N}, N from 1 to 1000")
        }
        return edit(request, tenant: name, actor: actor) { tenant throws(Refusal) in
            let index = try Self.backendIndex(backend, of: tenant)
            let words = tenant.backendEntries[index].split(separator: " ").map(String.init)
            let entry = ([words[0], "weight=\(weight)"] + words.dropFirst().filter { !$0.hasPrefix("weight=") })
                .joined(separator: " ")
            return try Self.edited(tenant) { object in
                var backends = (object["backends"] as? [Any]) ?? []
                if index < backends.count { backends[index] = entry }
                object["backends"] = backends
            }
        }
    }

    /// A change of one managed tenant's document: `transform` edits it (or refuses); drains of backends it no
    /// longer lists end with it.
    private func edit(
        _ request: AdminAPI.Request,
        tenant name: String,
        actor: ChangeActor,
        _ transform: (ManagedTenant) throws(Refusal) -> ManagedTenant
    ) -> AdminAPI.Response {
        change(request, actor: actor) { state throws(Refusal) in
            try Self.checkWritable(name, in: state, file: configurationPath)
            guard let tenant = state.tenants[name] else { throw Self.noTenantRefusal(name) }
            let edited = try transform(tenant)
            try self.checkDomains(of: edited.configuration)
            var next = state
            next.tenants[name] = edited
            return Plan(next: next, mutations: [.putTenant(edited)], changed: [name])
        } answer: { committed in
            self.tenantAnswer(200, name, committed)
        }
    }

    // MARK: Certificates

    private func putCertificate(
        _ request: AdminAPI.Request,
        tenant name: String,
        actor: ChangeActor
    )
        -> AdminAPI.Response
    {
        let body: [String: Any]
        switch Self.jsonObject(request) {
        case .success(let object): body = object
        case .failure(let refusal): return refusal.response
        }
        guard let chain = body["certificate"] as? String, let key = body["key"] as? String else {
            return AdminAPI.error(
                400,
                .invalidRequest,
                "the body must be {\"certificate\": PEM chain, leaf first, \"key\": PEM private key}"
            )
        }
        // Parsed and checked before the change, off the workers: only the admin thread waits for OpenSSL.
        let details: CertificateDetails
        do {
            details = try CertificateDetails(chainPEM: chain, keyPEM: key)
        } catch {
            return AdminAPI.error(400, .invalidCertificate, "\(error); nothing was changed")
        }
        var warnings: [String] = []
        return change(request, actor: actor) { state throws(Refusal) in
            try Self.checkWritable(name, in: state, file: configurationPath)
            guard let tenant = state.tenants[name] else { throw Self.noTenantRefusal(name) }
            let domains = tenant.configuration.domains
            let uncovered = domains.filter { !details.covers(host: $0) }
            guard uncovered.count < domains.count else {
                throw Refusal(
                    400,
                    .invalidCertificate,
                    "the certificate covers none of tenant '\(name)''s domains (\(domains.joined(separator: ", "))); "
                        + "it names \(details.names.isEmpty ? "no DNS names" : details.names.joined(separator: ", "))"
                )
            }
            warnings = uncovered.map {
                "the certificate does not cover \($0): that domain keeps the default certificate"
            }
            if certificates == nil {
                warnings.append("this balancer has no https listener: the certificate is served once one is configured")
            }
            let stored = StoredCertificate(
                tenant: name,
                chainPEM: chain,
                keyPEM: key,
                fingerprint: details.fingerprint,
                names: details.names,
                notAfter: details.notAfter
            )
            var next = state
            next.certificates[name] = stored
            return Plan(next: next, mutations: [.putCertificate(stored)], changed: [])
        } answer: { committed in
            Self.answer(
                200,
                [
                    "tenant": name, "fingerprint": details.fingerprint, "names": details.names,
                    "not_after": details.notAfter.formatted(.iso8601), "subject": details.subject,
                    "warnings": warnings, "version": committed.commit.revision,
                ]
            )
        }
    }

    private func removeCertificate(
        _ request: AdminAPI.Request,
        tenant name: String,
        actor: ChangeActor
    )
        -> AdminAPI.Response
    {
        change(request, actor: actor) { state throws(Refusal) in
            try Self.checkWritable(name, in: state, file: configurationPath)
            guard state.certificates[name] != nil else {
                throw Refusal(404, .notFound, "tenant '\(name)' has no uploaded certificate")
            }
            var next = state
            next.certificates[name] = nil
            return Plan(next: next, mutations: [.removeCertificate(tenant: name)], changed: [])
        } answer: { committed in
            Self.answer(200, ["removed": "certificate of \(name)", "version": committed.commit.revision])
        }
    }

    // MARK: Apply

    private func apply(_ request: AdminAPI.Request, actor: ChangeActor) -> AdminAPI.Response {
        let query = Self.query(request.target)
        let dryRun = ["1", "true", "yes"].contains(query["dry_run"]?.lowercased() ?? "")
        let tenants: [ManagedTenant]
        do {
            tenants = try ManagedTenant.list(text: String(buffer: request.body), source: "request body")
        } catch {
            return AdminAPI.error(400, .invalidTenant, "\(error); nothing was changed")
        }
        return change(request, actor: actor, dryRun: dryRun) { state throws(Refusal) in
            var next = state
            next.tenants = [:]
            for tenant in tenants {
                try Self.checkWritable(tenant.name, in: state, file: configurationPath, mayBeNew: true)
                next.tenants[tenant.name] = tenant
            }
            // Domains: none a file tenant serves, none twice among the tenants applied.
            var owners: [String: String] = [:]
            for tenant in state.file.tenants {
                for domain in tenant.domains { owners[domain] = tenant.name }
            }
            for tenant in tenants {
                for domain in tenant.configuration.domains {
                    if let owner = owners[domain] {
                        throw Refusal(
                            409,
                            .domainTaken,
                            "domain '\(domain)' of tenant '\(tenant.name)' belongs to tenant '\(owner)'; nothing was "
                                + "changed"
                        )
                    }
                    owners[domain] = tenant.name
                }
            }
            var mutations: [Mutation] = [.replaceTenants(next.tenants.mapValues(\.document))]
            for name in state.tenants.keys.sorted() where next.tenants[name] == nil {
                next.certificates[name] = nil
                mutations.append(.removeCertificate(tenant: name))
            }
            return Plan(next: next, mutations: mutations, changed: nil)
        } answer: { committed in
            let difference = committed.commit.tenantDifference
            return Self.answer(
                200,
                [
                    "added": difference.added, "changed": difference.replaced, "removed": difference.removed,
                    "dry_run": dryRun,
                    "version": dryRun ? committed.commit.previousRevision : committed.commit.revision,
                    "tenants": tenants.count,
                ]
            )
        }
    }

    // MARK: Checks

    /// Refuses a write on a tenant of the file, and on a tenant that does not exist unless `mayBeNew`.
    static func checkWritable(
        _ name: String,
        in state: ControlState,
        file: String,
        mayBeNew: Bool = false
    ) throws(Refusal) {
        if state.fileIndex.names.contains(name) {
            throw Refusal(
                409,
                .fileTenant,
                "tenant '\(name)' is declared in the configuration file \(file), which the API does not change: "
                    + "edit it there and reload (`switchyard reload`), or remove it there to manage it here"
            )
        }
        if !mayBeNew, state.tenants[name] == nil {
            throw noTenantRefusal(name)
        }
    }

    /// Refuses a tenant whose domains another tenant (of the file or the API) serves: one lookup per domain in
    /// the routing table, whatever the number of tenants.
    func checkDomains(of tenant: TenantConfiguration) throws(Refusal) {
        let table = routes.current
        for domain in tenant.domains {
            if let owner = table.tenant(forDomain: domain), owner.name != tenant.name {
                throw Refusal(
                    409,
                    .domainTaken,
                    "domain '\(domain)' belongs to tenant '\(owner.name)'; a domain may belong to only one tenant"
                )
            }
        }
    }

    private static func backendIndex(_ backend: String, of tenant: ManagedTenant) throws(Refusal) -> Int {
        guard let index = tenant.backendIndex(backend) else {
            throw Refusal(
                404,
                .notFound,
                "tenant '\(tenant.name)' has no backend \(backend); its backends: "
                    + tenant.backendEntries.map(ManagedTenant.backendName).joined(separator: ", ")
            )
        }
        return index
    }

    private static func edited(
        _ tenant: ManagedTenant,
        _ change: (inout [String: Any]) -> Void
    ) throws(Refusal) -> ManagedTenant {
        do {
            return try tenant.editing(source: "tenant '\(tenant.name)'", change)
        } catch {
            throw Refusal(400, .invalidTenant, "\(error); nothing was changed")
        }
    }

    static func noTenantRefusal(_ name: String) -> Refusal {
        Refusal(response: noTenant(name))
    }

    static func noTenant(_ name: String) -> AdminAPI.Response {
        AdminAPI.error(404, .notFound, "no tenant '\(name)'; `switchyard tenants list` lists the tenants")
    }

    static func notAllowed(_ method: String, _ path: String, allow: String) -> AdminAPI.Response {
        AdminAPI.error(405, .methodNotAllowed, "\(method) \(path) is not allowed; use \(allow)", allow: allow)
    }

    // MARK: Bodies and answers

    /// A tenant sent in a body; its `name`, when the path names the tenant, must be that name or absent.
    static func tenant(
        from request: AdminAPI.Request,
        source: String,
        name: String? = nil
    ) -> Result<ManagedTenant, AdminAPI.Refusal> {
        do {
            var object = try ManagedTenant.object(text: String(buffer: request.body), source: source)
            if let name {
                if let given = object["name"], given as? String != name {
                    return .failure(
                        AdminAPI.Refusal(
                            400,
                            .invalidTenant,
                            "the body names tenant '\(given)', the path '\(name)'; rename by adding the new name "
                                + "and removing the old"
                        )
                    )
                }
                object["name"] = name
            }
            return .success(try ManagedTenant(object: object, source: source))
        } catch {
            return .failure(
                AdminAPI.Refusal(400, .invalidTenant, "\(error); nothing was changed")
            )
        }
    }

    static func jsonObject(_ request: AdminAPI.Request) -> Result<[String: Any], AdminAPI.Refusal> {
        guard let value = try? JSONSerialization.jsonObject(with: Data(request.body.readableBytesView)),
            let object = value as? [String: Any]
        else {
            return .failure(
                AdminAPI.Refusal(400, .invalidRequest, "the body must be a JSON object")
            )
        }
        return .success(object)
    }

    static func field(
        _ key: String,
        of request: AdminAPI.Request,
        expected: String
    ) -> Result<String, AdminAPI.Refusal> {
        switch jsonObject(request) {
        case .failure(let refusal):
            return .failure(refusal)
        case .success(let object):
            guard let value = object[key] as? String, !value.isEmpty else {
                return .failure(
                    AdminAPI.Refusal(400, .invalidRequest, "expected \(expected)")
                )
            }
            return .success(value)
        }
    }

    /// The query of a target, by name (the last value of a name given twice).
    static func query(_ target: String) -> [String: String] {
        guard let mark = target.firstIndex(of: "?") else { return [:] }
        var items: [String: String] = [:]
        for pair in target[target.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map {
                String($0).removingPercentEncoding ?? String($0)
            }
            guard let name = parts.first else { continue }
            items[name] = parts.count > 1 ? parts[1] : ""
        }
        return items
    }

    /// The tenant as `GET` shows it after a change, with the version the change committed.
    private func tenantAnswer(_ status: Int, _ name: String, _ committed: Committed) -> AdminAPI.Response {
        guard var object = tenantObject(name) else { return Self.noTenant(name) }
        object["version"] = committed.commit.revision
        return Self.answer(status, object)
    }

    static func summary(_ certificate: StoredCertificate) -> [String: Any] {
        var item: [String: Any] = [
            "tenant": certificate.tenant,
            "fingerprint": certificate.fingerprint,
            "names": certificate.names,
            "not_after": certificate.notAfter.formatted(.iso8601),
        ]
        if let details = try? CertificateDetails(chainPEM: certificate.chainPEM) {
            item["subject"] = details.subject
        }
        return item
    }

    static func object(_ value: some Encodable) -> Any {
        guard let data = try? JSONEncoder().encode(value) else { return NSNull() }
        return (try? JSONSerialization.jsonObject(with: data)) ?? NSNull()
    }

    static func parsedJSON(_ text: String) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
    }

    static func answer(_ status: Int, _ object: [String: Any]) -> AdminAPI.Response {
        guard
            let body = try? JSONSerialization.data(
                withJSONObject: object,
                options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            )
        else {
            return AdminAPI.error(500, .internalError, "the answer could not be encoded")
        }
        return AdminAPI.Response(status: status, body: body)
    }
}
