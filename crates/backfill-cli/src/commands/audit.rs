//! `backfill audit [RUN] [--verify]`: the hash-chained record of every state change.

use serde_json::json;

use crate::Reported;
use crate::args::AuditArgs;
use crate::commands::open_store;
use crate::commands::run::find_run;
use crate::output::Output;

pub(crate) async fn run(args: &AuditArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    if args.verify {
        let check = store.verify_audit().await?;
        out.json(&json!({
            "ok": check.first_bad_seq.is_none(),
            "events": check.events,
            "first_bad_seq": check.first_bad_seq,
            "problem": check.problem,
        }));
        return match check.first_bad_seq {
            None => {
                out.line(format!("audit chain ok: {} events verified", check.events));
                Ok(())
            }
            Some(seq) => {
                out.line(format!(
                    "audit chain BROKEN at event {seq}: {}",
                    check.problem.unwrap_or_default()
                ));
                Err(Reported(1).into())
            }
        };
    }
    let run_id = match &args.run {
        Some(id) => Some(find_run(&store, id).await?.id),
        None => None,
    };
    let events = store.audit_events(run_id.as_deref()).await?;
    out.json(&json!(
        events
            .iter()
            .map(|e| json!({
                "seq": e.seq,
                "at": e.at.to_rfc3339(),
                "actor": e.actor,
                "action": e.action,
                "run_id": e.run_id,
                "partition_id": e.partition_id,
                "detail": e.detail,
                "hash": e.hash,
            }))
            .collect::<Vec<_>>()
    ));
    for e in &events {
        out.line(format!(
            "{:>6}  {}  {:<22} {:<20} {}  {}",
            e.seq,
            e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.action,
            e.partition_id.as_deref().unwrap_or("-"),
            e.actor,
            e.detail
        ));
    }
    Ok(())
}
