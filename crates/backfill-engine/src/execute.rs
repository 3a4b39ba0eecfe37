//! Executes the partitions of a run: bounded concurrency, rate limit, retries, checkpoints.
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

use backfill_connectors::{
    AnyPushdown, AnySink, AnySource, ConnectorError, Extra, PushedBatch, ReplaceTxn, RowStream,
};
use backfill_core::retry::{ErrorClass, RetryDecision};
use backfill_core::secret::redact;
use backfill_core::{Batch, Partition, PartitionState, RowCounts, Spec, Value, WriteMode};
use backfill_store::{Outcome, Rejected, Store, StoreError};
use tokio::task::JoinSet;

use crate::control::Live;
use crate::error::AttemptError;
use crate::events::{Emitter, Event};
use crate::patience;
use crate::shutdown::Shutdown;

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

    /// Completes when workers must stop (at once if they must).
    async fn stopping(&self) {
        tokio::select! {
            () = self.shutdown.requested() => {}
            () = self.live.held() => {}
        }
    }
}

/// Runs `pending` partitions (in the given order) with at most the current concurrency in
/// flight; returns how each ended. Returns early, with the rest untouched, on a stop request
/// or a hold.
pub(crate) async fn run_partitions(
    ctx: Arc<Ctx>,
    pending: Vec<Work>,
) -> Vec<(String, PartitionEnd)> {
    let mut concurrency = ctx.live.concurrency();
    let mut queue: std::collections::VecDeque<Work> = pending.into();
    let mut tasks = JoinSet::new();
    let mut ends = Vec::new();
    loop {
        let limit = *concurrency.borrow_and_update() as usize;
        while tasks.len() < limit && !ctx.should_stop() {
            let Some(work) = queue.pop_front() else {
                break;
            };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let id = work.partition.id.clone();
                (id, run_partition(&ctx, work).await)
            });
        }
        if tasks.is_empty() {
            break;
        }
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok((id, PartitionEnd::Split(children)))) => {
                    // The long tail goes first, to the workers that are free now.
                    for child in children.iter().rev() {
                        queue.push_front(child.clone());
                    }
                    ends.push((id, PartitionEnd::Split(children)));
                }
                Some(Ok(end)) => ends.push(end),
                Some(Err(join_error)) => {
                    // A panic in a worker is a bug; the partition stays `running` and is reset
                    // to `pending` by the next resume, so nothing is lost.
                    tracing::error!(run_id = ctx.run_id, error = %join_error, "partition task panicked");
                }
                None => break,
            },
            // A raised concurrency starts more partitions at once.
            _ = concurrency.changed() => {}
        }
    }
    ends
}

/// Attempts one partition until it is done, fails for good, or is interrupted.
/// `checkpoint` is the stored resume point; it advances in memory with every durable
/// checkpoint, so a retry in this process continues where the failed attempt stopped.
async fn run_partition(ctx: &Ctx, work: Work) -> PartitionEnd {
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
    // While a database is unreachable (a restart, an outage), retries wait it out with
    // backoff for up to OUTAGE_PATIENCE without using up `max_attempts`.
    // The current outage: when it began and how many attempts it failed in a row.
    let mut outage: Option<(Instant, u32)> = None;
    // Attempts lost to outages in all, which `max_attempts` does not count.
    let mut outage_attempts = 0u32;
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
                let class = error.class();
                let message = redact(&error.to_string());
                // An unreachable database is waited out by backoff; the breaker guards
                // against one that answers with errors.
                let decision = if error.is_unavailable() {
                    outage_attempts += 1;
                    let (since, tries) = outage.get_or_insert((Instant::now(), 0));
                    *tries += 1;
                    let patient = backfill_core::retry::RetryPolicy {
                        max_attempts: u32::MAX,
                        ..policy
                    };
                    if since.elapsed() < OUTAGE_PATIENCE {
                        patient.decide(*tries, class, rand::random::<f64>())
                    } else {
                        RetryDecision::GiveUp
                    }
                } else {
                    ctx.live.record_batch(Some(&message));
                    outage = None;
                    let counted = attempt.saturating_sub(outage_attempts).max(1);
                    policy.decide(counted, class, rand::random::<f64>())
                };
                match decision {
                    RetryDecision::RetryAfter(delay) => {
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
                    RetryDecision::GiveUp => {
                        let text = match class {
                            ErrorClass::Permanent | ErrorClass::Data => message.clone(),
                            ErrorClass::Transient => {
                                format!("{message} (gave up after {attempt} attempts)")
                            }
                        };
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

/// How long a partition keeps retrying while a database is unreachable before it fails.
const OUTAGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Whether a running attempt should stop and split its partition (`limits.split_slow`).
#[derive(Clone, Copy)]
struct SlowCheck {
    splittable: bool,
    since: Instant,
}

impl SlowCheck {
    fn due(&self, ctx: &Ctx) -> bool {
        self.splittable
            && ctx
                .live
                .is_slow(&ctx.spec.limits.split, self.since.elapsed())
    }
}

/// Splits a fresh partition whose window holds more rows than `limits.split_rows` (one
/// `COUNT(*)` of the window); `None` when it need not (or cannot be counted, or cut).
async fn split_by_estimate(ctx: &Ctx, partition: &Partition, attempt: u32) -> Option<PartitionEnd> {
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
async fn split(
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
        let _ = finish_partition(ctx, partition, attempt, Outcome::Retry { error: message }).await;
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
    match result {
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
    }
}

/// Whether a partition whose write the target rejected can be redone isolating the rejected
/// rows: `replace` always, `upsert` when its first try was pushed down (the row path of
/// `upsert` isolates them already), `sql` never (its rows are not the engine's).
fn can_isolate(ctx: &Ctx) -> bool {
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
async fn finish_if_empty(ctx: &Ctx, partition: &Partition) -> bool {
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
async fn attempt_partition(
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

/// Reads a partition's rows batch by batch in key order: from one streaming query when the
/// source can (PostgreSQL), else page by page (keyset pagination).
enum Reader {
    Pages,
    Stream(RowStream),
}

impl Reader {
    /// A reader of `partition`'s rows after `after`.
    async fn open(
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

    /// The next batch; `after` is the last key handed out so far (pages start after it).
    async fn next(
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
enum Staged<'a, 'p> {
    Rows(Batch),
    Pushed(PushedBatch<'a, 'p>),
}

impl Staged<'_, '_> {
    fn len(&self) -> usize {
        match self {
            Staged::Rows(batch) => batch.len(),
            Staged::Pushed(batch) => batch.len(),
        }
    }

    /// Writes the batch with `extra` in the same transaction. When the target rejects rows
    /// (a `Data` error) on the row path, the batch is split until the rejected rows are
    /// isolated: the others are written (without `extra`) and the rejected ones returned.
    async fn upsert(
        self,
        ctx: &Ctx,
        extra: Option<&Extra>,
        key_positions: &[usize],
    ) -> Result<Written, AttemptError> {
        match self {
            Staged::Pushed(batch) => Ok(Written {
                counts: batch.upsert(extra).await?,
                rejected: Vec::new(),
                extra_ran: extra.is_some(),
            }),
            Staged::Rows(batch) => match ctx.sink.upsert(&batch, extra).await {
                Ok(counts) => Ok(Written {
                    counts,
                    rejected: Vec::new(),
                    extra_ran: extra.is_some(),
                }),
                Err(e) if e.class() == ErrorClass::Data => {
                    isolate_rejected(ctx, &batch, key_positions).await
                }
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// What writing one batch did.
struct Written {
    counts: RowCounts,
    /// Rows the target refused, to quarantine before the checkpoint moves past them.
    rejected: Vec<Rejected>,
    /// Whether the `Extra` checkpoint statement committed with the write.
    extra_ran: bool,
}

/// Writes `batch` in halves, recursively, until every row the target rejects stands alone;
/// the accepted rows are written, the rejected ones returned with the database's reason.
/// `O(k log n)` statements for `k` rejected rows in a batch of `n`.
async fn isolate_rejected(
    ctx: &Ctx,
    batch: &Batch,
    key_positions: &[usize],
) -> Result<Written, AttemptError> {
    let mut counts = RowCounts::default();
    let mut rejected = Vec::new();
    let mut stack: Vec<&[Vec<Value>]> = vec![&batch.rows];
    while let Some(rows) = stack.pop() {
        let part = Batch {
            columns: batch.columns.clone(),
            rows: rows.to_vec(),
        };
        match ctx.sink.upsert(&part, None).await {
            Ok(c) => counts.add(&c),
            Err(e) if e.class() == ErrorClass::Data && rows.len() > 1 => {
                let (left, right) = rows.split_at(rows.len() / 2);
                stack.push(right);
                stack.push(left);
            }
            Err(e) if e.class() == ErrorClass::Data => {
                rejected.push(rejected_row(&batch.columns, &rows[0], key_positions, &e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Written {
        counts,
        rejected,
        extra_ran: false,
    })
}

/// `row` (named by `columns`), refused by the target with `error`, as a quarantine record:
/// its key, the database's reason (secrets masked) and the row as a JSON object.
fn rejected_row(
    columns: &[String],
    row: &[Value],
    key_positions: &[usize],
    error: &impl std::fmt::Display,
) -> Rejected {
    let key: Vec<Value> = key_positions.iter().map(|&i| row[i].clone()).collect();
    let json: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .zip(row)
        .map(|(c, v)| (c.clone(), value_json(v)))
        .collect();
    Rejected {
        key: backfill_core::encode_key(&key),
        error: redact(&error.to_string()),
        row: serde_json::Value::Object(json),
    }
}

/// A value as JSON for the quarantine: numbers and booleans as themselves, everything else as
/// its portable text, blobs as hex.
fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Blob(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        other => json!(other.as_portable_text().unwrap_or_default()),
    }
}

async fn upsert_partition(
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
                .partition(&partition.window, after.as_deref())
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
        let last = match &staged {
            Staged::Rows(batch) => {
                let positions = match &key_positions {
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
        };
        // A batch below both bounds (rows and `BATCH_BYTES`) ends the window.
        let full = match &staged {
            Staged::Rows(batch) => batch.is_full(batch_rows),
            Staged::Pushed(_) => len as u32 >= batch_rows,
        };
        let extra = ctx.same_database.then(|| {
            let (sql, params) = ctx.store.checkpoint_statement(
                &ctx.run_id,
                &partition.id,
                attempt,
                last.as_deref(),
                &RowCounts {
                    read: len as u64,
                    ..RowCounts::default()
                },
                elapsed_ms(batch_started),
            );
            Extra { sql, params }
        });
        let positions = key_positions.as_deref().unwrap_or(&[]);
        let written = staged.upsert(ctx, extra.as_ref(), positions).await?;
        // Rejected rows are recorded before the checkpoint moves past them.
        ctx.store
            .quarantine(&ctx.run_id, &partition.id, attempt, &written.rejected)
            .await?;
        let mut counts = written.counts;
        if written.extra_ran {
            // The checkpoint committed with the batch; the write's counts are only known
            // now, so they are added afterwards (counters only: the resume point is already
            // durable, and a lost counter update never causes a wrong write). The batch's
            // time was already counted by the in-transaction checkpoint.
            let tally = RowCounts { read: 0, ..counts };
            checkpoint_only(
                ctx,
                partition,
                attempt,
                last.as_deref(),
                &tally,
                Instant::now(),
            )
            .await?;
        } else {
            let with_read = RowCounts {
                read: len as u64,
                ..counts
            };
            checkpoint_only(
                ctx,
                partition,
                attempt,
                last.as_deref(),
                &with_read,
                batch_started,
            )
            .await?;
        }
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
    Ok(total)
}

/// An open `replace` transaction, from either path.
enum Replacing {
    Rows(ReplaceTxn),
    Pushed(backfill_connectors::PushedReplace),
}

/// Replaces the partition's window in one transaction. With `isolate` (the second try after
/// the target rejected rows), the row path inserts under savepoints and the rejected rows go
/// to the quarantine before the transaction commits.
async fn replace_partition(
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
            let txn = pushdown.begin_replace(&partition.window).await?;
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
async fn replace_rows(
    ctx: &Ctx,
    partition: &Partition,
    isolate: bool,
    slow: SlowCheck,
) -> Result<(ReplaceTxn, RowCounts, Vec<Rejected>), AttemptError> {
    let batch_rows = ctx.spec.limits.batch_rows.get();
    let mut txn = ctx.sink.begin_replace(&partition.window).await?;
    let mut counts = RowCounts {
        deleted: txn.deleted(),
        ..RowCounts::default()
    };
    let mut after: Option<Vec<Value>> = None;
    let mut key_positions: Option<Vec<usize>> = None;
    let mut rejected = Vec::new();
    let mut reader = Reader::open(ctx, partition, None).await?;
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
