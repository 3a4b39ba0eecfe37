//! `backfill run SPEC` and `backfill resume RUN`.

use std::path::Path;

use backfill_core::{FieldChange, RunState, Spec};
use backfill_engine::{EngineError, ExecuteOptions, Launch, RunSummary, Shutdown};
use backfill_store::{BudgetExtra, RunRecord, Store};
use serde_json::json;

use crate::args::{ClaimArgs, ResumeArgs, RunArgs};
use crate::commands::{duration, open_store, thousands, whoami};
use crate::output::Output;
use crate::{Failure, Reported, UserError, progress, specfile};

pub(crate) async fn run(args: &RunArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let (spec, _) = specfile::load(&args.spec, out)?;
    let plan = backfill_core::plan::plan(&spec)
        .map_err(|e| UserError::new(format!("{}: {e}", args.spec.display())))?;
    let store = open_store(state).await?;
    let owner = whoami();
    let findings = match crate::commands::only_gaps::wanted(args)? {
        true => Some(crate::commands::only_gaps::compare(&store, &spec, args, out).await?),
        false => None,
    };
    let launch = match backfill_engine::prepare_run(
        &store,
        &spec,
        &plan,
        args.reason.as_deref(),
        &owner,
        args.new,
    )
    .await
    {
        Ok(l) => l,
        Err(EngineError::NoReason) => {
            return Err(UserError::new(
                "a run needs a reason, so the audit trail says why it happened",
            )
            .hint(format!(
                "pass --reason \"…\" or add `reason = \"…\"` to {}",
                args.spec.display()
            ))
            .into());
        }
        Err(e @ EngineError::PlanChanged { .. }) => return Err(plan_changed(e, &args.spec)),
        Err(e) => return Err(e.into()),
    };
    match &launch {
        Launch::Created(r) => out.note(format!(
            "created run {} of `{}`: {} partitions, reason: {}",
            r.id, r.spec_name, r.partitions_total, r.reason
        )),
        Launch::Resumed(r) if findings.is_some() => {
            let flag = if args.only_diff {
                "--only-diff"
            } else {
                "--only-gaps"
            };
            return Err(crate::commands::only_gaps::refuse_resume(
                r, flag, &args.spec,
            ));
        }
        Launch::Resumed(r) => {
            if !args.claim.wait
                && !args.create_only
                && let Err(e) = backfill_engine::ensure_unclaimed(&store, &r.id).await
            {
                return Err(engine_error(e));
            }
            let done = done_count(&store, r).await?;
            out.note(format!(
                "resuming unfinished run {} of `{}` ({}/{} partitions done; --new starts a new run)",
                r.id, r.spec_name, done, r.partitions_total
            ));
        }
    }
    if let Some(findings) = &findings {
        crate::commands::only_gaps::record(&store, launch.run(), &owner, findings, out).await?;
    }
    if args.create_only {
        let run = launch.run();
        out.json(&json!({ "run_id": run.id, "created": matches!(launch, Launch::Created(_)) }));
        out.line(&run.id);
        out.note(format!("execute it with `backfill resume {}`", run.id));
        return Ok(());
    }
    execute(&store, &spec, launch.run(), out, args.claim).await
}

pub(crate) async fn resume(args: &ResumeArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    if run.state == RunState::Succeeded {
        out.note(format!(
            "run {} already succeeded; nothing to resume",
            run.id
        ));
        return Ok(());
    }
    let extra = match &args.extend_budget {
        None => BudgetExtra::default(),
        Some(ext) => BudgetExtra {
            rows: ext.rows,
            duration_ms: u64::try_from(ext.duration.as_millis()).unwrap_or(u64::MAX),
            partitions: ext.partitions,
            cost: ext.cost,
        },
    };
    // Unless another process executes the run (and keeps its own spec), check the spec before
    // anything is written, so a refused resume changes nothing.
    let spec = match crate::commands::control::live_process(&store.controls(&run.id).await?) {
        Some(_) => None,
        None => Some(spec_of(&run, args.spec.as_deref(), out)?),
    };
    let controls = match store
        .request_resume(&run.id, &whoami(), extra, args.reopen)
        .await
    {
        Ok(c) => c,
        Err(backfill_store::StoreError::IllegalTransition { .. }) => {
            return Err(UserError::new(format!(
                "run {} is cancelled (or being cancelled)",
                run.id
            ))
            .hint(format!(
                "`backfill resume --reopen {}` continues it anyway",
                run.id
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let spec = match (crate::commands::control::live_process(&controls), spec) {
        (Some(who), _) => {
            out.json(&json!({ "run_id": run.id, "resumed": true, "process_running": true }));
            out.note(format!("resume requested; {who} continues within a second"));
            return Ok(());
        }
        (None, Some(spec)) => spec,
        // The process that executed it ended in between: continue it here.
        (None, None) => spec_of(&run, args.spec.as_deref(), out)?,
    };
    let done = done_count(&store, &run).await?;
    out.note(format!(
        "resuming run {} of `{}` from its checkpoints ({}/{} partitions done)",
        run.id, run.spec_name, done, run.partitions_total
    ));
    execute(&store, &spec, &run, out, args.claim).await
}

/// The spec `run` continues under: `path`, or the file the run recorded; refused when it no
/// longer plans what the run was made from.
pub(crate) fn spec_of(run: &RunRecord, path: Option<&Path>, out: Output) -> anyhow::Result<Spec> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let recorded = specfile::recorded_path(&run.spec_text).ok_or_else(|| {
                UserError::new(format!("run {} does not record its spec file", run.id))
                    .hint("pass --spec FILE")
            })?;
            if !recorded.exists() {
                return Err(UserError::new(format!(
                    "run {} was made from {}, which is no longer there",
                    run.id,
                    recorded.display()
                ))
                .hint(format!(
                    "if it moved, pass its new place: `backfill resume {} --spec FILE` (SQLite \
                     paths relative to the spec move with it)",
                    run.id
                ))
                .into());
            }
            recorded
        }
    };
    let (spec, _) = specfile::load(&path, out)?;
    let plan = backfill_core::plan::plan(&spec)
        .map_err(|e| UserError::new(format!("{}: {e}", path.display())))?;
    backfill_engine::check_same_plan(run, &spec, &plan).map_err(|e| plan_changed(e, &path))?;
    Ok(spec)
}

/// The refusal of an unfinished run whose spec changed, for people: each changed field on
/// its own line (old and new value, never a password), then what continuing and what a new
/// run mean. Other errors pass through.
fn plan_changed(error: EngineError, path: &Path) -> anyhow::Error {
    let EngineError::PlanChanged {
        run_id,
        spec,
        stored,
        current,
        changes,
    } = error
    else {
        return error.into();
    };
    let file = path.display();
    let new_run = format!("`backfill run --new {file}` starts a new run of the changed spec");
    let Some(changes) = changes else {
        return UserError::new(format!(
            "run {run_id} of `{spec}` was planned from a different spec (plan {stored} then, \
             {current} now); an older backfill created it without recording the fields a plan \
             covers, so the changed ones cannot be named"
        ))
        .hint(format!(
            "to continue run {run_id}, use the spec it was made from; {new_run}"
        ))
        .into();
    };
    let plural = if changes.len() == 1 { "" } else { "s" };
    let mut message = format!(
        "run {run_id} of `{spec}` was planned from a different spec: {} field{plural} of {file} changed",
        changes.len()
    );
    for change in &changes {
        message.push_str(&format!("\n    {change}"));
    }
    let mut hint = if changes.iter().all(|c| c.field == "partitions") {
        format!(
            "this backfill cuts the same scope into other partitions, so run {run_id} cannot \
             continue with it; {new_run}"
        )
    } else {
        format!("to continue run {run_id}, restore the old value{plural}; or {new_run}")
    };
    hint.push_str(": it writes every partition again, and a replay never doubles a row");
    if changes.iter().any(FieldChange::moves_the_target) {
        hint.push_str("; what the unfinished run wrote stays in the old target");
    }
    UserError::new(message).hint(hint).into()
}

/// Looks up a run by id or prefix; a miss is the user's error.
pub(crate) async fn find_run(store: &Store, id: &str) -> anyhow::Result<RunRecord> {
    use backfill_store::StoreError;
    match store.get_run(id).await {
        Ok(r) => Ok(r),
        Err(e @ (StoreError::NotFound(_) | StoreError::Ambiguous(_))) => {
            Err(UserError::new(e.to_string())
                .hint("`backfill runs` lists runs and their ids")
                .into())
        }
        Err(e) => Err(e.into()),
    }
}

async fn done_count(store: &Store, run: &RunRecord) -> anyhow::Result<u64> {
    Ok(store
        .partition_totals(&run.id)
        .await?
        .count(backfill_core::PartitionState::Done))
}

/// Executes with progress display and Ctrl-C handling, then prints the summary. Exit code 1
/// when the run failed or was paused.
pub(crate) async fn execute(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    out: Output,
    claim: ClaimArgs,
) -> anyhow::Result<()> {
    let summary = execute_quiet(store, spec, run, out, false, claim).await?;
    let gaps = crate::commands::only_gaps::GapView::load(store, &run.id).await?;
    print_summary(run, &summary, gaps.as_ref(), out);
    match summary.state {
        RunState::Succeeded if summary.checks.mismatched > 0 => {
            out.note(format!(
                "run finished, but the end-of-run reconciliation found {} partitions whose target \
                 differs from the source (written by someone else since?); see `backfill \
                 validate {}` and `backfill diff SPEC`",
                summary.checks.mismatched, run.id
            ));
            Err(Reported(1).into())
        }
        RunState::Succeeded => Ok(()),
        RunState::Paused => {
            let why = match summary.pause_reason.as_deref() {
                Some("budget_exhausted") => format!(
                    "run paused: its budget is spent; continue with `backfill resume {} --extend-budget rows=…`",
                    run.id
                ),
                Some("circuit_open") => format!(
                    "run paused: the circuit breaker opened (see `backfill status {}`); after fixing the cause, `backfill resume {}`",
                    run.id, run.id
                ),
                Some("burn_rate") => format!(
                    "run paused: it burned its budget too fast even after the burn-rate throttle (see `backfill status {}`); after fixing the cause, `backfill resume {}` continues, still throttled",
                    run.id, run.id
                ),
                Some(reason) if reason != "stopped" => format!(
                    "run paused ({reason}); continue with `backfill resume {}`",
                    run.id
                ),
                _ => format!("run paused; continue with `backfill resume {}`", run.id),
            };
            out.note(why);
            Err(Reported(1).into())
        }
        RunState::Cancelled => {
            out.note(format!(
                "run cancelled; the target keeps every batch written; `backfill resume --reopen {}` continues it",
                run.id
            ));
            Err(Reported(1).into())
        }
        RunState::AwaitingApproval => {
            out.note(crate::commands::gates::awaiting_note(&run.id));
            Err(Reported(1).into())
        }
        RunState::Failed if crate::commands::gates::canary_failed(store, &run.id).await => {
            out.note(format!(
                "run failed at its canary: a canary partition failed, so no other partition was touched; see `backfill status {}`; after fixing the cause, `backfill resume {}` runs the canary again",
                run.id, run.id
            ));
            Err(Reported(1).into())
        }
        _ if summary.failed == 0 && summary.quarantined > 0 => {
            out.note(format!(
                "run finished with rejected rows: {} partitions have rows in quarantine; list them with `backfill quarantine {}`, fix the cause, then `backfill quarantine {} --retry` and `backfill resume {}`",
                summary.quarantined, run.id, run.id, run.id
            ));
            Err(Reported(1).into())
        }
        _ => {
            out.note(format!(
                "run failed: {} of {} partitions failed; see `backfill status {}`; after fixing the cause, `backfill resume {}` retries them",
                summary.failed, summary.total, run.id, run.id
            ));
            Err(Reported(1).into())
        }
    }
}

/// Executes with progress and Ctrl-C handling; returns the summary without printing it.
pub(crate) async fn execute_quiet(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    out: Output,
    quiet: bool,
    claim: ClaimArgs,
) -> anyhow::Result<RunSummary> {
    let shutdown = Shutdown::new();
    let ctrl_c = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shutdown.request();
                // A second Ctrl-C stops at once; checkpoints already written stay valid.
                if tokio::signal::ctrl_c().await.is_ok() {
                    #[allow(clippy::disallowed_methods)]
                    std::process::exit(130);
                }
            }
        })
    };
    if claim.wait
        && let Err(EngineError::Held { host, pid, .. }) =
            backfill_engine::ensure_unclaimed(store, &run.id).await
    {
        out.note(format!(
            "run {} is being executed by pid {pid} on {host}; waiting for it to finish or stop (--wait)",
            run.id
        ));
    }
    let metrics = match claim.metrics_addr {
        Some(addr) => Some(crate::serve::spawn_beside_run(store, &run.id, addr, out).await?),
        None => None,
    };
    let done = done_count(store, run).await?;
    let (tx, renderer) =
        progress::start(run.partitions_total, done, out.is_tty(), quiet || out.json);
    let options = ExecuteOptions {
        actor: whoami(),
        shutdown,
        listener: Some(tx),
        clock: backfill_engine::Clock::system(),
        lease: claim.lease,
        wait_for_claim: claim.wait,
    };
    let result = backfill_engine::execute(store, spec, run, options).await;
    let _ = renderer.await;
    ctrl_c.abort();
    if let Some(server) = metrics {
        server.abort();
    }
    result.map_err(engine_error)
}

/// An engine error as this command reports it: a finished run is the user's call to fix
/// (exit 2); a run another process holds is named with its holder (exit 1).
fn engine_error(error: EngineError) -> anyhow::Error {
    match error {
        EngineError::NotResumable {
            run_id,
            state,
            hint,
        } => UserError::new(format!("run {run_id} is {state}"))
            .hint(hint)
            .into(),
        e @ EngineError::UndoKept { .. } => UserError::new(e.to_string())
            .hint(
                "remove `partition_exchange` from the spec to continue the run with its log, or \
                 start a new run with `--new`",
            )
            .into(),
        EngineError::Held {
            run_id,
            host,
            pid,
            since,
            expires_at,
        } => {
            let at = |t: chrono::DateTime<chrono::Utc>| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            };
            Failure {
                message: format!(
                    "run {run_id} is being executed by another process: pid {pid} on {host}, since {}",
                    at(since)
                ),
                hint: format!(
                    "`backfill status {run_id}` watches it and `backfill pause|cancel|throttle {run_id}` \
                     steer it; add --wait to continue here once it stops (its claim lapses at {} \
                     unless renewed)",
                    at(expires_at)
                ),
            }
            .into()
        }
        other => other.into(),
    }
}

/// `3 done, 14 done with quarantine, 0 failed, 17 total`: the quarantine count only when
/// some partition has rejected rows.
fn partition_counts(s: &RunSummary) -> String {
    let quarantined = if s.quarantined > 0 {
        format!("{} done with quarantine, ", s.quarantined)
    } else {
        String::new()
    };
    format!(
        "{} done, {quarantined}{} failed, {} total",
        s.done, s.failed, s.total
    )
}

fn print_summary(
    run: &RunRecord,
    s: &RunSummary,
    gaps: Option<&crate::commands::only_gaps::GapView>,
    out: Output,
) {
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        s.session_rows_read as f64 / secs
    } else {
        0.0
    };
    out.json(&json!({
        "run_id": run.id,
        "spec": run.spec_name,
        "state": s.state.as_str(),
        "pause_reason": s.pause_reason,
        "partitions": { "total": s.total, "done": s.done, "failed": s.failed, "done_with_quarantine": s.quarantined, "skipped": gaps.map_or(0, |g| g.skipped) },
        "only_gaps": gaps.map(crate::commands::only_gaps::GapView::to_json),
        "rows": {
            "read": s.counts.read,
            "inserted": s.counts.inserted,
            "updated": s.counts.updated,
            "unchanged": s.counts.unchanged,
            "deleted": s.counts.deleted,
            "affected": s.counts.affected,
        },
        "elapsed_seconds": secs,
        "rows_per_second": rate,
        "guarantee": s.guarantee.name(),
        "exactly_once_checkpoints": s.guarantee == backfill_core::Guarantee::ExactlyOnce,
        "failures": s.failures.iter().map(|(id, e)| json!({"partition_id": id, "error": e})).collect::<Vec<_>>(),
        "reconciliation": reconciliation_json(&s.checks, s.not_verified_reason.as_deref()),
    }));
    out.line(format!("run {} {}", run.id, s.state));
    out.line(format!("  partitions: {}", partition_counts(s)));
    for line in gaps.map(|g| g.lines()).unwrap_or_default() {
        out.line(line);
    }
    out.line(format!(
        "  rows:       {} read, {} inserted, {} updated, {} unchanged, {} deleted{}",
        thousands(s.counts.read),
        thousands(s.counts.inserted),
        thousands(s.counts.updated),
        thousands(s.counts.unchanged),
        thousands(s.counts.deleted),
        if s.counts.affected > 0 {
            format!(", {} affected by sql", thousands(s.counts.affected))
        } else {
            String::new()
        }
    ));
    out.line(format!(
        "  elapsed:    {} ({} rows/s in this session)",
        duration(secs),
        thousands(rate as u64)
    ));
    out.line(format!("  guarantee:  {}", s.guarantee.explain()));
    out.line(format!(
        "  verified:   {}",
        reconciliation_line(&s.checks, s.not_verified_reason.as_deref())
    ));
    for (id, error) in s.failures.iter().take(10) {
        out.line(format!("  failed:     {id}: {error}"));
    }
    if s.failed > 10 {
        out.line(format!("  … and {} more failed partitions", s.failed - 10));
    }
}

/// `reconciliation` in `--json` output (run summary, `status`): partitions verified,
/// mismatched and not verified, and why nothing was compared when nothing was.
pub(crate) fn reconciliation_json(
    checks: &backfill_store::CheckTotals,
    not_verified_reason: Option<&str>,
) -> serde_json::Value {
    json!({
        "verified": checks.verified,
        "mismatched": checks.mismatched,
        "not_verified": checks.not_verified,
        "not_verified_reason": not_verified_reason,
    })
}

/// `17 verified, 0 mismatched, 0 not verified` (and the reason when nothing was compared).
pub(crate) fn reconciliation_line(
    checks: &backfill_store::CheckTotals,
    not_verified_reason: Option<&str>,
) -> String {
    let mut text = format!(
        "{} verified, {} mismatched, {} not verified",
        thousands(checks.verified),
        thousands(checks.mismatched),
        thousands(checks.not_verified)
    );
    if let Some(reason) = not_verified_reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}
