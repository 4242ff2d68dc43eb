import Foundation

/// Where the state store is, as `state:` names it: the path of an SQLite file (one node), or the URL of a
/// PostgreSQL database that a fleet of nodes shares.
///
/// The URL is libpq's form, `postgres://USER@HOST:PORT/DATABASE?sslmode=MODE&sslrootcert=FILE`, without the
/// password: that comes from `state_password_file` or `PGPASSWORD`, so that the configuration file, its copies and
/// the logs never hold it.
public enum StateLocation: Sendable, Equatable {
    case file(String)
    case postgres(PostgresURL)

    /// A PostgreSQL database's address, user and TLS settings.
    public struct PostgresURL: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var user: String
        public var database: String
        /// libpq's `sslmode`: `disable`, `prefer` (the default), `require` or `verify-full`.
        public var sslMode: String
        /// The PEM file of roots that `verify-full` trusts (`sslrootcert`); the system's without.
        public var rootCertificates: String?

        /// The `sslmode` values accepted.
        public static let sslModes = ["disable", "prefer", "require", "verify-full"]
    }

    /// Reads `value`: a `postgres://` or `postgresql://` URL, or else a file's path. Throws a reason naming what is
    /// wrong with a URL.
    public init(parsing value: String) throws(StateLocationError) {
        guard value.hasPrefix("postgres://") || value.hasPrefix("postgresql://") else {
            self = .file(value)
            return
        }
        guard let components = URLComponents(string: value) else {
            throw StateLocationError("is not a valid URL; expected postgres://USER@HOST:PORT/DATABASE")
        }
        guard components.password == nil else {
            throw StateLocationError(
                "holds a password; put it in `state_password_file` (or PGPASSWORD) instead, so that it stays out "
                    + "of the configuration and the logs"
            )
        }
        guard let host = components.host, !host.isEmpty else {
            throw StateLocationError("names no host; expected postgres://USER@HOST:PORT/DATABASE")
        }
        guard let user = components.user, !user.isEmpty else {
            throw StateLocationError("names no user; expected postgres://USER@HOST:PORT/DATABASE")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty, !database.contains("/") else {
            throw StateLocationError("names no database; expected postgres://USER@HOST:PORT/DATABASE")
        }
        var url = PostgresURL(
            host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host,
            port: components.port ?? 5432,
            user: user,
            database: database,
            sslMode: "prefer",
            rootCertificates: nil
        )
        guard (1...65535).contains(url.port) else {
            throw StateLocationError("has port \(url.port); expected 1 to 65535")
        }
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value, PostgresURL.sslModes.contains(mode) else {
                    throw StateLocationError(
                        "has sslmode=\(item.value ?? ""); expected one of \(PostgresURL.sslModes.joined(separator: ", "))"
                    )
                }
                url.sslMode = mode
            case "sslrootcert":
                guard let path = item.value, !path.isEmpty else {
                    throw StateLocationError("has an empty sslrootcert; expected the path of a PEM file")
                }
                url.rootCertificates = path
            default:
                throw StateLocationError("has the unknown parameter '\(item.name)'; expected sslmode or sslrootcert")
            }
        }
        self = .postgres(url)
    }

    /// The store as status and log lines name it: the path, or the URL (which never holds a password).
    public var description: String {
        switch self {
        case .file(let path):
            return path
        case .postgres(let url):
            let host = url.host.contains(":") ? "[\(url.host)]" : url.host
            return "postgres://\(url.user)@\(host):\(url.port)/\(url.database)"
        }
    }
}

/// Why a `state:` URL was refused.
public struct StateLocationError: Error, Sendable, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}
