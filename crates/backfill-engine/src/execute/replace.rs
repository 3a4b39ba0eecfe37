//! The replace path: a partition's window deleted and written again in one transaction.

use std::sync::atomic::Ordering;
use std::time::Instant;

use backfill_connectors::{Extra, RawStream, ReplaceTxn};
use backfill_core::{Partition, RowCounts, Value};
use backfill_store::Rejected;

use crate::error::AttemptError;
use crate::events::Event;

use super::{Ctx, Reader, SlowCheck, checkpoint_only, elapsed_ms, rejected_row};

/// An open `replace` transaction, from either path.
pub(super) enum Replacing {
    Rows(ReplaceTxn),
    Pushed(backfill_connectors::PushedReplace),
}

/// Replaces the partition's window in one transaction. With `isolate` (the second try after
/// the target rejected rows), the row path inserts under savepoints and the rejected rows go
/// to the quarantine before the transaction commits.
pub(super) async fn replace_partition(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    started: Instant,
    isolate: bool,
    slow: SlowCheck,
) -> Result<RowCounts, AttemptError> {
    let _permit = ctx.live.permit().await;
    if ctx.should_stop() {
        return Err(AttemptError::Interrupted);
    }
    // The window is rewritten from scratch in one transaction, so counts of an earlier,
    // rolled-back attempt must not add up.
    ctx.store
        .reset_counts(&ctx.run_id, &partition.id, attempt)
        .await?;
    let (txn, counts) = match ctx.pushdown.as_ref().filter(|_| !isolate) {
        Some(pushdown) => {
            let txn = pushdown
                .begin_replace(&partition.window, ctx.undo_batch(&partition.id).as_ref())
                .await?;
            let counts = txn.counts();
            (Replacing::Pushed(txn), counts)
        }
        None => {
            let (txn, counts, rejected) = replace_rows(ctx, partition, isolate, slow).await?;
            // Recorded before the window commits without them.
            ctx.store
                .quarantine(&ctx.run_id, &partition.id, attempt, &rejected)
                .await?;
            (Replacing::Rows(txn), counts)
        }
    };
    let extra = ctx.same_database.then(|| {
        let (sql, params) = ctx.store.checkpoint_statement(
            &ctx.run_id,
            &partition.id,
            attempt,
            None,
            &counts,
            elapsed_ms(started),
        );
        Extra { sql, params }
    });
    match txn {
        Replacing::Rows(txn) => txn.commit(extra.as_ref()).await?,
        Replacing::Pushed(txn) => txn.commit(extra.as_ref()).await?,
    }
    if !ctx.same_database {
        checkpoint_only(ctx, partition, attempt, None, &counts, started).await?;
    }
    ctx.live.record_batch(None);
    ctx.live.rows_read.fetch_add(counts.read, Ordering::Relaxed);
    ctx.emitter.emit(Event::BatchWritten {
        partition_id: partition.id.clone(),
        counts,
    });
    Ok(counts)
}

/// The row path of `replace`: deletes the window and inserts the source's batches in one
/// open transaction; returns it uncommitted with the counts and, with `isolate`, the rows the
/// target rejected (without `isolate` a rejected row fails the attempt).
pub(super) async fn replace_rows(
    ctx: &Ctx,
    partition: &Partition,
    isolate: bool,
    slow: SlowCheck,
) -> Result<(ReplaceTxn, RowCounts, Vec<Rejected>), AttemptError> {
    let batch_rows = ctx.spec.limits.batch_rows.get();
    let undo = ctx.undo_batch(&partition.id);
    let mut txn = ctx
        .sink
        .begin_replace_undo(&partition.window, undo.as_ref())
        .await?;
    let mut counts = RowCounts {
        deleted: txn.deleted(),
        ..RowCounts::default()
    };
    if !isolate && let Some(stream) = raw_stream(ctx, partition, &txn).await? {
        replace_raw(ctx, slow, &mut txn, stream, &mut counts).await?;
        return Ok((txn, counts, Vec::new()));
    }
    let mut after: Option<Vec<Value>> = None;
    let mut key_positions: Option<Vec<usize>> = None;
    let mut rejected = Vec::new();
    let mut reader = Reader::open_whole(ctx, partition).await?;
    loop {
        if ctx.should_stop() {
            // Dropping the transaction rolls it back: the target keeps the old window.
            return Err(AttemptError::Interrupted);
        }
        if slow.due(ctx) {
            // Rolled back likewise; the children replace their slices from scratch.
            return Err(AttemptError::SplitRequested);
        }
        let batch = reader.next(ctx, partition, after.as_deref()).await?;
        if batch.is_empty() {
            break;
        }
        ctx.live.throttle(batch.len()).await;
        let positions = match &key_positions {
            Some(p) => p,
            None => key_positions.insert(ctx.rows_source()?.key_positions(&batch.columns)?),
        };
        after = batch
            .rows
            .last()
            .map(|row| positions.iter().map(|&i| row[i].clone()).collect());
        counts.read += batch.len() as u64;
        if isolate {
            let (inserted, refused) = txn.insert_isolating(&batch).await?;
            counts.inserted += inserted;
            rejected.extend(
                refused
                    .into_iter()
                    .map(|(i, e)| rejected_row(&batch.columns, &batch.rows[i], positions, &e)),
            );
        } else {
            counts.inserted += txn.insert(&batch).await?;
        }
        if !batch.is_full(batch_rows) {
            break;
        }
    }
    Ok((txn, counts, rejected))
}

/// The window's rows undecoded, when the source can hand them over that way and `txn` can
/// store them as they are (PostgreSQL to PostgreSQL, every column of the same type; see
/// `ReplaceTxn::accepts_raw`): the engine then neither decodes nor encodes a value.
async fn raw_stream(
    ctx: &Ctx,
    partition: &Partition,
    txn: &ReplaceTxn,
) -> Result<Option<RawStream>, AttemptError> {
    let source = ctx.rows_source()?;
    let Some((columns, oids)) = source.raw_types() else {
        return Ok(None);
    };
    if !txn.accepts_raw(columns, oids) {
        return Ok(None);
    }
    let batch_rows = ctx.spec.limits.batch_rows.get();
    Ok(source.stream_raw(&partition.window, batch_rows).await?)
}

/// The row path's loop over undecoded batches: the same stop, split and rate-limit checks
/// between batches, the same counts.
async fn replace_raw(
    ctx: &Ctx,
    slow: SlowCheck,
    txn: &mut ReplaceTxn,
    mut stream: RawStream,
    counts: &mut RowCounts,
) -> Result<(), AttemptError> {
    loop {
        if ctx.should_stop() {
            return Err(AttemptError::Interrupted);
        }
        if slow.due(ctx) {
            return Err(AttemptError::SplitRequested);
        }
        let batch = stream.next_batch().await?;
        if batch.is_empty() {
            return Ok(());
        }
        ctx.live.throttle(batch.len()).await;
        counts.read += batch.len() as u64;
        counts.inserted += txn.insert_raw(&stream, &batch).await?;
        if !batch.is_full() {
            return Ok(());
        }
    }
}
