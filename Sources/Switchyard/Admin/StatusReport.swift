import Foundation
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
        /// The latest active health check; `nil` before the first one.
        public var lastCheck: Check?
    }

    /// One active health check's outcome.
    public struct Check: Codable, Sendable, Equatable {
        /// When it completed (ISO 8601, UTC).
        public var at: String
        /// Seconds between the check and the report.
        public var secondsAgo: Double
        public var ok: Bool
        /// Why it failed (`connection refused`, `status 500`, `timed out after 2s`…).
        public var error: String?
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
    public init(routes: RouteTable, connections: Int, now: NIODeadline = .now(), date: Date = Date()) {
        self.connections = connections
        let formatter = ISO8601DateFormatter()
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
                    let check = status.lastCheck.map { check in
                        var error: String?
                        if case .failure(let reason) = check.result { error = reason }
                        return Check(
                            at: formatter.string(from: check.at),
                            secondsAgo: max(0, (date.timeIntervalSince(check.at) * 10).rounded() / 10),
                            ok: error == nil,
                            error: error
                        )
                    }
                    return Backend(
                        address: backend.description,
                        state: state,
                        connections: status.connections,
                        lastCheck: check
                    )
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
                var line = "    \(backend.address)  \(backend.state)  connections \(backend.connections)"
                if let check = backend.lastCheck {
                    line += "  last check \(check.ok ? "ok" : "failed") \(check.secondsAgo)s ago"
                    if let error = check.error { line += ": \(error)" }
                }
                lines.append(line)
            }
        }
        return lines.joined(separator: "\n")
    }
}
