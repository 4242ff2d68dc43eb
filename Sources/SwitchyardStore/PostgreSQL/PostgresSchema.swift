import PostgresNIO

/// The PostgreSQL store's schema, `switchyard`, and its migrations.
///
/// Each migration has an identifier recorded in `switchyard.migration` once applied; a database with an identifier
/// this version does not know was migrated by a newer Switchyard and is refused
/// (``StoreError/newerSchema(path:detail:)``). A migration is never edited once released: a change to the schema is
/// a new migration appended here. Migrations run in one transaction under an advisory lock, so that nodes started
/// at once apply each exactly once.
enum PostgresSchema {
    /// The key of the advisory lock that migrations hold (any number of Switchyard's own).
    static let migrationLock: Int64 = 0x5377_6974_6368  // "Switch"

    static let migrations: [(identifier: String, sql: [String])] = [
        (
            "v1",
            [
                // The configuration version: one row, locked by every write (`FOR UPDATE`) to serialise writers.
                """
                CREATE TABLE switchyard.revision (
                    id integer PRIMARY KEY CHECK (id = 1),
                    value bigint NOT NULL CHECK (value >= 0)
                )
                """,
                "INSERT INTO switchyard.revision (id, value) VALUES (1, 0)",
                // Tenants added through the admin API: each one a JSON object in the configuration file's keys, kept
                // as the exact text written (jsonb would reorder it), checked to be an object.
                """
                CREATE TABLE switchyard.tenant (
                    name text PRIMARY KEY,
                    document text NOT NULL CHECK (jsonb_typeof(document::jsonb) = 'object')
                )
                """,
                // Admin drains, of file and store tenants alike: no foreign key to tenant.
                """
                CREATE TABLE switchyard.drain (
                    tenant text NOT NULL,
                    backend text NOT NULL,
                    PRIMARY KEY (tenant, backend)
                )
                """,
                // Uploaded certificates. names is a JSON array of DNS names; not_after is in seconds since 1970.
                """
                CREATE TABLE switchyard.certificate (
                    tenant text PRIMARY KEY,
                    chain_pem text NOT NULL,
                    key_pem text NOT NULL,
                    fingerprint text NOT NULL,
                    names text NOT NULL CHECK (jsonb_typeof(names::jsonb) = 'array'),
                    not_after bigint NOT NULL
                )
                """,
                // The change log: one write, one revision; its changes numbered by sequence from 0. time_ms is
                // milliseconds since 1970. before and after never hold a private key.
                """
                CREATE TABLE switchyard.change (
                    revision bigint NOT NULL,
                    sequence bigint NOT NULL,
                    time_ms bigint NOT NULL,
                    actor text NOT NULL,
                    action text NOT NULL,
                    subject text NOT NULL,
                    "before" text,
                    "after" text,
                    PRIMARY KEY (revision, sequence)
                )
                """,
            ]
        ),
        (
            "v2",
            [
                // The fleet's nodes, by their heartbeats: what each serves and when it was last seen. Written by
                // each node every few seconds, outside any change (no revision, no record).
                """
                CREATE TABLE switchyard.node (
                    name text PRIMARY KEY,
                    address text NOT NULL,
                    applied bigint NOT NULL,
                    started_ms bigint NOT NULL,
                    seen_ms bigint NOT NULL
                )
                """
            ]
        ),
    ]

    /// Creates the schema, or applies the migrations it lacks; refuses one that a newer Switchyard migrated.
    static func migrate(_ rows: PostgresRows, location: String) throws {
        try rows.execute("BEGIN")
        do {
            try rows.query("SELECT pg_advisory_xact_lock(\(migrationLock))")
            try rows.execute("CREATE SCHEMA IF NOT EXISTS switchyard")
            try rows.execute("CREATE TABLE IF NOT EXISTS switchyard.migration (identifier text PRIMARY KEY)")
            let applied = Set(
                try rows.query("SELECT identifier FROM switchyard.migration").map { row in
                    try row.decode(String.self)
                }
            )
            let known = Set(migrations.map(\.identifier))
            let unknown = applied.subtracting(known).sorted()
            if !unknown.isEmpty {
                throw StoreError.newerSchema(
                    path: location,
                    detail: "migrations \(unknown.joined(separator: ", ")) unknown to this version"
                )
            }
            for migration in migrations where !applied.contains(migration.identifier) {
                for statement in migration.sql {
                    try rows.execute(statement)
                }
                try rows.query("INSERT INTO switchyard.migration (identifier) VALUES (\(migration.identifier))")
            }
            try rows.execute("COMMIT")
        } catch {
            try? rows.execute("ROLLBACK")
            throw error
        }
    }
}
