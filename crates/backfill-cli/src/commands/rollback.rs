//! `backfill rollback RUN [--dry-run] [--force]` and `backfill cleanup RUN`: the undo log's
//! two commands (the work is `backfill_engine::rollback`). Progress on stderr, one line per
//! partition; the result on stdout (text or `--json`).

use backfill_engine::rollback::{self, RollbackError, RollbackOptions, RollbackSummary};
use serde_json::json;

use crate::UserError;
use crate::args::{CleanupArgs, RollbackArgs};
use crate::commands::run::{find_run, spec_of};
use crate::commands::{open_store, thousands, whoami};
use crate::output::Output;

/// A refusal (running, no undo data) is the user's error (exit 2); the rest failed work.
fn refusal(e: RollbackError, run_id: &str) -> anyhow::Error {
    match &e {
        RollbackError::Executing { .. } => UserError::new(e.to_string())
            .hint(format!(
                "wait for it to finish, or stop it first: `backfill cancel {run_id}`"
            ))
            .into(),
        RollbackError::NoUndo { .. } => UserError::new(e.to_string())
            .hint(
                "only runs in `upsert` or `replace` mode that kept an undo log (on by default \
                 for PostgreSQL and SQLite targets; `undo = true` or `propagate_deletes = true` \
                 on MySQL) have undo data, until `backfill cleanup`; on PostgreSQL and SQLite \
                 the log holds only the rows a run changed, so a run that changed none has \
                 nothing to roll back",
            )
            .into(),
        _ => anyhow::Error::new(e),
    }
}

pub(crate) async fn rollback(args: &RollbackArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    if store.shadow(&run.id).await?.is_some() {
        if args.dry_run {
            out.json(&json!({ "run_id": run.id, "dry_run": true, "swap_back": true }));
            out.line(format!(
                "run {} wrote a shadow table: its rollback swaps the old table back in (one \
                 rename, nothing else changes); run without --dry-run to do it",
                run.id
            ));
            return Ok(());
        }
        return crate::commands::shadow::swap_back(&store, &run, args.spec.as_deref(), out).await;
    }
    let spec = spec_of(&run, args.spec.as_deref(), out)?;
    let options = RollbackOptions {
        actor: whoami(),
        force: args.force,
        dry_run: args.dry_run,
    };
    let verb = if args.dry_run {
        "would roll back"
    } else {
        "rolled back"
    };
    let summary = rollback::rollback(&store, &spec, &run, &options, |p| {
        out.note(format!(
            "[{}/{}] partition {} {verb}: {} deleted, {} restored, {} conflicts",
            p.index,
            p.total,
            p.partition_id,
            p.counts.deleted,
            p.counts.restored,
            p.counts.conflicts
        ));
    })
    .await
    .map_err(|e| refusal(e, &run.id))?;
    report(&summary, &run.id, args, out);
    Ok(())
}

fn report(summary: &RollbackSummary, run_id: &str, args: &RollbackArgs, out: Output) {
    out.json(&json!({
        "run_id": run_id,
        "dry_run": args.dry_run,
        "force": args.force,
        "partitions": summary.partitions,
        "deleted": summary.deleted,
        "restored": summary.restored,
        "conflicts": summary.conflicts,
        "conflict_keys": summary.conflict_keys.iter()
            .map(|(p, k)| json!({ "partition_id": p, "key": k }))
            .collect::<Vec<_>>(),
    }));
    let what = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    out.line(format!(
        "run {run_id}: {} partition(s); {what} {} key(s) the run inserted, {} {} row(s) as they were before it",
        summary.partitions,
        thousands(summary.deleted),
        if args.dry_run { "would restore" } else { "restored" },
        thousands(summary.restored),
    ));
    if summary.conflicts > 0 {
        out.line(format!(
            "{} conflict(s): changed by someone else since the run wrote them, left as they are:",
            thousands(summary.conflicts)
        ));
        for (partition, key) in &summary.conflict_keys {
            out.line(format!("  {partition} key {key}"));
        }
        out.line(format!(
            "to overwrite them with their before-images: `backfill rollback {run_id} --force`"
        ));
    }
}

pub(crate) async fn cleanup(args: &CleanupArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    if store.shadow(&run.id).await?.is_some() {
        return crate::commands::shadow::cleanup(&store, &run, args.spec.as_deref(), out).await;
    }
    let spec = spec_of(&run, args.spec.as_deref(), out)?;
    let dropped = rollback::cleanup(&store, &spec, &run, &whoami())
        .await
        .map_err(|e| refusal(e, &run.id))?;
    out.json(&json!({ "run_id": run.id, "undo_rows_dropped": dropped }));
    out.line(format!(
        "run {}: dropped {} undo row(s); it can no longer be rolled back",
        run.id,
        thousands(dropped)
    ));
    Ok(())
}

/// Rows of `run` in its target's undo log, for `status`; `None` when the run keeps none or
/// its spec or target cannot be read within [`UNDO_SIZE_PATIENCE`] (status answers from the
/// state store; an unreachable target must not hold it up).
pub(crate) async fn undo_rows(run: &backfill_store::RunRecord) -> Option<u64> {
    // Reading the spec is cheap and quiet; checking it against the run (`spec_of`) would plan
    // the run's partitions (a million windows hashed: most of `status`'s time at 1M, and
    // every PostgreSQL run keeps a log by default), so the target is taken from the file as
    // it is: a size for display, counted by run id.
    let path = crate::specfile::recorded_path(&run.spec_text)?;
    let file = crate::specfile::parse_file(&path).ok()?;
    let spec = file.parsed.spec?;
    if !run.keeps_undo(spec.target.undo) {
        return None;
    }
    tokio::time::timeout(UNDO_SIZE_PATIENCE, rollback::undo_size(&spec, run))
        .await
        .ok()?
        .ok()
}

/// How long `status` waits for the target to count a run's undo rows.
const UNDO_SIZE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
