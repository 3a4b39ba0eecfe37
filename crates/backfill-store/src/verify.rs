//! Reconciliation results (issue 11): the latest comparison of each partition's source and
//! target fingerprints, table `partition_checks` (migration 9).
//!
//! Owns: recording a check (one row per partition, overwritten by the next check), the
//! verified / mismatched / not verified totals of a run from aggregate queries, the check's
//! detail that the partition's finish event carries, and the `validate` audit event.
//!
//! Does not: compute fingerprints or decide what matches (the engine's `reconcile` does), or
//! change a partition's state (a mismatch after a partition's last batch fails it through
//! [`Store::finish_partition`], whose audit event carries the check).
//!
//! Invariants:
//! - A check is not a state change: it appends no audit event of its own. The check made
//!   after a partition's last batch is in its `partition.done` / `partition.failed` event's
//!   detail (`reconcile`); the checks of a run's end and of `backfill validate` are each
//!   summed up by one event (`run.reconciled`, `validate`), so the chain grows by one event
//!   per command, not per partition, at a million partitions.
//! - Totals never read every partition into memory.

use backfill_core::fingerprint::Fingerprint;
use serde_json::json;

use crate::db::{Arg, Db, DbRow, stmt};
use crate::{Store, StoreError, audit, codec};

/// How a partition's last check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// Both sides agree within the tolerance.
    Verified,
    /// They differ beyond the tolerance (`reconcile_mismatch`).
    Mismatch,
    /// Nothing could be compared (the detail says why).
    NotVerified,
}

impl CheckStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Verified => "verified",
            CheckStatus::Mismatch => "mismatch",
            CheckStatus::NotVerified => "not_verified",
        }
    }

    fn parse(s: &str) -> CheckStatus {
        match s {
            "verified" => CheckStatus::Verified,
            "mismatch" => CheckStatus::Mismatch,
            _ => CheckStatus::NotVerified,
        }
    }
}

/// One partition's check, to record or as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionCheck {
    /// The partition.
    pub partition_id: String,
    /// How it ended.
    pub status: CheckStatus,
    /// The source's fingerprint of the window, when computed.
    pub source: Option<Fingerprint>,
    /// The target's fingerprint of the window, when computed.
    pub target: Option<Fingerprint>,
    /// A JSON object: `keys` (a sample of differing keys), `reason` (why not verified), or
    /// `source_row` / `target_row` (`sql` mode's check rows).
    pub detail: serde_json::Value,
    /// Who checked: `partition`, `at_end` or `validate`.
    pub checked_by: String,
}

impl PartitionCheck {
    /// The check as JSON, for audit details and `--json` output (no secret can be in it:
    /// fingerprints, counts and key values only).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "status": self.status.as_str(),
            "source_rows": self.source.map(|f| f.rows),
            "source_checksum": self.source.map(|f| checksum(&f)),
            "target_rows": self.target.map(|f| f.rows),
            "target_checksum": self.target.map(|f| checksum(&f)),
            "detail": self.detail,
            "checked_by": self.checked_by,
        })
    }
}

/// A run's partitions by their last check. `not_verified` counts every partition (split
/// parents aside) without a verified or mismatched check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckTotals {
    /// Last check matched.
    pub verified: u64,
    /// Last check differed beyond the tolerance.
    pub mismatched: u64,
    /// Never compared, or could not be.
    pub not_verified: u64,
}

/// The checksum as stored: the fingerprint's two sums as 32 hex digits.
pub fn checksum(f: &Fingerprint) -> String {
    format!("{:016x}{:016x}", f.sum, f.check)
}

fn parse_checksum(rows: Option<i64>, text: Option<String>) -> Option<Fingerprint> {
    let (rows, text) = (rows?, text?);
    let sum = u64::from_str_radix(text.get(..16)?, 16).ok()?;
    let check = u64::from_str_radix(text.get(16..)?, 16).ok()?;
    Some(Fingerprint {
        rows: codec::from_db(rows),
        sum,
        check,
    })
}

/// Writes `check` of run `run_id` (insert or overwrite).
async fn upsert(db: &mut impl Db, run_id: &str, check: &PartitionCheck) -> Result<(), StoreError> {
    let to_db = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    stmt(
        "INSERT INTO partition_checks (run_id, partition_id, status, source_rows, \
         source_checksum, target_rows, target_checksum, detail, checked_by, checked_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, partition_id) DO UPDATE SET \
         status = excluded.status, source_rows = excluded.source_rows, \
         source_checksum = excluded.source_checksum, target_rows = excluded.target_rows, \
         target_checksum = excluded.target_checksum, detail = excluded.detail, \
         checked_by = excluded.checked_by, checked_at = excluded.checked_at",
    )
    .bind(run_id)
    .bind(check.partition_id.as_str())
    .bind(check.status.as_str())
    .bind(Arg::Int(check.source.map(|f| to_db(f.rows))))
    .bind(Arg::Text(check.source.map(|f| checksum(&f))))
    .bind(Arg::Int(check.target.map(|f| to_db(f.rows))))
    .bind(Arg::Text(check.target.map(|f| checksum(&f))))
    .bind(backfill_core::secret::redact(&check.detail.to_string()).as_str())
    .bind(check.checked_by.as_str())
    .bind(codec::now())
    .execute(db)
    .await?;
    Ok(())
}

/// The check recorded for a partition, as the `reconcile` detail of its finish event.
pub(crate) async fn finish_detail(
    db: &mut impl Db,
    run_id: &str,
    partition_id: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(read_check(db, run_id, partition_id)
        .await?
        .filter(|c| c.checked_by == "partition")
        .map(|c| c.to_json()))
}

/// The columns [`check_from_row`] reads.
const CHECK_COLUMNS: &str = "SELECT partition_id, status, source_rows, source_checksum, \
     target_rows, target_checksum, detail, checked_by FROM partition_checks";

fn check_from_row(r: &DbRow) -> Result<PartitionCheck, StoreError> {
    let status: String = r.try_get(1)?;
    let detail: String = r.try_get(6)?;
    Ok(PartitionCheck {
        partition_id: r.try_get(0)?,
        status: CheckStatus::parse(&status),
        source: parse_checksum(r.try_get(2)?, r.try_get(3)?),
        target: parse_checksum(r.try_get(4)?, r.try_get(5)?),
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        checked_by: r.try_get(7)?,
    })
}

async fn read_check(
    db: &mut impl Db,
    run_id: &str,
    partition_id: &str,
) -> Result<Option<PartitionCheck>, StoreError> {
    let row = stmt(format!(
        "{CHECK_COLUMNS} WHERE run_id = ? AND partition_id = ?"
    ))
    .bind(run_id)
    .bind(partition_id)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(check_from_row).transpose()
}

impl Store {
    /// Records `checks` of run `run_id`, in one transaction, overwriting earlier checks of
    /// the same partitions. Appends no audit event (see the module doc).
    pub async fn record_checks(
        &self,
        run_id: &str,
        checks: &[PartitionCheck],
    ) -> Result<(), StoreError> {
        if checks.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for check in checks {
            upsert(&mut tx, run_id, check).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One page of run `run_id`'s recorded checks (only those with `status`, when given) in
    /// partition id order, after partition `after`: keyset-paginated on the checks' primary
    /// key, so the mismatched partitions of a million are a page of an index.
    pub async fn checks_page(
        &self,
        run_id: &str,
        status: Option<CheckStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PartitionCheck>, StoreError> {
        let status_clause = if status.is_some() {
            " AND status = ?"
        } else {
            ""
        };
        let mut query = stmt(format!(
            "{CHECK_COLUMNS} WHERE run_id = ?{status_clause} AND partition_id > ? \
             ORDER BY partition_id LIMIT ?"
        ))
        .bind(run_id);
        if let Some(status) = status {
            query = query.bind(status.as_str());
        }
        let rows = query
            .bind(after.unwrap_or(""))
            .bind(codec::to_db(limit as u64))
            .fetch_all(&mut self.conn().await?)
            .await?;
        rows.iter().map(check_from_row).collect()
    }

    /// The last checks of the partitions `partition_ids` of run `run_id` (those checked; in
    /// no particular order): one query on the checks' primary key, for a page of partitions.
    pub async fn checks_of(
        &self,
        run_id: &str,
        partition_ids: &[&str],
    ) -> Result<Vec<PartitionCheck>, StoreError> {
        if partition_ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; partition_ids.len()].join(", ");
        let mut query = stmt(format!(
            "{CHECK_COLUMNS} WHERE run_id = ? AND partition_id IN ({marks})"
        ))
        .bind(run_id);
        for id in partition_ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&mut self.conn().await?).await?;
        rows.iter().map(check_from_row).collect()
    }

    /// The last check of one partition, if any.
    pub async fn partition_check(
        &self,
        run_id: &str,
        partition_id: &str,
    ) -> Result<Option<PartitionCheck>, StoreError> {
        read_check(&mut self.conn().await?, run_id, partition_id).await
    }

    /// Why a partition of `run_id` is "not verified": one such partition's last check's
    /// reason (`detail.reason`, e.g. the fingerprint query's error), so a summary can say why
    /// without listing every partition; `None` when no partition is, or none says. One row,
    /// read by the `(run_id, status)` index.
    pub async fn not_verified_reason(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        let row = stmt(
            "SELECT detail FROM partition_checks WHERE run_id = ? AND status = 'not_verified' \
             LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&mut self.conn().await?)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let detail: String = row.try_get(0)?;
        Ok(serde_json::from_str::<serde_json::Value>(&detail)
            .ok()
            .and_then(|d| d["reason"].as_str().map(str::to_owned)))
    }

    /// The run's partitions by their last check, from aggregate queries.
    pub async fn check_totals(&self, run_id: &str) -> Result<CheckTotals, StoreError> {
        let mut conn = self.conn().await?;
        let row = stmt("SELECT COUNT(*) FROM partitions WHERE run_id = ? AND state <> 'split'")
            .bind(run_id)
            .fetch_optional(&mut conn)
            .await?;
        let total = match row {
            Some(r) => codec::from_db(r.try_get::<i64, _>(0)?),
            None => 0,
        };
        drop(conn);
        self.check_totals_of(run_id, total).await
    }

    /// [`check_totals`](Self::check_totals) for a caller that already knows how many
    /// partitions the run has, split parents aside (`status` has them from
    /// [`partition_totals`](Self::partition_totals)): one query over the checks only, not a
    /// second count of every partition.
    pub async fn check_totals_of(
        &self,
        run_id: &str,
        total: u64,
    ) -> Result<CheckTotals, StoreError> {
        let mut conn = self.conn().await?;
        let row = stmt(
            "SELECT CAST(COALESCE(SUM(CASE WHEN status = 'verified' THEN 1 ELSE 0 END), 0) \
             AS BIGINT), CAST(COALESCE(SUM(CASE WHEN status = 'mismatch' THEN 1 ELSE 0 END), 0) \
             AS BIGINT) FROM partition_checks WHERE run_id = ?",
        )
        .bind(run_id)
        .fetch_optional(&mut conn)
        .await?;
        let (verified, mismatched) = match row {
            Some(r) => (
                codec::from_db(r.try_get::<i64, _>(0)?),
                codec::from_db(r.try_get::<i64, _>(1)?),
            ),
            None => (0, 0),
        };
        Ok(CheckTotals {
            verified,
            mismatched,
            not_verified: total.saturating_sub(verified + mismatched),
        })
    }

    /// Rows of one partition in quarantine (rows the target refused: missing from it by
    /// design, so a reconciliation of that partition cannot verify it).
    pub async fn quarantined_rows(
        &self,
        run_id: &str,
        partition_id: &str,
    ) -> Result<u64, StoreError> {
        crate::quarantine::count_quarantined(&mut self.conn().await?, run_id, partition_id).await
    }

    /// Up to `limit` partitions of run `run_id` after plan index `after` (from the start
    /// when `None`), by index: with `finished_only` the `done` ones (what a run's end
    /// re-checks; `done_with_quarantine` ones miss their refused rows by design), otherwise every one but split parents (what
    /// `backfill validate` checks). A keyset page on `(run_id, idx)`.
    pub async fn check_page(
        &self,
        run_id: &str,
        after: Option<u64>,
        limit: usize,
        finished_only: bool,
    ) -> Result<Vec<crate::PartitionRecord>, StoreError> {
        let states = if finished_only {
            "state = 'done'"
        } else {
            "state <> 'split'"
        };
        let after = after.map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX));
        let rows = stmt(format!(
            "{} WHERE run_id = ? AND idx > ? AND {states} ORDER BY idx LIMIT ?",
            crate::partitions::PARTITION_COLUMNS
        ))
        .bind(run_id)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut self.conn().await?)
        .await?;
        rows.iter()
            .map(crate::partitions::partition_from_row)
            .collect()
    }

    /// Appends one audit event `action` (`run.reconciled`, `validate`) with `detail`
    /// (totals, who asked), for a run or, with `run_id` `None`, for a spec checked without
    /// a run.
    pub async fn record_check_event(
        &self,
        run_id: Option<&str>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        audit::append(&mut tx, run_id, None, actor, action, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
