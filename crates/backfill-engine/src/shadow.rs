//! Shadow write and atomic promote (issue 11, `mode = "shadow"`).
//!
//! A shadow run never writes the live table. When a session of the run starts, [`prepare`]
//! makes `<table>__bf_<short run id>` like the live table (columns, keys, indexes), takes the
//! live table's fingerprint, copies the live rows outside the scope into the shadow when
//! `seed_outside_scope` asks, and records the shadow in the state store (`shadow.seeded`);
//! the session then writes every partition into the shadow (the sink is opened on its name).
//! [`promote`] swaps the shadow in atomically (the live table is kept as
//! `<table>__bf_old_<id>`), [`swap_back`] undoes a promote, and [`cleanup`] drops whichever
//! table is no longer live.
//!
//! What the fingerprint covers: the whole live table when `seed_outside_scope` is set
//! (every row the shadow took from it must be unchanged at promote), else the scope's range
//! of the window column when there is one, else the whole table. A change found there at
//! promote refuses it unless `--force` (audited with `forced: true`).
//!
//! Invariants:
//! - Until promote the live table is never written; everything the run writes goes to the
//!   shadow.
//! - Seeding happens once per run: the shadow is recorded only after it is created and seeded,
//!   and a session that finds no record drops any leftover shadow (a crash between creating
//!   and recording) and starts again, before any partition is written to it.
//! - The swap is one atomic step of the database (see `backfill_connectors::shadow::exchange`)
//!   followed by the store's state change and audit event; the store's states forbid a
//!   second promote of the same shadow.

use std::time::Duration;

use backfill_connectors::ConnectorError;
use backfill_connectors::fingerprint::{Column, Db, Range, Relation, Scan, window_bounds};
use backfill_connectors::shadow as ddl;
use backfill_core::plan::{Scope, Window};
use backfill_core::{RunState, Spec};
use backfill_store::{NewShadow, ShadowRecord, ShadowState, Store, StoreError};
use serde_json::json;

/// How long a swap waits for the live table's lock before giving up (PostgreSQL), so a long
/// transaction on it fails the promote instead of queueing every reader behind the swap.
pub const SWAP_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why a shadow step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The target database failed.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// The run has no shadow table (not a shadow run, or no session started yet).
    #[error("run {run_id} has no shadow table")]
    NotShadow {
        /// The run.
        run_id: String,
    },
    /// `promote` needs a run that succeeded.
    #[error("run {run_id} is {state}; only a run that succeeded can be promoted")]
    NotSucceeded {
        /// The run.
        run_id: String,
        /// Its state.
        state: String,
    },
    /// Partitions failed reconciliation (their target did not match their source).
    #[error("run {run_id} has {mismatched} partition(s) whose reconciliation failed")]
    NotReconciled {
        /// The run.
        run_id: String,
        /// Partitions that mismatched.
        mismatched: u64,
    },
    /// The live table changed since the shadow was seeded: promoting would discard those
    /// writes.
    #[error(
        "the live table {table} changed since the shadow was seeded ({what}: {then} then, {now} now)"
    )]
    LiveChanged {
        /// The live table.
        table: String,
        /// What was fingerprinted.
        what: String,
        /// The fingerprint at seeding.
        then: String,
        /// The fingerprint now.
        now: String,
    },
    /// The live table's fingerprint was not taken at seeding, so a change cannot be ruled
    /// out.
    #[error("the live table {table} was not fingerprinted when the shadow was seeded: {reason}")]
    NoFingerprint {
        /// The live table.
        table: String,
        /// Why not.
        reason: String,
    },
    /// The shadow is in a state the step does not apply to.
    #[error("the shadow of run {run_id} is {state}; {hint}")]
    WrongState {
        /// The run.
        run_id: String,
        /// The shadow's state.
        state: ShadowState,
        /// What applies instead.
        hint: String,
    },
    /// A table the step needs is missing, or one it would create exists.
    #[error("{message}")]
    Tables {
        /// Which table and what is wrong.
        message: String,
    },
    /// The shadow's name would not be a valid identifier.
    #[error("target.table `{table}` is too long for a shadow write: `{name}` is not a valid name")]
    Name {
        /// The live table.
        table: String,
        /// The name it would need.
        name: String,
    },
}

impl ShadowError {
    /// True when the user's input or the data's state refuses the step (exit 2), rather than
    /// a failure of the databases.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ShadowError::Store(_) | ShadowError::Connector(_))
    }
}

/// The shadow and old names of `table` for run `run_id`: `<table>__bf_<id>` and
/// `<table>__bf_old_<id>`, `<id>` the run id's last 8 hex digits (its random part: run ids
/// made in the same minute share their first ones).
pub fn names(table: &str, run_id: &str) -> Result<(String, String), ShadowError> {
    let hex: String = run_id.chars().filter(char::is_ascii_hexdigit).collect();
    let short = &hex[hex.len().saturating_sub(8)..];
    let shadow = format!("{table}__bf_{short}");
    let old = format!("{table}__bf_old_{short}");
    for name in [&shadow, &old] {
        if !backfill_core::spec::is_identifier(name) {
            return Err(ShadowError::Name {
                table: table.to_owned(),
                name: name.clone(),
            });
        }
    }
    Ok((shadow, old))
}

/// Readies run `run_id`'s shadow for a session and returns the spec the session writes with
/// (`target.table` is the shadow); `None` when `spec` is not a shadow write. The first session
/// creates, fingerprints, seeds and records the shadow; later ones find the record.
pub(crate) async fn prepare(
    store: &Store,
    spec: &Spec,
    run_id: &str,
    actor: &str,
) -> Result<Option<Spec>, ShadowError> {
    let (Some(shadow_spec), Some(live)) = (&spec.target.shadow, &spec.target.table) else {
        return Ok(None);
    };
    let record = match store.shadow(run_id).await? {
        Some(r) => r,
        None => {
            let db = Db::open(&spec.target.url, 1, true).await?;
            let result = seed(&db, store, spec, shadow_spec, live, run_id, actor).await;
            db.close().await;
            result?
        }
    };
    if record.state != ShadowState::Seeded {
        return Err(ShadowError::WrongState {
            run_id: run_id.to_owned(),
            state: record.state,
            hint: "its shadow table is no longer written; start a new run with `backfill run \
                   --new SPEC`"
                .to_owned(),
        });
    }
    let mut shadowed = spec.clone();
    shadowed.target.table = Some(record.shadow_table);
    Ok(Some(shadowed))
}

/// The spec whose `target.table` holds run `run_id`'s rows now, for reading them
/// (`backfill validate`): the shadow table until it is promoted (or after a swap back), the
/// live name once promoted; `None` when the run wrote no shadow (use `spec` as it is).
pub(crate) async fn reading_spec(
    store: &Store,
    spec: &Spec,
    run_id: &str,
) -> Result<Option<Spec>, StoreError> {
    let Some(record) = store.shadow(run_id).await? else {
        return Ok(None);
    };
    let table = match record.state {
        ShadowState::Seeded | ShadowState::Unpromoted => record.shadow_table,
        ShadowState::Promoted | ShadowState::Cleaned => record.live_table,
    };
    let mut reading = spec.clone();
    reading.target.table = Some(table);
    Ok(Some(reading))
}

/// Creates, fingerprints, seeds and records the shadow of a run that has none yet.
async fn seed(
    db: &Db,
    store: &Store,
    spec: &Spec,
    shadow_spec: &backfill_core::spec::ShadowSpec,
    live: &str,
    run_id: &str,
    actor: &str,
) -> Result<ShadowRecord, ShadowError> {
    let (shadow, old) = names(live, run_id)?;
    if !ddl::table_exists(db, live).await? {
        return Err(ShadowError::Tables {
            message: format!("target.table {live} does not exist; a shadow is made like it"),
        });
    }
    // A leftover of a session that crashed before recording it: nothing was written to it.
    ddl::drop_table(db, &shadow).await?;
    let target = FingerprintTarget::of(spec, shadow_spec);
    let fingerprint = match target.take(db, live).await {
        Ok(f) => f,
        Err(e) => json!({ "error": e.to_string() }),
    };
    ddl::create_like(db, live, &shadow).await?;
    let mut seeded_rows = 0;
    if shadow_spec.seed_outside_scope
        && let (Some(column), Some(window)) = (&shadow_spec.window_column, scope_span(&spec.scope))
    {
        let [start, end] = window_bounds(&window, &spec.target.time_format);
        seeded_rows = ddl::seed_outside(db, live, &shadow, column, &start, &end).await?;
    }
    let record = store
        .record_shadow(
            run_id,
            NewShadow {
                live_table: live,
                shadow_table: &shadow,
                old_table: &old,
                fingerprint: Some(&fingerprint),
                seeded_rows,
            },
            actor,
        )
        .await?;
    tracing::info!(
        run_id,
        shadow,
        seeded_rows,
        "shadow table created and seeded"
    );
    Ok(record)
}

/// The whole scope as one window (a list scope: from its first start to its last end).
fn scope_span(scope: &Scope) -> Option<Window> {
    match scope {
        Scope::Time { start, end, .. } => Some(Window::Time {
            start: *start,
            end: *end,
        }),
        Scope::Key { from, to, .. } => Some(Window::Key {
            start: *from,
            end: *to,
        }),
        Scope::List(windows) => {
            let first = windows.iter().min_by_key(|w| w.canonical())?;
            let last = windows.iter().max_by_key(|w| w.canonical())?;
            match (first, last) {
                (Window::Time { start, .. }, Window::Time { end, .. }) => Some(Window::Time {
                    start: *start,
                    end: *end,
                }),
                (Window::Key { start, .. }, Window::Key { end, .. }) => Some(Window::Key {
                    start: *start,
                    end: *end,
                }),
                _ => None,
            }
        }
    }
}

/// What of the live table is fingerprinted: a range of the window column, or everything.
struct FingerprintTarget {
    range: Option<(String, Window)>,
    format: backfill_core::timefmt::TimeFormat,
}

impl FingerprintTarget {
    /// The whole table when seeding outside the scope or without a window column, else the
    /// scope's range.
    fn of(spec: &Spec, shadow: &backfill_core::spec::ShadowSpec) -> FingerprintTarget {
        let range = match (&shadow.window_column, shadow.seed_outside_scope) {
            (Some(column), false) => scope_span(&spec.scope).map(|w| (column.clone(), w)),
            _ => None,
        };
        FingerprintTarget {
            range,
            format: spec.target.time_format.clone(),
        }
    }

    /// The same target as recorded in `recorded` (a fingerprint JSON of [`Self::take`]).
    fn recorded(recorded: &serde_json::Value, spec: &Spec) -> FingerprintTarget {
        let range = match (recorded["column"].as_str(), scope_span(&spec.scope)) {
            (Some(column), Some(window)) => Some((column.to_owned(), window)),
            _ => None,
        };
        FingerprintTarget {
            range,
            format: spec.target.time_format.clone(),
        }
    }

    /// Takes the fingerprint of `table`, as JSON: what was scanned, the columns and the
    /// result.
    async fn take(&self, db: &Db, table: &str) -> Result<serde_json::Value, ShadowError> {
        let columns: Vec<Column> = ddl::fingerprint_columns(db, table).await?;
        if columns.is_empty() {
            return Err(ShadowError::Tables {
                message: format!("table {table} has no column with a fingerprint"),
            });
        }
        let bounds = self
            .range
            .as_ref()
            .map(|(c, w)| (c, window_bounds(w, &self.format)));
        let scan = Scan {
            relation: Relation::Table(table),
            columns: &columns,
            range: bounds
                .as_ref()
                .map(|(column, [start, end])| Range { column, start, end }),
        };
        let f = ddl::fingerprint(db, &scan).await?;
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        Ok(json!({
            "column": self.range.as_ref().map(|(c, _)| c),
            "range": self.range.as_ref().map(|(_, w)| w.canonical()),
            "columns": names,
            "rows": f.rows,
            "sum": f.sum.to_string(),
            "check": f.check.to_string(),
        }))
    }
}

/// What a promote did.
#[derive(Clone, Debug)]
pub struct Promoted {
    /// The shadow as recorded afterwards (state `promoted`).
    pub record: ShadowRecord,
    /// How long the swap held the tables' lock.
    pub lock: Duration,
    /// True when `--force` overrode a refusal (a changed or unknown live fingerprint).
    pub forced: bool,
    /// Why it was forced, when it was.
    pub overridden: Option<String>,
}

/// Promotes run `run_id`'s shadow: refuses unless the run succeeded, its partitions
/// reconciled, and the live table's fingerprint is what it was at seeding (unless `force`,
/// audited); then swaps the shadow in and records `run.promoted`.
pub async fn promote(
    store: &Store,
    spec: &Spec,
    run_id: &str,
    force: bool,
    actor: &str,
) -> Result<Promoted, ShadowError> {
    let run = store.get_run(run_id).await?;
    if run.state != RunState::Succeeded {
        return Err(ShadowError::NotSucceeded {
            run_id: run.id,
            state: run.state.to_string(),
        });
    }
    check_reconciled(store, &run.id).await?;
    let record = shadow_in(
        store,
        &run.id,
        &[ShadowState::Seeded, ShadowState::Unpromoted],
    )
    .await?;
    let db = Db::open(&spec.target.url, 1, true).await?;
    let result = promote_on(&db, store, spec, &record, force, actor).await;
    db.close().await;
    result
}

/// [`promote`] once the run and its shadow are checked, on the target database `db`.
async fn promote_on(
    db: &Db,
    store: &Store,
    spec: &Spec,
    record: &ShadowRecord,
    force: bool,
    actor: &str,
) -> Result<Promoted, ShadowError> {
    require_tables(
        db,
        &[&record.live_table, &record.shadow_table],
        &record.old_table,
    )
    .await?;
    let refusal = match live_unchanged(db, spec, record).await {
        Ok(()) => None,
        Err(e) if e.is_refusal() => Some(e),
        Err(e) => return Err(e),
    };
    let overridden = match (refusal, force) {
        (Some(e), false) => return Err(e),
        (Some(e), true) => Some(e.to_string()),
        (None, _) => None,
    };
    let lock = ddl::exchange(
        db,
        &record.live_table,
        &record.shadow_table,
        &record.old_table,
        SWAP_LOCK_WAIT,
    )
    .await?;
    let forced = overridden.is_some();
    let detail = json!({
        "live_table": record.live_table,
        "shadow_table": record.shadow_table,
        "old_table": record.old_table,
        "forced": forced,
        "overridden": overridden,
        "lock_ms": lock.as_secs_f64() * 1000.0,
    });
    let record = store
        .shadow_transition(
            &record.run_id,
            &[ShadowState::Seeded, ShadowState::Unpromoted],
            ShadowState::Promoted,
            "run.promoted",
            detail,
            actor,
        )
        .await?;
    Ok(Promoted {
        record,
        lock,
        forced,
        overridden,
    })
}

/// A run with a partition whose last reconciliation mismatched (`[validate]` after each
/// partition, at the end, or `backfill validate`) is not promoted: the shadow is not what the
/// source says. `--force` does not override this; fix the data and `backfill validate` again.
async fn check_reconciled(store: &Store, run_id: &str) -> Result<(), ShadowError> {
    let totals = store.check_totals(run_id).await?;
    if totals.mismatched > 0 {
        return Err(ShadowError::NotReconciled {
            run_id: run_id.to_owned(),
            mismatched: totals.mismatched,
        });
    }
    Ok(())
}

/// The run's shadow record, refused unless it is in one of `states`.
async fn shadow_in(
    store: &Store,
    run_id: &str,
    states: &[ShadowState],
) -> Result<ShadowRecord, ShadowError> {
    let record = store
        .shadow(run_id)
        .await?
        .ok_or_else(|| ShadowError::NotShadow {
            run_id: run_id.to_owned(),
        })?;
    if states.contains(&record.state) {
        return Ok(record);
    }
    let hint = match record.state {
        ShadowState::Seeded => "the run has not been promoted",
        ShadowState::Promoted => "it is already promoted",
        ShadowState::Unpromoted => "it was swapped back; promote it again first",
        ShadowState::Cleaned => "it was cleaned up",
    };
    Err(ShadowError::WrongState {
        run_id: run_id.to_owned(),
        state: record.state,
        hint: hint.to_owned(),
    })
}

/// Refuses unless every table of `present` exists and `absent` does not.
async fn require_tables(db: &Db, present: &[&str], absent: &str) -> Result<(), ShadowError> {
    for table in present {
        if !ddl::table_exists(db, table).await? {
            return Err(ShadowError::Tables {
                message: format!("table {table} does not exist in the target"),
            });
        }
    }
    if ddl::table_exists(db, absent).await? {
        return Err(ShadowError::Tables {
            message: format!(
                "table {absent} already exists in the target; drop or rename it to continue"
            ),
        });
    }
    Ok(())
}

/// Refuses when the live table's fingerprint differs from the one taken at seeding, or when
/// none was taken.
async fn live_unchanged(db: &Db, spec: &Spec, record: &ShadowRecord) -> Result<(), ShadowError> {
    let table = &record.live_table;
    let then = match &record.fingerprint {
        Some(f) if f.get("error").is_none() => f,
        other => {
            let reason = other
                .as_ref()
                .and_then(|f| f["error"].as_str())
                .unwrap_or("no fingerprint recorded");
            return Err(ShadowError::NoFingerprint {
                table: table.clone(),
                reason: reason.to_owned(),
            });
        }
    };
    let now = FingerprintTarget::recorded(then, spec)
        .take(db, table)
        .await?;
    let what = match then["column"].as_str() {
        Some(c) => format!("rows of the scope by {c}"),
        None => "the whole table".to_owned(),
    };
    let short = |f: &serde_json::Value| {
        format!(
            "{} rows, sum {}",
            f["rows"],
            f["sum"].as_str().unwrap_or("?")
        )
    };
    if now["columns"] != then["columns"] {
        return Err(ShadowError::LiveChanged {
            table: table.clone(),
            what: "its columns".to_owned(),
            then: then["columns"].to_string(),
            now: now["columns"].to_string(),
        });
    }
    if (&now["rows"], &now["sum"], &now["check"]) != (&then["rows"], &then["sum"], &then["check"]) {
        return Err(ShadowError::LiveChanged {
            table: table.clone(),
            what,
            then: short(then),
            now: short(&now),
        });
    }
    Ok(())
}

/// What a swap back or a cleanup did.
#[derive(Clone, Debug)]
pub struct Swapped {
    /// The shadow as recorded afterwards.
    pub record: ShadowRecord,
    /// How long the swap held the tables' lock (zero for a cleanup).
    pub lock: Duration,
    /// The table dropped by a cleanup.
    pub dropped: Option<String>,
}

/// Undoes the promote of run `run_id`: the old table is live again and the promoted one goes
/// back to the shadow's name (`run.unpromoted`). Refused unless the shadow is promoted. The
/// lead routes `backfill rollback RUN` here for shadow runs.
pub async fn swap_back(
    store: &Store,
    spec: &Spec,
    run_id: &str,
    actor: &str,
) -> Result<Swapped, ShadowError> {
    let run = store.get_run(run_id).await?;
    let record = shadow_in(store, &run.id, &[ShadowState::Promoted]).await?;
    let db = Db::open(&spec.target.url, 1, true).await?;
    let result = async {
        require_tables(
            &db,
            &[&record.live_table, &record.old_table],
            &record.shadow_table,
        )
        .await?;
        ddl::exchange(
            &db,
            &record.live_table,
            &record.old_table,
            &record.shadow_table,
            SWAP_LOCK_WAIT,
        )
        .await
        .map_err(ShadowError::from)
    }
    .await;
    db.close().await;
    let lock = result?;
    let detail = json!({
        "live_table": record.live_table,
        "restored_from": record.old_table,
        "shadow_table": record.shadow_table,
        "lock_ms": lock.as_secs_f64() * 1000.0,
    });
    let record = store
        .shadow_transition(
            &run.id,
            &[ShadowState::Promoted],
            ShadowState::Unpromoted,
            "run.unpromoted",
            detail,
            actor,
        )
        .await?;
    Ok(Swapped {
        record,
        lock,
        dropped: None,
    })
}

/// Drops the table of run `run_id` that is not live: the old table after a promote, the
/// shadow otherwise (`shadow.cleaned`). Refused while the run may still write its shadow
/// (not yet succeeded, failed or cancelled). A cleaned shadow is left as it is. The lead
/// wires `backfill cleanup RUN` here for shadow runs.
pub async fn cleanup(
    store: &Store,
    spec: &Spec,
    run_id: &str,
    actor: &str,
) -> Result<Swapped, ShadowError> {
    let run = store.get_run(run_id).await?;
    let record = store
        .shadow(&run.id)
        .await?
        .ok_or_else(|| ShadowError::NotShadow {
            run_id: run.id.clone(),
        })?;
    let drop = match record.state {
        ShadowState::Cleaned => {
            return Ok(Swapped {
                record,
                lock: Duration::ZERO,
                dropped: None,
            });
        }
        ShadowState::Promoted => record.old_table.clone(),
        ShadowState::Seeded | ShadowState::Unpromoted => record.shadow_table.clone(),
    };
    if !matches!(
        run.state,
        RunState::Succeeded | RunState::Failed | RunState::Cancelled
    ) {
        return Err(ShadowError::NotSucceeded {
            run_id: run.id,
            state: run.state.to_string(),
        });
    }
    let db = Db::open(&spec.target.url, 1, true).await?;
    let result = ddl::drop_table(&db, &drop).await;
    db.close().await;
    result?;
    let record = store
        .shadow_transition(
            &run.id,
            &[record.state],
            ShadowState::Cleaned,
            "shadow.cleaned",
            json!({ "dropped": drop, "was": record.state.as_str() }),
            actor,
        )
        .await?;
    Ok(Swapped {
        record,
        lock: Duration::ZERO,
        dropped: Some(drop),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_the_random_end_of_the_run_id() {
        let (shadow, old) = names("orders", "0190f3a2-7b1c-7def-8abc-1234567890ab").unwrap();
        assert_eq!(shadow, "orders__bf_567890ab");
        assert_eq!(old, "orders__bf_old_567890ab");
        let long = "t".repeat(60);
        assert!(matches!(
            names(&long, "0190f3a2-7b1c-7def-8abc-1234567890ab"),
            Err(ShadowError::Name { .. })
        ));
    }
}
