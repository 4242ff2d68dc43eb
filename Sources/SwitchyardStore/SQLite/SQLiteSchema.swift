import GRDB

/// The SQLite store's schema and its migrations.
///
/// Migrations are GRDB's: each has an identifier recorded in the `grdb_migrations` table once applied, and each
/// also sets `PRAGMA user_version` to its number, so that an older Switchyard recognises a newer file by either
/// mark and refuses it (``StoreError/newerSchema(path:detail:)``) instead of reading what it does not understand.
/// A migration is never edited once released: a change to the schema is a new migration appended here.
enum SQLiteSchema {
    /// The `user_version` the newest migration sets.
    static let version: Int = 1

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            // The configuration version. One row, so that a write bumps it with an UPDATE that takes the write
            // lock at once (the transaction is IMMEDIATE anyway).
            try db.execute(
                sql: """
                    CREATE TABLE revision (
                        id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
                        value INTEGER NOT NULL CHECK (value >= 0)
                    );
                    INSERT INTO revision (id, value) VALUES (1, 0);

                    -- Tenants added through the admin API: each one a JSON object in the configuration file's keys
                    -- (checked without json_type() on invalid text, which would raise an error rather than fail).
                    CREATE TABLE tenant (
                        name TEXT PRIMARY KEY NOT NULL,
                        document TEXT NOT NULL
                            CHECK (CASE WHEN json_valid(document) THEN json_type(document) = 'object' ELSE 0 END)
                    );

                    -- Admin drains, of file and store tenants alike: no foreign key to tenant.
                    CREATE TABLE drain (
                        tenant TEXT NOT NULL,
                        backend TEXT NOT NULL,
                        PRIMARY KEY (tenant, backend)
                    ) WITHOUT ROWID;

                    -- Uploaded certificates. names is a JSON array of DNS names; not_after is in seconds since 1970.
                    CREATE TABLE certificate (
                        tenant TEXT PRIMARY KEY NOT NULL,
                        chain_pem TEXT NOT NULL,
                        key_pem TEXT NOT NULL,
                        fingerprint TEXT NOT NULL,
                        names TEXT NOT NULL
                            CHECK (CASE WHEN json_valid(names) THEN json_type(names) = 'array' ELSE 0 END),
                        not_after INTEGER NOT NULL
                    );

                    -- The audit log: one write, one revision; its changes numbered by sequence from 0.
                    -- time_ms is milliseconds since 1970. before and after never hold a private key.
                    CREATE TABLE change (
                        revision INTEGER NOT NULL,
                        sequence INTEGER NOT NULL,
                        time_ms INTEGER NOT NULL,
                        actor TEXT NOT NULL,
                        action TEXT NOT NULL,
                        subject TEXT NOT NULL,
                        "before" TEXT,
                        "after" TEXT,
                        PRIMARY KEY (revision, sequence)
                    ) WITHOUT ROWID;

                    PRAGMA user_version = 1;
                    """
            )
        }
        return migrator
    }
}
