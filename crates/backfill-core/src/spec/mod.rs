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
    /// Where rows come from.
    pub source: SourceSpec,
    /// Where rows go.
    pub target: TargetSpec,
    /// What to cover.
    pub scope: Scope,
    /// How hard to push.
    pub limits: Limits,
    /// The spec text with any URL password masked, kept on the run for the audit trail.
    pub redacted_text: String,
    /// Hash of the spec text (before `${VAR}` expansion).
    pub spec_hash: String,
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
}

/// Where rows go and how.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Connection URL (password masked when printed).
    pub url: SecretUrl,
    /// Target table, validated identifier (`table` or `schema.table`); `None` only in `sql`
    /// mode.
    pub table: Option<String>,
    /// Key columns, validated identifiers; empty only in `sql` mode.
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
        }
    }
}

/// How the parser reaches the world: environment variables for `${VAR}` and the spec's folder
/// for relative SQLite paths. Passed in so parsing stays pure and testable.
pub struct ParseContext<'a> {
    /// Looks up an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Folder that relative `sqlite://` paths are resolved against.
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
