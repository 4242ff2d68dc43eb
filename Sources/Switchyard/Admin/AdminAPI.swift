import Foundation
import Logging
import NIOCore

/// The admin API's endpoints: a request's method and path in, a status and a JSON body out. No sockets here, so
/// every endpoint is tested by calling ``respond(method:path:)``; ``AdminServer`` carries it over the unix socket.
///
/// - `GET /status`: the ``StatusReport``.
/// - `GET /tenants/NAME/backends/HOST:PORT`: one backend's status.
/// - `POST /tenants/NAME/backends/HOST:PORT/drain`: the backend gets no new requests or tunnels; those in progress
///   finish. `POST …/undrain` ends that. Backends are named by the address `status` shows.
///
/// A drain lasts across reloads (the backend keeps its state while it stays in the configuration) but not across a
/// restart: there is no state store yet.
public struct AdminAPI: Sendable {
    /// An answer: the HTTP status and a JSON body.
    public struct Response: Sendable, Equatable {
        /// The HTTP status code.
        public var status: Int
        /// JSON: the resource, or `{"error": "…"}`.
        public var body: Data
        /// The methods the resource allows, for a 405's `Allow` field (RFC 9110 §15.5.6).
        public var allow: String? = nil
    }

    private let routes: RouteSource
    private let connections: @Sendable () -> Int
    private let logger: Logger

    /// - Parameter connections: the client connections open now, for the status report.
    public init(routes: RouteSource, logger: Logger, connections: @escaping @Sendable () -> Int) {
        self.routes = routes
        self.logger = logger
        self.connections = connections
    }

    /// Answers one request. `path` is the request target; a query is ignored.
    public func respond(method: String, path target: String) -> Response {
        let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? target
        let segments = path.split(separator: "/", omittingEmptySubsequences: true).map {
            String($0).removingPercentEncoding ?? String($0)
        }
        switch (method, segments.first) {
        case ("GET", "status") where segments.count == 1:
            return Self.json(200, StatusReport(routes: routes.current, connections: connections()))
        case (_, "status") where segments.count == 1:
            return Self.error(405, "\(method) /status is not allowed; use GET", allow: "GET")
        case (_, "tenants") where segments.count >= 4 && segments[2] == "backends":
            return backendRequest(method: method, tenant: segments[1], backend: segments[3], action: segments[4...])
        default:
            return Self.error(404, "no such endpoint: \(method) \(path)")
        }
    }

    private func backendRequest(
        method: String,
        tenant name: String,
        backend address: String,
        action: ArraySlice<String>
    ) -> Response {
        guard let tenant = routes.current.tenants.first(where: { $0.name == name }) else {
            return Self.error(404, "no tenant '\(name)'; `switchyard status` lists the tenants")
        }
        guard let index = Self.backendIndex(of: address, in: tenant) else {
            let known = tenant.backends.map(\.description).joined(separator: ", ")
            return Self.error(404, "tenant '\(name)' has no backend \(address); its backends: \(known)")
        }
        let backend = tenant.backends[index]
        switch (method, action.first, action.count) {
        case ("GET", nil, 0):
            break
        case ("POST", "drain", 1):
            if !backend.status.isDrainedByOperator {
                backend.status.isDrainedByOperator = true
                logger.notice(
                    "backend \(backend) of \(tenant.name): draining (admin API); \(backend.status.connections) in progress"
                )
            }
        case ("POST", "undrain", 1):
            let wasDrained = backend.status.isDrainedByOperator
            if wasDrained {
                backend.status.isDrainedByOperator = false
                logger.notice("backend \(backend) of \(tenant.name): drain ended (admin API)")
            }
            guard !backend.status.isDrainedInConfiguration else {
                // The admin drain (if any) is over, but the file's mark keeps the backend out of rotation.
                return Self.error(
                    409,
                    (wasDrained ? "the admin drain ended, but " : "")
                        + "backend \(backend) of \(tenant.name) is marked drain in the configuration file; remove the "
                        + "mark there and reload (SIGHUP)"
                )
            }
        case (_, nil, 0):
            return Self.error(
                405,
                "\(method) is not allowed on a backend; use GET, or POST …/drain or …/undrain",
                allow: "GET"
            )
        case (_, "drain", 1), (_, "undrain", 1):
            return Self.error(405, "\(method) …/\(action.first ?? "") is not allowed; use POST", allow: "POST")
        default:
            let path = "/" + (["tenants", tenant.name, "backends", address] + action).joined(separator: "/")
            return Self.error(404, "no such endpoint: \(method) \(path)")
        }
        return Self.json(200, StatusReport.Backend(backend))
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

    private static func json(_ status: Int, _ value: some Encodable) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let body = try? encoder.encode(value) else {
            return Response(status: 500, body: Data("{\"error\":\"the answer could not be encoded\"}".utf8))
        }
        return Response(status: status, body: body)
    }

    private static func error(_ status: Int, _ message: String, allow: String? = nil) -> Response {
        var response = json(status, ["error": message])
        response.allow = allow
        return response
    }
}
