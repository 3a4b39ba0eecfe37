//! One partition from start to end: attempts from its checkpoint, the retry decision of
//! `core::retry` carried out after a failed one, and the slow-partition check.

use std::sync::atomic::Ordering;
use std::time::Instant;

use backfill_core::retry::{ErrorClass, Failure, NextStep, RetryHistory};
use backfill_core::secret::redact;
use backfill_core::{Partition, RowCounts, Value, WriteMode};
use backfill_store::{Outcome, StoreError};

use crate::error::AttemptError;
use crate::events::Event;

use super::{
    Ctx, PartitionEnd, Work, checkpoint, finish_partition, replace_partition, split,
    split_by_estimate, store_call, upsert_partition,
};

/// Attempts one partition until it is done, fails for good, or is interrupted.
/// `checkpoint` is the stored resume point; it advances in memory with every durable
/// checkpoint, so a retry in this process continues where the failed attempt stopped.
pub(super) async fn run_partition(ctx: &Ctx, work: Work) -> PartitionEnd {
    let Work {
        partition,
        mut checkpoint,
        splittable,
    } = work;
    let partition = &partition;
    let splittable =
        splittable && backfill_core::split::split_window(&partition.window, 2).len() > 1;
    // When this process first started the partition: what "slow" is measured against.
    let first_started = Instant::now();
    let policy = ctx.spec.limits.retry;
    // The outage in progress and the attempts outages used (`RetryPolicy::after_failure`).
    let mut history = RetryHistory::default();
    // Set when the target rejected rows of a pushed-down batch or of a `replace`: the next
    // attempt takes the row path and quarantines them.
    let mut row_path = false;
    // Whether an attempt started in this process (later ones re-read the checkpoint).
    let mut attempted = false;
    if checkpoint.is_none()
        && ctx.spec.target.mode == WriteMode::Upsert
        && finish_if_empty(ctx, partition).await
    {
        return PartitionEnd::Done;
    }
    loop {
        if ctx.should_stop() {
            return PartitionEnd::Interrupted;
        }
        let attempt = match store_call(ctx, "start attempt", || {
            ctx.store
                .start_attempt(&ctx.run_id, &partition.id, &ctx.actor)
        })
        .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot start attempt");
                return PartitionEnd::Interrupted;
            }
        };
        if attempted {
            // The store holds the resume point. After a lost connection the last batch may
            // have committed (with its checkpoint) without this process hearing of it.
            match store_call(ctx, "read checkpoint", || {
                ctx.store.partition(&ctx.run_id, &partition.id)
            })
            .await
            {
                Ok(record) => checkpoint = record.checkpoint,
                Err(e) => {
                    tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot read checkpoint");
                    return PartitionEnd::Interrupted;
                }
            }
        }
        let first_attempt_here = !attempted;
        attempted = true;
        if splittable
            && first_attempt_here
            && checkpoint.is_none()
            && let Some(end) = split_by_estimate(ctx, partition, attempt).await
        {
            return end;
        }
        ctx.emitter.emit(Event::PartitionStarted {
            partition_id: partition.id.clone(),
            attempt,
        });
        let started = Instant::now();
        let slow = SlowCheck {
            splittable,
            since: first_started,
        };
        let result = attempt_partition(
            ctx,
            partition,
            attempt,
            started,
            &mut checkpoint,
            row_path,
            slow,
        )
        .await;
        let finish = |outcome| finish_partition(ctx, partition, attempt, outcome);
        match result {
            Ok(counts) => {
                return match finish(Outcome::Done).await {
                    Ok(()) => {
                        ctx.live.partitions_finished.fetch_add(1, Ordering::Relaxed);
                        if splittable {
                            ctx.live.record_partition_time(first_started.elapsed());
                        }
                        ctx.emitter.emit(Event::PartitionDone {
                            partition_id: partition.id.clone(),
                            counts,
                        });
                        PartitionEnd::Done
                    }
                    Err(e) => {
                        tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot mark partition done");
                        PartitionEnd::Interrupted
                    }
                };
            }
            Err(AttemptError::Interrupted) | Err(AttemptError::Stale) => {
                return PartitionEnd::Interrupted;
            }
            Err(AttemptError::SplitRequested) => {
                // Twice the workers: slices are equal in time, not in rows, so smaller ones
                // balance the tail better (a slice already written finishes at once).
                let parts = (*ctx.live.concurrency().borrow() * 2).max(2);
                let elapsed = first_started.elapsed();
                let reason = serde_json::json!({
                    "trigger": "slow",
                    "elapsed_seconds": elapsed.as_secs_f64(),
                    "median_seconds": ctx.live.median_partition_time().map(|d| d.as_secs_f64()),
                    "split_slow": ctx.spec.limits.split.slow_factor,
                });
                return split(
                    ctx,
                    partition,
                    attempt,
                    parts,
                    checkpoint.as_deref(),
                    reason,
                )
                .await;
            }
            Err(AttemptError::Store(
                StoreError::StaleAttempt { .. } | StoreError::LeaseLost { .. },
            )) => {
                return PartitionEnd::Interrupted;
            }
            Err(error) if error.class() == ErrorClass::Data && !row_path && can_isolate(ctx) => {
                // The pushdown and plain `replace` inserts cannot tell which rows the target
                // rejects: redo the partition on the row path, isolating them into quarantine.
                row_path = true;
                let message = format!(
                    "{}; redoing the partition row by row to quarantine the rejected rows",
                    redact(&error.to_string())
                );
                if finish(Outcome::Retry { error: &message }).await.is_err() {
                    return PartitionEnd::Interrupted;
                }
            }
            Err(error) => {
                let message = redact(&error.to_string());
                let failure = Failure {
                    class: error.class(),
                    unavailable: error.is_unavailable(),
                    attempt,
                    at: first_started.elapsed(),
                };
                // An unreachable database is waited out by backoff; the breaker guards
                // against one that answers with errors.
                if !failure.unavailable {
                    ctx.live.record_batch(Some(&message));
                }
                match policy.after_failure(failure, &mut history, rand::random::<f64>()) {
                    NextStep::Retry(delay) | NextStep::WaitOutOutage(delay) => {
                        if finish(Outcome::Retry { error: &message }).await.is_err() {
                            return PartitionEnd::Interrupted;
                        }
                        ctx.emitter.emit(Event::PartitionRetrying {
                            partition_id: partition.id.clone(),
                            attempt,
                            error: message,
                            delay,
                        });
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = ctx.stopping() => return PartitionEnd::Interrupted,
                        }
                    }
                    NextStep::Fail(reason) => {
                        let text = reason.message(&message, attempt);
                        if finish(Outcome::Failed { error: &text }).await.is_err() {
                            return PartitionEnd::Interrupted;
                        }
                        ctx.emitter.emit(Event::PartitionFailed {
                            partition_id: partition.id.clone(),
                            error: text,
                        });
                        return PartitionEnd::Failed;
                    }
                }
            }
        }
    }
}

/// Whether a running attempt should stop and split its partition (`limits.split_slow`).
#[derive(Clone, Copy)]
pub(super) struct SlowCheck {
    splittable: bool,
    since: Instant,
}

impl SlowCheck {
    pub(super) fn due(&self, ctx: &Ctx) -> bool {
        self.splittable
            && ctx
                .live
                .is_slow(&ctx.spec.limits.split, self.since.elapsed())
    }
}

/// Whether a partition whose write the target rejected can be redone isolating the rejected
/// rows: `replace` always, `upsert` when its first try was pushed down (the row path of
/// `upsert` isolates them already), `sql` never (its rows are not the engine's).
pub(super) fn can_isolate(ctx: &Ctx) -> bool {
    match ctx.spec.target.mode {
        WriteMode::Upsert => ctx.pushdown.is_some(),
        WriteMode::Replace { .. } => true,
        WriteMode::Sql { .. } => false,
    }
}

/// Upsert of an empty window writes nothing, so a fresh partition whose window holds no row is
/// marked done in one store transaction instead of an attempt's two. Any error here (or a
/// non-empty window) returns false and the partition takes the normal path, which retries.
/// Replace mode never takes this path: its empty window must still be deleted in the target.
pub(super) async fn finish_if_empty(ctx: &Ctx, partition: &Partition) -> bool {
    let Some(source) = &ctx.source else {
        return false;
    };
    match source.has_rows(&partition.window).await {
        Ok(false) => {}
        _ => return false,
    }
    let Ok(attempt) = ctx
        .store
        .finish_empty(&ctx.run_id, &partition.id, &ctx.actor)
        .await
    else {
        return false;
    };
    let partition_id = partition.id.clone();
    ctx.emitter.emit(Event::PartitionStarted {
        partition_id: partition_id.clone(),
        attempt,
    });
    ctx.live.partitions_finished.fetch_add(1, Ordering::Relaxed);
    ctx.emitter.emit(Event::PartitionDone {
        partition_id,
        counts: RowCounts::default(),
    });
    true
}

/// One attempt: the rows of the partition, from its checkpoint, in the spec's write mode.
/// Returns the counts of this attempt.
pub(super) async fn attempt_partition(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    started: Instant,
    resume_from: &mut Option<Vec<Value>>,
    row_path: bool,
    slow: SlowCheck,
) -> Result<RowCounts, AttemptError> {
    match &ctx.spec.target.mode {
        WriteMode::Upsert => {
            upsert_partition(
                ctx,
                partition,
                attempt,
                started,
                resume_from,
                row_path,
                slow,
            )
            .await
        }
        WriteMode::Replace { .. } => {
            replace_partition(ctx, partition, attempt, started, row_path, slow).await
        }
        WriteMode::Sql { .. } => {
            let _permit = ctx.live.permit().await;
            if ctx.should_stop() {
                return Err(AttemptError::Interrupted);
            }
            ctx.live.throttle(0).await;
            let counts = ctx.sink.execute_sql(&partition.window).await?;
            ctx.live.record_batch(None);
            checkpoint(ctx, partition, attempt, None, &counts, started).await?;
            Ok(counts)
        }
    }
}
