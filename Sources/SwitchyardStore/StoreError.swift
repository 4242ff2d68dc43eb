/// Why the state store refused or failed an operation. Every case's ``description`` names what happened and what to
/// do about it, in words an operator can act on; the control plane puts it in its 409/412/503 answers and log lines.
public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A write said which revision it was based on (`If-Match`) and the store has moved on since: nothing was
    /// changed. The writer reads the configuration again and retries, or gives up.
    case revisionMismatch(expected: Int64, current: Int64)

    /// The store cannot be opened, read or written: the directory or file is not writable, the disk is full, the
    /// file is not a database or is damaged, another process holds it locked, the database server does not answer
    /// or refuses the login. `path` is the file, or the database's URL without its password; `reason` says which,
    /// and what to do.
    /// The database is never left half-written: the transaction that met the failure is rolled back whole.
    case unavailable(path: String, reason: String)

    /// The file was migrated by a newer Switchyard than this one, which does not know its schema and so neither
    /// reads nor changes it (`detail` names what is newer).
    case newerSchema(path: String, detail: String)

    /// A tenant document that is not a JSON object: the control plane stores the tenant as JSON in the
    /// configuration file's own keys, so this is a bug of the caller, not of the operator's input.
    case invalidDocument(tenant: String)

    public var description: String {
        switch self {
        case .revisionMismatch(let expected, let current):
            return
                "the configuration changed since version \(expected) (it is now at \(current)); nothing was changed: "
                + "read it again and retry against version \(current)"
        case .unavailable(let path, let reason):
            return "the state store at \(path) cannot be used: \(reason)"
        case .newerSchema(let path, let detail):
            return
                "the state store at \(path) was written by a newer Switchyard (\(detail)); this version neither reads "
                + "nor changes it: run the newer version, or point `state` at another file"
        case .invalidDocument(let tenant):
            return "the document of tenant '\(tenant)' is not a JSON object; nothing was stored"
        }
    }

    /// `true` for ``unavailable(path:reason:)``: the store itself is failing (the control plane answers 503), as
    /// opposed to a refusal of this one write.
    public var isUnavailable: Bool {
        if case .unavailable = self { return true }
        return false
    }
}
