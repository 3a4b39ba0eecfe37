//! The status of a run, derived from its stored records.
//!
//! Pure arithmetic over a run and the totals of its partitions; the numbers `backfill status`
//! prints and `--json` returns. The totals are aggregates the store computes, so the status
//! never reads every partition; nothing here is stored, so it can never disagree with the
//! store.

use backfill_core::{PartitionState, RowCounts, RunState};
use backfill_store::{PartitionRecord, PartitionTotals, RunRecord};
use chrono::{DateTime, Utc};

/// The status of one run at `now`.
#[derive(Clone, Debug)]
pub struct RunStatus {
    /// Partitions per state, in [`PartitionState::ALL`] order.
    pub by_state: Vec<(PartitionState, u64)>,
    /// Totals over all partitions.
    pub counts: RowCounts,
    /// Partitions done / total, in `[0, 1]` (1 for an empty plan).
    pub success_rate: f64,
    /// Rows read per second of run wall time.
    pub rows_per_second: f64,
    /// Failed attempts per 1,000 rows read.
    pub errors_per_1000_rows: f64,
    /// Retries (attempts after the first, including restarts after a pause) per partition
    /// that has started at least once.
    pub retries_per_partition: f64,
    /// Estimated time to finish at the pace so far; `None` before the first partition is done
    /// or when the run is not running.
    pub eta_seconds: Option<f64>,
    /// Seconds since the run first started (until it finished, for finished runs).
    pub elapsed_seconds: f64,
    /// Failing partitions with their windows and last error, in plan order: the first ones
    /// read (see [`compute`]).
    pub failing: Vec<FailingPartition>,
    /// Failing partitions in all.
    pub failing_total: u64,
}

/// A partition whose last attempt failed.
#[derive(Clone, Debug)]
pub struct FailingPartition {
    /// Partition id.
    pub partition_id: String,
    /// Its window, as text.
    pub window: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error (secrets redacted).
    pub error: String,
    /// Its state (`failed`, or `pending` waiting for a retry).
    pub state: PartitionState,
}

/// Failing partitions `status` lists (`RunStatus::failing_total` counts them all).
pub const FAILING_LISTED: usize = 1000;

/// Computes the status of `run` at instant `now` from the totals of its partitions
/// (`Store::partition_totals`, or `PartitionTotals::of` over records) and its first failing
/// partitions (`Store::failing_partitions`). Nothing per partition beyond `failing` is
/// needed, so a run of a million partitions costs what a run of ten does.
pub fn compute(
    run: &RunRecord,
    totals: &PartitionTotals,
    failing: &[PartitionRecord],
    now: DateTime<Utc>,
) -> RunStatus {
    let counts = totals.counts;
    let total = totals.total();
    let done = totals.count(PartitionState::Done);
    let end = match run.state {
        RunState::Running => now,
        _ => run.finished_at.unwrap_or(run.updated_at),
    };
    let elapsed_seconds = run
        .started_at
        .map_or(0.0, |s| (end - s).num_milliseconds().max(0) as f64 / 1000.0);
    let rows_per_second = if elapsed_seconds > 0.0 {
        counts.read as f64 / elapsed_seconds
    } else {
        0.0
    };
    let eta_seconds = (run.state == RunState::Running && done > 0 && done < total)
        .then(|| elapsed_seconds / done as f64 * (total - done) as f64);
    let failing = failing
        .iter()
        .filter(|p| backfill_store::is_failing(p))
        .map(|p| FailingPartition {
            partition_id: p.partition_id.clone(),
            window: p.window.to_string(),
            attempts: p.attempts,
            error: p.last_error.clone().unwrap_or_default(),
            state: p.state,
        })
        .collect();
    RunStatus {
        by_state: totals.by_state.clone(),
        counts,
        failing_total: totals.failing,
        success_rate: if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        },
        rows_per_second,
        errors_per_1000_rows: if counts.read == 0 {
            0.0
        } else {
            totals.errors as f64 * 1000.0 / counts.read as f64
        },
        retries_per_partition: if totals.started == 0 {
            0.0
        } else {
            totals.retries as f64 / totals.started as f64
        },
        eta_seconds,
        elapsed_seconds,
        failing,
    }
}
