//! Adaptive throttling: an AIMD controller of the run's rate, driven by a latency probe on a
//! live-facing database, its replica lag and the errors the run sees (`[throttle]`).
//!
//! Pure: the engine runs the probe every `throttle.interval`, keeps the samples, and calls
//! [`Aimd::on_interval`] with the moving p90, the baseline p90 (measured before the run
//! started), the replica lag and whether throttling errors were seen; it applies the returned
//! rate to its limiter and records the change with its cause.
//!
//! Slow start: the rate starts at the floor (`min_rate_fraction × max`), not at the maximum,
//! and climbs additively while healthy (by `increase_fraction` of the maximum per interval):
//! a run never opens at full speed on a live database it has not felt yet. Starting at the
//! maximum, the first seconds at full speed filled the server with WAL it took many seconds
//! to drain, and the throttle cut again and again on that backlog down to its floor.
//!
//! Pacing: one healthy interval raises the rate by at most the factor that doubles it over a
//! whole window of probes ([`MAX_GROWTH_PER_WINDOW`]), and by at most ×1.25 per window once
//! it probes above where it settled after a cut ([`PROBE_GROWTH_PER_WINDOW`]): the moving p90
//! only shows a new rate once enough of the window's probes were taken under it, so a rate
//! that climbed faster would be far past the trouble point before the probe could see it
//! (measured: a climb of 5% of the maximum per second went from 1% to 50% of it within the
//! first window; climbing above a known trouble rate by 64% per window, cuts came at 1.5–2×
//! the rate live traffic tolerated).
//!
//! Rules: an interval is unhealthy when `p90 > max(baseline × (1 + max_latency_increase),
//! baseline + 0.1 ms, noise ceiling)` ([`MIN_LATENCY_MARGIN`]: a 0.05 ms baseline would
//! otherwise flap on scheduler noise; above 1 ms the margin is exactly `max_latency_increase`;
//! the noise ceiling, [`noise_ceiling`], is the p90 a window of baseline probes itself reaches
//! one time in ten, so the probe's own sampling noise is not read as a rise), when the replica
//! lag exceeds `max_replica_lag`, or when errors were seen. Unhealthy: the rate is multiplied
//! by `decrease_factor` (floored at `min_rate_fraction × max`), the rate it was cut from is
//! remembered as the *trouble* rate, and the next interval cannot cut again (one hold
//! interval), so a single slow probe window that spans two intervals does not collapse the
//! rate. Healthy: the rate rises by `increase_fraction` of the trouble rate (of the maximum
//! before any cut) — so it climbs back at a pace scaled to where trouble began, not to a
//! maximum that may be 40× too high — up to [`SETTLE_SHARE`] of the trouble rate, stays there
//! for [`SETTLE_TIME`] (in healthy intervals), then climbs on, by `increase_fraction` of itself
//! once above the trouble rate (probing upward gently, like TCP after a loss), capped at the
//! maximum.
//!
//! Headroom: a healthy interval whose live signals sit far under their limits
//! ([`Aimd::on_headroom`]) climbs by the pacing factor alone, not by `increase_fraction`:
//! doubling per window from the floor and back to the settling level after a cut; from
//! there, with no settling, at ×1.25 per window up to [`STALE_TROUBLE`] times the trouble
//! rate, which is then forgotten (a marginal cut near the floor must not slow the run for
//! good).
//!
//! Invariant (property-tested): the rate always lies in `[floor, max]`.

use std::fmt;
use std::time::Duration;

use crate::spec::ThrottleSpec;

/// After a cut the rate climbs back to this share of the trouble rate (the rate it was cut
/// from), then settles there for [`SETTLE_TIME`] of healthy intervals before it probes
/// higher: the probe notices trouble later than live traffic feels it, so living just under
/// the trouble rate, not at it, is what keeps live latency flat.
pub const SETTLE_SHARE: f64 = 0.75;

/// How long the rate stays at [`SETTLE_SHARE`] of the trouble rate (in healthy intervals:
/// this time divided by `throttle.interval`, rounded up) before probing higher. Each probe
/// above the trouble rate costs live traffic a few seconds of latency before the probe sees
/// it and the rate is cut, so the settle time sets how often live traffic pays that: at most
/// twice a minute, whatever the probe interval.
pub const SETTLE_TIME: Duration = Duration::from_secs(30);

/// The smallest rise over the baseline p90 that counts as unhealthy, so a sub-millisecond
/// baseline does not turn every scheduling hiccup into a rate cut. A floor, not an addition:
/// above a 1 ms baseline the allowed rise is exactly `max_latency_increase`.
pub const MIN_LATENCY_MARGIN: Duration = Duration::from_micros(100);

/// The most a rate may grow over one window of probes (`throttle.window` intervals) while
/// healthy: ×2, spread evenly over the window's intervals (see the module's pacing rule).
pub const MAX_GROWTH_PER_WINDOW: f64 = 2.0;

/// The most a rate may grow over one window of probes while it probes above the level it
/// settled at after a cut: ×1.25, close to a rate known to have hurt.
pub const PROBE_GROWTH_PER_WINDOW: f64 = 1.25;

/// A trouble rate is forgotten once the rate, far under every limit
/// ([`Aimd::on_headroom`]), reaches this multiple of it: it no longer tells where trouble is.
pub const STALE_TROUBLE: f64 = 2.0;

/// How often the p90 of a window of probes taken with no backfill at all may exceed the
/// [`noise_ceiling`]: one window in ten. A p90 under that ceiling is within the probe's own
/// noise, not a rise (measured on PostgreSQL at rest: windows of 40 and of 100 probes spread
/// ±15–25% around their median p90, more than the +10% a run is allowed).
pub const NOISE_ALPHA: f64 = 0.1;

/// Why the rate changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateCause {
    /// The run started at its maximum.
    Start,
    /// The probe's p90 rose above the baseline by more than allowed.
    Latency,
    /// The live statements' own mean time per call (`pg_stat_statements`, statement digests)
    /// rose above its baseline by more than allowed (`crate::live`).
    LiveLatency,
    /// The live sessions' time per transaction (PostgreSQL `pg_stat_database`: time active or
    /// idle in a transaction per commit or rollback) rose above its baseline by more than
    /// allowed (`crate::live`): what a client waiting between its statements feels too.
    LiveTransactions,
    /// More live sessions wait on WAL or I/O than at rest (PostgreSQL `pg_stat_activity`).
    Waiting,
    /// More threads run than at rest (MySQL/MariaDB `Threads_running`).
    Running,
    /// The replica lag exceeded `max_replica_lag`.
    ReplicaLag,
    /// Throttling errors (lock timeouts, deadlocks, too many connections, …) were seen.
    Errors,
    /// A healthy interval: the rate rose toward the maximum.
    Recovered,
    /// An operator changed the maximum (`backfill throttle`).
    Manual,
}

impl RateCause {
    /// The name in logs, the state store's time series and `status`: `start`, `latency`,
    /// `replica_lag`, `errors`, `recovered`, `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateCause::Start => "start",
            RateCause::Latency => "latency",
            RateCause::LiveLatency => "live_latency",
            RateCause::LiveTransactions => "live_transactions",
            RateCause::Waiting => "waiting",
            RateCause::Running => "running",
            RateCause::ReplicaLag => "replica_lag",
            RateCause::Errors => "errors",
            RateCause::Recovered => "recovered",
            RateCause::Manual => "manual",
        }
    }

    /// The inverse of [`RateCause::as_str`].
    pub fn parse(name: &str) -> Option<RateCause> {
        [
            RateCause::Start,
            RateCause::Latency,
            RateCause::LiveLatency,
            RateCause::LiveTransactions,
            RateCause::Waiting,
            RateCause::Running,
            RateCause::ReplicaLag,
            RateCause::Errors,
            RateCause::Recovered,
            RateCause::Manual,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

impl fmt::Display for RateCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One move of the rate, in rows per second; `from != to`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateChange {
    /// The rate before.
    pub from: f64,
    /// The rate after.
    pub to: f64,
    /// Why it moved.
    pub cause: RateCause,
}

/// The AIMD controller of a run's rate (rows per second).
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    /// The ceiling: the configured maximum rate, or the operator's latest (`set_max`).
    max: f64,
    /// The rate in force; always in `[floor, max]`.
    rate: f64,
    /// Multiplier applied by a cut, in (0, 1).
    decrease_factor: f64,
    /// Floor as a fraction of `max`.
    min_rate_fraction: f64,
    /// Additive step per healthy interval as a fraction of `max`.
    increase_fraction: f64,
    /// Allowed rise of the p90 over the baseline, as a fraction.
    max_latency_increase: f64,
    /// Replica lag above which an interval is unhealthy.
    max_replica_lag: Option<Duration>,
    /// Set by a cut: the next unhealthy interval does not cut again.
    hold: bool,
    /// The rate of the latest cut (where trouble began); `None` before any cut.
    trouble: Option<f64>,
    /// Healthy intervals spent settled under the trouble rate since the latest cut.
    settled: u32,
    /// Healthy intervals to settle for: [`SETTLE_TIME`] in probe intervals.
    settle_intervals: u32,
    /// The largest factor one healthy interval may raise the rate by: [`MAX_GROWTH_PER_WINDOW`]
    /// spread over `window` intervals.
    growth: f64,
    /// The same for climbs above the settling level: [`PROBE_GROWTH_PER_WINDOW`].
    probe_growth: f64,
    /// The probe's noise measured with the baseline ([`noise_ceiling`]); `None` until set.
    noise: Option<Duration>,
    /// Cause of the latest change.
    cause: RateCause,
}

impl Aimd {
    /// A controller whose maximum is `max_rate`, with the rules of `spec`, starting at the
    /// floor (slow start; at the maximum when the floor is zero). A `max_rate` that is not a
    /// positive finite number is taken as 1 row per second.
    pub fn new(spec: &ThrottleSpec, max_rate: f64) -> Aimd {
        let max = sane_rate(max_rate);
        let floor = max * spec.min_rate_fraction.clamp(0.0, 1.0);
        Aimd {
            max,
            rate: if floor > 0.0 { floor } else { max },
            decrease_factor: spec.decrease_factor.clamp(f64::MIN_POSITIVE, 1.0),
            min_rate_fraction: spec.min_rate_fraction.clamp(0.0, 1.0),
            increase_fraction: spec.increase_fraction.clamp(0.0, 1.0),
            max_latency_increase: spec.max_latency_increase.max(0.0),
            max_replica_lag: spec.max_replica_lag,
            hold: false,
            trouble: None,
            settled: 0,
            settle_intervals: settle_intervals(spec.interval),
            growth: growth_per_interval(MAX_GROWTH_PER_WINDOW, spec.window),
            probe_growth: growth_per_interval(PROBE_GROWTH_PER_WINDOW, spec.window),
            noise: None,
            cause: RateCause::Start,
        }
    }

    /// Paces the climb for a signal that judges a new rate within `intervals` intervals
    /// (instead of `throttle.window`): at most ×[`MAX_GROWTH_PER_WINDOW`] (×
    /// [`PROBE_GROWTH_PER_WINDOW`] above the settling level) per that many intervals. The
    /// live signals resolve a rise in a few intervals on busy traffic
    /// ([`crate::live::intervals_to_resolve`]), so the rate reaches its level sooner than a
    /// window of probes would allow.
    pub fn set_pace(&mut self, intervals: u32) {
        self.growth = growth_per_interval(MAX_GROWTH_PER_WINDOW, intervals);
        self.probe_growth = growth_per_interval(PROBE_GROWTH_PER_WINDOW, intervals);
    }

    /// Sets the probe's noise ceiling ([`noise_ceiling`] of the baseline): a p90 at or under
    /// it is never a latency rise. `None` leaves only the allowed rise.
    pub fn set_noise_ceiling(&mut self, noise: Option<Duration>) {
        self.noise = noise;
    }

    /// The p90 above which an interval is unhealthy for `baseline_p90`: the largest of the
    /// allowed rise (`max_latency_increase`), [`MIN_LATENCY_MARGIN`] and the noise ceiling.
    pub fn latency_limit(&self, baseline_p90: Duration) -> Duration {
        self.allowed_rise(baseline_p90)
            .max(self.noise.unwrap_or(Duration::ZERO))
    }

    /// The p90 that `max_latency_increase` alone allows over `baseline_p90` (at least
    /// [`MIN_LATENCY_MARGIN`] more): the latency limit when the probe is quieter than that.
    pub fn allowed_rise(&self, baseline_p90: Duration) -> Duration {
        let base = baseline_p90.as_secs_f64();
        let rise =
            (base * (1.0 + self.max_latency_increase)).max(base + MIN_LATENCY_MARGIN.as_secs_f64());
        Duration::try_from_secs_f64(rise).unwrap_or(Duration::MAX)
    }

    /// Healthy intervals the rate settles under the trouble rate before probing higher:
    /// [`SETTLE_TIME`] divided by the probe interval, rounded up, at least 1.
    pub fn settle_intervals(&self) -> u32 {
        self.settle_intervals
    }

    /// The rate in force, rows per second; always in `[floor(), max()]`.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The ceiling, rows per second.
    pub fn max(&self) -> f64 {
        self.max
    }

    /// The lowest rate a cut can reach: `min_rate_fraction × max`.
    pub fn floor(&self) -> f64 {
        self.max * self.min_rate_fraction
    }

    /// Why the rate is what it is: the cause of the latest change (`Start` before any).
    pub fn cause(&self) -> RateCause {
        self.cause
    }

    /// The change that starts a run: from 0 to the starting rate (the floor), cause `Start`,
    /// for the time series.
    pub fn start_change(&self) -> RateChange {
        RateChange {
            from: 0.0,
            to: self.rate,
            cause: RateCause::Start,
        }
    }

    /// Manual throttle change: a new ceiling (sanitised like in [`Aimd::new`]); the rate is
    /// clamped into the new `[floor, max]` and otherwise kept (a raised ceiling is climbed
    /// additively). Returns the change, cause `Manual`, when the rate moved.
    pub fn set_max(&mut self, max_rate: f64) -> Option<RateChange> {
        self.max = sane_rate(max_rate);
        let to = self.rate.clamp(self.floor(), self.max);
        self.change(to, RateCause::Manual)
    }

    /// True when `p90` exceeds [`Aimd::latency_limit`] for `baseline_p90`.
    pub fn latency_unhealthy(&self, p90: Duration, baseline_p90: Duration) -> bool {
        p90 > self.latency_limit(baseline_p90)
    }

    /// The rate of the latest cut, where trouble began; `None` before any cut.
    pub fn trouble(&self) -> Option<f64> {
        self.trouble
    }

    /// One probe interval. Unhealthy (latency, then replica lag, then errors, the first that
    /// applies is the cause): cut the rate, unless the previous interval cut it (hold).
    /// Healthy: raise it by one step. Returns the change when the rate moved.
    pub fn on_interval(
        &mut self,
        p90: Duration,
        baseline_p90: Duration,
        replica_lag: Option<Duration>,
        errors_seen: bool,
    ) -> Option<RateChange> {
        let lagging = matches!((replica_lag, self.max_replica_lag), (Some(l), Some(m)) if l > m);
        let cause = if self.latency_unhealthy(p90, baseline_p90) {
            Some(RateCause::Latency)
        } else if lagging {
            Some(RateCause::ReplicaLag)
        } else if errors_seen {
            Some(RateCause::Errors)
        } else {
            None
        };
        self.on_verdict(cause)
    }

    /// One interval judged elsewhere (the live signals, [`crate::live::Verdict`]): `Some(cause)`
    /// cuts the rate unless the previous interval cut it (hold); `None` raises it by one step,
    /// with the same rules as [`Aimd::on_interval`].
    pub fn on_verdict(&mut self, cause: Option<RateCause>) -> Option<RateChange> {
        self.step(cause, false)
    }

    /// A healthy interval whose signals are comfortably under their limits (a live window
    /// whose mean, noise included, sits under half the allowed rise:
    /// [`crate::live::Verdict::Comfortable`]): the climb is multiplicative, only paced (at
    /// most ×[`MAX_GROWTH_PER_WINDOW`] per window), not limited to `increase_fraction` per
    /// interval, and it does not settle under the latest trouble rate: the signals say that
    /// rate is far from hurting now. After a cut it still stops once at [`SETTLE_SHARE`] of
    /// the trouble rate, and from there it probes at ×[`PROBE_GROWTH_PER_WINDOW`] per window
    /// until [`STALE_TROUBLE`] times it, where the trouble is forgotten. Near the
    /// limit the healthy verdicts climb additively, settle and probe gently (AIMD).
    pub fn on_headroom(&mut self) -> Option<RateChange> {
        self.step(None, true)
    }

    fn step(&mut self, cause: Option<RateCause>, headroom: bool) -> Option<RateChange> {
        let held = std::mem::take(&mut self.hold);
        match cause {
            Some(_) if held => None,
            Some(cause) => {
                let to = (self.rate * self.decrease_factor).max(self.floor());
                let from = self.rate;
                let change = self.change(to, cause);
                if change.is_some() {
                    self.trouble = Some(from);
                    self.settled = 0;
                }
                self.hold = change.is_some();
                change
            }
            None => {
                let (scale, cap, growth) = match self.trouble {
                    // Back toward where trouble began, at a pace scaled to it, up to the
                    // settling level.
                    Some(trouble) if self.rate < trouble * SETTLE_SHARE => {
                        (trouble, trouble * SETTLE_SHARE, self.growth)
                    }
                    // Settled just under it for a while before probing higher, unless the
                    // live signals say it is far from any limit now (the trouble is stale:
                    // one noisy window near the floor, or load that has gone).
                    Some(_) if !headroom && self.settled < self.settle_intervals => {
                        self.settled += 1;
                        return None;
                    }
                    Some(trouble) if self.rate < trouble => (trouble, self.max, self.probe_growth),
                    // Past it without trouble: probe upward relative to the rate itself.
                    Some(_) => (self.rate, self.max, self.probe_growth),
                    None => (self.max, self.max, self.growth),
                };
                // Far under every limit at twice the trouble rate: that trouble is stale (a
                // marginal cut near the floor, load that has gone): climb as before any cut.
                if headroom && self.trouble.is_some_and(|t| self.rate >= STALE_TROUBLE * t) {
                    self.trouble = None;
                }
                let additive = if headroom {
                    f64::INFINITY
                } else {
                    self.rate + self.increase_fraction * scale
                };
                let to = additive.min(self.rate * growth).min(cap).min(self.max);
                self.change(to, RateCause::Recovered)
            }
        }
    }

    fn change(&mut self, to: f64, cause: RateCause) -> Option<RateChange> {
        if to == self.rate {
            return None;
        }
        let from = self.rate;
        self.rate = to;
        self.cause = cause;
        Some(RateChange { from, to, cause })
    }
}

fn settle_intervals(interval: Duration) -> u32 {
    let interval = interval.as_secs_f64();
    if !(interval.is_finite() && interval > 0.0) {
        return 1;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (SETTLE_TIME.as_secs_f64() / interval)
        .ceil()
        .min(f64::from(u32::MAX)) as u32;
    n.max(1)
}

/// A growth per window (`per_window`) spread over `window` intervals (0 counts as 1).
fn growth_per_interval(per_window: f64, window: u32) -> f64 {
    per_window.powf(1.0 / f64::from(window.max(1)))
}

/// The probe's noise ceiling from the `baseline` latencies: the smallest of them that the p90
/// of `window` probes drawn from the baseline's distribution exceeds with probability at most
/// [`NOISE_ALPHA`]. That probability is exact for the nearest-rank p90 (rank
/// `k = ceil(0.9 × window)`): the p90 exceeds `x` exactly when fewer than `k` of the window's
/// probes are at or under `x`, a binomial count with `p` = the baseline's share at or under
/// `x`. `None` without samples. With few baseline probes it is close to their maximum, with
/// many close to their 93rd–96th percentile.
pub fn noise_ceiling(baseline: &[Duration], window: usize) -> Option<Duration> {
    let mut sorted = baseline.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let window = window.max(1);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((0.9 * window as f64).ceil() as usize).clamp(1, window);
    (0..n).find_map(|i| {
        let x = sorted[i];
        // Every sample equal to x is at or under it.
        let at_or_under = sorted.partition_point(|s| *s <= x);
        #[allow(clippy::cast_precision_loss)]
        let p = at_or_under as f64 / n as f64;
        (binomial_cdf(rank - 1, window, p) <= NOISE_ALPHA).then_some(x)
    })
}

/// `P(X ≤ k)` for `X ~ Binomial(n, p)`, summed in log space so large `n` does not underflow.
fn binomial_cdf(k: usize, n: usize, p: f64) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if k >= n { 1.0 } else { 0.0 };
    }
    #[allow(clippy::cast_precision_loss)]
    let (nf, odds) = (n as f64, (p / (1.0 - p)).ln());
    let mut log_term = nf * (1.0 - p).ln(); // P(X = 0)
    let mut sum = log_term.exp();
    for i in 0..k.min(n) {
        #[allow(clippy::cast_precision_loss)]
        let ratio = ((nf - i as f64) / (i as f64 + 1.0)).ln();
        log_term += ratio + odds;
        sum += log_term.exp();
    }
    sum.min(1.0)
}

fn sane_rate(rate: f64) -> f64 {
    if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        1.0
    }
}

/// The nearest-rank percentile of `samples` (unsorted): `p` is a fraction in `[0, 1]` (0.5 for
/// p50, 0.9 for p90, 0.99 for p99); the smallest sample with at least `p` of the samples at or
/// below it. `None` when there is no sample or `p` is outside `[0, 1]`.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    // ceil(p × n) as a 1-based rank, at least 1; exact for the small n of probe windows.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A controller already at its maximum, as after a slow start on a healthy database,
    /// unpaced (see [`unpaced`]).
    fn at_max(spec: &ThrottleSpec, max: f64) -> Aimd {
        let mut aimd = unpaced(Aimd::new(spec, max));
        aimd.rate = aimd.max;
        aimd
    }

    /// Without the pacing rule, so the scripts below count the other rules' steps; pacing
    /// has its own test.
    fn unpaced(mut aimd: Aimd) -> Aimd {
        aimd.growth = f64::INFINITY;
        aimd.probe_growth = f64::INFINITY;
        aimd
    }

    #[test]
    fn a_healthy_climb_at_most_doubles_the_rate_per_window_of_probes() {
        let spec = ThrottleSpec {
            min_rate_fraction: 0.01,
            increase_fraction: 0.25,
            window: 4,
            ..spec()
        };
        let mut aimd = Aimd::new(&spec, 1000.0);
        let mut rates = vec![aimd.rate()];
        for _ in 0..8 {
            aimd.on_interval(ms(10), ms(10), None, false);
            rates.push(aimd.rate());
        }
        // 2^(1/4) per interval: doubled after each window of 4, not +250 per interval.
        for (i, rate) in rates.iter().enumerate() {
            let expected = 10.0 * 2f64.powf(i as f64 / 4.0);
            assert!((rate - expected).abs() < 1e-9, "{i}: {rate} vs {expected}");
        }
        // The additive step still applies when it is the smaller: a window of 1 allows ×2.
        let mut aimd = Aimd::new(
            &ThrottleSpec {
                window: 1,
                ..spec.clone()
            },
            1000.0,
        );
        aimd.rate = 500.0;
        aimd.on_interval(ms(10), ms(10), None, false);
        assert_eq!(aimd.rate(), 750.0, "+250 is less than ×2");

        // After a cut: back to the settling level at up to ×2 per window, then above it at
        // up to ×1.25 per window.
        let mut aimd = Aimd::new(&spec, 1000.0);
        aimd.rate = 800.0;
        aimd.on_interval(ms(100), ms(10), None, false); // trouble 800, cut to 400
        aimd.on_interval(ms(10), ms(10), None, false);
        assert!((aimd.rate() - 400.0 * 2f64.powf(0.25)).abs() < 1e-9);
        while aimd.rate() < 600.0 {
            aimd.on_interval(ms(10), ms(10), None, false);
        }
        assert_eq!(aimd.rate(), 600.0, "75% of the trouble rate");
        for _ in 0..aimd.settle_intervals() {
            assert_eq!(aimd.on_interval(ms(10), ms(10), None, false), None);
        }
        aimd.on_interval(ms(10), ms(10), None, false);
        assert!(
            (aimd.rate() - 600.0 * 1.25f64.powf(0.25)).abs() < 1e-9,
            "{}",
            aimd.rate()
        );
        for _ in 0..4 {
            aimd.on_interval(ms(10), ms(10), None, false);
        }
        assert!(
            (aimd.rate() - 600.0 * 1.25f64.powf(1.25)).abs() < 1e-9,
            "{}",
            aimd.rate()
        );
    }

    #[test]
    fn the_noise_ceiling_is_what_a_window_of_baseline_probes_reaches_one_time_in_ten() {
        // 100 baseline probes of 1..=100 µs.
        let baseline: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        // A window of 100: the smallest x with P(Binomial(100, x/100) <= 89) <= 0.1.
        let ceiling = noise_ceiling(&baseline, 100).unwrap();
        let p = |x: u64| binomial_cdf(89, 100, x as f64 / 100.0);
        let x = ceiling.as_micros() as u64;
        assert!(
            p(x) <= NOISE_ALPHA && p(x - 1) > NOISE_ALPHA,
            "ceiling {x} µs"
        );
        assert!(
            (93..=95).contains(&x),
            "above the p90 (90 µs), near the p93–95: {x}"
        );
        // A smaller window is noisier, so its ceiling is higher; 20 baseline probes for a
        // window of 20 give the second largest.
        assert!(noise_ceiling(&baseline, 20).unwrap() > ceiling);
        let twenty: Vec<Duration> = (1..=20).map(Duration::from_micros).collect();
        assert_eq!(noise_ceiling(&twenty, 20), Some(Duration::from_micros(19)));
        // Ties count together; one sample; none.
        assert_eq!(noise_ceiling(&[ms(3); 7], 20), Some(ms(3)));
        assert_eq!(noise_ceiling(&[ms(3)], 20), Some(ms(3)));
        assert_eq!(noise_ceiling(&[], 20), None);
        // The exact binomial: P(X <= 1) for n = 3, p = 0.5 is 4/8; edges.
        assert!((binomial_cdf(1, 3, 0.5) - 0.5).abs() < 1e-12);
        assert_eq!(binomial_cdf(2, 3, 1.0), 0.0);
        assert_eq!(binomial_cdf(3, 3, 1.0), 1.0);
        assert_eq!(binomial_cdf(0, 3, 0.0), 1.0);
        // Large windows do not underflow: P(X <= 899) for n = 1000, p = 0.9 is about a half.
        let mid = binomial_cdf(899, 1000, 0.9);
        assert!((0.4..0.6).contains(&mid), "{mid}");
    }

    #[test]
    fn a_p90_within_the_probes_noise_is_not_a_rise() {
        let mut aimd = at_max(&spec(), 1000.0);
        // Baseline p90 10 ms: +10% is 11 ms.
        assert_eq!(aimd.latency_limit(ms(10)), ms(11));
        assert!(aimd.latency_unhealthy(ms(12), ms(10)));
        // A probe whose windows reach 13 ms at rest: 12 ms is noise, 14 ms a rise.
        aimd.set_noise_ceiling(Some(ms(13)));
        assert_eq!(aimd.latency_limit(ms(10)), ms(13));
        assert_eq!(aimd.on_interval(ms(12), ms(10), None, false), None);
        assert_eq!(aimd.rate(), 1000.0);
        let cut = aimd.on_interval(ms(14), ms(10), None, false).unwrap();
        assert_eq!((cut.to, cut.cause), (500.0, RateCause::Latency));
        assert_eq!(
            aimd.allowed_rise(ms(10)),
            ms(11),
            "the rise alone is unchanged"
        );
        // A quiet probe's ceiling under the allowed rise changes nothing.
        aimd.set_noise_ceiling(Some(ms(10)));
        assert_eq!(aimd.latency_limit(ms(10)), ms(11));
    }

    #[test]
    fn starts_at_the_floor_and_climbs_by_a_share_of_the_maximum() {
        let spec = ThrottleSpec {
            min_rate_fraction: 0.01,
            increase_fraction: 0.25,
            ..spec()
        };
        let mut aimd = unpaced(Aimd::new(&spec, 1000.0));
        assert_eq!(aimd.rate(), 10.0);
        let start = aimd.start_change();
        assert_eq!(
            (start.from, start.to, start.cause),
            (0.0, 10.0, RateCause::Start)
        );
        let mut rates = Vec::new();
        for _ in 0..5 {
            aimd.on_interval(ms(10), ms(10), None, false);
            rates.push(aimd.rate());
        }
        assert_eq!(rates, [260.0, 510.0, 760.0, 1000.0, 1000.0]);
        // Trouble during the climb cuts like anywhere else.
        let mut aimd = unpaced(Aimd::new(&spec, 1000.0));
        aimd.on_interval(ms(10), ms(10), None, false);
        let cut = aimd.on_interval(ms(100), ms(10), None, false).unwrap();
        assert_eq!((cut.from, cut.to), (260.0, 130.0));
        assert_eq!(aimd.trouble(), Some(260.0));
    }

    fn spec() -> ThrottleSpec {
        ThrottleSpec {
            max_replica_lag: Some(Duration::from_secs(5)),
            // The scripts below were written for a floor of 5% of the maximum.
            min_rate_fraction: 0.05,
            ..ThrottleSpec::default()
        }
    }

    #[test]
    fn scripted_latencies() {
        let mut aimd = at_max(&spec(), 1000.0);
        // (p90 ms, replica lag s, errors) per interval; the baseline is 10 ms, so the
        // threshold is 10 × 1.1 = 11 ms; after a cut the rate climbs by 5% of the rate it was
        // cut from.
        let script: &[(u64, u64, bool)] = &[
            (10, 0, false), // healthy at the max: nothing moves
            (12, 0, false), // slow: cut to 500
            (12, 0, false), // hold
            (12, 0, false), // cut to 250
            (11, 0, false), // healthy: +50
            (10, 6, false), // replica lag: cut to 150
            (10, 0, true),  // errors, but hold
            (10, 0, true),  // errors: cut to 75
            (10, 0, true),  // hold
            (10, 0, true),  // cut: 37.5, floored at 50
            (10, 0, true),  // hold
            (10, 0, true),  // at the floor: nothing moves
            (10, 0, false), // +50
            (10, 0, false), // +50
        ];
        let mut log = Vec::new();
        for (p90, lag, errors) in script {
            let change =
                aimd.on_interval(ms(*p90), ms(10), Some(Duration::from_secs(*lag)), *errors);
            log.push(match change {
                Some(c) => format!("{} -> {} ({})", c.from, c.to, c.cause),
                None => format!("{} (unchanged)", aimd.rate()),
            });
        }
        expect_test::expect![[r#"
            1000 (unchanged)
            1000 -> 500 (latency)
            500 (unchanged)
            500 -> 250 (latency)
            250 -> 275 (recovered)
            275 -> 137.5 (replica_lag)
            137.5 (unchanged)
            137.5 -> 68.75 (errors)
            68.75 (unchanged)
            68.75 -> 50 (errors)
            50 (unchanged)
            50 (unchanged)
            50 -> 51.5625 (recovered)
            51.5625 (unchanged)"#]]
        .assert_eq(&log.join("\n"));
        assert_eq!(aimd.cause(), RateCause::Recovered);
    }

    #[test]
    fn recovery_is_capped_at_the_max() {
        let mut aimd = at_max(&spec(), 1000.0);
        aimd.on_interval(ms(100), ms(10), None, false);
        for _ in 0..100 {
            aimd.on_interval(ms(10), ms(10), None, false);
        }
        assert_eq!(aimd.rate(), 1000.0);
    }

    #[test]
    fn tiny_baselines_do_not_flap_and_larger_ones_get_exactly_the_allowed_rise() {
        let mut aimd = at_max(&spec(), 1000.0);
        let us = Duration::from_micros;
        // 0.05 ms baseline, 0.14 ms p90: almost three times the baseline but within the
        // 0.1 ms margin.
        assert_eq!(aimd.on_interval(us(140), us(50), None, false), None);
        assert!(aimd.latency_unhealthy(us(160), us(50)));
        // 0.96 ms baseline (the live-latency benchmark's write probe): +10% would be
        // 1.056 ms, the 0.1 ms floor makes it 1.06 ms, +10.4%. (Before, a fixed +0.5 ms
        // slack made it 1.556 ms, +62%.)
        assert!(!aimd.latency_unhealthy(us(1055), us(960)));
        assert!(aimd.latency_unhealthy(us(1065), us(960)));
        // 5 ms baseline: exactly +10%.
        assert!(!aimd.latency_unhealthy(us(5499), us(5000)));
        assert!(aimd.latency_unhealthy(us(5501), us(5000)));
    }

    #[test]
    fn the_settle_time_is_the_same_whatever_the_probe_interval() {
        let at = |interval: Duration| {
            Aimd::new(&ThrottleSpec { interval, ..spec() }, 1000.0).settle_intervals()
        };
        assert_eq!(at(Duration::from_millis(250)), 120);
        assert_eq!(at(Duration::from_secs(1)), 30);
        assert_eq!(at(Duration::from_secs(7)), 5, "rounded up: 30 s at least");
        assert_eq!(at(Duration::from_secs(60)), 1);
        assert_eq!(at(Duration::ZERO), 1);
    }

    #[test]
    fn recovery_is_paced_by_the_trouble_rate_settles_under_it_then_probes_gently() {
        let spec = ThrottleSpec {
            increase_fraction: 0.1,
            ..spec()
        };
        let mut aimd = at_max(&spec, 1000.0);
        // Trouble at 1,000: cut to 500.
        aimd.on_interval(ms(100), ms(10), None, false);
        assert_eq!(aimd.trouble(), Some(1000.0));
        // Back up in steps of 10% of the trouble rate (100), to 75% of it.
        let mut rates = Vec::new();
        for _ in 0..4 {
            aimd.on_interval(ms(10), ms(10), None, false);
            rates.push(aimd.rate());
        }
        assert_eq!(rates, [600.0, 700.0, 750.0, 750.0]);
        // Settled there: no change for SETTLE_TIME of healthy intervals in all.
        for _ in 1..aimd.settle_intervals() {
            assert_eq!(aimd.on_interval(ms(10), ms(10), None, false), None);
        }
        // Then toward the trouble rate again (steps of 100), and past it by 10% of itself.
        assert_eq!(
            aimd.on_interval(ms(10), ms(10), None, false).unwrap().to,
            850.0
        );
        assert_eq!(
            aimd.on_interval(ms(10), ms(10), None, false).unwrap().to,
            950.0
        );
        assert_eq!(
            aimd.on_interval(ms(10), ms(10), None, false).unwrap().to,
            1000.0
        );
        // A cut anywhere starts over from the new trouble rate.
        let mut aimd = at_max(&spec, 10_000.0);
        aimd.on_interval(ms(100), ms(10), None, false); // 10,000 -> 5,000
        aimd.on_interval(ms(10), ms(10), None, false); // +1,000 -> 6,000
        aimd.on_interval(ms(100), ms(10), None, false); // 6,000 -> 3,000
        assert_eq!(aimd.trouble(), Some(6000.0));
        aimd.on_interval(ms(10), ms(10), None, false);
        assert_eq!(aimd.rate(), 3600.0, "steps of 10% of 6,000, not of 10,000");
        // Above the trouble rate, 10% of the rate itself.
        let mut aimd = at_max(&spec, 10_000.0);
        aimd.on_interval(ms(100), ms(10), None, false); // trouble 10,000, rate 5,000
        aimd.set_max(20_000.0);
        for _ in 0..200 {
            if aimd.rate() > 10_000.0 {
                break;
            }
            aimd.on_interval(ms(10), ms(10), None, false);
        }
        let before = aimd.rate();
        assert!(before > 10_000.0 && before < 20_000.0, "{before}");
        let change = aimd.on_interval(ms(10), ms(10), None, false).unwrap();
        assert!((change.to - before * 1.1).abs() < 1e-6, "{change:?}");
    }

    #[test]
    fn lag_without_a_limit_is_ignored() {
        let mut aimd = at_max(&ThrottleSpec::default(), 1000.0);
        assert_eq!(
            aimd.on_interval(ms(1), ms(1), Some(Duration::from_secs(3600)), false),
            None
        );
    }

    #[test]
    fn manual_changes_clamp() {
        let mut aimd = at_max(&spec(), 1000.0);
        let change = aimd.set_max(400.0).unwrap();
        assert_eq!(
            (change.from, change.to, change.cause),
            (1000.0, 400.0, RateCause::Manual)
        );
        // Raising the ceiling keeps the rate and climbs in steps of 5% of the new max.
        assert_eq!(aimd.set_max(2000.0), None);
        assert_eq!(
            aimd.on_interval(ms(1), ms(1), None, false).unwrap().to,
            500.0
        );
        // A ceiling whose floor is above the rate lifts the rate to the floor.
        aimd.on_interval(ms(100), ms(1), None, false);
        assert_eq!(aimd.rate(), 250.0);
        assert_eq!(aimd.set_max(10_000.0).unwrap().to, 500.0);
        assert_eq!(aimd.set_max(f64::NAN).unwrap().to, 1.0);
    }

    #[test]
    fn headroom_doubles_per_window_where_a_healthy_interval_climbs_additively() {
        // Max 100,000, floor 1,000, +0.02% of the maximum (20/s) per healthy interval, a
        // window of 10 intervals.
        let spec = ThrottleSpec {
            min_rate_fraction: 0.01,
            increase_fraction: 0.0002,
            window: 10,
            ..spec()
        };
        let (mut roomy, mut healthy) = (Aimd::new(&spec, 100_000.0), Aimd::new(&spec, 100_000.0));
        for _ in 0..30 {
            roomy.on_headroom();
            healthy.on_verdict(None);
        }
        // Three windows: ×8 with headroom; +30 × 20 (the additive step; ×2 per window would
        // allow more) when merely healthy.
        assert!((roomy.rate() - 8_000.0).abs() < 1e-6, "{}", roomy.rate());
        assert!(
            (healthy.rate() - 1_600.0).abs() < 1e-6,
            "{}",
            healthy.rate()
        );
        // After a cut: back to 75% of the trouble rate at ×2 per window.
        let trouble = roomy.rate();
        roomy.on_verdict(Some(RateCause::LiveTransactions));
        assert_eq!(roomy.rate(), trouble / 2.0);
        let mut steps = 0;
        while roomy.rate() < trouble * SETTLE_SHARE {
            roomy.on_headroom();
            steps += 1;
        }
        // 4,000 to 6,000 at ×2 per 10 intervals: 6 intervals, capped at the settle level.
        assert_eq!((steps, roomy.rate()), (6, trouble * SETTLE_SHARE));
        // A merely healthy interval there settles (the rate holds) ...
        let mut healthy = roomy.clone();
        assert_eq!(healthy.on_verdict(None), None, "settles");
        // ... while headroom probes on at once, at ×1.25 per window (the rate of the
        // latest cut is where a sharp knee may be) ...
        let at = roomy.rate();
        for _ in 0..10 {
            roomy.on_headroom();
        }
        assert!(
            (roomy.rate() - at * PROBE_GROWTH_PER_WINDOW).abs() < 1e-6,
            "{}",
            roomy.rate()
        );
        // ... until twice the trouble rate, where it is forgotten: ×2 per window again.
        while roomy.trouble().is_some() {
            roomy.on_headroom();
        }
        let at = roomy.rate();
        // (Forgotten at the start of the interval that then climbs at ×2 per window.)
        assert!(at >= 2.0 * trouble && at < 2.2 * trouble, "{at}");
        for _ in 0..10 {
            roomy.on_headroom();
        }
        assert!(
            (roomy.rate() - at * 2.0).abs() < 1e-6,
            "{} vs {at}",
            roomy.rate()
        );
    }

    #[test]
    fn causes_round_trip() {
        for c in [
            "start",
            "latency",
            "live_latency",
            "live_transactions",
            "waiting",
            "running",
            "replica_lag",
            "errors",
            "recovered",
            "manual",
        ] {
            assert_eq!(RateCause::parse(c).map(RateCause::as_str), Some(c));
        }
        assert_eq!(RateCause::parse("other"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=10).rev().map(ms).collect();
        assert_eq!(percentile(&samples, 0.5), Some(ms(5)));
        assert_eq!(percentile(&samples, 0.9), Some(ms(9)));
        assert_eq!(percentile(&samples, 0.99), Some(ms(10)));
        assert_eq!(percentile(&samples, 0.0), Some(ms(1)));
        assert_eq!(percentile(&samples, 1.0), Some(ms(10)));
        assert_eq!(percentile(&[ms(7)], 0.9), Some(ms(7)));
        assert_eq!(percentile(&[], 0.9), None);
        assert_eq!(percentile(&samples, 90.0), None);
    }

    proptest! {
        /// Whatever the signals (headroom included) and manual changes, the rate stays in
        /// [floor, max].
        #[test]
        fn rate_stays_between_floor_and_max(
            max in 1.0f64..1e6,
            decrease in 0.05f64..0.95,
            floor in 0.0f64..1.0,
            step in 0.001f64..1.0,
            events in proptest::collection::vec(
                (0u64..50, 0u64..10, any::<bool>(), proptest::option::of(1.0f64..1e6)),
                0..200,
            ),
        ) {
            let spec = ThrottleSpec {
                decrease_factor: decrease,
                min_rate_fraction: floor,
                increase_fraction: step,
                max_replica_lag: Some(Duration::from_secs(5)),
                ..ThrottleSpec::default()
            };
            let mut aimd = Aimd::new(&spec, max);
            for (p90, lag, errors, manual) in events {
                let change = match manual {
                    Some(m) => aimd.set_max(m),
                    // Some intervals far under the limit: the multiplicative climb.
                    None if p90 % 7 == 0 => aimd.on_headroom(),
                    None => aimd.on_interval(ms(p90), ms(20), Some(Duration::from_secs(lag)), errors),
                };
                if let Some(c) = change {
                    prop_assert!(c.from != c.to);
                    prop_assert_eq!(c.to, aimd.rate());
                }
                prop_assert!(aimd.rate() >= aimd.floor() && aimd.rate() <= aimd.max(),
                    "{} not in [{}, {}]", aimd.rate(), aimd.floor(), aimd.max());
            }
        }
    }
}
