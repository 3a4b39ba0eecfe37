//! `backfill plan SPEC`: the deterministic partitions, row estimates and ETA.

use std::time::{Duration, Instant};

use backfill_connectors::open_source;
use backfill_core::plan::Plan;
use backfill_core::{Guarantee, Partition, Spec};
use serde_json::json;

use crate::args::PlanArgs;
use crate::commands::{duration, thousands};
use crate::output::Output;
use crate::specfile;

/// Counting stops after this long; the rest is extrapolated from the counted partitions.
const ESTIMATE_BUDGET: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: &PlanArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let (spec, _) = specfile::load(&args.spec, out)?;
    let plan = backfill_core::plan::plan(&spec)
        .map_err(|e| crate::UserError::new(format!("{}: {e}", args.spec.display())))?;
    let estimates = if args.no_estimate {
        None
    } else {
        estimate(&spec, &plan).await?
    };
    let ready = crate::commands::gates::readiness(&spec, &plan).await?;
    // Compared by URL: planning never creates the state store.
    let guarantee = Guarantee::of(
        &spec.target.mode,
        backfill_store::same_database_urls(state, spec.target.url.expose()),
    );
    print(
        &spec,
        &plan,
        estimates.as_ref(),
        ready.as_ref(),
        guarantee,
        args.all,
        out,
    );
    Ok(())
}

/// Row counts per partition (`None` where not counted) and whether they are exact.
pub(crate) struct Estimates {
    pub(crate) rows: Vec<Option<u64>>,
    pub(crate) total: u64,
    pub(crate) exact: bool,
}

/// Counts rows per partition in the source, within a time budget; the total is extrapolated
/// from an even sample when counting everything would take too long.
pub(crate) async fn estimate(spec: &Spec, plan: &Plan) -> anyhow::Result<Option<Estimates>> {
    // `sql` mode without `[source]`: nothing to count rows in.
    let Some(source) = &spec.source else {
        return Ok(None);
    };
    let source = open_source(source, spec.source_key(), 2).await?;
    let windows: Vec<backfill_core::Window> = plan.windows().collect();
    let n = windows.len();
    let mut rows = vec![None; n];
    let started = Instant::now();
    // Visit partitions in an order that samples evenly: strides of decreasing size.
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let mut stride = n.next_power_of_two().max(1);
    let mut seen = vec![false; n];
    while stride >= 1 {
        for i in (0..n).step_by(stride) {
            if !seen[i] {
                seen[i] = true;
                order.push(i);
            }
        }
        if stride == 1 {
            break;
        }
        stride /= 2;
    }
    for i in order {
        if started.elapsed() > ESTIMATE_BUDGET {
            break;
        }
        rows[i] = Some(source.count(&windows[i]).await?);
    }
    source.close().await;
    let counted: Vec<u64> = rows.iter().flatten().copied().collect();
    if counted.is_empty() && n > 0 {
        return Ok(None);
    }
    let exact = counted.len() == n;
    let sum: u64 = counted.iter().sum();
    let total = if exact {
        sum
    } else {
        (sum as f64 / counted.len() as f64 * n as f64) as u64
    };
    Ok(Some(Estimates { rows, total, exact }))
}

fn print(
    spec: &Spec,
    plan: &Plan,
    est: Option<&Estimates>,
    ready: Option<&backfill_engine::gates::Readiness>,
    guarantee: Guarantee,
    all: bool,
    out: Output,
) {
    // Only what is shown is kept: the plan cuts its partitions again on each pass.
    let n = plan.len();
    let first = plan.partitions().next();
    let last = plan.partitions().last();
    let rps = spec.limits.rows_per_second.map(|r| r.get());
    let eta = match (est, rps) {
        (Some(e), Some(r)) => Some(e.total as f64 / f64::from(r)),
        _ => None,
    };
    // The projected cost: rows from the estimate, time from the ETA (rate-limited runs).
    let cost = spec.limits.budget.cost.as_ref().and_then(|model| {
        let rows = est?.total;
        let time = std::time::Duration::from_secs_f64(eta.unwrap_or(0.0));
        Some((model, model.cost(rows, time), eta.is_some()))
    });
    let row = |p: &Partition| {
        json!({
            "index": p.index,
            "id": p.id,
            "window": p.window.to_string(),
            "estimated_rows": est.and_then(|e| e.rows[p.index]),
        })
    };
    let shown: Vec<Partition> = if all || n <= 8 {
        plan.partitions().collect()
    } else {
        plan.partitions()
            .take(5)
            .chain(plan.partitions().skip(n - 2))
            .collect()
    };
    out.json(&json!({
        "spec": spec.name,
        "spec_hash": spec.spec_hash,
        "plan_hash": plan.hash,
        "mode": spec.target.mode_name(),
        "partitions": n,
        "first": first.as_ref().map(|p| p.window.to_string()),
        "last": last.as_ref().map(|p| p.window.to_string()),
        "estimated_rows": est.map(|e| e.total),
        "estimate_exact": est.map(|e| e.exact),
        "rows_per_second_limit": rps,
        "eta_seconds": eta,
        "concurrency": spec.limits.concurrency.get(),
        "batch_rows": spec.limits.batch_rows.get(),
        "guarantee": guarantee.name(),
        "guarantee_explained": guarantee.explain(),
        "order": spec.limits.order.describe(),
        "window": spec.limits.window.as_ref().map(ToString::to_string),
        "budget": {
            "rows": spec.limits.budget.rows,
            "duration_seconds": spec.limits.budget.duration.map(|d| d.as_secs_f64()),
            "partitions": spec.limits.budget.partitions,
            "cost_max": spec.limits.budget.cost.as_ref().and_then(|c| c.max),
        },
        "projected_cost": cost.map(|(model, amount, with_time)| json!({
            "amount": amount,
            "currency": model.currency,
            "includes_time": with_time,
        })),
        "sample": shown.iter().map(row).collect::<Vec<_>>(),
        "reconciliation": reconciliation_json(spec),
        "source_ready": crate::commands::gates::readiness_json(ready),
    }));
    out.line(format!(
        "plan {} of spec `{}` ({} mode)",
        plan.hash,
        spec.name,
        spec.target.mode_name()
    ));
    out.line(format!("  partitions: {}", thousands(n as u64)));
    if let (Some(first), Some(last)) = (&first, &last) {
        out.line(format!("  first:      {}", first.window));
        out.line(format!("  last:       {}", last.window));
    }
    match est {
        Some(e) => out.line(format!(
            "  rows:       {}{}",
            thousands(e.total),
            if e.exact {
                ""
            } else {
                " (estimated from a sample of partitions)"
            }
        )),
        None if spec.source.is_none() => out.line(
            "  rows:       not estimated (`sql` mode without `[source]`; add one to count the rows of each window)",
        ),
        None => out.line("  rows:       not estimated"),
    }
    out.line(format!(
        "  limits:     concurrency {}, batch {} rows, {}",
        spec.limits.concurrency,
        thousands(u64::from(spec.limits.batch_rows.get())),
        rps.map_or("no rate limit".to_owned(), |r| format!(
            "{} rows/s",
            thousands(u64::from(r))
        ))
    ));
    out.line(format!(
        "  ETA:        {}",
        match eta {
            Some(s) => format!("{} at the rate limit", duration(s)),
            None if rps.is_none() => "bounded by the databases (no rate limit set)".to_owned(),
            None => "unknown (no row estimate)".to_owned(),
        }
    ));
    crate::commands::gates::print_readiness(ready, out);
    out.line(format!("  guarantee:  {}", guarantee.explain()));
    out.line(format!("  reconcile:  {}", reconciliation_text(spec)));
    out.line(format!("  order:      {}", spec.limits.order.describe()));
    if let Some(window) = &spec.limits.window {
        out.line(format!("  window:     runs only during {window}"));
    }
    let budget = &spec.limits.budget;
    let mut caps = Vec::new();
    if let Some(rows) = budget.rows {
        caps.push(format!("{} rows", thousands(rows)));
    }
    if let Some(d) = budget.duration {
        caps.push(format!("{} of running time", duration(d.as_secs_f64())));
    }
    if let Some(p) = budget.partitions {
        caps.push(format!("{} partitions", thousands(p)));
    }
    if let Some(max) = budget.cost.as_ref().and_then(|c| c.max) {
        caps.push(format!(
            "{} at most",
            budget
                .cost
                .as_ref()
                .map_or(String::new(), |c| c.format(max))
        ));
    }
    if !caps.is_empty() {
        out.line(format!(
            "  budget:     {} (the run pauses when one is spent)",
            caps.join(", ")
        ));
    }
    match (cost, &budget.cost) {
        (Some((model, amount, true)), _) => {
            out.line(format!("  cost:       {} projected", model.format(amount)));
        }
        (Some((model, amount, false)), _) => out.line(format!(
            "  cost:       {} projected for the rows, plus {} per hour of running time (no rate limit, so no ETA)",
            model.format(amount),
            model.format(model.per_hour)
        )),
        (None, Some(_)) => out.line("  cost:       unknown (no row estimate)"),
        (None, None) => {}
    }
    out.line("");
    out.line(format!(
        "  {:>6}  {:<18} {:<50} {:>12}",
        "#", "partition", "window", "rows"
    ));
    let mut previous: Option<usize> = None;
    for p in shown {
        if previous.is_some_and(|i| p.index > i + 1) {
            out.line(format!("  {:>6}", "…"));
        }
        previous = Some(p.index);
        let rows = est
            .and_then(|e| e.rows[p.index])
            .map_or("-".to_owned(), thousands);
        out.line(format!(
            "  {:>6}  {:<18} {:<50} {:>12}",
            p.index,
            p.id,
            p.window.to_string(),
            rows
        ));
    }
}

/// How runs of `spec` are reconciled after writing (`[validate]`), for `--json`.
fn reconciliation_json(spec: &Spec) -> serde_json::Value {
    use backfill_core::reconcile::{Reconcile, reconcile};
    let v = &spec.validate;
    match reconcile(spec) {
        Reconcile::Rows { window_column } => json!({
            "method": "fingerprints",
            "window_column": window_column,
            "columns": v.columns,
            "after_partition": v.after_partition,
            "at_end": v.at_end,
            "tolerance": v.tolerance,
        }),
        Reconcile::Checks => json!({
            "method": "checks",
            "after_partition": v.after_partition,
            "at_end": v.at_end,
        }),
        Reconcile::NotVerified { reason } => json!({
            "method": "none",
            "not_verified_reason": reason,
        }),
    }
}

/// `fingerprints by created_at after each partition and at the end, tolerance 0 rows`.
fn reconciliation_text(spec: &Spec) -> String {
    use backfill_core::reconcile::{Reconcile, reconcile};
    let v = &spec.validate;
    let when = match (v.after_partition, v.at_end) {
        (true, true) => "after each partition and at the end",
        (true, false) => "after each partition",
        _ => "at the end of the run",
    };
    match reconcile(spec) {
        Reconcile::Rows { window_column } => format!(
            "row count and checksum of both sides by `{window_column}`, {when}, tolerance {} rows",
            v.tolerance
        ),
        Reconcile::Checks => format!("`source_check` against `target_check`, {when}"),
        Reconcile::NotVerified { reason } => format!("not verified: {reason}"),
    }
}
