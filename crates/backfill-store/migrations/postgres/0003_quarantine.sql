-- Rows the target rejected (constraint violations, values out of range), kept with their
-- reason so nothing is lost: one row per (run, partition, key); a replay overwrites it.
CREATE TABLE quarantine (
    run_id       TEXT    NOT NULL REFERENCES runs (id),
    partition_id TEXT    NOT NULL,
    row_key      TEXT    NOT NULL,   -- backfill_core::encode_key of the row's key
    error        TEXT    NOT NULL,   -- the database's reason, secrets masked
    row_json     TEXT    NOT NULL,   -- the rejected row as a JSON object
    attempt      BIGINT  NOT NULL,
    at           TEXT    NOT NULL,
    PRIMARY KEY (run_id, partition_id, row_key)
);
