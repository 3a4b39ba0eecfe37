-- Live controls of a run, written by `pause`, `resume`, `cancel` and `throttle` from any
-- terminal and polled by the process executing the run (about every 250 ms), plus the live
-- telemetry that process publishes for `status`. One row per run, created on first use.
CREATE TABLE run_controls (
    run_id             TEXT    NOT NULL PRIMARY KEY REFERENCES runs (id),
    version            BIGINT  NOT NULL DEFAULT 0,  -- bumped by every command
    requested          TEXT,                        -- 'pause' | 'cancel' | NULL
    requested_by       TEXT,
    request_reason     TEXT,
    resumes            BIGINT  NOT NULL DEFAULT 0,  -- bumped by `resume` (closes the breaker)
    rows_per_second    BIGINT,                      -- NULL: the spec's; 0: no limit
    batches_per_second BIGINT,                      -- NULL: the spec's; 0: no limit
    concurrency        BIGINT,                      -- NULL: the spec's
    extra_rows         BIGINT  NOT NULL DEFAULT 0,  -- budget extensions (`resume --extend-budget`)
    extra_duration_ms  BIGINT  NOT NULL DEFAULT 0,
    extra_partitions   BIGINT  NOT NULL DEFAULT 0,
    extra_cost         DOUBLE PRECISION NOT NULL DEFAULT 0,
    active_ms          BIGINT  NOT NULL DEFAULT 0,  -- running time summed over every session
    heartbeat_at       TEXT,                        -- the executing process's last report
    live               TEXT                         -- JSON: current rate and cause, probe p90…
);

-- Every change of the run's effective rate with its cause: the time series `status` and the
-- dashboard read.
CREATE TABLE rate_changes (
    run_id     TEXT    NOT NULL REFERENCES runs (id),
    seq        BIGINT  NOT NULL,
    at         TEXT    NOT NULL,
    rate       DOUBLE PRECISION,                    -- rows per second; NULL: no limit
    cause      TEXT    NOT NULL,
    detail     TEXT    NOT NULL,                    -- JSON
    PRIMARY KEY (run_id, seq)
);

-- Why a paused run is paused: user, budget_exhausted, circuit_open, outside_window, stopped.
ALTER TABLE runs ADD COLUMN pause_reason TEXT;
