//! The status of a run, derived from its stored records.
//!
//! Pure arithmetic over a run and its partitions; the numbers `backfill status` prints and
//! `--json` returns. Nothing here is stored, so the status can never disagree with the store.

use backfill_core::{PartitionState, RowCounts, RunState};
use backfill_store::{PartitionRecord, RunRecord};
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
    /// Failed partitions with their windows and last error, in plan order.
    pub failing: Vec<FailingPartition>,
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

/// Computes the status of `run` from its `partitions` at instant `now`.
pub fn compute(run: &RunRecord, partitions: &[PartitionRecord], now: DateTime<Utc>) -> RunStatus {
    let mut counts = RowCounts::default();
    let mut attempts: u64 = 0;
    let mut retries: u64 = 0;
    let mut started_partitions: u64 = 0;
    let mut failed_attempts: u64 = 0;
    for p in partitions {
        counts.add(&p.counts);
        attempts += u64::from(p.attempts);
        if p.attempts > 0 {
            started_partitions += 1;
            retries += u64::from(p.attempts - 1);
            failed_attempts += u64::from(p.errors);
        }
    }
    let _ = attempts;
    let count = |s: PartitionState| partitions.iter().filter(|p| p.state == s).count() as u64;
    let by_state: Vec<(PartitionState, u64)> = PartitionState::ALL
        .iter()
        .map(|s| (*s, count(*s)))
        .collect();
    // A split partition's work is carried by its children: count them, not it.
    let total = partitions.len() as u64 - count(PartitionState::Split);
    let done = count(PartitionState::Done);
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
    let failing = partitions
        .iter()
        .filter(|p| {
            p.state == PartitionState::Failed
                || (!matches!(p.state, PartitionState::Done | PartitionState::Split)
                    && p.last_error.is_some())
        })
        .map(|p| FailingPartition {
            partition_id: p.partition_id.clone(),
            window: p.window.to_string(),
            attempts: p.attempts,
            error: p.last_error.clone().unwrap_or_default(),
            state: p.state,
        })
        .collect();
    RunStatus {
        by_state,
        counts,
        success_rate: if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        },
        rows_per_second,
        errors_per_1000_rows: if counts.read == 0 {
            0.0
        } else {
            failed_attempts as f64 * 1000.0 / counts.read as f64
        },
        retries_per_partition: if started_partitions == 0 {
            0.0
        } else {
            retries as f64 / started_partitions as f64
        },
        eta_seconds,
        elapsed_seconds,
        failing,
    }
}
