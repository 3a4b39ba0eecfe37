//! Splitting a skewed partition into children, before it starts (`split_rows`) or while it
//! runs (`split_slow`).

use backfill_core::{Partition, Value};
use backfill_store::Outcome;

use crate::events::Event;

use super::{Ctx, PartitionEnd, Work, finish_partition, store_call};

/// Splits a fresh partition whose window holds more rows than `limits.split_rows` (one
/// `COUNT(*)` of the window); `None` when it need not (or cannot be counted, or cut).
pub(super) async fn split_by_estimate(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
) -> Option<PartitionEnd> {
    let policy = ctx.spec.limits.split;
    policy.rows?;
    // Parsing refuses `split_rows` in a `sql`-mode spec without `[source]`.
    let rows = match ctx.source.as_ref()?.count(&partition.window).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot estimate the partition's rows; not splitting it");
            return None;
        }
    };
    let parts = policy.parts_for_estimate(rows)?;
    let reason = serde_json::json!({
        "trigger": "estimate",
        "estimated_rows": rows,
        "split_rows": policy.rows,
    });
    Some(split(ctx, partition, attempt, parts, None, reason).await)
}

/// Splits `partition` (attempt `attempt`) into `parts` children starting after `checkpoint`;
/// a window too small to cut, or a store refusal, leaves it to a later attempt.
pub(super) async fn split(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    parts: u32,
    checkpoint: Option<&[Value]>,
    reason: serde_json::Value,
) -> PartitionEnd {
    let windows = backfill_core::split::split_window(&partition.window, parts);
    let retry = |message: &'static str| async move {
        // Give the partition back as it is; the next attempt continues from its checkpoint.
        let retry = Outcome::Retry {
            error: message,
            class: "split",
        };
        let _ = finish_partition(ctx, partition, attempt, retry).await;
        PartitionEnd::Interrupted
    };
    if windows.len() < 2 {
        return retry("too small to split").await;
    }
    let children = backfill_core::split::children(partition, &windows, 0);
    let stored = store_call(ctx, "split partition", || {
        ctx.store.split_partition(
            &ctx.run_id,
            &partition.id,
            attempt,
            backfill_store::Split {
                children: &children,
                checkpoint,
                reason: reason.clone(),
            },
            &ctx.actor,
        )
    })
    .await;
    match stored {
        Ok(stored) => {
            tracing::info!(run_id = ctx.run_id, partition_id = partition.id, children = stored.len(), reason = %reason, "partition split");
            ctx.emitter.emit(Event::PartitionSplit {
                partition_id: partition.id.clone(),
                children: stored.len() as u32,
            });
            PartitionEnd::Split(
                stored
                    .into_iter()
                    .map(|partition| Work {
                        partition,
                        checkpoint: checkpoint.map(<[Value]>::to_vec),
                        splittable: false,
                    })
                    .collect(),
            )
        }
        Err(e) => {
            tracing::warn!(run_id = ctx.run_id, partition_id = partition.id, error = %e, "cannot split the partition");
            retry("split failed").await
        }
    }
}
