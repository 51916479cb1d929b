import Postgres

/// The feature store's schema as an ordered list of migrations. `migrate` applies the missing
/// ones at start in one transaction (under an advisory lock, so two stores starting together
/// do not race), records each in `winnow_schema_migrations`, and refuses a database whose
/// schema is newer than this binary knows. Applying it again changes nothing.
///
/// Tables (see docs/FEATURESTORE.md):
///   ingest_loads, ingest_batches      loads in progress and committed, batch ids seen
///   interactions                      partitioned by load: one partition per committed load
///   events                            online events, unique by event id
///   datasets, dataset_users, dataset_items   immutable built datasets
///   model_uploads, model_upload_chunks, models, model_chunks, model_promotions   the registry
public enum Schema {
    public struct Migration: Sendable {
        public let version: Int
        public let name: String
        public let sql: String
    }

    public static let migrations: [Migration] = [
        Migration(version: 1, name: "feature store: ingest, events, datasets, model registry", sql: """
        CREATE TABLE ingest_loads (
            load_no      integer PRIMARY KEY,
            load_id      text NOT NULL UNIQUE,
            source       text NOT NULL,
            format       text NOT NULL,
            header       text NOT NULL,
            columns      text NOT NULL,
            state        text NOT NULL CHECK (state IN ('open', 'committed')),
            rows         bigint NOT NULL DEFAULT 0,
            created_at   timestamptz NOT NULL DEFAULT now(),
            committed_at timestamptz
        );
        CREATE TABLE ingest_batches (
            load_no  integer NOT NULL REFERENCES ingest_loads (load_no) ON DELETE CASCADE,
            batch_id bigint NOT NULL,
            rows     integer NOT NULL,
            PRIMARY KEY (load_no, batch_id)
        );
        CREATE TABLE interactions (
            load_no integer NOT NULL,
            line    bigint NOT NULL,
            user_id bigint NOT NULL,
            item_id bigint NOT NULL,
            ts      double precision NOT NULL,
            rating  real
        ) PARTITION BY LIST (load_no);
        CREATE INDEX interactions_user_ts ON interactions (user_id, ts);
        CREATE TABLE events (
            event_id    text PRIMARY KEY,
            user_id     bigint NOT NULL,
            item_id     bigint NOT NULL,
            ts          double precision NOT NULL,
            kind        text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX events_user_ts ON events (user_id, ts);
        CREATE TABLE datasets (
            dataset_id   text PRIMARY KEY,
            spec         bytea NOT NULL,
            spec_text    text NOT NULL,
            users        integer NOT NULL,
            items        integer NOT NULL,
            interactions bigint NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE dataset_users (
            dataset_id text NOT NULL REFERENCES datasets (dataset_id) ON DELETE CASCADE,
            user_idx   integer NOT NULL,
            user_id    bigint NOT NULL,
            role       smallint NOT NULL,
            items      integer[] NOT NULL,
            timestamps double precision[] NOT NULL,
            ratings    real[],
            PRIMARY KEY (dataset_id, user_idx)
        );
        CREATE TABLE dataset_items (
            dataset_id text NOT NULL REFERENCES datasets (dataset_id) ON DELETE CASCADE,
            item_idx   integer NOT NULL,
            item_id    bigint NOT NULL,
            popularity integer NOT NULL,
            neighbours integer[] NOT NULL,
            scores     real[] NOT NULL,
            PRIMARY KEY (dataset_id, item_idx),
            UNIQUE (dataset_id, item_id)
        );
        CREATE TABLE model_uploads (
            upload_id  text PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE model_upload_chunks (
            upload_id   text NOT NULL REFERENCES model_uploads (upload_id) ON DELETE CASCADE,
            byte_offset bigint NOT NULL,
            data        bytea NOT NULL,
            PRIMARY KEY (upload_id, byte_offset)
        );
        CREATE TABLE models (
            name         text NOT NULL,
            version      bigint NOT NULL,
            content_hash text NOT NULL,
            size_bytes   bigint NOT NULL,
            dataset_id   text NOT NULL,
            upload_id    text NOT NULL UNIQUE,
            meta         bytea NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, version)
        );
        CREATE TABLE model_chunks (
            name        text NOT NULL,
            version     bigint NOT NULL,
            byte_offset bigint NOT NULL,
            data        bytea NOT NULL,
            PRIMARY KEY (name, version, byte_offset),
            FOREIGN KEY (name, version) REFERENCES models (name, version)
        );
        CREATE TABLE model_promotions (
            name        text PRIMARY KEY,
            version     bigint NOT NULL,
            promoted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            FOREIGN KEY (name, version) REFERENCES models (name, version)
        );
        """),
    ]

    /// The newest schema version this binary knows.
    public static var latestVersion: Int { migrations.last?.version ?? 0 }

    /// Brings the database to `latestVersion`; returns the versions before and after.
    @discardableResult
    public static func migrate(_ connection: Connection) throws -> (from: Int, to: Int) {
        do {
            return try connection.transaction { c in
                try c.exec("SELECT pg_advisory_xact_lock(730104)")
                try c.exec("""
                    CREATE TABLE IF NOT EXISTS winnow_schema_migrations (
                        version    integer PRIMARY KEY,
                        name       text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())
                    """)
                let current = try c.query("SELECT coalesce(max(version), 0) FROM winnow_schema_migrations").int(0, 0) ?? 0
                if current > latestVersion { throw StoreError.schemaTooNew(database: current, binary: latestVersion) }
                for m in migrations where m.version > current {
                    try c.exec(m.sql)
                    try c.query("INSERT INTO winnow_schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.name])
                }
                return (current, latestVersion)
            }
        } catch {
            throw StoreError.from(error)
        }
    }
}
