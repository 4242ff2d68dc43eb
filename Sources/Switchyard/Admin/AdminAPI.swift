import Foundation
import Logging
import NIOCore

/// The admin API's endpoints, version 1: a request in, a status, headers and a JSON body out. No sockets here, so
/// every endpoint is tested by calling ``respond(to:access:)``; ``AdminServer`` carries it over the unix socket and
/// the optional loopback TCP listener.
///
/// - `GET /v1/status`: the ``StatusReport``.
/// - `GET /v1/tenants/NAME/backends/HOST:PORT`: one backend's status.
/// - `POST /v1/tenants/NAME/backends/HOST:PORT/drain`: the backend gets no new requests or tunnels; those in
///   progress finish. `POST …/undrain` ends that. Backends are named by the address `status` shows.
/// - `POST /v1/reload`: re-reads the configuration file as SIGHUP does.
/// - `GET /metrics`: the Prometheus metrics (``MetricsPage``), when the API was given them.
/// - `GET /v1/traffic`: every tenant's counters (``TrafficReport``), what `switchyard top` polls.
///
/// Every answer but a 401 carries the configuration version as `ETag: "N"` (``ConfigurationVersion``); answers to
/// writes carry it in their JSON too (`"version": N`). A write with `If-Match` runs only at that version, else 412.
/// Errors are `{"error": {"code": "…", "message": "…"}}`, the code one of ``ErrorCode``'s stable names and the
/// message saying what to do. Over TCP (``Access/bearer(_:)``) every request needs `Authorization: Bearer TOKEN`.
///
/// Everything else under `/v1/` (tenants, domains, backends, certificates, apply, changes) is answered by the
/// ``AdminResources`` given, the control plane with its state store; without one, those paths are 404. A drain lasts
/// across reloads (the backend keeps its state while it stays in the configuration), and across restarts when the
/// resources record it (``AdminResources/recordDrain(_:tenant:backend:by:)``).
public struct AdminAPI: Sendable {
    /// What of a request the endpoints look at.
    public struct Request: Sendable {
        /// `GET`, `POST`…
        public var method: String
        /// The request target; a query is ignored.
        public var target: String
        /// The values of the `If-Match` fields, in order.
        public var ifMatch: [String]
        /// The values of the `Authorization` fields.
        public var authorization: [String]
        /// The body, at most ``AdminAPI/maximumBodyBytes``.
        public var body: ByteBuffer

        public init(
            method: String,
            target: String,
            ifMatch: [String] = [],
            authorization: [String] = [],
            body: ByteBuffer = ByteBuffer()
        ) {
            self.method = method
            self.target = target
            self.ifMatch = ifMatch
            self.authorization = authorization
            self.body = body
        }
    }

    /// Where a request came from, which decides who it is and whether it needs a token.
    public enum Access: Sendable {
        /// The unix socket, whose mode (0600) is the access control: the client is who the kernel says.
        case local(ChangeActor)
        /// The TCP listener: the client must present one of these tokens, and is known by its name.
        case bearer(AdminTokens)
    }

    /// An answer: the HTTP status, the fields that go with it and a JSON body.
    public struct Response: Sendable, Equatable {
        /// The HTTP status code.
        public var status: Int
        /// JSON: the resource, or `{"error": {"code": …, "message": …}}`.
        public var body: Data
        /// The methods the resource allows, for a 405's `Allow` field (RFC 9110 §15.5.6).
        public var allow: String? = nil
        /// The configuration version the answer is of, for its `ETag`; `nil` on a 401, which tells a stranger
        /// nothing.
        public var version: Int64? = nil
        /// A 401's `WWW-Authenticate` challenge.
        public var authenticate: String? = nil
        /// The body's media type: JSON but for the metrics page and the status page.
        public var contentType = "application/json"
        /// When set, this answer is not the final one: the final one comes from the continuation, asked until it
        /// gives one (a change waiting for the fleet), and this one is not sent.
        public var continuation: Continuation? = nil

        /// An answer with `body` (JSON) and no extra fields; ``AdminAPI/respond(to:access:)`` adds the version.
        public init(status: Int, body: Data) {
            self.status = status
            self.body = body
        }

        /// The fields of the answer besides `Content-Type` and `Content-Length`.
        public var headers: [(name: String, value: String)] {
            var fields: [(name: String, value: String)] = []
            if let version { fields.append(("ETag", "\"\(version)\"")) }
            if let allow { fields.append(("Allow", allow)) }
            if let authenticate { fields.append(("WWW-Authenticate", authenticate)) }
            return fields
        }

        /// The stable code of an error answer, `nil` for a success.
        public var errorCode: String? {
            guard let answer = try? JSONDecoder().decode(ErrorBody.self, from: body) else { return nil }
            return answer.error.code
        }

        /// The message of an error answer, `nil` for a success.
        public var errorMessage: String? {
            (try? JSONDecoder().decode(ErrorBody.self, from: body))?.error.message
        }
    }

    /// The `code` of an error answer: stable names scripts may test (the message may change).
    public enum ErrorCode: String, Sendable, CaseIterable {
        /// 400: the request makes no sense (an `If-Match` that is no version).
        case invalidRequest = "invalid_request"
        /// 401: over TCP, no `Authorization: Bearer TOKEN`, or a token the file does not list.
        case unauthorized
        /// 404: no such endpoint, tenant or backend, or a path of the old unversioned API.
        case notFound = "not_found"
        /// 405: the endpoint exists, the method does not; `Allow` lists those that do.
        case methodNotAllowed = "method_not_allowed"
        /// 409: `undrain` of a backend the configuration file marks `drain`.
        case drainedInFile = "drained_in_file"
        /// 400: `reload` found a file that does not load (the running configuration is kept).
        case invalidConfiguration = "invalid_configuration"
        /// 400: `reload` found a certificate or key that does not load.
        case invalidCertificate = "invalid_certificate"
        /// 409: `reload` found a domain claimed by two tenants.
        case domainTaken = "domain_taken"
        /// 412: `If-Match` names another version than the current one; nothing was changed.
        case versionMismatch = "version_mismatch"
        /// 413: a request body over ``AdminAPI/maximumBodyBytes``.
        case bodyTooLarge = "body_too_large"
        /// 503: the endpoint cannot work in this process (`reload` without a configuration file), or the state store
        /// cannot be written (full disk, I/O error): nothing was changed.
        case unavailable
        /// 400: a tenant, domain or backend refused by the configuration's own rules (the message names the key).
        case invalidTenant = "invalid_tenant"
        /// 409: a tenant added that exists already.
        case tenantExists = "tenant_exists"
        /// 409: a write on a tenant of the configuration file, which the API cannot change (edit the file).
        case fileTenant = "file_tenant"
        /// 409: a backend added that the tenant has already, or the last domain or backend removed.
        case conflict
        /// 500: the answer could not be encoded.
        case internalError = "internal_error"
    }

    /// The largest request body taken; a larger one is answered 413 and its connection closed.
    public static let maximumBodyBytes = 1 << 20
    /// The largest body of `POST /v1/apply`, which carries every API-managed tenant at once (10,000 tenants are
    /// about 2 MiB of JSON).
    public static let maximumApplyBodyBytes = 64 << 20

    /// Whether a request is `POST /v1/apply`, whose body may be up to ``maximumApplyBodyBytes``.
    public static func isApply(method: String, target: String) -> Bool {
        method == "POST" && (target == "/v1/apply" || target.hasPrefix("/v1/apply?"))
    }

    private let routes: RouteSource
    private let connections: @Sendable () -> Int
    private let logger: Logger
    /// The version every answer carries; drains and undrains advance it.
    public let version: ConfigurationVersion
    private let reloader: ConfigurationReloader?
    private let resources: (any AdminResources)?
    private let metrics: MetricsPage?

    /// - Parameters:
    ///   - version: the configuration version; the same object as `reloader`'s, so that reloads advance it too.
    ///   - reloader: what `POST /v1/reload` runs; without one, that endpoint answers 503.
    ///   - resources: what answers the endpoints of tenants, certificates, apply and changes, and records drains.
    ///   - metrics: what `GET /metrics` answers; without it, that path is 404.
    ///   - connections: the client connections open now, for the status report.
    public init(
        routes: RouteSource,
        logger: Logger,
        version: ConfigurationVersion = ConfigurationVersion(),
        reloader: ConfigurationReloader? = nil,
        resources: (any AdminResources)? = nil,
        metrics: MetricsPage? = nil,
        connections: @escaping @Sendable () -> Int
    ) {
        self.metrics = metrics
        self.resources = resources
        self.routes = routes
        self.logger = logger
        self.version = version
        self.reloader = reloader
        self.connections = connections
    }

    /// Answers one request that came through `access`.
    public func respond(to request: Request, access: Access) -> Response {
        let actor: ChangeActor
        switch access {
        case .local(let local):
            actor = local
        case .bearer(let tokens):
            guard let name = tokens.name(authorizing: request.authorization) else {
                var response = Self.error(
                    401,
                    .unauthorized,
                    request.authorization.isEmpty
                        ? "this listener needs Authorization: Bearer TOKEN, with a token of admin.token_file"
                        : "the token is not one of admin.token_file (or the Authorization field is not Bearer TOKEN)"
                )
                response.version = nil
                response.authenticate = "Bearer realm=\"switchyard\""
                return response
            }
            actor = .token(name: name)
        }
        // Read before the answer is built: a change in between makes the answer newer than its ETag, so a write
        // conditional on that ETag fails (412) rather than passing over a change its writer never saw.
        let seen = version.current
        var response = route(request, actor: actor)
        if response.version == nil {
            response.version = seen
        }
        return response
    }

    /// The 413 for a request whose body is over ``maximumBodyBytes`` (``AdminConnectionHandler`` counts it).
    public func bodyTooLarge() -> Response {
        var response = Self.error(
            413,
            .bodyTooLarge,
            "the request body is over the most the admin API takes: 1 MiB, 64 MiB for POST /v1/apply"
        )
        response.version = version.current
        return response
    }

    // MARK: Routing

    private func route(_ request: Request, actor: ChangeActor) -> Response {
        let method = request.method
        let path = request.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.target
        let segments = path.split(separator: "/", omittingEmptySubsequences: true).map {
            String($0).removingPercentEncoding ?? String($0)
        }
        if segments == ["metrics"], let metrics {
            guard method == "GET" else {
                return Self.error(405, .methodNotAllowed, "\(method) /metrics is not allowed; use GET", allow: "GET")
            }
            return metrics.response(to: request.target)
        }
        guard segments.first == "v1" else {
            if let first = segments.first, ["status", "tenants", "reload"].contains(first) {
                return Self.error(
                    404,
                    .notFound,
                    "the admin API moved under /v1/: use \(method) /v1\(path) (`switchyard` of this version does)"
                )
            }
            return Self.error(404, .notFound, "no such endpoint: \(method) \(path); the admin API is under /v1/")
        }
        let rest = Array(segments.dropFirst())
        switch (rest.first, rest.count) {
        case ("status", 1):
            guard method == "GET" else {
                return Self.error(405, .methodNotAllowed, "\(method) /v1/status is not allowed; use GET", allow: "GET")
            }
            var report = StatusReport(routes: routes.current, connections: connections(), version: version.current)
            report.store = resources?.storeStatus
            return Self.json(200, report)
        case ("traffic", 1) where metrics != nil:
            guard method == "GET", let metrics else {
                return Self.error(405, .methodNotAllowed, "\(method) /v1/traffic is not allowed; use GET", allow: "GET")
            }
            return Self.json(200, metrics.trafficReport())
        case ("reload", 1):
            guard method == "POST" else {
                return Self.error(
                    405,
                    .methodNotAllowed,
                    "\(method) /v1/reload is not allowed; use POST",
                    allow: "POST"
                )
            }
            return reload(request, actor: actor)
        case ("tenants", _) where rest.count >= 4 && rest[2] == "backends":
            // Removing a backend and setting its weight are the resources' (they change the tenant); reading,
            // draining and undraining are answered here.
            if let resources, let response = resources.respond(to: request, path: rest, actor: actor) {
                return response
            }
            return backendRequest(request, tenant: rest[1], backend: rest[3], action: rest[4...], actor: actor)
        default:
            if let resources, let response = resources.respond(to: request, path: rest, actor: actor) {
                return response
            }
            return Self.error(404, .notFound, "no such endpoint: \(method) \(path)")
        }
    }

    // MARK: Backends

    /// `change`'s answer, completed once the fleet serves it when the request asks (`?wait=fleet`) and there are
    /// resources to ask.
    private func waitingForFleet(_ request: Request, _ change: () -> Response) -> Response {
        let response = change()
        return resources?.waitingForFleet(response, request: request) ?? response
    }

    /// What a write on a backend came to, inside the version's lock.
    private enum BackendChange {
        case backend(Backend)
        case refused(Response)
    }

    private func backendRequest(
        _ request: Request,
        tenant name: String,
        backend address: String,
        action: ArraySlice<String>,
        actor: ChangeActor
    ) -> Response {
        switch (request.method, action.first, action.count) {
        case ("GET", nil, 0):
            switch findBackend(tenant: name, address: address) {
            case .success(let (_, backend)): return Self.json(200, StatusReport.Backend(backend))
            case .failure(let refusal): return refusal.response
            }
        case ("POST", "drain", 1):
            return waitingForFleet(request) {
                write(request, actor: actor, tenant: name, backend: address) { tenant, backend in
                    guard !backend.status.isDrainedByOperator else { return (.backend(backend), false) }
                    backend.status.isDrainedByOperator = true
                    logger.notice(
                        "admin: drain backend \(backend) of \(tenant.name) by \(actor) (\(backend.status.connections) in progress)"
                    )
                    return (.backend(backend), true)
                }
            }
        case ("POST", "undrain", 1):
            return waitingForFleet(request) {
                write(request, actor: actor, tenant: name, backend: address) { tenant, backend in
                    guard !backend.status.isDrainedInConfiguration else {
                        // Refused whole: ending only the admin drain would answer an error while changing something.
                        let file = reloader.map { " (\($0.path))" } ?? ""
                        let message =
                            "backend \(backend) of \(tenant.name) is marked drain in the configuration file\(file); "
                            + "remove the mark there and reload (`switchyard reload` or SIGHUP)"
                            + (backend.status.isDrainedByOperator
                                ? ", then undrain it here: it is drained here too" : "")
                        return (.refused(Self.error(409, .drainedInFile, message)), false)
                    }
                    guard backend.status.isDrainedByOperator else { return (.backend(backend), false) }
                    backend.status.isDrainedByOperator = false
                    logger.notice("admin: undrain backend \(backend) of \(tenant.name) by \(actor)")
                    return (.backend(backend), true)
                }
            }
        case (_, nil, 0):
            // With resources, DELETE removes the backend (answered by them before this).
            let allow = resources == nil ? "GET" : "GET, DELETE"
            return Self.error(
                405,
                .methodNotAllowed,
                "\(request.method) is not allowed on a backend; use \(allow), or POST …/drain or …/undrain",
                allow: allow
            )
        case (_, "drain", 1), (_, "undrain", 1):
            return Self.error(
                405,
                .methodNotAllowed,
                "\(request.method) …/\(action.first ?? "") is not allowed; use POST",
                allow: "POST"
            )
        default:
            let path = "/" + (["v1", "tenants", name, "backends", address] + action).joined(separator: "/")
            return Self.error(404, .notFound, "no such endpoint: \(request.method) \(path)")
        }
    }

    /// An error answer as a value, so that lookups and checks can return it through `Result`.
    public struct Refusal: Error {
        /// The answer to give.
        public var response: Response

        public init(response: Response) {
            self.response = response
        }

        /// The error answer `{"error": {"code": …, "message": …}}` with `status`.
        public init(_ status: Int, _ code: ErrorCode, _ message: String) {
            self.response = AdminAPI.error(status, code, message)
        }
    }

    private func findBackend(tenant name: String, address: String) -> Result<(Tenant, Backend), Refusal> {
        guard let tenant = routes.current.tenant(named: name) else {
            return .failure(
                Refusal(
                    response: Self.error(404, .notFound, "no tenant '\(name)'; `switchyard status` lists the tenants")
                )
            )
        }
        guard let index = Self.backendIndex(of: address, in: tenant) else {
            let known = tenant.backends.map(\.description).joined(separator: ", ")
            return .failure(
                Refusal(
                    response: Self.error(
                        404,
                        .notFound,
                        "tenant '\(name)' has no backend \(address); its backends: \(known)"
                    )
                )
            )
        }
        return .success((tenant, tenant.backends[index]))
    }

    /// Runs a change on backend `address` of tenant `name` as one change of the version: serialised with every
    /// other, conditional on the request's `If-Match`, and answered with the backend and the version after it (or
    /// the 404 of a backend that is not there).
    private func write(
        _ request: Request,
        actor: ChangeActor,
        tenant name: String,
        backend address: String,
        _ change: (Tenant, Backend) -> (value: BackendChange, changed: Bool)
    ) -> Response {
        let precondition: ConfigurationVersion.Precondition?
        switch Self.parseIfMatch(request.ifMatch) {
        case .success(let parsed): precondition = parsed
        case .failure(let refusal): return refusal.response
        }
        resources?.synchronizeStore()
        // The backend is looked up inside the change, so that it is the one of the table the change applies to.
        let outcome = version.commit(ifMatch: precondition) { current -> (value: BackendChange, version: Int64) in
            let found: (Tenant, Backend)
            switch findBackend(tenant: name, address: address) {
            case .success(let backend): found = backend
            case .failure(let refusal): return (.refused(refusal.response), current)
            }
            let wasDrained = found.1.status.isDrainedByOperator
            let (value, changed) = change(found.0, found.1)
            guard changed else { return (value, current) }
            guard let resources else { return (value, current + 1) }
            switch resources.recordDrain(found.1.status.isDrainedByOperator, tenant: name, backend: found.1, by: actor)
            {
            case .success(let committed):
                return (value, committed)
            case .failure(let refusal):
                found.1.status.isDrainedByOperator = wasDrained
                return (.refused(refusal.response), current)
            }
        }
        switch outcome {
        case .mismatch(let current):
            return Self.versionMismatch(current: current, expected: request.ifMatch)
        case .done(.refused(var response), let version):
            response.version = version
            return response
        case .done(.backend(let backend), let version):
            var response = Self.json(200, Versioned(StatusReport.Backend(backend), version: version))
            response.version = version
            return response
        }
    }

    /// Finds a backend by the address `status` shows, or by an equivalent IP literal (`::1` written another way).
    private static func backendIndex(of address: String, in tenant: Tenant) -> Int? {
        if let index = tenant.backends.firstIndex(where: { $0.description == address }) {
            return index
        }
        guard case .success(let parsed) = HostAndPort.parse(address), let socketAddress = parsed.ipLiteralAddress()
        else { return nil }
        return tenant.backends.firstIndex { $0.address == socketAddress }
    }

    // MARK: Reload

    /// `{"tenants": N, "version": V}`: what a reload answers.
    private struct ReloadAnswer: Encodable {
        var tenants: Int
        var version: Int64
    }

    private func reload(_ request: Request, actor: ChangeActor) -> Response {
        guard let reloader else {
            return Self.error(503, .unavailable, "this balancer has no configuration file to reload")
        }
        let precondition: ConfigurationVersion.Precondition?
        switch Self.parseIfMatch(request.ifMatch) {
        case .success(let parsed): precondition = parsed
        case .failure(let refusal): return refusal.response
        }
        switch reloader.reload(ifMatch: precondition, by: actor) {
        case .mismatch(let current):
            return Self.versionMismatch(current: current, expected: request.ifMatch)
        case .done(.success(let tenants), let version):
            var response = Self.json(200, ReloadAnswer(tenants: tenants, version: version))
            response.version = version
            return response
        case .done(.failure(let failure), let version):
            let (status, code): (Int, ErrorCode) =
                switch failure.kind {
                case .configuration: (400, .invalidConfiguration)
                case .certificate: (400, .invalidCertificate)
                case .conflict: (409, .domainTaken)
                case .unavailable: (503, .unavailable)
                }
            var response = Self.error(
                status,
                code,
                "reload refused, the running configuration is kept: \(failure); fix the file and reload again"
            )
            response.version = version
            return response
        }
    }

    // MARK: Versions

    /// The `If-Match` of a write: absent, `*`, or a list of versions written `"N"` (the ETag) or `N`.
    public static func parseIfMatch(_ fields: [String]) -> Result<ConfigurationVersion.Precondition?, Refusal> {
        guard !fields.isEmpty else { return .success(nil) }
        var versions: [Int64] = []
        for item in fields.joined(separator: ",").split(separator: ",") {
            let text = item.trimmingCharacters(in: .whitespaces)
            if text == "*" {
                return .success(.any)
            }
            let digits =
                text.count >= 2 && text.hasPrefix("\"") && text.hasSuffix("\"")
                ? text.dropFirst().dropLast() : text[...]
            guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
                let number = Int64(digits)
            else {
                return .failure(
                    Refusal(
                        response: error(
                            400,
                            .invalidRequest,
                            "If-Match must be a configuration version as an answer's ETag gives it, e.g. If-Match: "
                                + "\"12\" (or *); found \(ConfigurationError.quoted(text))"
                        )
                    )
                )
            }
            versions.append(number)
        }
        guard !versions.isEmpty else {
            return .failure(Refusal(response: error(400, .invalidRequest, "If-Match is empty; give a version")))
        }
        return .success(.oneOf(versions))
    }

    /// The 412 of a write whose `If-Match` names another version than `current`.
    public static func versionMismatch(current: Int64, expected: [String]) -> Response {
        var response = error(
            412,
            .versionMismatch,
            "the configuration is at version \(current), not \(expected.joined(separator: ", ")): it changed since "
                + "you read it; nothing was changed. Look again (GET /v1/status) and retry with If-Match: \"\(current)\""
                + " if the change still makes sense"
        )
        response.version = current
        return response
    }

    // MARK: JSON

    /// `{"error": {"code": "…", "message": "…"}}`.
    struct ErrorBody: Codable {
        struct Detail: Codable {
            var code: String
            var message: String
        }
        var error: Detail
    }

    /// A resource with the version after a write: its own keys and `"version": N`, in one object.
    public struct Versioned<Resource: Encodable>: Encodable {
        var resource: Resource
        var version: Int64

        public init(_ resource: Resource, version: Int64) {
            self.resource = resource
            self.version = version
        }

        private enum Key: String, CodingKey {
            case version
        }

        public func encode(to encoder: any Encoder) throws {
            try resource.encode(to: encoder)
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(version, forKey: .version)
        }
    }

    /// An answer with `value` as pretty-printed JSON with sorted keys.
    public static func json(_ status: Int, _ value: some Encodable) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let body = try? encoder.encode(value) else {
            return Response(
                status: 500,
                body: Data(#"{"error":{"code":"internal_error","message":"the answer could not be encoded"}}"#.utf8)
            )
        }
        return Response(status: status, body: body)
    }

    /// An error answer: `{"error": {"code": …, "message": …}}`.
    public static func error(_ status: Int, _ code: ErrorCode, _ message: String, allow: String? = nil) -> Response {
        var response = json(status, ErrorBody(error: .init(code: code.rawValue, message: message)))
        response.allow = allow
        return response
    }
}

extension AdminAPI {
    /// The rest of an answer that takes a while (a change that waits until the fleet has it): the admin loop asks
    /// ``next()`` every ``interval`` until it gives the final answer, serving other clients in between, instead of
    /// blocking its thread (and every other admin client) for the whole wait.
    public final class Continuation: Sendable, Equatable {
        /// How long the loop waits before asking again.
        public let interval: TimeAmount
        private let poll: @Sendable () -> Response?

        /// - Parameter poll: the final answer once there is one, else `nil`; runs on the admin loop, so it must
        ///   not block for long (one store read), and must give an answer in the end (at its own deadline).
        public init(every interval: TimeAmount, poll: @escaping @Sendable () -> Response?) {
            self.interval = interval
            self.poll = poll
        }

        /// The final answer, if it is ready.
        public func next() -> Response? {
            poll()
        }

        public static func == (lhs: Continuation, rhs: Continuation) -> Bool {
            lhs === rhs
        }
    }
}

/// The endpoints of the admin API beyond status, drains and reload: tenants, domains, backends, certificates, apply
/// and the change log, all of which need the state store. The control plane implements it; ``AdminAPI`` asks it for
/// every path it does not serve itself.
public protocol AdminResources: Sendable {
    /// The state store's path and whether it can be used, for the status report.
    var storeStatus: StatusReport.Store { get }

    /// The answer to `request`, whose path after `/v1/` is `path` (decoded segments); `nil` when no endpoint has
    /// that path.
    func respond(to request: AdminAPI.Request, path: [String], actor: ChangeActor) -> AdminAPI.Response?

    /// Makes live what other writers of a shared store committed that this node has not applied yet; called before
    /// a change is checked, outside the version's change.
    func synchronizeStore()

    /// `response`, the answer of a change, completed once every live node of the fleet serves its version when
    /// `request` asks for it (`?wait=fleet`, ``AdminAPI/Continuation``); as it is otherwise.
    func waitingForFleet(_ response: AdminAPI.Response, request: AdminAPI.Request) -> AdminAPI.Response

    /// Makes an admin drain (`drained`) or undrain of `backend` of tenant `tenant` durable. Called inside the
    /// configuration version's change, after the backend's state was changed; answers the version committed, or the
    /// error to answer (the change is then undone).
    func recordDrain(
        _ drained: Bool,
        tenant: String,
        backend: Backend,
        by actor: ChangeActor
    ) -> Result<Int64, AdminAPI.Refusal>
}
