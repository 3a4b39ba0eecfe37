//! What `plan` shows of issue 11's gates: the partitions the source is not ready for
//! (`source.ready`).

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
