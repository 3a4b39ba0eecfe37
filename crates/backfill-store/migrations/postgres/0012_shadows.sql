-- Shadow writes (`mode = "shadow"`): one row per run that writes into a shadow table. The
-- engine records it once the shadow is created and seeded, with the live table's fingerprint
-- at that moment, so `promote` can refuse when the live table changed since; `state` follows
-- seeded -> promoted -> (unpromoted | cleaned).
CREATE TABLE shadows (
    run_id        TEXT    NOT NULL PRIMARY KEY REFERENCES runs (id),
    live_table    TEXT    NOT NULL,              -- the target table as the spec names it
    shadow_table  TEXT    NOT NULL,              -- <table>__bf_<short run id>
    old_table     TEXT    NOT NULL,              -- <table>__bf_old_<short run id>, after promote
    fingerprint   TEXT,                          -- JSON: what was fingerprinted and the result
    state         TEXT    NOT NULL,              -- seeded | promoted | unpromoted | cleaned
    seeded_rows   BIGINT  NOT NULL DEFAULT 0,    -- live rows copied into the shadow
    seeded_at     TEXT    NOT NULL,
    changed_at    TEXT    NOT NULL
);
