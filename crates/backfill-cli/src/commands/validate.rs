//! `backfill validate RUN|SPEC`: re-runs reconciliation alone (`backfill_engine::reconcile`),
//! at any time after a run: every partition's source and target fingerprints compared, the
//! results recorded per partition, one `validate` audit event with the totals.
//!
//! A run id (or unique prefix) checks that run, with the spec file it was made from (or
//! `--spec`). A spec file checks its latest run; a spec without a run checks its plan's
//! partitions, recording only the audit event. Exit codes: 0 when nothing is mismatched, 1
//! when a partition is (or a database fails), 2 for the user's input.

use std::path::Path;

use backfill_engine::reconcile::ValidateReport;
use backfill_store::{RunRecord, Store};
use serde_json::json;

use crate::args::ValidateArgs;
use crate::commands::run::{find_run, reconciliation_json, reconciliation_line, spec_of};
use crate::commands::{open_store, whoami};
use crate::output::Output;
use crate::{Reported, UserError, specfile};

/// `backfill validate RUN|SPEC`.
pub(crate) async fn run(args: &ValidateArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let path = Path::new(&args.target);
    let (spec, run) = if path.is_file() {
        let (spec, _) = specfile::load(path, out)?;
        let run = latest_run_of(&store, &spec).await?;
        (spec, run)
    } else if args.target.ends_with(".toml") {
        return Err(
            UserError::new(format!("no spec file at {}", path.display()))
                .hint("pass a spec file that exists, or a run id (`backfill runs` lists them)")
                .into(),
        );
    } else {
        let run = find_run(&store, &args.target).await?;
        (spec_of(&run, args.spec.as_deref(), out)?, Some(run))
    };
    let run_id = run.as_ref().map(|r| r.id.clone());
    let report =
        backfill_engine::reconcile::validate(&store, &spec, run_id.as_deref(), &whoami()).await?;
    print(&spec.name, run.as_ref(), &report, out);
    if report.totals.mismatched > 0 {
        return Err(Reported(1).into());
    }
    Ok(())
}

/// The spec's latest run (same name and plan), if any.
async fn latest_run_of(
    store: &Store,
    spec: &backfill_core::Spec,
) -> anyhow::Result<Option<RunRecord>> {
    let plan = backfill_core::plan::plan(spec)
        .map_err(|e| UserError::new(format!("cannot plan the spec: {e}")))?;
    Ok(store
        .list_runs(1_000)
        .await?
        .into_iter()
        .find(|r| r.spec_name == spec.name && r.plan_hash == plan.hash))
}

fn print(spec: &str, run: Option<&RunRecord>, report: &ValidateReport, out: Output) {
    out.json(&json!({
        "spec": spec,
        "run_id": report.run_id,
        "reconciliation": reconciliation_json(&report.totals, report.not_verified_reason.as_deref()),
        "mismatched": report.mismatched.iter().zip(&report.messages).map(|(c, m)| {
            let mut o = c.to_json();
            o["partition_id"] = json!(c.partition_id);
            o["message"] = json!(m);
            o
        }).collect::<Vec<_>>(),
    }));
    match run {
        Some(r) => out.line(format!("validate run {} of `{spec}`", r.id)),
        None => out.line(format!(
            "validate the plan of `{spec}` (no run yet: nothing recorded per partition)"
        )),
    }
    out.line(format!(
        "  partitions: {}",
        reconciliation_line(&report.totals, report.not_verified_reason.as_deref())
    ));
    for m in &report.messages {
        out.line(format!("  mismatch:   {m}"));
    }
    if report.totals.mismatched > report.messages.len() as u64 {
        out.line(format!(
            "  … and {} more mismatched partitions (`backfill diff SPEC` lists them all)",
            report.totals.mismatched - report.messages.len() as u64
        ));
    }
}
