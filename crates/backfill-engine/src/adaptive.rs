//! Adaptive throttling (`[throttle]`): the task that reads what live traffic feels (the watched
//! database's own signals, an optional probe statement), feeds the pure AIMD controller
//! (`backfill_core::aimd`, judged by `backfill_core::live`) and steers the run's rows limiter.
//!
//! Protocol: [`Adaptive::start`] opens the watch and the probe and measures the baselines
//! before any batch runs (`execute` awaits it): over `baseline_probes` readings, the live
//! statements' mean time per call and its per-call noise, the live transactions' likewise
//! (their allowed rise counting the round trip to the database measured then: a client pays
//! it, the server's counters do not see it), the waiting sessions or running threads, and the
//! probe's p50/p90 and noise ceiling. Then [`Adaptive::run`] reads every
//! `interval`: the watch's interval (statements, transactions, gauges), the probe's latency (the last
//! `window` kept), the replica lag when `max_replica_lag` is set (from the watch, else the
//! probe) and the batch attempts that failed since the previous interval. Each signal gives a
//! verdict (`backfill_core::live::Verdict`); combined, they cut or raise the rate
//! ([`Aimd::on_verdict`]), double it per window while every signal is comfortable
//! ([`Aimd::on_headroom`]), or hold it while a signal cannot tell yet. With a watch and no probe,
//! the climb is paced to the intervals the live signal needs to see a rise
//! ([`backfill_core::live::intervals_to_resolve`]). A signal the database does not offer is
//! logged once and left out. A change is applied at once
//! ([`Live::set_adaptive_rows`]), logged with its cause and kept in the store's rate time
//! series; the numbers `status` shows are published in an [`AdaptiveStatus`] the controller
//! reads for its heartbeat.
//!
//! Does not: enforce anything itself (the limiter enforces the lower of the operator's ceiling
//! and this rate), hold or stop the run, or retry batches.
//!
//! Invariants:
//! - A probe failure (connection lost, timeout, a failing statement) or a lost watch
//!   connection is an unhealthy interval, logged, never an error of the run.
//! - The adaptive rate never exceeds the ceiling in force: the controller's maximum follows
//!   `backfill throttle` ([`Aimd::set_max`]).
//! - While the run is held (paused, outside its window…) the rate does not move: an idle
//!   workload says nothing about what the run costs. Probing goes on.
//! - After a cut, the readings taken before it are forgotten, and no decision is taken until a
//!   whole `window` of new probes is in (likewise at the start), and until the live signals
//!   have enough intervals to judge: a p90 or a mean still full of the old rate's samples
//!   would otherwise cut again and again down to the floor, and the p90 of a few probes is
//!   their maximum, which a single hiccup decides.
//! - At the rate's floor, a full window of live readings that a latency signal judges
//!   unhealthy becomes that signal's baseline when it stays within two allowed rises of the
//!   level measured before the run ([`follow_drift_at_floor`]): a cut there changes nothing,
//!   and live traffic's own drift must not hold the run at its floor for good. The baselines
//!   measured before the run stay the bound. A followed baseline comes back down, at any rate,
//!   when a full window says live traffic is faster again ([`return_from_drift`]): the drift
//!   over, its looser limit would let the rate climb into real harm.
//! - Above the floor, a cut the watch's latency signals ask for (and nothing else does) waits
//!   for a rest check (`rest_check`): the backfill held, live traffic measured at rest becomes
//!   the baseline, and the window read before the hold decides against it. Checks also run
//!   every `rest_check_every`. While one holds the backfill, the rate decides nothing else.

mod rest_check;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_connectors::watch::Reading;
use backfill_connectors::{Probe, Watch};
use backfill_core::Spec;
use backfill_core::aimd::{Aimd, RateCause, RateChange, noise_ceiling, percentile};
use backfill_core::live::{
    GaugeBaseline, LatencyBaseline, StatDelta, Verdict, batch_intervals, follow_drift_at_floor,
    intervals_to_resolve, return_from_drift, statements_as_share_of_transactions, window_mean,
};
use backfill_core::spec::ThrottleSpec;
use backfill_store::Store;
use serde_json::json;
use tokio::sync::watch;

use crate::control::Live;
use crate::shutdown::Shutdown;
use rest_check::{RestCheck, RestChecks};

/// Spacing of the baseline probes: quicker than `interval` (the run has not started, so there
/// is no effect to wait for) but spread enough to sample the live traffic, not one instant.
const BASELINE_SPACING: Duration = Duration::from_millis(100);

/// How long a PostgreSQL session may keep its transaction counters before reporting them
/// (`pg_stat_database` is fed at most once a second per session): a window of live
/// transactions spans at least two of these, so it holds every live session's share.
const STATS_REPORT: Duration = Duration::from_secs(1);

/// Waiting sessions (PostgreSQL) over their mean at rest that never count as a rise: half a
/// session on average, so a lone WAL flush caught by the sampling does not cut.
const WAIT_MARGIN: f64 = 0.5;

/// The shortest gap between two readings that is not the controller's pace: this process was
/// suspended (SIGSTOP, a paused VM) or starved of CPU that long. A reading spanning it says
/// what live traffic felt while the backfill did nothing, so it is dropped, not judged:
/// judged, it diluted the window with seconds at rest and let the rate climb.
const GAP: Duration = Duration::from_secs(5);

/// True when readings `elapsed` apart span a gap ([`GAP`], at least five intervals): the
/// reading is dropped.
fn spans_a_gap(elapsed: Duration, interval: Duration) -> bool {
    elapsed > GAP.max(interval * 5)
}

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
    /// The live signals of the watched database.
    live: LiveNow,
}

/// The watched database's latest readings, for `status` and the rate time series.
#[derive(Clone, Debug, Default)]
struct LiveNow {
    /// Mean time per call of the live statements over the window judged.
    mean: Option<Duration>,
    /// Their mean at rest.
    baseline: Option<Duration>,
    /// The mean above which the window is unhealthy (allowed rise or noise; the allowed rise
    /// alone while the window is empty).
    limit: Option<Duration>,
    /// Calls in the window.
    calls: u64,
    /// Time per live transaction over the window judged (PostgreSQL `pg_stat_database`).
    transaction: Option<Duration>,
    /// Its mean at rest.
    transaction_baseline: Option<Duration>,
    /// The time per transaction above which the window is unhealthy (as `limit`).
    transaction_limit: Option<Duration>,
    /// Transactions in the window.
    transactions: u64,
    /// The round trip to the watched database at rest (median of the baseline's readings);
    /// the transactions' allowed rise counts it, up to `backfill_core::live::MAX_ROUND_TRIP`:
    /// what a client feels beyond the server's share.
    round_trip: Option<Duration>,
    /// Live sessions waiting on WAL or I/O, last reading.
    waiting: Option<u32>,
    /// `Threads_running`, last reading.
    running: Option<u32>,
    /// Signals the database does not offer, with why.
    unavailable: Vec<(String, String)>,
    /// Times a baseline followed live traffic's drift at the floor.
    drift_followed: u32,
    /// The rest checks so far (`throttle.rest_check`).
    rest_checks: RestChecks,
}

impl LiveNow {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "mean_ms": self.mean.map(ms),
            "baseline_mean_ms": self.baseline.map(ms),
            "limit_mean_ms": self.limit.map(ms),
            "calls": self.calls,
            "transaction_ms": self.transaction.map(ms),
            "baseline_transaction_ms": self.transaction_baseline.map(ms),
            "limit_transaction_ms": self.transaction_limit.map(ms),
            "transactions": self.transactions,
            "round_trip_ms": self.round_trip.map(ms),
            "waiting": self.waiting,
            "running": self.running,
            "drift_followed": self.drift_followed,
            "rest_checks": {
                "done": self.rest_checks.done,
                "cut": self.rest_checks.cut,
                "spared": self.rest_checks.spared,
                "holding": self.rest_checks.holding,
            },
            "unavailable": self.unavailable.iter()
                .map(|(signal, why)| json!({"signal": signal, "reason": why}))
                .collect::<Vec<_>>(),
        })
    }
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
            "watch": self.live.to_json(),
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
    /// The watched live database; `None` when not configured or lost (reopened at each
    /// interval).
    watch: Option<Watch>,
    /// The live statements at rest; `None` without a watch or its statistics.
    live_base: Option<LatencyBaseline>,
    /// The live transactions' time per transaction at rest (PostgreSQL); `None` without a
    /// watch or its statistics.
    tx_base: Option<LatencyBaseline>,
    /// The two baselines as measured before the run: how far the ones in force may follow
    /// live traffic's drift at the floor ([`follow_drift_at_floor`]).
    rest_live_base: Option<LatencyBaseline>,
    rest_tx_base: Option<LatencyBaseline>,
    /// Waiting sessions (PostgreSQL) and running threads (MySQL) at rest.
    gauges: Vec<GaugeBaseline>,
    /// Intervals of live readings judged together: enough calls to see a rise, at most
    /// `window`.
    live_window: usize,
    /// Rows per batch (`limits.batch_rows`): the live window spans two batches.
    batch_rows: u32,
    /// Signals already reported unavailable (logged once each).
    reported: Vec<&'static str>,
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
            watch: None,
            live_base: None,
            tx_base: None,
            rest_live_base: None,
            rest_tx_base: None,
            gauges: Vec::new(),
            live_window: throttle.window.max(1) as usize,
            reported: Vec::new(),
            batch_rows: spec.limits.batch_rows.get(),
            baseline_p50: None,
            baseline_p90: None,
            aimd,
            status: SharedStatus::default(),
            throttle,
        };
        adaptive.reopen().await;
        adaptive.reopen_watch().await;
        let spacing = BASELINE_SPACING.min(adaptive.throttle.interval);
        let mut readings = Vec::new();
        if adaptive.watch.is_some() {
            // The first reading only sets the counters the next one subtracts.
            adaptive.read_watch().await;
        }
        let mut samples = Vec::new();
        let probe_sql = adaptive.probe_sql();
        for _ in 0..adaptive.throttle.baseline_probes {
            if shutdown.is_requested() || (probe_sql.is_none() && adaptive.watch.is_none()) {
                break;
            }
            tokio::time::sleep(spacing).await;
            if let Some(sql) = &probe_sql
                && let Ok(latency) = adaptive.measure(sql).await
            {
                samples.push(latency);
            }
            if let Some(reading) = adaptive.read_watch().await {
                readings.push(reading);
            }
        }
        adaptive.live_baselines(spec, &readings, spacing);
        if probe_sql.is_some() {
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

    /// Sets the watch's baselines from `readings` taken `spacing` apart, logs them and the
    /// signals the database does not offer, and paces the climb to the live signal when it
    /// is the one latency signal.
    fn live_baselines(&mut self, spec: &Spec, readings: &[Reading], spacing: Duration) {
        if self.watch.is_none() && readings.is_empty() {
            return;
        }
        let deltas: Vec<StatDelta> = readings.iter().filter_map(|r| r.statements).collect();
        let factor = self.throttle.interval.as_secs_f64() / spacing.as_secs_f64().max(1e-9);
        self.live_base = LatencyBaseline::measure(&deltas).map(|b| b.rescaled(factor));
        let transactions: Vec<StatDelta> = readings.iter().filter_map(|r| r.transactions).collect();
        // A client pays a round trip per transaction on top of the server's time: the allowed
        // rise is a share of both. Only for transactions: statements inside one follow each
        // other quicker than the watch's, which come after an idle interval, as a
        // transaction's first statement does.
        let trips: Vec<Duration> = readings.iter().filter_map(|r| r.round_trip).collect();
        let round_trip = percentile(&trips, 0.5);
        self.tx_base = LatencyBaseline::measure(&transactions).map(|b| {
            b.rescaled(factor)
                .with_round_trip(round_trip.unwrap_or_default())
        });
        // A statement's rise is judged as a share of its transaction's, what a client feels.
        if let (Some(statements), Some(transactions)) = (self.live_base, &self.tx_base) {
            self.live_base = Some(statements_as_share_of_transactions(
                statements,
                transactions,
            ));
        }
        (self.rest_live_base, self.rest_tx_base) = (self.live_base, self.tx_base);
        let waiting: Vec<f64> = readings
            .iter()
            .filter_map(|r| r.waiting.map(f64::from))
            .collect();
        let running: Vec<f64> = readings
            .iter()
            .filter_map(|r| r.running.map(f64::from))
            .collect();
        // Threads_running counts our own threads too: up to `concurrency` of them run at once.
        let ours = f64::from(spec.limits.concurrency.get());
        self.gauges = [
            GaugeBaseline::measure(&waiting, WAIT_MARGIN, RateCause::Waiting),
            GaugeBaseline::measure(&running, ours, RateCause::Running),
        ]
        .into_iter()
        .flatten()
        .collect();
        let window = self.throttle.window.max(1) as usize;
        let mli = self.throttle.max_latency_increase;
        // The slower of the two live latency signals to see a rise sets the window and the
        // pace; transactions are reported up to STATS_REPORT late, so their window spans two.
        let reports = (2.0 * STATS_REPORT.as_secs_f64()
            / self.throttle.interval.as_secs_f64().max(1e-9))
        .ceil();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let reports = reports.clamp(1.0, 1e6) as usize;
        let windows = [
            self.live_base
                .map(|b| intervals_to_resolve(&b, mli, window)),
            self.tx_base
                .map(|b| intervals_to_resolve(&b, mli, window).max(reports.min(window))),
        ];
        if let Some(n) = windows.iter().flatten().max() {
            self.live_window = *n;
            if self.throttle.probe.is_none() {
                self.aimd
                    .set_pace(u32::try_from(self.live_window).unwrap_or(u32::MAX));
            }
        }
        if let Some(base) = self.live_base {
            tracing::info!(
                run_id = self.run_id,
                readings = deltas.len(),
                mean_ms = ms(base.mean()),
                spread_ms = ms(base.spread()),
                beyond_execution_ms = ms(base.round_trip()),
                calls_per_interval = base.calls_per_interval(),
                limit_ms = ms(base.allowed(mli)),
                judged_over_intervals = self.live_window,
                "adaptive throttle: live statements' baseline measured"
            );
        }
        if let Some(base) = self.tx_base {
            tracing::info!(
                run_id = self.run_id,
                readings = transactions.len(),
                mean_ms = ms(base.mean()),
                spread_ms = ms(base.spread()),
                transactions_per_interval = base.calls_per_interval(),
                round_trip_ms = ms(base.round_trip()),
                limit_ms = ms(base.allowed(mli)),
                judged_over_intervals = self.live_window,
                "adaptive throttle: live transactions' baseline measured"
            );
        }
        if self.watch.is_some() && self.live_base.is_none() && self.tx_base.is_none() {
            tracing::warn!(
                run_id = self.run_id,
                "adaptive throttle: the watched database's statements and transactions gave \
                 no baseline (no statistics, or no live statement completed while it was \
                 measured), so their latency cannot throttle the run"
            );
        }
        self.publish_baselines();
        let mut status = self.lock();
        // What counts where a transactions baseline exists (capped); else the measurement.
        status.live.round_trip = self.tx_base.map(|b| b.round_trip()).or(round_trip);
    }

    /// Opens the watch connection when there is one; a failure is published and logged.
    async fn reopen_watch(&mut self) {
        let Some(url) = &self.throttle.watch else {
            return;
        };
        match Watch::open(url).await {
            Ok(watch) => self.watch = Some(watch),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// One reading of the watch; `None` (logged, connection dropped for a reopen) when the
    /// database could not be reached. Signals it does not offer are logged once each.
    async fn read_watch(&mut self) -> Option<Reading> {
        let watch = self.watch.as_mut()?;
        let limit = (self.throttle.interval * 5).max(Duration::from_secs(5));
        let result = match tokio::time::timeout(limit, watch.read()).await {
            Ok(Ok(reading)) => Ok(reading),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "reading the watched database took longer than {} ms",
                limit.as_millis()
            )),
        };
        match result {
            Ok(reading) => {
                for (signal, why) in &reading.unavailable {
                    if !self.reported.contains(signal) {
                        self.reported.push(signal);
                        tracing::warn!(
                            run_id = self.run_id,
                            signal,
                            reason = why.as_str(),
                            "adaptive throttle: the watched database does not offer this signal; \
                             it is left out"
                        );
                    }
                }
                let mut status = self.lock();
                status.live.unavailable = reading
                    .unavailable
                    .iter()
                    .map(|(s, w)| ((*s).to_owned(), w.clone()))
                    .collect();
                status.live.waiting = reading.waiting;
                status.live.running = reading.running;
                if self.throttle.probe.is_none() {
                    // The watch is the one connection: its success clears its last failure.
                    status.probe_error = None;
                }
                drop(status);
                Some(reading)
            }
            Err(message) => {
                if let Some(watch) = self.watch.take() {
                    watch.close().await;
                }
                self.failed(&message);
                None
            }
        }
    }

    /// Follows `backfill throttle`: the ceiling caps the controller's maximum. The controller
    /// already recorded the manual change; this keeps the two in step.
    fn follow_ceiling(&mut self) {
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
    }

    /// The probe's verdict: its p90 against the limit, judged over a full window only (see the
    /// module's invariants); healthy without a probe or its baseline; undecided while too few
    /// probes came in since the last cut (only another signal may cut then, nothing may raise).
    fn probe_verdict(&self, p90: Option<Duration>, full_window: bool) -> Verdict {
        match (p90, self.baseline_p90) {
            (Some(p90), Some(baseline)) if full_window => {
                if self.aimd.latency_unhealthy(p90, baseline) {
                    Verdict::Unhealthy(RateCause::Latency)
                } else {
                    Verdict::Healthy
                }
            }
            // No probe: it leaves the pace to the other signals.
            (_, None) if self.throttle.probe.is_none() => Verdict::Comfortable,
            (_, None) => Verdict::Healthy,
            _ => Verdict::Undecided,
        }
    }

    /// The watched database's verdicts: its statements' mean time per call and its
    /// transactions' mean time against their baselines, and each gauge (waits, threads
    /// running) against its level at rest. An absent signal does not object
    /// ([`Verdict::Comfortable`]); without any latency signal at all (no probe, no live
    /// baseline) the climb stays additive ([`Verdict::Healthy`]). A baseline that followed a
    /// drift comes back down first when the window says the drift is over
    /// ([`Adaptive::return_from_drift`]).
    fn live_verdicts(
        &mut self,
        live: &mut LiveWindow,
        batches: usize,
        full: usize,
    ) -> Vec<Verdict> {
        self.return_from_drift(live, full);
        let mli = self.throttle.max_latency_increase;
        let (s_base, t_base) = (self.live_base, self.tx_base);
        let statements = live.statements.make_contiguous();
        let transactions = live.transactions.make_contiguous();
        let (statements, transactions) = backfill_core::live::judge_statements_and_transactions(
            s_base.as_ref().map(|b| (b, &*statements)),
            t_base.as_ref().map(|b| (b, &*transactions)),
            batches,
            full,
            mli,
        );
        let gauges = self.gauges.iter().map(|g| match g.cause() {
            RateCause::Waiting => g.judge(live.waiting.make_contiguous()),
            _ => g.judge(live.running.make_contiguous()),
        });
        let blind =
            self.live_base.is_none() && self.tx_base.is_none() && self.baseline_p90.is_none();
        [statements, transactions]
            .into_iter()
            .chain(gauges)
            .chain(blind.then_some(Verdict::Healthy))
            .collect()
    }

    /// Records the starting rate, then probes every `interval` and moves the rate until
    /// `stop` is set. Spawned once the controller has recorded its own start, so the time
    /// series reads: the ceiling, then the adaptive rate under it.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let start = self.aimd.start_change();
        self.apply(&start, None, None).await;
        let window = self.throttle.window.max(1) as usize;
        let mut samples: VecDeque<Duration> = VecDeque::with_capacity(window);
        let mut live = LiveWindow::default();
        let mut errors_before = self.live.errors_seen();
        let late = (STATS_REPORT.as_secs_f64() / self.throttle.interval.as_secs_f64().max(1e-9))
            .ceil()
            .min(1e6);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let late = late as usize;
        let mut ticker = tokio::time::interval(self.throttle.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut resting: Option<RestCheck> = None;
        // When the last rest check ended (or the run began), and the rate then.
        let mut last_rest = (tokio::time::Instant::now(), self.aimd.rate());
        let mut last_tick = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let gap = self.gap_since(&mut last_tick);
            if resting.is_none() {
                // A rest check holds the limiter: a new ceiling applies once it is over.
                self.follow_ceiling();
            }
            let (batches, full) = self.live_window_now(window);
            let mut probe_failed = self
                .read_signals(
                    &mut samples,
                    window,
                    &mut live,
                    &mut resting,
                    (full, late),
                    gap,
                )
                .await;
            let lag = self.replica_lag(&mut probe_failed).await;
            let errors_now = self.live.errors_seen();
            let batch_errors = errors_now.saturating_sub(errors_before);
            errors_before = errors_now;
            let p90 = percentile(samples.make_contiguous(), 0.9);
            self.publish(p90, lag);
            self.publish_live(&live);
            let now = tokio::time::Instant::now();
            if let Some(check) = resting.take_if(|c| c.is_over(now)) {
                self.finish_rest_check(check, &mut live, batches, full)
                    .await;
                last_rest = (now, self.aimd.rate());
                continue;
            }
            if resting.is_some() || self.live.is_held() {
                continue;
            }
            let errors = batch_errors > 0 || probe_failed;
            let lagging = matches!(
                (lag, self.throttle.max_replica_lag),
                (Some(l), Some(m)) if l > m
            );
            let probe = self.probe_verdict(p90, samples.len() == window);
            let live_verdicts = self.live_verdicts(&mut live, batches, full);
            if self.follow_drift(&mut live, &live_verdicts, full) {
                continue;
            }
            let verdicts: Vec<Verdict> = std::iter::once(probe)
                .chain(live_verdicts)
                .chain(lagging.then_some(Verdict::Unhealthy(RateCause::ReplicaLag)))
                .chain(errors.then_some(Verdict::Unhealthy(RateCause::Errors)))
                .collect();
            if let Some(why) = self.rest_check_due(&verdicts, &live, full, last_rest, now) {
                resting = Some(self.begin_rest_check(why, now));
                continue;
            }
            let change = match Verdict::combine(verdicts) {
                Verdict::Unhealthy(cause) => self.aimd.on_verdict(Some(cause)),
                Verdict::Healthy => self.aimd.on_verdict(None),
                Verdict::Comfortable => self.aimd.on_headroom(),
                Verdict::Undecided => continue,
            };
            if let Some(change) = change {
                if change.to < change.from {
                    samples.clear();
                    live.clear();
                }
                self.apply(&change, p90, lag).await;
            }
        }
        if let Some(watch) = &self.watch {
            watch.close().await;
        }
        if let Some(probe) = &self.probe {
            probe.close().await;
        }
    }

    /// The live window, in intervals, with the intervals two batches take at the current
    /// rate (`(batches, full)`): enough calls to see a rise, and two batches of the backfill
    /// (a window between two batches would see none of them), at most `window`; the climb is
    /// paced to it when no probe sets the pace.
    fn live_window_now(&mut self, window: usize) -> (usize, usize) {
        let batches = batch_intervals(
            self.batch_rows,
            self.aimd.rate(),
            self.throttle.interval,
            window,
        );
        let full = self.live_window.max(batches);
        if (self.live_base.is_some() || self.tx_base.is_some()) && self.throttle.probe.is_none() {
            self.aimd.set_pace(u32::try_from(full).unwrap_or(u32::MAX));
        }
        (batches, full)
    }

    /// True when the time since `last_tick` (moved to now) spans a gap ([`spans_a_gap`]):
    /// logged, so the reading that follows is dropped.
    fn gap_since(&self, last_tick: &mut tokio::time::Instant) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(*last_tick);
        *last_tick = now;
        let gap = spans_a_gap(elapsed, self.throttle.interval);
        if gap {
            tracing::info!(
                run_id = self.run_id,
                gap_ms = ms(elapsed),
                "adaptive throttle: this process was suspended or starved between two readings; \
                 the watch reading spanning the gap is dropped (it holds live traffic at rest)"
            );
        }
        gap
    }

    /// One interval's probe (into `samples`, at most `window` kept) and watch reading (into
    /// `live`, or into the rest check in progress; dropped when it spans a `gap`: it was read
    /// to move the counters on), reopening a lost connection first; true when either failed.
    /// `(full, late)`: the live window's length and how late transactions are reported.
    async fn read_signals(
        &mut self,
        samples: &mut VecDeque<Duration>,
        window: usize,
        live: &mut LiveWindow,
        resting: &mut Option<RestCheck>,
        (full, late): (usize, usize),
        gap: bool,
    ) -> bool {
        let mut failed = false;
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
                Err(()) => failed = true,
            }
        }
        if self.throttle.watch.is_some() {
            if self.watch.is_none() {
                self.reopen_watch().await;
            }
            match (self.read_watch().await, resting) {
                (Some(_), _) if gap => {}
                (Some(reading), Some(check)) => {
                    check.push(tokio::time::Instant::now(), &reading);
                }
                (Some(reading), None) => live.push(reading, full, late),
                (None, _) => failed = true,
            }
        }
        failed
    }

    /// At the floor, sets as baseline each live latency signal's full window that its
    /// baseline judges unhealthy (`verdicts` as [`Adaptive::live_verdicts`] gives them:
    /// statements, then transactions) when [`follow_drift_at_floor`] allows it; logs it,
    /// counts it for `status`, and forgets the window. True when a baseline moved: the
    /// interval then decides nothing.
    fn follow_drift(&mut self, live: &mut LiveWindow, verdicts: &[Verdict], full: usize) -> bool {
        if self.aimd.rate() > self.aimd.floor() {
            return false;
        }
        let mli = self.throttle.max_latency_increase;
        let signals = [
            (
                RateCause::LiveLatency,
                "statements",
                live.statements.make_contiguous(),
            ),
            (
                RateCause::LiveTransactions,
                "transactions",
                live.transactions.make_contiguous(),
            ),
        ];
        let mut moved = Vec::new();
        for (i, (cause, name, window)) in signals.into_iter().enumerate() {
            let (base, rest) = match cause {
                RateCause::LiveLatency => (&mut self.live_base, self.rest_live_base),
                _ => (&mut self.tx_base, self.rest_tx_base),
            };
            if verdicts.get(i) != Some(&Verdict::Unhealthy(cause)) || window.len() < full {
                continue;
            }
            let (Some(old), Some(rest)) = (*base, rest) else {
                continue;
            };
            if let Some(now) = follow_drift_at_floor(&rest, window, mli) {
                *base = Some(now);
                moved.push((name, old, now, rest));
            }
        }
        if moved.is_empty() {
            return false;
        }
        for (signal, old, now, rest) in &moved {
            tracing::info!(
                run_id = self.run_id,
                signal,
                from_ms = ms(old.mean()),
                to_ms = ms(now.mean()),
                at_rest_ms = ms(rest.mean()),
                limit_ms = ms(now.allowed(mli)),
                "adaptive throttle: at its floor, live {signal} stayed over their limit within \
                 two allowed rises of their level at rest: that drift is their baseline now"
            );
        }
        self.publish_baselines();
        self.lock().live.drift_followed += u32::try_from(moved.len()).unwrap_or(u32::MAX);
        live.clear();
        true
    }

    /// Brings each live latency signal's baseline that followed a drift back toward its level
    /// at rest when its full window says live traffic is faster again ([`return_from_drift`]);
    /// logged at debug level, shown in `status` with the baselines. The next move is judged
    /// on a window of readings all taken after this one (each reading counts once); the
    /// window itself is kept for the rate's verdicts. Forgotten, it held the climb for a
    /// whole window (10 s on the benchmark) after every rest check that measured live
    /// traffic a little slower at rest than under the backfill.
    fn return_from_drift(&mut self, live: &mut LiveWindow, full: usize) {
        if live.pushed.saturating_sub(live.returned_at) < full {
            return;
        }
        let signals = [
            (
                &mut self.live_base,
                self.rest_live_base,
                live.statements.make_contiguous(),
            ),
            (
                &mut self.tx_base,
                self.rest_tx_base,
                live.transactions.make_contiguous(),
            ),
        ];
        let mut moved = false;
        for (base, rest, window) in signals {
            let (Some(followed), Some(rest)) = (*base, rest) else {
                continue;
            };
            if window.len() < full {
                continue;
            }
            if let Some(now) = return_from_drift(&rest, &followed, window) {
                tracing::debug!(
                    run_id = self.run_id,
                    from_ms = ms(followed.mean()),
                    to_ms = ms(now.mean()),
                    at_rest_ms = ms(rest.mean()),
                    "adaptive throttle: live traffic is faster than the drift its baseline followed"
                );
                *base = Some(now);
                moved = true;
            }
        }
        if moved {
            // The next return is judged on new readings: each reading counts once.
            live.returned_at = live.pushed;
            self.publish_baselines();
        }
    }

    /// Publishes the live baselines in force for `status`.
    fn publish_baselines(&self) {
        let mut status = self.lock();
        status.live.baseline = self.live_base.map(|b| b.mean());
        status.live.transaction_baseline = self.tx_base.map(|b| b.mean());
    }

    /// The replica lag of the watched database (of the probe's without a watch) when
    /// `max_replica_lag` is set; a failed read sets `failed` and is published.
    async fn replica_lag(&mut self, failed: &mut bool) -> Option<Duration> {
        self.throttle.max_replica_lag?;
        let read = match (&self.watch, &self.probe) {
            (Some(watch), _) => watch.replica_lag().await,
            (None, Some(probe)) if self.throttle.watch.is_none() => probe.replica_lag().await,
            _ => return None,
        };
        match read {
            Ok(lag) => lag,
            Err(e) => {
                *failed = true;
                self.failed(&e.to_string());
                None
            }
        }
    }

    /// Publishes the live window's mean and limit for `status`.
    fn publish_live(&self, live: &LiveWindow) {
        let mean = window_mean(&live.statements.iter().copied().collect::<Vec<_>>());
        let mut status = self.lock();
        status.live.mean = mean.map(|m| m.mean);
        status.live.calls = mean.map_or(0, |m| m.calls);
        let mli = self.throttle.max_latency_increase;
        // Without a window yet (just after a change), the allowed rise alone.
        let limit = |base: LatencyBaseline, calls: Option<u64>| match calls {
            Some(calls) => base.limit(calls, mli),
            None => base.allowed(mli),
        };
        status.live.limit = self.live_base.map(|b| limit(b, mean.map(|m| m.calls)));
        let tx = window_mean(&live.transactions.iter().copied().collect::<Vec<_>>());
        status.live.transaction = tx.map(|m| m.mean);
        status.live.transactions = tx.map_or(0, |m| m.calls);
        status.live.transaction_limit = self.tx_base.map(|b| limit(b, tx.map(|m| m.calls)));
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
            "watch": self.lock().live.to_json(),
            "adaptive": true,
        });
        let (live_mean, live_limit) = {
            let status = self.lock();
            (status.live.mean.map(ms), status.live.limit.map(ms))
        };
        tracing::info!(
            run_id = self.run_id,
            from = change.from,
            rate = change.to,
            cause = change.cause.as_str(),
            p90_ms = p90.map(ms),
            baseline_p90_ms = self.baseline_p90.map(ms),
            lag_ms = lag.map(ms),
            live_mean_ms = live_mean,
            live_limit_ms = live_limit,
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

/// The watched database's readings since the latest cut, at most the live window of each.
#[derive(Default)]
struct LiveWindow {
    /// Readings pushed since the latest cut.
    pushed: usize,
    /// `pushed` when a baseline last returned from a drift ([`Adaptive::return_from_drift`]):
    /// the next return is judged once a full window was pushed since.
    returned_at: usize,
    statements: VecDeque<StatDelta>,
    transactions: VecDeque<StatDelta>,
    waiting: VecDeque<f64>,
    running: VecDeque<f64>,
}

impl LiveWindow {
    /// Keeps `reading`, at most `cap` of each signal; the transactions of the first `late`
    /// readings after a cut are left out: sessions report them up to [`STATS_REPORT`] late,
    /// so they still hold the rate cut from.
    fn push(&mut self, reading: Reading, cap: usize, late: usize) {
        fn keep<T>(q: &mut VecDeque<T>, v: Option<T>, cap: usize) {
            if let Some(v) = v {
                q.push_back(v);
            }
            // The cap shrinks as the rate rises: drop the oldest beyond it.
            while q.len() > cap.max(1) {
                q.pop_front();
            }
        }
        keep(&mut self.statements, reading.statements, cap);
        self.pushed += 1;
        let transactions = reading.transactions.filter(|_| self.pushed > late);
        keep(&mut self.transactions, transactions, cap);
        keep(&mut self.waiting, reading.waiting.map(f64::from), cap);
        keep(&mut self.running, reading.running.map(f64::from), cap);
    }

    fn clear(&mut self) {
        self.pushed = 0;
        self.returned_at = 0;
        self.statements.clear();
        self.transactions.clear();
        self.waiting.clear();
        self.running.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_spans_a_gap_past_five_seconds_or_five_intervals() {
        let tick = Duration::from_millis(100);
        // The controller's pace, a late tick, a slow read: judged.
        assert!(!spans_a_gap(tick, tick));
        assert!(!spans_a_gap(Duration::from_secs(2), tick));
        assert!(!spans_a_gap(Duration::from_secs(5), tick));
        // A stop of the process (the benchmark pauses the engine for 10 s): dropped.
        assert!(spans_a_gap(Duration::from_millis(5_001), tick));
        assert!(spans_a_gap(Duration::from_secs(10), tick));
        // A slow interval sets its own pace: five of them.
        let slow = Duration::from_secs(2);
        assert!(!spans_a_gap(Duration::from_secs(9), slow));
        assert!(spans_a_gap(Duration::from_secs(11), slow));
    }
}
