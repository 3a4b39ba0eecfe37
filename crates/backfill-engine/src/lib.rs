//! Runs a backfill plan: concurrency, rate limit, retries, checkpoints and progress.
//!
//! Owns time, async and the order of side effects. Deliberately does not parse specs or plan
//! (that is `backfill-core`), store anything itself (`backfill-store`) or speak to databases
//! (`backfill-connectors`): it takes all three as arguments, so the same engine runs from the
//! CLI, from tests and from a library user's program.
//!
//! Invariants kept here (see ARCHITECTURE.md for the full list):
//! - a checkpoint never runs ahead of a durable target write, and commits with it when the
//!   target database is the state store;
//! - a run of a spec resumes the unfinished run of the same spec instead of duplicating it;
//! - a permanently failed partition does not stop the others; the run ends `failed`;
//! - a stop request lets in-flight batches finish and checkpoint, then pauses the run.
//!
//! # Example
//!
//! Build a spec in code and run it (see `examples/library.rs` for a complete program):
//!
//! ```no_run
//! # async fn demo(spec: backfill_core::Spec) -> Result<(), backfill_engine::EngineError> {
//! use backfill_engine::{ExecuteOptions, Shutdown, prepare_run, execute};
//! let store = backfill_store::Store::open("sqlite://.backfill/state.db").await?;
//! let plan = backfill_core::plan::plan(&spec)?;
//! let launch = prepare_run(&store, &spec, &plan, Some("fix March"), "me@host", false).await?;
//! let options = ExecuteOptions::new("me@host", Shutdown::new());
//! let summary = execute(&store, &spec, launch.run(), options).await?;
//! println!("{} rows written", summary.counts.written());
//! # Ok(()) }
//! ```

mod adaptive;
mod claim;
mod control;
mod error;
mod events;
mod execute;
mod patience;
mod pending;
mod replan;
mod shutdown;
pub mod status;

use std::sync::Arc;

use backfill_connectors::{
    AnyPushdown, AnySink, AnySource, ConnectorError, open_pushdown, open_sink, open_source,
};
use backfill_core::plan::Plan;
use backfill_core::retry::ErrorClass;
use backfill_core::{Guarantee, PartitionState, RowCounts, RunState, Spec, WriteMode};
use backfill_store::{NewRun, PartitionTotals, RunRecord, Store};
use tokio::sync::mpsc;

pub use claim::{DEFAULT_LEASE, ensure_unclaimed};
pub use control::{Clock, Hold, LIVE_WITHIN};
pub use error::EngineError;
pub use events::{Emitter, Event};
pub use replan::check_same_plan;
pub use shutdown::Shutdown;

use crate::control::{Controller, Limits, Live};
use crate::execute::Ctx;
use crate::pending::Pending;

/// Whether `prepare_run` made a new run or found the unfinished one of the same spec.
#[derive(Clone, Debug)]
pub enum Launch {
    /// A new run was created (state `planned`).
    Created(RunRecord),
    /// An unfinished run of the same spec and plan exists; it will be resumed.
    Resumed(RunRecord),
}

impl Launch {
    /// The run to execute.
    pub fn run(&self) -> &RunRecord {
        match self {
            Launch::Created(r) | Launch::Resumed(r) => r,
        }
    }
}

/// Finds the unfinished run of `spec` or creates a new one. A run needs a reason: `reason`
/// (from the command line) or the spec's. With `force_new`, an unfinished run is left alone
/// and a new one is created. An unfinished run whose plan the spec no longer makes is
/// refused ([`EngineError::PlanChanged`], from [`check_same_plan`]).
pub async fn prepare_run(
    store: &Store,
    spec: &Spec,
    plan: &Plan,
    reason: Option<&str>,
    owner: &str,
    force_new: bool,
) -> Result<Launch, EngineError> {
    let reason = reason
        .or(spec.reason.as_deref())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or(EngineError::NoReason)?;
    let normalized = plan.normalized.to_json();
    let new = NewRun {
        spec_name: &spec.name,
        spec_hash: &spec.spec_hash,
        plan_hash: &plan.hash,
        normalized_spec: &normalized,
        spec_text: &spec.redacted_text,
        owner,
        reason,
        partitions: &plan.partitions,
        guarantee: guarantee(store, spec),
    };
    if force_new {
        return Ok(Launch::Created(store.create_run(new).await?));
    }
    // One transaction looks for the unfinished run and creates one only if there is none, so
    // two `run SPEC` started at the same moment share one run.
    let (run, created) = store.find_or_create_run(new).await?;
    if created {
        return Ok(Launch::Created(run));
    }
    check_same_plan(&run, spec, plan)?;
    Ok(Launch::Resumed(run))
}

/// The delivery guarantee a run of `spec` kept in `store` has: exactly once only when the
/// rows are upserted into the store's own database (see [`Guarantee`]).
pub fn guarantee(store: &Store, spec: &Spec) -> Guarantee {
    Guarantee::of(
        &spec.target.mode,
        store.same_database(spec.target.url.expose()),
    )
}

/// How `execute` reports and stops.
pub struct ExecuteOptions {
    /// Who is executing (user@host), recorded on every audit event.
    pub actor: String,
    /// Graceful stop request.
    pub shutdown: Shutdown,
    /// Receives progress events, when set.
    pub listener: Option<mpsc::UnboundedSender<Event>>,
    /// The wall clock for `limits.window` (the system clock unless a test injects one).
    pub clock: Clock,
    /// How long this process's claim on the run lasts without renewal (it renews every
    /// second): how long others wait for a process that stopped without letting go.
    pub lease: std::time::Duration,
    /// When another process holds the run: wait for it to let go (true) or fail at once with
    /// [`EngineError::Held`] (false, the default).
    pub wait_for_claim: bool,
}

impl ExecuteOptions {
    /// Options with no progress listener.
    pub fn new(actor: &str, shutdown: Shutdown) -> Self {
        ExecuteOptions {
            actor: actor.to_owned(),
            shutdown,
            listener: None,
            clock: Clock::system(),
            lease: DEFAULT_LEASE,
            wait_for_claim: false,
        }
    }
}

/// The outcome of `execute`.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The run's state afterwards: `succeeded`, `failed`, `paused` or `cancelled`.
    pub state: RunState,
    /// Why it is paused (`stopped`, `user`, `budget_exhausted`, `circuit_open`,
    /// `outside_window`) when `state` is `paused`.
    pub pause_reason: Option<String>,
    /// Totals over every partition of the run (including earlier sessions).
    pub counts: RowCounts,
    /// Partitions done / failed / total.
    pub done: u64,
    /// Partitions that failed permanently.
    pub failed: u64,
    /// All partitions of the run.
    pub total: u64,
    /// Partitions that finished with rows in quarantine (`backfill quarantine RUN`).
    pub quarantined: u64,
    /// Failed partitions and their last error, in plan order: the first
    /// [`SUMMARY_FAILURES`] (`failed` counts them all).
    pub failures: Vec<(String, String)>,
    /// Wall time of this call.
    pub elapsed: std::time::Duration,
    /// Rows read by this call (the run's totals include earlier sessions).
    pub session_rows_read: u64,
    /// What a crash could have done to the target during this call: exactly once only for
    /// upserts into the state store's own database, where checkpoints commit with writes.
    pub guarantee: Guarantee,
    /// True when this call moved the rows inside the databases (`target.pushdown`) rather
    /// than through the engine.
    pub pushdown: bool,
}

/// Executes (or continues) `run`: resets partitions a crashed process left `running`,
/// reopens failed partitions of a failed or cancelled run, then processes every pending
/// partition from its checkpoint, in the spec's `order`.
///
/// While it runs, a controller polls the store for commands from other terminals (`pause`,
/// `resume`, `cancel`, `throttle`) and checks the budget, the circuit breaker and the time
/// window. A hold lets in-flight batches finish and checkpoint, marks the run `paused` with
/// its reason, and waits here until it is lifted (then the run continues) or a cancel (the run
/// ends `cancelled`) or a stop request (the run stays `paused`, and this returns).
///
/// Executing needs the run's claim (see [`claim`](crate::claim)): when another process holds
/// it, this fails with [`EngineError::Held`], or with `options.wait_for_claim` waits for it to
/// be let go (and returns the run's summary without executing when the run succeeded
/// meanwhile). Every write this process makes is fenced by its claim: if another process
/// claims the run (this one stopped renewing past `options.lease`), this one's writes are
/// refused and it returns the store's [`StoreError::LeaseLost`](backfill_store::StoreError).
pub async fn execute(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    options: ExecuteOptions,
) -> Result<RunSummary, EngineError> {
    let started = std::time::Instant::now();
    let shutdown = options.shutdown.clone();
    let (lease, waited) = claim::claim_run(
        store,
        &run.id,
        options.lease,
        options.wait_for_claim,
        &shutdown,
    )
    .await?;
    let fenced = store.fenced(&lease);
    let result = execute_claimed(
        &fenced,
        spec,
        &run.id,
        options,
        lease.clone(),
        waited,
        started,
    )
    .await;
    if let Err(e) = store.release_lease(&lease).await {
        tracing::warn!(run_id = run.id, error = %e, "cannot release the run's claim");
    }
    result
}

/// [`execute`] once this process holds the run's claim; `store` is fenced by it.
async fn execute_claimed(
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
        if waited {
            // Another process finished it while this one waited: report, do not redo.
            let (totals, failures) = read_totals(store, run_id, shutdown).await?;
            let guarantee = guarantee(store, spec);
            let mut summary = summarize(&totals, failures, run.state, started, guarantee, false);
            summary.session_rows_read = 0;
            return Ok(summary);
        }
        return Err(EngineError::NotResumable {
            run_id: run.id,
            state: run.state.to_string(),
            hint: "every partition is done; use `backfill run --new` to run the spec again".into(),
        });
    }
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
    let read_before = totals.counts.read;
    let finished_before = PartitionState::ALL
        .iter()
        .filter(|s| s.is_finished())
        .map(|s| totals.count(*s))
        .sum();

    let emitter = Emitter::new(&run.id, options.listener);
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
        shutdown: options.shutdown.clone(),
        emitter: emitter.clone(),
        same_database,
    });
    let (stop_controller, controller_stopped) = tokio::sync::watch::channel(false);
    let (ready, controller_ready) = tokio::sync::oneshot::channel();
    // `[throttle]`: the probe's baseline is measured before any batch runs.
    let adaptive = adaptive::Adaptive::start(spec, &run.id, store, &live, shutdown).await;
    let adaptive_status = adaptive.as_ref().map(adaptive::Adaptive::status);
    let controller = tokio::spawn(
        Controller {
            run_id: run.id.clone(),
            spec: spec.clone(),
            store: store.clone(),
            live: live.clone(),
            clock: options.clock.clone(),
            emitter: emitter.clone(),
            partitions_total: run.partitions_total,
            rows_before: read_before,
            partitions_before: finished_before,
            controls,
            adaptive: adaptive_status,
            lease,
            shutdown: options.shutdown.clone(),
        }
        .run(controller_stopped, ready),
    );
    // The first decision (a budget already spent, a closed window…) comes before any batch.
    let _ = controller_ready.await;
    let adaptive = adaptive.map(|a| tokio::spawn(a.run(stop_controller.subscribe())));
    let watcher = {
        let shutdown = options.shutdown.clone();
        let emitter = emitter.clone();
        tokio::spawn(async move {
            shutdown.requested().await;
            emitter.emit(Event::Stopping);
        })
    };

    let mut state = run.state;
    let mut interrupted = false;
    let mut cancelled = false;
    loop {
        if !live.is_held() && !shutdown.is_requested() {
            if state != RunState::Running {
                let detail = serde_json_reason(&run, state);
                patience::store(shutdown, "mark the run running", || {
                    store.set_run_state(&run.id, RunState::Running, actor, detail.clone())
                })
                .await?;
                state = RunState::Running;
            }
            // A pass over the pending work, read a page at a time: never every partition.
            let pending = Pending::start(
                spec,
                store,
                &run.id,
                run.partitions_total,
                ctx.source.as_ref(),
                shutdown,
            )
            .await?;
            let pass = execute::run_partitions(ctx.clone(), pending).await;
            if let Some(e) = pass.error {
                return Err(e.into());
            }
            if pass.idle {
                break;
            }
            interrupted |= pass.interrupted;
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
            cancelled = true;
            break;
        }
        if state != RunState::Paused {
            let detail = hold.detail();
            patience::store(shutdown, "mark the run paused", || {
                store.set_run_state(&run.id, RunState::Paused, actor, detail.clone())
            })
            .await?;
            state = RunState::Paused;
        }
        // Wait for the hold to change: lifted, another reason, or a cancel.
        tokio::select! {
            () = live.changed_from(&hold) => {}
            () = shutdown.requested() => break,
        }
    }
    let _ = stop_controller.send(true);
    let _ = controller.await;
    if let Some(adaptive) = adaptive {
        let _ = adaptive.await;
    }
    watcher.abort();
    if let Some(source) = &ctx.source {
        source.close().await;
    }
    ctx.sink.close().await;
    if let Some(pushdown) = &ctx.pushdown {
        pushdown.close().await;
    }
    let pushed = ctx.pushdown.is_some();

    interrupted |= options.shutdown.is_requested();
    patience::store(shutdown, "reset interrupted partitions", || {
        store.reset_interrupted(&run.id, actor)
    })
    .await?;
    let (totals, failures) = read_totals(store, &run.id, shutdown).await?;
    let guarantee = Guarantee::of(&spec.target.mode, same_database);
    let done =
        totals.all() == totals.count(PartitionState::Done) + totals.count(PartitionState::Split);
    let any_pending = totals.count(PartitionState::Pending) > 0;
    let final_state = if done {
        RunState::Succeeded
    } else if cancelled {
        RunState::Cancelled
    } else if interrupted || any_pending {
        RunState::Paused
    } else {
        RunState::Failed
    };
    let mut summary = summarize(&totals, failures, final_state, started, guarantee, pushed);
    summary.session_rows_read = summary.counts.read.saturating_sub(read_before);
    let mut detail = serde_json::json!({
        "done": summary.done,
        "failed": summary.failed,
        "total": summary.total,
        "rows_read": summary.counts.read,
        "rows_written": summary.counts.written(),
    });
    if final_state != state {
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

/// Who may be executing a run, from its controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Executor {
    /// No recent heartbeat, a clean stop, or a process of this host that no longer exists
    /// (killed): nobody.
    Nobody,
    /// A live process of this host.
    Alive {
        /// Its process id.
        pid: u64,
        /// This host's name.
        host: String,
    },
    /// A recent heartbeat from another host (or one without a pid): only a moving heartbeat
    /// tells whether it is still alive.
    Unknown {
        /// The host it reported, if any.
        host: Option<String>,
    },
}

/// Who may be executing the run whose controls are `controls`, now. Never waits; see
/// [`Executor`].
pub fn executor(controls: &backfill_store::Controls) -> Executor {
    if !controls.is_live(chrono::Utc::now(), LIVE_WITHIN) {
        return Executor::Nobody;
    }
    let Some(live) = &controls.live else {
        return Executor::Unknown { host: None };
    };
    if live["state"].as_str() == Some("stopped") {
        return Executor::Nobody;
    }
    let host = live["host"].as_str().map(str::to_owned);
    match (host, live["pid"].as_u64()) {
        (Some(host), Some(pid)) if host == control::host() => {
            if control::process_exists(pid) {
                Executor::Alive { pid, host }
            } else {
                Executor::Nobody
            }
        }
        (host, _) => Executor::Unknown { host },
    }
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
    if let Ok(Some(false)) = sink.window_indexed().await {
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
    Ok(Some(pushdown))
}

fn serde_json_reason(run: &RunRecord, from: RunState) -> serde_json::Value {
    serde_json::json!({ "reason": run.reason, "from": from.as_str() })
}

/// Failed partitions a summary lists by id and error (the count covers them all).
pub const SUMMARY_FAILURES: usize = 1000;

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

fn summarize(
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
    }
}
