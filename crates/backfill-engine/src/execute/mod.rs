//! Executes the partitions of a run: bounded concurrency, rate limit, retries, checkpoints.
//!
//! By stage: this module dispatches pending work to at most `concurrency` workers and holds
//! the store calls every stage shares (fenced finish and checkpoint); `attempt` runs one
//! partition attempt after attempt and carries out the retry decision of `core::retry`;
//! `upsert`, `replace` (and the `sql` statement, in `attempt`) are the write paths;
//! `quarantine` isolates the rows a target rejects; `split` cuts a skewed partition.
//!
//! Invariants:
//! - A checkpoint is written only after the batch it covers committed in the target, or in the
//!   same transaction when the target database is the state store (invariant 2).
//! - A partition resumes from its checkpoint; a replayed batch is harmless because every write
//!   mode is idempotent (invariants 1 and 3).
//! - Every store call after `start_attempt` is fenced by the attempt number, so an attempt that
//!   lost its partition can neither checkpoint nor finish it (invariant 5).
//! - A stop request or a hold (`control.rs`) is checked between batches: the batch in flight
//!   finishes and checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use backfill_connectors::{AnyPushdown, AnySink, AnySource, ConnectorError};
use backfill_core::retry::ErrorClass;
use backfill_core::{Partition, PartitionState, RowCounts, Spec, Value};
use backfill_store::{Outcome, Store, StoreError};
use tokio::task::JoinSet;

use crate::control::Live;
use crate::error::AttemptError;
use crate::events::{Emitter, Event};
use crate::patience;
use crate::pending::Pending;
use crate::shutdown::Shutdown;

mod attempt;
mod deletes;
mod quarantine;
mod ready;
mod replace;
mod split;
mod upsert;

use attempt::{SlowCheck, run_partition};
use quarantine::{isolate_rejected, rejected_row};
use replace::replace_partition;
use split::{split, split_by_estimate};
use upsert::{Reader, Written, upsert_partition};

/// Everything a partition worker needs, shared by all workers of a run.
pub(crate) struct Ctx {
    pub(crate) run_id: String,
    pub(crate) actor: String,
    pub(crate) spec: Spec,
    pub(crate) store: Store,
    /// Always present in `upsert` and `replace` modes; in `sql` mode only when the spec has
    /// `[source]`, which then only counts rows (`split_rows`, `largest_first`).
    pub(crate) source: Option<AnySource>,
    pub(crate) sink: AnySink,
    /// Moves the rows inside the databases instead of through `source` and `sink`, when the
    /// spec allows it and the systems can (see `backfill_connectors::open_pushdown`).
    pub(crate) pushdown: Option<AnyPushdown>,
    /// Holds, live limits, the circuit breaker and the session's tallies.
    pub(crate) live: Arc<Live>,
    pub(crate) shutdown: Shutdown,
    pub(crate) emitter: Emitter,
    /// The target database is the state store: checkpoints commit with the batch.
    pub(crate) same_database: bool,
    /// Reconciliation after each partition's last batch (`[validate] after_partition`),
    /// when on.
    pub(crate) reconciler: Option<Arc<crate::reconcile::Reconciler>>,
}

/// How one partition ended in this process.
#[derive(Debug)]
pub(crate) enum PartitionEnd {
    Done,
    Failed,
    /// Stopped by a stop request or a lost lease; left for a later resume.
    Interrupted,
    /// Too big or too slow: split into these children, to run next.
    Split(Vec<Work>),
}

/// A partition to run, from its checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct Work {
    pub(crate) partition: Partition,
    pub(crate) checkpoint: Option<Vec<Value>>,
    /// Only the plan's own partitions split; children never split again.
    pub(crate) splittable: bool,
}

impl Ctx {
    /// True when workers must not start another batch: a stop request or a hold.
    pub(crate) fn should_stop(&self) -> bool {
        self.shutdown.is_requested() || self.live.is_held()
    }

    /// The source rows are read from. `open_connectors` refuses an `upsert` or `replace` spec
    /// without one, so the error only guards a misuse of the library, without panicking.
    fn rows_source(&self) -> Result<&AnySource, ConnectorError> {
        self.source.as_ref().ok_or_else(|| ConnectorError::Sql {
            context: "reading rows".to_owned(),
            message: format!(
                "`{}` mode reads rows from a source, and the spec has no `[source]`",
                self.spec.target.mode.name()
            ),
            class: ErrorClass::Permanent,
        })
    }

    /// The undo log's tag for `partition_id`'s writes, when `target.undo` is on.
    pub(crate) fn undo_batch(&self, partition_id: &str) -> Option<backfill_connectors::UndoBatch> {
        self.spec
            .target
            .undo
            .then(|| backfill_connectors::UndoBatch {
                run_id: self.run_id.clone(),
                partition_id: partition_id.to_owned(),
                every_key: self.spec.target.propagate_deletes,
            })
    }

    /// Completes when workers must stop (at once if they must).
    async fn stopping(&self) {
        tokio::select! {
            () = self.shutdown.requested() => {}
            () = self.live.held() => {}
        }
    }
}

/// How a pass of [`run_partitions`] ended.
#[derive(Debug, Default)]
pub(crate) struct PassEnd {
    /// Some partition was interrupted (a stop request or a lost lease) and is left for a
    /// later resume.
    pub(crate) interrupted: bool,
    /// The pass found no pending work at all (it read to the end and started nothing): the
    /// run has nothing left to do.
    pub(crate) idle: bool,
    /// Reading the next page of pending work failed (after the store's patience): the pass
    /// stopped starting partitions and let those in flight end.
    pub(crate) error: Option<StoreError>,
}

/// Runs the partitions of `pending` (in its order, a page at a time) with at most the current
/// concurrency in flight. Returns early, with the rest untouched, on a stop request or a
/// hold. Never starts a partition that could take the session past the partition budget
/// ([`Live::partition_allowance`]): when the partitions finished plus those in flight reach
/// it, it waits for them and asks the controller for its decision (the budget's hold).
pub(crate) async fn run_partitions(ctx: Arc<Ctx>, mut pending: Pending) -> PassEnd {
    let mut concurrency = ctx.live.concurrency();
    let mut allowance = ctx.live.partition_allowance();
    let mut queue: std::collections::VecDeque<Work> = std::collections::VecDeque::new();
    let mut more = true;
    let mut tasks = JoinSet::new();
    let mut end = PassEnd::default();
    let mut started = 0u64;
    loop {
        let limit = *concurrency.borrow_and_update() as usize;
        let allowed = *allowance.borrow_and_update();
        let capped = |in_flight: usize| {
            let finished = ctx.live.partitions_finished.load(Ordering::Relaxed);
            finished.saturating_add(in_flight as u64) >= allowed
        };
        while tasks.len() < limit && !ctx.should_stop() && !capped(tasks.len()) {
            if queue.is_empty() && more {
                more = refill(&mut pending, &mut queue, &mut end).await;
            }
            let Some(work) = queue.pop_front() else {
                break;
            };
            started += 1;
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let id = work.partition.id.clone();
                (id, run_partition(&ctx, work).await)
            });
        }
        if tasks.is_empty() {
            if queue.is_empty() && more && capped(0) && !ctx.should_stop() {
                // Is there work left for the budget to hold back?
                more = refill(&mut pending, &mut queue, &mut end).await;
            }
            if !capped(0) || ctx.should_stop() || queue.is_empty() {
                break;
            }
            // The budget allows no more partitions: its hold is due. Wait for it, or for an
            // extension (`resume --extend-budget` while this process runs).
            ctx.live.poll_now();
            tokio::select! {
                () = ctx.stopping() => {}
                _ = allowance.changed() => {}
            }
            continue;
        }
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok((_, PartitionEnd::Split(children)))) => {
                    // The long tail goes first, to the workers that are free now.
                    for child in children.into_iter().rev() {
                        queue.push_front(child);
                    }
                }
                Some(Ok((_, PartitionEnd::Interrupted))) => end.interrupted = true,
                Some(Ok(_)) => {}
                Some(Err(join_error)) => {
                    // A panic in a worker is a bug; the partition stays `running` and is reset
                    // to `pending` by the next resume, so nothing is lost.
                    tracing::error!(run_id = ctx.run_id, error = %join_error, "partition task panicked");
                }
                None => break,
            },
            // A raised concurrency starts more partitions at once.
            _ = concurrency.changed() => {}
            // An extended budget too.
            _ = allowance.changed() => {}
        }
    }
    end.idle = started == 0 && !more && queue.is_empty() && end.error.is_none();
    end
}

/// Reads the next page of `pending` into `queue`; false when there is no more work (or the
/// store failed: the error is kept in `end`).
async fn refill(
    pending: &mut Pending,
    queue: &mut std::collections::VecDeque<Work>,
    end: &mut PassEnd,
) -> bool {
    match pending.next_page().await {
        Ok(page) if page.is_empty() => false,
        Ok(page) => {
            queue.extend(page);
            true
        }
        Err(e) => {
            end.error = Some(e);
            false
        }
    }
}

/// A state-store call, retried while it fails transiently (see `patience`).
async fn store_call<T, F, Fut>(ctx: &Ctx, what: &str, call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    patience::store(&ctx.shutdown, what, call).await
}

/// Ends attempt `attempt` with `outcome`, retrying while the store fails transiently. When a
/// retry finds the attempt already ended, the earlier try committed without this process
/// hearing of it: that is success if the partition is where `outcome` puts it.
async fn finish_partition(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    outcome: Outcome<'_>,
) -> Result<(), StoreError> {
    let mut tries = 0u32;
    let result = store_call(ctx, "finish partition", || {
        tries += 1;
        ctx.store
            .finish_partition(&ctx.run_id, &partition.id, attempt, outcome, &ctx.actor)
    })
    .await;
    let result = match result {
        Err(StoreError::StaleAttempt { .. }) if tries > 1 => {
            let record = ctx.store.partition(&ctx.run_id, &partition.id).await?;
            let landed = record.attempts == attempt
                && match outcome {
                    Outcome::Done => record.state.is_finished(),
                    Outcome::Retry { .. } => record.state == PartitionState::Pending,
                    Outcome::Failed { .. } => record.state == PartitionState::Failed,
                };
            if landed { Ok(()) } else { result }
        }
        other => other,
    };
    // A failed attempt spends the error budget of `[slo]`; giving a partition back to split
    // it is no failure.
    let failed = match outcome {
        Outcome::Done => false,
        Outcome::Retry { class, .. } | Outcome::Failed { class, .. } => class != "split",
    };
    if result.is_ok() && failed {
        ctx.live
            .attempts_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    result
}

async fn checkpoint(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    key: Option<&[Value]>,
    counts: &RowCounts,
    started: Instant,
) -> Result<(), AttemptError> {
    ctx.emitter.emit(Event::BatchWritten {
        partition_id: partition.id.clone(),
        counts: *counts,
    });
    checkpoint_only(ctx, partition, attempt, key, counts, started).await
}

async fn checkpoint_only(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    key: Option<&[Value]>,
    counts: &RowCounts,
    started: Instant,
) -> Result<(), AttemptError> {
    ctx.store
        .checkpoint(
            &ctx.run_id,
            &partition.id,
            attempt,
            key,
            counts,
            elapsed_ms(started),
        )
        .await
        .map_err(|e| match e {
            StoreError::StaleAttempt { .. } | StoreError::LeaseLost { .. } => AttemptError::Stale,
            other => AttemptError::Store(other),
        })
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
