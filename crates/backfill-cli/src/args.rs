//! Command-line arguments: every flag declared once, with its help and default.
//! `docs/cli.md` is generated from these declarations (`backfill docs`).

use std::path::PathBuf;

use backfill_core::BudgetExtension;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Controlled, observable, idempotent re-processing of historical data.
///
/// Describe a repair once in a spec file; `backfill` plans it as partitions, runs them in
/// parallel with checkpoints, resumes after any interruption and records who did what and why.
#[derive(Debug, Parser)]
#[command(
    name = "backfill",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// State store URL: where runs, partitions, checkpoints and audit events live.
    #[arg(
        long,
        global = true,
        env = "BACKFILL_STATE",
        default_value = "sqlite://.backfill/state.db"
    )]
    pub(crate) state: String,
    /// Print machine-readable JSON on stdout instead of text for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate a spec: every problem with its field path and line:column; then check that the
    /// source and target are reachable and the time format matches the data.
    Check(CheckArgs),
    /// Show the deterministic partition plan of a spec, with row estimates and an ETA.
    Plan(PlanArgs),
    /// Plan and execute a spec. Resumes the unfinished run of the same spec instead of
    /// starting a duplicate (use --new to force a new run). Ctrl-C pauses gracefully.
    Run(RunArgs),
    /// Continue a run: lifts a pause (the process executing the run continues within a
    /// second), closes an open circuit breaker, extends a budget; with no process executing
    /// the run, continues it here from its checkpoints (after Ctrl-C, a crash, SIGKILL).
    Resume(ResumeArgs),
    /// Pause a run from any terminal: in-flight batches finish and checkpoint, then the run
    /// waits, paused, for `backfill resume`. Takes effect within a second.
    Pause(RequestArgs),
    /// Cancel a run from any terminal: in-flight batches finish and checkpoint, the target
    /// stays consistent, and the run ends `cancelled` (`backfill resume --reopen` continues it).
    Cancel(RequestArgs),
    /// Approve a run waiting at its canary gate (`[canary] require_approval`): its canary
    /// partitions passed and `status` shows them with their row counts; after approval the
    /// rest of the run goes on (the waiting process within a second; with none, `backfill
    /// resume RUN`). Recorded as `run.approved` with who and why. Refused on a run that is not
    /// `awaiting_approval`.
    Approve(ApproveArgs),
    /// Change a run's limits while it runs, from any terminal: rows per second, batches per
    /// second, concurrency. Takes effect within a second and is recorded in the audit trail.
    Throttle(ThrottleArgs),
    /// Show what a run of a spec would change, before anything is written: per partition the
    /// rows it would insert, update, leave unchanged, and the target's extra rows (keys the
    /// source no longer has), down to the exact keys. Writes nothing to the source or target;
    /// records one `spec.diff` audit event in the state store. Not for `sql` mode.
    Diff(DiffArgs),
    /// List the partitions whose target is missing (empty), partial (fewer rows than the
    /// source) or drifted (different rows), with their row deltas. Writes nothing to the source
    /// or target; records one `spec.gaps` audit event. Exits 1 when any partition has a gap, 0
    /// when none has. `backfill run --only-gaps` repairs just those partitions.
    Gaps(GapsArgs),
    /// Show the state, progress, throughput and failing partitions of a run.
    Status(StatusArgs),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Serve the state store over HTTP: the dashboard at /, a JSON API of the runs (status
    /// and objectives, partitions paged and sorted, errors by class, reconciliation checks,
    /// quarantine, audit trail, rates, heat strip, progress), controls (pause, resume, cancel,
    /// throttle, approve, promote; they need the token) and Prometheus metrics at /metrics.
    /// Binds to loopback unless given --bind; any other address needs --token-file.
    Serve(ServeArgs),
    /// Write the postmortem of a run as one self-contained file: who and why, the timeline of
    /// run-level events, partitions and rows, throughput and rate changes (charts in HTML),
    /// the top errors, reconciliation and the audit chain's state.
    Report(ReportArgs),
    /// Show a run's audit events, or verify the hash chain of the whole store.
    Audit(AuditArgs),
    /// List the rows the target rejected (constraint violations, values out of range) with
    /// their reason; `--retry` gives them another run.
    Quarantine(QuarantineArgs),
    /// Swap a shadow run's table in (`mode = "shadow"`): the shadow becomes the live table in
    /// one atomic rename, the old table is kept as `<table>__bf_old_<id>`. Refused unless the
    /// run succeeded and the live table is unchanged since the shadow was seeded (someone
    /// wrote to it); `--force` overrides that, and the audit trail records it.
    Promote(PromoteArgs),
    /// Undo a run's in-place writes (`upsert`/`replace` with `undo`, the default): delete the
    /// keys it inserted and restore the rows it updated or deleted as they were before it. A
    /// row someone else changed after the run wrote it is a conflict: left as it is and
    /// listed, unless --force. One transaction per partition; a killed rollback, run again,
    /// continues where it stopped. Refused while the run executes. Audited. For a promoted
    /// `mode = "shadow"` run: swaps the old table back in.
    Rollback(RollbackArgs),
    /// Drop a run's undo data (its rows in `<table>__bf_undo`); the run can no longer be
    /// rolled back. Refused while the run executes. Audited. For a `mode = "shadow"` run:
    /// drops the table that is not live (the old one after a promote, else the shadow).
    Cleanup(CleanupArgs),
    /// A self-contained repair on SQLite: creates 1,000,000 synthetic events, breaks 4 days of
    /// a derived table, and repairs them with a backfill.
    Demo(DemoArgs),
    /// Regenerate the reference docs (docs/spec.md, docs/cli.md) from the declarations.
    #[command(hide = true)]
    Docs(DocsArgs),
    /// Re-run reconciliation alone, at any time: for every partition, the source's and the
    /// target's row count and checksum over its window (as after each partition of a run,
    /// see `[validate]` in docs/spec.md). Records each partition's result and one audit
    /// event. Exits 1 when a partition's target differs from its source beyond
    /// `validate.tolerance`, naming up to 5 differing keys; `backfill diff SPEC` lists them
    /// all.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// A run id (or unique prefix): check that run's partitions. Or a spec file: check its
    /// latest run, or, when it has none, its plan's partitions (recording only the audit
    /// event).
    #[arg(value_name = "RUN|SPEC")]
    pub(crate) target: String,
    /// The run's spec file, when it moved since the run was created.
    #[arg(long, value_name = "FILE")]
    pub(crate) spec: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The spec file (TOML).
    pub(crate) spec: PathBuf,
    /// Only validate the file; do not connect to the source or target.
    #[arg(long)]
    pub(crate) offline: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The spec file (TOML).
    pub(crate) spec: PathBuf,
    /// Name, for each updated key, the columns that differ. With a comma-separated list
    /// (`--columns=amount,status`), compare only those columns (and the key); rows that differ
    /// elsewhere count as unchanged. Without a list, every target column the source query
    /// returns is compared.
    #[arg(long, num_args = 0.., value_delimiter = ',', value_name = "COLUMNS")]
    pub(crate) columns: Option<Vec<String>>,
    /// Print N differing rows side by side, source against target.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) sample: usize,
    /// List at most N differing keys per partition (the counts stay exact). Default: 10 in
    /// text, 100 with --json.
    #[arg(long, value_name = "N")]
    pub(crate) max_keys: Option<usize>,
    /// The column (in the source query's result and in the target table) whose value places
    /// a row in a partition. Default: `replace` mode's `window_column`, else
    /// `source.time_column`, else the key of a key scope.
    #[arg(long, value_name = "COLUMN")]
    pub(crate) window_column: Option<String>,
    /// List every partition, unchanged ones included.
    #[arg(long)]
    pub(crate) all: bool,
    /// Compare rows one by one once a slice of a differing partition holds at most N rows on
    /// each side; bigger slices are cut again by fingerprints.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub(crate) fetch_rows: u64,
}

#[derive(Debug, Args)]
pub(crate) struct GapsArgs {
    /// The spec file (TOML).
    pub(crate) spec: PathBuf,
    /// Compare only these columns (comma-separated; the key is always compared).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "COLUMNS")]
    pub(crate) columns: Option<Vec<String>>,
    /// The column whose value places a row in a partition (see `diff --window-column`).
    #[arg(long, value_name = "COLUMN")]
    pub(crate) window_column: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The spec file (TOML).
    pub(crate) spec: PathBuf,
    /// Do not count rows in the source (faster; no estimates).
    #[arg(long)]
    pub(crate) no_estimate: bool,
    /// Print every partition instead of a sample.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The spec file (TOML).
    pub(crate) spec: PathBuf,
    /// Why this run happens (recorded in the audit trail); overrides the spec's `reason`.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Start a new run even if an unfinished run of this spec exists.
    #[arg(long)]
    pub(crate) new: bool,
    /// Create the run (or find the spec's unfinished one) and print its id without executing
    /// it; `backfill resume RUN`, from any terminal or machine sharing the state store,
    /// executes it.
    #[arg(long)]
    pub(crate) create_only: bool,
    /// Write only the partitions that differ: before the run is created, one fingerprint
    /// query per side (as `backfill gaps`) compares every partition's source and target; those
    /// that already match are recorded as skipped (done without being written, listed as
    /// `skipped` by the summary, `status` and --json, one `run.skipped_correct` audit event);
    /// only the missing, partial and drifted ones run. For a new run: refused when the spec
    /// has an unfinished run (resume it, or add --new). Not for `sql` mode.
    #[arg(long)]
    pub(crate) only_gaps: bool,
    /// Like --only-gaps, and inside each differing partition write only the slices of its
    /// window where rows differ (found by `diff`'s bisection): the partition is narrowed into
    /// children `<id>.<n>` covering those slices, and its would-change counts (insert,
    /// update, unchanged, extra) are kept for the summary and `status`. Exact when the source
    /// query filters on the window column.
    #[arg(long)]
    pub(crate) only_diff: bool,
    /// With --only-gaps or --only-diff: the column whose value places a row in a partition
    /// (see `diff --window-column`).
    #[arg(long, value_name = "COLUMN")]
    pub(crate) window_column: Option<String>,
    #[command(flatten)]
    pub(crate) claim: ClaimArgs,
}

/// How `run` and `resume` execute the run: how they claim it (one process executes a run at
/// a time) and what they expose while they do.
#[derive(Clone, Copy, Debug, Args)]
pub(crate) struct ClaimArgs {
    /// When another process is executing the run, wait until it finishes or stops, then
    /// continue the run here (without it: say who holds the run and exit 1).
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long this process's claim on the run lasts without renewal (it renews every
    /// second): if the process is stopped or cut off from the state store for longer, another
    /// process may take the run over, and every later write of this one is refused.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_lease)]
    pub(crate) lease: std::time::Duration,
    /// Serve Prometheus metrics (and the read-only API of `backfill serve`) from this process
    /// while it executes, at this loopback address (`127.0.0.1:9464`; port 0: any free port,
    /// printed at start). For another address, run `backfill serve --bind … --token-file …`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

/// A lease duration: 2 s to 24 h (`15s`, `1m`).
pub(crate) fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    let lease = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like `15s` or `2m`"))?;
    let range = std::time::Duration::from_secs(2)..=std::time::Duration::from_secs(86_400);
    if !range.contains(&lease) {
        return Err(format!(
            "`{text}` is out of range: a lease lasts from 2s (it is renewed every second) to 24h"
        ));
    }
    Ok(lease)
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    /// Run id (or a unique prefix of at least 4 characters).
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// The spec file, when it moved since the run was created.
    #[arg(long)]
    pub(crate) spec: Option<PathBuf>,
    /// Grant more budget, added to the spec's: `rows=N,duration=2h,partitions=N,cost=X`
    /// (any subset). Needed to continue a run paused with `budget_exhausted`.
    #[arg(long, value_name = "LIST", value_parser = parse_extension)]
    pub(crate) extend_budget: Option<BudgetExtension>,
    /// Reopen a cancelled run (its unfinished partitions continue from their checkpoints).
    #[arg(long)]
    pub(crate) reopen: bool,
    #[command(flatten)]
    pub(crate) claim: ClaimArgs,
}

/// `approve`: the canary gate's approval.
#[derive(Debug, Args)]
pub(crate) struct ApproveArgs {
    /// Run id (or a unique prefix of at least 4 characters) of a run awaiting approval.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Why it is approved, e.g. what was checked in the canary (recorded in the audit trail).
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

/// `pause` and `cancel`: a request to the process executing a run.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// Run id (or a unique prefix of at least 4 characters).
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Return once the request is recorded, without waiting for the run to act on it.
    #[arg(long)]
    pub(crate) no_wait: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ThrottleArgs {
    /// Run id (or a unique prefix of at least 4 characters).
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Rows read per second for the whole run, or `off` for no limit.
    #[arg(long, value_name = "N|off", value_parser = parse_limit)]
    pub(crate) rows_per_second: Option<u32>,
    /// Batches per second for the whole run, or `off` for no limit.
    #[arg(long, value_name = "N|off", value_parser = parse_limit)]
    pub(crate) batches_per_second: Option<u32>,
    /// Batches (for `replace` and `sql`: partitions) in flight at once, at least 1.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: Option<u32>,
}

/// A run id or a prefix of one, lower-cased: hex digits and `-`, at most 36 characters (a
/// UUID). The store says when a prefix is too short, matches nothing or matches several.
fn parse_run_ref(text: &str) -> Result<String, String> {
    const HINT: &str = "`backfill runs` lists the run ids";
    let id = text.trim().to_ascii_lowercase();
    if id.is_empty() {
        return Err(format!("empty run id; {HINT}"));
    }
    if id.chars().count() > 36 {
        return Err(format!(
            "`{}` is longer than a run id (36 characters); {HINT}",
            preview(text)
        ));
    }
    if !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!(
            "`{}` is not a run id: hex digits and `-`, e.g. `0193a1b2`; {HINT}",
            preview(text)
        ));
    }
    Ok(id)
}

/// `--extend-budget`: what [`BudgetExtension::parse`] reads, refused here (exit 2) otherwise.
fn parse_extension(text: &str) -> Result<BudgetExtension, String> {
    BudgetExtension::parse(text).map_err(|e| {
        format!("{e}; write it as `rows=1000000,duration=2h,partitions=10,cost=5` (any subset)")
    })
}

/// At most 40 characters of `text`, for echoing user input in an error.
fn preview(text: &str) -> String {
    let mut out: String = text.chars().take(40).collect();
    if text.chars().nth(40).is_some() {
        out.push('…');
    }
    out
}

/// A positive rate, or `off` (stored as 0: no limit).
fn parse_limit(text: &str) -> Result<u32, String> {
    match text {
        "off" | "none" => Ok(0),
        _ => match text.replace('_', "").parse::<u32>() {
            Ok(0) => Err("must be at least 1 (or `off` for no limit)".to_owned()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!(
                "`{}` is not a whole number from 1 to {} or `off`",
                preview(text),
                u32::MAX
            )),
        },
    }
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Run id or unique prefix; the latest run when omitted.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    /// Show at most this many runs.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: u32,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// Run id or unique prefix.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Markdown for a ticket or a wiki, JSON for tools, or HTML (inline SVG charts, no
    /// external resource) for a browser.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub(crate) format: ReportFormat,
    /// Write the report to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// The format of `backfill report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    /// Markdown.
    Md,
    /// JSON.
    Json,
    /// One HTML file.
    Html,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value_t = crate::serve::DEFAULT_BIND)]
    pub(crate) bind: std::net::SocketAddr,
    /// File holding the API token on its first line (at least 16 characters). Required to
    /// bind to an address other than loopback, where every request but /healthz and the
    /// dashboard's files must send it, and for the controls; a request that sends
    /// `Authorization: Bearer …` must send this token. On loopback reading needs none.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Run id or unique prefix; every event when omitted.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: Option<String>,
    /// Verify the hash chain of every event in the store instead of listing events.
    #[arg(long)]
    pub(crate) verify: bool,
}

#[derive(Debug, Args)]
pub(crate) struct QuarantineArgs {
    /// Run id or unique prefix.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Reopen the partitions with quarantined rows (from the start of their window) and clear
    /// their quarantine; then `backfill resume RUN` writes them again.
    #[arg(long)]
    pub(crate) retry: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PromoteArgs {
    /// Run id (or a unique prefix of at least 4 characters) of a `mode = "shadow"` run.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Promote even though the live table changed since the shadow was seeded (its writes in
    /// the fingerprinted rows are then discarded) or its fingerprint is unknown. Recorded as
    /// `forced` in the `run.promoted` audit event.
    #[arg(long)]
    pub(crate) force: bool,
    /// The spec file, when it moved since the run was created (it names the target
    /// database).
    #[arg(long)]
    pub(crate) spec: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// Run id or unique prefix.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// Report what the rollback would do (keys deleted, rows restored, conflicts) and change
    /// nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Restore the before-images of conflicting rows too, overwriting changes made by others
    /// since the run wrote them.
    #[arg(long)]
    pub(crate) force: bool,
    /// The spec file, when the run's recorded one moved.
    #[arg(long)]
    pub(crate) spec: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Run id or unique prefix.
    #[arg(value_parser = parse_run_ref)]
    pub(crate) run: String,
    /// The spec file, when the run's recorded one moved.
    #[arg(long)]
    pub(crate) spec: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Folder for the demo's databases, spec and state (recreated if it holds an earlier demo).
    #[arg(long, default_value = "backfill-demo")]
    pub(crate) dir: PathBuf,
    /// Rows of synthetic events in the source.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) rows: u64,
    /// Create the databases and the spec, report the gaps, but do not run the backfill.
    #[arg(long)]
    pub(crate) prepare_only: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DocsArgs {
    /// Folder to write spec.md and cli.md into.
    #[arg(long, default_value = "docs")]
    pub(crate) out: PathBuf,
    /// Fail (exit 1) if the files on disk differ instead of writing them.
    #[arg(long)]
    pub(crate) check: bool,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text: a value or an error naming the input, never a panic.
        #[test]
        fn value_parsers_never_panic(text in "\\PC{0,60}") {
            let _ = parse_limit(&text);
            let _ = parse_extension(&text);
            if let Ok(id) = parse_run_ref(&text) {
                prop_assert!(!id.is_empty() && id.len() <= 36);
                prop_assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f' | '-')));
            }
        }

        /// Every flag and argument that takes a value, given any text: parsed or refused by
        /// clap (exit 2), never a panic.
        #[test]
        fn any_value_of_any_argument_parses_or_errs(value in "\\PC{0,40}", which in 0usize..12) {
            let v = value.as_str();
            let argv: Vec<&str> = match which {
                0 => vec!["throttle", "0193", "--rows-per-second", v],
                1 => vec!["throttle", "0193", "--batches-per-second", v],
                2 => vec!["throttle", "0193", "--concurrency", v],
                3 => vec!["throttle", v, "--concurrency", "2"],
                4 => vec!["resume", "0193", "--extend-budget", v],
                5 => vec!["resume", v],
                6 => vec!["status", v],
                7 => vec!["audit", v],
                8 => vec!["quarantine", v, "--retry"],
                9 => vec!["runs", "--limit", v],
                10 => vec!["demo", "--rows", v],
                _ => vec!["pause", v, "--reason", v],
            };
            let _ = Cli::try_parse_from(std::iter::once("backfill").chain(argv));
        }

        /// Rates: every u32 from 1 reads back (with `_` separators too), anything larger
        /// or zero is refused.
        #[test]
        fn limits_read_whole_numbers_in_range(n in any::<u64>()) {
            let grouped = n.to_string().chars().rev().collect::<Vec<_>>().chunks(3)
                .map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("_")
                .chars().rev().collect::<String>();
            for text in [n.to_string(), grouped] {
                match u32::try_from(n) {
                    Ok(0) | Err(_) => prop_assert!(parse_limit(&text).is_err()),
                    Ok(v) => prop_assert_eq!(parse_limit(&text), Ok(v)),
                }
            }
        }

        /// A run id and every prefix of it are accepted, in any case, lower-cased.
        #[test]
        fn run_ids_and_their_prefixes_are_accepted(bytes in any::<u128>(), len in 1usize..=36) {
            let id = uuid::Uuid::from_u128(bytes).to_string();
            let prefix = &id[..len];
            prop_assert_eq!(parse_run_ref(&prefix.to_ascii_uppercase()), Ok(prefix.to_owned()));
        }
    }

    #[test]
    fn the_declarations_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn value_errors_name_the_input() {
        let errors = [
            parse_limit("0").unwrap_err(),
            parse_limit("4294967296").unwrap_err(),
            parse_limit("fast").unwrap_err(),
            parse_run_ref("zzzz").unwrap_err(),
            parse_run_ref(&"0".repeat(37)).unwrap_err(),
            parse_run_ref("  ").unwrap_err(),
        ];
        expect_test::expect![[r#"
            must be at least 1 (or `off` for no limit)
            `4294967296` is not a whole number from 1 to 4294967295 or `off`
            `fast` is not a whole number from 1 to 4294967295 or `off`
            `zzzz` is not a run id: hex digits and `-`, e.g. `0193a1b2`; `backfill runs` lists the run ids
            `0000000000000000000000000000000000000` is longer than a run id (36 characters); `backfill runs` lists the run ids
            empty run id; `backfill runs` lists the run ids"#]]
        .assert_eq(&errors.join("\n"));
        expect_test::expect!["`rows=-1`: `-1` is not a whole number; write it as `rows=1000000,duration=2h,partitions=10,cost=5` (any subset)"]
            .assert_eq(&parse_extension("rows=-1").unwrap_err());
        assert_eq!(parse_extension("rows=5, duration=1h").unwrap().rows, 5);
    }
}
