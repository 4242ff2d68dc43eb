import GRDB

/// Why the state store refused or failed an operation. Every case's ``description`` names what happened and what to
/// do about it, in words an operator can act on; the control plane puts it in its 409/412/503 answers and log lines.
public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A write said which revision it was based on (`If-Match`) and the store has moved on since: nothing was
    /// changed. The writer reads the configuration again and retries, or gives up.
    case revisionMismatch(expected: Int64, current: Int64)

    /// The store cannot be opened, read or written: the directory or file is not writable, the disk is full, the
    /// file is not a database or is damaged, another process holds it locked. `reason` says which, and what to do.
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

extension StoreError {
    /// Maps an SQLite failure to ``unavailable(path:reason:)``, with a reason naming the condition and its remedy.
    static func from(_ error: DatabaseError, path: String) -> StoreError {
        let code = "SQLITE_\(Self.name(of: error.extendedResultCode))"
        let message = error.message.map { ", \"\($0)\"" } ?? ""
        let reason: String
        switch error.resultCode {
        case .SQLITE_FULL:
            reason = "the disk is full (\(code)\(message)); free space on its volume"
        case .SQLITE_READONLY:
            reason =
                "it is read-only (\(code)\(message)); make the file, its -wal and -shm files and their directory "
                + "writable by this user"
        case .SQLITE_PERM:
            reason = "permission denied (\(code)\(message)); make the file and its directory writable by this user"
        case .SQLITE_CORRUPT:
            reason =
                "the file is damaged (\(code)\(message)); restore it from a backup, or move it away to start with an "
                + "empty store"
        case .SQLITE_NOTADB:
            reason =
                "the file is not a database (\(code)\(message)); point `state` at a Switchyard state store, or move "
                + "the file away to start with an empty store"
        case .SQLITE_CANTOPEN:
            reason =
                "the file cannot be opened (\(code)\(message)); check that its directory exists, is writable and that "
                + "the path is not a directory"
        case .SQLITE_IOERR:
            reason = "an I/O error occurred (\(code)\(message)); check the disk and the kernel log"
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            reason =
                "another process holds it locked (\(code)\(message)); only one Switchyard may use a state file at a "
                + "time"
        default:
            reason = "SQLite failed (\(code)\(message))"
        }
        return .unavailable(path: path, reason: reason)
    }

    /// The SQLite name of a primary result code, without its `SQLITE_` prefix, with the extended code's number when
    /// there is one (`IOERR 4874`), as the SQLite documentation lists them.
    private static func name(of code: ResultCode) -> String {
        let primary: String
        switch code.primaryResultCode {
        case .SQLITE_FULL: primary = "FULL"
        case .SQLITE_READONLY: primary = "READONLY"
        case .SQLITE_PERM: primary = "PERM"
        case .SQLITE_CORRUPT: primary = "CORRUPT"
        case .SQLITE_NOTADB: primary = "NOTADB"
        case .SQLITE_CANTOPEN: primary = "CANTOPEN"
        case .SQLITE_IOERR: primary = "IOERR"
        case .SQLITE_BUSY: primary = "BUSY"
        case .SQLITE_LOCKED: primary = "LOCKED"
        case .SQLITE_CONSTRAINT: primary = "CONSTRAINT"
        case .SQLITE_MISUSE: primary = "MISUSE"
        default: primary = "ERROR \(code.primaryResultCode.rawValue)"
        }
        return code == code.primaryResultCode ? primary : "\(primary) (extended code \(code.rawValue))"
    }
}
