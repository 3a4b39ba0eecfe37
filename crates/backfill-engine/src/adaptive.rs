//! Adaptive throttling (`[throttle]`): the task that probes a live-facing database, feeds the
//! pure AIMD controller (`backfill_core::aimd`) and steers the run's rows limiter.
//!
//! Protocol: [`Adaptive::start`] opens the probe and measures the baseline (p50/p90 over
//! `baseline_probes` probes, and from them the probe's noise ceiling for a window, which the
//! controller's latency limit includes) before any batch runs; `execute` awaits it. Then [`Adaptive::run`]
//! probes every `interval`: it keeps the last `window` latencies, reads the replica lag when
//! `max_replica_lag` is set and counts the batch attempts that failed since the previous
//! interval, and hands these to [`Aimd::on_interval`]. A change is applied at once
//! ([`Live::set_adaptive_rows`]), logged with its cause and kept in the store's rate time
//! series; the numbers `status` shows are published in an [`AdaptiveStatus`] the controller
//! reads for its heartbeat.
//!
//! Does not: enforce anything itself (the limiter enforces the lower of the operator's ceiling
//! and this rate), hold or stop the run, or retry batches.
//!
//! Invariants:
//! - A probe failure (connection lost, timeout, a failing statement) is an unhealthy interval,
//!   logged, never an error of the run.
//! - The adaptive rate never exceeds the ceiling in force: the controller's maximum follows
//!   `backfill throttle` ([`Aimd::set_max`]).
//! - While the run is held (paused, outside its window…) the rate does not move: an idle
//!   workload says nothing about what the run costs. Probing goes on.
//! - After a cut, the latencies measured before it are forgotten, and no decision is taken
//!   until a whole `window` of new probes is in (likewise at the start): a p90 still full of
//!   the old rate's samples would otherwise cut again and again down to the floor, and the
//!   p90 of a few probes is their maximum, which a single hiccup decides.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_connectors::Probe;
use backfill_core::Spec;
use backfill_core::aimd::{Aimd, RateCause, RateChange, noise_ceiling, percentile};
use backfill_core::spec::ThrottleSpec;
use backfill_store::Store;
use serde_json::json;
use tokio::sync::watch;

use crate::control::Live;
use crate::shutdown::Shutdown;

/// Spacing of the baseline probes: quicker than `interval` (the run has not started, so there
/// is no effect to wait for) but spread enough to sample the live traffic, not one instant.
const BASELINE_SPACING: Duration = Duration::from_millis(100);

/// What `status` shows of the adaptive throttle, updated by the task every interval.
#[derive(Clone, Debug, Default)]
pub(crate) struct AdaptiveStatus {
    /// The adaptive rate in force, rows per second.
    rate: f64,
    /// The rate the limiter enforces: the lower of `rate` and the operator's ceiling.
    enforced: u32,
    /// Why it is what it is.
    cause: Option<RateCause>,
    /// The moving p90 of the probe.
    p90: Option<Duration>,
    /// The baseline measured before the run started.
    baseline_p50: Option<Duration>,
    baseline_p90: Option<Duration>,
    /// The p90 above which an interval is unhealthy (allowed rise or probe noise).
    limit: Option<Duration>,
    /// The replica lag last read.
    lag: Option<Duration>,
    /// The latest probe failure, cleared by the next success.
    probe_error: Option<String>,
}

/// Shared between the task (writer) and the controller (reader).
pub(crate) type SharedStatus = Arc<Mutex<AdaptiveStatus>>;

impl AdaptiveStatus {
    /// The `adaptive` object of the heartbeat's telemetry.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "rate": self.rate,
            "enforced_rows_per_second": self.enforced,
            "cause": self.cause.map(RateCause::as_str),
            "p90_ms": self.p90.map(ms),
            "baseline_p50_ms": self.baseline_p50.map(ms),
            "baseline_p90_ms": self.baseline_p90.map(ms),
            "limit_p90_ms": self.limit.map(ms),
            "lag_ms": self.lag.map(ms),
            "probe_error": self.probe_error,
        })
    }
}

/// The adaptive throttle of one session of a run, baseline measured, ready to run.
pub(crate) struct Adaptive {
    run_id: String,
    throttle: ThrottleSpec,
    /// The maximum from the spec alone (`throttle.max_rate`), used when no ceiling is set.
    spec_max: Option<f64>,
    store: Store,
    live: Arc<Live>,
    /// `None` when it could not be opened; reopened at each interval.
    probe: Option<Probe>,
    baseline_p50: Option<Duration>,
    baseline_p90: Option<Duration>,
    aimd: Aimd,
    status: SharedStatus,
}

impl Adaptive {
    /// Opens the probe and measures the baseline, before the run starts; `None` when the spec
    /// has no `[throttle]`. Never fails: without a probe connection or a baseline the
    /// throttle still reacts to errors (and keeps trying to connect), which is logged.
    pub(crate) async fn start(
        spec: &Spec,
        run_id: &str,
        store: &Store,
        live: &Arc<Live>,
        shutdown: &Shutdown,
    ) -> Option<Adaptive> {
        let throttle = spec.throttle.clone()?;
        let spec_max = throttle.max_rate(&spec.limits);
        let max = max_rate(&throttle, spec_max, live.rows_ceiling()).unwrap_or(1.0);
        let aimd = Aimd::new(&throttle, max);
        let mut adaptive = Adaptive {
            run_id: run_id.to_owned(),
            spec_max,
            store: store.clone(),
            live: live.clone(),
            probe: None,
            baseline_p50: None,
            baseline_p90: None,
            aimd,
            status: SharedStatus::default(),
            throttle,
        };
        adaptive.reopen().await;
        if let Some(sql) = adaptive.probe_sql() {
            let mut samples = Vec::new();
            for i in 0..adaptive.throttle.baseline_probes {
                if shutdown.is_requested() {
                    break;
                }
                if i > 0 {
                    tokio::time::sleep(BASELINE_SPACING.min(adaptive.throttle.interval)).await;
                }
                if let Ok(latency) = adaptive.measure(&sql).await {
                    samples.push(latency);
                }
            }
            adaptive.baseline_p50 = percentile(&samples, 0.5);
            adaptive.baseline_p90 = percentile(&samples, 0.9);
            let window = adaptive.throttle.window.max(1) as usize;
            adaptive
                .aimd
                .set_noise_ceiling(noise_ceiling(&samples, window));
            match adaptive.baseline_p90 {
                Some(p90) => {
                    let limit = adaptive.aimd.latency_limit(p90);
                    tracing::info!(
                        run_id,
                        probes = samples.len(),
                        baseline_p50_ms = adaptive.baseline_p50.map_or(0.0, ms),
                        baseline_p90_ms = ms(p90),
                        limit_p90_ms = ms(limit),
                        "adaptive throttle: baseline measured"
                    );
                    if limit > adaptive.aimd.allowed_rise(p90) {
                        tracing::warn!(
                            run_id,
                            baseline_p90_ms = ms(p90),
                            limit_p90_ms = ms(limit),
                            window,
                            "adaptive throttle: the probe is noisier than the allowed rise: \
                             a window of {window} probes at rest already reaches a p90 of \
                             {:.2} ms, +{:.0}% over the baseline, so only a rise above that \
                             cuts the rate; more probes per window (`throttle.window`, \
                             `throttle.baseline_probes`, a shorter `throttle.interval`) \
                             make it finer",
                            ms(limit),
                            (ms(limit) / ms(p90) - 1.0) * 100.0
                        );
                    }
                }
                None => tracing::warn!(
                    run_id,
                    "adaptive throttle: no probe succeeded before the run, so latency cannot \
                     throttle it; errors and probe failures still do"
                ),
            }
        }
        adaptive.live.set_adaptive_rows(rows(adaptive.aimd.rate()));
        adaptive.publish(None, None);
        Some(adaptive)
    }

    /// What `status` shows; the controller puts it in its heartbeat.
    pub(crate) fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    /// Records the starting rate, then probes every `interval` and moves the rate until
    /// `stop` is set. Spawned once the controller has recorded its own start, so the time
    /// series reads: the ceiling, then the adaptive rate under it.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let start = self.aimd.start_change();
        self.apply(&start, None, None).await;
        let window = self.throttle.window.max(1) as usize;
        let mut samples: VecDeque<Duration> = VecDeque::with_capacity(window);
        let mut errors_before = self.live.errors_seen();
        let mut ticker = tokio::time::interval(self.throttle.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            // Follow `backfill throttle`: the ceiling caps the controller's maximum. The
            // controller already recorded the manual change; this keeps the two in step.
            if let Some(max) = max_rate(&self.throttle, self.spec_max, self.live.rows_ceiling())
                && max != self.aimd.max()
                && let Some(change) = self.aimd.set_max(max)
            {
                self.live.set_adaptive_rows(rows(change.to));
                tracing::info!(
                    run_id = self.run_id,
                    rate = change.to,
                    cause = change.cause.as_str(),
                    "adaptive throttle: maximum changed by `throttle`"
                );
            }
            let mut probe_failed = false;
            if self.probe.is_none() {
                self.reopen().await;
            }
            if let Some(sql) = self.probe_sql() {
                match self.measure(&sql).await {
                    Ok(latency) => {
                        if samples.len() == window {
                            samples.pop_front();
                        }
                        samples.push_back(latency);
                    }
                    Err(()) => probe_failed = true,
                }
            }
            let mut lag = None;
            if self.throttle.max_replica_lag.is_some()
                && let Some(probe) = &self.probe
            {
                match probe.replica_lag().await {
                    Ok(l) => lag = l,
                    Err(e) => {
                        probe_failed = true;
                        self.failed(&e.to_string());
                    }
                }
            }
            let errors_now = self.live.errors_seen();
            let batch_errors = errors_now.saturating_sub(errors_before);
            errors_before = errors_now;
            let p90 = percentile(samples.make_contiguous(), 0.9);
            self.publish(p90, lag);
            if self.live.is_held() {
                continue;
            }
            let errors = batch_errors > 0 || probe_failed;
            let lagging = matches!(
                (lag, self.throttle.max_replica_lag),
                (Some(l), Some(m)) if l > m
            );
            let (p90_used, baseline) = match (p90, self.baseline_p90) {
                // Judged over a full window only (see the module's invariants).
                (Some(p90), Some(baseline)) if samples.len() == window => (p90, baseline),
                // Without a baseline, latency never throttles (zero against zero is healthy).
                (_, None) => (Duration::ZERO, Duration::ZERO),
                // Too few probes since the last cut to judge latency: only another signal
                // may cut now, and nothing may raise the rate yet.
                _ if errors || lagging => (Duration::ZERO, Duration::ZERO),
                _ => continue,
            };
            if let Some(change) = self.aimd.on_interval(p90_used, baseline, lag, errors) {
                if change.to < change.from {
                    samples.clear();
                }
                self.apply(&change, p90, lag).await;
            }
        }
        if let Some(probe) = &self.probe {
            probe.close().await;
        }
    }

    fn probe_sql(&self) -> Option<String> {
        self.throttle.probe.as_ref().map(|p| p.sql.clone())
    }

    /// Opens the probe connection when there is a probe; a failure is published and logged.
    async fn reopen(&mut self) {
        let Some(spec) = &self.throttle.probe else {
            return;
        };
        match Probe::open(&spec.url).await {
            Ok(probe) => self.probe = Some(probe),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// One probe, within a timeout of five intervals (at least 5 s): a probe that hangs is a
    /// failure, not a stall of the throttle.
    async fn measure(&mut self, sql: &str) -> Result<Duration, ()> {
        let Some(probe) = &self.probe else {
            return Err(());
        };
        let limit = (self.throttle.interval * 5).max(Duration::from_secs(5));
        let message = match tokio::time::timeout(limit, probe.measure(sql)).await {
            Ok(Ok(latency)) => {
                self.lock().probe_error = None;
                return Ok(latency);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the probe took longer than {} ms", limit.as_millis()),
        };
        self.failed(&message);
        Err(())
    }

    fn failed(&self, message: &str) {
        tracing::warn!(
            run_id = self.run_id,
            error = message,
            "adaptive throttle: probe failed"
        );
        self.lock().probe_error = Some(message.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdaptiveStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, p90: Option<Duration>, lag: Option<Duration>) {
        let mut status = self.lock();
        status.rate = self.aimd.rate();
        status.enforced = self.live.rows_rate();
        status.cause = Some(self.aimd.cause());
        status.p90 = p90;
        status.baseline_p50 = self.baseline_p50;
        status.baseline_p90 = self.baseline_p90;
        status.limit = self.baseline_p90.map(|b| self.aimd.latency_limit(b));
        status.lag = lag;
    }

    /// Applies `change` to the limiter, publishes it, logs it and records it in the store's
    /// time series (a store failure is logged: the next change is recorded anyway).
    async fn apply(&self, change: &RateChange, p90: Option<Duration>, lag: Option<Duration>) {
        self.live.set_adaptive_rows(rows(change.to));
        self.publish(p90, lag);
        let detail = json!({
            "from": change.from,
            "p90_ms": p90.map(ms),
            "baseline_p50_ms": self.baseline_p50.map(ms),
            "baseline_p90_ms": self.baseline_p90.map(ms),
            "limit_p90_ms": self.baseline_p90.map(|b| ms(self.aimd.latency_limit(b))),
            "lag_ms": lag.map(ms),
            "adaptive": true,
        });
        tracing::info!(
            run_id = self.run_id,
            from = change.from,
            rate = change.to,
            cause = change.cause.as_str(),
            p90_ms = p90.map(ms),
            baseline_p90_ms = self.baseline_p90.map(ms),
            lag_ms = lag.map(ms),
            "adaptive throttle: rate changed"
        );
        if let Err(e) = self
            .store
            .record_rate_change(
                &self.run_id,
                Some(change.to),
                change.cause.as_str(),
                &detail,
            )
            .await
        {
            tracing::warn!(run_id = self.run_id, error = %e, "cannot record a rate change");
        }
    }
}

/// The controller's maximum: the throttle's own maximum capped by the ceiling in force (the
/// spec's or `throttle`'s rows per second, 0 for none); the spec's maximum when neither.
fn max_rate(throttle: &ThrottleSpec, spec_max: Option<f64>, ceiling: u32) -> Option<f64> {
    match (throttle.max_rows_per_second.map(NonZeroU32::get), ceiling) {
        (Some(own), 0) => Some(f64::from(own)),
        (Some(own), ceiling) => Some(f64::from(own.min(ceiling))),
        (None, 0) => spec_max,
        (None, ceiling) => Some(f64::from(ceiling)),
    }
}

/// A rate as the limiter takes it: whole rows per second, at least 1 (0 would mean no limit).
fn rows(rate: f64) -> u32 {
    // In [1, u32::MAX] after the clamp, so the cast is exact up to rounding.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rows = rate.round().clamp(1.0, f64::from(u32::MAX)) as u32;
    rows
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
