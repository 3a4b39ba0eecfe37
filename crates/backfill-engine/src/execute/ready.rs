//! Source readiness before a partition is read (`source.ready`, issue 11).
//!
//! Before the first attempt of a partition (one without a checkpoint: a partition that
//! started reading had a ready source), the worker asks the source. Not ready: the partition
//! moves to `waiting_source` (one audit event) and the worker re-checks it after
//! `ready_interval`, doubling up to `ReadyCheck::MAX_INTERVAL`, writing nothing per check.
//! Ready: back to `pending` (one event) and the attempt starts at once. After
//! `ready_timeout`, or when the ready query fails with a permanent error (bad SQL), the
//! partition fails with reason `source_not_ready` and the error names `source.ready`.
//!
//! The waiting partition keeps its worker slot: the pass over pending work stays simple (no
//! partition leaves and re-enters the queue), and `concurrency` still bounds the connections
//! the checks use. A stop or a hold ends the wait at once (back to `pending`, audited); a
//! crash leaves it `waiting_source` until the next resume resets it. The timeout is measured
//! within one process: a resumed wait starts its clock again.

use std::time::{Duration, Instant};

use backfill_core::Partition;
use backfill_core::retry::ErrorClass;
use backfill_core::secret::redact;
use backfill_store::SourceWaitEnd;
use serde_json::json;

use super::{Ctx, store_call};
use crate::events::Event;

/// What the readiness gate decided for a partition.
pub(super) enum Gate {
    /// Ready (or no `source.ready`): read it now.
    Open,
    /// Timed out or the ready query failed: the partition is `failed`.
    Failed,
    /// A stop, a hold or the store: left `pending` for a later pass.
    Interrupted,
}

/// Waits until the source is ready for `partition` (see the module doc).
pub(super) async fn wait_for_source(ctx: &Ctx, partition: &Partition) -> Gate {
    let (Some(check), Some(source)) = (
        ctx.spec.source.as_ref().and_then(|s| s.ready.as_ref()),
        ctx.source.as_ref(),
    ) else {
        return Gate::Open;
    };
    let started = Instant::now();
    let mut checks = 0u32;
    let mut waiting = false;
    loop {
        checks += 1;
        let failure = match source.ready(&check.sql, &partition.window).await {
            Ok(true) if !waiting => return Gate::Open,
            Ok(true) => {
                let detail = json!({ "checks": checks, "waited_ms": millis(started.elapsed()) });
                return end(ctx, partition, SourceWaitEnd::Ready, detail, Gate::Open).await;
            }
            Ok(false) => None,
            Err(e) if e.class() == ErrorClass::Permanent => Some(redact(&e.to_string())),
            Err(e) => {
                // A lost connection or a busy source: not ready yet, asked again later.
                tracing::warn!(run_id = ctx.run_id, partition_id = partition.id, error = %redact(&e.to_string()), "source.ready check failed; checking again");
                None
            }
        };
        if !waiting {
            let detail = json!({
                "window": partition.window.to_string(),
                "ready_timeout_seconds": check.timeout.as_secs_f64(),
                "ready_interval_seconds": check.interval.as_secs_f64(),
            });
            let stored = store_call(ctx, "mark the partition waiting for its source", || {
                ctx.store
                    .wait_for_source(&ctx.run_id, &partition.id, &ctx.actor, detail.clone())
            })
            .await;
            if stored.is_err() {
                return Gate::Interrupted;
            }
            waiting = true;
        }
        let elapsed = started.elapsed();
        let error = match failure {
            Some(error) => Some(format!("`source.ready` failed: {error}")),
            None if elapsed >= check.timeout => Some(format!(
                "source not ready: `source.ready` said no for window {} during {:.1}s ({checks} checks); \
                 `source.ready_timeout` ends the wait",
                partition.window,
                check.timeout.as_secs_f64(),
            )),
            None => None,
        };
        if let Some(error) = error {
            return fail(ctx, partition, &error, checks, elapsed).await;
        }
        let delay = check.delay(checks).min(check.timeout - elapsed);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.stopping() => {
                let detail = json!({ "checks": checks, "waited_ms": millis(started.elapsed()) });
                return end(ctx, partition, SourceWaitEnd::Interrupted, detail, Gate::Interrupted).await;
            }
        }
    }
}

/// Fails the waiting partition with `error` (reason `source_not_ready`).
async fn fail(
    ctx: &Ctx,
    partition: &Partition,
    error: &str,
    checks: u32,
    waited: Duration,
) -> Gate {
    let detail = json!({ "checks": checks, "waited_ms": millis(waited) });
    let gate = end(
        ctx,
        partition,
        SourceWaitEnd::Failed { error },
        detail,
        Gate::Failed,
    )
    .await;
    if matches!(gate, Gate::Failed) {
        // A partition whose source never became ready failed: the error budget counts it.
        ctx.live
            .attempts_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.emitter.emit(Event::PartitionFailed {
            partition_id: partition.id.clone(),
            error: error.to_owned(),
        });
    }
    gate
}

/// Ends the wait in the store; `then` unless the store cannot be reached.
async fn end(
    ctx: &Ctx,
    partition: &Partition,
    how: SourceWaitEnd<'_>,
    detail: serde_json::Value,
    then: Gate,
) -> Gate {
    let stored = store_call(ctx, "end the wait for the source", || {
        ctx.store
            .end_source_wait(&ctx.run_id, &partition.id, how, &ctx.actor, detail.clone())
    })
    .await;
    match stored {
        Ok(()) => then,
        Err(e) => {
            tracing::error!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot end the wait for the source");
            Gate::Interrupted
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
