//! Typed progress events of a run.
//!
//! Every state change the engine makes is emitted once, through [`Emitter::emit`], which writes
//! the tracing line (with run and partition ids) and forwards the event to whoever renders
//! progress (the CLI's bar or plain lines). The audit event for the same change is written by
//! the store in the transaction that makes the change.

use std::time::Duration;

use backfill_core::RowCounts;
use tokio::sync::mpsc;

/// Something that happened in a run.
#[derive(Clone, Debug)]
pub enum Event {
    /// An attempt of a partition started.
    PartitionStarted {
        /// Partition id.
        partition_id: String,
        /// Attempt number (1-based).
        attempt: u32,
    },
    /// A batch was written and checkpointed.
    BatchWritten {
        /// Partition id.
        partition_id: String,
        /// What this batch did.
        counts: RowCounts,
    },
    /// A partition finished; `counts` covers the whole partition.
    PartitionDone {
        /// Partition id.
        partition_id: String,
        /// Totals of the partition.
        counts: RowCounts,
    },
    /// An attempt failed and will be retried after `delay`.
    PartitionRetrying {
        /// Partition id.
        partition_id: String,
        /// The failed attempt.
        attempt: u32,
        /// Why (secrets redacted).
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// A partition failed for good.
    PartitionFailed {
        /// Partition id.
        partition_id: String,
        /// Why (secrets redacted).
        error: String,
    },
    /// A graceful stop was requested; in-flight batches are finishing.
    Stopping,
    /// The workers are held (paused, cancelled, budget, breaker, window): in-flight batches
    /// finish and checkpoint, then the run waits.
    Holding {
        /// Why.
        hold: crate::control::Hold,
    },
    /// The hold was lifted; the run continues.
    Released,
    /// A too big or too slow partition was split into `children` new partitions.
    PartitionSplit {
        /// The split partition.
        partition_id: String,
        /// How many children now carry its work.
        children: u32,
    },
    /// `backfill throttle` changed the limits (0 means no limit).
    Throttled {
        /// Rows per second now in force.
        rows_per_second: u32,
        /// Batches per second now in force.
        batches_per_second: u32,
        /// Concurrency now in force.
        concurrency: u32,
    },
    /// A budget line passed 80%.
    BudgetWarning {
        /// `rows`, `duration`, `partitions` or `cost`.
        kind: String,
        /// Used so far (seconds for `duration`).
        used: f64,
        /// The limit, extensions included.
        limit: f64,
    },
}

/// Writes each event to the log and to an optional listener.
#[derive(Clone, Debug)]
pub struct Emitter {
    run_id: String,
    listener: Option<mpsc::UnboundedSender<Event>>,
}

impl Emitter {
    /// An emitter for `run_id`, forwarding to `listener` when given.
    pub fn new(run_id: &str, listener: Option<mpsc::UnboundedSender<Event>>) -> Self {
        Emitter {
            run_id: run_id.to_owned(),
            listener,
        }
    }

    /// Logs `event` and forwards it. A listener that went away is ignored: progress display is
    /// never a reason to fail a run.
    pub fn emit(&self, event: Event) {
        let run_id = self.run_id.as_str();
        match &event {
            Event::PartitionStarted {
                partition_id,
                attempt,
            } => {
                tracing::debug!(run_id, partition_id, attempt, "partition started");
            }
            Event::BatchWritten {
                partition_id,
                counts,
            } => {
                tracing::trace!(run_id, partition_id, rows = counts.read, "batch written");
            }
            Event::PartitionDone {
                partition_id,
                counts,
            } => tracing::info!(
                run_id,
                partition_id,
                read = counts.read,
                inserted = counts.inserted,
                updated = counts.updated,
                unchanged = counts.unchanged,
                deleted = counts.deleted,
                "partition done"
            ),
            Event::PartitionRetrying {
                partition_id,
                attempt,
                error,
                delay,
            } => tracing::warn!(
                run_id,
                partition_id,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = error.as_str(),
                "partition attempt failed; retrying"
            ),
            Event::PartitionFailed {
                partition_id,
                error,
            } => {
                tracing::error!(
                    run_id,
                    partition_id,
                    error = error.as_str(),
                    "partition failed"
                );
            }
            Event::Stopping => {
                tracing::info!(run_id, "stop requested; finishing in-flight batches")
            }
            // The controller logs these with their details.
            Event::Holding { .. }
            | Event::Released
            | Event::PartitionSplit { .. }
            | Event::Throttled { .. }
            | Event::BudgetWarning { .. } => {}
        }
        if let Some(tx) = &self.listener {
            let _ = tx.send(event);
        }
    }
}
