import Foundation
import NIOCore

/// What `switchyard status` shows: every tenant with its backends' health and load, and the open connections and
/// tunnels. Built from the live route table; encoded as JSON by the admin API.
public struct StatusReport: Codable, Sendable, Equatable {
    /// One backend of a tenant.
    public struct Backend: Codable, Sendable, Equatable {
        /// `HOST:PORT` as written in the configuration.
        public var address: String
        /// Whether it gets new requests: `up`, `down` (active checks), `ejected` (passive checks) or `draining`.
        public var state: String
        /// Its health regardless of a drain: `up`, `down` or `ejected`.
        public var health: String
        /// Who drained it, when it is draining: `admin` (the admin API), `configuration` (marked `drain` in the
        /// file) or both.
        public var drainedBy: [String]?
        /// Requests and tunnels using the backend now.
        public var connections: Int
        /// The latest active health check; `nil` before the first one.
        public var lastCheck: Check?

        /// The status of `backend` now.
        public init(_ backend: Switchyard.Backend, now: NIODeadline = .now(), date: Date = Date()) {
            let status = backend.status
            if !status.isActivelyUp {
                health = "down"
            } else if status.isEjected(now: now) {
                health = "ejected"
            } else {
                health = "up"
            }
            address = backend.description
            state = status.isDraining ? "draining" : health
            let drainers = [
                status.isDrainedByOperator ? "admin" : nil, status.isDrainedInConfiguration ? "configuration" : nil,
            ].compactMap { $0 }
            drainedBy = drainers.isEmpty ? nil : drainers
            connections = status.connections
            lastCheck = status.lastCheck.map { check in
                var error: String?
                if case .failure(let reason) = check.result { error = reason }
                return Check(
                    at: check.at.formatted(.iso8601),
                    secondsAgo: max(0, (date.timeIntervalSince(check.at) * 10).rounded() / 10),
                    ok: error == nil,
                    error: error
                )
            }
        }
    }

    /// One active health check's outcome.
    public struct Check: Codable, Sendable, Equatable {
        /// When it completed (ISO 8601, UTC).
        public var at: String
        /// Seconds between the check and the report.
        public var secondsAgo: Double
        /// Whether the check passed.
        public var ok: Bool
        /// Why it failed (`connection refused`, `status 500`, `timed out after 2s`…).
        public var error: String?
    }

    /// One tenant.
    public struct Tenant: Codable, Sendable, Equatable {
        public var name: String
        public var domains: [String]
        public var backends: [Backend]
        /// Open WebSocket tunnels and the tenant's cap.
        public var tunnels: Int
        public var maxTunnels: Int
    }

    /// The state store: where it is, and why it cannot be used when it cannot (changes are then refused).
    public struct Store: Codable, Sendable, Equatable {
        public var path: String
        /// `nil` when the store works.
        public var problem: String?

        public init(path: String, problem: String?) {
            self.path = path
            self.problem = problem
        }
    }

    /// The configuration version the report is of (``ConfigurationVersion``), also the answer's `ETag`.
    public var version: Int64?
    /// The state store; `nil` in a process without one.
    public var store: Store?
    /// Client connections open now, across workers.
    public var connections: Int
    public var tenants: [Tenant]

    /// The report for the current routes.
    public init(
        routes: RouteTable,
        connections: Int,
        version: Int64? = nil,
        now: NIODeadline = .now(),
        date: Date = Date()
    ) {
        self.version = version
        self.connections = connections
        self.tenants = routes.tenants.map { tenant in
            Tenant(
                name: tenant.name,
                domains: tenant.domains,
                backends: tenant.backends.map { Backend($0, now: now, date: date) },
                tunnels: tenant.tunnels.current,
                maxTunnels: tenant.tunnels.limit
            )
        }
    }

    /// A table for people.
    public var text: String {
        var lines = ["connections: \(connections)" + (version.map { "  version \($0)" } ?? "")]
        if let store {
            lines.append(
                store.problem.map { "state store \(store.path) CANNOT BE USED, changes are refused: \($0)" }
                    ?? "state store \(store.path)"
            )
        }
        for tenant in tenants {
            lines.append(
                "\(tenant.name)  \(tenant.domains.joined(separator: ", "))  tunnels \(tenant.tunnels)/\(tenant.maxTunnels)"
            )
            for backend in tenant.backends {
                // A drain shows who ordered it, and the health under it only when that is bad news too.
                var notes = backend.drainedBy ?? []
                if backend.state != backend.health, backend.health != "up" { notes.append(backend.health) }
                let state = notes.isEmpty ? backend.state : "\(backend.state) (\(notes.joined(separator: ", ")))"
                var line = "    \(backend.address)  \(state)  connections \(backend.connections)"
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
