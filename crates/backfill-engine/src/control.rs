//! Live control of an executing run: holds (pause, cancel, budget, circuit breaker, time
//! window), limits that change while the run goes (rate, batches per second, concurrency), and
//! the controller task that polls the state store for commands from other terminals.
//!
//! Invariants:
//! - A hold is a level the workers check between batches, exactly like a stop request: the
//!   batch in flight finishes and checkpoints, then the partition goes back to `pending`.
//! - A command written to the store takes effect within [`POLL`] plus one batch: the
//!   controller polls every [`POLL`], and rate waits are cut in slices of at most a tenth of
//!   a second's rows, each taken from the limiter in force at that moment.
//! - Concurrency bounds the batches (for `replace` and `sql`: the partitions) in flight, not
//!   the worker tasks, so lowering it takes effect as soon as in-flight batches end.
//! - Every budget, window and breaker decision is made by the pure policies of
//!   `backfill-core`; this module only feeds them measurements and the clock.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backfill_core::Spec;
use backfill_core::breaker::Breaker;
use backfill_core::budget::{BudgetExtension, BudgetUse, BudgetVerdict};
use backfill_core::run_window::WindowState;
use backfill_store::{ControlRequest, Controls, Store};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::events::{Emitter, Event};

/// How often the controller reads the store's controls.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// How often the controller reports its heartbeat and telemetry.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A heartbeat older than this means no process is executing the run.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);

/// The wall clock the engine reads for time windows and budgets; injectable for tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    /// A clock that reads `now` (a test moves time by changing what it returns).
    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The current instant.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Why the workers are held between batches.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    /// `backfill cancel`: the run ends `cancelled`.
    Cancel,
    /// `backfill pause`.
    User,
    /// Too many batches failed recently; `backfill resume` closes the breaker.
    CircuitOpen {
        /// The last errors seen, newest last.
        errors: Vec<String>,
    },
    /// A budget line reached 100%; `backfill resume --extend-budget` continues.
    BudgetExhausted {
        /// The exhausted lines, e.g. `rows 1000/1000`.
        lines: Vec<String>,
    },
    /// The run may only work inside `limits.window`.
    OutsideWindow {
        /// When the window opens next.
        opens_at: DateTime<Utc>,
    },
}

impl Hold {
    /// The pause reason stored on the run (`paused` runs) and shown by `status`.
    pub fn pause_reason(&self) -> &'static str {
        match self {
            Hold::Cancel => "cancel",
            Hold::User => "user",
            Hold::CircuitOpen { .. } => "circuit_open",
            Hold::BudgetExhausted { .. } => "budget_exhausted",
            Hold::OutsideWindow { .. } => "outside_window",
        }
    }

    /// The audit detail of the pause this hold causes.
    pub(crate) fn detail(&self) -> serde_json::Value {
        let mut detail = json!({ "pause_reason": self.pause_reason() });
        match self {
            Hold::CircuitOpen { errors } => detail["last_errors"] = json!(errors),
            Hold::BudgetExhausted { lines } => detail["budget"] = json!(lines),
            Hold::OutsideWindow { opens_at } => detail["resumes_at"] = json!(opens_at.to_rfc3339()),
            Hold::Cancel | Hold::User => {}
        }
        detail
    }
}

/// A rate limiter that can be replaced while workers wait on it.
struct Rate {
    limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    /// The current limit (0: none), for slicing waits.
    per_second: AtomicU32,
}

impl Rate {
    fn new(per_second: u32) -> Rate {
        let rate = Rate {
            limiter: RwLock::new(None),
            per_second: AtomicU32::new(0),
        };
        rate.set(per_second);
        rate
    }

    /// Sets the limit (0: none). The new bucket holds a tenth of a second of cells, so a
    /// change never lets a whole second's burst through.
    fn set(&self, per_second: u32) {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new((per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        *self.limiter.write().unwrap_or_else(|e| e.into_inner()) = limiter;
        self.per_second.store(per_second, Ordering::Relaxed);
    }

    fn get(&self) -> u32 {
        self.per_second.load(Ordering::Relaxed)
    }

    /// Waits until `cells` more cells are allowed, in slices no larger than the bucket, each
    /// from the limiter in force at that moment.
    async fn take(&self, cells: u64) {
        let mut left = cells;
        while left > 0 {
            let limiter = self
                .limiter
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let Some(limiter) = limiter else { return };
            let slice = u64::from((self.get() / 10).max(1)).min(left);
            if let Some(n) = NonZeroU32::new(u32::try_from(slice).unwrap_or(u32::MAX)) {
                let _ = limiter.until_n_ready(n).await;
            }
            left -= slice;
        }
    }
}

/// The number of batches in flight at once, resizable while workers wait.
struct Gate {
    semaphore: Arc<Semaphore>,
    size: Mutex<u32>,
}

impl Gate {
    fn new(size: u32) -> Gate {
        Gate {
            semaphore: Arc::new(Semaphore::new(size as usize)),
            size: Mutex::new(size),
        }
    }

    /// Resizes to `to` (at least 1): grows at once; shrinks as permits come back.
    fn resize(&self, to: u32) {
        let to = to.max(1);
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if to > *size {
            self.semaphore.add_permits((to - *size) as usize);
        } else if to < *size {
            let shrink = *size - to;
            let semaphore = self.semaphore.clone();
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(shrink).await {
                    permits.forget();
                }
            });
        }
        *size = to;
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        match self.semaphore.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("the concurrency gate is never closed"),
        }
    }
}

/// What the workers and the controller share: the hold, the live limits, the breaker and the
/// session's tallies.
pub(crate) struct Live {
    hold: watch::Sender<Option<Hold>>,
    rows: Rate,
    /// The rows-per-second limit set by the spec or `throttle` (0: none): the ceiling.
    rows_ceiling: AtomicU32,
    /// The rate the adaptive throttle asks for (0: no opinion); the limiter enforces the
    /// lower of this and the ceiling.
    rows_adaptive: AtomicU32,
    batches: Rate,
    gate: Gate,
    concurrency: watch::Sender<u32>,
    /// The most partitions this process can run at once (its connection pools' size).
    capacity: u32,
    breaker: Mutex<Breaker>,
    recent_errors: Mutex<VecDeque<String>>,
    /// Failed batch attempts in this session (the adaptive throttle's error signal).
    errors: AtomicU64,
    /// How long each of the plan's partitions finished in this session took (for
    /// `limits.split_slow`).
    partition_times: Mutex<Vec<Duration>>,
    /// Rows read in this session.
    pub(crate) rows_read: AtomicU64,
    /// Partitions finished (done, with or without quarantine) in this session.
    pub(crate) partitions_finished: AtomicU64,
    /// How many partitions this session may finish under the partition budget (its limit
    /// plus extensions, less what earlier sessions finished); `u64::MAX` without one. Set by
    /// the controller at every poll; the dispatcher starts a partition only while the
    /// partitions finished plus those in flight stay below it, so a budget stops within the
    /// partitions in flight instead of a poll's worth of partitions later.
    partition_allowance: watch::Sender<u64>,
    /// Asks the controller to poll now rather than at the end of its [`POLL`] sleep (the
    /// dispatcher reached the allowance: the budget's hold is due).
    poll_now: tokio::sync::Notify,
}

/// The limits in force: the spec's unless `throttle` changed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) rows_per_second: u32,
    pub(crate) batches_per_second: u32,
    pub(crate) concurrency: u32,
}

impl Limits {
    pub(crate) fn of(spec: &Spec, controls: &Controls) -> Limits {
        Limits {
            rows_per_second: controls
                .rows_per_second
                .unwrap_or(spec.limits.rows_per_second.map_or(0, NonZeroU32::get)),
            batches_per_second: controls
                .batches_per_second
                .unwrap_or(spec.limits.batches_per_second.map_or(0, NonZeroU32::get)),
            concurrency: controls
                .concurrency
                .unwrap_or(spec.limits.concurrency.get())
                .max(1),
        }
    }
}

impl Live {
    /// Live state for a run starting with `limits`, in a process that can run `capacity`
    /// partitions at once.
    pub(crate) fn new(spec: &Spec, limits: Limits, capacity: u32) -> Live {
        let concurrency = limits.concurrency.min(capacity);
        Live {
            hold: watch::channel(None).0,
            rows: Rate::new(limits.rows_per_second),
            rows_ceiling: AtomicU32::new(limits.rows_per_second),
            rows_adaptive: AtomicU32::new(0),
            batches: Rate::new(limits.batches_per_second),
            gate: Gate::new(concurrency),
            concurrency: watch::channel(concurrency).0,
            capacity,
            breaker: Mutex::new(Breaker::new(spec.limits.breaker.clone())),
            recent_errors: Mutex::new(VecDeque::new()),
            errors: AtomicU64::new(0),
            partition_times: Mutex::new(Vec::new()),
            rows_read: AtomicU64::new(0),
            partitions_finished: AtomicU64::new(0),
            partition_allowance: watch::channel(u64::MAX).0,
            poll_now: tokio::sync::Notify::new(),
        }
    }

    /// Partitions this session may still finish under the partition budget (`u64::MAX`
    /// without one). A receiver, so the dispatcher can wait for an extension.
    pub(crate) fn partition_allowance(&self) -> watch::Receiver<u64> {
        self.partition_allowance.subscribe()
    }

    /// Asks the controller for a decision now.
    pub(crate) fn poll_now(&self) {
        self.poll_now.notify_one();
    }

    /// The current hold, if any.
    pub(crate) fn hold(&self) -> Option<Hold> {
        self.hold.borrow().clone()
    }

    /// True while workers must not start another batch.
    pub(crate) fn is_held(&self) -> bool {
        self.hold.borrow().is_some()
    }

    /// Completes when a hold is set (at once if one is).
    pub(crate) async fn held(&self) {
        let mut rx = self.hold.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Completes when the hold is no longer `hold` (lifted or replaced).
    pub(crate) async fn changed_from(&self, hold: &Hold) {
        let mut rx = self.hold.subscribe();
        let _ = rx.wait_for(|h| h.as_ref() != Some(hold)).await;
    }

    fn set_hold(&self, hold: Option<Hold>) -> bool {
        self.hold.send_if_modified(|current| {
            if *current == hold {
                false
            } else {
                *current = hold;
                true
            }
        })
    }

    /// Waits for the rate limits to allow one batch of `rows` rows.
    pub(crate) async fn throttle(&self, rows: usize) {
        self.batches.take(1).await;
        self.rows.take(rows as u64).await;
    }

    /// A permit to have one more batch (or `replace`/`sql` partition) in flight.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        self.gate.permit().await
    }

    /// The concurrency in force, and a receiver that sees it change.
    pub(crate) fn concurrency(&self) -> watch::Receiver<u32> {
        self.concurrency.subscribe()
    }

    /// Applies `limits`; returns the ones now in force (concurrency capped at the capacity).
    fn apply(&self, limits: Limits) -> Limits {
        let concurrency = limits.concurrency.min(self.capacity).max(1);
        self.rows_ceiling
            .store(limits.rows_per_second, Ordering::Relaxed);
        self.enforce_rows();
        if limits.batches_per_second != self.batches.get() {
            self.batches.set(limits.batches_per_second);
        }
        if concurrency != *self.concurrency.borrow() {
            self.gate.resize(concurrency);
            self.concurrency.send_replace(concurrency);
        }
        Limits {
            concurrency,
            ..limits
        }
    }

    /// Failed batch attempts so far in this session.
    pub(crate) fn errors_seen(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The rows-per-second ceiling set by the spec or `throttle` (0: none).
    pub(crate) fn rows_ceiling(&self) -> u32 {
        self.rows_ceiling.load(Ordering::Relaxed)
    }

    /// The rows-per-second limit enforced now (0: none).
    pub(crate) fn rows_rate(&self) -> u32 {
        self.rows.get()
    }

    /// Sets the rate the adaptive throttle wants (0: no opinion); the limiter enforces the
    /// lower of it and the ceiling, so `throttle` always caps the adaptive rate.
    pub(crate) fn set_adaptive_rows(&self, per_second: u32) {
        self.rows_adaptive.store(per_second, Ordering::Relaxed);
        self.enforce_rows();
    }

    fn enforce_rows(&self) {
        let ceiling = self.rows_ceiling.load(Ordering::Relaxed);
        let adaptive = self.rows_adaptive.load(Ordering::Relaxed);
        let rate = match (ceiling, adaptive) {
            (0, a) => a,
            (c, 0) => c,
            (c, a) => c.min(a),
        };
        if rate != self.rows.get() {
            self.rows.set(rate);
        }
    }

    /// Records how long a finished partition took.
    pub(crate) fn record_partition_time(&self, took: Duration) {
        self.partition_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(took);
    }

    /// Whether a partition running for `elapsed` is slow enough to split under `policy`.
    pub(crate) fn is_slow(
        &self,
        policy: &backfill_core::split::SplitPolicy,
        elapsed: Duration,
    ) -> bool {
        policy.slow_factor.is_some()
            && policy.is_slow(
                elapsed,
                &self
                    .partition_times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            )
    }

    /// The median time of the partitions finished in this session.
    pub(crate) fn median_partition_time(&self) -> Option<Duration> {
        backfill_core::split::median(
            &self
                .partition_times
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Records one batch attempt's outcome in the circuit breaker; opens the hold at once when
    /// the breaker trips.
    pub(crate) fn record_batch(&self, error: Option<&str>) {
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut recent = self.recent_errors.lock().unwrap_or_else(|e| e.into_inner());
            recent.push_back(error.to_owned());
            while recent.len() > 5 {
                recent.pop_front();
            }
        }
        let tripped = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(error.is_none());
        if tripped && !self.is_held() {
            self.set_hold(Some(self.circuit_hold()));
        }
    }

    fn breaker_open(&self) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_open()
    }

    fn breaker_error_rate(&self) -> f64 {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error_rate()
    }

    fn circuit_hold(&self) -> Hold {
        Hold::CircuitOpen {
            errors: self
                .recent_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }

    fn close_breaker(&self) {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.recent_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// What the controller needs besides the shared state.
pub(crate) struct Controller {
    pub(crate) run_id: String,
    pub(crate) spec: Spec,
    pub(crate) store: Store,
    pub(crate) live: Arc<Live>,
    pub(crate) clock: Clock,
    pub(crate) emitter: Emitter,
    /// Partitions in the run's plan.
    pub(crate) partitions_total: u64,
    /// Rows read and partitions finished by earlier sessions of the run.
    pub(crate) rows_before: u64,
    pub(crate) partitions_before: u64,
    /// The controls read when the session started.
    pub(crate) controls: Controls,
    /// What the adaptive throttle publishes for `status`, when the spec has `[throttle]`.
    pub(crate) adaptive: Option<crate::adaptive::SharedStatus>,
    /// This process's claim on the run, renewed with every heartbeat.
    pub(crate) lease: backfill_store::Lease,
    /// Requested when the claim is lost, so the workers stop at once.
    pub(crate) shutdown: crate::Shutdown,
}

impl Controller {
    /// Polls the store until `stop` is set; sets and clears holds, applies limit changes,
    /// reports heartbeats. Store errors are logged and retried at the next poll.
    /// `ready` is sent after the first decision, so no batch starts before it.
    pub(crate) async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut seen_version = self.controls.version;
        let mut seen_resumes = self.controls.resumes;
        let mut controls = self.controls.clone();
        let mut limits = self.live.apply(Limits::of(&self.spec, &controls));
        let mut warned: Vec<&'static str> = Vec::new();
        let mut last_beat = Instant::now();
        // The first heartbeat goes out at once: another process starting now sees this one.
        let mut first_beat = true;
        // The hold last announced (by reason): a worker may set a hold itself (the breaker),
        // so announcing follows what was said, not what changed here.
        let mut announced: Option<&'static str> = None;
        let mut active_since_beat = Duration::ZERO;
        let mut last_tick = Instant::now();
        let _ = self
            .store
            .record_rate_change(
                &self.run_id,
                rate_of(limits.rows_per_second),
                "start",
                &json!({ "concurrency": limits.concurrency, "batches_per_second": limits.batches_per_second }),
            )
            .await;
        loop {
            let now = Instant::now();
            if !self.live.is_held() {
                active_since_beat += now - last_tick;
            }
            last_tick = now;
            match self.store.controls(&self.run_id).await {
                Ok(c) => controls = c,
                Err(e) => {
                    tracing::warn!(run_id = self.run_id, error = %e, "cannot read run controls")
                }
            }
            if controls.version != seen_version {
                seen_version = controls.version;
                let wanted = self.live.apply(Limits::of(&self.spec, &controls));
                if wanted != limits {
                    self.limits_changed(limits, wanted).await;
                    limits = wanted;
                }
                if controls.resumes != seen_resumes {
                    seen_resumes = controls.resumes;
                    self.live.close_breaker();
                }
            }
            let used = self.budget_use(&controls, active_since_beat);
            let extension = extension_of(&controls);
            let verdict = self.spec.limits.budget.verdict(&used, &extension);
            if let BudgetVerdict::Warning(lines) = &verdict {
                for line in lines {
                    let kind = line.kind.as_str();
                    if !warned.contains(&kind) {
                        warned.push(kind);
                        tracing::warn!(
                            run_id = self.run_id,
                            budget = kind,
                            used = line.used,
                            limit = line.limit,
                            "budget 80% used"
                        );
                        self.emitter.emit(Event::BudgetWarning {
                            kind: kind.to_owned(),
                            used: line.used,
                            limit: line.limit,
                        });
                    }
                }
            }
            let allowance = self.partition_allowance(&extension);
            self.live
                .partition_allowance
                .send_if_modified(|a| std::mem::replace(a, allowance) != allowance);
            let wanted = self.wanted_hold(&controls, &verdict);
            self.live.set_hold(wanted.clone());
            let reason = wanted.as_ref().map(Hold::pause_reason);
            if reason != announced {
                announced = reason;
                match &wanted {
                    Some(hold) => {
                        tracing::info!(
                            run_id = self.run_id,
                            reason = hold.pause_reason(),
                            "holding the workers"
                        );
                        self.emitter.emit(Event::Holding { hold: hold.clone() });
                    }
                    None => {
                        tracing::info!(run_id = self.run_id, "releasing the workers");
                        self.emitter.emit(Event::Released);
                    }
                }
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            if last_beat.elapsed() >= HEARTBEAT || first_beat {
                first_beat = false;
                if !self.renew_claim().await {
                    break;
                }
                let live = self.telemetry(&limits, &used, &extension);
                let active_ms = u64::try_from(active_since_beat.as_millis()).unwrap_or(u64::MAX);
                match self.store.heartbeat(&self.run_id, active_ms, &live).await {
                    Ok(()) => {
                        controls.active_ms += active_ms;
                        active_since_beat = Duration::ZERO;
                    }
                    Err(e) => {
                        tracing::warn!(run_id = self.run_id, error = %e, "cannot report heartbeat")
                    }
                }
                last_beat = Instant::now();
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.live.poll_now.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // The last slice of running time counts too, and the last telemetry stays for
        // `status`, marked stopped so no one takes this process for a live one.
        let active_ms = u64::try_from(active_since_beat.as_millis()).unwrap_or(u64::MAX);
        controls.active_ms += active_ms;
        let used = self.budget_use(&controls, Duration::ZERO);
        let extension = extension_of(&controls);
        let mut last = self.telemetry(&limits, &used, &extension);
        last["state"] = json!("stopped");
        let _ = self.store.heartbeat(&self.run_id, active_ms, &last).await;
    }

    /// Renews this process's claim on the run. False when another process claimed it: then
    /// every write of this process is refused, so the workers are told to stop.
    async fn renew_claim(&self) -> bool {
        match self.store.renew_lease(&self.lease).await {
            Ok(_) => true,
            Err(e @ backfill_store::StoreError::LeaseLost { .. }) => {
                tracing::error!(run_id = self.run_id, error = %e, "stopping");
                self.shutdown.request();
                false
            }
            Err(e) => {
                // Still ours until it expires; the next heartbeat tries again.
                tracing::warn!(run_id = self.run_id, error = %e, "cannot renew the run's claim");
                true
            }
        }
    }

    async fn limits_changed(&self, from: Limits, to: Limits) {
        tracing::info!(
            run_id = self.run_id,
            rows_per_second = to.rows_per_second,
            batches_per_second = to.batches_per_second,
            concurrency = to.concurrency,
            "limits changed by `throttle`"
        );
        if to.concurrency < from.concurrency.max(to.concurrency)
            && to.concurrency == self.live.capacity
        {
            tracing::warn!(
                run_id = self.run_id,
                capacity = self.live.capacity,
                "concurrency capped at this process's connection pools"
            );
        }
        self.emitter.emit(Event::Throttled {
            rows_per_second: to.rows_per_second,
            batches_per_second: to.batches_per_second,
            concurrency: to.concurrency,
        });
        let _ = self
            .store
            .record_rate_change(
                &self.run_id,
                rate_of(to.rows_per_second),
                "manual",
                &json!({
                    "from": rate_of(from.rows_per_second),
                    "concurrency": to.concurrency,
                    "batches_per_second": to.batches_per_second,
                }),
            )
            .await;
    }

    fn budget_use(&self, controls: &Controls, unreported: Duration) -> BudgetUse {
        BudgetUse {
            rows: self.rows_before + self.live.rows_read.load(Ordering::Relaxed),
            active: Duration::from_millis(controls.active_ms) + unreported,
            partitions: self.partitions_before
                + self.live.partitions_finished.load(Ordering::Relaxed),
        }
    }

    /// Partitions this session may finish under the partition budget and `extension`:
    /// `u64::MAX` without a partition budget.
    fn partition_allowance(&self, extension: &BudgetExtension) -> u64 {
        self.spec
            .limits
            .budget
            .partitions
            .map_or(u64::MAX, |limit| {
                (limit + extension.partitions).saturating_sub(self.partitions_before)
            })
    }

    /// The hold the run should be under now, most serious first.
    fn wanted_hold(&self, controls: &Controls, verdict: &BudgetVerdict) -> Option<Hold> {
        match controls.requested {
            Some(ControlRequest::Cancel) => return Some(Hold::Cancel),
            Some(ControlRequest::Pause) => return Some(Hold::User),
            None => {}
        }
        if self.live.breaker_open() {
            return Some(self.live.circuit_hold());
        }
        if let BudgetVerdict::Exhausted(lines) = verdict {
            return Some(Hold::BudgetExhausted {
                lines: lines
                    .iter()
                    .filter(|l| l.used >= l.limit)
                    .map(|l| format!("{} {}/{}", l.kind.as_str(), l.used, l.limit))
                    .collect(),
            });
        }
        if let Some(window) = &self.spec.limits.window
            && let WindowState::Closed { opens_at } = window.state_at(self.clock.now())
        {
            return Some(Hold::OutsideWindow { opens_at });
        }
        None
    }

    fn telemetry(
        &self,
        limits: &Limits,
        used: &BudgetUse,
        extension: &BudgetExtension,
    ) -> serde_json::Value {
        let budget = &self.spec.limits.budget;
        let verdict = &budget.verdict(used, extension);
        let lines = &budget.lines(used, extension);
        let hold = self.live.hold();
        let mut live = json!({
            "pid": std::process::id(),
            "host": host(),
            "state": if hold.is_some() { "held" } else { "running" },
            "hold": hold.as_ref().map(Hold::pause_reason),
            "rows_per_second": rate_of(limits.rows_per_second),
            "batches_per_second": rate_of(limits.batches_per_second),
            "concurrency": limits.concurrency,
            "breaker_error_rate": self.live.breaker_error_rate(),
            "budget": lines.iter().map(|l| json!({
                "kind": l.kind.as_str(), "used": l.used, "limit": l.limit,
            })).collect::<Vec<_>>(),
            "budget_warning": matches!(verdict, BudgetVerdict::Warning(_)),
        });
        live["order"] = json!(self.spec.limits.order.describe());
        if let Some(cost) = &self.spec.limits.budget.cost {
            live["cost"] = self.cost_telemetry(cost, used);
        }
        if let Some(adaptive) = &self.adaptive {
            live["adaptive"] = adaptive.lock().unwrap_or_else(|e| e.into_inner()).to_json();
        }
        if let Some(Hold::OutsideWindow { opens_at }) = &hold {
            live["resumes_at"] = json!(opens_at.to_rfc3339());
        }
        if let Some(window) = &self.spec.limits.window
            && let WindowState::Open { closes_at } = window.state_at(self.clock.now())
        {
            live["window_closes_at"] = json!(closes_at.to_rfc3339());
        }
        live
    }
}

impl Controller {
    /// Money spent so far and projected to complete, at the pace of the finished partitions.
    fn cost_telemetry(
        &self,
        cost: &backfill_core::budget::CostModel,
        used: &BudgetUse,
    ) -> serde_json::Value {
        let rows = used.rows;
        let finished = used.partitions;
        let active = used.active.as_secs_f64();
        let so_far = cost.cost(rows, used.active);
        let to_complete = (finished > 0).then(|| {
            let left = self.partitions_total.saturating_sub(finished) as f64 / finished as f64;
            let rows_left = (rows as f64 * left) as u64;
            let time_left = Duration::from_secs_f64((active * left).max(0.0));
            cost.cost(rows_left, time_left)
        });
        json!({
            "so_far": cost.format(so_far),
            "to_complete": to_complete.map(|c| cost.format(c)),
            "so_far_amount": so_far,
            "to_complete_amount": to_complete,
            "currency": cost.currency,
        })
    }
}

fn rate_of(per_second: u32) -> Option<f64> {
    (per_second > 0).then_some(f64::from(per_second))
}

/// The budget granted by `resume --extend-budget`, as the core policy counts it.
pub(crate) fn extension_of(controls: &Controls) -> BudgetExtension {
    BudgetExtension {
        rows: controls.budget_extra.rows,
        duration: Duration::from_millis(controls.budget_extra.duration_ms),
        partitions: controls.budget_extra.partitions,
        cost: controls.budget_extra.cost,
    }
}

/// This machine's host name (empty when unknown), to tell this host's processes apart.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

/// Whether process `pid` of this host exists (and is not this process). Where processes
/// cannot be checked (no `/proc`), assume it does.
pub(crate) fn process_exists(pid: u64) -> bool {
    if pid == u64::from(std::process::id()) {
        return false;
    }
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (killed, not yet reaped) is gone for our purposes.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}
