//! Partitions: attempts, fenced checkpoints, outcomes and crash recovery.
//!
//! The protocol of one attempt: [`Store::start_attempt`] moves a `pending` partition to
//! `running` and returns the new attempt number, the fencing token. Every later write of that
//! attempt ([`Store::checkpoint`], [`Store::reset_counts`], [`Store::finish_partition`])
//! carries the token and only applies while the partition is still `running` under that same
//! number. Once anything else has happened to the partition (a new attempt, a crash reset), an
//! old token changes nothing and yields [`StoreError::StaleAttempt`]: a stale worker can never
//! move a checkpoint or finish a partition.
//!
//! Checkpoints are frequent, so they are a single fenced `UPDATE` and not audit events; every
//! change of partition *state* is an audit event in the same transaction.

use crate::db::{Db, DbRow, stmt};
use crate::quarantine::count_quarantined;
use crate::{Store, StoreError, audit, codec};
use backfill_core::{PartitionState, RowCounts, Value, Window, decode_key, encode_key};
use chrono::{DateTime, Utc};
use serde_json::json;

/// A stored partition of a run.
#[derive(Clone, Debug)]
pub struct PartitionRecord {
    /// The run it belongs to.
    pub run_id: String,
    /// Its stable, window-derived id.
    pub partition_id: String,
    /// Position in the plan, from 0.
    pub index: u64,
    /// The window it covers, exactly as planned.
    pub window: Window,
    /// Current state.
    pub state: PartitionState,
    /// Attempts started so far; also the fencing token of the current (or last) attempt.
    pub attempts: u32,
    /// The last key durably written, where a resumed attempt continues; `None` = from the
    /// start of the window.
    pub checkpoint: Option<Vec<Value>>,
    /// What its writes did, summed over attempts since the last [`Store::reset_counts`].
    pub counts: RowCounts,
    /// The error of the last failed or retried attempt, secrets masked.
    pub last_error: Option<String>,
    /// Attempts that ended in an error (retried or failed); interrupted attempts are not
    /// errors.
    pub errors: u32,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last reached `done` or `failed`.
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds spent working on it, summed over attempts (for throughput).
    pub elapsed_ms: u64,
    /// The partition it was split from; `None` for the plan's own partitions.
    pub parent_id: Option<String>,
}

/// A split of a running partition (see [`Store::split_partition`]).
#[derive(Clone, Debug)]
pub struct Split<'a> {
    /// The children, from `backfill_core::split::children`.
    pub children: &'a [backfill_core::Partition],
    /// The parent's last durable key; every child starts after it.
    pub checkpoint: Option<&'a [Value]>,
    /// Why (recorded in the audit event).
    pub reason: serde_json::Value,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Every row of the window was written and checkpointed: `running -> done`.
    Done,
    /// A transient failure: `running -> pending`, keeping the checkpoint, to be tried again.
    Retry {
        /// What went wrong (redacted before it is stored).
        error: &'a str,
        /// Its class (`transient`, `unavailable`, `data`, `split`…), stored to group errors.
        class: &'a str,
    },
    /// A permanent failure or attempts exhausted: `running -> failed`.
    Failed {
        /// What went wrong (redacted before it is stored).
        error: &'a str,
        /// Its class (`permanent`, `data`, `reconcile_mismatch`…), stored to group errors.
        class: &'a str,
    },
}

pub(crate) const PARTITION_COLUMNS: &str = "SELECT run_id, partition_id, idx, window_kind, window_start, \
     window_end, state, attempts, checkpoint, rows_read, inserted, updated, unchanged, deleted, \
     affected, last_error, errors, started_at, finished_at, elapsed_ms, parent_id FROM partitions";

pub(crate) fn partition_from_row(row: &DbRow) -> Result<PartitionRecord, StoreError> {
    let partition_id: String = row.try_get("partition_id")?;
    let state: String = row.try_get("state")?;
    let checkpoint = row
        .try_get::<Option<String>, _>("checkpoint")?
        .map(|text| {
            decode_key(&text).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "checkpoint of partition {partition_id} cannot be read: {text}"
                ))
            })
        })
        .transpose()?;
    let attempts = attempts_of(row, &partition_id)?;
    Ok(PartitionRecord {
        run_id: row.try_get("run_id")?,
        index: codec::from_db(row.try_get("idx")?),
        window: codec::parse_window(
            &row.try_get::<String, _>("window_kind")?,
            &row.try_get::<String, _>("window_start")?,
            &row.try_get::<String, _>("window_end")?,
        )?,
        state: state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("partition {partition_id}: {e}")))?,
        attempts,
        checkpoint,
        counts: counts_from_row(row)?,
        last_error: row.try_get("last_error")?,
        errors: u32::try_from(row.try_get::<i64, _>("errors")?).unwrap_or(u32::MAX),
        started_at: codec::parse_opt_time(row.try_get("started_at")?, "started_at")?,
        finished_at: codec::parse_opt_time(row.try_get("finished_at")?, "finished_at")?,
        elapsed_ms: codec::from_db(row.try_get("elapsed_ms")?),
        parent_id: row.try_get("parent_id")?,
        partition_id,
    })
}

/// Why a fenced transition of one partition (its `UPDATE` with the state and the fence in
/// the `WHERE`) matched no row: the lease was lost ([`StoreError::LeaseLost`]), the run has no
/// such partition ([`StoreError::NotFound`]), or its state cannot move to `to`
/// ([`StoreError::IllegalTransition`] about `what`).
async fn refused(
    store: &Store,
    tx: &mut crate::db::WriteTxn,
    run_id: &str,
    partition_id: &str,
    what: String,
    to: PartitionState,
) -> StoreError {
    if let Err(lost) = store.fence_still_held(tx).await {
        return lost;
    }
    match fetch_partition(tx, "", run_id, partition_id).await {
        Ok(part) => StoreError::IllegalTransition {
            what,
            from: part.state.to_string(),
            to: to.to_string(),
        },
        Err(e) => e,
    }
}

/// The `attempts` column of a row of partition `partition_id`.
fn attempts_of(row: &DbRow, partition_id: &str) -> Result<u32, StoreError> {
    let attempts: i64 = row.try_get("attempts")?;
    u32::try_from(attempts).map_err(|_| {
        StoreError::Corrupt(format!("partition {partition_id} has {attempts} attempts"))
    })
}

/// The counters of a row that has the `partitions` columns `rows_read` … `affected`.
fn counts_from_row(row: &DbRow) -> Result<RowCounts, StoreError> {
    Ok(RowCounts {
        read: codec::from_db(row.try_get("rows_read")?),
        inserted: codec::from_db(row.try_get("inserted")?),
        updated: codec::from_db(row.try_get("updated")?),
        unchanged: codec::from_db(row.try_get("unchanged")?),
        deleted: codec::from_db(row.try_get("deleted")?),
        affected: codec::from_db(row.try_get("affected")?),
    })
}

/// One partition; in a write transaction (`lock`) its row stays locked until the transaction
/// ends, so a fenced checkpoint of the same attempt cannot slip between read and update.
async fn fetch_partition(
    db: &mut impl Db,
    lock: &str,
    run_id: &str,
    partition_id: &str,
) -> Result<PartitionRecord, StoreError> {
    let row = stmt(format!(
        "{PARTITION_COLUMNS} WHERE run_id = ? AND partition_id = ?{lock}"
    ))
    .bind(run_id)
    .bind(partition_id)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| {
        StoreError::NotFound(format!("run {run_id} has no partition `{partition_id}`"))
    })?;
    partition_from_row(&row)
}

/// One partition, its row locked until the write transaction `tx` ends.
pub(crate) async fn fetch_partition_locked(
    tx: &mut crate::db::WriteTxn,
    run_id: &str,
    partition_id: &str,
) -> Result<PartitionRecord, StoreError> {
    let lock = tx.dialect().for_update();
    fetch_partition(tx, lock, run_id, partition_id).await
}

fn counts_json(counts: &RowCounts) -> serde_json::Value {
    json!({
        "read": counts.read,
        "inserted": counts.inserted,
        "updated": counts.updated,
        "unchanged": counts.unchanged,
        "deleted": counts.deleted,
        "affected": counts.affected,
    })
}

impl Store {
    /// The partitions of run `run_id` (exact id), ordered by plan index; empty for an unknown
    /// run. Every record in memory at once: for tests, tools and small runs. The engine and
    /// `status` never call it; they read [`Store::pending_page`] pages and
    /// [`Store::partition_totals`].
    pub async fn partitions(&self, run_id: &str) -> Result<Vec<PartitionRecord>, StoreError> {
        let rows = stmt(format!("{PARTITION_COLUMNS} WHERE run_id = ? ORDER BY idx"))
            .bind(run_id)
            .fetch_all(&mut self.conn().await?)
            .await?;
        rows.iter().map(partition_from_row).collect()
    }

    /// One partition of a run, or [`StoreError::NotFound`].
    pub async fn partition(
        &self,
        run_id: &str,
        partition_id: &str,
    ) -> Result<PartitionRecord, StoreError> {
        fetch_partition(&mut self.conn().await?, "", run_id, partition_id).await
    }

    /// Starts a new attempt on a `pending` partition: it becomes `running`, its attempt count
    /// goes up by one, and the new count is returned as the fencing token every later write of
    /// this attempt must carry. Any other state is [`StoreError::IllegalTransition`]. Appends
    /// `partition.running` with `{attempt}` in the same transaction.
    pub async fn start_attempt(
        &self,
        run_id: &str,
        partition_id: &str,
        actor: &str,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin_write_fenced_by_statement().await?;
        let now = codec::now();
        // One statement: only `pending` moves to `running` (`PartitionState::can_move_to`),
        // and the fence, in the `WHERE`; the new attempt number and the audit chain's head
        // come back with `RETURNING`.
        debug_assert!(PartitionState::Pending.can_move_to(PartitionState::Running));
        let update = stmt(format!(
            "UPDATE partitions SET state = 'running', attempts = attempts + 1, \
             started_at = COALESCE(started_at, ?), finished_at = NULL \
             WHERE run_id = ? AND partition_id = ? AND state = 'pending'{} \
             RETURNING attempts, {}",
            self.fence_clause(),
            audit::LAST_EVENT_COLUMNS
        ))
        .bind(&now)
        .bind(run_id)
        .bind(partition_id);
        let updated = self.bind_fence(update).fetch_optional(&mut tx).await?;
        let Some(row) = updated else {
            let what = format!("partition {partition_id}");
            return Err(refused(
                self,
                &mut tx,
                run_id,
                partition_id,
                what,
                PartitionState::Running,
            )
            .await);
        };
        let attempt = attempts_of(&row, partition_id)?;
        tx.last_audit = Some(audit::last_event_of(&row)?);
        // The event's statement commits: the transaction is two round trips.
        let event = audit::NewEvent {
            partition_id: Some(partition_id),
            action: "partition.running",
            detail: json!({ "attempt": attempt }),
        };
        audit::append_all_and_commit(tx, Some(run_id), actor, vec![event]).await?;
        Ok(attempt)
    }

    /// Marks a pending partition whose window the caller found empty (no checkpoint, no source
    /// rows) as done in ONE transaction: `pending -> running -> done`, with the
    /// `partition.running` and `partition.done` audit events an attempt would write. Half the
    /// store work of `start_attempt` + `finish_partition`, which matters for sparse scopes.
    /// Returns the attempt number used. Fails with [`StoreError::IllegalTransition`] when the
    /// partition is not pending or has a checkpoint ([`StoreError::NotFound`] when the run has
    /// no such partition).
    pub async fn finish_empty(
        &self,
        run_id: &str,
        partition_id: &str,
        actor: &str,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin_write_fenced_by_statement().await?;
        let now = codec::now();
        // One statement where a fence check, a locked read and an update were three (a sparse
        // scope of a million partitions takes this path a million times): the state and the
        // fence are checked in the `WHERE`, the row and the audit chain's head come back with
        // `RETURNING`.
        let update = stmt(format!(
            "UPDATE partitions SET state = 'done', attempts = attempts + 1, \
             started_at = COALESCE(started_at, ?), finished_at = ? \
             WHERE run_id = ? AND partition_id = ? AND state = 'pending' \
             AND checkpoint IS NULL{} \
             RETURNING attempts, rows_read, inserted, updated, unchanged, deleted, affected, {}",
            self.fence_clause(),
            audit::LAST_EVENT_COLUMNS
        ))
        .bind(&now)
        .bind(&now)
        .bind(run_id)
        .bind(partition_id);
        let updated = self.bind_fence(update).fetch_optional(&mut tx).await?;
        let Some(row) = updated else {
            let what = format!("partition {partition_id} (finish as empty)");
            return Err(refused(
                self,
                &mut tx,
                run_id,
                partition_id,
                what,
                PartitionState::Done,
            )
            .await);
        };
        let attempt = attempts_of(&row, partition_id)?;
        let counts = counts_from_row(&row)?;
        tx.last_audit = Some(audit::last_event_of(&row)?);
        // Both events in one `INSERT`.
        let events = vec![
            audit::NewEvent {
                partition_id: Some(partition_id),
                action: "partition.running",
                detail: json!({ "attempt": attempt }),
            },
            audit::NewEvent {
                partition_id: Some(partition_id),
                action: "partition.done",
                detail: json!({ "attempt": attempt, "counts": counts_json(&counts), "empty": true }),
            },
        ];
        audit::append_all_and_commit(tx, Some(run_id), actor, events).await?;
        Ok(attempt)
    }

    /// Records progress of attempt `attempt`: adds `delta` to the counters and `elapsed_ms` to
    /// the time spent, and moves the checkpoint to `key` when given. One fenced `UPDATE`; if
    /// the attempt is no longer the current `running` one, nothing changes and the result is
    /// [`StoreError::StaleAttempt`] ([`StoreError::NotFound`] for an unknown partition). Not an
    /// audit event.
    ///
    /// Call it only after the batch it describes is durable in the target (invariant 2).
    pub async fn checkpoint(
        &self,
        run_id: &str,
        partition_id: &str,
        attempt: u32,
        key: Option<&[Value]>,
        delta: &RowCounts,
        elapsed_ms: u64,
    ) -> Result<(), StoreError> {
        let (sql, params) =
            self.checkpoint_statement(run_id, partition_id, attempt, key, delta, elapsed_ms);
        let query = params
            .iter()
            .fold(stmt(sql), |query, value| query.bind(value));
        let done = self.write_one(query).await?;
        if done != 1 {
            return Err(self.stale_or_missing(run_id, partition_id).await);
        }
        Ok(())
    }

    /// The exact statement [`Store::checkpoint`] runs, as SQL text and its parameters in
    /// order, for a sink whose target database *is* this state store
    /// ([`Store::same_database`]): it executes the statement in the same transaction as the
    /// batch, so batch and checkpoint commit together or not at all (exactly once).
    ///
    /// The SQL is in the store's placeholder style: `?` on SQLite, `$1…` on PostgreSQL, where
    /// the table is also qualified with the store's schema, so it runs on any connection to
    /// the database whatever its `search_path`. It is a single-row `UPDATE`: on PostgreSQL it
    /// locks only that partition row until the sink's transaction ends.
    ///
    /// The caller must check that the statement affected exactly one row; 0 rows means the
    /// attempt is stale, and the caller must roll back its transaction (and treat it as
    /// [`StoreError::StaleAttempt`]).
    pub fn checkpoint_statement(
        &self,
        run_id: &str,
        partition_id: &str,
        attempt: u32,
        key: Option<&[Value]>,
        delta: &RowCounts,
        elapsed_ms: u64,
    ) -> (String, Vec<Value>) {
        let qualified = |name: &str| match self.pg_schema() {
            None => name.to_owned(),
            Some(schema) => format!("\"{schema}\".{name}"),
        };
        let table = qualified("partitions");
        let mut sql = format!(
            "UPDATE {table} SET rows_read = rows_read + ?, inserted = inserted + ?, \
             updated = updated + ?, unchanged = unchanged + ?, deleted = deleted + ?, \
             affected = affected + ?, elapsed_ms = elapsed_ms + ?",
        );
        let mut params: Vec<Value> = [
            delta.read,
            delta.inserted,
            delta.updated,
            delta.unchanged,
            delta.deleted,
            delta.affected,
            elapsed_ms,
        ]
        .into_iter()
        .map(|n| Value::Int(codec::to_db(n)))
        .collect();
        if let Some(key) = key {
            sql.push_str(", checkpoint = ?");
            params.push(Value::Text(encode_key(key)));
        }
        sql.push_str(
            " WHERE run_id = ? AND partition_id = ? AND attempts = ? AND state = 'running'",
        );
        params.push(Value::Text(run_id.to_owned()));
        params.push(Value::Text(partition_id.to_owned()));
        params.push(Value::Int(i64::from(attempt)));
        if let Some(fence) = self.fence() {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM {} WHERE resource = ? AND fence = ?)",
                qualified("leases")
            ));
            params.push(Value::Text(fence.resource.clone()));
            params.push(Value::Int(codec::to_db(fence.number)));
        }
        (self.dialect().sql(&sql), params)
    }

    /// Zeroes the counters and clears the checkpoint of attempt `attempt`, for `replace` mode,
    /// which redoes a partition from scratch. Fenced like [`Store::checkpoint`]. The time spent
    /// is kept.
    pub async fn reset_counts(
        &self,
        run_id: &str,
        partition_id: &str,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let query = stmt(format!(
            "UPDATE partitions SET rows_read = 0, inserted = 0, updated = 0, \
             unchanged = 0, deleted = 0, affected = 0, checkpoint = NULL \
             WHERE run_id = ? AND partition_id = ? AND attempts = ? AND state = 'running'{}",
            self.fence_clause()
        ))
        .bind(run_id)
        .bind(partition_id)
        .bind(i64::from(attempt));
        let done = self
            .bind_fence(query)
            .execute(&mut self.conn().await?)
            .await?;
        if done != 1 {
            return Err(self.stale_or_missing(run_id, partition_id).await);
        }
        Ok(())
    }

    /// Ends attempt `attempt` with `outcome`: `done`, back to `pending` for a retry (checkpoint
    /// kept), or `failed`. Fenced: a stale attempt gets [`StoreError::StaleAttempt`] and changes
    /// nothing. Appends `partition.done`, `partition.retry` or `partition.failed` with the
    /// attempt, the counts and the (redacted) error, in the same transaction.
    pub async fn finish_partition(
        &self,
        run_id: &str,
        partition_id: &str,
        attempt: u32,
        outcome: Outcome<'_>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let lock = tx.dialect().for_update();
        let part = fetch_partition(&mut tx, lock, run_id, partition_id).await?;
        if part.state != PartitionState::Running || part.attempts != attempt {
            return Err(StoreError::StaleAttempt {
                partition_id: partition_id.to_owned(),
            });
        }
        let quarantined = count_quarantined(&mut tx, run_id, partition_id).await?;
        let (to, action, error, class) = match outcome {
            Outcome::Done if quarantined > 0 => (
                PartitionState::DoneWithQuarantine,
                "partition.done_with_quarantine",
                None,
                None,
            ),
            Outcome::Done => (PartitionState::Done, "partition.done", None, None),
            Outcome::Retry { error, class } => (
                PartitionState::Pending,
                "partition.retry",
                Some(error),
                Some(class),
            ),
            Outcome::Failed { error, class } => (
                PartitionState::Failed,
                "partition.failed",
                Some(error),
                Some(class),
            ),
        };
        debug_assert!(part.state.can_move_to(to));
        let error = error.map(backfill_core::secret::redact);
        let finished = to.is_finished() || to == PartitionState::Failed;
        let now = codec::now();
        stmt(
            "UPDATE partitions SET state = ?, last_error = COALESCE(?, last_error), \
             last_error_class = COALESCE(?, last_error_class), errors = errors + ?, \
             finished_at = CASE WHEN ? THEN ? ELSE finished_at END \
             WHERE run_id = ? AND partition_id = ? AND attempts = ? AND state = 'running'",
        )
        .bind(to.as_str())
        .bind(error.as_deref())
        .bind(class)
        .bind(i64::from(error.is_some()))
        .bind(finished)
        .bind(&now)
        .bind(run_id)
        .bind(partition_id)
        .bind(i64::from(attempt))
        .execute(&mut tx)
        .await?;
        let mut detail = json!({
            "attempt": attempt,
            "counts": counts_json(&part.counts),
            "elapsed_ms": part.elapsed_ms,
        });
        if quarantined > 0 {
            detail["quarantined_rows"] = json!(quarantined);
        }
        if let Some(error) = &error {
            detail["error"] = json!(error);
            detail["class"] = json!(class);
        }
        // The reconciliation made after the partition's last batch (issue 11).
        if to != PartitionState::Pending
            && let Some(check) = crate::verify::finish_detail(&mut tx, run_id, partition_id).await?
        {
            detail["reconcile"] = check;
        }
        let event = audit::NewEvent {
            partition_id: Some(partition_id),
            action,
            detail,
        };
        audit::append_all_and_commit(tx, Some(run_id), actor, vec![event]).await?;
        Ok(())
    }

    /// Splits partition `partition_id`, running under attempt `attempt`, into `children`
    /// (equal slices of its window, from `backfill_core::split`), in one transaction: the
    /// parent becomes `split`; each child is stored `pending` with `checkpoint` (the parent's
    /// last durable key: rows up to it are written in every slice) and the parent's id; one
    /// `partition.split` audit event lists them with `reason`. Fenced like
    /// [`Store::finish_partition`]: a stale attempt gets [`StoreError::StaleAttempt`] and
    /// changes nothing. Children take plan indexes after the run's last one.
    pub async fn split_partition(
        &self,
        run_id: &str,
        partition_id: &str,
        attempt: u32,
        split: Split<'_>,
        actor: &str,
    ) -> Result<Vec<backfill_core::Partition>, StoreError> {
        let Split {
            children,
            checkpoint,
            reason,
        } = split;
        let mut tx = self.begin_write().await?;
        let lock = tx.dialect().for_update();
        let part = fetch_partition(&mut tx, lock, run_id, partition_id).await?;
        if part.state != PartitionState::Running || part.attempts != attempt {
            return Err(StoreError::StaleAttempt {
                partition_id: partition_id.to_owned(),
            });
        }
        let row = stmt("SELECT COALESCE(MAX(idx), -1) FROM partitions WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&mut tx)
            .await?;
        let first = row.map_or(Ok(-1), |r| r.try_get::<i64, _>(0))? + 1;
        let now = codec::now();
        stmt(
            "UPDATE partitions SET state = 'split', finished_at = ? \
             WHERE run_id = ? AND partition_id = ? AND attempts = ? AND state = 'running'",
        )
        .bind(&now)
        .bind(run_id)
        .bind(partition_id)
        .bind(i64::from(attempt))
        .execute(&mut tx)
        .await?;
        let checkpoint_text = checkpoint.map(encode_key);
        let mut stored = Vec::with_capacity(children.len());
        for (i, child) in children.iter().enumerate() {
            let index = first + i as i64;
            let (kind, start, end) = codec::window_columns(&child.window);
            stmt(
                "INSERT INTO partitions (run_id, partition_id, idx, window_kind, window_start, \
                 window_end, state, checkpoint, parent_id) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            )
            .bind(run_id)
            .bind(&child.id)
            .bind(index)
            .bind(kind)
            .bind(&start)
            .bind(&end)
            .bind(checkpoint_text.as_deref())
            .bind(partition_id)
            .execute(&mut tx)
            .await?;
            stored.push(backfill_core::Partition {
                id: child.id.clone(),
                index: usize::try_from(index).unwrap_or(usize::MAX),
                window: child.window,
            });
        }
        audit::append(
            &mut tx,
            Some(run_id),
            Some(partition_id),
            actor,
            "partition.split",
            json!({
                "attempt": attempt,
                "reason": reason,
                "from_checkpoint": checkpoint.is_some(),
                "counts": counts_json(&part.counts),
                "children": stored.iter().map(|c| json!({
                    "partition_id": c.id,
                    "window": c.window.to_string(),
                })).collect::<Vec<_>>(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// After a crash: every partition of `run_id` left `running` goes back to `pending`,
    /// keeping its checkpoint, so a resume continues where the last durable batch ended. The
    /// attempt number is kept, so a surviving writer of that attempt is fenced out (its partition
    /// is no longer `running`) and the next attempt gets a new number. One
    /// `partition.interrupted` event per partition; returns how many were reset.
    pub async fn reset_interrupted(&self, run_id: &str, actor: &str) -> Result<u64, StoreError> {
        let running = self
            .move_all(
                run_id,
                PartitionState::Running,
                PartitionState::Pending,
                "partition.interrupted",
                actor,
            )
            .await?;
        // A partition left waiting for its source by a dead process waits again on resume.
        let waiting = self
            .move_all(
                run_id,
                PartitionState::WaitingSource,
                PartitionState::Pending,
                "partition.interrupted",
                actor,
            )
            .await?;
        Ok(running + waiting)
    }

    /// For a resume of a failed run: every `failed` partition of `run_id` goes back to
    /// `pending` (checkpoint and last error kept). One `partition.reopened` event per
    /// partition; returns how many were reopened.
    pub async fn reopen_failed(&self, run_id: &str, actor: &str) -> Result<u64, StoreError> {
        self.move_all(
            run_id,
            PartitionState::Failed,
            PartitionState::Pending,
            "partition.reopened",
            actor,
        )
        .await
    }

    /// The error for a fenced write that matched no row: [`StoreError::NotFound`] when the
    /// partition does not exist, else [`StoreError::StaleAttempt`].
    async fn stale_or_missing(&self, run_id: &str, partition_id: &str) -> StoreError {
        if let Some(fence) = self.fence()
            && let Ok(holder) = self.lease_holder(&fence.resource).await
            && holder.is_none_or(|h| h.fence != fence.number)
        {
            return StoreError::LeaseLost {
                resource: fence.resource.clone(),
                fence: fence.number,
            };
        }
        match self.partition(run_id, partition_id).await {
            Ok(_) => StoreError::StaleAttempt {
                partition_id: partition_id.to_owned(),
            },
            Err(e) => e,
        }
    }

    /// Moves every partition of a run in state `from` to `to`, one audit event each, in one
    /// transaction.
    async fn move_all(
        &self,
        run_id: &str,
        from: PartitionState,
        to: PartitionState,
        action: &str,
        actor: &str,
    ) -> Result<u64, StoreError> {
        debug_assert!(from.can_move_to(to));
        let mut tx = self.begin_write().await?;
        let lock = tx.dialect().for_update();
        let rows = stmt(format!(
            "SELECT partition_id, attempts FROM partitions \
             WHERE run_id = ? AND state = ? ORDER BY idx{lock}"
        ))
        .bind(run_id)
        .bind(from.as_str())
        .fetch_all(&mut tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        stmt("UPDATE partitions SET state = ?, finished_at = NULL WHERE run_id = ? AND state = ?")
            .bind(to.as_str())
            .bind(run_id)
            .bind(from.as_str())
            .execute(&mut tx)
            .await?;
        for row in &rows {
            let partition_id: String = row.try_get(0)?;
            let attempts: i64 = row.try_get(1)?;
            audit::append(
                &mut tx,
                Some(run_id),
                Some(&partition_id),
                actor,
                action,
                json!({ "from": from.as_str(), "attempt": attempts }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}

/// Totals over the partitions of a run, for `status` and a run's summary: what the store
/// computes in one aggregate query ([`Store::partition_totals`]) and, for a test or a caller
/// that already holds every record, [`PartitionTotals::of`] computes from records. Both give
/// the same numbers for the same partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionTotals {
    /// Partitions per state, in [`PartitionState::ALL`] order (every state, zeros included).
    pub by_state: Vec<(PartitionState, u64)>,
    /// What the writes of every partition did.
    pub counts: RowCounts,
    /// Partitions that have started at least once (`attempts > 0`).
    pub started: u64,
    /// Attempts after the first, over the started partitions.
    pub retries: u64,
    /// Attempts that ended in an error, over the started partitions.
    pub errors: u64,
    /// Partitions listed by [`Store::failing_partitions`]: failed, or not finished with an
    /// error on record.
    pub failing: u64,
}

impl PartitionTotals {
    /// The totals of `records`, computed one record at a time (the reference the store's
    /// aggregate query is tested against).
    pub fn of(records: &[PartitionRecord]) -> PartitionTotals {
        let mut totals = PartitionTotals {
            by_state: PartitionState::ALL.iter().map(|s| (*s, 0)).collect(),
            ..PartitionTotals::default()
        };
        for p in records {
            totals.counts.add(&p.counts);
            if let Some(slot) = totals.by_state.iter_mut().find(|(s, _)| *s == p.state) {
                slot.1 += 1;
            }
            if p.attempts > 0 {
                totals.started += 1;
                totals.retries += u64::from(p.attempts - 1);
                totals.errors += u64::from(p.errors);
            }
            totals.failing += u64::from(is_failing(p));
        }
        totals
    }

    /// Partitions in state `state`.
    pub fn count(&self, state: PartitionState) -> u64 {
        self.by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    /// Every partition of the run, split parents included.
    pub fn all(&self) -> u64 {
        self.by_state.iter().map(|(_, n)| n).sum()
    }

    /// The partitions that carry work: a split partition's work is carried by its children,
    /// so it is not counted.
    pub fn total(&self) -> u64 {
        self.all() - self.count(PartitionState::Split)
    }
}

/// Whether `p` is listed among the failing partitions: failed, or not finished (done or split)
/// with an error on record.
pub fn is_failing(p: &PartitionRecord) -> bool {
    p.state == PartitionState::Failed
        || (!matches!(p.state, PartitionState::Done | PartitionState::Split)
            && p.last_error.is_some())
}

/// The condition of [`is_failing`] in SQL.
pub(crate) const FAILING_SQL: &str = "(state = 'failed' OR (state NOT IN ('done', 'split') \
     AND last_error IS NOT NULL))";

impl Store {
    /// Pending partitions of run `run_id` whose plan index is in `indexes` (from `start`,
    /// inclusive, to `end`, exclusive), at most `limit` of them, by index ascending or (with
    /// `descending`) descending. One indexed query on `(run_id, state, idx)`: a caller pages
    /// through pending work by narrowing the range past the last index it got (a keyset), and
    /// never holds more than a page. Plan indexes are unique within a run, so the pages of a
    /// range cover each partition pending throughout exactly once.
    pub async fn pending_page(
        &self,
        run_id: &str,
        indexes: std::ops::Range<u64>,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, StoreError> {
        if indexes.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let direction = if descending { "DESC" } else { "ASC" };
        let rows = stmt(format!(
            "{PARTITION_COLUMNS} WHERE run_id = ? AND state = 'pending' AND idx >= ? AND idx < ? \
             ORDER BY idx {direction} LIMIT ?"
        ))
        .bind(run_id)
        .bind(codec::to_db(indexes.start))
        .bind(codec::to_db(indexes.end))
        .bind(codec::to_db(limit as u64))
        .fetch_all(&mut self.conn().await?)
        .await?;
        rows.iter().map(partition_from_row).collect()
    }

    /// The pending partitions among plan indexes `indexes`, in the order of `indexes` (those
    /// no longer pending are left out). For an order the store cannot page by index
    /// (`largest_first`, a priority list): the caller holds the order as indexes and reads
    /// the records a slice at a time.
    pub async fn pending_at(
        &self,
        run_id: &str,
        indexes: &[u64],
    ) -> Result<Vec<PartitionRecord>, StoreError> {
        let mut found = Vec::with_capacity(indexes.len());
        for chunk in indexes.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let query = chunk.iter().fold(
                stmt(format!(
                    "{PARTITION_COLUMNS} WHERE run_id = ? AND state = 'pending' AND idx IN ({marks})"
                ))
                .bind(run_id),
                |query, index| query.bind(codec::to_db(*index)),
            );
            let rows = query.fetch_all(&mut self.conn().await?).await?;
            let mut records = rows
                .iter()
                .map(partition_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            records.sort_by_key(|r| {
                chunk
                    .iter()
                    .position(|i| *i == r.index)
                    .unwrap_or(usize::MAX)
            });
            found.extend(records);
        }
        Ok(found)
    }

    /// One past the highest plan index of run `run_id` (0 for a run without partitions): the
    /// index the next split child will take, so a page range ending here leaves out the
    /// children created after the call.
    pub async fn index_end(&self, run_id: &str) -> Result<u64, StoreError> {
        let row = stmt("SELECT COALESCE(MAX(idx), -1) + 1 FROM partitions WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(codec::from_db(
            row.map_or(Ok(0), |r| r.try_get::<i64, _>(0))?,
        ))
    }

    /// The totals of run `run_id`'s partitions (see [`PartitionTotals`]), from aggregate
    /// queries in the store: nothing per partition is read into memory, so it costs the same
    /// memory at a million partitions as at ten.
    pub async fn partition_totals(&self, run_id: &str) -> Result<PartitionTotals, StoreError> {
        let sum = |column: &str| format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT)");
        let columns = [
            "rows_read",
            "inserted",
            "updated",
            "unchanged",
            "deleted",
            "affected",
        ]
        .map(sum)
        .join(", ");
        let mut conn = self.conn().await?;
        let mut totals = PartitionTotals {
            by_state: PartitionState::ALL.iter().map(|s| (*s, 0)).collect(),
            ..PartitionTotals::default()
        };
        // Counts per state come from the (run_id, state, idx) index alone.
        let rows = stmt("SELECT state, COUNT(*) FROM partitions WHERE run_id = ? GROUP BY state")
            .bind(run_id)
            .fetch_all(&mut conn)
            .await?;
        for row in &rows {
            let state: String = row.try_get(0)?;
            let state: PartitionState = state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
            let n: i64 = row.try_get(1)?;
            if let Some(slot) = totals.by_state.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = codec::from_db(n);
            }
        }
        // A partition that never started has no counts, errors or retries.
        let row = stmt(format!(
            "SELECT {columns}, COUNT(*), {retries}, {errors}, {failing} FROM partitions \
             WHERE run_id = ? AND attempts > 0",
            retries = sum("attempts - 1"),
            errors = sum("errors"),
            failing = sum(&format!("CASE WHEN {FAILING_SQL} THEN 1 ELSE 0 END")),
        ))
        .bind(run_id)
        .fetch_optional(&mut conn)
        .await?;
        if let Some(row) = row {
            let n = |i: usize| row.try_get::<i64, _>(i).map(codec::from_db);
            totals.counts = RowCounts {
                read: n(0)?,
                inserted: n(1)?,
                updated: n(2)?,
                unchanged: n(3)?,
                deleted: n(4)?,
                affected: n(5)?,
            };
            totals.started = n(6)?;
            totals.retries = n(7)?;
            totals.errors = n(8)?;
            totals.failing = n(9)?;
        }
        // Failed without ever starting (its source never became ready): failing too.
        totals.failing += self.failed_unstarted(run_id, &mut conn).await?;
        Ok(totals)
    }

    /// Partitions of run `run_id` that failed without an attempt (a source never ready): one
    /// indexed range of `(run_id, state, idx)`, as such partitions are outside the partial
    /// index of started ones the other failing reads use.
    async fn failed_unstarted(
        &self,
        run_id: &str,
        conn: &mut crate::db::Conn,
    ) -> Result<u64, StoreError> {
        let row = stmt(
            "SELECT COUNT(*) FROM partitions WHERE run_id = ? AND state = 'failed' \
             AND attempts = 0",
        )
        .bind(run_id)
        .fetch_optional(conn)
        .await?;
        Ok(row.map_or(Ok(0), |r| r.try_get::<i64, _>(0).map(codec::from_db))?)
    }

    /// The partitions of run `run_id` in state `state`, in plan order, at most `limit` of
    /// them (one indexed range of `(run_id, state, idx)`).
    pub async fn partitions_in_state(
        &self,
        run_id: &str,
        state: PartitionState,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, StoreError> {
        let rows = stmt(format!(
            "{PARTITION_COLUMNS} WHERE run_id = ? AND state = ? ORDER BY idx LIMIT ?"
        ))
        .bind(run_id)
        .bind(state.as_str())
        .bind(codec::to_db(limit as u64))
        .fetch_all(&mut self.conn().await?)
        .await?;
        rows.iter().map(partition_from_row).collect()
    }

    /// One page of the partitions of run `run_id`, in plan order: those after plan index
    /// `after` (from the first when `None`), in state `state` when given, at most `limit`.
    /// Keyset paging: the next page starts after the last index of this one, and each page is
    /// one indexed range (`(run_id, idx)`, or `(run_id, state, idx)` with a state), however
    /// many partitions the run has.
    pub async fn partitions_page(
        &self,
        run_id: &str,
        state: Option<PartitionState>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, StoreError> {
        let state_clause = if state.is_some() {
            " AND state = ?"
        } else {
            ""
        };
        let mut query = stmt(format!(
            "{PARTITION_COLUMNS} WHERE run_id = ?{state_clause} AND idx > ? ORDER BY idx LIMIT ?"
        ))
        .bind(run_id);
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query
            .bind(after.map_or(-1, codec::to_db))
            .bind(codec::to_db(limit as u64))
            .fetch_all(&mut self.conn().await?)
            .await?;
        rows.iter().map(partition_from_row).collect()
    }

    /// The failing partitions of run `run_id` (see [`is_failing`]), in plan order, at most
    /// `limit` of them; [`PartitionTotals::failing`] says how many there are in all.
    pub async fn failing_partitions(
        &self,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, StoreError> {
        // `+idx`: ordering by the bare column made SQLite walk the `(run_id, idx)` index over
        // every partition of the run (0.13 s at 1,000,000) instead of the partial index of
        // started partitions and a sort of the few it holds.
        // The started ones from the partial index, and those that failed without an attempt
        // (a source never ready) from `(run_id, state, idx)`; merged in plan order.
        let started = stmt(format!(
            "{PARTITION_COLUMNS} WHERE run_id = ? AND attempts > 0 AND {FAILING_SQL} \
             ORDER BY +idx LIMIT ?"
        ))
        .bind(run_id)
        .bind(codec::to_db(limit as u64))
        .fetch_all(&mut self.conn().await?)
        .await?;
        let unstarted = stmt(format!(
            "{PARTITION_COLUMNS} WHERE run_id = ? AND state = 'failed' AND attempts = 0 \
             ORDER BY idx LIMIT ?"
        ))
        .bind(run_id)
        .bind(codec::to_db(limit as u64))
        .fetch_all(&mut self.conn().await?)
        .await?;
        let mut all = started
            .iter()
            .chain(unstarted.iter())
            .map(partition_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|p| p.index);
        all.truncate(limit);
        Ok(all)
    }
}
