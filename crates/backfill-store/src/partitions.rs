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
    },
    /// A permanent failure or attempts exhausted: `running -> failed`.
    Failed {
        /// What went wrong (redacted before it is stored).
        error: &'a str,
    },
}

const PARTITION_COLUMNS: &str = "SELECT run_id, partition_id, idx, window_kind, window_start, \
     window_end, state, attempts, checkpoint, rows_read, inserted, updated, unchanged, deleted, \
     affected, last_error, errors, started_at, finished_at, elapsed_ms, parent_id FROM partitions";

fn partition_from_row(row: &DbRow) -> Result<PartitionRecord, StoreError> {
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
    let attempts: i64 = row.try_get("attempts")?;
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
        attempts: u32::try_from(attempts).map_err(|_| {
            StoreError::Corrupt(format!("partition {partition_id} has {attempts} attempts"))
        })?,
        checkpoint,
        counts: RowCounts {
            read: codec::from_db(row.try_get("rows_read")?),
            inserted: codec::from_db(row.try_get("inserted")?),
            updated: codec::from_db(row.try_get("updated")?),
            unchanged: codec::from_db(row.try_get("unchanged")?),
            deleted: codec::from_db(row.try_get("deleted")?),
            affected: codec::from_db(row.try_get("affected")?),
        },
        last_error: row.try_get("last_error")?,
        errors: u32::try_from(row.try_get::<i64, _>("errors")?).unwrap_or(u32::MAX),
        started_at: codec::parse_opt_time(row.try_get("started_at")?, "started_at")?,
        finished_at: codec::parse_opt_time(row.try_get("finished_at")?, "finished_at")?,
        elapsed_ms: codec::from_db(row.try_get("elapsed_ms")?),
        parent_id: row.try_get("parent_id")?,
        partition_id,
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
    /// run.
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
        let mut tx = self.begin_write().await?;
        let lock = tx.dialect().for_update();
        let part = fetch_partition(&mut tx, lock, run_id, partition_id).await?;
        if !part.state.can_move_to(PartitionState::Running) {
            return Err(StoreError::IllegalTransition {
                what: format!("partition {partition_id}"),
                from: part.state.to_string(),
                to: PartitionState::Running.to_string(),
            });
        }
        let attempt = part.attempts + 1;
        let now = codec::now();
        stmt(
            "UPDATE partitions SET state = 'running', attempts = ?, \
             started_at = COALESCE(started_at, ?), finished_at = NULL \
             WHERE run_id = ? AND partition_id = ?",
        )
        .bind(i64::from(attempt))
        .bind(&now)
        .bind(run_id)
        .bind(partition_id)
        .execute(&mut tx)
        .await?;
        audit::append(
            &mut tx,
            Some(run_id),
            Some(partition_id),
            actor,
            "partition.running",
            json!({ "attempt": attempt }),
        )
        .await?;
        tx.commit().await?;
        Ok(attempt)
    }

    /// Marks a pending partition whose window the caller found empty (no checkpoint, no source
    /// rows) as done in ONE transaction: `pending -> running -> done`, with the
    /// `partition.running` and `partition.done` audit events an attempt would write. Half the
    /// store work of `start_attempt` + `finish_partition`, which matters for sparse scopes.
    /// Returns the attempt number used. Fails with [`StoreError::IllegalTransition`] when the
    /// partition is not pending or has a checkpoint.
    pub async fn finish_empty(
        &self,
        run_id: &str,
        partition_id: &str,
        actor: &str,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin_write().await?;
        let lock = tx.dialect().for_update();
        let part = fetch_partition(&mut tx, lock, run_id, partition_id).await?;
        if part.state != PartitionState::Pending || part.checkpoint.is_some() {
            return Err(StoreError::IllegalTransition {
                what: format!("partition {partition_id} (finish as empty)"),
                from: part.state.to_string(),
                to: PartitionState::Done.to_string(),
            });
        }
        let attempt = part.attempts + 1;
        let now = codec::now();
        stmt(
            "UPDATE partitions SET state = 'done', attempts = ?, \
             started_at = COALESCE(started_at, ?), finished_at = ? \
             WHERE run_id = ? AND partition_id = ?",
        )
        .bind(i64::from(attempt))
        .bind(&now)
        .bind(&now)
        .bind(run_id)
        .bind(partition_id)
        .execute(&mut tx)
        .await?;
        for (action, detail) in [
            ("partition.running", json!({ "attempt": attempt })),
            (
                "partition.done",
                json!({ "attempt": attempt, "counts": counts_json(&part.counts), "empty": true }),
            ),
        ] {
            audit::append(
                &mut tx,
                Some(run_id),
                Some(partition_id),
                actor,
                action,
                detail,
            )
            .await?;
        }
        tx.commit().await?;
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
        let gate = self.write_gate().await;
        let done = query.execute(&mut self.conn().await?).await?;
        drop(gate);
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
        let mut sql = "UPDATE partitions SET rows_read = 0, inserted = 0, updated = 0, \
             unchanged = 0, deleted = 0, affected = 0, checkpoint = NULL \
             WHERE run_id = ? AND partition_id = ? AND attempts = ? AND state = 'running'"
            .to_owned();
        if self.fence().is_some() {
            sql.push_str(" AND EXISTS (SELECT 1 FROM leases WHERE resource = ? AND fence = ?)");
        }
        let mut query = stmt(sql)
            .bind(run_id)
            .bind(partition_id)
            .bind(i64::from(attempt));
        if let Some(fence) = self.fence() {
            query = query
                .bind(fence.resource.as_str())
                .bind(codec::to_db(fence.number));
        }
        let done = query.execute(&mut self.conn().await?).await?;
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
        let (to, action, error) = match outcome {
            Outcome::Done if quarantined > 0 => (
                PartitionState::DoneWithQuarantine,
                "partition.done_with_quarantine",
                None,
            ),
            Outcome::Done => (PartitionState::Done, "partition.done", None),
            Outcome::Retry { error } => (PartitionState::Pending, "partition.retry", Some(error)),
            Outcome::Failed { error } => (PartitionState::Failed, "partition.failed", Some(error)),
        };
        debug_assert!(part.state.can_move_to(to));
        let error = error.map(backfill_core::secret::redact);
        let finished = to.is_finished() || to == PartitionState::Failed;
        let now = codec::now();
        stmt(
            "UPDATE partitions SET state = ?, last_error = COALESCE(?, last_error), \
             errors = errors + ?, \
             finished_at = CASE WHEN ? THEN ? ELSE finished_at END \
             WHERE run_id = ? AND partition_id = ? AND attempts = ? AND state = 'running'",
        )
        .bind(to.as_str())
        .bind(error.as_deref())
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
        }
        audit::append(
            &mut tx,
            Some(run_id),
            Some(partition_id),
            actor,
            action,
            detail,
        )
        .await?;
        tx.commit().await?;
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
        self.move_all(
            run_id,
            PartitionState::Running,
            PartitionState::Pending,
            "partition.interrupted",
            actor,
        )
        .await
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
