import Foundation
import Switchyard
import Yams

/// A tenant managed through the admin API: its document, the tenant as a JSON object in the configuration file's
/// own keys (what the store keeps), and the configuration parsed from exactly that document.
///
/// Edits (a domain or backend added, a weight set) change the document and parse it again, so that every tenant
/// the API holds was validated by the same loader, with the same keys and messages, as the file's tenants.
///
/// A class, immutable: the control plane copies its map of 10,000 of them for each change, and a copy then costs
/// one reference per tenant instead of one per field of each.
final class ManagedTenant: Sendable {
    /// Canonical JSON: sorted keys, no insignificant whitespace. Two equal tenants have equal documents, so the
    /// store can tell a replacement that changes nothing.
    let document: String
    let configuration: TenantConfiguration

    var name: String { configuration.name }

    /// Parses a stored document (or one just built): refused with the loader's error, naming `source`.
    init(document: String, source: String) throws(ConfigurationError) {
        self.configuration = try ConfigurationLoader.parseManagedTenant(yaml: document, file: source)
        self.document = document
    }

    /// Builds the tenant of a JSON object (keys of the configuration file).
    convenience init(object: [String: Any], source: String) throws(ConfigurationError) {
        try self.init(document: try Self.canonical(object, source: source), source: source)
    }

    /// The document as an object, to edit.
    var object: [String: Any] {
        // A document was canonical JSON of an object when it was made; this cannot fail for one of ours.
        (try? JSONSerialization.jsonObject(with: Data(document.utf8))) as? [String: Any] ?? [:]
    }

    /// The tenants of an `apply` body: a list of tenants, or a mapping whose `tenants` key is one.
    static func list(text: String, source: String) throws(ConfigurationError) -> [ManagedTenant] {
        let value = try Self.value(text: text, source: source)
        let items: [Any]
        if let mapping = value as? [String: Any] {
            guard Set(mapping.keys).isSubset(of: ["tenants"]) else {
                throw ConfigurationError(
                    file: source,
                    line: nil,
                    key: "",
                    reason: "expected a list of tenants, or a mapping with only 'tenants'; found the keys "
                        + mapping.keys.sorted().joined(separator: ", ")
                )
            }
            // An explicit list only: a body that lost its list (`tenants:` with nothing after it, `{}`) must not
            // read as "no tenants", which would remove every one.
            guard let list = mapping["tenants"] as? [Any] else {
                throw ConfigurationError(
                    file: source,
                    line: nil,
                    key: "tenants",
                    reason: "must be a list of tenants (an empty list, [], removes every API-managed tenant)"
                )
            }
            items = list
        } else if let list = value as? [Any] {
            items = list
        } else {
            throw ConfigurationError(file: source, line: nil, key: "", reason: "expected a list of tenants")
        }
        var tenants: [ManagedTenant] = []
        var names: Set<String> = []
        for (index, item) in items.enumerated() {
            let path = "\(source) tenants[\(index)]"
            guard let object = item as? [String: Any] else {
                throw ConfigurationError(file: source, line: nil, key: "tenants[\(index)]", reason: "is not a tenant")
            }
            let tenant = try ManagedTenant(object: object, source: path)
            guard names.insert(tenant.name).inserted else {
                throw ConfigurationError(
                    file: source,
                    line: nil,
                    key: "tenants[\(index)].name",
                    reason: "tenant '\(tenant.name)' is listed twice; names must be unique"
                )
            }
            tenants.append(tenant)
        }
        return tenants
    }

    /// A YAML or JSON mapping as an object.
    static func object(text: String, source: String) throws(ConfigurationError) -> [String: Any] {
        guard let object = try value(text: text, source: source) as? [String: Any] else {
            throw ConfigurationError(
                file: source,
                line: nil,
                key: "",
                reason: "expected a tenant: a mapping of the configuration's tenant keys (name, domains, backends…)"
            )
        }
        return object
    }

    /// YAML (of which JSON is a subset) as plain values; timestamps stay strings, since no tenant key is a date.
    private static func value(text: String, source: String) throws(ConfigurationError) -> Any {
        let resolver = Resolver.default.removing(.timestamp)
        let value: Any?
        do {
            value = try Yams.load(yaml: text, resolver)
        } catch {
            throw ConfigurationError(file: source, line: nil, key: "", reason: "invalid YAML or JSON: \(error)")
        }
        guard let value else {
            throw ConfigurationError(file: source, line: nil, key: "", reason: "is empty")
        }
        return value
    }

    /// Canonical JSON of an object.
    static func canonical(_ object: [String: Any], source: String) throws(ConfigurationError) -> String {
        guard JSONSerialization.isValidJSONObject(object),
            let data = try? JSONSerialization.data(
                withJSONObject: object,
                options: [.sortedKeys, .withoutEscapingSlashes]
            )
        else {
            throw ConfigurationError(
                file: source,
                line: nil,
                key: "",
                reason: "holds values that are not strings, numbers, booleans, lists or mappings"
            )
        }
        return String(decoding: data, as: UTF8.self)
    }

    // MARK: Edits

    /// The backends as the document lists them (`HOST:PORT`, optionally with `weight=N` and `drain`).
    var backendEntries: [String] {
        (object["backends"] as? [Any])?.compactMap { $0 as? String } ?? []
    }

    /// The index of the entry naming `backend` as `HOST:PORT` is written in it (as `status` shows it), if any.
    func backendIndex(_ backend: String) -> Int? {
        backendEntries.firstIndex { Self.backendName(of: $0) == backend }
    }

    /// `HOST:PORT` of a backend entry.
    static func backendName(of entry: String) -> String {
        entry.split(separator: " ", omittingEmptySubsequences: true).first.map(String.init) ?? entry
    }

    /// A copy with `change` applied to the document, parsed again.
    func editing(source: String, _ change: (inout [String: Any]) -> Void) throws(ConfigurationError) -> ManagedTenant {
        var object = self.object
        change(&object)
        return try ManagedTenant(object: object, source: source)
    }
}
