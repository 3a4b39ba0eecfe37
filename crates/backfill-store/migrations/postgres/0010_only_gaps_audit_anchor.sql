-- The audit chain's head (its last event's seq and hash), rewritten in the transaction of
-- every append, so `audit --verify` sees a truncated tail: events removed from the end leave
-- the chain itself intact but no longer reach this anchor. One row, id = 1. Seeded from the
-- store's current last event (a tail removed before this migration cannot be seen).
CREATE TABLE audit_head (
    id   BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
    SELECT 1, seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1;

-- `run --only-gaps`: what the diff before the run found in a partition: NULL (not diffed),
-- 'equal' (its target already matched its source: `done` without an attempt, skipped as
-- correct), or how it differs ('missing', 'partial', 'drifted', as `backfill gaps` says); and its diff counts (NULL when not computed): what it would change.
ALTER TABLE partitions ADD COLUMN gap TEXT CHECK (gap IN ('equal', 'missing', 'partial', 'drifted'));
ALTER TABLE partitions ADD COLUMN would_insert BIGINT;
ALTER TABLE partitions ADD COLUMN would_update BIGINT;
ALTER TABLE partitions ADD COLUMN would_unchanged BIGINT;
ALTER TABLE partitions ADD COLUMN would_extra BIGINT;
