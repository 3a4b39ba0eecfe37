-- Reconciliation after writing (issue 11): the latest comparison of each partition's source
-- and target fingerprints (row count and checksum: the two sums of backfill_core::fingerprint
-- as 32 hex digits), whether it matched, who checked it (`partition` after its last batch,
-- `at_end` of the run, `validate` later) and, in `detail` (JSON), a sample of differing keys
-- or why nothing was compared. One row per partition, overwritten by each check.
CREATE TABLE partition_checks (
    run_id          TEXT NOT NULL,
    partition_id    TEXT NOT NULL,
    status          TEXT NOT NULL,
    source_rows     BIGINT,
    source_checksum TEXT,
    target_rows     BIGINT,
    target_checksum TEXT,
    detail          TEXT NOT NULL,
    checked_by      TEXT NOT NULL,
    checked_at      TEXT NOT NULL,
    PRIMARY KEY (run_id, partition_id)
);
CREATE INDEX partition_checks_status ON partition_checks (run_id, status);
