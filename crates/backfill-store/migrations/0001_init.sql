-- Initial schema of the backfill state store.
-- Timestamps are RFC 3339 text in UTC with microseconds, so they sort as text and read the same
-- in every database. Counters are plain integers. Keep this file portable-ish SQL: the
-- PostgreSQL store will start from the same shape.

CREATE TABLE runs (
    id               TEXT    NOT NULL PRIMARY KEY,  -- UUIDv7, lower-case hyphenated
    spec_name        TEXT    NOT NULL,
    spec_hash        TEXT    NOT NULL,
    plan_hash        TEXT    NOT NULL,
    spec_text        TEXT    NOT NULL,              -- already redacted by the caller
    owner            TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    partitions_total INTEGER NOT NULL
);

CREATE INDEX runs_by_spec ON runs (spec_name, created_at);
CREATE INDEX runs_by_created ON runs (created_at);

CREATE TABLE partitions (
    run_id       TEXT    NOT NULL REFERENCES runs (id),
    partition_id TEXT    NOT NULL,
    idx          INTEGER NOT NULL,
    window_kind  TEXT    NOT NULL CHECK (window_kind IN ('time', 'key')),
    window_start TEXT    NOT NULL,
    window_end   TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,       -- also the fencing token of the current attempt
    checkpoint   TEXT,                              -- backfill_core::encode_key of the last written key
    rows_read    INTEGER NOT NULL DEFAULT 0,
    inserted     INTEGER NOT NULL DEFAULT 0,
    updated      INTEGER NOT NULL DEFAULT 0,
    unchanged    INTEGER NOT NULL DEFAULT 0,
    deleted      INTEGER NOT NULL DEFAULT 0,
    affected     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    elapsed_ms   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, partition_id),
    UNIQUE (run_id, idx)
);

CREATE INDEX partitions_by_state ON partitions (run_id, state);

CREATE TABLE audit_events (
    seq          INTEGER NOT NULL PRIMARY KEY,
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
