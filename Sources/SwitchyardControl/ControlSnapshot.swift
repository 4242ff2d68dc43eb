import Switchyard
import SwitchyardStore
import SwitchyardTLS

/// Everything the control plane serves, in memory: the configuration file and what the state store holds (tenants
/// managed through the API, admin drains, uploaded certificates). The store is the durable copy; this is what a
/// change is checked against and what the routing snapshot is built from, so that a change at 10,000 tenants parses
/// one document, not all of them.
struct ControlState: Sendable {
    var file: Configuration
    var tenants: [String: ManagedTenant] = [:]
    var drains: Set<StoredDrain> = []
    var certificates: [String: StoredCertificate] = [:]
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
        let fileNames = Set(state.file.tenants.map(\.name))
        var claimed: Set<String> = []
        for tenant in state.file.tenants {
            claimed.formUnion(tenant.domains)
        }
        configuration.tenants.reserveCapacity(state.file.tenants.count + state.tenants.count)
        for name in state.tenants.keys.sorted() {
            guard let managed = state.tenants[name] else { continue }
            if fileNames.contains(name) {
                shadowed[name] = Shadowing(byName: true, domains: managed.configuration.domains)
                continue
            }
            var tenant = managed.configuration
            let taken = tenant.domains.filter { claimed.contains($0) }
            if !taken.isEmpty {
                let takenSet = Set(taken)
                tenant.domains.removeAll { takenSet.contains($0) }
                shadowed[name] = Shadowing(byName: tenant.domains.isEmpty, domains: taken)
                if tenant.domains.isEmpty { continue }
            }
            claimed.formUnion(tenant.domains)
            configuration.tenants.append(tenant)
        }
        self.configuration = configuration
        self.shadowed = shadowed
    }

    /// The uploaded certificates of the tenants served, each selected for the served domains it covers.
    func uploadedCertificates(_ state: ControlState) -> [UploadedCertificate] {
        var uploaded: [UploadedCertificate] = []
        for tenant in configuration.tenants.dropFirst(state.file.tenants.count) {
            guard let certificate = state.certificates[tenant.name] else { continue }
            let names = tenant.domains.filter { Self.covers(certificate.names, domain: $0) }
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

    /// Whether a certificate with `names` covers a tenant's `domain`: an exact name, a wildcard name covering an
    /// exact domain one label down, or the same wildcard.
    static func covers(_ names: [String], domain: String) -> Bool {
        for name in names {
            if name == domain { return true }
            if name.hasPrefix("*."), !domain.hasPrefix("*."), let dot = domain.firstIndex(of: "."),
                domain[domain.index(after: dot)...] == name.dropFirst(2)
            {
                return true
            }
        }
        return false
    }
}
