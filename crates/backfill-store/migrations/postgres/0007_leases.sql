-- Leases: a time-limited, fenced claim on a resource. Today the resource `run:<id>` is the
-- right to execute a run (one process at a time); the multi-worker issue extends it to
-- partitions. A claim is one compare-and-set on this row; every write of the holder checks
-- that `fence` is still the number it was given, so a process that lost its claim (stopped
-- past its lease, partitioned away) can never write again.
CREATE TABLE leases (
    resource     TEXT    NOT NULL PRIMARY KEY,
    fence        BIGINT  NOT NULL,             -- bumped by every claim: the fencing token
    holder_host  TEXT    NOT NULL,
    holder_pid   BIGINT NOT NULL,
    holder_token TEXT    NOT NULL,              -- random per claim
    claimed_at   TEXT    NOT NULL,
    renewed_at   TEXT    NOT NULL,
    expires_at   TEXT    NOT NULL,              -- RFC 3339 UTC; past it, anyone may claim
    released     BIGINT  NOT NULL DEFAULT 0     -- 1: the holder let go (anyone may claim)
);

-- A run of a million partitions is never read whole: the engine pages its pending work by
-- plan index (keyset on (run_id, state, idx)), and `status` sums the partitions that started
-- (a partial index: a partition enters it at its first attempt, so creating a run does not
-- pay for it). The new index replaces partitions_by_state, which it extends.
DROP INDEX partitions_by_state;
CREATE INDEX partitions_by_state ON partitions (run_id, state, idx);
CREATE INDEX partitions_started ON partitions (run_id) WHERE attempts > 0;
