//! Issue 11's gates: source readiness (`waiting_source`) and the canary with its approval.
//!
//! Readiness: [`Store::wait_for_source`] moves a `pending` partition to `waiting_source`
//! (`partition.waiting_source`), and [`Store::end_source_wait`] ends the wait: back to
//! `pending` when the source is ready (`partition.source_ready`) or the process stops
//! (`partition.interrupted`), or `failed` after the timeout (`partition.failed`, reason
//! `source_not_ready`). Re-checks in between write nothing, so the audit chain holds two
//! events per wait, never one per check. A process that dies while a partition waits leaves it
//! `waiting_source`; [`Store::reset_interrupted`] puts it back to `pending`.
//!
//! Canary: the run's `canary` column holds the choice and its outcome as JSON; every change
//! is one transaction with its audit event (`canary.chosen`, `canary.passed`,
//! `canary.failed`). [`Store::approve_run`] moves an `awaiting_approval` run to `running`
//! with `run.approved` naming who and why, and is refused on any other state.

use serde_json::json;

use crate::db::stmt;
use crate::partitions::fetch_partition_locked;
use crate::{Store, StoreError, audit, codec};
use backfill_core::{PartitionState, RunState};

/// How a partition's wait for its source ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceWaitEnd<'a> {
    /// `source.ready` said yes: back to `pending`, to be read now.
    Ready,
    /// The process stopped while it waited: back to `pending`, to wait again on resume.
    Interrupted,
    /// `source.ready_timeout` passed, or the ready query failed for good: `failed`, with
    /// this error (redacted before it is stored).
    Failed {
        /// What went wrong.
        error: &'a str,
    },
}

impl Store {
    /// Moves a `pending` partition to `waiting_source` with `partition.waiting_source`
    /// (`detail` says what the check found and how long it may wait). Any other state is
    /// [`StoreError::IllegalTransition`].
    pub async fn wait_for_source(
        &self,
        run_id: &str,
        partition_id: &str,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let part = fetch_partition_locked(&mut tx, run_id, partition_id).await?;
        if !part.state.can_move_to(PartitionState::WaitingSource) {
            return Err(StoreError::IllegalTransition {
                what: format!("partition {partition_id}"),
                from: part.state.to_string(),
                to: PartitionState::WaitingSource.to_string(),
            });
        }
        stmt(
            "UPDATE partitions SET state = 'waiting_source' WHERE run_id = ? AND partition_id = ?",
        )
        .bind(run_id)
        .bind(partition_id)
        .execute(&mut tx)
        .await?;
        audit::append(
            &mut tx,
            Some(run_id),
            Some(partition_id),
            actor,
            "partition.waiting_source",
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends the wait of a `waiting_source` partition (see [`SourceWaitEnd`]), with its audit
    /// event carrying `detail` (checks made, time waited). Any other state is
    /// [`StoreError::IllegalTransition`].
    pub async fn end_source_wait(
        &self,
        run_id: &str,
        partition_id: &str,
        end: SourceWaitEnd<'_>,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let part = fetch_partition_locked(&mut tx, run_id, partition_id).await?;
        if part.state != PartitionState::WaitingSource {
            return Err(StoreError::IllegalTransition {
                what: format!("partition {partition_id}"),
                from: part.state.to_string(),
                to: "the end of its wait for the source".to_owned(),
            });
        }
        let mut detail = detail;
        let (to, action, error) = match end {
            SourceWaitEnd::Ready => (PartitionState::Pending, "partition.source_ready", None),
            SourceWaitEnd::Interrupted => (PartitionState::Pending, "partition.interrupted", None),
            SourceWaitEnd::Failed { error } => {
                let error = backfill_core::secret::redact(error);
                detail["reason"] = json!("source_not_ready");
                detail["error"] = json!(error);
                (PartitionState::Failed, "partition.failed", Some(error))
            }
        };
        let now = codec::now();
        stmt(
            "UPDATE partitions SET state = ?, last_error = COALESCE(?, last_error), \
             last_error_class = CASE WHEN ? THEN 'source_not_ready' ELSE last_error_class END, \
             errors = errors + ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END \
             WHERE run_id = ? AND partition_id = ?",
        )
        .bind(to.as_str())
        .bind(error.as_deref())
        .bind(error.is_some())
        .bind(i64::from(error.is_some()))
        .bind(error.is_some())
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
            action,
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The run's canary record (JSON), `None` when it has none yet.
    pub async fn canary(&self, run_id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let row = stmt("SELECT canary FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(&mut self.conn().await?)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no run matches `{run_id}`")))?;
        let text: Option<String> = row.try_get(0)?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| StoreError::Corrupt(format!("canary of run {run_id}: {e}")))
        })
        .transpose()
    }

    /// Stores `canary` as the run's canary record and appends `action` (`canary.chosen`,
    /// `canary.passed`, `canary.failed`) with `detail`, in one transaction.
    pub async fn record_canary(
        &self,
        run_id: &str,
        canary: &serde_json::Value,
        action: &str,
        detail: serde_json::Value,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let text = canary.to_string();
        let now = codec::now();
        let done = stmt("UPDATE runs SET canary = ?, updated_at = ? WHERE id = ?")
            .bind(&text)
            .bind(&now)
            .bind(run_id)
            .execute(&mut tx)
            .await?;
        if done != 1 {
            return Err(StoreError::NotFound(format!("no run matches `{run_id}`")));
        }
        audit::append(&mut tx, Some(run_id), None, actor, action, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `backfill approve`: moves an `awaiting_approval` run to `running` with `run.approved`
    /// naming `actor` and `reason`, and records the approval in the canary record. Any other
    /// state is [`StoreError::IllegalTransition`] and changes nothing.
    pub async fn approve_run(
        &self,
        run_id: &str,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let lock = tx.dialect().for_update();
        let row = stmt(format!("SELECT state, canary FROM runs WHERE id = ?{lock}"))
            .bind(run_id)
            .fetch_optional(&mut tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no run matches `{run_id}`")))?;
        let state: String = row.try_get(0)?;
        let state: RunState = state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))?;
        if state != RunState::AwaitingApproval {
            return Err(StoreError::IllegalTransition {
                what: format!("run {run_id}"),
                from: state.to_string(),
                to: "approved".to_owned(),
            });
        }
        let mut canary: serde_json::Value = row
            .try_get::<Option<String>, _>(1)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({}));
        let now = codec::now();
        canary["approved_by"] = json!(actor);
        canary["approved_at"] = json!(now);
        canary["approval_reason"] = json!(reason);
        let text = canary.to_string();
        stmt("UPDATE runs SET state = 'running', canary = ?, updated_at = ? WHERE id = ?")
            .bind(&text)
            .bind(&now)
            .bind(run_id)
            .execute(&mut tx)
            .await?;
        audit::append(
            &mut tx,
            Some(run_id),
            None,
            actor,
            "run.approved",
            json!({ "from": state.as_str(), "reason": reason }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
