import Switchyard
import SwitchyardStore
import SwitchyardTLS

/// Everything the control plane serves, in memory: the configuration file and what the state store holds (tenants
/// managed through the API, admin drains, uploaded certificates). The store is the durable copy; this is what a
/// change is checked against and what the routing snapshot is built from, so that a change at 10,000 tenants parses
/// one document, not all of them.
struct ControlState: Sendable {
    var file: Configuration {
        didSet { fileIndex = FileIndex(file) }
    }
    var tenants: [String: ManagedTenant] = [:]
    var drains: Set<StoredDrain> = []
    var certificates: [String: StoredCertificate] = [:]
    /// The file's tenant names and domains, for deciding what of a managed tenant is served without walking the
    /// file's tenants each time.
    private(set) var fileIndex: FileIndex

    init(file: Configuration) {
        self.file = file
        self.fileIndex = FileIndex(file)
    }

    struct FileIndex: Sendable {
        var names: Set<String> = []
        var domains: Set<String> = []

        init(_ file: Configuration) {
            for tenant in file.tenants {
                names.insert(tenant.name)
                domains.formUnion(tenant.domains)
            }
        }
    }

    /// What of managed tenant `tenant` is served: `nil` when a file tenant has its name or all its domains; and
    /// what the file shadows of it.
    func served(_ tenant: TenantConfiguration) -> (tenant: TenantConfiguration?, shadowing: Shadowing?) {
        if fileIndex.names.contains(tenant.name) {
            return (nil, Shadowing(byName: true, domains: tenant.domains))
        }
        let taken = tenant.domains.filter { fileIndex.domains.contains($0) }
        guard !taken.isEmpty else { return (tenant, nil) }
        var served = tenant
        served.domains.removeAll { fileIndex.domains.contains($0) }
        return (served.domains.isEmpty ? nil : served, Shadowing(byName: served.domains.isEmpty, domains: taken))
    }
}

/// A managed tenant that is not served whole because the configuration file claims what it claims ("the file
/// wins", as a file is what an operator edits by hand and reloads on purpose).
struct Shadowing: Sendable, Equatable {
    /// A file tenant has the same name: the managed tenant is not served at all.
    var byName: Bool
    /// Its domains that a file tenant serves; it is served with the others.
    var domains: [String]
}

/// The merged view of a ``ControlState``: the configuration to route by (the file's tenants, then the managed ones
/// by name, each domain served by one tenant) and what of the managed tenants was left out.
struct ControlSnapshot {
    /// The file's configuration with the served managed tenants appended.
    var configuration: Configuration
    /// Managed tenants not served whole, by name.
    var shadowed: [String: Shadowing]

    init(_ state: ControlState) {
        var configuration = state.file
        var shadowed: [String: Shadowing] = [:]
        var claimed = state.fileIndex.domains
        configuration.tenants.reserveCapacity(state.file.tenants.count + state.tenants.count)
        for name in state.tenants.keys.sorted() {
            guard let managed = state.tenants[name] else { continue }
            let (served, shadowing) = state.served(managed.configuration)
            shadowed[name] = shadowing
            // Two managed tenants never share a domain (each change checks), but a file tenant that shadowed one
            // by name could have hidden a domain another then took: the first by name keeps it.
            guard var tenant = served else { continue }
            tenant.domains.removeAll { claimed.contains($0) }
            guard !tenant.domains.isEmpty else { continue }
            claimed.formUnion(tenant.domains)
            configuration.tenants.append(tenant)
        }
        self.configuration = configuration
        self.shadowed = shadowed
    }

    /// The uploaded certificates of the managed tenants `table` serves, each selected for the served domains it
    /// covers.
    static func uploadedCertificates(_ state: ControlState, table: RouteTable) -> [UploadedCertificate] {
        var uploaded: [UploadedCertificate] = []
        for name in state.certificates.keys.sorted() where !state.fileIndex.names.contains(name) {
            guard let certificate = state.certificates[name], let tenant = table.tenant(named: name) else { continue }
            let names = tenant.domains.filter { TLSContext.covers(host: $0, names: certificate.names) }
            guard !names.isEmpty else { continue }
            uploaded.append(
                UploadedCertificate(
                    label: "tenant \(tenant.name)",
                    fingerprint: certificate.fingerprint,
                    names: names,
                    chainPEM: certificate.chainPEM,
                    keyPEM: certificate.keyPEM
                )
            )
        }
        return uploaded
    }
}
