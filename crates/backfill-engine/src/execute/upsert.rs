//! The upsert path: batches read from the source (or staged by the pushdown), written by
//! key, checkpointed after each.

use std::sync::atomic::Ordering;
use std::time::Instant;

use backfill_connectors::{ConnectorError, Extra, PushedBatch, RowStream, UndoBatch};
use backfill_core::retry::ErrorClass;
use backfill_core::{Batch, Partition, RowCounts, Value};
use backfill_store::Rejected;

use crate::error::AttemptError;
use crate::events::Event;

use super::{Ctx, SlowCheck, checkpoint_only, elapsed_ms, isolate_rejected};

/// Reads a partition's rows batch by batch in key order: from one streaming query when the
/// source can (PostgreSQL), else page by page (keyset pagination).
pub(super) enum Reader {
    Pages,
    Stream(RowStream),
}

impl Reader {
    /// A reader of `partition`'s rows after `after`.
    pub(super) async fn open(
        ctx: &Ctx,
        partition: &Partition,
        after: Option<&[Value]>,
    ) -> Result<Reader, ConnectorError> {
        let batch_rows = ctx.spec.limits.batch_rows.get();
        Ok(
            match ctx
                .rows_source()?
                .stream(&partition.window, after, batch_rows)
                .await?
            {
                Some(stream) => Reader::Stream(stream),
                None => Reader::Pages,
            },
        )
    }

    /// A reader of every row of `partition`, in any order where the source can stream them
    /// unsorted (key order otherwise): for `replace`, which writes the window whole.
    pub(super) async fn open_whole(
        ctx: &Ctx,
        partition: &Partition,
    ) -> Result<Reader, ConnectorError> {
        let batch_rows = ctx.spec.limits.batch_rows.get();
        Ok(
            match ctx
                .rows_source()?
                .stream_unordered(&partition.window, batch_rows)
                .await?
            {
                Some(stream) => Reader::Stream(stream),
                None => Reader::Pages,
            },
        )
    }

    /// The next batch; `after` is the last key handed out so far (pages start after it).
    pub(super) async fn next(
        &mut self,
        ctx: &Ctx,
        partition: &Partition,
        after: Option<&[Value]>,
    ) -> Result<Batch, ConnectorError> {
        match self {
            Reader::Pages => {
                let batch_rows = ctx.spec.limits.batch_rows.get();
                ctx.rows_source()?
                    .read_batch(&partition.window, after, batch_rows)
                    .await
            }
            Reader::Stream(stream) => stream.next_batch().await,
        }
    }
}

/// One batch read for an upsert: rows in memory (the row path) or staged inside the
/// databases (the pushdown).
pub(super) enum Staged<'a, 'p> {
    Rows(Batch),
    Pushed(PushedBatch<'a, 'p>),
}

impl Staged<'_, '_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Staged::Rows(batch) => batch.len(),
            Staged::Pushed(batch) => batch.len(),
        }
    }

    /// Writes the batch with `extra` in the same transaction. When the target rejects rows
    /// (a `Data` error) on the row path, the batch is split until the rejected rows are
    /// isolated: the others are written (without `extra`) and the rejected ones returned.
    pub(super) async fn upsert(
        self,
        ctx: &Ctx,
        extra: Option<&Extra>,
        key_positions: &[usize],
        undo: Option<&UndoBatch>,
    ) -> Result<Written, AttemptError> {
        match self {
            Staged::Pushed(batch) => Ok(Written {
                counts: batch.upsert(extra).await?,
                rejected: Vec::new(),
                extra_ran: extra.is_some(),
            }),
            Staged::Rows(batch) => match ctx.sink.upsert_undo(&batch, extra, undo).await {
                Ok(counts) => Ok(Written {
                    counts,
                    rejected: Vec::new(),
                    extra_ran: extra.is_some(),
                }),
                Err(e) if e.class() == ErrorClass::Data => {
                    isolate_rejected(ctx, &batch, key_positions, undo).await
                }
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// What writing one batch did.
pub(super) struct Written {
    pub(super) counts: RowCounts,
    /// Rows the target refused, to quarantine before the checkpoint moves past them.
    pub(super) rejected: Vec<Rejected>,
    /// Whether the `Extra` checkpoint statement committed with the write.
    pub(super) extra_ran: bool,
}

pub(super) async fn upsert_partition(
    ctx: &Ctx,
    partition: &Partition,
    attempt: u32,
    started: Instant,
    after: &mut Option<Vec<Value>>,
    row_path: bool,
    slow: SlowCheck,
) -> Result<RowCounts, AttemptError> {
    let batch_rows = ctx.spec.limits.batch_rows.get();
    let mut total = RowCounts::default();
    let mut key_positions: Option<Vec<usize>> = None;
    let mut batch_started = started;
    // The pushdown runs the query once per attempt, then hands out its batches in key order.
    let mut pushed = match ctx.pushdown.as_ref().filter(|_| !row_path) {
        Some(pushdown) => Some(
            pushdown
                .partition(
                    &partition.window,
                    after.as_deref(),
                    ctx.undo_batch(&partition.id).as_ref(),
                )
                .await?,
        ),
        None => None,
    };
    let mut reader = match pushed {
        Some(_) => None,
        None => Some(Reader::open(ctx, partition, after.as_deref()).await?),
    };
    loop {
        let permit = ctx.live.permit().await;
        if ctx.should_stop() {
            return Err(AttemptError::Interrupted);
        }
        let staged = match (&mut pushed, &mut reader) {
            (Some(pushed), _) => Staged::Pushed(pushed.next_batch(batch_rows).await?),
            (None, Some(reader)) => {
                Staged::Rows(reader.next(ctx, partition, after.as_deref()).await?)
            }
            (None, None) => unreachable!("a reader exists whenever nothing is pushed down"),
        };
        let len = staged.len();
        if len == 0 {
            break;
        }
        ctx.live.throttle(len).await;
        let last = last_key(ctx, &staged, &mut key_positions)?;
        // A batch below both bounds (rows and `BATCH_BYTES`) ends the window.
        let full = match &staged {
            Staged::Rows(batch) => batch.is_full(batch_rows),
            Staged::Pushed(_) => len as u32 >= batch_rows,
        };
        let positions = key_positions.as_deref().unwrap_or(&[]);
        let mut counts = BatchWrite {
            partition,
            attempt,
            last: last.as_deref(),
            len,
            started: batch_started,
        }
        .run(ctx, staged, positions)
        .await?;
        counts.read = len as u64;
        batch_started = Instant::now();
        total.add(&counts);
        ctx.live.record_batch(None);
        ctx.live.rows_read.fetch_add(len as u64, Ordering::Relaxed);
        drop(permit);
        ctx.emitter.emit(Event::BatchWritten {
            partition_id: partition.id.clone(),
            counts,
        });
        *after = last;
        if !full {
            break;
        }
        if slow.due(ctx) {
            return Err(AttemptError::SplitRequested);
        }
    }
    total.deleted +=
        super::deletes::propagate_deletes(ctx, partition, attempt, after.as_deref()).await?;
    Ok(total)
}

/// The last key of a batch: where its checkpoint points. The row path learns the key's
/// positions from the first batch's columns.
fn last_key(
    ctx: &Ctx,
    staged: &Staged<'_, '_>,
    key_positions: &mut Option<Vec<usize>>,
) -> Result<Option<Vec<Value>>, AttemptError> {
    Ok(match staged {
        Staged::Rows(batch) => {
            let positions = match key_positions {
                Some(p) => p,
                None => key_positions.insert(ctx.rows_source()?.key_positions(&batch.columns)?),
            };
            batch.rows.last().map(|row| {
                positions
                    .iter()
                    .map(|&i| row[i].clone())
                    .collect::<Vec<Value>>()
            })
        }
        Staged::Pushed(batch) => batch.last_key().map(<[Value]>::to_vec),
    })
}

/// One batch's write and its checkpoint.
struct BatchWrite<'a> {
    partition: &'a Partition,
    attempt: u32,
    /// The batch's last key: the new resume point.
    last: Option<&'a [Value]>,
    /// Rows in the batch.
    len: usize,
    /// When reading the batch began.
    started: Instant,
}

impl BatchWrite<'_> {
    /// Writes `staged` and moves the checkpoint past it: in the same transaction when the
    /// target is the store's database, after the commit otherwise; rows the target rejected
    /// are quarantined before the checkpoint moves past them. Returns the batch's counts
    /// (without rows read).
    async fn run(
        &self,
        ctx: &Ctx,
        staged: Staged<'_, '_>,
        positions: &[usize],
    ) -> Result<RowCounts, AttemptError> {
        let (partition, attempt, last, len) = (self.partition, self.attempt, self.last, self.len);
        let extra = ctx.same_database.then(|| {
            let (sql, params) = ctx.store.checkpoint_statement(
                &ctx.run_id,
                &partition.id,
                attempt,
                last,
                &RowCounts {
                    read: len as u64,
                    ..RowCounts::default()
                },
                elapsed_ms(self.started),
            );
            Extra { sql, params }
        });
        let undo = ctx.undo_batch(&partition.id);
        let written = staged
            .upsert(ctx, extra.as_ref(), positions, undo.as_ref())
            .await?;
        ctx.store
            .quarantine(&ctx.run_id, &partition.id, attempt, &written.rejected)
            .await?;
        let counts = written.counts;
        if written.extra_ran {
            // The checkpoint committed with the batch; the write's counts are only known
            // now, so they are added afterwards (counters only: the resume point is already
            // durable, and a lost counter update never causes a wrong write). The batch's
            // time was already counted by the in-transaction checkpoint.
            let tally = RowCounts { read: 0, ..counts };
            checkpoint_only(ctx, partition, attempt, last, &tally, Instant::now()).await?;
        } else {
            let with_read = RowCounts {
                read: len as u64,
                ..counts
            };
            checkpoint_only(ctx, partition, attempt, last, &with_read, self.started).await?;
        }
        Ok(counts)
    }
}
