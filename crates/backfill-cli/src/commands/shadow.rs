//! `backfill promote RUN [--force]`, and what `rollback` and `cleanup` do for a shadow run
//! (swap back, drop the spare table): the
//! steps on a `mode = "shadow"` run's tables, from `backfill_engine::shadow`.
//!
//! A refusal (the run did not succeed, the live table changed, a table is missing) exits 2
//! with what to do; a database or store failure exits 1.

use backfill_engine::shadow::{self, ShadowError};
use serde_json::json;

use crate::args::PromoteArgs;
use crate::commands::run::{find_run, spec_of};
use crate::commands::{open_store, whoami};
use crate::output::Output;

pub(crate) async fn promote(args: &PromoteArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    let spec = spec_of(&run, args.spec.as_deref(), out)?;
    let promoted = shadow::promote(&store, &spec, &run.id, args.force, &whoami())
        .await
        .map_err(|e| refusal(e, &run.id))?;
    let lock_ms = promoted.lock.as_secs_f64() * 1000.0;
    let r = &promoted.record;
    out.json(&json!({
        "run_id": run.id,
        "promoted": true,
        "live_table": r.live_table,
        "old_table": r.old_table,
        "forced": promoted.forced,
        "overridden": promoted.overridden,
        "lock_ms": lock_ms,
    }));
    if let Some(why) = &promoted.overridden {
        out.note(format!("forced past: {why}"));
    }
    out.line(format!(
        "promoted run {}: {} is now the shadow's rows; the old table is kept as {} \
         (swap lock held {lock_ms:.1} ms)",
        run.id, r.live_table, r.old_table
    ));
    Ok(())
}

/// `backfill rollback RUN` of a shadow run: the old table is live again.
pub(crate) async fn swap_back(
    store: &backfill_store::Store,
    run: &backfill_store::RunRecord,
    spec_path: Option<&std::path::Path>,
    out: Output,
) -> anyhow::Result<()> {
    let spec = spec_of(run, spec_path, out)?;
    let swapped = shadow::swap_back(store, &spec, &run.id, &whoami())
        .await
        .map_err(|e| refusal(e, &run.id))?;
    let lock_ms = swapped.lock.as_secs_f64() * 1000.0;
    let r = &swapped.record;
    out.json(&json!({
        "run_id": run.id,
        "swapped_back": true,
        "live_table": r.live_table,
        "shadow_table": r.shadow_table,
        "lock_ms": lock_ms,
    }));
    out.line(format!(
        "swapped back run {}: {} holds its rows from before the promote again; the promoted \
         table is kept as {} (swap lock held {lock_ms:.1} ms)",
        run.id, r.live_table, r.shadow_table
    ));
    Ok(())
}

/// `backfill cleanup RUN` of a shadow run: drops the table that is not live.
pub(crate) async fn cleanup(
    store: &backfill_store::Store,
    run: &backfill_store::RunRecord,
    spec_path: Option<&std::path::Path>,
    out: Output,
) -> anyhow::Result<()> {
    let spec = spec_of(run, spec_path, out)?;
    let cleaned = shadow::cleanup(store, &spec, &run.id, &whoami())
        .await
        .map_err(|e| refusal(e, &run.id))?;
    out.json(&json!({ "run_id": run.id, "dropped": cleaned.dropped }));
    match &cleaned.dropped {
        Some(table) => out.line(format!("dropped {table} of run {}", run.id)),
        None => out.line(format!("run {} was already cleaned up", run.id)),
    }
    Ok(())
}

/// A refusal as the user's error (exit 2) with what to do; failures pass through (exit 1).
pub(crate) fn refusal(error: ShadowError, run_id: &str) -> anyhow::Error {
    if !error.is_refusal() {
        return error.into();
    }
    let hint = match &error {
        ShadowError::LiveChanged { .. } | ShadowError::NoFingerprint { .. } => format!(
            "someone wrote to the live table since the shadow was seeded; promoting discards \
             those writes. `backfill diff SPEC` shows the differences; `backfill promote \
             {run_id} --force` promotes anyway (audited), or `backfill run --new SPEC` makes a \
             fresh shadow"
        ),
        ShadowError::NotSucceeded { .. } => {
            format!("finish the run first: `backfill status {run_id}`, `backfill resume {run_id}`")
        }
        ShadowError::NotReconciled { .. } => format!(
            "`backfill status {run_id}` lists the mismatched partitions; fix and resume them"
        ),
        ShadowError::NotShadow { .. } => {
            "only a run of a `mode = \"shadow\"` spec that has started has a shadow table"
                .to_owned()
        }
        ShadowError::Name { .. } => "shorten target.table (or rename the table)".to_owned(),
        _ => format!("`backfill audit {run_id}` shows the run's shadow steps"),
    };
    crate::UserError::new(error.to_string()).hint(hint).into()
}
