//! `backfill status [RUN]` and `backfill runs`.

use backfill_engine::status;
use serde_json::json;

use crate::UserError;
use crate::args::{RunsArgs, StatusArgs};
use crate::commands::run::find_run;
use crate::commands::{duration, open_store, thousands};
use crate::output::Output;

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
    let partitions = store.partitions(&run.id).await?;
    let st = status::compute(&run, &partitions, chrono::Utc::now());
    out.json(&json!({
        "run_id": run.id,
        "spec": run.spec_name,
        "state": run.state.as_str(),
        "owner": run.owner,
        "reason": run.reason,
        "created_at": run.created_at.to_rfc3339(),
        "started_at": run.started_at.map(|t| t.to_rfc3339()),
        "finished_at": run.finished_at.map(|t| t.to_rfc3339()),
        "plan_hash": run.plan_hash,
        "guarantee": run.guarantee.map(|g| g.name()),
        "partitions": st.by_state.iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "partitions_total": partitions.len(),
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
        "failing": st.failing.iter().map(|f| json!({
            "partition_id": f.partition_id,
            "window": f.window,
            "state": f.state.as_str(),
            "attempts": f.attempts,
            "error": f.error,
        })).collect::<Vec<_>>(),
    }));
    out.line(format!(
        "run {} of `{}`: {}",
        run.id, run.spec_name, run.state
    ));
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
        partitions.len(),
        format_args!("{:.1}% done", st.success_rate * 100.0)
    ));
    out.line(format!(
        "  rows:       {} read, {} written ({} inserted, {} updated, {} deleted), {} unchanged",
        thousands(st.counts.read),
        thousands(st.counts.written()),
        thousands(st.counts.inserted),
        thousands(st.counts.updated),
        thousands(st.counts.deleted),
        thousands(st.counts.unchanged),
    ));
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
    if !st.failing.is_empty() {
        out.line(format!("  failing partitions ({}):", st.failing.len()));
        for f in st.failing.iter().take(20) {
            out.line(format!(
                "    {} {} [{}, {} attempts]: {}",
                f.partition_id, f.window, f.state, f.attempts, f.error
            ));
        }
        if st.failing.len() > 20 {
            out.line(format!(
                "    … and {} more (--json lists all)",
                st.failing.len() - 20
            ));
        }
    }
    Ok(())
}

pub(crate) async fn list(args: &RunsArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let runs = store.list_runs(args.limit).await?;
    out.json(&json!(
        runs.iter()
            .map(|r| json!({
                "run_id": r.id,
                "spec": r.spec_name,
                "state": r.state.as_str(),
                "owner": r.owner,
                "reason": r.reason,
                "partitions": r.partitions_total,
                "created_at": r.created_at.to_rfc3339(),
            }))
            .collect::<Vec<_>>()
    ));
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
