//! `backfill status [RUN]` and `backfill runs`.

use backfill_engine::status;
use serde_json::json;

use crate::UserError;
use crate::args::{RunsArgs, StatusArgs};
use crate::commands::run::find_run;
use crate::commands::{duration, open_store, thousands};
use crate::output::Output;

/// Whether [`StatusView::load`] counts the run's undo rows, which means connecting to the
/// target database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UndoRows {
    /// Count them (`backfill status`).
    Count,
    /// Leave them out (`undo_rows` is null): the dashboard's API answers from the store alone.
    Skip,
}

/// Everything `status` shows of one run, read from the store: aggregates and the first
/// failing partitions, never every partition of the run.
pub(crate) struct StatusView {
    pub(crate) run: backfill_store::RunRecord,
    pub(crate) totals: backfill_store::PartitionTotals,
    pub(crate) st: status::RunStatus,
    pub(crate) checks: backfill_store::CheckTotals,
    /// Why partitions are "not verified", from one of their checks.
    pub(crate) not_verified_reason: Option<String>,
    pub(crate) gaps: Option<crate::commands::only_gaps::GapView>,
    pub(crate) controls: backfill_store::Controls,
    pub(crate) canary: Option<serde_json::Value>,
    pub(crate) rates: Vec<backfill_store::RateChangeRecord>,
    pub(crate) live: serde_json::Value,
    pub(crate) process: Option<String>,
    pub(crate) claim: Option<backfill_store::LeaseHolder>,
    pub(crate) undo_rows: Option<u64>,
    pub(crate) shadow: Option<backfill_store::ShadowRecord>,
}

impl StatusView {
    /// Reads the status of `run` from `store`.
    pub(crate) async fn load(
        store: &backfill_store::Store,
        run: backfill_store::RunRecord,
        undo: UndoRows,
    ) -> anyhow::Result<StatusView> {
        let totals = store.partition_totals(&run.id).await?;
        let failing = store
            .failing_partitions(&run.id, status::FAILING_LISTED)
            .await?;
        let now = chrono::Utc::now();
        let st = status::compute(&run, &totals, &failing, now);
        let unsplit = totals
            .by_state
            .iter()
            .filter(|(state, _)| *state != backfill_core::PartitionState::Split)
            .map(|(_, n)| n)
            .sum();
        let checks = store.check_totals_of(&run.id, unsplit).await?;
        let not_verified_reason = if checks.not_verified > 0 {
            store.not_verified_reason(&run.id).await?
        } else {
            None
        };
        let gaps = crate::commands::only_gaps::GapView::load(store, &run.id).await?;
        let controls = store.controls(&run.id).await?;
        let canary = store.canary(&run.id).await?;
        let rates = store.rate_changes(&run.id, 1).await?;
        let live = controls.live.clone().unwrap_or(serde_json::Value::Null);
        let process = crate::commands::control::live_process(&controls);
        let claim = store
            .lease_holder(&backfill_store::run_resource(&run.id))
            .await?
            .filter(|c| !c.is_free(now));
        let undo_rows = match undo {
            UndoRows::Count => crate::commands::rollback::undo_rows(&run).await,
            UndoRows::Skip => None,
        };
        let shadow = store.shadow(&run.id).await?;
        Ok(StatusView {
            run,
            totals,
            st,
            checks,
            not_verified_reason,
            gaps,
            controls,
            canary,
            rates,
            live,
            process,
            claim,
            undo_rows,
            shadow,
        })
    }

    /// The JSON of `backfill status --json` (and of the API's `/api/runs/{id}`).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let StatusView {
            run,
            totals,
            st,
            checks,
            not_verified_reason,
            gaps,
            controls,
            canary,
            rates,
            live,
            process,
            claim,
            undo_rows,
            shadow,
        } = self;
        json!({
            "run_id": run.id,
            "spec": run.spec_name,
            "state": run.state.as_str(),
            "undo_rows": undo_rows,
            "shadow": shadow.as_ref().map(|s| json!({
                "state": s.state.as_str(),
                "live_table": s.live_table,
                "shadow_table": s.shadow_table,
                "old_table": s.old_table,
                "seeded_rows": s.seeded_rows,
            })),
            "owner": run.owner,
            "reason": run.reason,
            "created_at": run.created_at.to_rfc3339(),
            "started_at": run.started_at.map(|t| t.to_rfc3339()),
            "finished_at": run.finished_at.map(|t| t.to_rfc3339()),
            "plan_hash": run.plan_hash,
            "guarantee": run.guarantee.map(|g| g.name()),
            "partitions": st.by_state.iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "partitions_total": totals.all(),
            "partitions_skipped": gaps.as_ref().map_or(0, |g| g.skipped),
            "only_gaps": gaps.as_ref().map(crate::commands::only_gaps::GapView::to_json),
            "rows": {
                "read": st.counts.read,
                "written": st.counts.written(),
                "inserted": st.counts.inserted,
                "updated": st.counts.updated,
                "unchanged": st.counts.unchanged,
                "deleted": st.counts.deleted,
                "affected": st.counts.affected,
            },
            "success_rate": st.success_rate,
            "rows_per_second": st.rows_per_second,
            "errors_per_1000_rows": st.errors_per_1000_rows,
            "retries_per_partition": st.retries_per_partition,
            "eta_seconds": st.eta_seconds,
            "elapsed_seconds": st.elapsed_seconds,
            "pause_reason": run.pause_reason,
            "canary": canary,
            "control": {
                "requested": controls.requested.map(|r| r.as_str()),
                "requested_by": controls.requested_by,
                "process_running": process.is_some(),
                "heartbeat_at": controls.heartbeat_at.map(|t| t.to_rfc3339()),
                "active_seconds": controls.active_ms as f64 / 1000.0,
                "throttle": {
                    "rows_per_second": controls.rows_per_second,
                    "batches_per_second": controls.batches_per_second,
                    "concurrency": controls.concurrency,
                },
            },
            "claim": claim.as_ref().map(|c| json!({
                "host": c.host,
                "pid": c.pid,
                "fence": c.fence,
                "since": c.claimed_at.to_rfc3339(),
                "renewed_at": c.renewed_at.to_rfc3339(),
                "expires_at": c.expires_at.to_rfc3339(),
            })),
            "live": live,
            "rate": rates.last().map(|r| json!({ "rows_per_second": r.rate, "cause": r.cause, "at": r.at, "detail": r.detail })),
            "failing": st.failing.iter().map(|f| json!({
                "partition_id": f.partition_id,
                "window": f.window,
                "state": f.state.as_str(),
                "attempts": f.attempts,
                "error": f.error,
            })).collect::<Vec<_>>(),
            "failing_total": st.failing_total,
            "reconciliation": crate::commands::run::reconciliation_json(
                checks,
                not_verified_reason.as_deref(),
            ),
            "slo": self.objective(),
        })
    }

    /// The `[slo]` block: the objective, the projection against it, the error budget and
    /// its burn (null without `[slo]`).
    pub(crate) fn objective(&self) -> serde_json::Value {
        crate::commands::objective::json(
            &self.run,
            &self.totals,
            self.st.eta_seconds,
            &self.live,
            chrono::Utc::now(),
        )
    }
}

pub(crate) async fn run(args: &StatusArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = match &args.run {
        Some(id) => find_run(&store, id).await?,
        None => store.latest_run().await?.ok_or_else(|| {
            UserError::new(format!(
                "no runs in the state store {}",
                store.url_redacted()
            ))
            .hint("start one with `backfill run SPEC`, or pass --state")
        })?,
    };
    let view = StatusView::load(&store, run, UndoRows::Count).await?;
    out.json(&view.to_json());
    let objective = view.objective();
    let StatusView {
        run,
        totals,
        st,
        checks,
        not_verified_reason,
        gaps,
        controls,
        canary,
        rates,
        live,
        process,
        claim,
        undo_rows,
        shadow,
    } = view;
    out.line(format!(
        "run {} of `{}`: {}",
        run.id, run.spec_name, run.state
    ));
    if let Some(reason) = &run.pause_reason {
        let resumes = live["resumes_at"]
            .as_str()
            .map(|t| format!(", resumes at {t}"))
            .unwrap_or_default();
        out.line(format!("  paused:     {reason}{resumes}"));
    }
    if let Some(request) = controls.requested {
        out.line(format!(
            "  requested:  {} by {}",
            request.as_str(),
            controls.requested_by.as_deref().unwrap_or("?")
        ));
    }
    out.line(format!(
        "  process:    {}",
        process.as_deref().unwrap_or("none is executing it")
    ));
    if let Some(c) = &claim {
        out.line(format!(
            "  claim:      #{} held by pid {} on {} since {}, lapses at {} unless renewed",
            c.fence,
            c.pid,
            c.host,
            c.claimed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            c.expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    out.line(format!("  owner:      {}", run.owner));
    out.line(format!("  reason:     {}", run.reason));
    out.line(format!(
        "  guarantee:  {}",
        run.guarantee
            .map_or("not recorded (run created by an older backfill)", |g| g
                .explain())
    ));
    let states: Vec<String> = st
        .by_state
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    out.line(format!(
        "  partitions: {} of {} ({})",
        states.join(", "),
        totals.all(),
        format_args!("{:.1}% done", st.success_rate * 100.0)
    ));
    for line in gaps.as_ref().map(|g| g.lines()).unwrap_or_default() {
        out.line(line);
    }
    out.line(format!(
        "  rows:       {} read, {} written ({} inserted, {} updated, {} deleted), {} unchanged",
        thousands(st.counts.read),
        thousands(st.counts.written()),
        thousands(st.counts.inserted),
        thousands(st.counts.updated),
        thousands(st.counts.deleted),
        thousands(st.counts.unchanged),
    ));
    if let Some(s) = &shadow {
        out.line(format!(
            "  shadow:     {} ({}; live table {}, old table after promote {})",
            s.shadow_table, s.state, s.live_table, s.old_table
        ));
    }
    if let Some(n) = undo_rows {
        out.line(format!(
            "  undo data:  {} row(s) (`backfill rollback {}` restores; `backfill cleanup` drops)",
            thousands(n),
            run.id
        ));
    }
    out.line(format!(
        "  throughput: {} rows/s over {}",
        thousands(st.rows_per_second as u64),
        duration(st.elapsed_seconds)
    ));
    out.line(format!(
        "  errors:     {:.2} per 1,000 rows, {:.2} retries per partition",
        st.errors_per_1000_rows, st.retries_per_partition
    ));
    if let Some(eta) = st.eta_seconds {
        out.line(format!("  ETA:        {}", duration(eta)));
    }
    for line in crate::commands::objective::lines(&objective) {
        out.line(line);
    }
    out.line(format!(
        "  verified:   {}",
        crate::commands::run::reconciliation_line(&checks, not_verified_reason.as_deref())
    ));
    for line in control_lines(&live, rates.last()) {
        out.line(line);
    }
    crate::commands::gates::print_canary(&run, canary.as_ref(), out);
    if !st.failing.is_empty() {
        out.line(format!("  failing partitions ({}):", st.failing_total));
        for f in st.failing.iter().take(20) {
            out.line(format!(
                "    {} {} [{}, {} attempts]: {}",
                f.partition_id, f.window, f.state, f.attempts, f.error
            ));
        }
        if st.failing_total > 20 {
            out.line(format!(
                "    … and {} more (--json lists the first {})",
                st.failing_total - 20,
                status::FAILING_LISTED
            ));
        }
    }
    Ok(())
}

pub(crate) async fn list(args: &RunsArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let runs = store.list_runs(args.limit).await?;
    out.json(&json!(runs.iter().map(run_line_json).collect::<Vec<_>>()));
    if runs.is_empty() {
        out.line(format!("no runs in {}", store.url_redacted()));
        return Ok(());
    }
    out.line(format!(
        "{:<36}  {:<10}  {:<24}  {:>10}  {:<20}  reason",
        "run", "state", "spec", "partitions", "created"
    ));
    for r in runs {
        out.line(format!(
            "{:<36}  {:<10}  {:<24}  {:>10}  {:<20}  {}",
            r.id,
            r.state.as_str(),
            r.spec_name,
            r.partitions_total,
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.reason
        ));
    }
    Ok(())
}

/// One run in `backfill runs --json` (and the API's `/api/runs`).
pub(crate) fn run_line_json(r: &backfill_store::RunRecord) -> serde_json::Value {
    json!({
        "run_id": r.id,
        "spec": r.spec_name,
        "state": r.state.as_str(),
        "owner": r.owner,
        "reason": r.reason,
        "partitions": r.partitions_total,
        "created_at": r.created_at.to_rfc3339(),
    })
}

/// The limits, rate, budget and breaker lines of `status`, from the executing process's last
/// report and the last rate change.
fn control_lines(
    live: &serde_json::Value,
    rate: Option<&backfill_store::RateChangeRecord>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if live.is_null() {
        return lines;
    }
    let limit = |v: &serde_json::Value| match v.as_f64() {
        Some(n) => thousands(n as u64),
        None => "no limit".to_owned(),
    };
    lines.push(format!(
        "  limits:     rows/s {}, batches/s {}, concurrency {}",
        limit(&live["rows_per_second"]),
        limit(&live["batches_per_second"]),
        live["concurrency"].as_u64().unwrap_or(0)
    ));
    if let Some(rate) = rate {
        let value = rate.rate.map_or("no limit".to_owned(), |r| {
            format!("{} rows/s", thousands(r as u64))
        });
        lines.push(format!(
            "  rate:       {value} (cause: {}, since {})",
            rate.cause, rate.at
        ));
    }
    if let Some(adaptive) = live.get("adaptive").filter(|a| !a.is_null()) {
        let ms = |k: &str| {
            adaptive[k]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.2} ms"))
        };
        lines.push(format!(
            "  probe:      p90 {} vs baseline p90 {} (cuts above {}); adaptive rate {} rows/s ({})",
            ms("p90_ms"),
            ms("baseline_p90_ms"),
            ms("limit_p90_ms"),
            thousands(adaptive["enforced_rows_per_second"].as_u64().unwrap_or(0)),
            adaptive["cause"].as_str().unwrap_or("-")
        ));
        if let Some(error) = adaptive["probe_error"].as_str() {
            lines.push(format!("  probe error: {error}"));
        }
        if let Some(line) = watch_line(&adaptive["watch"]) {
            lines.push(line);
        }
    }
    if let Some(budget) = live["budget"].as_array().filter(|b| !b.is_empty()) {
        let parts: Vec<String> = budget
            .iter()
            .map(|l| {
                let used = l["used"].as_f64().unwrap_or(0.0);
                let max = l["limit"].as_f64().unwrap_or(0.0);
                let pct = if max > 0.0 { used / max * 100.0 } else { 0.0 };
                format!(
                    "{} {used:.0}/{max:.0} ({pct:.0}%)",
                    l["kind"].as_str().unwrap_or("?")
                )
            })
            .collect();
        lines.push(format!("  budget:     {}", parts.join(", ")));
    }
    if let Some(cost) = live.get("cost").filter(|c| !c.is_null()) {
        lines.push(format!(
            "  cost:       {} so far, {} to complete",
            cost["so_far"].as_str().unwrap_or("-"),
            cost["to_complete"].as_str().unwrap_or("-")
        ));
    }
    if let Some(rate) = live["breaker_error_rate"].as_f64().filter(|r| *r > 0.0) {
        lines.push(format!(
            "  breaker:    {:.0}% of recent batches failed",
            rate * 100.0
        ));
    }
    if let Some(closes) = live["window_closes_at"].as_str() {
        lines.push(format!("  window:     open until {closes}"));
    }
    if let Some(order) = live["order"].as_str() {
        lines.push(format!("  order:      {order}"));
    }
    lines
}

/// The adaptive throttle's watched database in `status`: the live statements' mean time per
/// call and the live transactions' time (with the round trip counted in its allowed rise)
/// against their baselines and limits, the gauges, and the signals it does not offer; `None`
/// when the run watches nothing.
fn watch_line(watch: &serde_json::Value) -> Option<String> {
    let ms = |k: &str| watch[k].as_f64().map(|v| format!("{v:.2} ms"));
    let mut parts = Vec::new();
    if let Some(base) = ms("baseline_mean_ms") {
        parts.push(format!(
            "mean {} per call vs baseline {base} (cuts above {}; {} calls)",
            ms("mean_ms").unwrap_or_else(|| "-".to_owned()),
            ms("limit_mean_ms").unwrap_or_else(|| "-".to_owned()),
            watch["calls"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(base) = ms("baseline_transaction_ms") {
        parts.push(format!(
            "{} per transaction vs baseline {base} (+{} round trip, cuts above {}; {} \
             transactions)",
            ms("transaction_ms").unwrap_or_else(|| "-".to_owned()),
            ms("round_trip_ms").unwrap_or_else(|| "-".to_owned()),
            ms("limit_transaction_ms").unwrap_or_else(|| "-".to_owned()),
            watch["transactions"].as_u64().unwrap_or(0)
        ));
    }
    if let (None, Some(trip)) = (ms("baseline_transaction_ms"), ms("round_trip_ms")) {
        parts.push(format!(
            "round trip {trip} at rest (not counted: no transactions baseline)"
        ));
    }
    if let Some(n) = watch["drift_followed"].as_u64().filter(|n| *n > 0) {
        parts.push(format!(
            "baseline moved {n} time(s) with live traffic's drift at the floor"
        ));
    }
    let checks = &watch["rest_checks"];
    if checks["holding"].as_bool() == Some(true) {
        parts.push("holding the backfill to measure live traffic at rest".to_owned());
    }
    if let Some(n) = checks["done"].as_u64().filter(|n| *n > 0) {
        parts.push(format!(
            "{n} rest check(s): {} cut the rate, {} kept it where live traffic was as slow at \
             rest",
            checks["cut"].as_u64().unwrap_or(0),
            checks["spared"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(n) = watch["waiting"].as_u64() {
        parts.push(format!("{n} waiting on WAL or I/O"));
    }
    if let Some(n) = watch["running"].as_u64() {
        parts.push(format!("{n} threads running"));
    }
    for missing in watch["unavailable"].as_array().into_iter().flatten() {
        parts.push(format!(
            "no {} ({})",
            missing["signal"].as_str().unwrap_or("?"),
            missing["reason"].as_str().unwrap_or("?")
        ));
    }
    (!parts.is_empty()).then(|| format!("  watch:      {}", parts.join("; ")))
}
