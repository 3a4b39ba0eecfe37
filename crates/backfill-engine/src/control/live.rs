//! The state the workers and the controller share: holds, the limits in force, the circuit
//! breaker and this session's counters.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backfill_core::Spec;
use backfill_core::breaker::Breaker;
use backfill_store::Controls;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::Hold;

use super::gate::{Gate, Rate};

/// What the workers and the controller share: the hold, the live limits, the breaker and the
/// session's tallies.
pub(crate) struct Live {
    pub(super) hold: watch::Sender<Option<Hold>>,
    pub(super) rows: Rate,
    /// The rows-per-second limit set by the spec or `throttle` (0: none): the ceiling.
    pub(super) rows_ceiling: AtomicU32,
    /// The rate the adaptive throttle asks for (0: no opinion); the limiter enforces the
    /// lower of this and the ceiling.
    pub(super) rows_adaptive: AtomicU32,
    pub(super) batches: Rate,
    pub(super) gate: Gate,
    pub(super) concurrency: watch::Sender<u32>,
    /// The most partitions this process can run at once (its connection pools' size).
    pub(super) capacity: u32,
    pub(super) breaker: Mutex<Breaker>,
    pub(super) recent_errors: Mutex<VecDeque<String>>,
    /// Failed batch attempts in this session (the adaptive throttle's error signal).
    pub(super) errors: AtomicU64,
    /// How long each of the plan's partitions finished in this session took (for
    /// `limits.split_slow`).
    pub(super) partition_times: Mutex<Vec<Duration>>,
    /// Rows read in this session.
    pub(crate) rows_read: AtomicU64,
    /// Partitions finished (done, with or without quarantine) in this session.
    pub(crate) partitions_finished: AtomicU64,
    /// Partition attempts that ended in an error (retried or failed) in this session: with
    /// the partitions finished, what `[slo]`'s error budget counts.
    pub(crate) attempts_failed: AtomicU64,
    /// How many partitions this session may finish under the partition budget (its limit
    /// plus extensions, less what earlier sessions finished); `u64::MAX` without one. Set by
    /// the controller at every poll; the dispatcher starts a partition only while the
    /// partitions finished plus those in flight stay below it, so a budget stops within the
    /// partitions in flight instead of a poll's worth of partitions later.
    pub(super) partition_allowance: watch::Sender<u64>,
    /// Asks the controller to poll now rather than at the end of its [`POLL`] sleep (the
    /// dispatcher reached the allowance: the budget's hold is due).
    pub(super) poll_now: tokio::sync::Notify,
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
            attempts_failed: AtomicU64::new(0),
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

    pub(super) fn set_hold(&self, hold: Option<Hold>) -> bool {
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
    pub(super) fn apply(&self, limits: Limits) -> Limits {
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

    pub(super) fn enforce_rows(&self) {
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

    pub(super) fn breaker_open(&self) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_open()
    }

    pub(super) fn breaker_error_rate(&self) -> f64 {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error_rate()
    }

    pub(super) fn circuit_hold(&self) -> Hold {
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

    pub(super) fn close_breaker(&self) {
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
