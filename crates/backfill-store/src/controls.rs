//! Live controls of a run: the commands `pause`, `resume`, `cancel` and `throttle` write here
//! from any terminal (or machine, with a PostgreSQL store), and the process executing the run
//! polls them; that process writes back a heartbeat, its running time and its live telemetry,
//! and the rate changes it makes.
//!
//! Invariants:
//! - Every command is one transaction that bumps `version` and appends its audit event, so an
//!   executing process that saw version `n` has seen every command up to `n`, and no command
//!   exists without its audit event.
//! - A command on a finished run (`succeeded`, or `cancelled` for anything but a reopen) is
//!   refused with [`StoreError::IllegalTransition`], having changed nothing.
//! - Heartbeats and rate changes are telemetry, not state changes: they are not audited.

use backfill_core::RunState;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::db::{Db, DbRow, WriteTxn, stmt};
use crate::{Store, StoreError, audit, codec};

/// A command waiting for the executing process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// Stop between batches (in-flight batches finish and checkpoint) and wait for `resume`.
    Pause,
    /// Stop between batches and end the run `cancelled`.
    Cancel,
}

impl ControlRequest {
    /// The stable name stored and shown (`pause`, `cancel`).
    pub fn as_str(self) -> &'static str {
        match self {
            ControlRequest::Pause => "pause",
            ControlRequest::Cancel => "cancel",
        }
    }

    fn from_name(name: &str) -> Option<ControlRequest> {
        match name {
            "pause" => Some(ControlRequest::Pause),
            "cancel" => Some(ControlRequest::Cancel),
            _ => None,
        }
    }
}

/// Budget granted on top of the spec's by `resume --extend-budget`, summed over every
/// extension of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BudgetExtra {
    /// Extra rows.
    pub rows: u64,
    /// Extra running time, in milliseconds.
    pub duration_ms: u64,
    /// Extra partitions.
    pub partitions: u64,
    /// Extra money, in the budget's currency.
    pub cost: f64,
}

impl BudgetExtra {
    /// True when nothing is granted.
    pub fn is_zero(&self) -> bool {
        *self == BudgetExtra::default()
    }
}

/// A change of a run's limits by `throttle`; `None` leaves a limit as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleChange {
    /// Rows per second; `Some(0)` removes the limit.
    pub rows_per_second: Option<u32>,
    /// Batches per second; `Some(0)` removes the limit.
    pub batches_per_second: Option<u32>,
    /// Partitions (and batches) in flight at once; at least 1.
    pub concurrency: Option<u32>,
}

/// The controls of one run as stored. A run no command has touched has the default: no
/// request, the spec's limits, no extension.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Controls {
    /// Bumped by every command; the executing process acts when it changes.
    pub version: u64,
    /// A pause or cancel waiting to be carried out (cleared by `resume`).
    pub requested: Option<ControlRequest>,
    /// Who asked for it.
    pub requested_by: Option<String>,
    /// Why, when they said.
    pub request_reason: Option<String>,
    /// How many times `resume` was asked; a change closes an open circuit breaker.
    pub resumes: u64,
    /// Rows per second set by `throttle` (`None`: the spec's; `Some(0)`: no limit).
    pub rows_per_second: Option<u32>,
    /// Batches per second set by `throttle` (`None`: the spec's; `Some(0)`: no limit).
    pub batches_per_second: Option<u32>,
    /// Concurrency set by `throttle` (`None`: the spec's).
    pub concurrency: Option<u32>,
    /// Budget granted on top of the spec's.
    pub budget_extra: BudgetExtra,
    /// Running time summed over every session of the run, in milliseconds.
    pub active_ms: u64,
    /// When the executing process last reported; `None` if none ever did.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// What the executing process last reported (rate and its cause, probe latency, budget
    /// use…), as it wrote it.
    pub live: Option<serde_json::Value>,
}

impl Controls {
    /// Whether a process reported within `within` of `now`: someone is executing the run.
    pub fn is_live(&self, now: DateTime<Utc>, within: std::time::Duration) -> bool {
        self.heartbeat_at
            .is_some_and(|at| (now - at).to_std().map_or(true, |age| age <= within))
    }
}

/// One change of a run's effective rate.
#[derive(Clone, Debug, PartialEq)]
pub struct RateChangeRecord {
    /// Order within the run, from 1.
    pub seq: u64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// The new rate in rows per second; `None` means no limit.
    pub rate: Option<f64>,
    /// Why: `start`, `manual`, `latency`, `replica_lag`, `errors`, `recovered`…
    pub cause: String,
    /// Whatever the engine measured (probe p90, baseline, lag…).
    pub detail: serde_json::Value,
}

const CONTROL_COLUMNS: &str = "SELECT version, requested, requested_by, request_reason, resumes, \
     rows_per_second, batches_per_second, concurrency, extra_rows, extra_duration_ms, \
     extra_partitions, extra_cost, active_ms, heartbeat_at, live FROM run_controls WHERE run_id = ?";

fn opt_u32(row: &DbRow, column: &str) -> Result<Option<u32>, StoreError> {
    Ok(row
        .try_get::<Option<i64>, _>(column)?
        .map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX)))
}

fn controls_from_row(row: &DbRow) -> Result<Controls, StoreError> {
    let requested: Option<String> = row.try_get("requested")?;
    let live: Option<String> = row.try_get("live")?;
    Ok(Controls {
        version: codec::from_db(row.try_get("version")?),
        requested: match requested {
            None => None,
            Some(name) => Some(ControlRequest::from_name(&name).ok_or_else(|| {
                StoreError::Corrupt(format!("run control request: unknown `{name}`"))
            })?),
        },
        requested_by: row.try_get("requested_by")?,
        request_reason: row.try_get("request_reason")?,
        resumes: codec::from_db(row.try_get("resumes")?),
        rows_per_second: opt_u32(row, "rows_per_second")?,
        batches_per_second: opt_u32(row, "batches_per_second")?,
        concurrency: opt_u32(row, "concurrency")?,
        budget_extra: BudgetExtra {
            rows: codec::from_db(row.try_get("extra_rows")?),
            duration_ms: codec::from_db(row.try_get("extra_duration_ms")?),
            partitions: codec::from_db(row.try_get("extra_partitions")?),
            cost: row.try_get("extra_cost")?,
        },
        active_ms: codec::from_db(row.try_get("active_ms")?),
        heartbeat_at: codec::parse_opt_time(row.try_get("heartbeat_at")?, "heartbeat_at")?,
        live: live
            .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))),
    })
}

async fn read_controls(db: &mut impl Db, run_id: &str) -> Result<Controls, StoreError> {
    match stmt(CONTROL_COLUMNS)
        .bind(run_id)
        .fetch_optional(db)
        .await?
    {
        Some(row) => controls_from_row(&row),
        None => Ok(Controls::default()),
    }
}

/// The run's state, with its row locked until `tx` ends; creates its controls row if missing.
async fn lock_run(tx: &mut WriteTxn, run_id: &str) -> Result<RunState, StoreError> {
    let lock = tx.dialect().for_update();
    let row = stmt(format!("SELECT state FROM runs WHERE id = ?{lock}"))
        .bind(run_id)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no run matches `{run_id}`")))?;
    let state: String = row.try_get(0)?;
    stmt("INSERT INTO run_controls (run_id) VALUES (?) ON CONFLICT (run_id) DO NOTHING")
        .bind(run_id)
        .execute(tx)
        .await?;
    state
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))
}

fn refuse(run_id: &str, state: RunState, what: &str) -> StoreError {
    StoreError::IllegalTransition {
        what: format!("run {run_id}"),
        from: state.to_string(),
        to: what.to_owned(),
    }
}

fn limits_json(c: &Controls) -> serde_json::Value {
    json!({
        "rows_per_second": c.rows_per_second,
        "batches_per_second": c.batches_per_second,
        "concurrency": c.concurrency,
    })
}

impl Store {
    /// The controls of run `run_id` (exact id); the default when no command touched it.
    pub async fn controls(&self, run_id: &str) -> Result<Controls, StoreError> {
        read_controls(&mut self.conn().await?, run_id).await
    }

    /// Asks the executing process to pause or cancel run `run_id`, with `run.pause_requested`
    /// or `run.cancel_requested` in the audit chain. A cancel replaces a waiting pause; a pause
    /// never replaces a waiting cancel. Refused on a `succeeded`, `failed` or `cancelled` run.
    pub async fn request_control(
        &self,
        run_id: &str,
        request: ControlRequest,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Controls, StoreError> {
        let mut tx = self.begin_write().await?;
        let state = lock_run(&mut tx, run_id).await?;
        if !state.is_unfinished() {
            return Err(refuse(
                run_id,
                state,
                &format!("{} requested", request.as_str()),
            ));
        }
        let before = read_controls(&mut tx, run_id).await?;
        let keep_cancel = before.requested == Some(ControlRequest::Cancel);
        let request = if keep_cancel {
            ControlRequest::Cancel
        } else {
            request
        };
        stmt(
            "UPDATE run_controls SET version = version + 1, requested = ?, requested_by = ?, \
             request_reason = ? WHERE run_id = ?",
        )
        .bind(request.as_str())
        .bind(actor)
        .bind(reason)
        .bind(run_id)
        .execute(&mut tx)
        .await?;
        audit::append(
            &mut tx,
            Some(run_id),
            None,
            actor,
            &format!("run.{}_requested", request.as_str()),
            json!({ "reason": reason, "run_state": state.as_str() }),
        )
        .await?;
        let after = read_controls(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Clears a waiting pause (not a cancel, unless `reopen`), closes an open circuit breaker
    /// (bumps `resumes`) and adds `extra` to the run's budget, with `run.resume_requested` in
    /// the audit chain. Refused on a `succeeded` run, and on a `cancelled` one without
    /// `reopen`.
    pub async fn request_resume(
        &self,
        run_id: &str,
        actor: &str,
        extra: BudgetExtra,
        reopen: bool,
    ) -> Result<Controls, StoreError> {
        let mut tx = self.begin_write().await?;
        let state = lock_run(&mut tx, run_id).await?;
        let before = read_controls(&mut tx, run_id).await?;
        let cancelling =
            state == RunState::Cancelled || before.requested == Some(ControlRequest::Cancel);
        if state == RunState::Succeeded || (cancelling && !reopen) {
            return Err(refuse(run_id, state, "resume requested"));
        }
        stmt(
            "UPDATE run_controls SET version = version + 1, requested = NULL, \
             requested_by = NULL, request_reason = NULL, resumes = resumes + 1, \
             extra_rows = extra_rows + ?, extra_duration_ms = extra_duration_ms + ?, \
             extra_partitions = extra_partitions + ?, extra_cost = extra_cost + ? \
             WHERE run_id = ?",
        )
        .bind(codec::to_db(extra.rows))
        .bind(codec::to_db(extra.duration_ms))
        .bind(codec::to_db(extra.partitions))
        .bind(crate::db::Arg::Float(extra.cost))
        .bind(run_id)
        .execute(&mut tx)
        .await?;
        let mut detail = json!({ "run_state": state.as_str(), "reopen": reopen });
        if !extra.is_zero() {
            detail["extend_budget"] = json!({
                "rows": extra.rows,
                "duration_ms": extra.duration_ms,
                "partitions": extra.partitions,
                "cost": extra.cost,
            });
        }
        audit::append(
            &mut tx,
            Some(run_id),
            None,
            actor,
            "run.resume_requested",
            detail,
        )
        .await?;
        let after = read_controls(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Changes the run's limits (`None` fields stay), with `run.throttled` (the limits before
    /// and after) in the audit chain. Refused on a finished run. Returns the new controls.
    pub async fn set_throttle(
        &self,
        run_id: &str,
        change: ThrottleChange,
        actor: &str,
    ) -> Result<Controls, StoreError> {
        self.set_throttle_because(run_id, change, actor, None).await
    }

    /// [`Store::set_throttle`] with the cause in the audit event (`cause`, `why`): the
    /// engine's own throttle (`burn_rate`) says why it lowered the limits.
    pub async fn set_throttle_because(
        &self,
        run_id: &str,
        change: ThrottleChange,
        actor: &str,
        cause: Option<(&str, serde_json::Value)>,
    ) -> Result<Controls, StoreError> {
        let mut tx = self.begin_write().await?;
        let state = lock_run(&mut tx, run_id).await?;
        if !state.is_unfinished() {
            return Err(refuse(run_id, state, "throttled"));
        }
        let before = read_controls(&mut tx, run_id).await?;
        let opt = |v: Option<u32>| crate::db::Arg::Int(v.map(i64::from));
        stmt(
            "UPDATE run_controls SET version = version + 1, \
             rows_per_second = COALESCE(?, rows_per_second), \
             batches_per_second = COALESCE(?, batches_per_second), \
             concurrency = COALESCE(?, concurrency) WHERE run_id = ?",
        )
        .bind(opt(change.rows_per_second))
        .bind(opt(change.batches_per_second))
        .bind(opt(change.concurrency))
        .bind(run_id)
        .execute(&mut tx)
        .await?;
        let after = read_controls(&mut tx, run_id).await?;
        let mut detail = json!({ "from": limits_json(&before), "to": limits_json(&after) });
        if let Some((cause, why)) = cause {
            detail["cause"] = json!(cause);
            detail["why"] = why;
        }
        audit::append(&mut tx, Some(run_id), None, actor, "run.throttled", detail).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The executing process's report: adds `active_ms` of running time and stores `live`
    /// (what `status` shows) with the current time. Not audited.
    pub async fn heartbeat(
        &self,
        run_id: &str,
        active_ms: u64,
        live: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        stmt("INSERT INTO run_controls (run_id) VALUES (?) ON CONFLICT (run_id) DO NOTHING")
            .bind(run_id)
            .execute(&mut tx)
            .await?;
        stmt(
            "UPDATE run_controls SET active_ms = active_ms + ?, heartbeat_at = ?, live = ? \
             WHERE run_id = ?",
        )
        .bind(codec::to_db(active_ms))
        .bind(codec::now())
        .bind(live.to_string().as_str())
        .bind(run_id)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a change of the run's effective rate (`None`: no limit) and its cause.
    pub async fn record_rate_change(
        &self,
        run_id: &str,
        rate: Option<f64>,
        cause: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let row = stmt("SELECT COALESCE(MAX(seq), 0) FROM rate_changes WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&mut tx)
            .await?;
        let seq = row.map_or(Ok(0), |r| r.try_get::<i64, _>(0))? + 1;
        stmt(
            "INSERT INTO rate_changes (run_id, seq, at, rate, cause, detail) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(seq)
        .bind(codec::now())
        .bind(match rate {
            Some(r) => crate::db::Arg::Float(r),
            None => crate::db::Arg::Int(None),
        })
        .bind(cause)
        .bind(detail.to_string().as_str())
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last `limit` rate changes of a run, oldest first.
    pub async fn rate_changes(
        &self,
        run_id: &str,
        limit: u32,
    ) -> Result<Vec<RateChangeRecord>, StoreError> {
        let rows = stmt(
            "SELECT seq, at, rate, cause, detail FROM rate_changes WHERE run_id = ? \
             ORDER BY seq DESC LIMIT ?",
        )
        .bind(run_id)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn().await?)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let detail: String = r.try_get(4)?;
                let rate: Option<f64> = r.try_get(2)?;
                Ok(RateChangeRecord {
                    seq: codec::from_db(r.try_get(0)?),
                    at: r.try_get(1)?,
                    rate: rate.filter(|r| r.is_finite()),
                    cause: r.try_get(3)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.reverse();
        Ok(out)
    }
}
