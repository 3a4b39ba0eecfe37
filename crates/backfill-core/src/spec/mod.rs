//! The spec: a TOML file describing one backfill, parsed into validated, precise types.
//!
//! Parsing walks the TOML document with its spans, so every problem carries the field path and
//! `line:column`; it collects all problems instead of stopping at the first. The result is a
//! [`Spec`] of types that cannot hold invalid values (a non-empty key list, a positive
//! partition size, a start before the end). No connection is opened here: reachability and
//! sampling checks belong to the connectors and the CLI.

mod parse;
pub mod schema;

pub(crate) use self::parse::parse_instant;

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use crate::breaker::BreakerPolicy;
use crate::budget::Budget;
use crate::diag::Diagnostic;
use crate::order::Order;
use crate::plan::Scope;
use crate::retry::RetryPolicy;
use crate::run_window::RunWindow;
use crate::secret::SecretUrl;
use crate::timefmt::TimeFormat;

/// A validated backfill spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Name of the backfill; runs of the same name resume each other.
    pub name: String,
    /// Why the backfill exists, when the spec says.
    pub reason: Option<String>,
    /// Where rows come from. Always present in `upsert` and `replace` modes; in `sql` mode,
    /// where the statement reads its own rows, optional and used only to count a window's
    /// rows (`plan`'s estimates, `limits.split_rows`, `order = "largest_first"`).
    pub source: Option<SourceSpec>,
    /// Where rows go.
    pub target: TargetSpec,
    /// What to cover.
    pub scope: Scope,
    /// How hard to push.
    pub limits: Limits,
    /// Adaptive throttling against a live-facing database, when the spec has `[throttle]`.
    pub throttle: Option<ThrottleSpec>,
    /// Reconciliation after writing (`[validate]`, defaults when absent).
    pub validate: ValidateSpec,
    /// Canary partitions first, when the spec has `[canary]`.
    pub canary: Option<CanarySpec>,
    /// The run's objectives, when the spec has `[slo]`: with them the engine throttles, then
    /// pauses, a run that burns its error or compute budget too fast.
    pub slo: Option<crate::slo::SloSpec>,
    /// The spec text with any URL password masked, kept on the run for the audit trail.
    pub redacted_text: String,
    /// Hash of the spec text (before `${VAR}` expansion), wherever the file lies. The plan
    /// hash, not this, decides whether a run may continue (see [`crate::normalized`]).
    pub spec_hash: String,
}

impl Spec {
    /// The key columns the source query must return: the target's key in `upsert` and
    /// `replace` modes (rows are read and written in key order), none in `sql` mode, where the
    /// source only counts a window's rows.
    pub fn source_key(&self) -> &[String] {
        match self.target.mode {
            WriteMode::Sql { .. } => &[],
            _ => &self.target.key,
        }
    }
}

/// Where rows come from.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// Connection URL (password masked when printed).
    pub url: SecretUrl,
    /// Query for one window, using `:start` and `:end`.
    pub query: String,
    /// How window bounds are bound in the source.
    pub time_format: TimeFormat,
    /// Column sampled by `check` to validate `time_format`.
    pub time_column: Option<String>,
    /// `source.ready`: the check that the source holds a window's data before it is read.
    pub ready: Option<ReadyCheck>,
}

/// Source readiness (`source.ready`): a query, bound to a window like the source query, that
/// returns true or a non-zero number when the window's data is complete upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyCheck {
    /// The query, with `:start` and `:end` (only those) as bound parameters.
    pub sql: String,
    /// How long a partition may wait for its source before it fails (`source_not_ready`).
    pub timeout: Duration,
    /// The first re-check delay; it doubles after every check, up to [`ReadyCheck::MAX_INTERVAL`].
    pub interval: Duration,
}

impl ReadyCheck {
    /// The longest delay between two checks of one partition.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

    /// The delay before check number `checks + 1` (after `checks` that said not ready):
    /// `interval · 2^(checks-1)`, capped at [`ReadyCheck::MAX_INTERVAL`] (never below the
    /// interval itself when that is larger).
    pub fn delay(&self, checks: u32) -> Duration {
        let doubled = self
            .interval
            .saturating_mul(1u32 << checks.saturating_sub(1).min(20));
        doubled.min(Self::MAX_INTERVAL.max(self.interval))
    }
}

/// `[canary]`: representative partitions run first; the rest runs only when they all pass
/// (and, with `require_approval`, after `backfill approve`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanarySpec {
    /// How many partitions the canary runs (at most the plan's).
    pub partitions: NonZeroU32,
    /// The seed of the random picks; `None`: a random one, recorded in `canary.chosen`.
    pub seed: Option<u64>,
    /// Wait in `awaiting_approval` after the canary passed, until `backfill approve RUN`.
    pub require_approval: bool,
}

/// Where rows go and how.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Connection URL (password masked when printed).
    pub url: SecretUrl,
    /// Target table, validated identifier (`table` or `schema.table`); `None` only in `sql`
    /// mode.
    pub table: Option<String>,
    /// Key columns, validated identifiers; never empty in `upsert` and `replace` modes, not
    /// used (and usually empty) in `sql` mode.
    pub key: Vec<String>,
    /// How rows are written.
    pub mode: WriteMode,
    /// How window bounds are bound in the target (`replace` and `sql` modes).
    pub time_format: TimeFormat,
    /// `upsert` mode: a column (e.g. `updated_at`, `version`) whose newer value in the target
    /// wins: a target row whose guard is greater than the incoming row's is never overwritten,
    /// so live writes made during the backfill survive it.
    pub guard: Option<String>,
    /// Let the databases move the rows themselves when they can (both SQLite today): the
    /// same batches, checkpoints and counts, without rows passing through the engine.
    pub pushdown: bool,
    /// Keep an undo log (before-images and inserted keys, in `<table>__bf_undo` in the
    /// target's database, written in each batch's transaction) so `backfill rollback` can
    /// restore the run's scope. On by default in `upsert` and `replace` (not `shadow`, not
    /// `partition_exchange`); never in `sql`.
    pub undo: bool,
    /// Delete target rows of a window whose key is no longer in the source: `replace` does
    /// by nature; `upsert` after a window's last batch, through the undo log. In the plan hash
    /// (it changes the data written).
    pub propagate_deletes: bool,
    /// `upsert` with `propagate_deletes`: the target column compared with the window bounds
    /// (`target.window_column`, else `source.time_column`). `None` otherwise.
    pub delete_window_column: Option<String>,
    /// `replace` on a PostgreSQL declared-partitioned table: a window that is exactly one
    /// partition is loaded into a standalone table made like it, which is then exchanged for
    /// it (detach and attach in the window's one transaction) instead of deleting and
    /// inserting in place; a window that is not one partition is replaced in place. Never
    /// with `undo`. Not in the plan hash (the data written is the same).
    pub partition_exchange: bool,
    /// `mode = "shadow"`: rows are upserted by key (`mode` is [`WriteMode::Upsert`]) into a
    /// shadow copy of `table` that `backfill promote` swaps in; `None` in every other mode.
    pub shadow: Option<ShadowSpec>,
}

impl TargetSpec {
    /// The write mode's name as the spec writes it: `shadow` for a shadow write (whose rows
    /// are upserted into the shadow table), else [`WriteMode::name`].
    pub fn mode_name(&self) -> &'static str {
        match self.shadow {
            Some(_) => "shadow",
            None => self.mode.name(),
        }
    }
}

/// `mode = "shadow"`: how the shadow table is filled before the run writes its scope there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowSpec {
    /// Copy the live table's rows outside the scope into the shadow when it is created, so
    /// the promoted table holds them too; without it the promoted table holds the scope only.
    pub seed_outside_scope: bool,
    /// The target column that places a row in the scope (`target.window_column`, else
    /// `source.time_column`): bounds the seed copy and the live table's fingerprint. Required
    /// with `seed_outside_scope`.
    pub window_column: Option<String>,
}

/// How a partition's rows are written. Every mode is replay-safe (invariant 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Insert new keys, update changed rows, leave identical rows untouched.
    Upsert,
    /// Delete the window from the target and insert the source rows, in one transaction.
    Replace {
        /// Target column compared with the window bounds.
        window_column: String,
    },
    /// Run one statement per partition in the target; no rows pass through the engine.
    Sql {
        /// The statement, with `:start` and `:end`.
        statement: String,
    },
}

impl WriteMode {
    /// The name as written in a spec.
    pub fn name(&self) -> &'static str {
        match self {
            WriteMode::Upsert => "upsert",
            WriteMode::Replace { .. } => "replace",
            WriteMode::Sql { .. } => "sql",
        }
    }
}

/// Limits for the whole run. Every limit holds for the run, not per worker (invariant 6).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Partitions processed at the same time.
    pub concurrency: NonZeroU32,
    /// Global cap on rows read per second.
    pub rows_per_second: Option<NonZeroU32>,
    /// Global cap on batches written per second (protects targets where each commit costs
    /// more than its rows).
    pub batches_per_second: Option<NonZeroU32>,
    /// Rows per batch (one read, one write, one checkpoint).
    pub batch_rows: NonZeroU32,
    /// Retry behaviour per partition.
    pub retry: RetryPolicy,
    /// Rows, running time, partitions and cost the run may use before it pauses
    /// (`budget_exhausted`); empty when the spec sets none.
    pub budget: Budget,
    /// Daily hours the run may work in; any time when `None`.
    pub window: Option<RunWindow>,
    /// The order partitions run in.
    pub order: Order,
    /// When the run pauses itself because too many batches fail (`circuit_open`).
    pub breaker: BreakerPolicy,
    /// When a too big or too slow partition is split into children other workers take.
    pub split: crate::split::SplitPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
            rows_per_second: None,
            batches_per_second: None,
            batch_rows: NonZeroU32::new(5000).unwrap_or(NonZeroU32::MIN),
            retry: RetryPolicy::default(),
            budget: Budget::default(),
            window: None,
            order: Order::default(),
            breaker: BreakerPolicy::default(),
            split: crate::split::SplitPolicy::default(),
        }
    }
}

/// Adaptive throttling (`[throttle]`): the rules of the AIMD controller
/// ([`crate::aimd::Aimd`]) and the probe that feeds it. Validated: `interval` is positive,
/// `baseline_probes >= 5`, `window >= 1`, `max_latency_increase > 0`, `decrease_factor` in
/// (0, 1), `min_rate_fraction` and `increase_fraction` in (0, 1], and a maximum rate exists
/// (`max_rows_per_second` or `limits.rows_per_second`).
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleSpec {
    /// The statement whose latency (and database's replica lag) is watched; optional.
    pub probe: Option<Probe>,
    /// The live database whose own signals are read every interval, without a probe
    /// statement (`pg_stat_statements`, wait events, `Threads_running`, statement digests,
    /// replica lag); see `crate::live`. Without `probe` and `watch` only errors throttle.
    pub watch: Option<SecretUrl>,
    /// Time between two probes, and between two decisions of the controller.
    pub interval: Duration,
    /// Probes measured before the run starts to set the baseline p50/p90.
    pub baseline_probes: u32,
    /// Allowed rise of the moving p90 over the baseline p90, as a fraction (0.10 = +10%).
    pub max_latency_increase: f64,
    /// Replica lag above which the rate is cut, measured on the probe's database.
    pub max_replica_lag: Option<Duration>,
    /// Multiplier of a cut, in (0, 1).
    pub decrease_factor: f64,
    /// The lowest rate, as a fraction of the maximum.
    pub min_rate_fraction: f64,
    /// Rise per healthy interval, as a fraction of the maximum.
    pub increase_fraction: f64,
    /// Probes in the moving p90.
    pub window: u32,
    /// The throttle's own maximum rate; see [`ThrottleSpec::max_rate`].
    pub max_rows_per_second: Option<NonZeroU32>,
    /// How long live traffic is measured at rest in a rest check (the backfill held, after
    /// its batches in flight have settled); zero turns rest checks off. Only the watch's
    /// latency signals use them.
    pub rest_check: Duration,
    /// Longest time between two rest checks while the rate is above its floor (a cut the
    /// watch asks for starts one at once).
    pub rest_check_every: Duration,
}

impl Default for ThrottleSpec {
    /// The documented defaults, no probe, no watched database and no maximum of its own.
    fn default() -> Self {
        ThrottleSpec {
            probe: None,
            watch: None,
            interval: Duration::from_secs(1),
            baseline_probes: 20,
            max_latency_increase: 0.10,
            max_replica_lag: None,
            decrease_factor: 0.5,
            min_rate_fraction: 0.01,
            increase_fraction: 0.05,
            window: 20,
            max_rows_per_second: None,
            rest_check: Duration::from_secs(2),
            rest_check_every: Duration::from_secs(60),
        }
    }
}

impl ThrottleSpec {
    /// The maximum rate the controller starts at and never exceeds, rows per second: the
    /// smaller of `max_rows_per_second` and `limits.rows_per_second` when both are set (the
    /// static limit still holds), whichever is set otherwise. Always `Some` for a parsed spec.
    pub fn max_rate(&self, limits: &Limits) -> Option<f64> {
        match (self.max_rows_per_second, limits.rows_per_second) {
            (Some(a), Some(b)) => Some(f64::from(a.min(b).get())),
            (Some(a), None) | (None, Some(a)) => Some(f64::from(a.get())),
            (None, None) => None,
        }
    }
}

/// The statement run against a live-facing database every `throttle.interval`.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// Connection URL, `${VAR}` expanded like `source.url` (password masked when printed).
    pub url: SecretUrl,
    /// A cheap statement representative of live traffic, e.g. `SELECT 1`.
    pub sql: String,
}

/// How the parser reaches the world: environment variables for `${VAR}` and the spec's folder
/// for relative SQLite paths. Passed in so parsing stays pure and testable.
pub struct ParseContext<'a> {
    /// Looks up an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Folder that relative `sqlite://` paths are resolved against, for connecting only: the
    /// plan identifies a database by the URL as written (`SecretUrl::identity`), so the
    /// folder never changes the plan hash.
    pub base_dir: &'a Path,
}

/// The outcome of parsing: a spec when there was no error, and every diagnostic (warnings can
/// accompany a valid spec).
#[derive(Debug)]
pub struct Parsed {
    /// The spec, present when no diagnostic is an error.
    pub spec: Option<Spec>,
    /// All problems found, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// `line:column` of every key in the file by dotted path (`target.key`), so later checks
    /// (connections, sampling) can point at the field they are about.
    pub positions: std::collections::BTreeMap<String, (usize, usize)>,
    /// Byte span of every key's value (a table: its header's name) in the file, by dotted
    /// path, for the same later checks to underline it.
    pub spans: std::collections::BTreeMap<String, std::ops::Range<usize>>,
}

impl Parsed {
    /// The position of `path`, or of its nearest enclosing table that is in the file (a
    /// missing `target.key` points at `[target]`).
    pub fn position_of(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(p) = self.positions.get(path) {
                return Some(*p);
            }
            path = path.rsplit_once('.')?.0;
        }
    }

    /// The span of `path`, or of its nearest enclosing table that is in the file, like
    /// [`Parsed::position_of`].
    pub fn span_of(&self, path: &str) -> Option<std::ops::Range<usize>> {
        let mut path = path;
        loop {
            if let Some(span) = self.spans.get(path) {
                return Some(span.clone());
            }
            path = path.rsplit_once('.')?.0;
        }
    }
}

/// Parses and validates spec `text`. Never panics, whatever the input.
pub fn parse(text: &str, ctx: &ParseContext<'_>) -> Parsed {
    parse::parse(text, ctx)
}

/// Checks an SQL identifier (`name` or `schema.name`): ASCII letters, digits, `_`, `$`, not
/// starting with a digit, at most 63 characters per part.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').count() <= 2
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && !part.as_bytes()[0].is_ascii_digit()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

/// Reconciliation after writing (`[validate]`): after each partition and at the end of the
/// run, the source's and the target's fingerprints of a window are compared (row count and
/// order-independent checksum, `crate::fingerprint`); a difference of more than `tolerance`
/// rows fails the partition with `reconcile_mismatch`. Present on every spec with its
/// defaults; `explicit` says the spec has the section, which turns a reconciliation that
/// cannot work from "not verified" into a spec error. Not part of the plan hash: it decides
/// what is checked, never which rows are written where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidateSpec {
    /// The spec has a `[validate]` section.
    pub explicit: bool,
    /// Reconcile each partition after its last batch, before it is marked done.
    pub after_partition: bool,
    /// Re-check every partition at the end of the run, one bucketed query per side. Off by
    /// default when `after_partition` is on: on W1 it took the run from 1.56x to 2.38x of a
    /// run without reconciliation, to prove again what each partition proved when it ended
    /// (`backfill validate` does that at any time, and also sees writes made since).
    pub at_end: bool,
    /// Rows allowed to differ (by count, or rows a differing checksum stands for) per
    /// partition before it is a mismatch.
    pub tolerance: u64,
    /// Compared columns (the key is always compared); every target column when `None`.
    pub columns: Option<Vec<String>>,
    /// The column placing each row in a partition; when `None`, as `diff` decides:
    /// `replace`'s `window_column`, else `source.time_column`, else a one-column key of a
    /// key scope.
    pub window_column: Option<String>,
    /// `sql` mode: a query with `:start`/`:end` on the source (the target's database without
    /// `[source]`) whose single-row result must equal `target_check`'s.
    pub source_check: Option<String>,
    /// `sql` mode: a query with `:start`/`:end` on the target.
    pub target_check: Option<String>,
}

impl Default for ValidateSpec {
    /// The documented defaults: on after each partition, not again at the end, no
    /// tolerance.
    fn default() -> Self {
        ValidateSpec {
            explicit: false,
            after_partition: true,
            at_end: false,
            tolerance: 0,
            columns: None,
            window_column: None,
            source_check: None,
            target_check: None,
        }
    }
}
