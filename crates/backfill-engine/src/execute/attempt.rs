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
    let mut run = PartitionRun {
        // When this process first started the partition: what "slow" is measured against.
        first_started: Instant::now(),
        splittable,
        history: RetryHistory::default(),
        row_path: false,
    };
    // Whether an attempt started in this process (later ones re-read the checkpoint).
    let mut attempted = false;
    // Source readiness first: an empty window of a source not loaded yet is not done.
    if checkpoint.is_none() {
        match super::ready::wait_for_source(ctx, partition).await {
            super::ready::Gate::Open => {}
            super::ready::Gate::Failed => return PartitionEnd::Failed,
            super::ready::Gate::Interrupted => return PartitionEnd::Interrupted,
        }
    }
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
        let Some(attempt) = begin_attempt(ctx, partition, attempted, &mut checkpoint).await else {
            return PartitionEnd::Interrupted;
        };
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
        let slow = SlowCheck {
            splittable,
            since: run.first_started,
        };
        let result = attempt_partition(
            ctx,
            partition,
            attempt,
            Instant::now(),
            &mut checkpoint,
            run.row_path,
            slow,
        )
        .await;
        let next = match result {
            Ok(counts) => match reconcile_partition(ctx, partition, attempt).await {
                Some(end) => Next::End(end),
                None => Next::End(run.done(ctx, partition, attempt, counts).await),
            },
            Err(AttemptError::SplitRequested) => Next::End(
                run.split_slow(ctx, partition, attempt, checkpoint.as_deref())
                    .await,
            ),
            Err(error) => run.after_error(ctx, partition, attempt, error).await,
        };
        if let Next::End(end) = next {
            return end;
        }
    }
}

/// Reconciles a written partition (`[validate] after_partition`) and records the check,
/// before it is marked done. `None` when it may be marked done (verified, not verified, or
/// reconciliation off); on a mismatch it fails the partition with `reconcile_mismatch`, with
/// no retry (see `crate::reconcile`), and returns how it ended.
async fn reconcile_partition(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
) -> Option<PartitionEnd> {
    let reconciler = ctx.reconciler.as_ref().filter(|r| r.after_partition)?;
    let mut check = reconciler
        .check(&partition.id, partition.window, "partition")
        .await;
    if check.status == backfill_store::CheckStatus::Mismatch
        && let Ok(n @ 1..) = ctx.store.quarantined_rows(&ctx.run_id, &partition.id).await
    {
        // The target refused rows, kept in quarantine: missing from it by design.
        check.status = backfill_store::CheckStatus::NotVerified;
        check.detail["reason"] = serde_json::json!(format!("{n} rows in quarantine"));
    }
    let recorded = store_call(ctx, "record the reconciliation", || {
        ctx.store
            .record_checks(&ctx.run_id, std::slice::from_ref(&check))
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot record the reconciliation");
        return Some(PartitionEnd::Interrupted);
    }
    if check.status != backfill_store::CheckStatus::Mismatch {
        return None;
    }
    let message =
        crate::reconcile::mismatch_message(&check, &crate::reconcile::key_names(&ctx.spec))
            + crate::reconcile::AFTER_WRITE;
    let failed = Outcome::Failed {
        error: &message,
        class: "reconcile_mismatch",
    };
    if finish_partition(ctx, partition, attempt, failed)
        .await
        .is_err()
    {
        return Some(PartitionEnd::Interrupted);
    }
    ctx.emitter.emit(Event::PartitionFailed {
        partition_id: partition.id.clone(),
        error: message,
    });
    Some(PartitionEnd::Failed)
}

/// What a failed attempt leads to.
enum Next {
    /// The partition's work in this process ends so.
    End(PartitionEnd),
    /// Another attempt (after the backoff already waited).
    Again,
}

/// What one partition's attempts in this process share.
struct PartitionRun {
    first_started: Instant,
    splittable: bool,
    /// The outage in progress and the attempts outages used (`RetryPolicy::after_failure`).
    history: RetryHistory,
    /// Set when the target rejected rows of a pushed-down batch or of a `replace`: the next
    /// attempt takes the row path and quarantines them.
    row_path: bool,
}

/// Starts an attempt (the fencing number) and, after the first in this process, re-reads the
/// checkpoint: after a lost connection the last batch may have committed with its checkpoint
/// unheard. `None` when the store cannot be reached (the partition is interrupted).
async fn begin_attempt(
    ctx: &Ctx,
    partition: &Partition,
    attempted: bool,
    checkpoint: &mut Option<Vec<Value>>,
) -> Option<u32> {
    let attempt = match store_call(ctx, "start attempt", || {
        ctx.store
            .start_attempt(&ctx.run_id, &partition.id, &ctx.actor)
    })
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot start attempt");
            return None;
        }
    };
    if attempted {
        match store_call(ctx, "read checkpoint", || {
            ctx.store.partition(&ctx.run_id, &partition.id)
        })
        .await
        {
            Ok(record) => *checkpoint = record.checkpoint,
            Err(e) => {
                tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot read checkpoint");
                return None;
            }
        }
    }
    Some(attempt)
}

impl PartitionRun {
    /// The attempt wrote the whole window: mark the partition done (fenced) and report it.
    async fn done(
        &self,
        ctx: &Ctx,
        partition: &Partition,
        attempt: u32,
        counts: RowCounts,
    ) -> PartitionEnd {
        match finish_partition(ctx, partition, attempt, Outcome::Done).await {
            Ok(()) => {
                ctx.live.partitions_finished.fetch_add(1, Ordering::Relaxed);
                if self.splittable {
                    ctx.live.record_partition_time(self.first_started.elapsed());
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
        }
    }

    /// The partition ran far longer than the others (`split_slow`): split it at its
    /// checkpoint into twice as many children as workers (slices are equal in time, not in
    /// rows, so smaller ones balance the tail better; a slice already written finishes at
    /// once).
    async fn split_slow(
        &self,
        ctx: &Ctx,
        partition: &Partition,
        attempt: u32,
        checkpoint: Option<&[Value]>,
    ) -> PartitionEnd {
        let parts = (*ctx.live.concurrency().borrow() * 2).max(2);
        let reason = serde_json::json!({
            "trigger": "slow",
            "elapsed_seconds": self.first_started.elapsed().as_secs_f64(),
            "median_seconds": ctx.live.median_partition_time().map(|d| d.as_secs_f64()),
            "split_slow": ctx.spec.limits.split.slow_factor,
        });
        split(ctx, partition, attempt, parts, checkpoint, reason).await
    }

    /// A failed attempt: stop when it lost its partition, redo it on the row path when the
    /// target rejected rows the path in use cannot isolate, otherwise carry out the decision of
    /// `core::retry` (retry after a backoff, wait out an outage, or fail for good).
    async fn after_error(
        &mut self,
        ctx: &Ctx,
        partition: &Partition,
        attempt: u32,
        error: AttemptError,
    ) -> Next {
        let finish = |outcome| finish_partition(ctx, partition, attempt, outcome);
        match error {
            AttemptError::Interrupted
            | AttemptError::Stale
            | AttemptError::Store(StoreError::StaleAttempt { .. } | StoreError::LeaseLost { .. }) => {
                Next::End(PartitionEnd::Interrupted)
            }
            error if error.class() == ErrorClass::Data && !self.row_path && can_isolate(ctx) => {
                // The pushdown and plain `replace` inserts cannot tell which rows the target
                // rejects: redo the partition on the row path, isolating them into quarantine.
                self.row_path = true;
                let message = format!(
                    "{}; redoing the partition row by row to quarantine the rejected rows",
                    redact(&error.to_string())
                );
                let retry = Outcome::Retry {
                    error: &message,
                    class: ErrorClass::Data.as_str(),
                };
                match finish(retry).await {
                    Ok(()) => Next::Again,
                    Err(_) => Next::End(PartitionEnd::Interrupted),
                }
            }
            error => self.retry_or_fail(ctx, partition, attempt, &error).await,
        }
    }

    /// Carries out `RetryPolicy::after_failure` for `error`.
    async fn retry_or_fail(
        &mut self,
        ctx: &Ctx,
        partition: &Partition,
        attempt: u32,
        error: &AttemptError,
    ) -> Next {
        let finish = |outcome| finish_partition(ctx, partition, attempt, outcome);
        let message = redact(&error.to_string());
        // What the store groups errors by: an unreachable database apart from its class.
        let class = if error.is_unavailable() {
            "unavailable"
        } else {
            error.class().as_str()
        };
        let failure = Failure {
            class: error.class(),
            unavailable: error.is_unavailable(),
            attempt,
            at: self.first_started.elapsed(),
        };
        // An unreachable database is waited out by backoff; the breaker guards against one
        // that answers with errors.
        if !failure.unavailable {
            ctx.live.record_batch(Some(&message));
        }
        let policy = ctx.spec.limits.retry;
        match policy.after_failure(failure, &mut self.history, rand::random::<f64>()) {
            NextStep::Retry(delay) | NextStep::WaitOutOutage(delay) => {
                let retry = Outcome::Retry {
                    error: &message,
                    class,
                };
                if finish(retry).await.is_err() {
                    return Next::End(PartitionEnd::Interrupted);
                }
                ctx.emitter.emit(Event::PartitionRetrying {
                    partition_id: partition.id.clone(),
                    attempt,
                    error: message,
                    delay,
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => Next::Again,
                    () = ctx.stopping() => Next::End(PartitionEnd::Interrupted),
                }
            }
            NextStep::Fail(reason) => {
                let text = reason.message(&message, attempt);
                let failed = Outcome::Failed {
                    error: &text,
                    class,
                };
                if finish(failed).await.is_err() {
                    return Next::End(PartitionEnd::Interrupted);
                }
                ctx.emitter.emit(Event::PartitionFailed {
                    partition_id: partition.id.clone(),
                    error: text,
                });
                Next::End(PartitionEnd::Failed)
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
