//! The `[slo]` block of `status` (text and `--json`), the dashboard's API and `/metrics`:
//! the objective the executing process reported, the projected completion against its
//! deadline, the error budget used over the whole run, and the burn rates and guard stage of
//! the last report.

use backfill_core::slo::SloSpec;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::commands::duration;

/// The objective block, or null when the run's process never reported one (no `[slo]`).
/// The error budget here counts every failed attempt of the run, from the store: the same
/// definition as the engine's guard, over all sessions.
pub(crate) fn json(
    run: &backfill_store::RunRecord,
    totals: &backfill_store::PartitionTotals,
    eta_seconds: Option<f64>,
    live: &serde_json::Value,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let reported = &live["slo"];
    if reported.is_null() {
        return serde_json::Value::Null;
    }
    let objective = &reported["objective"];
    let slo = SloSpec {
        complete_within: objective["complete_within_seconds"]
            .as_u64()
            .map(std::time::Duration::from_secs),
        success_rate: objective["success_rate"].as_f64(),
        max_latency_increase: objective["max_latency_increase"].as_f64(),
    };
    let eta = eta_seconds
        .filter(|e| e.is_finite() && *e >= 0.0)
        .map(std::time::Duration::from_secs_f64);
    let projection = match run.finished_at {
        // A run that succeeded completed when it finished; one that failed or was cancelled
        // never completes (late once it ended past the deadline).
        Some(at) if run.state == backfill_core::RunState::Succeeded => {
            slo.projection(run.created_at, at, Some(std::time::Duration::ZERO))
        }
        Some(at) => slo.projection(run.created_at, at, None),
        None => slo.projection(run.created_at, now, eta),
    };
    let allowed = slo.error_budget(run.partitions_total);
    let used = totals.errors;
    #[allow(clippy::cast_precision_loss)]
    let used_ratio = allowed.map(|a| {
        if a > 0.0 {
            used as f64 / a
        } else {
            f64::INFINITY
        }
    });
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "objective": objective,
        "deadline": projection.map(|p| stamp(p.deadline)),
        "projected_completion": projection.and_then(|p| p.projected).map(stamp),
        "on_track": projection.and_then(|p| p.on_track),
        "error_budget": {
            "allowed": allowed,
            "used": used,
            "used_ratio": used_ratio.filter(|r| r.is_finite()),
        },
        "burn_rate": {
            "short": reported["burn_rate_short"],
            "long": reported["burn_rate_long"],
            "short_window_seconds": reported["short_window_seconds"],
            "long_window_seconds": reported["long_window_seconds"],
        },
        "stage": reported["stage"],
    })
}

/// The text lines of `status` for the block from [`json`]; none when it is null.
pub(crate) fn lines(slo: &serde_json::Value) -> Vec<String> {
    if slo.is_null() {
        return Vec::new();
    }
    let mut lines = Vec::new();
    if let Some(deadline) = slo["deadline"].as_str() {
        let projected = match (
            slo["projected_completion"].as_str(),
            slo["on_track"].as_bool(),
        ) {
            (Some(p), Some(true)) => format!("projected {p}: on track"),
            (Some(p), _) => {
                let late = DateTime::parse_from_rfc3339(p)
                    .ok()
                    .zip(DateTime::parse_from_rfc3339(deadline).ok())
                    .map(|(p, d)| (p - d).num_seconds().max(0) as f64)
                    .map(|s| format!(" by {}", duration(s)))
                    .unwrap_or_default();
                format!("projected {p}: LATE{late}")
            }
            (None, _) => "no projection yet".to_owned(),
        };
        lines.push(format!("  objective:  complete by {deadline}, {projected}"));
    }
    let budget = &slo["error_budget"];
    if let (Some(rate), Some(allowed)) = (
        slo["objective"]["success_rate"].as_f64(),
        budget["allowed"].as_f64(),
    ) {
        let burn = |w: &str| {
            slo["burn_rate"][w]
                .as_f64()
                .map_or("-".to_owned(), |b| format!("{b:.2}"))
        };
        let allowed = if allowed < 10.0 {
            format!("{allowed:.2}")
        } else {
            format!("{allowed:.0}")
        };
        lines.push(format!(
            "  error budget: {} of {allowed} failed attempts allowed at {}% success ({}); burn rate {} (5m), {} (1h)",
            budget["used"].as_u64().unwrap_or(0),
            rate * 100.0,
            budget["used_ratio"]
                .as_f64()
                .map_or("all used".to_owned(), |r| format!("{:.0}% used", r * 100.0)),
            burn("short"),
            burn("long"),
        ));
    }
    match slo["stage"].as_str() {
        Some("throttled") => lines.push(
            "  burn guard: throttled once for burning a budget; the next burn pauses the run"
                .to_owned(),
        ),
        Some("paused") => lines.push(
            "  burn guard: paused for burning a budget (`backfill resume RUN` continues, still throttled)"
                .to_owned(),
        ),
        _ => {}
    }
    lines
}
