//! `backfill pause`, `backfill cancel` and `backfill throttle`: commands from any terminal to
//! the process executing a run, through the state store.
//!
//! Each command is recorded (with its audit event) first; the executing process acts within
//! a second. When no process is executing the run, `pause` and `cancel` change its state
//! directly, and `throttle` applies when the run continues.

use std::time::{Duration, Instant};

use backfill_core::RunState;
use backfill_engine::Executor;
use backfill_store::{ControlRequest, Controls, RunRecord, Store, StoreError, ThrottleChange};
use serde_json::json;

use crate::UserError;
use crate::args::{RequestArgs, ThrottleArgs};
use crate::commands::run::find_run;
use crate::commands::{open_store, whoami};
use crate::output::Output;

/// How long `pause` and `cancel` wait for the executing process to act.
const WAIT_FOR_PROCESS: Duration = Duration::from_secs(60);

/// "the process executing it (pid 123 on host)" when a process is executing the run: a recent
/// heartbeat, not a clean stop, and not a process of this host that was killed (see
/// [`backfill_engine::executor`]).
pub(crate) fn live_process(controls: &Controls) -> Option<String> {
    match backfill_engine::executor(controls) {
        Executor::Nobody => None,
        Executor::Alive { pid, host } => {
            Some(format!("the process executing it (pid {pid} on {host})"))
        }
        Executor::Unknown { host } => Some(format!(
            "the process executing it (on {})",
            host.as_deref().unwrap_or("another host")
        )),
    }
}

/// A refused command as the user's error, with what to do instead.
fn refused(run: &RunRecord, what: &str, error: StoreError) -> anyhow::Error {
    match error {
        StoreError::IllegalTransition { .. } => UserError::new(format!(
            "run {} is {}: it cannot be {what}",
            run.id, run.state
        ))
        .hint("`backfill status RUN` shows it; `backfill run --new SPEC` starts a new run")
        .into(),
        other => other.into(),
    }
}

/// `pause` of a run awaiting approval: it writes nothing until approved, so there is nothing
/// to pause; say what the user can do instead.
fn awaiting_approval(run: &RunRecord) -> anyhow::Error {
    UserError::new(format!(
        "run {} is awaiting approval: it writes nothing until it is approved, so there is \
         nothing to pause",
        run.id
    ))
    .hint(format!(
        "`backfill approve {id} --reason …` lets it continue; `backfill cancel {id}` stops it",
        id = run.id
    ))
    .into()
}

/// Waits until run `run_id` reaches one of `states`; returns the state it ended in, or
/// `None` after [`WAIT_FOR_PROCESS`].
async fn wait_for_state(
    store: &Store,
    run_id: &str,
    states: &[RunState],
) -> anyhow::Result<Option<RunRecord>> {
    let deadline = Instant::now() + WAIT_FOR_PROCESS;
    while Instant::now() < deadline {
        let run = store.get_run(run_id).await?;
        if states.contains(&run.state) {
            return Ok(Some(run));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// A pause of `run` as the store records it: refused while the run awaits approval or when it
/// is finished; otherwise requested of the executing process, and with none executing, a
/// running run is paused at once. Returns the controls and the executing process, if any.
/// Shared by `backfill pause` and the API.
pub(crate) async fn apply_pause(
    store: &Store,
    run: &RunRecord,
    actor: &str,
    reason: Option<&str>,
) -> anyhow::Result<(Controls, Option<String>)> {
    if run.state == RunState::AwaitingApproval {
        return Err(awaiting_approval(run));
    }
    let controls = store
        .request_control(&run.id, ControlRequest::Pause, actor, reason)
        .await
        .map_err(|e| refused(run, "paused", e))?;
    let process = live_process(&controls);
    if process.is_none() && run.state == RunState::Running {
        // The process that ran it is gone (crashed or killed): pause it here.
        store
            .set_run_state(
                &run.id,
                RunState::Paused,
                actor,
                json!({ "pause_reason": "user", "reason": reason }),
            )
            .await?;
    }
    Ok((controls, process))
}

/// A cancel of `run` as the store records it: refused when it is finished; otherwise
/// requested of the executing process, and with none executing, the run is cancelled at once
/// (its interrupted partitions back to pending). Returns the controls and the executing
/// process, if any. Shared by `backfill cancel` and the API.
pub(crate) async fn apply_cancel(
    store: &Store,
    run: &RunRecord,
    actor: &str,
    reason: Option<&str>,
) -> anyhow::Result<(Controls, Option<String>)> {
    let controls = store
        .request_control(&run.id, ControlRequest::Cancel, actor, reason)
        .await
        .map_err(|e| refused(run, "cancelled", e))?;
    let process = live_process(&controls);
    if process.is_none() {
        store.reset_interrupted(&run.id, actor).await?;
        store
            .set_run_state(
                &run.id,
                RunState::Cancelled,
                actor,
                json!({ "reason": reason }),
            )
            .await
            .map_err(|e| refused(run, "cancelled", e))?;
    }
    Ok((controls, process))
}

pub(crate) async fn pause(args: &RequestArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    let (controls, process) = apply_pause(&store, &run, &whoami(), args.reason.as_deref()).await?;
    if controls.requested == Some(ControlRequest::Cancel) {
        out.note(format!(
            "run {} is already being cancelled; the pause changes nothing",
            run.id
        ));
    }
    let end = match &process {
        Some(who) if !args.no_wait => {
            out.note(format!(
                "pause requested; {who} finishes its in-flight batches, then pauses"
            ));
            wait_for_state(
                &store,
                &run.id,
                // A run that reaches its approval gate meanwhile waits there (the request
                // stays recorded: it pauses once approved).
                &[
                    RunState::Paused,
                    RunState::AwaitingApproval,
                    RunState::Cancelled,
                    RunState::Succeeded,
                    RunState::Failed,
                ],
            )
            .await?
        }
        Some(who) => {
            out.note(format!("pause requested; {who} pauses within a second"));
            None
        }
        None => Some(store.get_run(&run.id).await?),
    };
    report(&run, "pause", process.is_some(), end.as_ref(), out);
    if process.is_some() && !args.no_wait && end.is_none() {
        return Err(UserError::new(format!(
            "run {} did not pause within {}s",
            run.id,
            WAIT_FOR_PROCESS.as_secs()
        ))
        .hint("the request stays recorded; `backfill status RUN` shows whether it paused since")
        .into());
    }
    if process.is_none() {
        out.note(format!(
            "no process is executing run {}; it stays paused until `backfill resume {}`",
            run.id, run.id
        ));
    }
    Ok(())
}

pub(crate) async fn cancel(args: &RequestArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    let (_, process) = apply_cancel(&store, &run, &whoami(), args.reason.as_deref()).await?;
    let end = match &process {
        Some(who) if !args.no_wait => {
            out.note(format!(
                "cancel requested; {who} finishes its in-flight batches, then stops"
            ));
            wait_for_state(
                &store,
                &run.id,
                &[RunState::Cancelled, RunState::Succeeded, RunState::Failed],
            )
            .await?
        }
        Some(who) => {
            out.note(format!("cancel requested; {who} stops within a second"));
            None
        }
        None => Some(store.get_run(&run.id).await?),
    };
    report(&run, "cancel", process.is_some(), end.as_ref(), out);
    if process.is_some() && !args.no_wait && end.is_none() {
        return Err(UserError::new(format!(
            "run {} did not stop within {}s",
            run.id,
            WAIT_FOR_PROCESS.as_secs()
        ))
        .hint("the request stays recorded; `backfill status RUN` shows whether it stopped since")
        .into());
    }
    out.note(format!(
        "the target keeps every batch written so far; `backfill resume --reopen {}` continues the run",
        run.id
    ));
    Ok(())
}

/// Prints what a pause or cancel led to.
fn report(run: &RunRecord, request: &str, live: bool, end: Option<&RunRecord>, out: Output) {
    out.json(&json!({
        "run_id": run.id,
        "requested": request,
        "process_running": live,
        "state": end.map(|r| r.state.as_str()),
        "pause_reason": end.and_then(|r| r.pause_reason.clone()),
    }));
    if let Some(end) = end {
        let why = end
            .pause_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        out.line(format!("run {} {}{why}", end.id, end.state));
    }
}

pub(crate) async fn throttle(args: &ThrottleArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let change = ThrottleChange {
        rows_per_second: args.rows_per_second,
        batches_per_second: args.batches_per_second,
        concurrency: args.concurrency,
    };
    if change == ThrottleChange::default() {
        return Err(UserError::new("nothing to change")
            .hint("pass --rows-per-second N|off, --batches-per-second N|off and/or --concurrency K")
            .into());
    }
    let store = open_store(state).await?;
    let run = find_run(&store, &args.run).await?;
    let controls = store
        .set_throttle(&run.id, change, &whoami())
        .await
        .map_err(|e| refused(&run, "throttled", e))?;
    let process = live_process(&controls);
    let text = |v: Option<u32>| match v {
        None => "the spec's".to_owned(),
        Some(0) => "no limit".to_owned(),
        Some(n) => n.to_string(),
    };
    out.json(&json!({
        "run_id": run.id,
        "rows_per_second": controls.rows_per_second,
        "batches_per_second": controls.batches_per_second,
        "concurrency": controls.concurrency,
        "process_running": process.is_some(),
    }));
    out.line(format!(
        "run {}: rows/s {}, batches/s {}, concurrency {}",
        run.id,
        text(controls.rows_per_second),
        text(controls.batches_per_second),
        text(controls.concurrency)
    ));
    match process {
        Some(who) => out.note(format!("{who} applies it within a second")),
        None => out.note("no process is executing the run; it applies when the run continues"),
    }
    Ok(())
}
