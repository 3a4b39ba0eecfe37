//! `backfill quarantine RUN [--retry]`: the rows the target rejected, and another chance.

use serde_json::json;

use crate::args::QuarantineArgs;
use crate::commands::run::find_run;
use crate::commands::{open_store, whoami};
use crate::output::Output;

pub(crate) async fn run(args: &QuarantineArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    if args.retry {
        let reopened = store.retry_quarantine(&run.id, &whoami()).await?;
        out.json(&json!({ "run_id": run.id, "reopened_partitions": reopened }));
        out.line(format!(
            "reopened {reopened} partition(s) of run {} with quarantined rows; continue with `backfill resume {}`",
            run.id, run.id
        ));
        return Ok(());
    }
    let rows = store.quarantined(&run.id).await?;
    out.json(&json!(
        rows.iter()
            .map(|r| json!({
                "partition_id": r.partition_id,
                "key": serde_json::from_str::<serde_json::Value>(&r.key).unwrap_or(json!(r.key)),
                "error": r.error,
                "row": r.row,
                "attempt": r.attempt,
                "at": r.at,
            }))
            .collect::<Vec<_>>()
    ));
    if rows.is_empty() {
        out.line(format!("run {} has no quarantined rows", run.id));
        return Ok(());
    }
    out.line(format!(
        "{} quarantined row(s) in run {}:",
        rows.len(),
        run.id
    ));
    for r in &rows {
        out.line(format!("  {} key {}: {}", r.partition_id, r.key, r.error));
        out.line(format!("      row {}", r.row));
    }
    out.line(format!(
        "fix the cause, then `backfill quarantine {} --retry` and `backfill resume {}`",
        run.id, run.id
    ));
    Ok(())
}
