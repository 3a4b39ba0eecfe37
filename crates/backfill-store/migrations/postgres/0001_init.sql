-- Initial schema of the backfill state store, PostgreSQL version of ../0001_init.sql: the same
-- tables, columns and indexes, BIGINT for integers. Timestamps stay RFC 3339 text in UTC with
-- microseconds (fixed width, so they sort as text), exactly as in SQLite, so both stores share
-- one codec. The columns runs are ordered by use the "C" collation, so they sort bytewise as
-- in SQLite whatever the database's collation. Runs inside the store's schema (the
-- connection's search_path).

CREATE TABLE runs (
    id               TEXT    COLLATE "C" NOT NULL PRIMARY KEY,  -- UUIDv7, lower-case hyphenated
    spec_name        TEXT    NOT NULL,
    spec_hash        TEXT    NOT NULL,
    plan_hash        TEXT    NOT NULL,
    spec_text        TEXT    NOT NULL,              -- already redacted by the caller
    owner            TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    created_at       TEXT    COLLATE "C" NOT NULL,
    updated_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    partitions_total BIGINT  NOT NULL
);

CREATE INDEX runs_by_spec ON runs (spec_name, created_at);
CREATE INDEX runs_by_created ON runs (created_at);

CREATE TABLE partitions (
    run_id       TEXT    NOT NULL REFERENCES runs (id),
    partition_id TEXT    NOT NULL,
    idx          BIGINT  NOT NULL,
    window_kind  TEXT    NOT NULL CHECK (window_kind IN ('time', 'key')),
    window_start TEXT    NOT NULL,
    window_end   TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    attempts     BIGINT  NOT NULL DEFAULT 0,       -- also the fencing token of the current attempt
    checkpoint   TEXT,                              -- backfill_core::encode_key of the last written key
    rows_read    BIGINT  NOT NULL DEFAULT 0,
    inserted     BIGINT  NOT NULL DEFAULT 0,
    updated      BIGINT  NOT NULL DEFAULT 0,
    unchanged    BIGINT  NOT NULL DEFAULT 0,
    deleted      BIGINT  NOT NULL DEFAULT 0,
    affected     BIGINT  NOT NULL DEFAULT 0,
    last_error   TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    elapsed_ms   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, partition_id),
    UNIQUE (run_id, idx)
);

CREATE INDEX partitions_by_state ON partitions (run_id, state);

CREATE TABLE audit_events (
    seq          BIGINT  NOT NULL PRIMARY KEY,
    run_id       TEXT,
    partition_id TEXT,
    at           TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    detail       TEXT    NOT NULL,                  -- JSON, hashed exactly as stored
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
);

CREATE INDEX audit_events_by_run ON audit_events (run_id, seq);
