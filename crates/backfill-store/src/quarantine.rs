//! Quarantine: rows the target rejected, kept with their reason so nothing is lost.
//!
//! Invariants: a rejected row is recorded before the checkpoint moves past it (the engine
//! calls [`Store::quarantine`] first), so a crash can never lose one; recording is idempotent
//! (one row per run, partition and key, a replay overwrites it); a partition that has
//! quarantined rows ends `done_with_quarantine`, never plain `done`.

use backfill_core::PartitionState;
use serde_json::json;

use crate::db::{Db, DbRow, stmt};
use crate::{Store, StoreError, audit, codec};

/// A rejected row to record.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// The row's key, as `backfill_core::encode_key` text.
    pub key: String,
    /// Why the target refused it (secrets are masked before it is stored).
    pub error: String,
    /// The row as a JSON object, column to value.
    pub row: serde_json::Value,
}

/// A quarantined row as stored.
#[derive(Clone, Debug)]
pub struct QuarantineRecord {
    /// Partition the row belongs to.
    pub partition_id: String,
    /// The row's key (`encode_key` text).
    pub key: String,
    /// Why the target refused it.
    pub error: String,
    /// The row as a JSON object.
    pub row: serde_json::Value,
    /// The attempt that recorded it.
    pub attempt: u32,
    /// When it was recorded (RFC 3339).
    pub at: String,
}

/// The columns [`quarantine_from_row`] reads.
const QUARANTINE_COLUMNS: &str =
    "SELECT partition_id, row_key, error, row_json, attempt, at FROM quarantine";

fn quarantine_from_row(r: &DbRow) -> Result<QuarantineRecord, StoreError> {
    let row: String = r.try_get(3)?;
    Ok(QuarantineRecord {
        partition_id: r.try_get(0)?,
        key: r.try_get(1)?,
        error: r.try_get(2)?,
        row: serde_json::from_str(&row).unwrap_or(serde_json::Value::String(row)),
        attempt: u32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0),
        at: r.try_get(5)?,
    })
}

pub(crate) async fn count_quarantined(
    db: &mut impl Db,
    run_id: &str,
    partition_id: &str,
) -> Result<u64, StoreError> {
    let row = stmt("SELECT count(*) FROM quarantine WHERE run_id = ? AND partition_id = ?")
        .bind(run_id)
        .bind(partition_id)
        .fetch_optional(db)
        .await?;
    Ok(row.map_or(Ok(0), |r| r.try_get::<i64, _>(0))?.max(0) as u64)
}

impl Store {
    /// Records `rows` rejected by the target in attempt `attempt` of a partition. Call it
    /// before checkpointing past them. Idempotent per key.
    pub async fn quarantine(
        &self,
        run_id: &str,
        partition_id: &str,
        attempt: u32,
        rows: &[Rejected],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let now = codec::now();
        for r in rows {
            stmt(
                "INSERT INTO quarantine (run_id, partition_id, row_key, error, row_json, attempt, at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, partition_id, row_key) \
                 DO UPDATE SET error = excluded.error, row_json = excluded.row_json, \
                 attempt = excluded.attempt, at = excluded.at",
            )
            .bind(run_id)
            .bind(partition_id)
            .bind(r.key.as_str())
            .bind(backfill_core::secret::redact(&r.error).as_str())
            .bind(backfill_core::secret::redact(&r.row.to_string()).as_str())
            .bind(i64::from(attempt))
            .bind(&now)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every quarantined row of a run, by partition and key.
    pub async fn quarantined(&self, run_id: &str) -> Result<Vec<QuarantineRecord>, StoreError> {
        let rows = stmt(format!(
            "{QUARANTINE_COLUMNS} WHERE run_id = ? ORDER BY partition_id, row_key"
        ))
        .bind(run_id)
        .fetch_all(&mut self.conn().await?)
        .await?;
        rows.iter().map(quarantine_from_row).collect()
    }

    /// One page of a run's quarantined rows by partition and key, after `after` (the
    /// partition id and key of the previous page's last row): keyset-paginated on the
    /// table's primary key.
    pub async fn quarantine_page(
        &self,
        run_id: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<QuarantineRecord>, StoreError> {
        let (partition, key) = after.unwrap_or(("", ""));
        let rows = stmt(format!(
            "{QUARANTINE_COLUMNS} WHERE run_id = ? AND (partition_id > ? OR \
             (partition_id = ? AND row_key > ?)) ORDER BY partition_id, row_key LIMIT ?"
        ))
        .bind(run_id)
        .bind(partition)
        .bind(partition)
        .bind(key)
        .bind(codec::to_db(limit as u64))
        .fetch_all(&mut self.conn().await?)
        .await?;
        rows.iter().map(quarantine_from_row).collect()
    }

    /// Gives the quarantined rows of a run another chance: every `done_with_quarantine`
    /// partition goes back to `pending` from the start of its window (checkpoint and counts
    /// cleared) and its quarantine rows are removed; one audit event per partition. Returns
    /// how many partitions were reopened; the run continues with `resume`.
    pub async fn retry_quarantine(&self, run_id: &str, actor: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows =
            stmt("SELECT partition_id FROM partitions WHERE run_id = ? AND state = ? ORDER BY idx")
                .bind(run_id)
                .bind(PartitionState::DoneWithQuarantine.as_str())
                .fetch_all(&mut tx)
                .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            let dropped = stmt("DELETE FROM quarantine WHERE run_id = ? AND partition_id = ?")
                .bind(run_id)
                .bind(id.as_str())
                .execute(&mut tx)
                .await?;
            stmt(
                "UPDATE partitions SET state = 'pending', checkpoint = NULL, rows_read = 0, \
                 inserted = 0, updated = 0, unchanged = 0, deleted = 0, affected = 0, \
                 finished_at = NULL WHERE run_id = ? AND partition_id = ?",
            )
            .bind(run_id)
            .bind(id.as_str())
            .execute(&mut tx)
            .await?;
            audit::append(
                &mut tx,
                Some(run_id),
                Some(id),
                actor,
                "partition.quarantine_retry",
                json!({ "quarantined_rows": dropped }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }
}
