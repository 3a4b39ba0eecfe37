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
mod canary;
mod claim;
mod control;
pub mod diff;
mod error;
mod events;
mod execute;
pub mod gates;
pub mod only_gaps;
mod patience;
mod pending;
pub mod reconcile;
mod replan;
pub mod rollback;
mod session;
pub mod shadow;
mod shutdown;
pub mod status;

use backfill_core::plan::Plan;
use backfill_core::{Guarantee, RowCounts, RunState, Spec};
use backfill_store::{NewRun, RunRecord, Store};
use tokio::sync::mpsc;

pub use claim::{DEFAULT_LEASE, ensure_unclaimed};
pub use control::{Clock, Hold, LIVE_WITHIN};
pub use diff::{Diff, DiffError, DiffOptions, DiffProgress, diff};
pub use error::EngineError;
pub use events::{Emitter, Event};
pub use replan::check_same_plan;
pub use shutdown::Shutdown;

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
        partitions: plan,
        guarantee: guarantee(store, spec),
        undo_log: spec.target.undo,
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
    /// Partitions verified, mismatched and not verified by reconciliation (`[validate]`).
    pub checks: backfill_store::CheckTotals,
    /// Why nothing was reconciled, when nothing was (see `backfill_core::reconcile`).
    pub not_verified_reason: Option<String>,
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
    let result = session::execute_claimed(
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

/// Failed partitions a summary lists by id and error (the count covers them all).
pub const SUMMARY_FAILURES: usize = 1000;
