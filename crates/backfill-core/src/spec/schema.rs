//! Every spec key, declared once with its type, default and documentation.
//!
//! The parser uses this table to reject unknown keys (with a "did you mean" suggestion) and the
//! reference documentation in `docs/spec.md` is generated from it; a test fails when the
//! committed file is stale.

/// One key of the spec file.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Dotted path; `scope.list[].start` is a key of each element of the `scope.list` array.
    pub path: &'static str,
    /// The TOML type, in words.
    pub kind: &'static str,
    /// The default when absent; `None` means required (or "not set" when `optional`).
    pub default: Option<&'static str>,
    /// True when the key may be absent without a default.
    pub optional: bool,
    /// What the key means.
    pub doc: &'static str,
}

const fn key(
    path: &'static str,
    kind: &'static str,
    default: Option<&'static str>,
    optional: bool,
    doc: &'static str,
) -> KeyDoc {
    KeyDoc {
        path,
        kind,
        default,
        optional,
        doc,
    }
}

/// Sections (tables) of the spec, with their documentation.
pub const SECTIONS: &[(&str, &str)] = &[
    (
        "",
        "Top level: what the backfill is called and why it exists.",
    ),
    (
        "source",
        "Where rows come from: a connection and a query for one window. Required for \
         `upsert` and `replace`; optional in `sql` mode, where the statement reads its own rows \
         and `[source]`, when given, only counts the rows of each window for `plan`'s estimates \
         (and `limits.split_rows`, `order = \"largest_first\"`), so its query need not return \
         the key columns.",
    ),
    ("target", "Where rows go, and how they are written."),
    (
        "scope",
        "What to cover. Exactly one of: a time range (`start`, `end`, `partition`), a key range \
         (`key`, `from`, `to`, `chunk`), or an explicit `list` of windows.",
    ),
    (
        "limits",
        "How hard to push, and when to stop: concurrency, rates, batch size, retries, budget, \
         run window, partition order and the circuit breaker.",
    ),
    (
        "throttle",
        "Adaptive throttling, to protect a live database. Its signals: what live traffic \
         itself feels, read from the database named by `watch` every `interval` (the mean time \
         per call of its statements, sessions waiting on WAL or I/O or threads running, the \
         replica lag), and optionally a probe statement timed every `interval`; before the \
         run starts a baseline of each is measured over `baseline_probes` intervals. The live \
         mean per call is judged over the intervals since the latest cut, as soon as they hold \
         enough calls for a rise of `max_latency_increase` to stand out of the noise measured \
         at rest (at least 3 intervals, at most `window`); the climb is paced to that many \
         intervals instead of `window`, so on busy traffic the rate settles within a minute; \
         while every live window, its noise included, stays under half the allowed rise the \
         rate doubles per such window, and only near the limit does it climb by \
         `increase_fraction` steps. The rate starts at its floor and climbs while healthy (slow \
         start: a run never opens at full speed on a database it has not felt yet). The climb \
         never more than doubles the rate over one window of probes (×2^(1/`window`) per \
         interval at most), and grows it by at most ×1.25 per window when it probes above the \
         level it settled at after a cut, so the rate cannot outrun what the moving p90 can \
         see. While the run goes, when the p90 of the last `window` probes rises more than \
         `max_latency_increase` above the baseline (at least 0.1 ms, so sub-millisecond \
         baselines do not flap, and above the probe's own noise: the p90 that a window of the \
         baseline's probes reaches one time in ten, computed from the baseline; a warning says \
         when that noise, not `max_latency_increase`, sets the limit), when a `watch` signal \
         exceeds its limit, when the replica lag exceeds `max_replica_lag`, or when the run \
         sees \
         lock timeouts, deadlocks or \"too many connections\", the rate is multiplied by \
         `decrease_factor` (at most once every two intervals, down to `min_rate_fraction` of \
         the maximum); each healthy interval raises it by `increase_fraction` of the rate of \
         the latest cut, up to 75% of that rate, where it stays for 30 s of healthy intervals \
         before climbing on (by `increase_fraction` of itself once above the latest cut; of \
         the maximum before any cut). \
         The maximum is `max_rows_per_second`, or `limits.rows_per_second` (the smaller when \
         both are set); one of them is required. Every change is logged with its cause.",
    ),
    (
        "validate",
        "Reconciliation after writing: after each partition (before it is marked done) and at \
         the end of the run, the source's and the target's fingerprints of the window are \
         compared: row count and an order-independent checksum of every compared column, \
         computed inside each database (the same definition as `backfill diff`). A difference \
         of more than `tolerance` rows fails the partition with `reconcile_mismatch`, naming up \
         to 5 differing keys; it is not retried, since a mismatch right after a correct write \
         means the data moved (a concurrent writer) or the transform is not deterministic. \
         In `upsert` mode without `propagate_deletes`, target rows whose key is not in the \
         source are kept by design and reported (`extra_kept`), not a mismatch. \
         Both sides' counts and checksums are stored per partition; `backfill validate` \
         re-runs the comparison at any time. Without this section the defaults apply where a \
         column places rows in partitions (`target.window_column` in `replace` mode, \
         `source.time_column`, or a one-column key of a key scope) and the target has no \
         `guard`; elsewhere partitions are \"not verified\", with the reason shown by `plan` \
         and the run summary. With the section, a reconciliation that cannot work is a spec \
         error. In `sql` mode, where the target's rows are the statement's own, give \
         `source_check` and `target_check` instead. Not part of the plan hash.",
    ),
    (
        "canary",
        "Canary partitions: a few representative partitions run first; the rest runs only when \
         every one of them succeeded (a failed canary partition, whatever the cause, stops the \
         run: state `failed`, reason `canary_failed`, no other partition touched). With \
         `require_approval` a person then approves the run (`backfill approve RUN --reason …`).",
    ),
    (
        "slo",
        "Objectives of the run. `status`, the dashboard, its API and `/metrics` show the \
         projected completion against `complete_within` and the error budget's burn rate over \
         the last 5 minutes and the last hour. The error budget is the failed attempts \
         `success_rate` allows: `(1 - success_rate) × the plan's partitions`; a burn rate of 1 \
         spends it exactly by the end of the run. With this section the engine guards the \
         budgets: when the failed attempts of the last 5 minutes pass half the error budget, \
         or the rows read or the cost of the last 5 minutes pass half of \
         `limits.budget.rows` or `limits.budget.cost.max`, it throttles (half the rate and \
         half the concurrency, an audited `run.throttled` with cause `burn_rate`); if the \
         next 5 minutes burn as much again, it pauses the run with reason `burn_rate`. \
         `backfill resume RUN` continues, still throttled (`backfill throttle` lifts it). \
         Not part of the plan hash.",
    ),
];

/// Every key of the spec.
pub const SPEC_KEYS: &[KeyDoc] = &[
    key(
        "name",
        "string",
        None,
        false,
        "Name of the backfill: letters, digits, `_` and `-`. Runs of the same name resume each other.",
    ),
    key(
        "reason",
        "string",
        None,
        true,
        "Why this backfill exists; recorded on every run. `backfill run --reason` overrides it; a run needs one or the other.",
    ),
    key(
        "source.url",
        "string",
        None,
        false,
        "Connection URL: `sqlite://events.db` (relative to the spec file), `postgres://user:${PGPASSWORD}@host:5432/db`, `mysql://user@host:3306/db` (`mariadb://` too). `${VAR}` is replaced by the environment variable VAR, so passwords stay out of the file. TLS: add `?sslmode=require` (PostgreSQL) or `?ssl-mode=REQUIRED` (MySQL).",
    ),
    key(
        "source.query",
        "string",
        None,
        false,
        "SQL returning the rows of one window. Must use `:start` and `:end` (bound parameters, never pasted into the text) and, in `upsert` and `replace` modes, return the target's key columns.",
    ),
    key(
        "source.time_format",
        "string",
        Some("\"rfc3339\" for SQLite, \"native\" otherwise"),
        false,
        "How `:start`/`:end` are bound for time scopes: `native` (the database's timestamp type: PostgreSQL `timestamptz`, MySQL `DATETIME` in UTC), `rfc3339` (text, UTC, `Z` suffix), `unix` (seconds), `unix_ms`, or a strftime pattern such as `%Y-%m-%d %H:%M:%S`. Every PostgreSQL session of the engine runs with `TimeZone = UTC` and `DateStyle = ISO, MDY` (set by the driver when it connects, over `PGOPTIONS` and role or database settings), so a text timestamp without an offset that PostgreSQL reads (a SQLite source's into a `timestamptz` column, or a literal in the query) is UTC.",
    ),
    key(
        "source.time_column",
        "string",
        None,
        true,
        "The column the query filters on; `check` samples it to warn when `time_format` does not match the data.",
    ),
    key(
        "target.url",
        "string",
        None,
        false,
        "Connection URL of the target database (same forms as `source.url`).",
    ),
    key(
        "target.table",
        "string",
        None,
        true,
        "Target table (optionally `schema.table`). Required for `upsert` and `replace`.",
    ),
    key(
        "target.key",
        "array of strings",
        None,
        true,
        "Key columns: the upsert conflict target and the order of keyset pagination. Required for `upsert` and `replace`, not used in `sql` mode; a single string is accepted.",
    ),
    key(
        "target.mode",
        "string",
        Some("\"upsert\""),
        false,
        "`upsert` (insert or update by key, unchanged rows untouched), `replace` (delete the window, insert it, one transaction per partition), `sql` (run `target.sql` once per partition in the target) or `shadow` (upsert by key into a new table `<table>__bf_<run>` made like `table`, with its keys and indexes; the live table is untouched until `backfill promote RUN` swaps the two atomically).",
    ),
    key(
        "target.window_column",
        "string",
        None,
        true,
        "`replace` mode: the target column compared with `:start`/`:end` when deleting a window; `upsert` mode with `propagate_deletes`: the column that bounds a window's deletions. `shadow` mode (default `source.time_column`): the column that places a live row inside or outside the scope, for `seed_outside_scope` and for the live table's fingerprint `promote` compares.",
    ),
    key(
        "target.partition_exchange",
        "boolean",
        Some("false"),
        false,
        "`replace` mode on a PostgreSQL declared-partitioned table (range-partitioned by `window_column`): a window that is exactly one partition is loaded into a standalone table made like it (`CREATE TABLE … (LIKE partition INCLUDING ALL)`) and exchanged for it in the window's one transaction (detach the old partition, attach the new one, drop the old), instead of a `DELETE` and inserts in the live table: no dead rows, no index churn on the live partition. The exchange takes an `ACCESS EXCLUSIVE` lock on the parent for its last few statements, waiting at most 10 s for it (a timeout is retried). A window that is not one partition (other bounds, no partition, not a partitioned table) is replaced in place. While a window loads, its live partition is locked `SHARE`: readers go on, writers of that partition wait for the exchange (so nothing they write is dropped with the old partition). The new partition has the old one's columns, defaults, constraints, indexes (the parent's keep their names) and the parent's triggers, but not what belongs to the partition alone: privileges granted on it, its owner, triggers, row-level security or publication membership of its own, and its own indexes get new names. A window replaced in place holds the parent's lock for its whole load, so an exchange in the same run waits for it (a spec whose windows are all partitions avoids this). Not with `undo`; on other databases it changes nothing.",
    ),
    key(
        "target.seed_outside_scope",
        "boolean",
        Some("false"),
        false,
        "`shadow` mode: copy the live table's rows outside the scope (by `window_column`) into the shadow when it is created, so the promoted table keeps them; without it the promoted table holds only what the run wrote.",
    ),
    key(
        "target.time_format",
        "string",
        None,
        true,
        "`replace` and `sql` modes: how the window is bound in the target; defaults to `source.time_format`.",
    ),
    key(
        "target.sql",
        "string",
        None,
        true,
        "`sql` mode: the statement run in the target for each partition, with `:start` and `:end`.",
    ),
    key(
        "target.guard",
        "string",
        None,
        true,
        "`upsert` mode: a column such as `updated_at` or `version`; a target row whose guard value is newer than the incoming row's is never overwritten, so live writes made during the backfill win.",
    ),
    key(
        "target.pushdown",
        "boolean",
        Some("true"),
        false,
        "When source and target are both SQLite files, SQLite moves each batch itself (`INSERT … SELECT` with the source attached): the same batches, checkpoints and counts, several times faster. `false` moves rows through the engine.",
    ),
    key(
        "target.undo",
        "boolean",
        Some("true in `upsert` and `replace`, else false (true with propagate_deletes)"),
        false,
        "Keep an undo log so `backfill rollback RUN` can restore the run's scope: for each key the run touched, the operation (inserted, updated, deleted), the row as it was before the run (the first before-image only: a replayed batch never overwrites it) and a hash of the row the run wrote (a row edited since is a conflict). It lives in the target's database, in the table `<table>__bf_undo`, written in each batch's transaction; `backfill cleanup RUN` drops a run's part. A run keeps the setting it was created with: changing `undo` in the spec does not change it for a run that is resumed (`--new` starts one with the new setting). On PostgreSQL an `upsert` logs only the rows it inserts or changes, inside the write's own statement, and a `replace` (key with a unique index) logs each window once at its commit, only the rows its rewrite deleted, inserted or changed. On SQLite the rows each write inserts or changes are logged inside its transaction, by temporary triggers (seen by the run's own connection only) or, for new keys and `replace` rewrites moved inside SQLite, by statements after the write; each logged row names its run by a short tag (`#1`, `#2`, …, mapped to the run id in `<table>__bf_undo_runs`) and holds a 16-byte digest, which keeps the log's rows small (a log written so is read by this version and later ones). On MySQL an `upsert` stages each batch in a temporary table and logs, by joins over it, the rows it inserts or changes (a row is unchanged when every column equals the target's as a value and as bytes; every existing row when the target has an `INSERT` or `UPDATE` trigger, which may change rows the write leaves as they are), and a `replace` keeps its window's rows and its batches' keys in temporary tables and logs at the window's commit only the rows its rewrite deleted, inserted or changed (MySQL refuses temporary tables inside a transaction under `enforce_gtid_consistency` with `binlog_format = STATEMENT`: set `undo = false` there). A rollback deletes what the run wrote and inserts the before-images back, so the target's own insert triggers fire on them. With `propagate_deletes` in `upsert` every key the run writes is logged. On by default, since the log is written set-wise and only of what changes (bench/undo.py, 20% of the rows changed or new: PostgreSQL, 1M rows, `upsert` ~1.1–1.3x the run without it, `replace` ~1.4–1.6x; SQLite, 1M rows, `upsert` ~1.3–1.5x, `replace` ~1.8x; MySQL (MariaDB 10.11), 200k rows, `upsert` ~1.3x, `replace` ~1.8x; more for a full copy into an empty table, where every row is logged; `undo = false` turns it off). Refused in `sql` mode; off by default for a `shadow` run (its rollback swaps the old table back) and with `partition_exchange` (which keeps no log).",
    ),
    key(
        "target.propagate_deletes",
        "boolean",
        Some("false"),
        false,
        "Delete target rows of a window whose key is no longer in the source, counted as `deleted`; this is how a backfill honours erasure requests. `replace` does by nature; `upsert` deletes after each window's last batch, through the undo log (needs `undo`), bounding the window by `window_column` (or `[source] time_column`). Example: `propagate_deletes = true` with `window_column = \"created_at\"`.",
    ),
    key(
        "scope.start",
        "datetime or string",
        None,
        true,
        "Time scope: inclusive start, RFC 3339 (`2026-03-01T00:00:00Z`), or a date / local datetime read in `timezone`.",
    ),
    key(
        "scope.end",
        "datetime or string",
        None,
        true,
        "Time scope: exclusive end, same forms as `start`.",
    ),
    key(
        "scope.partition",
        "string",
        None,
        true,
        "Time scope: partition size: `15m`, `1h`, `1d`, `1w`, `1mo` (calendar month).",
    ),
    key(
        "scope.timezone",
        "string",
        Some("\"UTC\""),
        false,
        "Time scope: IANA zone for dates without an offset and for calendar steps (days stay midnight to midnight across DST).",
    ),
    key(
        "scope.key",
        "string",
        None,
        true,
        "Key scope: the integer column the windows bound (informational; the query uses `:start`/`:end`).",
    ),
    key(
        "scope.from",
        "integer",
        None,
        true,
        "Key scope: inclusive first key.",
    ),
    key(
        "scope.to",
        "integer",
        None,
        true,
        "Key scope: exclusive end key (`key < to`).",
    ),
    key(
        "scope.chunk",
        "integer",
        None,
        true,
        "Key scope: keys per partition.",
    ),
    key(
        "scope.list",
        "array of tables",
        None,
        true,
        "Explicit windows, e.g. `[{ start = \"2026-03-01T00:00:00Z\", end = \"2026-03-02T00:00:00Z\" }]` or integer bounds.",
    ),
    key(
        "scope.list[].start",
        "datetime, string or integer",
        None,
        false,
        "Inclusive start of one listed window.",
    ),
    key(
        "scope.list[].end",
        "datetime, string or integer",
        None,
        false,
        "Exclusive end of one listed window.",
    ),
    key(
        "limits.concurrency",
        "integer",
        Some("4"),
        false,
        "Partitions processed at the same time.",
    ),
    key(
        "limits.rows_per_second",
        "integer",
        None,
        true,
        "Global cap on rows read per second for the whole run, granted a tenth of a second's worth at a time, so the run never bursts above it, also while `[throttle]` or `backfill throttle` changes it; unlimited when absent.",
    ),
    key(
        "limits.batches_per_second",
        "integer",
        None,
        true,
        "Global cap on batches written per second for the whole run (each batch is one write and one checkpoint); unlimited when absent. Holds together with `rows_per_second`.",
    ),
    key(
        "limits.split_rows",
        "integer",
        None,
        true,
        "Split a partition before it starts when the source holds more rows than this in its window: it becomes `ceil(rows / split_rows)` children (at most 64), equal slices of its window (ids `<id>.<n>`) that run like any partition, so one huge day does not stall the run. Costs one `COUNT(*)` of the window per partition. Off when absent.",
    ),
    key(
        "limits.split_slow",
        "number",
        None,
        true,
        "Split a running partition once it has run this many times the median time of the partitions finished so far (at least 3, and at least one second): the rest of its window, after its checkpoint, becomes `2 × concurrency` children that other workers take. Between 1.5 and 1000; off when absent.",
    ),
    key(
        "limits.batch_rows",
        "integer",
        Some("5000"),
        false,
        "Rows per batch: one read, one write and one checkpoint. At most 10,000,000 (a batch is held in memory). A batch of wide rows also ends at the row that brings it to 8 MiB of values, so memory stays bounded whatever the row width (rows that move inside SQLite, the SQLite-to-SQLite pushdown, are batched by rows only).",
    ),
    key(
        "limits.max_attempts",
        "integer",
        Some("6"),
        false,
        "Attempts per partition before it fails, counting the first.",
    ),
    key(
        "limits.retry_base",
        "duration string",
        Some("\"200ms\""),
        false,
        "Backoff scale of the first retry (full jitter, doubling per attempt).",
    ),
    key(
        "limits.retry_cap",
        "duration string",
        Some("\"30s\""),
        false,
        "Longest wait between two attempts.",
    ),
    key(
        "limits.budget",
        "table",
        None,
        true,
        "What the run may use before it pauses with reason `budget_exhausted`, e.g. `{ rows = 100_000_000, duration = \"6h\", partitions = 300 }`. Every field is optional. At 80% of any limit the run warns (log and `status`); `backfill resume RUN --extend-budget rows=…,duration=…,partitions=…,cost=…` raises the limits and continues.",
    ),
    key(
        "limits.budget.rows",
        "integer",
        None,
        true,
        "Most rows the run may read.",
    ),
    key(
        "limits.budget.duration",
        "duration string",
        None,
        true,
        "Longest running time (`6h`), summed over every session of the run; paused time does not count.",
    ),
    key(
        "limits.budget.partitions",
        "integer",
        None,
        true,
        "Most partitions the run may finish.",
    ),
    key(
        "limits.budget.cost",
        "table",
        None,
        true,
        "Turns rows and time into money, e.g. `{ per_million_rows = 0.40, per_hour = 2.0, currency = \"USD\", max = 50.0 }`: `plan` shows the projected cost, `status` the cost so far and to complete; `max` caps it like the other limits.",
    ),
    key(
        "limits.budget.cost.per_million_rows",
        "number",
        Some("0"),
        false,
        "Price of reading one million rows.",
    ),
    key(
        "limits.budget.cost.per_hour",
        "number",
        Some("0"),
        false,
        "Price of one hour of running time.",
    ),
    key(
        "limits.budget.cost.currency",
        "string",
        Some("\"USD\""),
        false,
        "Currency of the prices, shown with every amount.",
    ),
    key(
        "limits.budget.cost.max",
        "number",
        None,
        true,
        "Most the run may cost; the run pauses with reason `budget_exhausted` when it is reached.",
    ),
    key(
        "limits.window",
        "string",
        None,
        true,
        "Daily hours the run may work in, `HH:MM-HH:MM` with an optional IANA zone (`22:00-06:00 Europe/Paris`; UTC by default); may cross midnight. Outside it the run pauses itself at the edge (in-flight batches finish and checkpoint) and resumes at the next opening. On DST days a wall time that does not exist opens at the end of the gap, and a repeated one is its first occurrence.",
    ),
    key(
        "limits.order",
        "string or array of strings",
        Some("\"oldest_first\""),
        false,
        "The order partitions run in: `oldest_first`, `newest_first`, `largest_first` (by estimated rows; unknown estimates last, oldest first), or a priority list such as `[\"2025-12-24\", \"2025-12-20..2025-12-23\", \"1000..2000\"]`: partitions overlapping the first item run first, then the second…, then the rest oldest first. An item is a date (the whole day, in `scope.timezone`), an RFC 3339 instant, `START..END` of those (a date END includes that day, an instant END is excluded), or a key range `[START, END)`.",
    ),
    key(
        "limits.circuit_breaker",
        "table or false",
        Some("{ window = 50, max_error_rate = 0.2 }"),
        false,
        "Pauses the run with reason `circuit_open` when too many of the last batches failed, so a failing target is not hammered; `resume` closes it. `false` turns it off.",
    ),
    key(
        "limits.circuit_breaker.enabled",
        "boolean",
        Some("true"),
        false,
        "`false` turns the breaker off.",
    ),
    key(
        "limits.circuit_breaker.window",
        "integer",
        Some("50"),
        false,
        "Batches in the sliding window (at most 100000).",
    ),
    key(
        "limits.circuit_breaker.max_error_rate",
        "number",
        Some("0.2"),
        false,
        "The breaker opens when failed batches exceed this fraction of `window`, counted from the first batch (11 failures in the first 11 batches open a 50/0.2 breaker). At least 0, below 1.",
    ),
    key(
        "throttle.probe",
        "table",
        None,
        true,
        "Optional: a statement whose latency is timed every interval, e.g. `{ url = \"postgres://app:${PGPASSWORD}@db/shop\", sql = \"SELECT 1 FROM orders ORDER BY id DESC LIMIT 1\" }`, for databases that do not offer the signals of `watch`. A probe on a hot row queues behind live traffic's own locks and amplifies their noise: prefer `watch` where it offers `pg_stat_statements` or statement digests. Without `watch` or `probe` only errors throttle.",
    ),
    key(
        "throttle.probe.url",
        "string",
        None,
        false,
        "Connection URL of the live database (same forms and `${VAR}` expansion as `source.url`).",
    ),
    key(
        "throttle.probe.sql",
        "string",
        None,
        false,
        "A cheap statement representative of live traffic.",
    ),
    key(
        "throttle.watch",
        "table",
        None,
        true,
        "The live database whose own signals are read every interval, with no probe statement, e.g. `{ url = \"postgres://monitor:${PGPASSWORD}@db/shop\" }`. PostgreSQL: the live statements' mean time per call from `pg_stat_statements` deltas (the extension must be in `shared_preload_libraries`, which takes a server restart, and created with `CREATE EXTENSION pg_stat_statements` in this database; a role with `pg_read_all_stats` sees every user's statements), counting only this database's statements that are not the backfill's (our connections set `application_name = backfill`, and the query ids of those sessions are left out), the live transactions' time, from `pg_stat_database` deltas (PostgreSQL 14+, no extension: the time this database's sessions spent active or idle inside a transaction per commit or rollback, so a client slow between its statements, short of CPU say, shows where each statement's own time does not move; left out while other backfill sessions use this database, whose transactions it cannot tell apart), and the live sessions waiting on WAL or I/O (`pg_stat_activity` wait events). MySQL/MariaDB: the statements' mean time per call from `performance_schema.events_statements_summary_by_digest` deltas in this schema (needs `performance_schema = ON`; MariaDB 10.11 was seen to record no digest for the executions of server-side prepared statements, only for statements sent as text, which most application drivers do), and `Threads_running` (which counts the backfill's own running threads too, so it cuts only above `limits.concurrency` threads over its level at rest). The replica lag too, when `max_replica_lag` is set. Each is compared with its level at rest, measured before the run over `baseline_probes` intervals, allowing `max_latency_increase` or the noise of the comparison, whichever is larger (the noise of the window's mean and of the level's: a level measured over a 2 s rest check strays as much as a 2 s window); for the transactions' time, `max_latency_increase` is a share of the time at rest plus the round trip to the database measured then (the median time of the watch's first statement per reading, at most 1 ms counted: a client pays a round trip per transaction that the server's counters do not see; `status` shows it). Live traffic drifts by itself (by as much as 10% from one minute to the next on a busy machine): when the rate is at its floor (`min_rate_fraction`) and a whole window of a latency signal is still over its limit, that window becomes the signal's baseline if it is within two allowed rises of the level at rest, so drift does not hold the run at its floor for good (`status` counts these moves), and it comes back down with live traffic once a full window is faster again (never under the level at rest); beyond two allowed rises the floor holds. A signal the database does not offer is left out and said so in the log; `backfill check` lists what the database offers.",
    ),
    key(
        "throttle.watch.url",
        "string",
        None,
        false,
        "Connection URL of the live database (`postgres://` or `mysql://`/`mariadb://`; same forms and `${VAR}` expansion as `source.url`).",
    ),
    key(
        "throttle.interval",
        "duration string",
        Some("\"1s\""),
        false,
        "Time between two probes and between two rate decisions (10ms to 10m).",
    ),
    key(
        "throttle.baseline_probes",
        "integer",
        Some("20"),
        false,
        "Probes (and readings of `watch`) measured before the run starts to set the baseline (at least 5).",
    ),
    key(
        "throttle.window",
        "integer",
        Some("20"),
        false,
        "Probes in the moving p90 compared with the baseline; as many as `baseline_probes` \
         compares like with like (the p90 of a few probes is close to their maximum, which one \
         hiccup decides). After a cut, the p90 is judged again once this many new probes are in. \
         More probes per window (with a shorter `interval`) make the p90 finer: windows of 40 \
         probes of one PostgreSQL at rest spread ±20% around their median p90, more than a +10% \
         limit.",
    ),
    key(
        "throttle.max_latency_increase",
        "number",
        Some("0.10"),
        false,
        "Allowed rise over the level at rest, as a fraction (`0.10` = +10%): of the probe's p90, of what a client of the live transactions waits (their mean time in the server plus the round trip to it measured at rest, at most 1 ms counted), and of the live statements' mean time per call, or, where transactions are watched too, of a statement's share of what its client waits (the transaction's time and round trip spread over its statements), each at least the signal's own noise.",
    ),
    key(
        "throttle.max_replica_lag",
        "duration string",
        None,
        true,
        "Cut the rate while the replica lag of the watched database (of the probe's without `watch`) exceeds this (`5s`); needs `watch` or `probe`.",
    ),
    key(
        "throttle.decrease_factor",
        "number",
        Some("0.5"),
        false,
        "Multiplier of a cut, between 0 and 1.",
    ),
    key(
        "throttle.min_rate_fraction",
        "number",
        Some("0.01"),
        false,
        "The lowest rate, as a fraction of the maximum: low, because the rate that live traffic \
         tolerates can be a few percent of an unthrottled run's.",
    ),
    key(
        "throttle.increase_fraction",
        "number",
        Some("0.05"),
        false,
        "Rise per healthy interval: this fraction of the rate of the latest cut while below it, of the maximum before any cut, of the rate itself above the latest cut.",
    ),
    key(
        "throttle.max_rows_per_second",
        "integer",
        None,
        true,
        "The throttle's maximum rate (rows per second); defaults to `limits.rows_per_second`.",
    ),
    key(
        "throttle.rest_check",
        "duration string",
        Some("\"2s\""),
        false,
        "How long a rest check measures live traffic with the backfill held (`\"0s\"` turns rest checks off; else between two intervals and 1m). Live traffic drifts by itself, by more than a +10% rise from one minute to the next on a busy machine, so a comparison with a level measured before the run cannot tell that drift from the backfill's own cost. With a `watch`, when a live latency signal asks for a cut above the floor, whenever the rate has doubled since the last check (or since the run began: the level measured before the run may have caught a stall), and at least every `rest_check_every`, the throttle holds the backfill (the batches in flight finish and live traffic's counters settle, about a second more), measures live traffic at rest for this long, and makes that its baseline. It then judges the window read before the hold against it: the rate is cut only when the backfill's window is over the new limit, and kept otherwise (a drift, not the backfill). The limit counts the noise of both measurements: a short check holds few live transactions, so a rise must be larger to show against it; a longer one is more precise and holds writes longer. The baseline moves at most two allowed rises above the level measured before the run; past that the cut goes ahead. `status` counts the checks, what each decided, and shows a check in progress. Costs about `rest_check` plus a second of no writes per check.",
    ),
    key(
        "throttle.rest_check_every",
        "duration string",
        Some("\"60s\""),
        false,
        "Longest time between two rest checks while the rate is above its floor (between 10 times `rest_check` and 1h): a periodic check keeps the baseline true when live traffic drifts down too, where a stale higher baseline would let the rate climb into harm.",
    ),
    key(
        "validate.after_partition",
        "boolean",
        Some("true"),
        false,
        "Reconcile each partition after its last batch, before it is marked done: one fingerprint query per side for its window. Each check reads the partition's window of the target by the window column: without an index leading with it, every check scans the whole table, which `check` and the run warn about (create the index, or set `after_partition = false` and `at_end = true` to reconcile in one pass at the end).",
    ),
    key(
        "validate.at_end",
        "boolean",
        Some("false (true when after_partition = false)"),
        false,
        "At the end of the run, re-check every finished partition with one bucketed query per side (per 1000 partitions) and record the results. Off by default when `after_partition` is on: it proves again what each partition proved as it ended, at a second read of both sides (W1: 2.38x of a run without reconciliation, against 1.56x); `backfill validate RUN` does it at any time.",
    ),
    key(
        "validate.tolerance",
        "integer",
        Some("0"),
        false,
        "Rows a partition may differ by (the difference of the row counts; a differing checksum with equal counts counts as one row) before it is a mismatch.",
    ),
    key(
        "validate.columns",
        "array of strings",
        None,
        true,
        "Compared columns (the key columns are always compared); when not set, every target column the source query returns (a column the backfill does not write, such as a load time, is not compared). Floats have no fingerprint: leave them out here.",
    ),
    key(
        "validate.window_column",
        "string",
        None,
        true,
        "The column, in the source's result and in the target table, whose value places a row in a partition; defaults to `target.window_column` in `replace` mode, else `source.time_column`, else a one-column key of a key scope.",
    ),
    key(
        "validate.source_check",
        "string",
        None,
        true,
        "`sql` mode: a query with `:start` and `:end` returning one row (e.g. `SELECT count(*), sum(amount) FROM events WHERE ts >= :start AND ts < :end`), run on the source's database (the target's without `[source]`); its row must equal `target_check`'s, value by value as text.",
    ),
    key(
        "validate.target_check",
        "string",
        None,
        true,
        "`sql` mode: the query with `:start` and `:end` run on the target whose one row must equal `source_check`'s.",
    ),
    key(
        "source.ready",
        "string",
        None,
        true,
        "Source readiness: SQL run in the source before a partition is read, with `:start` and `:end` bound to its window like the query (e.g. `SELECT count(*) FROM loads WHERE day >= :start AND day < :end AND finished`). True or a non-zero number means the window's data is complete; false, 0, NULL or no row means not yet: the partition waits in state `waiting_source` (its worker slot held), re-checked with backoff, and fails with reason `source_not_ready` after `ready_timeout`. `plan` runs it for each partition and lists those not ready. Not part of the plan hash.",
    ),
    key(
        "source.ready_timeout",
        "string",
        Some("\"6h\""),
        false,
        "How long a partition waits for `source.ready` before it fails (`source_not_ready`); a duration such as `30m` or `6h`.",
    ),
    key(
        "source.ready_interval",
        "string",
        Some("\"30s\""),
        false,
        "The first delay before `source.ready` is checked again; it doubles after every check, up to 5 minutes.",
    ),
    key(
        "canary.partitions",
        "integer",
        None,
        false,
        "How many partitions run first: the first, the last, the largest by the source's row count (when it can count), then random ones from `seed`. The choice is recorded in the audit event `canary.chosen`.",
    ),
    key(
        "canary.seed",
        "integer",
        None,
        true,
        "Seed of the random picks (a whole number from 0): the same seed and plan pick the same partitions. Without it a random seed is drawn and recorded.",
    ),
    key(
        "canary.require_approval",
        "boolean",
        Some("false"),
        false,
        "After the canary passed, wait in run state `awaiting_approval` until `backfill approve RUN`; the executing process waits (a stopped one continues with `backfill resume RUN` or `backfill run SPEC` after the approval).",
    ),
    key(
        "slo.complete_within",
        "string",
        None,
        true,
        "The run should complete within this long of its creation, e.g. `48h`: the deadline `status` compares the projected completion (now plus the ETA) with.",
    ),
    key(
        "slo.success_rate",
        "number",
        None,
        true,
        "The share of attempts that should succeed, above 0 and below 1, e.g. `0.99`. Sets the error budget and the burn rates; without it only the compute and cost budgets are guarded.",
    ),
    key(
        "slo.max_latency_increase",
        "number",
        None,
        true,
        "The live-impact bound, e.g. `0.10` for +10% of the live database's latency over its baseline, as its clients wait for it (`throttle.max_latency_increase` says how each signal reads it). The adaptive throttle (`[throttle]`) enforces it: it becomes `throttle.max_latency_increase` unless that is given, and must then agree. Without `[throttle]` nothing enforces it (a warning).",
    ),
];

/// The keys allowed directly inside the table at `prefix` (`""` for the top level).
pub fn keys_under(prefix: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in SPEC_KEYS {
        let rest = if prefix.is_empty() {
            Some(k.path)
        } else {
            k.path
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            let head = rest.split(['.', '[']).next().unwrap_or(rest);
            if !out.contains(&head) {
                out.push(head);
            }
        }
    }
    for (section, _) in SECTIONS {
        if prefix.is_empty() && !section.is_empty() && !out.contains(section) {
            out.push(section);
        }
    }
    out
}

/// The closest known key to `unknown`, when one is close enough to be a likely typo.
pub fn suggest(unknown: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| unknown.len() > 2 && *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

/// The reference documentation of the spec, in Markdown, generated from [`SPEC_KEYS`].
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Spec reference\n\n<!-- Generated from crates/backfill-core/src/spec/schema.rs by \
         `cargo run -p backfill-cli -- docs`; do not edit by hand. -->\n\n\
         A spec is a TOML file. Unknown keys are errors. Paths below are `section.key`.\n",
    );
    for (section, about) in SECTIONS {
        let title = if section.is_empty() {
            "top level".to_owned()
        } else {
            format!("[{section}]")
        };
        out.push_str(&format!(
            "\n## {title}\n\n{about}\n\n| key | type | default | meaning |\n|---|---|---|---|\n"
        ));
        for k in SPEC_KEYS {
            let in_section = match k.path.split_once('.') {
                Some((head, _)) => head == *section,
                None => section.is_empty(),
            };
            if !in_section {
                continue;
            }
            let default = match (k.default, k.optional) {
                (Some(d), _) => format!("`{d}`"),
                (None, true) => "not set".to_owned(),
                (None, false) => "required".to_owned(),
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.path, k.kind, default, k.doc
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_section() {
        assert_eq!(keys_under("limits").len(), 13);
        assert_eq!(
            keys_under("limits.budget"),
            ["rows", "duration", "partitions", "cost"]
        );
        assert!(keys_under("").contains(&"source"));
        assert_eq!(keys_under("scope.list[]"), ["start", "end"]);
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let known = keys_under("scope");
        assert_eq!(suggest("partiton", &known).as_deref(), Some("partition"));
        assert_eq!(suggest("tz", &known), None);
    }
}
