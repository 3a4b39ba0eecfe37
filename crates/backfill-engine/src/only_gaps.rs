//! `run --only-gaps` and `run --only-diff`: before a new run executes, compare its source with
//! its target ([`crate::diff`]) and write only what differs.
//!
//! `--only-gaps`: one bucketed fingerprint query per side gives every partition's fingerprint;
//! a partition whose fingerprints are equal is recorded as skipped-as-correct (`done`, no
//! attempt, `gap = 'equal'`; see `backfill_store::skips`), the others run as usual and keep
//! how they differed (`missing`, `partial`, `drifted`). `--only-diff` also bisects each
//! differing partition (the same bisection as `backfill diff`), records its would-change
//! counts (insert, update, unchanged, extra), and narrows it to the slices of its window where
//! rows differ: the partition becomes `split` and its children `<id>.<n>` carry those slices,
//! so the run reads and writes only them. All of it is one store transaction with one
//! `run.skipped_correct` audit event (plus one `partition.narrowed` per narrowed partition).
//!
//! Does not: apply to a run that already started (the caller compares before it creates the
//! run and refuses a resume), or to `sql`
//! mode (nothing to compare). Narrowing is exact only when the source query filters on the
//! diff's window column (the slices are windows of that column, bound as `:start`/`:end`).
//!
//! Invariants:
//! - Only partitions still `pending` without a checkpoint are skipped or narrowed.
//! - A skipped partition's source and target had equal fingerprints (row count and both
//!   64-bit sums of the row digests) at the time of the diff.

use backfill_core::Spec;
use backfill_store::{Differing, GapFindings, RunRecord, Store, StoreError, WouldChange};
use serde_json::json;

use crate::diff::{DiffError, DiffOptions, Gap, diff};

/// `--only-diff` cuts a differing range again until a slice holds at most this many rows a
/// side (`diff`'s default is 2,000): at 16 slices a level, a day of W1 (13,700 rows) narrows
/// to slices of ~5 minutes, ~50 rows, around each differing row.
pub const ONLY_DIFF_FETCH_ROWS: u64 = 256;

/// How `--only-gaps` compares.
#[derive(Clone, Debug, Default)]
pub struct OnlyGapsOptions {
    /// `--only-diff`: bisect differing partitions and write only the differing slices.
    pub only_diff: bool,
    /// The column placing rows in partitions (see [`DiffOptions::window_column`]).
    pub window_column: Option<String>,
}

/// What the pass found and recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnlyGapsOutcome {
    /// Partitions compared.
    pub partitions: u64,
    /// Partitions skipped as already correct.
    pub skipped: u64,
    /// Partitions that differ (and run).
    pub differing: u64,
    /// Partitions narrowed to their differing slices (`--only-diff`).
    pub narrowed: u64,
    /// Children created by narrowing.
    pub children: u64,
    /// Fingerprint queries run (both sides).
    pub queries: u64,
}

/// What the comparison found, before anything is recorded (see [`compare`]).
#[derive(Clone, Debug)]
pub struct Findings {
    /// Partitions whose source and target agree, with their row count, in plan order.
    pub equal: Vec<(String, u64)>,
    /// Partitions that differ.
    pub differing: Vec<Differing>,
    /// Partitions compared.
    pub partitions: u64,
    /// The column that placed rows in partitions.
    pub window_column: String,
    /// Fingerprint queries run (both sides).
    pub queries: u64,
    /// Whether differing partitions were bisected and narrowed (`--only-diff`).
    pub only_diff: bool,
}

/// Compares `spec`'s source with its target, partition by partition of its plan, without
/// writing anything: done before the run is created, so a spec that cannot be compared
/// (`sql` mode, no window column, an unhashable column) creates no run.
pub async fn compare(spec: &Spec, options: &OnlyGapsOptions) -> Result<Findings, DiffError> {
    let diff_options = DiffOptions {
        window_column: options.window_column.clone(),
        bisect: options.only_diff,
        max_keys: 0,
        fetch_rows: ONLY_DIFF_FETCH_ROWS,
        ..DiffOptions::default()
    };
    let result = diff(spec, &diff_options, &mut |_| {}).await?;
    let mut equal = Vec::new();
    let mut differing = Vec::new();
    for p in &result.partitions {
        let gap = Gap::of(&p.source, &p.target);
        if gap == Gap::Ok {
            equal.push((p.partition.id.clone(), p.source.rows));
            continue;
        }
        differing.push(Differing {
            partition_id: p.partition.id.clone(),
            gap: gap.name().to_owned(),
            would: p.counts.map(|c| WouldChange {
                insert: c.insert,
                update: c.update,
                unchanged: c.unchanged,
                extra: c.extra,
            }),
            narrow_to: narrowing(&p.partition.window, &p.ranges),
        });
    }
    Ok(Findings {
        equal,
        differing,
        partitions: result.partitions.len() as u64,
        window_column: result.window_column,
        queries: result.queries,
        only_diff: options.only_diff,
    })
}

/// Records `findings` for the new run `run` (created from the same plan): skips the equal
/// partitions, narrows the differing ones (`--only-diff`), one store transaction.
pub async fn record(
    store: &Store,
    run: &RunRecord,
    actor: &str,
    findings: &Findings,
) -> Result<OnlyGapsOutcome, StoreError> {
    let recorded = store
        .record_gaps(
            &run.id,
            actor,
            GapFindings {
                equal: &findings.equal,
                differing: &findings.differing,
                detail: json!({
                    "mode": if findings.only_diff { "only_diff" } else { "only_gaps" },
                    "window_column": findings.window_column,
                    "fingerprint_queries": findings.queries,
                    "plan_hash": run.plan_hash,
                }),
            },
        )
        .await?;
    Ok(OnlyGapsOutcome {
        partitions: findings.partitions,
        skipped: recorded.skipped,
        differing: findings.differing.len() as u64,
        narrowed: recorded.narrowed,
        children: recorded.children,
        queries: findings.queries,
    })
}

/// The windows a differing partition is narrowed to: its differing slices, unless they are
/// the whole window (or unknown), when it runs whole.
fn narrowing(
    window: &backfill_core::Window,
    ranges: &[backfill_core::Window],
) -> Vec<backfill_core::Window> {
    match ranges {
        [] => Vec::new(),
        [one] if one == window => Vec::new(),
        _ => ranges.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::narrowing;
    use backfill_core::Window;

    #[test]
    fn a_partition_differing_everywhere_runs_whole() {
        let w = Window::Key { start: 0, end: 10 };
        let a = Window::Key { start: 2, end: 4 };
        assert!(narrowing(&w, &[]).is_empty());
        assert!(narrowing(&w, &[w]).is_empty());
        assert_eq!(narrowing(&w, &[a]), [a]);
    }
}
