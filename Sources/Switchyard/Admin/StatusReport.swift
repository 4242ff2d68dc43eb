import NIOCore

/// What `switchyard status` shows: every tenant with its backends' health and load, and the open connections and
/// tunnels. Built from the live route table; encoded as JSON by the admin API.
public struct StatusReport: Codable, Sendable, Equatable {
    public struct Backend: Codable, Sendable, Equatable {
        public var address: String
        /// `up`, `down` (active checks), `ejected` (passive) or `draining`.
        public var state: String
        /// Requests and tunnels using the backend now.
        public var connections: Int
    }

    public struct Tenant: Codable, Sendable, Equatable {
        public var name: String
        public var domains: [String]
        public var backends: [Backend]
        /// Open WebSocket tunnels and the tenant's cap.
        public var tunnels: Int
        public var maxTunnels: Int
    }

    /// Client connections open now, across workers.
    public var connections: Int
    public var tenants: [Tenant]

    /// The report for the current routes.
    public init(routes: RouteTable, connections: Int, now: NIODeadline = .now()) {
        self.connections = connections
        self.tenants = routes.tenants.map { tenant in
            Tenant(
                name: tenant.name,
                domains: tenant.domains,
                backends: tenant.backends.map { backend in
                    let status = backend.status
                    let state: String
                    if status.isDraining {
                        state = "draining"
                    } else if !status.isActivelyUp {
                        state = "down"
                    } else if status.isEjected(now: now) {
                        state = "ejected"
                    } else {
                        state = "up"
                    }
                    return Backend(address: backend.description, state: state, connections: status.connections)
                },
                tunnels: tenant.tunnels.current,
                maxTunnels: tenant.tunnels.limit
            )
        }
    }

    /// A table for people.
    public var text: String {
        var lines = ["connections: \(connections)"]
        for tenant in tenants {
            lines.append(
                "\(tenant.name)  \(tenant.domains.joined(separator: ", "))  tunnels \(tenant.tunnels)/\(tenant.maxTunnels)"
            )
            for backend in tenant.backends {
                lines.append("    \(backend.address)  \(backend.state)  connections \(backend.connections)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
