//! `run --only-gaps` / `--only-diff`: compare before creating the run, record the partitions
//! skipped as already correct (and those narrowed to their differing slices), and show
//! "would change / changed" per differing partition in the run summary and `status`.
//!
//! The comparison runs before the run is created, so a spec that cannot be compared (`sql`
//! mode, no window column) leaves nothing behind. It applies to a new run only: an unfinished
//! run of the spec is refused with a hint (resume it as it is, or `--new`).

use backfill_core::{Spec, WriteMode};
use backfill_engine::only_gaps::{Findings, OnlyGapsOptions, OnlyGapsOutcome};
use backfill_store::{GapRecord, RunRecord, Store};
use serde_json::{Value as J, json};

use crate::UserError;
use crate::args::RunArgs;
use crate::commands::thousands;
use crate::output::Output;

/// Differing partitions listed in a summary or `status` at most.
const LISTED: usize = 20;

/// Whether `run` was asked to write only what differs; `--window-column` alone is refused.
pub(crate) fn wanted(args: &RunArgs) -> anyhow::Result<bool> {
    let wanted = args.only_gaps || args.only_diff;
    if !wanted && args.window_column.is_some() {
        return Err(UserError::new(
            "--window-column says how --only-gaps and --only-diff compare partitions; alone it \
             changes nothing",
        )
        .hint("add --only-gaps (or --only-diff), or leave --window-column out")
        .into());
    }
    Ok(wanted)
}

/// Before the run is created: refuses what cannot work (`sql` mode, an unfinished run to
/// resume) and compares source and target.
pub(crate) async fn compare(
    store: &Store,
    spec: &Spec,
    args: &RunArgs,
    out: Output,
) -> anyhow::Result<Findings> {
    let flag = flag(args);
    if matches!(spec.target.mode, WriteMode::Sql { .. }) {
        return Err(UserError::new(format!(
            "{flag} compares the source's rows with the target table, but in `sql` mode the \
             statement makes its own rows: there is nothing to compare"
        ))
        .hint("run without it: `backfill run SPEC` executes the statement for every partition")
        .into());
    }
    if !args.new
        && let Some(run) = store.find_unfinished_run(&spec.name).await?
    {
        return Err(refuse_resume(&run, flag, &args.spec));
    }
    let options = OnlyGapsOptions {
        only_diff: args.only_diff,
        window_column: args.window_column.clone(),
    };
    out.note(format!(
        "{flag}: comparing every partition's source and target fingerprints…"
    ));
    backfill_engine::only_gaps::compare(spec, &options)
        .await
        .map_err(crate::commands::diff::diff_error)
}

/// The refusal of `--only-gaps` on a run that exists: skipping is decided for a new run.
pub(crate) fn refuse_resume(run: &RunRecord, flag: &str, spec: &std::path::Path) -> anyhow::Error {
    UserError::new(format!(
        "{flag} decides which partitions to skip when a run is created, but `{}` has an \
         unfinished run {} ({}), which would be resumed",
        run.spec_name, run.id, run.state
    ))
    .hint(format!(
        "`backfill resume {}` continues it as planned; `backfill run --new {flag} {}` starts \
         a new run that writes only what differs",
        run.id,
        spec.display()
    ))
    .into()
}

fn flag(args: &RunArgs) -> &'static str {
    if args.only_diff {
        "--only-diff"
    } else {
        "--only-gaps"
    }
}

/// After the run is created: records the findings and says what will run.
pub(crate) async fn record(
    store: &Store,
    run: &RunRecord,
    actor: &str,
    findings: &Findings,
    out: Output,
) -> anyhow::Result<OnlyGapsOutcome> {
    let outcome = backfill_engine::only_gaps::record(store, run, actor, findings).await?;
    let narrowed = if outcome.narrowed > 0 {
        format!(
            " ({} narrowed to {} differing slices)",
            outcome.narrowed, outcome.children
        )
    } else {
        String::new()
    };
    out.note(format!(
        "{} of {} partitions already match their source and are skipped as correct; {} \
         differ and run{narrowed}",
        thousands(outcome.skipped),
        thousands(outcome.partitions),
        thousands(outcome.differing),
    ));
    Ok(outcome)
}

/// What `--only-gaps` found for a run, for the summary and `status`: `None` when the run was
/// not made with it.
pub(crate) struct GapView {
    /// Partitions skipped as correct.
    pub(crate) skipped: u64,
    /// The first differing partitions.
    pub(crate) differing: Vec<GapRecord>,
}

impl GapView {
    /// Reads the view of `run_id`; `None` when no partition was diffed before the run.
    pub(crate) async fn load(store: &Store, run_id: &str) -> anyhow::Result<Option<GapView>> {
        let skipped = store.skipped_count(run_id).await?;
        let differing = store.gap_partitions(run_id, LISTED).await?;
        if skipped == 0 && differing.is_empty() {
            return Ok(None);
        }
        Ok(Some(GapView { skipped, differing }))
    }

    /// `{"skipped", "differing": [{partition_id, gap, window, state, would_change, changed}]}`.
    pub(crate) fn to_json(&self) -> J {
        json!({
            "skipped": self.skipped,
            "differing": self.differing.iter().map(|g| json!({
                "partition_id": g.partition_id,
                "gap": g.gap,
                "window": g.window.to_string(),
                "state": g.state.as_str(),
                "would_change": g.would.map(|w| json!({
                    "insert": w.insert,
                    "update": w.update,
                    "unchanged": w.unchanged,
                    "extra": w.extra,
                })),
                "changed": {
                    "read": g.changed.read,
                    "inserted": g.changed.inserted,
                    "updated": g.changed.updated,
                    "unchanged": g.changed.unchanged,
                    "deleted": g.changed.deleted,
                },
            })).collect::<Vec<_>>(),
        })
    }

    /// Lines for people: the skipped count, then each differing partition.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "  skipped:    {} partitions already correct (not written)",
            thousands(self.skipped)
        )];
        for g in &self.differing {
            let would = g.would.map_or_else(
                || format!("{} (fingerprints differ)", g.gap),
                |w| {
                    format!(
                        "{}: would insert {}, update {}, {} extra",
                        g.gap,
                        thousands(w.insert),
                        thousands(w.update),
                        thousands(w.extra)
                    )
                },
            );
            lines.push(format!(
                "  differs:    {} {} {would}; changed: {} inserted, {} updated, {} deleted",
                g.partition_id,
                g.window,
                thousands(g.changed.inserted),
                thousands(g.changed.updated),
                thousands(g.changed.deleted),
            ));
        }
        lines
    }
}
