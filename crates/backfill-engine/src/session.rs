//! One session of a run, from the moment this process holds its claim to its summary, in
//! named steps: [`execute_claimed`] reads the run, [`open_session`] opens the connectors and
//! readies the partitions, [`Background::start`] starts the controller, the adaptive throttle
//! and the stop watcher, [`drive`] runs passes over the pending work and waits out holds, and
//! [`finish`] decides the run's end state and records it.
//!
//! Invariants (see ARCHITECTURE.md): every write goes through the store handle fenced by the
//! claim; no batch starts before the controller's first decision; in-flight batches end and
//! checkpoint before the run is marked paused or ended; the run's totals come from the store's
//! aggregates, never from every partition.

use std::sync::Arc;

use backfill_connectors::{
    AnyPushdown, AnySink, AnySource, ConnectorError, open_pushdown, open_sink, open_source,
};
use backfill_core::retry::ErrorClass;
use backfill_core::{Guarantee, PartitionState, RunState, Spec, WriteMode};
use backfill_store::{Controls, PartitionTotals, RunRecord, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::{Controller, Limits, Live};
use crate::execute::Ctx;
use crate::pending::Pending;
use crate::{
    Emitter, EngineError, Event, ExecuteOptions, Hold, RunSummary, SUMMARY_FAILURES, Shutdown,
    adaptive, execute, guarantee, patience,
};

/// [`crate::execute`] once this process holds the run's claim; `store` is fenced by it.
pub(crate) async fn execute_claimed(
    store: &Store,
    spec: &Spec,
    run_id: &str,
    options: ExecuteOptions,
    lease: backfill_store::Lease,
    waited: bool,
    started: std::time::Instant,
) -> Result<RunSummary, EngineError> {
    let shutdown = &options.shutdown;
    let run = patience::store(shutdown, "read the run", || store.get_run(run_id)).await?;
    if run.state == RunState::Succeeded {
        return finished_meanwhile(store, spec, run, waited, started, shutdown).await;
    }
    // A shadow write (`mode = "shadow"`) writes into its shadow table, made on first use.
    let shadowed = crate::shadow::prepare(store, spec, &run.id, &options.actor).await?;
    let spec = shadowed.as_ref().unwrap_or(spec);
    let session = open_session(store, spec, &run, &options).await?;
    let background = Background::start(store, spec, &run, &options, &session, lease).await;
    let outcome = drive(store, spec, &run, &session, shutdown, &options.actor).await;
    background.stop().await;
    session.close().await;
    let outcome = outcome?;
    finish(store, spec, &run, &session, outcome, &options, started).await
}

/// A run that succeeded before this process got its claim: reported when this process waited
/// for it (another finished it meanwhile), refused otherwise.
async fn finished_meanwhile(
    store: &Store,
    spec: &Spec,
    run: RunRecord,
    waited: bool,
    started: std::time::Instant,
    shutdown: &Shutdown,
) -> Result<RunSummary, EngineError> {
    if !waited {
        return Err(EngineError::NotResumable {
            run_id: run.id,
            state: run.state.to_string(),
            hint: "every partition is done; use `backfill run --new` to run the spec again".into(),
        });
    }
    let (totals, failures) = read_totals(store, &run.id, shutdown).await?;
    let mut summary = summarize(
        &totals,
        failures,
        run.state,
        started,
        guarantee(store, spec),
        false,
    );
    summary.session_rows_read = 0;
    Ok(summary)
}

/// What a session works with once it is open.
pub(crate) struct Session {
    /// What the workers share.
    ctx: Arc<Ctx>,
    /// The limits in force and the holds the controller sets.
    live: Arc<Live>,
    /// The controls read at the start (the controller's first state).
    controls: Controls,
    /// Rows read and partitions finished by earlier sessions.
    read_before: u64,
    finished_before: u64,
    /// The progress emitter.
    emitter: Emitter,
    /// Reconciliation after writing (`[validate]`), or why there is none.
    reconcile: crate::reconcile::Setup,
}

/// Opens the connectors (retrying a connection lost on the way), resets the partitions a dead
/// process left running, reopens the failed ones of a failed or cancelled run, and reads what
/// earlier sessions did.
async fn open_session(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    options: &ExecuteOptions,
) -> Result<Session, EngineError> {
    let shutdown = &options.shutdown;
    let effective = undo_as_the_run_began(store, spec, run, shutdown).await?;
    let spec: &Spec = &effective;
    let controls =
        patience::store(shutdown, "read run controls", || store.controls(&run.id)).await?;
    let same_database = store.same_database(spec.target.url.expose());
    let limits = Limits::of(spec, &controls);
    // Enough connections for the concurrency in force when the session starts.
    let capacity = limits.concurrency.max(spec.limits.concurrency.get());
    // The preflight reads from the first pending partitions (not the whole plan again).
    let first: Vec<backfill_core::Window> =
        patience::store(shutdown, "read pending partitions", || {
            store.pending_page(&run.id, 0..u64::MAX, false, PREFLIGHT_PARTITIONS)
        })
        .await?
        .into_iter()
        .map(|p| p.window)
        .collect();
    // A connection lost while opening is retried; a database that refuses the first
    // connection (a wrong host or port, most likely) fails at once.
    let (source, sink, pushdown) = patience::retry_transient(
        shutdown,
        "open source and target",
        |e: &EngineError| match e {
            EngineError::Connector(ConnectorError::Connect { .. }) => false,
            EngineError::Connector(c) => c.class() == ErrorClass::Transient,
            EngineError::Store(s) => s.is_transient(),
            _ => false,
        },
        || open_connectors(spec, &first, same_database, capacity),
    )
    .await?;
    let actor = options.actor.as_str();
    patience::store(shutdown, "reset interrupted partitions", || {
        store.reset_interrupted(&run.id, actor)
    })
    .await?;
    if matches!(run.state, RunState::Failed | RunState::Cancelled) {
        patience::store(shutdown, "reopen failed partitions", || {
            store.reopen_failed(&run.id, actor)
        })
        .await?;
    }
    let totals = patience::store(shutdown, "read the run's totals", || {
        store.partition_totals(&run.id)
    })
    .await?;
    let reconcile = crate::reconcile::open(spec).await?;
    let emitter = Emitter::new(&run.id, options.listener.clone());
    let live = Arc::new(Live::new(spec, limits, capacity));
    let ctx = Arc::new(Ctx {
        run_id: run.id.clone(),
        actor: actor.to_owned(),
        live: live.clone(),
        spec: spec.clone(),
        store: store.clone(),
        source,
        sink,
        pushdown,
        shutdown: shutdown.clone(),
        emitter: emitter.clone(),
        same_database,
        reconciler: match &reconcile {
            crate::reconcile::Setup::On(r) => Some(r.clone()),
            crate::reconcile::Setup::NotVerified(_) => None,
        },
    });
    Ok(Session {
        ctx,
        live,
        controls,
        read_before: totals.counts.read,
        finished_before: PartitionState::ALL
            .iter()
            .filter(|s| s.is_finished())
            .map(|s| totals.count(*s))
            .sum(),
        emitter,
        reconcile,
    })
}

impl Session {
    /// Closes the source, the target and the pushdown.
    async fn close(&self) {
        if let Some(source) = &self.ctx.source {
            source.close().await;
        }
        self.ctx.sink.close().await;
        if let Some(pushdown) = &self.ctx.pushdown {
            pushdown.close().await;
        }
    }
}

/// The tasks beside the workers: the controller, the adaptive throttle and the stop watcher.
struct Background {
    stop: watch::Sender<bool>,
    controller: JoinHandle<()>,
    adaptive: Option<JoinHandle<()>>,
    watcher: JoinHandle<()>,
}

impl Background {
    /// Measures the throttle's baseline (`[throttle]`), starts the controller and waits for
    /// its first decision (a budget already spent, a closed window…), so no batch starts
    /// before it; then starts the throttle and the watcher that announces a stop request.
    async fn start(
        store: &Store,
        spec: &Spec,
        run: &RunRecord,
        options: &ExecuteOptions,
        session: &Session,
        lease: backfill_store::Lease,
    ) -> Background {
        let shutdown = &options.shutdown;
        let (stop, stopped) = watch::channel(false);
        let (ready, controller_ready) = tokio::sync::oneshot::channel();
        let live = &session.live;
        let adaptive = adaptive::Adaptive::start(spec, &run.id, store, live, shutdown).await;
        let controller = tokio::spawn(
            Controller {
                run_id: run.id.clone(),
                spec: spec.clone(),
                store: store.clone(),
                live: live.clone(),
                clock: options.clock.clone(),
                emitter: session.emitter.clone(),
                partitions_total: run.partitions_total,
                rows_before: session.read_before,
                partitions_before: session.finished_before,
                controls: session.controls.clone(),
                adaptive: adaptive.as_ref().map(adaptive::Adaptive::status),
                lease,
                shutdown: shutdown.clone(),
            }
            .run(stopped, ready),
        );
        let _ = controller_ready.await;
        let adaptive = adaptive.map(|a| tokio::spawn(a.run(stop.subscribe())));
        let watcher = {
            let shutdown = shutdown.clone();
            let emitter = session.emitter.clone();
            tokio::spawn(async move {
                shutdown.requested().await;
                emitter.emit(Event::Stopping);
            })
        };
        Background {
            stop,
            controller,
            adaptive,
            watcher,
        }
    }

    /// Stops the controller (its last heartbeat marks the process stopped) and the throttle,
    /// and waits for both.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.controller.await;
        if let Some(adaptive) = self.adaptive {
            let _ = adaptive.await;
        }
        self.watcher.abort();
    }
}

/// How the session's passes ended.
pub(crate) struct Outcome {
    /// The run state last recorded by this session.
    state: RunState,
    /// Some partition was interrupted (a stop request or a store failure).
    interrupted: bool,
    /// A cancel was carried out.
    cancelled: bool,
    /// The canary decided the run's state (`failed`, or still `awaiting_approval`): `finish`
    /// records nothing else.
    gated: bool,
}

/// Runs passes over the pending work while nothing holds the run; marks it `running` before
/// and `paused` while a hold lasts, and waits for the hold to change. Ends when no partition
/// is pending, on a cancel, or on a stop request.
async fn drive(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    session: &Session,
    shutdown: &Shutdown,
    actor: &str,
) -> Result<Outcome, EngineError> {
    let live = &session.live;
    let mut outcome = Outcome {
        state: run.state,
        interrupted: false,
        cancelled: false,
        gated: false,
    };
    // The canary first (`[canary]`): its partitions, then its verdict and the approval.
    let gate = crate::canary::Gate {
        store,
        spec,
        run,
        ctx: &session.ctx,
        live,
        shutdown,
        actor,
    };
    match gate.pass(&mut outcome.state).await? {
        crate::canary::GateEnd::Continue => {}
        crate::canary::GateEnd::Failed => {
            outcome.gated = true;
            return Ok(outcome);
        }
        crate::canary::GateEnd::Stopped(state) => {
            outcome.gated = state == RunState::AwaitingApproval;
            outcome.interrupted = true;
            return Ok(outcome);
        }
        crate::canary::GateEnd::Cancelled => {
            outcome.cancelled = true;
            return Ok(outcome);
        }
    }
    loop {
        if !live.is_held() && !shutdown.is_requested() {
            if outcome.state != RunState::Running {
                let detail = serde_json_reason(run, outcome.state);
                patience::store(shutdown, "mark the run running", || {
                    store.set_run_state(&run.id, RunState::Running, actor, detail.clone())
                })
                .await?;
                outcome.state = RunState::Running;
            }
            // A pass over the pending work, read a page at a time: never every partition.
            let pending = Pending::start(
                spec,
                store,
                &run.id,
                run.partitions_total,
                session.ctx.source.as_ref(),
                shutdown,
            )
            .await?;
            let pass = execute::run_partitions(session.ctx.clone(), pending).await;
            if let Some(e) = pass.error {
                return Err(e.into());
            }
            if pass.idle {
                break;
            }
            outcome.interrupted |= pass.interrupted;
            patience::store(shutdown, "reset interrupted partitions", || {
                store.reset_interrupted(&run.id, actor)
            })
            .await?;
        }
        if shutdown.is_requested() {
            break;
        }
        let Some(hold) = live.hold() else {
            // Every partition ended (or a store failure interrupted some): the run is over.
            break;
        };
        if hold == Hold::Cancel {
            outcome.cancelled = true;
            break;
        }
        if outcome.state != RunState::Paused {
            let detail = hold.detail();
            patience::store(shutdown, "mark the run paused", || {
                store.set_run_state(&run.id, RunState::Paused, actor, detail.clone())
            })
            .await?;
            outcome.state = RunState::Paused;
        }
        // Wait for the hold to change: lifted, another reason, or a cancel.
        tokio::select! {
            () = live.changed_from(&hold) => {}
            () = shutdown.requested() => break,
        }
    }
    Ok(outcome)
}

/// Resets what is still running, decides the run's end state from the store's totals
/// (succeeded, cancelled, paused or failed), records it with its audit event, and summarises.
async fn finish(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    session: &Session,
    outcome: Outcome,
    options: &ExecuteOptions,
    started: std::time::Instant,
) -> Result<RunSummary, EngineError> {
    let shutdown = &options.shutdown;
    let actor = options.actor.as_str();
    let interrupted = outcome.interrupted || shutdown.is_requested();
    patience::store(shutdown, "reset interrupted partitions", || {
        store.reset_interrupted(&run.id, actor)
    })
    .await?;
    let reconciled = reconcile_at_end(store, &run.id, session, interrupted, actor).await;
    if let crate::reconcile::Setup::On(r) = &session.reconcile {
        r.close().await;
    }
    reconciled?;
    let (totals, failures) = read_totals(store, &run.id, shutdown).await?;
    let guarantee = Guarantee::of(&spec.target.mode, session.ctx.same_database);
    let done =
        totals.all() == totals.count(PartitionState::Done) + totals.count(PartitionState::Split);
    let any_pending = totals.count(PartitionState::Pending) > 0;
    let final_state = if outcome.gated {
        outcome.state
    } else if done {
        RunState::Succeeded
    } else if outcome.cancelled {
        RunState::Cancelled
    } else if interrupted || any_pending {
        RunState::Paused
    } else {
        RunState::Failed
    };
    let pushed = session.ctx.pushdown.is_some();
    let mut summary = summarize(&totals, failures, final_state, started, guarantee, pushed);
    summary.session_rows_read = summary.counts.read.saturating_sub(session.read_before);
    summary.checks = patience::store(shutdown, "read the reconciliation totals", || {
        store.check_totals(&run.id)
    })
    .await?;
    if let crate::reconcile::Setup::NotVerified(reason) = &session.reconcile {
        summary.not_verified_reason = Some(reason.clone());
    } else if summary.checks.not_verified > 0 {
        // Partitions whose check could not be computed: say why, once.
        summary.not_verified_reason = store.not_verified_reason(&run.id).await.ok().flatten();
    }
    let mut detail = serde_json::json!({
        "done": summary.done,
        "failed": summary.failed,
        "total": summary.total,
        "rows_read": summary.counts.read,
        "rows_written": summary.counts.written(),
    });
    if final_state != outcome.state {
        if final_state == RunState::Paused {
            detail["pause_reason"] = serde_json::json!("stopped");
        }
        patience::store(shutdown, "record the run's end", || {
            store.set_run_state(&run.id, final_state, actor, detail.clone())
        })
        .await?;
    }
    summary.pause_reason = match final_state {
        RunState::Paused => {
            patience::store(shutdown, "read the run", || store.get_run(&run.id))
                .await?
                .pause_reason
        }
        _ => None,
    };
    Ok(summary)
}

/// `[validate] at_end`: when the session was not interrupted, re-checks every finished
/// partition (one bucketed query per side per chunk), records the checks and appends one
/// `run.reconciled` event with the totals.
async fn reconcile_at_end(
    store: &Store,
    run_id: &str,
    session: &Session,
    interrupted: bool,
    actor: &str,
) -> Result<(), EngineError> {
    let crate::reconcile::Setup::On(reconciler) = &session.reconcile else {
        return Ok(());
    };
    if !reconciler.at_end || interrupted {
        return Ok(());
    }
    let (totals, _) =
        crate::reconcile::check_run(reconciler, store, run_id, true, "at_end").await?;
    store
        .record_check_event(
            Some(run_id),
            actor,
            "run.reconciled",
            serde_json::json!({
                "verified": totals.verified,
                "mismatched": totals.mismatched,
                "not_verified": totals.not_verified,
            }),
        )
        .await?;
    Ok(())
}

/// Pending partitions whose rows the preflight check reads (the first non-empty one).
const PREFLIGHT_PARTITIONS: usize = 3;

/// Opens the source (when the spec has one), the target and (when used) the pushdown, and
/// runs the preflight check on the first non-empty window of `first`. In `sql` mode the
/// statement reads its own rows: the source is optional and, when given, only counts rows, so
/// it is opened without key columns (its query need not return the target's key).
async fn open_connectors(
    spec: &Spec,
    first: &[backfill_core::Window],
    same_database: bool,
    concurrency: u32,
) -> Result<(Option<AnySource>, AnySink, Option<AnyPushdown>), EngineError> {
    let pool = concurrency.saturating_add(1);
    let sql_mode = matches!(spec.target.mode, WriteMode::Sql { .. });
    let source = match &spec.source {
        Some(source) => Some(open_source(source, spec.source_key(), pool).await?),
        None if sql_mode => None,
        None => {
            return Err(EngineError::NoSource {
                mode: spec.target.mode.name(),
            });
        }
    };
    let sink = open_sink(&spec.target, pool).await?;
    if let (Some(source), false) = (&source, sql_mode) {
        preflight(first, source, &sink).await?;
    }
    if let WriteMode::Replace { window_column } = &spec.target.mode
        && let Ok(Some(false)) = sink.leads_an_index(window_column).await
    {
        tracing::warn!(
            "no index of the target table starts with the window column: every partition's \
             delete scans the whole table (see `backfill check`)"
        );
    }
    let pushdown = open_pushdown_for(spec, pool, same_database, &sink).await?;
    Ok((source, sink, pushdown))
}

/// Checks before any write that the target has the columns the source returns, so a typo in
/// the query fails the run up front rather than every partition.
async fn preflight(
    first: &[backfill_core::Window],
    source: &backfill_connectors::AnySource,
    sink: &backfill_connectors::AnySink,
) -> Result<(), EngineError> {
    // The first non-empty partition among the first few gives the column list.
    for window in first {
        let batch = source.read_batch(window, None, 1).await?;
        if !batch.columns.is_empty() {
            source.key_positions(&batch.columns)?;
            sink.check_columns(&batch.columns).await?;
            break;
        }
    }
    Ok(())
}

/// The spec to continue `run` with, as far as its undo log goes: a run resumed with a log it
/// did not keep so far would have a rollback that restores only its later partitions,
/// silently. A run keeps the setting recorded when it was created ([`kept_as_recorded`]).
/// For a run created before the setting was recorded, it is inferred: an `upsert` run that
/// wrote rows with no log entry (it was created with the log off: `undo = false`, or on
/// SQLite by a version where the log was opt-in) continues without one, and says so; the
/// reverse, a run that kept a log resumed with `undo = false`, continues as asked, with a
/// warning that a rollback will restore only what was logged. Only such a resumed run that
/// wrote rows pays the look at the log (one target connection); `replace` runs are left as
/// they are (their counts cannot tell a rewrite that changed nothing, and logged nothing,
/// from one that kept no log).
async fn undo_as_the_run_began<'s>(
    store: &Store,
    spec: &'s Spec,
    run: &RunRecord,
    shutdown: &crate::shutdown::Shutdown,
) -> Result<std::borrow::Cow<'s, Spec>, EngineError> {
    use std::borrow::Cow;
    let applies = matches!(
        spec.target.mode,
        WriteMode::Upsert | WriteMode::Replace { .. }
    );
    if let Some(began) = run.undo_log {
        return kept_as_recorded(spec, run, began);
    }
    // A run's first session (never started) wrote nothing: no look at the store, which sums
    // every partition (a million of them for a big run).
    if run.started_at.is_none()
        || !applies
        || spec.target.propagate_deletes
        || spec.target.shadow.is_some()
    {
        return Ok(Cow::Borrowed(spec));
    }
    let totals = patience::store(shutdown, "read the run's totals", || {
        store.partition_totals(&run.id)
    })
    .await?;
    let written = totals.counts.inserted + totals.counts.updated;
    if written == 0 {
        return Ok(Cow::Borrowed(spec));
    }
    let logged = match backfill_connectors::UndoTarget::open(&spec.target).await {
        Ok(log) => {
            let rows = log.rows(&run.id).await;
            log.close().await;
            rows
        }
        Err(e) => Err(e),
    };
    let Ok(logged) = logged else {
        // The session's own connection reports an unreachable target.
        return Ok(Cow::Borrowed(spec));
    };
    if spec.target.undo && logged == 0 && spec.target.mode == WriteMode::Upsert {
        tracing::warn!(
            run_id = run.id,
            "run {} wrote {written} rows without an undo log (it began with `undo` off: \
             `undo = false`, or on SQLite before the log became the default); it continues \
             without one, so that a rollback never restores only part of it. Start a new run \
             (`--new`) to keep a log",
            run.id
        );
        let mut spec = spec.clone();
        spec.target.undo = false;
        return Ok(Cow::Owned(spec));
    }
    if !spec.target.undo && logged > 0 {
        tracing::warn!(
            run_id = run.id,
            "run {} kept an undo log so far ({logged} rows) and continues with `undo = false`: \
             a rollback will restore only what was logged",
            run.id
        );
    }
    Ok(Cow::Borrowed(spec))
}

/// `spec` with the undo setting `run` was created with (`began`), warned when the spec now
/// says otherwise: a run keeps its undo log from its first write to its last, or never has
/// one, so its rollback never restores only part of it. Refused when the run began with a
/// log and the spec now asks for `partition_exchange`, which keeps none.
fn kept_as_recorded<'s>(
    spec: &'s Spec,
    run: &RunRecord,
    began: bool,
) -> Result<std::borrow::Cow<'s, Spec>, EngineError> {
    use std::borrow::Cow;
    if spec.target.undo == began {
        return Ok(Cow::Borrowed(spec));
    }
    if began && spec.target.partition_exchange {
        return Err(EngineError::UndoKept {
            run_id: run.id.clone(),
        });
    }
    if began {
        tracing::warn!(
            run_id = run.id,
            "run {} began with an undo log and keeps it, although the spec now says \
             `undo = false`, so that its rollback restores all of it. Start a new run (`--new`) \
             to write without a log",
            run.id
        );
    } else {
        tracing::warn!(
            run_id = run.id,
            "run {} began without an undo log and goes on without one, although the spec now \
             says `undo = true`, so that a rollback never restores only part of it. Start a new \
             run (`--new`) to keep a log",
            run.id
        );
    }
    let mut spec = spec.clone();
    spec.target.undo = began;
    Ok(Cow::Owned(spec))
}

/// The pushdown for this run, when `target.pushdown` is on, the mode is `upsert` or
/// `replace` and the connectors can move the rows themselves; `None` means the row path.
async fn open_pushdown_for(
    spec: &Spec,
    pool: u32,
    same_database: bool,
    sink: &AnySink,
) -> Result<Option<AnyPushdown>, EngineError> {
    if !spec.target.pushdown {
        return Ok(None);
    }
    // The pushdown logs only the rows its writes insert or change (the undo log's triggers);
    // `propagate_deletes` in `upsert` needs every key a window's batches wrote, which the row
    // path logs.
    if spec.target.undo && spec.target.propagate_deletes && spec.target.mode == WriteMode::Upsert {
        tracing::info!(
            "pushdown not used: `propagate_deletes` logs every key written, through the engine"
        );
        return Ok(None);
    }
    match spec.target.mode {
        WriteMode::Upsert => {}
        WriteMode::Replace { .. } if spec.limits.rows_per_second.is_none() => {}
        WriteMode::Replace { .. } => {
            tracing::info!(
                "pushdown not used: `replace` moves a partition in one statement, which \
                 `rows_per_second` cannot throttle"
            );
            return Ok(None);
        }
        WriteMode::Sql { .. } => return Ok(None),
    }
    let Some(source) = &spec.source else {
        return Ok(None);
    };
    let Some(pushdown) = open_pushdown(source, &spec.target, pool, same_database).await? else {
        return Ok(None);
    };
    // The row path checks the columns of the first batch; the pushdown writes every column
    // of the query, so they must all be in the target. If not, the row path reports it
    // exactly as before.
    if let Err(e) = sink.check_columns(pushdown.columns()).await {
        tracing::info!(reason = %e, "pushdown not used: rows pass through the engine");
        pushdown.close().await;
        return Ok(None);
    }
    if spec.target.undo
        && let Err(e) = pushdown.use_undo_log(sink).await
    {
        pushdown.close().await;
        return Err(e.into());
    }
    Ok(Some(pushdown))
}

fn serde_json_reason(run: &RunRecord, from: RunState) -> serde_json::Value {
    serde_json::json!({ "reason": run.reason, "from": from.as_str() })
}

/// The run's totals and its first [`SUMMARY_FAILURES`] failed partitions with their last
/// error, from aggregate and indexed queries: never every partition.
async fn read_totals(
    store: &Store,
    run_id: &str,
    shutdown: &Shutdown,
) -> Result<(PartitionTotals, Vec<(String, String)>), EngineError> {
    let totals = patience::store(shutdown, "read the run's totals", || {
        store.partition_totals(run_id)
    })
    .await?;
    let failed = patience::store(shutdown, "read failed partitions", || {
        store.partitions_in_state(run_id, PartitionState::Failed, SUMMARY_FAILURES)
    })
    .await?;
    let failures = failed
        .into_iter()
        .map(|p| (p.partition_id, p.last_error.unwrap_or_default()))
        .collect();
    Ok((totals, failures))
}

pub(crate) fn summarize(
    totals: &PartitionTotals,
    failures: Vec<(String, String)>,
    state: RunState,
    started: std::time::Instant,
    guarantee: Guarantee,
    pushdown: bool,
) -> RunSummary {
    RunSummary {
        state,
        pause_reason: None,
        counts: totals.counts,
        done: totals.count(PartitionState::Done),
        quarantined: totals.count(PartitionState::DoneWithQuarantine),
        failed: totals.count(PartitionState::Failed),
        // A split partition's work is carried by its children: count them, not it.
        total: totals.total(),
        failures,
        elapsed: started.elapsed(),
        session_rows_read: totals.counts.read,
        guarantee,
        pushdown,
        checks: backfill_store::CheckTotals::default(),
        not_verified_reason: None,
    }
}
