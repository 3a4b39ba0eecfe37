//! `propagate_deletes` in `upsert` mode (issue 11): after a window's last batch, the target
//! rows of the window whose key the source no longer has are deleted, through the undo log.
//!
//! Invariant: runs only once every batch of the window is written (after the read loop, also
//! when a resumed attempt starts at the window's end), so "no undo row of this run for the
//! key" means exactly "not in the source". Replaying it deletes nothing more.

use std::time::Instant;

use backfill_core::{Partition, RowCounts, Value, WriteMode};

use crate::error::AttemptError;

use super::{Ctx, checkpoint_only};

/// Deletes the window's rows missing from the source (see the module doc); returns how many
/// and adds them to the partition's `deleted` count.
pub(super) async fn propagate_deletes(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    after: Option<&[Value]>,
) -> Result<u64, AttemptError> {
    let target = &ctx.spec.target;
    if !target.propagate_deletes || target.mode != WriteMode::Upsert {
        return Ok(0);
    }
    let (Some(column), Some(undo)) = (
        target.delete_window_column.as_deref(),
        ctx.undo_batch(&partition.id),
    ) else {
        return Ok(0);
    };
    let started = Instant::now();
    let deleted = ctx
        .sink
        .delete_missing(&partition.window, column, &undo)
        .await?;
    if deleted > 0 {
        let counts = RowCounts {
            deleted,
            ..RowCounts::default()
        };
        checkpoint_only(ctx, partition, attempt, after, &counts, started).await?;
    }
    Ok(deleted)
}
