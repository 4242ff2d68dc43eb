import NIOCore

/// A tenant as the data path sees it: its name, domains and backends.
///
/// Instances are immutable and shared by every event loop through a ``RouteTable`` snapshot; identity matters
/// (pools and counters are keyed by it), hence a class.
public final class Tenant: Sendable {
    /// The tenant's unique name.
    public let name: String
    /// Domains routed to this tenant, normalised (lower case, no trailing dot).
    public let domains: [String]
    /// Backends in the order they were declared.
    public let backends: [Backend]

    public init(name: String, domains: [String], backends: [Backend]) {
        self.name = name
        self.domains = domains
        self.backends = backends
    }
}

/// One backend server of a tenant.
public final class Backend: Sendable, CustomStringConvertible {
    /// The address connected to.
    public let address: SocketAddress
    /// `HOST:PORT` as written by the operator; used in logs.
    public let description: String

    public init(address: SocketAddress, description: String? = nil) {
        self.address = address
        self.description = description ?? Backend.format(address)
    }

    static func format(_ address: SocketAddress) -> String {
        switch address {
        case .v4:
            return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .v6:
            return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        case .unixDomainSocket:
            return address.pathname ?? "unix"
        }
    }
}
