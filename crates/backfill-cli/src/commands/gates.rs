//! Issue 11's gates on the command line: what `plan` shows of source readiness (the
//! partitions `source.ready` says are not ready), and `backfill approve`, the canary's gate.

use backfill_core::Spec;
use backfill_core::plan::Plan;
use backfill_engine::gates::{READINESS_CHECK_CAP, Readiness, source_readiness};
use serde_json::json;

use crate::UserError;
use crate::commands::thousands;
use crate::output::Output;

/// Not-ready partitions listed by `plan` (the count covers them all).
const LISTED: usize = 20;

/// Runs `source.ready` for the plan's partitions (`None` without one). A failing ready query
/// is the user's error, naming `source.ready`.
pub(crate) async fn readiness(spec: &Spec, plan: &Plan) -> anyhow::Result<Option<Readiness>> {
    source_readiness(spec, plan).await.map_err(|e| {
        UserError::new(format!("source.ready: {e}"))
            .hint(
                "the ready query runs in the source with `:start` and `:end` bound to each \
                 partition's window and must return one value: true or a non-zero count when \
                 the window's data is complete",
            )
            .into()
    })
}

/// `plan --json`'s `source_ready` object.
pub(crate) fn readiness_json(ready: Option<&Readiness>) -> serde_json::Value {
    match ready {
        None => serde_json::Value::Null,
        Some(r) => json!({
            "checked": r.checked,
            "total": r.total,
            "capped": r.checked < r.total,
            "not_ready": r.not_ready.len(),
            "not_ready_partitions": r.not_ready.iter().map(|p| json!({
                "index": p.index,
                "id": p.id,
                "window": p.window.to_string(),
            })).collect::<Vec<_>>(),
        }),
    }
}

/// `plan`'s readiness lines.
pub(crate) fn print_readiness(ready: Option<&Readiness>, out: Output) {
    let Some(r) = ready else {
        return;
    };
    let scope = if r.checked < r.total {
        format!(
            " (checked the first {} of {} partitions: at most {READINESS_CHECK_CAP})",
            thousands(r.checked as u64),
            thousands(r.total as u64)
        )
    } else {
        String::new()
    };
    if r.not_ready.is_empty() {
        out.line(format!("  source:     ready for every partition{scope}"));
        return;
    }
    out.line(format!(
        "  source:     NOT READY for {} partition(s){scope}; a run waits for them (`waiting_source`) up to `source.ready_timeout`",
        thousands(r.not_ready.len() as u64)
    ));
    for p in r.not_ready.iter().take(LISTED) {
        out.line(format!(
            "              not ready: {:<6} {} {}",
            p.index, p.id, p.window
        ));
    }
    if r.not_ready.len() > LISTED {
        out.line(format!(
            "              … and {} more (`plan --json` lists them all)",
            r.not_ready.len() - LISTED
        ));
    }
}

/// `backfill approve RUN [--reason TEXT]`.
pub(crate) async fn approve(
    args: &crate::args::ApproveArgs,
    state: &str,
    out: Output,
) -> anyhow::Result<()> {
    let store = crate::commands::open_store(state).await?;
    let run = crate::commands::run::find_run(&store, &args.run).await?;
    let actor = crate::commands::whoami();
    match store
        .approve_run(&run.id, &actor, args.reason.as_deref())
        .await
    {
        Ok(()) => {}
        Err(backfill_store::StoreError::IllegalTransition { from, .. }) => {
            return Err(UserError::new(format!(
                "run {} is {from}: only a run awaiting approval can be approved",
                run.id
            ))
            .hint(
                "a run awaits approval after its canary passed, when the spec says `[canary] \
                 require_approval = true`; `backfill status RUN` shows its state",
            )
            .into());
        }
        Err(e) => return Err(e.into()),
    }
    let controls = store.controls(&run.id).await?;
    let process = crate::commands::control::live_process(&controls);
    out.json(&json!({
        "run_id": run.id,
        "approved_by": actor,
        "reason": args.reason,
        "process": process,
    }));
    out.line(format!("approved run {} ({actor})", run.id));
    match process {
        Some(p) => out.line(format!("  {p} continues with the rest of the run")),
        None => out.line(format!(
            "  no process is executing it: `backfill resume {}` continues it",
            run.id
        )),
    }
    Ok(())
}

/// `status`'s canary lines: its partitions with their state and rows, and how to approve.
pub(crate) fn print_canary(
    run: &backfill_store::RunRecord,
    canary: Option<&serde_json::Value>,
    out: Output,
) {
    let Some(canary) = canary else {
        return;
    };
    out.line(format!(
        "  canary:     {} (seed {})",
        canary["outcome"].as_str().unwrap_or("?"),
        canary["seed"]
    ));
    let results = canary["results"].as_array();
    for p in canary["partitions"].as_array().into_iter().flatten() {
        let result = results
            .into_iter()
            .flatten()
            .find(|r| r["partition_id"] == p["partition_id"]);
        let detail = result.map_or("not run yet".to_owned(), |r| {
            format!(
                "{}, {} rows read, {} written",
                r["state"].as_str().unwrap_or("?"),
                r["rows_read"],
                r["rows_written"]
            )
        });
        out.line(format!(
            "              {:<8} {} {}: {detail}",
            p["why"].as_str().unwrap_or("?"),
            p["partition_id"].as_str().unwrap_or("?"),
            p["window"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(by) = canary["approved_by"].as_str() {
        out.line(format!("              approved by {by}"));
    } else if run.state == backfill_core::RunState::AwaitingApproval {
        out.line(format!(
            "              awaiting approval: `backfill approve {} --reason …`",
            run.id
        ));
    }
}

/// What a stopped run awaiting approval tells the user.
pub(crate) fn awaiting_note(run_id: &str) -> String {
    format!(
        "run awaits approval: its canary passed (`backfill status {run_id}` shows its partitions); \
         `backfill approve {run_id} --reason …`, then `backfill resume {run_id}` runs the rest"
    )
}

/// Whether run `run_id` failed at its canary.
pub(crate) async fn canary_failed(store: &backfill_store::Store, run_id: &str) -> bool {
    matches!(store.canary(run_id).await, Ok(Some(c)) if c["outcome"] == "failed")
}
