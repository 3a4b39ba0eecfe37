//! `run --only-gaps` and `--only-diff` in the store: partitions skipped as already correct,
//! partitions narrowed to the ranges that differ, what each would change, and the audit events
//! of the read-only `diff` and `gaps` commands.
//!
//! A skipped partition is `done` with `gap = 'equal'` and no attempt (a differing one is
//! marked with how it differs: `missing`, `partial` or `drifted`): it counts as finished
//! (the run succeeds without it), and `status` and the run summary show it apart. Skipping is
//! one transaction per run with ONE `run.skipped_correct` audit event carrying the count, the
//! plan-index ranges (`"0-4"`, `"6-364"`, at most [`MAX_RANGES`]) and a blake3 hash of the
//! skipped ids in plan order, so a million skipped partitions cost one event, and the event
//! still pins exactly which were skipped (re-derive the list from the store, hash it, compare).
//!
//! A narrowed partition (`--only-diff`) becomes `split` while still `pending`, and its
//! children (`<id>.<n>`, the differing slices of its window found by the diff's bisection)
//! are inserted `pending` with `parent_id`, like the children of a split; one
//! `partition.narrowed` event per narrowed partition names them.
//!
//! Only `pending` partitions without a checkpoint are skipped or narrowed: a partition some
//! process already started is left to run.

use crate::db::{Arg, stmt};
use crate::{Store, StoreError, audit, codec};
use backfill_core::{Partition, RowCounts};
use serde_json::json;

/// Plan-index ranges listed in a `run.skipped_correct` event at most; the hash covers all.
pub(crate) const MAX_RANGES: usize = 200;

/// What a run would do with one partition's rows, from the diff before it ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WouldChange {
    /// Source rows whose key is not in the target.
    pub insert: u64,
    /// Rows whose key is on both sides with different values.
    pub update: u64,
    /// Source rows already identical in the target.
    pub unchanged: u64,
    /// Target rows of the window whose key the source does not return.
    pub extra: u64,
}

/// One partition found to differ, with what is known of it.
#[derive(Clone, Debug)]
pub struct Differing {
    /// The partition of the run.
    pub partition_id: String,
    /// How it differs: `missing`, `partial` or `drifted` (as `backfill gaps` says).
    pub gap: String,
    /// Its diff counts; `None` when only fingerprints were compared (`--only-gaps`).
    pub would: Option<WouldChange>,
    /// With `--only-diff`: the narrower windows that differ, written instead of the whole
    /// partition; empty = the whole partition runs.
    pub narrow_to: Vec<backfill_core::Window>,
}

/// The findings of one `--only-gaps` pass over a run, recorded by [`Store::record_gaps`].
#[derive(Clone, Debug)]
pub struct GapFindings<'a> {
    /// Partitions whose target matches the source, in plan order: skipped as correct.
    pub equal: &'a [(String, u64)],
    /// Partitions that differ.
    pub differing: &'a [Differing],
    /// `only_gaps` or `only_diff`, and whatever else the event should say.
    pub detail: serde_json::Value,
}

/// What [`Store::record_gaps`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GapsRecorded {
    /// Partitions now `done` as skipped.
    pub skipped: u64,
    /// Partitions narrowed to children.
    pub narrowed: u64,
    /// Children created.
    pub children: u64,
}

/// A partition with a known would-change (diffed before the run), for summaries.
#[derive(Clone, Debug)]
pub struct GapRecord {
    /// The partition.
    pub partition_id: String,
    /// How it differed: `missing`, `partial` or `drifted`.
    pub gap: String,
    /// Its window.
    pub window: backfill_core::Window,
    /// Its state now (`split` when narrowed: its children carry the writes).
    pub state: backfill_core::PartitionState,
    /// What the diff said the run would change (`None`: only fingerprints compared).
    pub would: Option<WouldChange>,
    /// What the run's writes did, summed with those of its children.
    pub changed: RowCounts,
}

/// Marks the partitions of `found` (id, source rows) skipped: one `UPDATE` for the chunk, so
/// a million skips cost two thousand statements, not a million.
async fn skip_chunk(
    tx: &mut crate::db::WriteTxn,
    run_id: &str,
    now: &str,
    found: &[(String, u64)],
) -> Result<(), StoreError> {
    if found.is_empty() {
        return Ok(());
    }
    let cases = " WHEN ? THEN ?".repeat(found.len());
    let marks = vec!["?"; found.len()].join(", ");
    let update = stmt(format!(
        "UPDATE partitions SET state = 'done', gap = 'equal', finished_at = ?, \
         would_insert = 0, would_update = 0, would_extra = 0, \
         would_unchanged = CASE partition_id{cases} ELSE 0 END \
         WHERE run_id = ? AND partition_id IN ({marks})"
    ))
    .bind(now);
    let update = found.iter().fold(update, |q, (id, n)| {
        q.bind(id.as_str()).bind(codec::to_db(*n))
    });
    let update = found
        .iter()
        .fold(update.bind(run_id), |q, (id, _)| q.bind(id.as_str()));
    update.execute(tx).await?;
    Ok(())
}

/// `"3"` or `"3-9"` per run of consecutive indexes.
fn index_ranges(indexes: &[u64]) -> Vec<String> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &i in indexes {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => out.push((i, i)),
        }
    }
    out.into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect()
}

impl Store {
    /// Records an `--only-gaps` pass over run `run_id` in ONE transaction: every partition of
    /// `findings.equal` still `pending` without a checkpoint becomes `done` with `gap = 'equal'`
    /// (and `would_unchanged` = its rows); every differing one gets its would-change counts
    /// and, when it has narrower windows, is narrowed (see the module doc). Appends one
    /// `run.skipped_correct` event (count, index ranges, hash of the ids) and one
    /// `partition.narrowed` event per narrowed partition.
    pub async fn record_gaps(
        &self,
        run_id: &str,
        actor: &str,
        findings: GapFindings<'_>,
    ) -> Result<GapsRecorded, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = codec::now();
        let mut recorded = GapsRecorded::default();
        let mut hasher = blake3::Hasher::new();
        let mut indexes = Vec::new();
        for chunk in findings.equal.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let ids = chunk.iter().fold(
                stmt(format!(
                    "SELECT partition_id, idx FROM partitions WHERE run_id = ? \
                     AND state = 'pending' AND checkpoint IS NULL \
                     AND partition_id IN ({marks}) ORDER BY idx"
                ))
                .bind(run_id),
                |q, (id, _)| q.bind(id.as_str()),
            );
            let rows = ids.fetch_all(&mut tx).await?;
            let mut found: Vec<(String, u64)> = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get(0)?;
                let n = chunk.iter().find(|(i, _)| *i == id).map_or(0, |(_, n)| *n);
                hasher.update(id.as_bytes());
                hasher.update(b"\n");
                indexes.push(codec::from_db(row.try_get::<i64, _>(1)?));
                found.push((id, n));
            }
            skip_chunk(&mut tx, run_id, &now, &found).await?;
        }
        recorded.skipped = indexes.len() as u64;
        for d in findings.differing {
            let children = self.record_differing(&mut tx, run_id, actor, d).await?;
            if children > 0 {
                recorded.narrowed += 1;
                recorded.children += children;
            }
        }
        let ranges = index_ranges(&indexes);
        let mut detail = json!({
            "skipped": recorded.skipped,
            "differing": findings.differing.len(),
            "narrowed": recorded.narrowed,
            "skipped_index_ranges": ranges.iter().take(MAX_RANGES).collect::<Vec<_>>(),
            "ranges_truncated": ranges.len() > MAX_RANGES,
            "skipped_ids_blake3": hasher.finalize().to_hex().to_string(),
        });
        if let (Some(d), serde_json::Value::Object(extra)) =
            (detail.as_object_mut(), findings.detail)
        {
            d.extend(extra);
        }
        audit::append(
            &mut tx,
            Some(run_id),
            None,
            actor,
            "run.skipped_correct",
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Stores a differing partition's counts and narrows it when asked; returns the number of
    /// children created.
    async fn record_differing(
        &self,
        tx: &mut crate::db::WriteTxn,
        run_id: &str,
        actor: &str,
        d: &Differing,
    ) -> Result<u64, StoreError> {
        let w = d.would;
        stmt(
            "UPDATE partitions SET gap = ?, would_insert = ?, would_update = ?, \
             would_unchanged = ?, would_extra = ? WHERE run_id = ? AND partition_id = ?",
        )
        .bind(&d.gap)
        .bind(Arg::Int(w.map(|w| codec::to_db(w.insert))))
        .bind(Arg::Int(w.map(|w| codec::to_db(w.update))))
        .bind(Arg::Int(w.map(|w| codec::to_db(w.unchanged))))
        .bind(Arg::Int(w.map(|w| codec::to_db(w.extra))))
        .bind(run_id)
        .bind(&d.partition_id)
        .execute(&mut *tx)
        .await?;
        if d.narrow_to.is_empty() {
            return Ok(0);
        }
        let changed = stmt(
            "UPDATE partitions SET state = 'split', finished_at = ? WHERE run_id = ? \
             AND partition_id = ? AND state = 'pending' AND checkpoint IS NULL",
        )
        .bind(codec::now())
        .bind(run_id)
        .bind(&d.partition_id)
        .execute(&mut *tx)
        .await?;
        if changed == 0 {
            return Ok(0);
        }
        let row = stmt("SELECT COALESCE(MAX(idx), -1) FROM partitions WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
        let first = row.map_or(Ok(-1), |r| r.try_get::<i64, _>(0))? + 1;
        let parent = Partition {
            id: d.partition_id.clone(),
            index: 0,
            window: d.narrow_to[0],
        };
        let children = backfill_core::split::children(&parent, &d.narrow_to, 0);
        for (i, child) in children.iter().enumerate() {
            let (kind, start, end) = codec::window_columns(&child.window);
            stmt(
                "INSERT INTO partitions (run_id, partition_id, idx, window_kind, window_start, \
                 window_end, state, parent_id) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
            )
            .bind(run_id)
            .bind(&child.id)
            .bind(first + i as i64)
            .bind(kind)
            .bind(&start)
            .bind(&end)
            .bind(&d.partition_id)
            .execute(&mut *tx)
            .await?;
        }
        audit::append(
            tx,
            Some(run_id),
            Some(&d.partition_id),
            actor,
            "partition.narrowed",
            json!({
                "reason": "only_diff",
                "children": children.iter().map(|c| json!({
                    "partition_id": c.id,
                    "window": c.window.to_string(),
                })).collect::<Vec<_>>(),
            }),
        )
        .await?;
        Ok(children.len() as u64)
    }

    /// How many partitions of run `run_id` were skipped as already correct.
    pub async fn skipped_count(&self, run_id: &str) -> Result<u64, StoreError> {
        let row = stmt("SELECT COUNT(*) FROM partitions WHERE run_id = ? AND gap = 'equal'")
            .bind(run_id)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(codec::from_db(
            row.map_or(Ok(0), |r| r.try_get::<i64, _>(0))?,
        ))
    }

    /// The partitions of run `run_id` that a diff before the run found differing (not
    /// skipped), in plan order, at most `limit`, each with what it would change and what the
    /// run changed (its children's writes included).
    pub async fn gap_partitions(
        &self,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<GapRecord>, StoreError> {
        let sum = |c: &str| {
            format!(
                "CAST(COALESCE((SELECT SUM(k.{c}) FROM partitions k WHERE k.run_id = p.run_id \
                 AND k.parent_id = p.partition_id), 0) + p.{c} AS BIGINT)"
            )
        };
        let rows = stmt(format!(
            "SELECT p.partition_id, p.gap, p.window_kind, p.window_start, p.window_end, p.state, \
             p.would_insert, p.would_update, p.would_unchanged, p.would_extra, {}, {}, {}, {}, \
             {}, {} FROM partitions p WHERE p.run_id = ? AND p.gap IS NOT NULL AND p.gap <> 'equal' ORDER BY p.idx LIMIT ?",
            sum("rows_read"),
            sum("inserted"),
            sum("updated"),
            sum("unchanged"),
            sum("deleted"),
            sum("affected"),
        ))
        .bind(run_id)
        .bind(codec::to_db(limit as u64))
        .fetch_all(&mut self.conn().await?)
        .await?;
        rows.iter().map(gap_from_row).collect()
    }
}

fn gap_from_row(row: &crate::db::DbRow) -> Result<GapRecord, StoreError> {
    let partition_id: String = row.try_get(0)?;
    let state: String = row.try_get(5)?;
    let n = |i: usize| -> Result<Option<u64>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(i)?.map(codec::from_db))
    };
    let would = match (n(6)?, n(7)?, n(8)?, n(9)?) {
        (Some(insert), Some(update), Some(unchanged), Some(extra)) => Some(WouldChange {
            insert,
            update,
            unchanged,
            extra,
        }),
        _ => None,
    };
    let c = |i: usize| row.try_get::<i64, _>(i + 1).map(codec::from_db);
    Ok(GapRecord {
        gap: row.try_get(1)?,
        window: codec::parse_window(
            &row.try_get::<String, _>(2)?,
            &row.try_get::<String, _>(3)?,
            &row.try_get::<String, _>(4)?,
        )?,
        state: state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("partition {partition_id}: {e}")))?,
        would,
        changed: RowCounts {
            read: c(9)?,
            inserted: c(10)?,
            updated: c(11)?,
            unchanged: c(12)?,
            deleted: c(13)?,
            affected: c(14)?,
        },
        partition_id,
    })
}

impl Store {
    /// Appends an audit event of an action outside any run (`diff`, `gaps`), in its own
    /// transaction: the chain is global, so `run_id` is NULL.
    pub async fn record_spec_action(
        &self,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        audit::append(&mut tx, None, None, actor, action, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::index_ranges;

    #[test]
    fn consecutive_indexes_make_one_range() {
        assert_eq!(index_ranges(&[0, 1, 2, 4, 6, 7]), ["0-2", "4", "6-7"]);
        assert!(index_ranges(&[]).is_empty());
    }
}
