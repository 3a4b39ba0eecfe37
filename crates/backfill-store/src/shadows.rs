//! Shadow tables of `mode = "shadow"` runs (issue 11): which table a run writes into, the live
//! table's fingerprint when the shadow was seeded, and where the swap stands.
//!
//! Owns the `shadows` table only; creating, seeding and swapping tables is the engine's and
//! the connectors' work. Invariants: one row per run, inserted once (a resumed run finds it
//! and never re-seeds); every change of `state` is one transaction with its audit event
//! (`shadow.seeded`, `run.promoted`, `run.unpromoted`, `shadow.cleaned`), and moves only
//! along `seeded -> promoted -> unpromoted`, `promoted | unpromoted | seeded -> cleaned`: a
//! change from any other state is refused ([`StoreError::IllegalTransition`]), so two
//! `promote` of one run cannot both swap.

use serde_json::json;

use crate::db::{DbRow, stmt};
use crate::{Store, StoreError, audit, codec};

/// Where a shadow write stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowState {
    /// The shadow exists and receives the run's writes; the live table is untouched.
    Seeded,
    /// The shadow is the live table; the old one is kept as `old_table`.
    Promoted,
    /// Swapped back after a promote: the old table is live again, the shadow kept.
    Unpromoted,
    /// The table that is not live (old or shadow) was dropped.
    Cleaned,
}

impl ShadowState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowState::Seeded => "seeded",
            ShadowState::Promoted => "promoted",
            ShadowState::Unpromoted => "unpromoted",
            ShadowState::Cleaned => "cleaned",
        }
    }

    fn parse(text: &str) -> Result<ShadowState, StoreError> {
        Ok(match text {
            "seeded" => ShadowState::Seeded,
            "promoted" => ShadowState::Promoted,
            "unpromoted" => ShadowState::Unpromoted,
            "cleaned" => ShadowState::Cleaned,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown shadow state `{other}`"
                )));
            }
        })
    }
}

impl std::fmt::Display for ShadowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's shadow table as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowRecord {
    /// The run writing into it.
    pub run_id: String,
    /// The live table, as the spec names it.
    pub live_table: String,
    /// The shadow table (`<table>__bf_<short run id>`).
    pub shadow_table: String,
    /// The name the live table takes when the shadow is promoted.
    pub old_table: String,
    /// The live table's fingerprint when the shadow was seeded (JSON: what was scanned and
    /// the result); `None` when it could not be taken (`promote` then needs `--force`).
    pub fingerprint: Option<serde_json::Value>,
    /// Where the swap stands.
    pub state: ShadowState,
    /// Live rows copied into the shadow when it was seeded.
    pub seeded_rows: u64,
    /// When the shadow was seeded (RFC 3339).
    pub seeded_at: String,
    /// When `state` last changed (RFC 3339).
    pub changed_at: String,
}

/// A shadow to record once it is created and seeded.
#[derive(Clone, Debug)]
pub struct NewShadow<'a> {
    /// The live table.
    pub live_table: &'a str,
    /// The shadow table.
    pub shadow_table: &'a str,
    /// The name the live table takes at promote.
    pub old_table: &'a str,
    /// The live table's fingerprint at seeding, if taken.
    pub fingerprint: Option<&'a serde_json::Value>,
    /// Live rows copied into the shadow.
    pub seeded_rows: u64,
}

const COLUMNS: &str = "SELECT run_id, live_table, shadow_table, old_table, fingerprint, state, \
     seeded_rows, seeded_at, changed_at FROM shadows";

fn from_row(row: &DbRow) -> Result<ShadowRecord, StoreError> {
    let fingerprint: Option<String> = row.try_get("fingerprint")?;
    let fingerprint = fingerprint
        .map(|f| serde_json::from_str(&f))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("shadow fingerprint: {e}")))?;
    let state: String = row.try_get("state")?;
    Ok(ShadowRecord {
        run_id: row.try_get("run_id")?,
        live_table: row.try_get("live_table")?,
        shadow_table: row.try_get("shadow_table")?,
        old_table: row.try_get("old_table")?,
        fingerprint,
        state: ShadowState::parse(&state)?,
        seeded_rows: codec::from_db(row.try_get("seeded_rows")?),
        seeded_at: row.try_get("seeded_at")?,
        changed_at: row.try_get("changed_at")?,
    })
}

impl Store {
    /// The shadow of run `run_id`, if it has one.
    pub async fn shadow(&self, run_id: &str) -> Result<Option<ShadowRecord>, StoreError> {
        let row = stmt(format!("{COLUMNS} WHERE run_id = ?"))
            .bind(run_id)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Records run `run_id`'s shadow as seeded, with a `shadow.seeded` audit event. Refused
    /// ([`StoreError::IllegalTransition`]) when the run already has one.
    pub async fn record_shadow(
        &self,
        run_id: &str,
        new: NewShadow<'_>,
        actor: &str,
    ) -> Result<ShadowRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let existing = stmt("SELECT state FROM shadows WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&mut tx)
            .await?;
        if let Some(row) = existing {
            return Err(StoreError::IllegalTransition {
                what: format!("shadow of run {run_id}"),
                from: row.try_get::<String, _>(0)?,
                to: "seeded".to_owned(),
            });
        }
        let now = codec::now();
        let fingerprint = new.fingerprint.map(ToString::to_string);
        stmt(
            "INSERT INTO shadows (run_id, live_table, shadow_table, old_table, fingerprint, \
             state, seeded_rows, seeded_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(new.live_table)
        .bind(new.shadow_table)
        .bind(new.old_table)
        .bind(fingerprint.as_deref())
        .bind(ShadowState::Seeded.as_str())
        .bind(codec::to_db(new.seeded_rows))
        .bind(&now)
        .bind(&now)
        .execute(&mut tx)
        .await?;
        let detail = json!({
            "live_table": new.live_table,
            "shadow_table": new.shadow_table,
            "seeded_rows": new.seeded_rows,
            "fingerprint": new.fingerprint,
        });
        audit::append(&mut tx, Some(run_id), None, actor, "shadow.seeded", detail).await?;
        tx.commit().await?;
        self.shadow(run_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("shadow row vanished after insert".to_owned()))
    }

    /// Moves run `run_id`'s shadow from one of `from` to `to`, with audit event `action` and
    /// `detail`, in one transaction. Refused ([`StoreError::IllegalTransition`]) when the
    /// shadow is in no state of `from`, and [`StoreError::NotFound`] when the run has none.
    pub async fn shadow_transition(
        &self,
        run_id: &str,
        from: &[ShadowState],
        to: ShadowState,
        action: &str,
        detail: serde_json::Value,
        actor: &str,
    ) -> Result<ShadowRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = stmt(format!("{COLUMNS} WHERE run_id = ?"))
            .bind(run_id)
            .fetch_optional(&mut tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run_id} has no shadow table")))?;
        let current = from_row(&row)?;
        if !from.contains(&current.state) {
            return Err(StoreError::IllegalTransition {
                what: format!("shadow of run {run_id}"),
                from: current.state.to_string(),
                to: to.to_string(),
            });
        }
        stmt("UPDATE shadows SET state = ?, changed_at = ? WHERE run_id = ?")
            .bind(to.as_str())
            .bind(codec::now().as_str())
            .bind(run_id)
            .execute(&mut tx)
            .await?;
        audit::append(&mut tx, Some(run_id), None, actor, action, detail).await?;
        tx.commit().await?;
        Ok(ShadowRecord {
            state: to,
            ..current
        })
    }
}
