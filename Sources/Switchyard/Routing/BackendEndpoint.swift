import NIOCore

/// One backend address, shared by every tenant's ``Backend`` that lists it.
///
/// A keep-alive connection to `10.0.0.5:8080` carries no tenant state, so the upstream pools key their idle
/// connections by endpoint rather than by tenant backend: with `Host` spread over thousands of tenants that share a
/// few addresses, requests still find a warm connection (Pingora's shared pool, reuse 87 % → 99.9 %). The route
/// table gives every backend at one address the same endpoint, and keeps it across reloads. Identity is what
/// matters (pools look it up by `ObjectIdentifier`, which costs no hashing of the address), hence a class.
public final class BackendEndpoint: Sendable {
    /// The address connected to.
    public let address: SocketAddress

    public init(address: SocketAddress) {
        self.address = address
    }
}
