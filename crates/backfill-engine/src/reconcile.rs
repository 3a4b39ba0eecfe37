//! Reconciliation after writing (`[validate]`, issue 11): compares the source's and the
//! target's fingerprints of a partition's window after its last batch, re-checks every
//! finished partition at the end of the run, and is `backfill validate`'s engine.
//!
//! Owns: opening both sides for comparison (the `diff` machinery: the same columns, window
//! column and fingerprints, `crate::diff::Sides`), one fingerprint query per side per
//! partition, bucketed queries over many partitions (one per side per [`CHUNK`] partitions),
//! a sample of differing keys by `diff`'s bisection (at most [`SAMPLE_KEYS`]), the tolerance,
//! and in `sql` mode the pair of check queries. What to reconcile is decided in
//! `backfill_core::reconcile`.
//!
//! Decisions:
//! - A mismatch after a partition's last batch fails it with `reconcile_mismatch`, without a
//!   retry: the write itself succeeded, so a difference means the data moved while it ran (a
//!   concurrent writer, a trigger) or the transform is not deterministic. Writing it again
//!   would hide the first and not cure the second; the failed partition names the keys, and
//!   resuming the run redoes it when the cause is understood.
//! - A check that cannot be computed (a query error) leaves the partition "not verified" with
//!   the error as its reason: reconciliation proves a write, it does not stop one.
//! - Fingerprints are read after the write committed, outside its transaction: a writer
//!   that changes the window between the two reads is reported, never hidden.
//!
//! Invariants: read-only on source and target; each check is recorded in the store
//! ([`Store::record_checks`]) before the partition's finish event, which carries it.

use std::sync::Arc;

use backfill_connectors::fingerprint::Db;
use backfill_core::fingerprint::Fingerprint;
use backfill_core::plan::Window;
use backfill_core::reconcile::Reconcile;
use backfill_core::spec::{Spec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::Value;
use backfill_store::{CheckStatus, CheckTotals, PartitionCheck, PartitionRecord, Store};
use serde_json::json;

use crate::diff::{DiffError, DiffOptions, Hash, KeyChange, Sides};

/// Differing keys named by a mismatch, at most.
pub const SAMPLE_KEYS: usize = 5;

/// Partitions compared by one bucketed query per side (at the end of a run, by `validate`).
pub const CHUNK: usize = 1_000;

/// Why reconciliation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The comparison could not be opened (an unknown column, a float, an unreachable
    /// database).
    #[error("reconciliation (`[validate]`): {0}")]
    Open(#[from] DiffError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] backfill_store::StoreError),
}

/// Both sides opened for reconciliation.
pub(crate) struct Reconciler {
    method: Method,
    /// Rows a partition may differ by.
    tolerance: u64,
    /// `upsert` without `propagate_deletes`: target rows whose key is not in the source are
    /// kept by design (the run never deletes), so they are reported, not a mismatch.
    keeps_extra: bool,
    /// Check each partition after its last batch.
    pub(crate) after_partition: bool,
    /// Re-check every finished partition at the end of the run.
    pub(crate) at_end: bool,
}

enum Method {
    Rows(Sides),
    Checks(Checks),
}

/// `sql` mode: the two check queries and their databases.
struct Checks {
    source: Db,
    target: Db,
    source_sql: String,
    target_sql: String,
    source_format: TimeFormat,
    target_format: TimeFormat,
}

/// Reconciliation of a run, as set up.
pub(crate) enum Setup {
    /// Both sides are open.
    On(Arc<Reconciler>),
    /// Nothing is compared, for this reason.
    NotVerified(String),
}

/// Opens reconciliation for `spec`. An implicit `[validate]` (the defaults) that cannot be
/// opened is "not verified" with the reason; an explicit one is an error.
pub(crate) async fn open(spec: &Spec) -> Result<Setup, ReconcileError> {
    let v = &spec.validate;
    let method = match backfill_core::reconcile::reconcile(spec) {
        Reconcile::NotVerified { reason } => return Ok(Setup::NotVerified(reason)),
        Reconcile::Rows { window_column } => {
            // Still checked after each partition (a canary, a failed check that stops the
            // run, an interrupted run: all rely on it), but said: each check scans the table.
            if !v.explicit
                && v.after_partition
                && !target_window_indexed(spec, &window_column).await
            {
                tracing::warn!(
                    "no index of the target table starts with `{window_column}`: each \
                     partition's reconciliation scans the whole table; create the index, or set \
                     `[validate] after_partition = false` and `at_end = true` to reconcile \
                     every partition in one pass at the end of the run"
                );
            }
            let options = DiffOptions {
                columns: v.columns.clone(),
                window_column: Some(window_column),
                ..DiffOptions::default()
            };
            crate::diff::open(spec, &options).await.map(Method::Rows)
        }
        Reconcile::Checks => open_checks(spec).await.map(Method::Checks),
    };
    match method {
        Ok(method) => Ok(Setup::On(Arc::new(Reconciler {
            method,
            tolerance: v.tolerance,
            keeps_extra: spec.target.mode == backfill_core::WriteMode::Upsert
                && !spec.target.propagate_deletes,
            after_partition: v.after_partition,
            at_end: v.at_end,
        }))),
        Err(e) if v.explicit => Err(e.into()),
        Err(e) => {
            tracing::warn!(reason = %e, "reconciliation off: partitions are not verified");
            Ok(Setup::NotVerified(backfill_core::secret::redact(
                &e.to_string(),
            )))
        }
    }
}

/// Whether the target table has an index leading with `column`; true when that cannot be
/// told (no table, the target unreachable: the run reports that itself).
async fn target_window_indexed(spec: &Spec, column: &str) -> bool {
    let Ok(sink) = backfill_connectors::open_sink(&spec.target, 1).await else {
        return true;
    };
    let indexed = sink.leads_an_index(column).await;
    sink.close().await;
    !matches!(indexed, Ok(Some(false)))
}

async fn open_checks(spec: &Spec) -> Result<Checks, DiffError> {
    let v = &spec.validate;
    let source_url = spec.source.as_ref().map_or(&spec.target.url, |s| &s.url);
    let source_format = spec
        .source
        .as_ref()
        .map_or(spec.target.time_format.clone(), |s| s.time_format.clone());
    let target = Db::open(&spec.target.url, 2, true).await?;
    let source = match Db::open(source_url, 2, false).await {
        Ok(db) => db,
        Err(e) => {
            target.close().await;
            return Err(e.into());
        }
    };
    Ok(Checks {
        source,
        target,
        source_sql: v.source_check.clone().unwrap_or_default(),
        target_sql: v.target_check.clone().unwrap_or_default(),
        source_format,
        target_format: spec.target.time_format.clone(),
    })
}

impl Reconciler {
    /// Closes both sides.
    pub(crate) async fn close(&self) {
        match &self.method {
            Method::Rows(sides) => sides.close().await,
            Method::Checks(c) => {
                c.source.close().await;
                c.target.close().await;
            }
        }
    }

    /// Checks one partition's window (one fingerprint query per side), bisecting a
    /// difference for its sample of keys.
    pub(crate) async fn check(
        &self,
        partition_id: &str,
        window: Window,
        checked_by: &str,
    ) -> PartitionCheck {
        let result = match &self.method {
            Method::Rows(sides) => {
                match crate::diff::fingerprints(sides, &window, &[window], Hash::Portable).await {
                    Ok((s, t)) => Ok(self.judge(sides, window, s[0], t[0]).await),
                    Err(e) => Err(e.to_string()),
                }
            }
            Method::Checks(c) => check_queries(c, &window).await,
        };
        into_check(partition_id, checked_by, result)
    }

    /// Checks many partitions, one bucketed query per side per [`CHUNK`] of them.
    pub(crate) async fn check_many(
        &self,
        partitions: &[(String, Window)],
        checked_by: &str,
    ) -> Vec<PartitionCheck> {
        let Method::Rows(sides) = &self.method else {
            let mut out = Vec::with_capacity(partitions.len());
            for (id, w) in partitions {
                out.push(self.check(id, *w, checked_by).await);
            }
            return out;
        };
        let mut out = Vec::with_capacity(partitions.len());
        for chunk in partitions.chunks(CHUNK) {
            let windows: Vec<Window> = chunk.iter().map(|(_, w)| *w).collect();
            let fps =
                crate::diff::fingerprints(sides, &hull(&windows), &windows, Hash::Portable).await;
            match fps {
                Ok((s, t)) => {
                    for (i, (id, w)) in chunk.iter().enumerate() {
                        let judged = self.judge(sides, *w, s[i], t[i]).await;
                        out.push(into_check(id, checked_by, Ok(judged)));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (id, _) in chunk {
                        out.push(into_check(id, checked_by, Err(message.clone())));
                    }
                }
            }
        }
        out
    }

    /// Compares two fingerprints of `window`; a difference is bisected for its keys (and,
    /// with a tolerance, for the exact number of differing rows).
    async fn judge(
        &self,
        sides: &Sides,
        window: Window,
        source: Fingerprint,
        target: Fingerprint,
    ) -> Judged {
        if source == target {
            return Judged {
                status: CheckStatus::Verified,
                source: Some(source),
                target: Some(target),
                detail: json!({}),
            };
        }
        let options = DiffOptions {
            max_keys: SAMPLE_KEYS,
            ..DiffOptions::default()
        };
        let (mut keys, differing, extra_kept, truncated) =
            match sides.differing_keys(window, source, target, &options).await {
                Ok((keys, counts, truncated)) => {
                    let kept = if self.keeps_extra { counts.extra } else { 0 };
                    let differing = counts.insert + counts.update + counts.extra - kept;
                    (keys, differing, kept, truncated)
                }
                // The keys are a courtesy: without them the counts still decide.
                Err(_) => (
                    Vec::new(),
                    source.rows.abs_diff(target.rows).max(1),
                    0,
                    true,
                ),
            };
        if extra_kept > 0 {
            keys.retain(|k| k.change != crate::diff::Change::Extra);
        }
        let status = if differing > self.tolerance {
            CheckStatus::Mismatch
        } else {
            CheckStatus::Verified
        };
        Judged {
            status,
            source: Some(source),
            target: Some(target),
            detail: json!({
                "differing_rows": differing,
                "keys": keys.iter().map(key_json).collect::<Vec<_>>(),
                "keys_truncated": truncated,
                "tolerance": self.tolerance,
                "extra_kept": extra_kept,
            }),
        }
    }
}

/// What one comparison found.
struct Judged {
    status: CheckStatus,
    source: Option<Fingerprint>,
    target: Option<Fingerprint>,
    detail: serde_json::Value,
}

fn into_check(id: &str, checked_by: &str, result: Result<Judged, String>) -> PartitionCheck {
    match result {
        Ok(j) => PartitionCheck {
            partition_id: id.to_owned(),
            status: j.status,
            source: j.source,
            target: j.target,
            detail: j.detail,
            checked_by: checked_by.to_owned(),
        },
        Err(message) => PartitionCheck {
            partition_id: id.to_owned(),
            status: CheckStatus::NotVerified,
            source: None,
            target: None,
            detail: json!({ "reason": backfill_core::secret::redact(&message) }),
            checked_by: checked_by.to_owned(),
        },
    }
}

/// `sql` mode: both check queries over `window`; their first rows must be equal value by
/// value, compared as portable text (an integer 3 equals a decimal 3).
async fn check_queries(c: &Checks, window: &Window) -> Result<Judged, String> {
    let (s, t) = tokio::join!(
        check_query(&c.source, &c.source_sql, window, &c.source_format),
        check_query(&c.target, &c.target_sql, window, &c.target_format)
    );
    let (s, t) = (texts(s?), texts(t?));
    let status = if s == t {
        CheckStatus::Verified
    } else {
        CheckStatus::Mismatch
    };
    Ok(Judged {
        status,
        source: None,
        target: None,
        detail: json!({ "source_row": s, "target_row": t }),
    })
}

async fn check_query(
    db: &Db,
    sql: &str,
    window: &Window,
    format: &TimeFormat,
) -> Result<Option<Vec<Value>>, String> {
    let (sql, params) = backfill_connectors::fingerprint::query_relation(db, sql, window, format)
        .map_err(|e| e.to_string())?;
    db.check_row(&sql, &params).await.map_err(|e| e.to_string())
}

fn texts(row: Option<Vec<Value>>) -> Option<Vec<Option<String>>> {
    row.map(|values| {
        values
            .iter()
            .map(|v| value_text(v).map(|t| canonical_number(&t)))
            .collect()
    })
}

/// A check value as text: integers, floats, booleans and bytes too (hex).
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        Value::Blob(b) => Some(b.iter().map(|x| format!("{x:02x}")).collect()),
        other => other.as_portable_text(),
    }
}

/// `3.00` and `3` are the same number: trailing fraction zeros are dropped.
fn canonical_number(text: &str) -> String {
    let numeric = !text.is_empty()
        && text
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.')
        && text.matches('.').count() == 1;
    if numeric {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text.to_owned()
    }
}

fn key_json(k: &KeyChange) -> serde_json::Value {
    json!({ "key": k.key, "change": k.change.name(), "columns": k.columns })
}

/// The message a mismatched partition fails with: `reconcile_mismatch`, both sides' counts
/// and the sample of differing keys.
pub(crate) fn mismatch_message(check: &PartitionCheck, key_names: &[String]) -> String {
    let mut text = String::from("reconcile_mismatch: ");
    match (check.source, check.target) {
        (Some(s), Some(t)) => text.push_str(&format!(
            "source {} rows, target {} rows{}",
            s.rows,
            t.rows,
            if s.rows == t.rows {
                " (checksums differ)"
            } else {
                ""
            }
        )),
        _ => text.push_str(&format!(
            "source_check returned {}, target_check returned {}",
            check.detail["source_row"], check.detail["target_row"]
        )),
    }
    if let Some(n) = check.detail["differing_rows"].as_u64() {
        text.push_str(&format!(
            ", {n} differing (tolerance {})",
            check.detail["tolerance"]
        ));
    }
    let keys: Vec<String> = check.detail["keys"]
        .as_array()
        .map(|keys| keys.iter().map(|k| describe_key(k, key_names)).collect())
        .unwrap_or_default();
    if !keys.is_empty() {
        text.push_str(&format!("; differing keys: {}", keys.join(", ")));
        if check.detail["keys_truncated"].as_bool() == Some(true) {
            text.push_str(", …");
        }
    }
    text
}

/// What a mismatch right after a successful write means, appended to its message.
pub(crate) const AFTER_WRITE: &str = " (the write succeeded: the data moved while it ran, or \
                                      the transform is not deterministic; see `backfill \
                                      validate`)";

/// `id=3 (update: amount)`.
fn describe_key(k: &serde_json::Value, key_names: &[String]) -> String {
    let values: Vec<String> = k["key"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .enumerate()
                .map(|(i, v)| {
                    let name = key_names.get(i).map_or("key", String::as_str);
                    let v = v.as_str().map_or_else(|| "NULL".to_owned(), str::to_owned);
                    format!("{name}={v}")
                })
                .collect()
        })
        .unwrap_or_default();
    let change = k["change"].as_str().unwrap_or("");
    let columns: Vec<&str> = k["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if columns.is_empty() {
        format!("{} ({change})", values.join(","))
    } else {
        format!("{} ({change}: {})", values.join(","), columns.join(", "))
    }
}

/// The smallest window covering `windows` (not empty).
fn hull(windows: &[Window]) -> Window {
    let mut out = windows[0];
    for w in &windows[1..] {
        out = match (out, *w) {
            (Window::Time { start, end }, Window::Time { start: s, end: e }) => Window::Time {
                start: start.min(s),
                end: end.max(e),
            },
            (Window::Key { start, end }, Window::Key { start: s, end: e }) => Window::Key {
                start: start.min(s),
                end: end.max(e),
            },
            (a, _) => a,
        };
    }
    out
}

/// Re-checks every partition of run `run_id` read a page at a time (`finished_only`: the
/// done ones, as at a run's end), recording each check as `checked_by`. Returns the
/// mismatched checks (at most [`SAMPLE_KEYS`] kept) with the run's totals after it.
pub(crate) async fn check_run(
    reconciler: &Reconciler,
    store: &Store,
    run_id: &str,
    finished_only: bool,
    checked_by: &str,
) -> Result<(CheckTotals, Vec<PartitionCheck>), ReconcileError> {
    let mut after = None;
    let mut mismatched = Vec::new();
    loop {
        let page: Vec<PartitionRecord> = store
            .check_page(run_id, after, CHUNK, finished_only)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.index);
        let windows: Vec<(String, Window)> = page
            .iter()
            .map(|p| (p.partition_id.clone(), p.window))
            .collect();
        let checks = reconciler.check_many(&windows, checked_by).await;
        store.record_checks(run_id, &checks).await?;
        mismatched.extend(
            checks
                .into_iter()
                .filter(|c| c.status == CheckStatus::Mismatch)
                .take(SAMPLE_KEYS.saturating_sub(mismatched.len())),
        );
        if page.len() < CHUNK {
            break;
        }
    }
    Ok((store.check_totals(run_id).await?, mismatched))
}

/// Whether `spec`'s target has rows in its own right (not `sql` mode) — used for key names.
pub(crate) fn key_names(spec: &Spec) -> Vec<String> {
    match spec.target.mode {
        WriteMode::Sql { .. } => Vec::new(),
        _ => spec.target.key.clone(),
    }
}

/// What `backfill validate` found.
#[derive(Clone, Debug)]
pub struct ValidateReport {
    /// The run checked; `None` when a spec's plan was checked without a run.
    pub run_id: Option<String>,
    /// Partitions verified, mismatched and not verified.
    pub totals: CheckTotals,
    /// The first mismatched partitions (at most [`SAMPLE_KEYS`]) with their check.
    pub mismatched: Vec<PartitionCheck>,
    /// One line per listed mismatch, as a failed partition would say it.
    pub messages: Vec<String>,
    /// Why nothing was compared, when nothing was.
    pub not_verified_reason: Option<String>,
}

/// `backfill validate`: re-runs reconciliation alone. With `run_id`, every partition of the
/// run but split parents (pending ones too: their rows are not written yet, which shows),
/// recording each check and one `validate` audit event with the totals. Without, the
/// partitions of `spec`'s plan, recording no check but the `validate` event (with no run).
///
/// Errors: an explicit `[validate]` that cannot be set up; the state store.
pub async fn validate(
    store: &Store,
    spec: &Spec,
    run_id: Option<&str>,
    actor: &str,
) -> Result<ValidateReport, crate::EngineError> {
    // A shadow run's rows are in its shadow table until promoted.
    let shadowed = match run_id {
        Some(id) => crate::shadow::reading_spec(store, spec, id)
            .await
            .map_err(ReconcileError::from)?,
        None => None,
    };
    let spec = shadowed.as_ref().unwrap_or(spec);
    let setup = open(spec).await?;
    let mut report = ValidateReport {
        run_id: run_id.map(str::to_owned),
        totals: CheckTotals::default(),
        mismatched: Vec::new(),
        messages: Vec::new(),
        not_verified_reason: None,
    };
    let result = match &setup {
        Setup::NotVerified(reason) => {
            report.not_verified_reason = Some(reason.clone());
            not_verified_totals(store, spec, run_id).await
        }
        Setup::On(r) => match run_id {
            Some(id) => check_run(r, store, id, false, "validate").await,
            None => check_plan(r, spec).await,
        },
    };
    if let Setup::On(r) = &setup {
        r.close().await;
    }
    let (totals, mismatched) = result?;
    if let (None, Some(id)) = (&report.not_verified_reason, run_id)
        && totals.not_verified > 0
    {
        // Partitions whose check could not be computed: say why, once.
        report.not_verified_reason = store.not_verified_reason(id).await.ok().flatten();
    }
    let names = key_names(spec);
    report.messages = mismatched
        .iter()
        .map(|c| format!("{}: {}", c.partition_id, mismatch_message(c, &names)))
        .collect();
    report.totals = totals;
    report.mismatched = mismatched;
    let mut detail = json!({
        "spec": spec.name,
        "verified": totals.verified,
        "mismatched": totals.mismatched,
        "not_verified": totals.not_verified,
    });
    if let Some(reason) = &report.not_verified_reason {
        detail["reason"] = json!(reason);
    }
    store
        .record_check_event(run_id, actor, "validate", detail)
        .await
        .map_err(ReconcileError::from)?;
    Ok(report)
}

/// Totals when nothing is compared: every partition not verified.
async fn not_verified_totals(
    store: &Store,
    spec: &Spec,
    run_id: Option<&str>,
) -> Result<(CheckTotals, Vec<PartitionCheck>), ReconcileError> {
    let total = match run_id {
        Some(id) => {
            let t = store.check_totals(id).await?;
            t.verified + t.mismatched + t.not_verified
        }
        None => backfill_core::plan::plan(spec)
            .map(|p| p.len() as u64)
            .unwrap_or(0),
    };
    Ok((
        CheckTotals {
            not_verified: total,
            ..CheckTotals::default()
        },
        Vec::new(),
    ))
}

/// The plan's partitions, a chunk at a time, recording nothing.
async fn check_plan(
    reconciler: &Reconciler,
    spec: &Spec,
) -> Result<(CheckTotals, Vec<PartitionCheck>), ReconcileError> {
    let plan = backfill_core::plan::plan(spec).map_err(DiffError::from)?;
    let mut totals = CheckTotals::default();
    let mut mismatched = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut partitions = plan.partitions().peekable();
    while let Some(p) = partitions.next() {
        chunk.push((p.id, p.window));
        if chunk.len() < CHUNK && partitions.peek().is_some() {
            continue;
        }
        for check in reconciler.check_many(&chunk, "validate").await {
            match check.status {
                CheckStatus::Verified => totals.verified += 1,
                CheckStatus::NotVerified => totals.not_verified += 1,
                CheckStatus::Mismatch => {
                    totals.mismatched += 1;
                    if mismatched.len() < SAMPLE_KEYS {
                        mismatched.push(check);
                    }
                }
            }
        }
        chunk.clear();
    }
    Ok((totals, mismatched))
}
