//! `/metrics`: the Prometheus text exposition (format 0.0.4) of the store's runs, computed at
//! each scrape from the same aggregates as `backfill status`.
//!
//! Runs exposed: every unfinished run, and runs that finished within [`RECENT`] (so the last
//! value of a run that just ended is seen and its alerts resolve), at most [`MAX_RUNS`] of the
//! newest. Labels are `run_id` and `spec`, plus one small closed set where a metric needs it
//! (`state`, `outcome`, `result`, `cause`, `kind`); never a partition id.
//!
//! The article's metrics: M1 progress (`backfill_run_partitions`, `…_planned`), M2
//! throughput (`backfill_run_rows`, `…_rows_per_second`), M3 success rate
//! (`backfill_run_success_ratio`), M4 errors and retries (`backfill_run_attempt_errors_total`
//! of `backfill_run_attempts_total`: the error budget's burn, `backfill_run_retries_total`,
//! `backfill_run_failing_partitions`, and `…_by_class`), M5 the rate limit and
//! its cause, M6 the serving process's CPU and memory (`process_*`), M7 the probe's latency
//! against its baseline and the replica lag, M8 reconciliation (`backfill_run_reconciled_partitions`), M9 budget
//! and ETA (`backfill_run_budget_used_ratio`, `backfill_run_cost`, `backfill_run_eta_seconds`), M10 audit events
//! (`backfill_audit_events`), `[slo]` objectives (`backfill_run_slo_*`: burn rates over 5m and
//! 1h, error budget used, deadline and projected completion), and liveness (`backfill_run_executing`,
//! `backfill_run_heartbeat_age_seconds`) for a stalled-run alert.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use backfill_core::PartitionState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{ApiError, AppState};
use crate::commands::status::{StatusView, UndoRows};

/// How long a finished run stays exposed.
pub(crate) const RECENT: Duration = Duration::from_secs(24 * 3600);
/// The most runs exposed (the newest).
pub(crate) const MAX_RUNS: usize = 50;
/// Runs read to find them.
const RUNS_READ: u32 = 500;

/// The `Content-Type` of the text exposition.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

/// `GET /metrics`.
pub(crate) async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let text = exposition(&app)
        .await
        .map_err(|e| ApiError::from_anyhow(&e))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// The metric families, registered in one registry.
struct Families {
    info: Family<Labels, GaugeF>,
    partitions: Family<Labels, GaugeF>,
    planned: Family<Labels, GaugeF>,
    rows: Family<Labels, GaugeF>,
    rows_per_second: Family<Labels, GaugeF>,
    success: Family<Labels, GaugeF>,
    errors: Family<Labels, CounterF>,
    attempts: Family<Labels, CounterF>,
    retries: Family<Labels, CounterF>,
    failing: Family<Labels, GaugeF>,
    failing_by_class: Family<Labels, GaugeF>,
    rate_limit: Family<Labels, GaugeF>,
    probe_p90: Family<Labels, GaugeF>,
    probe_baseline: Family<Labels, GaugeF>,
    replica_lag: Family<Labels, GaugeF>,
    cost: Family<Labels, GaugeF>,
    reconciled: Family<Labels, GaugeF>,
    budget: Family<Labels, GaugeF>,
    eta: Family<Labels, GaugeF>,
    elapsed: Family<Labels, GaugeF>,
    executing: Family<Labels, GaugeF>,
    heartbeat_age: Family<Labels, GaugeF>,
    slo_success: Family<Labels, GaugeF>,
    slo_latency: Family<Labels, GaugeF>,
    slo_burn: Family<Labels, GaugeF>,
    slo_budget_used: Family<Labels, GaugeF>,
    slo_deadline: Family<Labels, GaugeF>,
    slo_projected: Family<Labels, GaugeF>,
}

/// A metric family's name (without the `_total` of a counter or the unit's suffix), help
/// and unit.
struct Def {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
}

const INFO: Def = Def {
    name: "backfill_run_info",
    help: "A run of the store (1), with its state",
    unit: None,
};
const PARTITIONS: Def = Def {
    name: "backfill_run_partitions",
    help: "Partitions of the run in each state",
    unit: None,
};
const PLANNED: Def = Def {
    name: "backfill_run_partitions_planned",
    help: "Partitions of the run's plan (splits count their children)",
    unit: None,
};
const ROWS: Def = Def {
    name: "backfill_run_rows",
    help: "Rows of the run by outcome: read, inserted, updated, unchanged, deleted, affected (sql mode); a gauge, as a replace attempt that starts over zeroes its partition's counts",
    unit: None,
};
const ROWS_PER_SECOND: Def = Def {
    name: "backfill_run_rows_per_second",
    help: "Rows read per second of the run's wall time",
    unit: None,
};
const SUCCESS: Def = Def {
    name: "backfill_run_success_ratio",
    help: "Share of the run's partitions done (0 to 1)",
    unit: None,
};
const ERRORS: Def = Def {
    name: "backfill_run_attempt_errors",
    help: "Partition attempts that ended in an error",
    unit: None,
};
const ATTEMPTS: Def = Def {
    name: "backfill_run_attempts",
    help: "Partition attempts started (the error budget's denominator)",
    unit: None,
};
const RETRIES: Def = Def {
    name: "backfill_run_retries",
    help: "Partition attempts after the first",
    unit: None,
};
const FAILING: Def = Def {
    name: "backfill_run_failing_partitions",
    help: "Partitions failed, or not finished with an error on record",
    unit: None,
};
const FAILING_BY_CLASS: Def = Def {
    name: "backfill_run_failing_partitions_by_class",
    help: "Failing partitions by the class of their last error: transient, unavailable, permanent, data, reconcile_mismatch, source_not_ready, split (unknown: recorded before classes were)",
    unit: None,
};
const RATE_LIMIT: Def = Def {
    name: "backfill_run_rate_limit_rows_per_second",
    help: "The run's current rate limit and why (cause); absent without a limit",
    unit: None,
};
const PROBE_P90: Def = Def {
    name: "backfill_run_probe_latency_p90",
    help: "The adaptive throttle's probe latency, p90",
    unit: Some(Unit::Seconds),
};
const PROBE_BASELINE: Def = Def {
    name: "backfill_run_probe_baseline_p90",
    help: "The probe latency at rest, p90: the throttle's baseline",
    unit: Some(Unit::Seconds),
};
const REPLICA_LAG: Def = Def {
    name: "backfill_run_replica_lag",
    help: "The watched replica's lag as the adaptive throttle last read it; absent without `max_replica_lag`",
    unit: Some(Unit::Seconds),
};
const COST: Def = Def {
    name: "backfill_run_cost",
    help: "Money by `kind`: spent so far, and projected to complete at the pace so far, in the cost model's `currency`; absent without `limits.budget.cost`",
    unit: None,
};
const RECONCILED: Def = Def {
    name: "backfill_run_reconciled_partitions",
    help: "Partitions by their last reconciliation: verified, mismatched, not_verified",
    unit: None,
};
const BUDGET: Def = Def {
    name: "backfill_run_budget_used_ratio",
    help: "Share of each budget limit used (kind: rows, duration, partitions, cost…)",
    unit: None,
};
const ETA: Def = Def {
    name: "backfill_run_eta",
    help: "Estimated time to finish at the pace so far; absent when unknown",
    unit: Some(Unit::Seconds),
};
const ELAPSED: Def = Def {
    name: "backfill_run_elapsed",
    help: "Time since the run first started (until it finished)",
    unit: Some(Unit::Seconds),
};
const EXECUTING: Def = Def {
    name: "backfill_run_executing",
    help: "1 while a live process executes the run",
    unit: None,
};
const HEARTBEAT_AGE: Def = Def {
    name: "backfill_run_heartbeat_age",
    help: "Time since the executing process's last heartbeat; absent before any",
    unit: Some(Unit::Seconds),
};

const SLO_SUCCESS: Def = Def {
    name: "backfill_run_slo_success_ratio_objective",
    help: "The run's `[slo] success_rate`: the share of attempts that should succeed",
    unit: None,
};
const SLO_LATENCY: Def = Def {
    name: "backfill_run_slo_max_latency_increase_objective",
    help: "The run's `[slo] max_latency_increase`: the live latency's allowed rise over its baseline (0.10 is +10%)",
    unit: None,
};
const SLO_BURN: Def = Def {
    name: "backfill_run_slo_burn_rate",
    help: "The error budget's burn rate over a window (5m, 1h) as the executing process last saw it: failed attempts over attempts, divided by 1 - success_rate",
    unit: None,
};
const SLO_BUDGET_USED: Def = Def {
    name: "backfill_run_slo_error_budget_used_ratio",
    help: "Failed attempts of the whole run over the error budget, (1 - success_rate) x partitions",
    unit: None,
};
const SLO_DEADLINE: Def = Def {
    name: "backfill_run_slo_deadline_timestamp",
    help: "When the run should complete: its creation plus `[slo] complete_within` (Unix time)",
    unit: Some(Unit::Seconds),
};
const SLO_PROJECTED: Def = Def {
    name: "backfill_run_slo_projected_completion_timestamp",
    help: "When the run is projected to complete: now plus the ETA, or when it finished (Unix time)",
    unit: Some(Unit::Seconds),
};

impl Families {
    fn register(r: &mut Registry) -> Families {
        fn gauge(r: &mut Registry, def: &Def) -> Family<Labels, GaugeF> {
            let family = Family::<Labels, GaugeF>::default();
            register(r, def, family.clone());
            family
        }
        fn counter(r: &mut Registry, def: &Def) -> Family<Labels, CounterF> {
            let family = Family::<Labels, CounterF>::default();
            register(r, def, family.clone());
            family
        }
        Families {
            info: gauge(r, &INFO),
            partitions: gauge(r, &PARTITIONS),
            planned: gauge(r, &PLANNED),
            rows: gauge(r, &ROWS),
            rows_per_second: gauge(r, &ROWS_PER_SECOND),
            success: gauge(r, &SUCCESS),
            errors: counter(r, &ERRORS),
            attempts: counter(r, &ATTEMPTS),
            retries: counter(r, &RETRIES),
            failing: gauge(r, &FAILING),
            failing_by_class: gauge(r, &FAILING_BY_CLASS),
            rate_limit: gauge(r, &RATE_LIMIT),
            probe_p90: gauge(r, &PROBE_P90),
            probe_baseline: gauge(r, &PROBE_BASELINE),
            replica_lag: gauge(r, &REPLICA_LAG),
            cost: gauge(r, &COST),
            reconciled: gauge(r, &RECONCILED),
            budget: gauge(r, &BUDGET),
            eta: gauge(r, &ETA),
            elapsed: gauge(r, &ELAPSED),
            executing: gauge(r, &EXECUTING),
            heartbeat_age: gauge(r, &HEARTBEAT_AGE),
            slo_success: gauge(r, &SLO_SUCCESS),
            slo_latency: gauge(r, &SLO_LATENCY),
            slo_burn: gauge(r, &SLO_BURN),
            slo_budget_used: gauge(r, &SLO_BUDGET_USED),
            slo_deadline: gauge(r, &SLO_DEADLINE),
            slo_projected: gauge(r, &SLO_PROJECTED),
        }
    }
}

/// Registers `metric` as `def` says.
fn register(r: &mut Registry, def: &Def, metric: impl prometheus_client::registry::Metric) {
    match &def.unit {
        Some(unit) => r.register_with_unit(def.name, def.help, unit.clone(), metric),
        None => r.register(def.name, def.help, metric),
    }
}

/// The metrics reference, `docs/metrics.md` (written by `backfill docs`): every metric
/// `/metrics` can carry, with its type, labels and help, read from an exposition in which
/// each family holds one example series.
pub(crate) fn reference_markdown() -> String {
    let mut registry = Registry::default();
    let families = Families::register(&mut registry);
    fill_example(&families);
    register_store_and_process(&mut registry, 0, Some(0.0), Some(0.0));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("encoding to a String cannot fail");
    let mut out = String::from(
        "# Metrics reference\n\n<!-- Generated from crates/backfill-cli/src/serve/metrics.rs by \
         `cargo run -p backfill-cli -- docs`; do not edit by hand. -->\n\n\
         What `GET /metrics` of `backfill serve` (and of `backfill run --metrics-addr`) \
         exposes, in the Prometheus text format 0.0.4. A run's series carry `run_id` and `spec`; \
         a family without a value for a run (no ETA yet, no rate limit, no probe) has no series \
         for it. Alert rules over these: `deploy/prometheus/alerts.yml`.\n\n\
         | metric | type | labels | meaning |\n|---|---|---|---|\n",
    );
    let mut help = std::collections::BTreeMap::new();
    let mut kind = std::collections::BTreeMap::new();
    let mut labels = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            kind.insert(name.to_owned(), text.to_owned());
        } else if let Some((name, rest)) = line.split_once('{') {
            let keys: Vec<String> = rest
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(k, _)| format!("`{k}`")))
                .collect();
            labels.insert(name.to_owned(), keys.join(", "));
        }
    }
    for (name, text) in &help {
        out.push_str(&format!(
            "| `{name}` | {} | {} | {text} |\n",
            kind.get(name).map_or("", String::as_str),
            labels.get(name).map_or("–", String::as_str),
        ));
    }
    out
}

/// One example series in every family (the reference's exposition). Destructured whole, so
/// a family added to [`Families`] without an example does not compile.
fn fill_example(f: &Families) {
    let Families {
        info,
        partitions,
        planned,
        rows,
        rows_per_second,
        success,
        errors,
        attempts,
        retries,
        failing,
        failing_by_class,
        rate_limit,
        probe_p90,
        probe_baseline,
        replica_lag,
        cost,
        reconciled,
        budget,
        eta,
        elapsed,
        executing,
        heartbeat_age,
        slo_success,
        slo_latency,
        slo_burn,
        slo_budget_used,
        slo_deadline,
        slo_projected,
    } = f;
    let base = || -> Labels {
        vec![
            ("run_id".to_owned(), "RUN".to_owned()),
            ("spec".to_owned(), "SPEC".to_owned()),
        ]
    };
    let with = |key: &str| {
        let mut labels = base();
        labels.push((key.to_owned(), "…".to_owned()));
        labels
    };
    info.get_or_create(&with("state")).set(1.0);
    partitions.get_or_create(&with("state")).set(0.0);
    rows.get_or_create(&with("outcome")).set(0.0);
    rate_limit.get_or_create(&with("cause")).set(0.0);
    failing_by_class.get_or_create(&with("class")).set(0.0);
    reconciled.get_or_create(&with("result")).set(0.0);
    budget.get_or_create(&with("kind")).set(0.0);
    let mut cost_labels = with("kind");
    cost_labels.push(("currency".to_owned(), "…".to_owned()));
    cost.get_or_create(&cost_labels).set(0.0);
    slo_burn.get_or_create(&with("window")).set(0.0);
    for family in [
        planned,
        rows_per_second,
        success,
        failing,
        probe_p90,
        probe_baseline,
        replica_lag,
        eta,
        elapsed,
        executing,
        heartbeat_age,
        slo_success,
        slo_latency,
        slo_budget_used,
        slo_deadline,
        slo_projected,
    ] {
        family.get_or_create(&base()).set(0.0);
    }
    for family in [errors, attempts, retries] {
        family.get_or_create(&base()).inc_by(0.0);
    }
}

/// The exposition of the store's recent runs, the store's audit chain and this process.
async fn exposition(app: &AppState) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    let families = Families::register(&mut registry);
    let now = chrono::Utc::now();
    let recent = chrono::TimeDelta::from_std(RECENT).unwrap_or(chrono::TimeDelta::MAX);
    let runs: Vec<_> = app
        .store
        .list_runs(RUNS_READ)
        .await?
        .into_iter()
        .filter(|r| r.state.is_unfinished() || r.finished_at.is_none_or(|t| now - t <= recent))
        .take(MAX_RUNS)
        .collect();
    for run in runs {
        let view = StatusView::load(&app.store, run, UndoRows::Skip).await?;
        let executing = view.process.is_some() || app.executes(&view.run.id);
        record_run(&families, &view, executing, now);
        let classes = app.store.failing_by_class(&view.run.id).await?;
        for (class, n) in classes {
            let labels = vec![
                ("run_id".to_owned(), view.run.id.clone()),
                ("spec".to_owned(), view.run.spec_name.clone()),
                (
                    "class".to_owned(),
                    class.unwrap_or_else(|| "unknown".to_owned()),
                ),
            ];
            families
                .failing_by_class
                .get_or_create(&labels)
                .set(n as f64);
        }
    }
    let events = app.store.audit_event_count().await?;
    register_store_and_process(
        &mut registry,
        events,
        process_cpu_seconds(),
        process_resident_bytes(),
    );
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One run's series.
fn record_run(
    f: &Families,
    view: &StatusView,
    executing: bool,
    now: chrono::DateTime<chrono::Utc>,
) {
    let run = &view.run;
    let base: Labels = vec![
        ("run_id".to_owned(), run.id.clone()),
        ("spec".to_owned(), run.spec_name.clone()),
    ];
    let with = |key: &str, value: &str| {
        let mut labels = base.clone();
        labels.push((key.to_owned(), value.to_owned()));
        labels
    };
    f.info
        .get_or_create(&with("state", run.state.as_str()))
        .set(1.0);
    for (state, n) in &view.st.by_state {
        f.partitions
            .get_or_create(&with("state", state.as_str()))
            .set(*n as f64);
    }
    f.planned
        .get_or_create(&base)
        .set(view.totals.total() as f64);
    let c = &view.st.counts;
    for (outcome, n) in [
        ("read", c.read),
        ("inserted", c.inserted),
        ("updated", c.updated),
        ("unchanged", c.unchanged),
        ("deleted", c.deleted),
        ("affected", c.affected),
    ] {
        f.rows
            .get_or_create(&with("outcome", outcome))
            .set(n as f64);
    }
    f.rows_per_second
        .get_or_create(&base)
        .set(view.st.rows_per_second);
    f.success.get_or_create(&base).set(view.st.success_rate);
    f.errors
        .get_or_create(&base)
        .inc_by(view.totals.errors as f64);
    f.attempts
        .get_or_create(&base)
        .inc_by((view.totals.started + view.totals.retries) as f64);
    f.retries
        .get_or_create(&base)
        .inc_by(view.totals.retries as f64);
    f.failing
        .get_or_create(&base)
        .set(view.totals.failing as f64);
    record_production(f, view, &base);
    for (result, n) in [
        ("verified", view.checks.verified),
        ("mismatched", view.checks.mismatched),
        ("not_verified", view.checks.not_verified),
    ] {
        f.reconciled
            .get_or_create(&with("result", result))
            .set(n as f64);
    }
    for limit in view.live["budget"].as_array().into_iter().flatten() {
        let (Some(kind), Some(used), Some(max)) = (
            limit["kind"].as_str(),
            limit["used"].as_f64(),
            limit["limit"].as_f64(),
        ) else {
            continue;
        };
        if max > 0.0 {
            f.budget.get_or_create(&with("kind", kind)).set(used / max);
        }
    }
    if let Some(eta) = view.st.eta_seconds {
        f.eta.get_or_create(&base).set(eta);
    }
    f.elapsed.get_or_create(&base).set(view.st.elapsed_seconds);
    f.executing
        .get_or_create(&base)
        .set(if executing { 1.0 } else { 0.0 });
    if let Some(beat) = view.controls.heartbeat_at {
        let age = (now - beat).to_std().unwrap_or_default();
        f.heartbeat_age.get_or_create(&base).set(age.as_secs_f64());
    }
    record_objective(f, view, &base);
    debug_assert!(PartitionState::ALL.len() == view.st.by_state.len());
}

/// What protects production, from the executing process's last report: the rate limit and
/// its cause, the probe's p90 against its baseline, the replica lag, and the money spent and
/// to complete.
fn record_production(f: &Families, view: &StatusView, base: &Labels) {
    let with = |pairs: &[(&str, &str)]| {
        let mut labels = base.clone();
        labels.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        labels
    };
    if let Some(rate) = view.rates.last()
        && let Some(limit) = rate.rate
    {
        f.rate_limit
            .get_or_create(&with(&[("cause", &rate.cause)]))
            .set(limit);
    }
    let adaptive = &view.live["adaptive"];
    for (family, key) in [
        (&f.probe_p90, "p90_ms"),
        (&f.probe_baseline, "baseline_p90_ms"),
        (&f.replica_lag, "lag_ms"),
    ] {
        if let Some(ms) = adaptive[key].as_f64() {
            family.get_or_create(base).set(ms / 1000.0);
        }
    }
    let cost = &view.live["cost"];
    for (kind, key) in [
        ("spent", "so_far_amount"),
        ("to_complete", "to_complete_amount"),
    ] {
        if let (Some(amount), Some(currency)) = (cost[key].as_f64(), cost["currency"].as_str()) {
            f.cost
                .get_or_create(&with(&[("kind", kind), ("currency", currency)]))
                .set(amount);
        }
    }
}

/// The `[slo]` series of one run, when its process reported an objective.
fn record_objective(f: &Families, view: &StatusView, base: &Labels) {
    let slo = view.objective();
    if slo.is_null() {
        return;
    }
    if let Some(rate) = slo["objective"]["success_rate"].as_f64() {
        f.slo_success.get_or_create(base).set(rate);
    }
    if let Some(rise) = slo["objective"]["max_latency_increase"].as_f64() {
        f.slo_latency.get_or_create(base).set(rise);
    }
    for (window, key) in [("5m", "short"), ("1h", "long")] {
        if let Some(burn) = slo["burn_rate"][key].as_f64() {
            let mut labels = base.clone();
            labels.push(("window".to_owned(), window.to_owned()));
            f.slo_burn.get_or_create(&labels).set(burn);
        }
    }
    if let Some(used) = slo["error_budget"]["used_ratio"].as_f64() {
        f.slo_budget_used.get_or_create(base).set(used);
    }
    let unix = |key: &str| {
        slo[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp() as f64)
    };
    if let Some(t) = unix("deadline") {
        f.slo_deadline.get_or_create(base).set(t);
    }
    if let Some(t) = unix("projected_completion") {
        f.slo_projected.get_or_create(base).set(t);
    }
}

/// The audit chain's length, and `process_cpu_seconds_total` and
/// `process_resident_memory_bytes` of this process (the conventional names; absent where
/// `/proc` does not tell).
fn register_store_and_process(
    registry: &mut Registry,
    audit_events: u64,
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
) {
    let audit = GaugeF::default();
    audit.set(audit_events as f64);
    registry.register(
        "backfill_audit_events",
        "Audit events in the store (the sequence number of the last one)",
        audit,
    );
    if let Some(cpu) = cpu_seconds {
        let counter = CounterF::default();
        counter.inc_by(cpu);
        registry.register_with_unit(
            "process_cpu",
            "CPU time of this process (user and system)",
            Unit::Seconds,
            counter,
        );
    }
    if let Some(bytes) = resident_bytes {
        let gauge = GaugeF::default();
        gauge.set(bytes);
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of this process",
            Unit::Bytes,
            gauge,
        );
    }
}

/// User plus system CPU seconds, from `/proc/self/stat` (fields 14 and 15, in the kernel's
/// fixed user-visible tick of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident set size in bytes, from `/proc/self/status` (`VmRSS`).
fn process_resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}
