//! What live traffic feels, judged against its own measured noise: the decision half of the
//! adaptive throttle's live signals (`[throttle] watch`).
//!
//! The engine reads the watched database every `throttle.interval` (`backfill_connectors::
//! Watch`): how many live statements completed and how long they took in all (PostgreSQL
//! `pg_stat_statements`, MySQL/MariaDB `performance_schema` statement digests, the backfill's
//! own statements excluded), and gauges counted at that instant (PostgreSQL: live sessions
//! waiting on WAL or I/O; MySQL: `Threads_running`), and on PostgreSQL the live transactions
//! and the time their sessions spent active or idle inside them (`pg_stat_database`: a
//! [`StatDelta`] of transactions, judged by the same latency rule, cut cause
//! `live_transactions`). Before the run it measures the same
//! readings at rest. This module turns them into a verdict per interval: the rate may rise, it
//! must be cut (with its cause), or the readings cannot tell yet.
//!
//! Latency rule: the window is the intervals since the latest cut (at most `throttle.window`);
//! its mean time per call, `m = Σ time / Σ calls`, is compared with the baseline's mean `b`.
//! The allowed rise is `max_latency_increase × (b + r)` over `b` (at least [`MIN_LIVE_MARGIN`]),
//! where `r` is the time a client pays per call that the server's counters do not see: the
//! round trip to the database, measured at rest ([`LatencyBaseline::with_round_trip`]; zero
//! unless set, at most [`MAX_ROUND_TRIP`]). A client feels its transaction's server time plus
//! a round trip, and `max_latency_increase` is a rise of what it feels. It is raised to the noise of comparing a window of that many calls with the baseline:
//! `b + z × σ × √(1/calls + 1/N)`, with `σ` the per-call spread measured at rest (from how far
//! each baseline interval's mean strays, weighted by its calls), `N` the calls the baseline
//! was measured over (its own mean strays too: a 2 s rest check's as much as a 2 s window's)
//! and `z` the one-sided normal quantile for [`crate::aimd::NOISE_ALPHA`] (a window at rest
//! exceeds it one time in ten, as the probe's noise ceiling). No verdict comes before the
//! window spans two of the backfill's batches at the current rate ([`batch_intervals`]; at
//! least [`MIN_JUDGED_INTERVALS`], at most the full window): the backfill writes in batches,
//! so a shorter window holds none of them, or one batch's write and little else, and would
//! take that burst's cost for the rate's (right after a rest check's hold a 0.7 s window read
//! the statements at 3.6× their baseline while 10 s at the same rate read +34%). Then a window
//! is unhealthy when its mean exceeds that limit; healthy only once it holds enough calls for
//! the noise to be under the allowed rise (so a +`max_latency_increase` rise would show), or
//! once it is full. Busy live traffic thus
//! gets a verdict within a few intervals, and [`intervals_to_resolve`] tells the controller how
//! many, which paces its climb ([`crate::aimd::Aimd::set_pace`]). A healthy window whose
//! mean plus that noise stays under [`COMFORT_SHARE`] of the allowed rise is comfortable: the
//! rate may double per window there ([`crate::aimd::Aimd::on_headroom`]), and climbs by
//! additive steps only nearer the limit.
//!
//! Gauge rule: the window's mean exceeds the baseline's mean by more than the gauge's margin
//! (in sessions or threads) and more than its noise (`z × sd / √n`) once it has
//! [`MIN_JUDGED_INTERVALS`]: unhealthy; otherwise the gauge does not object.
//!
//! Pure: no clock, no I/O; the same readings give the same verdicts.

use std::time::Duration;

use crate::aimd::RateCause;

/// The smallest rise of the live mean time per call over its baseline that counts, so an
/// idle database whose statements take microseconds does not turn scheduling jitter into cuts.
pub const MIN_LIVE_MARGIN: Duration = Duration::from_micros(10);

/// The longest round trip [`LatencyBaseline::with_round_trip`] counts: a longer one says this
/// process is far from the database, not that its clients are (theirs may be much shorter), so
/// past it the allowed rise would be looser than any client feels.
pub const MAX_ROUND_TRIP: Duration = Duration::from_millis(1);

/// The fewest intervals a window needs before any verdict: one interval's mean can be decided
/// by one slow statement.
pub const MIN_JUDGED_INTERVALS: usize = 3;

/// `z` for `NOISE_ALPHA` = 0.1: `P(Z > 1.2816) = 0.1` for a standard normal `Z`.
const Z_NOISE: f64 = 1.281_551_565_545;

/// The live statements of one interval: how many completed and their total execution time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatDelta {
    /// Statements (calls) that completed in the interval, the backfill's own excluded.
    pub calls: u64,
    /// Their total execution time.
    pub time: Duration,
}

/// What one interval's readings say about the rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Far under the limit: the window's mean, its noise included, sits under
    /// [`COMFORT_SHARE`] of the allowed rise (or the signal cannot tell a small rise and does
    /// not object: a gauge, an absent signal). The rate may climb multiplicatively
    /// ([`crate::aimd::Aimd::on_headroom`]).
    Comfortable,
    /// Nothing objects, but the window is near its limit: the rate may rise by an additive
    /// step ([`crate::aimd::Aimd::on_verdict`]).
    Healthy,
    /// Live traffic suffers: cut, for this cause.
    Unhealthy(RateCause),
    /// Not enough readings since the latest cut to tell: hold the rate.
    Undecided,
}

impl Verdict {
    /// Combines the verdicts of several signals, the most cautious wins: the first unhealthy
    /// one; otherwise undecided if any signal is; otherwise healthy if any is; comfortable
    /// only when every signal is. No signal at all is healthy (an additive climb).
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut out: Option<Verdict> = None;
        for v in verdicts {
            out = Some(match (v, out) {
                (Verdict::Unhealthy(_), _) => return v,
                (_, None) => v,
                (Verdict::Undecided, _) | (_, Some(Verdict::Undecided)) => Verdict::Undecided,
                (Verdict::Healthy, _) | (_, Some(Verdict::Healthy)) => Verdict::Healthy,
                _ => Verdict::Comfortable,
            });
        }
        out.unwrap_or(Verdict::Healthy)
    }
}

/// The share of the allowed rise under which a window is comfortable ([`Verdict::Comfortable`]):
/// its mean plus its noise (`z σ √(1/calls + 1/N)`, [`LatencyBaseline::noise_ceiling`]) under `baseline + COMFORT_SHARE × allowed rise`.
pub const COMFORT_SHARE: f64 = 0.5;

/// The live statements at rest, measured before the run: their mean time per call and its
/// per-call spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyBaseline {
    /// Mean time per call over the baseline, seconds.
    mean: f64,
    /// Per-call standard deviation estimated from the intervals' means, seconds.
    sigma: f64,
    /// Mean calls per interval at rest.
    calls_per_interval: f64,
    /// Calls the baseline's mean was measured over: how far that mean may itself stray from
    /// live traffic's level (`σ / √calls`), a part of every comparison's noise.
    calls: f64,
    /// Seconds per call a client pays that the counters do not see (a round trip): part of
    /// what the allowed rise is a fraction of, not of the mean compared.
    round_trip: f64,
}

impl LatencyBaseline {
    /// The baseline of `intervals` (readings at rest); `None` with fewer than two intervals
    /// that saw calls (no mean, or no spread, to compare with).
    pub fn measure(intervals: &[StatDelta]) -> Option<LatencyBaseline> {
        let busy: Vec<&StatDelta> = intervals.iter().filter(|d| d.calls > 0).collect();
        if busy.len() < 2 {
            return None;
        }
        let calls: f64 = busy.iter().map(|d| calls_f64(d.calls)).sum();
        let time: f64 = busy.iter().map(|d| d.time.as_secs_f64()).sum();
        let mean = time / calls;
        // Var(interval mean) ≈ σ² / calls, so calls × (mean_i − mean)² estimates σ².
        let squares: f64 = busy
            .iter()
            .map(|d| {
                let c = calls_f64(d.calls);
                let m = d.time.as_secs_f64() / c;
                c * (m - mean).powi(2)
            })
            .sum();
        #[allow(clippy::cast_precision_loss)]
        let n = busy.len() as f64;
        #[allow(clippy::cast_precision_loss)]
        let all = intervals.len() as f64;
        Some(LatencyBaseline {
            mean,
            sigma: (squares / (n - 1.0)).sqrt(),
            calls_per_interval: calls / all,
            calls,
            round_trip: 0.0,
        })
    }

    /// The same baseline measured over intervals `factor` times shorter than the run's
    /// (the engine reads the baseline faster than it decides): only the calls per interval
    /// scale; the mean and the per-call spread do not depend on the interval.
    #[must_use]
    pub fn rescaled(mut self, factor: f64) -> LatencyBaseline {
        if factor.is_finite() && factor > 0.0 {
            self.calls_per_interval *= factor;
        }
        self
    }

    /// The same baseline, with `round_trip` (at most [`MAX_ROUND_TRIP`]) as the time per call
    /// a client pays beyond what the counters see: the allowed rise becomes a fraction of the
    /// mean plus it ([`LatencyBaseline::allowed`]), what a client feels, not of the server's
    /// share alone (a client across a network waits for the round trip on every transaction).
    #[must_use]
    pub fn with_round_trip(mut self, round_trip: Duration) -> LatencyBaseline {
        self.round_trip = round_trip.min(MAX_ROUND_TRIP).as_secs_f64();
        self
    }

    /// The round trip counted in the allowed rise ([`LatencyBaseline::with_round_trip`]).
    pub fn round_trip(&self) -> Duration {
        secs(self.round_trip)
    }

    /// The mean time per call at rest.
    pub fn mean(&self) -> Duration {
        secs(self.mean)
    }

    /// The per-call standard deviation measured at rest.
    pub fn spread(&self) -> Duration {
        secs(self.sigma)
    }

    /// The mean calls per interval at rest.
    pub fn calls_per_interval(&self) -> f64 {
        self.calls_per_interval
    }

    /// The mean a window may reach: the mean at rest plus `max_latency_increase` of what a
    /// client feels per call (the mean and the round trip), at least [`MIN_LIVE_MARGIN`] more.
    pub fn allowed(&self, max_latency_increase: f64) -> Duration {
        let rise = max_latency_increase.max(0.0) * (self.mean + self.round_trip);
        secs(self.mean + rise.max(MIN_LIVE_MARGIN.as_secs_f64()))
    }

    /// The mean a window of `calls` at rest exceeds one time in ten ([`crate::aimd::NOISE_ALPHA`]):
    /// the baseline's mean plus `z σ √(1/calls + 1/baseline calls)`. Both means are samples
    /// of the same traffic, so both stray: a baseline measured over a 2 s rest check strays as
    /// much as a 2 s window, and one taken as exact turned its own low draws into cuts.
    pub fn noise_ceiling(&self, calls: u64) -> Duration {
        secs(self.mean + self.noise(calls_f64(calls.max(1))))
    }

    /// `z σ √(1/calls + 1/baseline calls)`, seconds: the noise of a window of `calls`
    /// compared with this baseline.
    fn noise(&self, calls: f64) -> f64 {
        Z_NOISE * self.sigma * (1.0 / calls + 1.0 / self.calls.max(1.0)).sqrt()
    }

    /// The mean time per call above which a window of `calls` is unhealthy: the larger of
    /// [`LatencyBaseline::allowed`] and [`LatencyBaseline::noise_ceiling`].
    pub fn limit(&self, calls: u64, max_latency_increase: f64) -> Duration {
        self.allowed(max_latency_increase)
            .max(self.noise_ceiling(calls))
    }

    /// Judges the window `intervals` (since the latest cut, at most `full` of them): see the
    /// module's latency rule; a cut carries `RateCause::LiveLatency`. No verdict, a cut
    /// included, comes before `at_least` intervals (the backfill writes in batches, so a
    /// shorter window holds none, or one batch's burst: [`batch_intervals`]).
    pub fn judge(
        &self,
        intervals: &[StatDelta],
        at_least: usize,
        full: usize,
        max_latency_increase: f64,
    ) -> Verdict {
        self.judge_as(
            RateCause::LiveLatency,
            intervals,
            at_least,
            full,
            max_latency_increase,
        )
    }

    /// [`LatencyBaseline::judge`] for another signal of the same shape (transactions and
    /// their time): a cut carries `cause`. A healthy window whose mean plus its noise stays
    /// under [`COMFORT_SHARE`] of the allowed rise is [`Verdict::Comfortable`].
    pub fn judge_as(
        &self,
        cause: RateCause,
        intervals: &[StatDelta],
        at_least: usize,
        full: usize,
        max_latency_increase: f64,
    ) -> Verdict {
        let Some(window) = window_mean(intervals) else {
            return Verdict::Undecided;
        };
        // Two batches of the backfill before any verdict, a cut included: one batch's burst is
        // not the rate's cost.
        if intervals.len() < MIN_JUDGED_INTERVALS.max(at_least).min(full.max(1)) {
            return Verdict::Undecided;
        }
        if window.mean > self.limit(window.calls, max_latency_increase) {
            return Verdict::Unhealthy(cause);
        }
        let resolved = self.noise_ceiling(window.calls) <= self.allowed(max_latency_increase);
        if !(resolved || intervals.len() >= full) {
            return Verdict::Undecided;
        }
        let rise = self.allowed(max_latency_increase).as_secs_f64() - self.mean;
        let noise = self.noise_ceiling(window.calls).as_secs_f64() - self.mean;
        if window.mean.as_secs_f64() + noise <= self.mean + COMFORT_SHARE * rise {
            Verdict::Comfortable
        } else {
            Verdict::Healthy
        }
    }
}

/// The live statements' baseline judged as a share of what a client feels per statement: its
/// transaction's time and round trip (`transactions`, their mean and round trip at rest) spread
/// over the transaction's statements (calls per interval of each, at rest). The time a client
/// pays per statement beyond its execution (the round trips and waits between a transaction's
/// statements, which `pg_stat_statements` does not count) becomes the statements' round trip
/// ([`LatencyBaseline::with_round_trip`], at most [`MAX_ROUND_TRIP`]). `statements` as it is
/// when either baseline saw no call or the share is not above the statements' own mean.
///
/// Why: a rise of Δ in each of a transaction's `k` statements is a rise of `k Δ` in the
/// transaction, which the transactions' rule allows up to `max_latency_increase` of the
/// transaction and its round trip; judged against their own time alone, statements allowed
/// a client a tenth of that. On the benchmark (pgbench, 7 statements of 0.024 ms in a 1.18
/// ms transaction) they cut at +0.01 ms a statement, under 6% of what its client waited.
pub fn statements_as_share_of_transactions(
    statements: LatencyBaseline,
    transactions: &LatencyBaseline,
) -> LatencyBaseline {
    let (per_tx, per_statement) = (
        transactions.calls_per_interval,
        statements.calls_per_interval,
    );
    if !(per_tx > 0.0 && per_statement > 0.0) {
        return statements;
    }
    let felt = (transactions.mean + transactions.round_trip) * per_tx / per_statement;
    if !(felt.is_finite() && felt > statements.mean) {
        return statements;
    }
    statements.with_round_trip(secs(felt - statements.mean))
}

/// How far, in allowed rises (`max_latency_increase`) over live traffic's level at rest, a
/// baseline may follow its drift at the rate's floor ([`follow_drift_at_floor`]).
pub const MAX_DRIFT_RISES: f64 = 2.0;

/// The baseline measured again over `window`, a full window of readings taken at the rate's
/// floor that the baseline in force judges unhealthy, when its mean stays within
/// [`MAX_DRIFT_RISES`] allowed rises of `rest` (live traffic's level measured before the run).
///
/// Why: live traffic's time per call drifts by itself (on the benchmark machine its time per
/// transaction moved by ~10% from one minute to the next, as much as the allowed rise), and a
/// window judged against a baseline minutes old then cuts a rate that hurts nothing, to its
/// floor, for good. At the floor (`min_rate_fraction`, the rate the spec always accepts) a
/// cut changes nothing, so such a window measures live traffic as it is now: rises are judged
/// from there on. Beyond that bound live traffic suffers more than drift explains, for a
/// reason the floor cannot tell from the backfill's, and the baseline in force holds (the
/// rate stays at its floor). `None` too when the window has fewer than two intervals with
/// calls.
pub fn follow_drift_at_floor(
    rest: &LatencyBaseline,
    window: &[StatDelta],
    max_latency_increase: f64,
) -> Option<LatencyBaseline> {
    remeasure_at_rest(rest, window, max_latency_increase)
}

/// A baseline measured again during the run from `window`, readings taken with the backfill
/// held (a rest check) or at its floor ([`follow_drift_at_floor`]), with `rest`'s round trip;
/// `None` with fewer than two intervals that saw calls, or when its mean is more than
/// [`MAX_DRIFT_RISES`] allowed rises above `rest` (live traffic's level measured before the
/// run): slower than drift explains, so the baseline in force holds. Lower than `rest` is
/// taken as it is: it is what live traffic feels now.
pub fn remeasure_at_rest(
    rest: &LatencyBaseline,
    window: &[StatDelta],
    max_latency_increase: f64,
) -> Option<LatencyBaseline> {
    let now = LatencyBaseline::measure(window)?.with_round_trip(rest.round_trip());
    let rise = rest.allowed(max_latency_increase).as_secs_f64() - rest.mean;
    (now.mean <= rest.mean + MAX_DRIFT_RISES * rise).then_some(now)
}

/// A baseline that followed live traffic's drift ([`follow_drift_at_floor`]) brought back down
/// once the traffic is faster again: a full `window` taken while the backfill runs (which only
/// adds time) whose mean, its noise included, sits under `followed`'s mean says live traffic's
/// level is now at most that much (the noise is the larger of the two baselines' spreads:
/// the followed one was measured over one window). The baseline becomes it, or `rest` itself
/// (the level measured before the run, its spread included) once it is no higher. `None`
/// when `followed` is not above `rest`, or the window does not say it is lower. The caller
/// judges each window once: a sliding window tested at every interval would keep its
/// lowest reading.
///
/// Why: a followed baseline loosens the limit by as much as the drift; kept after the drift
/// passed, it let a benchmark run climb to 27% of its maximum, against the counters' 0.75 ms
/// at rest, with a limit set for a drift to 0.87 ms that had ended a minute before.
pub fn return_from_drift(
    rest: &LatencyBaseline,
    followed: &LatencyBaseline,
    window: &[StatDelta],
) -> Option<LatencyBaseline> {
    if followed.mean <= rest.mean {
        return None;
    }
    let now = window_mean(window)?;
    let sigma = followed.sigma.max(rest.sigma);
    let level = now.mean.as_secs_f64() + Z_NOISE * sigma / calls_f64(now.calls).sqrt();
    if level <= rest.mean {
        return Some(*rest);
    }
    (level < followed.mean).then_some(LatencyBaseline {
        mean: level,
        ..*followed
    })
}

/// The verdicts of a database's statements and transactions signals (each `None` without a
/// baseline: [`Verdict::Comfortable`]), each judged by [`LatencyBaseline::judge_as`], except
/// that a signal silent for its whole window (no call completed) while the other had calls is
/// [`Verdict::Healthy`] (an additive climb): its silence says nothing the other does not, and
/// must not hold the rate for good (transaction counters that stopped moving held a run at its
/// floor for 90 s with the statements back at their baseline). Both silent stays undecided: a
/// database where nothing completes may be stalled.
pub fn judge_statements_and_transactions(
    statements: Option<(&LatencyBaseline, &[StatDelta])>,
    transactions: Option<(&LatencyBaseline, &[StatDelta])>,
    at_least: usize,
    full: usize,
    max_latency_increase: f64,
) -> (Verdict, Verdict) {
    let silent = |signal: Option<(&LatencyBaseline, &[StatDelta])>| {
        signal.is_some_and(|(_, w)| w.len() >= full.max(1) && window_mean(w).is_none())
    };
    let heard = |signal: Option<(&LatencyBaseline, &[StatDelta])>| {
        signal.is_some_and(|(_, w)| window_mean(w).is_some())
    };
    let judge = |signal: Option<(&LatencyBaseline, &[StatDelta])>, cause, other| match signal {
        None => Verdict::Comfortable,
        Some(_) if silent(signal) && heard(other) => Verdict::Healthy,
        Some((base, w)) => base.judge_as(cause, w, at_least, full, max_latency_increase),
    };
    (
        judge(statements, RateCause::LiveLatency, transactions),
        judge(transactions, RateCause::LiveTransactions, statements),
    )
}

/// How many batches a window of live readings must span before it may say "healthy": the
/// backfill reaches the database one batch at a time, so a window between two batches would
/// see none of its effect.
pub const BATCHES_PER_VERDICT: f64 = 2.0;

/// The intervals that [`BATCHES_PER_VERDICT`] batches of `batch_rows` take at `rate` rows per
/// second, `interval` apart, at least 1 and at most `window`.
pub fn batch_intervals(batch_rows: u32, rate: f64, interval: Duration, window: usize) -> usize {
    let window = window.max(1);
    let per_interval = rate * interval.as_secs_f64();
    if !(per_interval.is_finite() && per_interval > 0.0) {
        return window;
    }
    let n = (BATCHES_PER_VERDICT * f64::from(batch_rows) / per_interval).ceil();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = n.min(1e9) as usize;
    n.clamp(1, window)
}

/// The mean time per call of a window and its calls; `None` without calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowMean {
    /// Σ time / Σ calls.
    pub mean: Duration,
    /// Σ calls.
    pub calls: u64,
}

/// The mean time per call over `intervals`; `None` when they saw no call.
pub fn window_mean(intervals: &[StatDelta]) -> Option<WindowMean> {
    let calls: u64 = intervals
        .iter()
        .map(|d| d.calls)
        .fold(0, u64::saturating_add);
    if calls == 0 {
        return None;
    }
    let time: f64 = intervals.iter().map(|d| d.time.as_secs_f64()).sum();
    Some(WindowMean {
        mean: secs(time / calls_f64(calls)),
        calls,
    })
}

/// How many intervals a window needs at the baseline's traffic before a +`max_latency_increase`
/// rise would stand out of its noise, in `[MIN_JUDGED_INTERVALS, full]` (`full` = the window):
/// the pace at which the controller may climb.
pub fn intervals_to_resolve(
    baseline: &LatencyBaseline,
    max_latency_increase: f64,
    full: usize,
) -> usize {
    let full = full.max(1);
    let margin = baseline.allowed(max_latency_increase).as_secs_f64() - baseline.mean;
    if baseline.calls_per_interval <= 0.0 || margin <= 0.0 {
        return full;
    }
    // z σ √(1/C + 1/N) ≤ margin  ⇔  1/C ≤ (margin / z σ)² − 1/N: never, when the
    // baseline's own noise (N calls) already exceeds the margin.
    let room = (margin / (Z_NOISE * baseline.sigma)).powi(2) - 1.0 / baseline.calls.max(1.0);
    if room <= 0.0 {
        return full;
    }
    let calls = 1.0 / room;
    let intervals = (calls / baseline.calls_per_interval).ceil();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let intervals = if intervals.is_finite() {
        intervals.min(1e9) as usize
    } else {
        full
    };
    intervals.clamp(MIN_JUDGED_INTERVALS.min(full), full)
}

/// A gauge at rest (live sessions waiting on WAL or I/O, threads running): its mean and spread
/// over the baseline's readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaugeBaseline {
    mean: f64,
    sd: f64,
    /// The rise over the mean that never counts, in the gauge's unit.
    margin: f64,
    cause: RateCause,
}

impl GaugeBaseline {
    /// The baseline of `samples`, a rise of at most `margin` (sessions or threads) never
    /// counting, cut with `cause`; `None` without samples.
    pub fn measure(samples: &[f64], margin: f64, cause: RateCause) -> Option<GaugeBaseline> {
        let (mean, sd) = mean_sd(samples)?;
        Some(GaugeBaseline {
            mean,
            sd,
            margin: margin.max(0.0),
            cause,
        })
    }

    /// The cause a cut on this gauge carries.
    pub fn cause(&self) -> RateCause {
        self.cause
    }

    /// The mean at rest.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The window mean above which `n` readings are unhealthy.
    pub fn limit(&self, n: usize) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let noise = Z_NOISE * self.sd / (n.max(1) as f64).sqrt();
        self.mean + self.margin.max(noise)
    }

    /// Judges the readings since the latest cut (see the module's gauge rule): unhealthy, or
    /// comfortable (a gauge does not object, and cannot tell a small rise: the latency
    /// signals set the pace), never undecided (a gauge does not hold a rise).
    pub fn judge(&self, samples: &[f64]) -> Verdict {
        match mean_sd(samples) {
            Some((mean, _))
                if samples.len() >= MIN_JUDGED_INTERVALS && mean > self.limit(samples.len()) =>
            {
                Verdict::Unhealthy(self.cause)
            }
            _ => Verdict::Comfortable,
        }
    }
}

fn mean_sd(samples: &[f64]) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let sd = if samples.len() > 1 {
        (samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((mean, sd))
}

#[allow(clippy::cast_precision_loss)]
fn calls_f64(calls: u64) -> f64 {
    calls as f64
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aimd::Aimd;
    use crate::spec::ThrottleSpec;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// `window` judged as live transactions at +10%, full at its own length, after 3 intervals.
    fn judge_tx(base: &LatencyBaseline, window: &[StatDelta]) -> Verdict {
        base.judge_as(RateCause::LiveTransactions, window, 3, window.len(), 0.1)
    }

    /// Intervals of `calls` statements each, with these mean times per call (µs).
    fn intervals(calls: u64, means_us: &[u64]) -> Vec<StatDelta> {
        means_us
            .iter()
            .map(|m| StatDelta {
                calls,
                time: us(m * calls),
            })
            .collect()
    }

    /// A signal with no call in its whole window is healthy beside one that has calls, and
    /// undecided while its window fills or when both are silent (a stall); calls judge as
    /// before.
    #[test]
    fn a_silent_signal_holds_only_beside_another_silent_one() {
        use Verdict::*;
        let base = LatencyBaseline::measure(&intervals(100, &[90, 110])).unwrap();
        let silent = intervals(0, &[0, 0, 0, 0, 0, 0]);
        let calm = intervals(100, &[100, 100, 100, 100, 100, 100]);
        let slow = intervals(100, &[300, 300, 300, 300, 300, 300]);
        let pair = |s: &[StatDelta], t: &[StatDelta]| {
            judge_statements_and_transactions(Some((&base, s)), Some((&base, t)), 3, 6, 0.1)
        };
        assert_eq!(pair(&calm, &silent).1, Healthy);
        assert_eq!(pair(&silent, &calm).0, Healthy);
        assert_eq!(
            pair(&calm, &silent[..3]).1,
            Undecided,
            "the window still fills"
        );
        assert_eq!(
            pair(&silent, &silent),
            (Undecided, Undecided),
            "nothing completes"
        );
        assert_eq!(pair(&slow, &silent).0, Unhealthy(RateCause::LiveLatency));
        assert_eq!(
            judge_statements_and_transactions(None, Some((&base, &silent)), 3, 6, 0.1),
            (Comfortable, Undecided)
        );
    }

    /// At the floor, a window a drift put over the limit becomes the baseline when within
    /// two allowed rises of the level at rest; a larger rise, or too few readings, keeps the
    /// baseline in force.
    #[test]
    fn the_baseline_follows_a_drift_at_the_floor_up_to_two_allowed_rises() {
        let rest = LatencyBaseline::measure(&intervals(100, &[95, 105])).unwrap();
        // +10% allowed: 110 µs; two rises: 120 µs.
        let drifted = intervals(100, &[116, 118, 114, 117, 115, 116]);
        let verdict = rest.judge(&drifted, 3, 6, 0.1);
        assert_eq!(verdict, Verdict::Unhealthy(RateCause::LiveLatency));
        let now = follow_drift_at_floor(&rest, &drifted, 0.1).expect("followed");
        assert_eq!(now.mean(), us(116));
        assert_ne!(
            now.judge(&drifted, 3, 6, 0.1),
            Verdict::Unhealthy(RateCause::LiveLatency),
            "the same window is no longer a cut against the new baseline"
        );
        let suffering = intervals(100, &[125, 130, 128, 126, 127, 129]);
        assert_eq!(follow_drift_at_floor(&rest, &suffering, 0.1), None);
        assert_eq!(
            follow_drift_at_floor(&rest, &intervals(100, &[116]), 0.1),
            None,
            "one interval has no spread to judge by"
        );
        // The bound is at least two of the smallest margins over a microsecond-fast level.
        let fast = LatencyBaseline::measure(&intervals(100, &[1, 1])).unwrap();
        assert!(follow_drift_at_floor(&fast, &intervals(100, &[15, 16, 14]), 0.1).is_some());
    }

    /// The allowed rise is a share of what a client feels, the server's time and the round
    /// trip: a 600 µs transaction seen by a client as 600 + 400 µs may rise by 100 µs at +10%,
    /// not 60 µs. Without a round trip it is as before; a far process's round trip counts as
    /// [`MAX_ROUND_TRIP`] at most; following a drift keeps the round trip.
    #[test]
    fn the_allowed_rise_is_a_share_of_the_server_time_and_the_round_trip() {
        let server = LatencyBaseline::measure(&intervals(10_000, &[600, 600])).unwrap();
        assert_eq!(server.allowed(0.1), us(660), "the server's share alone");
        let felt = server.with_round_trip(us(400));
        assert_eq!(felt.round_trip(), us(400));
        assert_eq!(felt.allowed(0.1), us(700));
        let window = intervals(10_000, &[680, 680, 680, 680, 680, 680]);
        assert_eq!(
            judge_tx(&server, &window),
            Verdict::Unhealthy(RateCause::LiveTransactions),
            "+13% of the server's time"
        );
        assert_eq!(
            judge_tx(&felt, &window),
            Verdict::Healthy,
            "+8% of what the client feels"
        );
        let far = server.with_round_trip(Duration::from_millis(20));
        assert_eq!(far.round_trip(), MAX_ROUND_TRIP);
        assert_eq!(far.allowed(0.1), us(760));
        let drifted = intervals(10_000, &[720, 720, 720, 720, 720, 720]);
        let now = follow_drift_at_floor(&felt, &drifted, 0.1).expect("within two rises");
        assert_eq!((now.mean(), now.round_trip()), (us(720), us(400)));
        assert_eq!(now.allowed(0.1), us(832));
    }

    /// Statements are allowed the share of their transaction's allowed rise: 7 statements of
    /// 24 µs in a transaction of 1,180 µs plus a 70 µs round trip may each rise by 17.9 µs at
    /// +10% (the transaction's 125 µs over 7), not 10 µs (their own 2.4 µs, raised to the
    /// smallest margin); without transactions, or when
    /// either saw no call, they keep their own time.
    #[test]
    fn statements_may_rise_by_their_share_of_the_transactions_allowed_rise() {
        let statements = LatencyBaseline::measure(&intervals(210, &[24, 24])).unwrap();
        let transactions = LatencyBaseline::measure(&intervals(30, &[1180, 1180]))
            .unwrap()
            .with_round_trip(us(70));
        // Their own +10% (2.4 µs) is under the smallest margin counted (10 µs).
        assert_eq!(statements.allowed(0.1), us(34));
        let shared = statements_as_share_of_transactions(statements, &transactions);
        assert_eq!(shared.mean(), us(24));
        let per_statement = 1250.0 / 7.0;
        assert!(
            (shared.round_trip().as_secs_f64() * 1e6 - (per_statement - 24.0)).abs() < 1e-3,
            "{:?}",
            shared.round_trip()
        );
        let rise = shared.allowed(0.1).as_secs_f64() * 1e6 - 24.0;
        assert!((rise - per_statement / 10.0).abs() < 1e-3, "{rise}");
        // +50%: a cut against the statements' own time, within their share.
        let window = intervals(210, &[36; 30]);
        assert_eq!(
            statements.judge(&window, 3, 30, 0.1),
            Verdict::Unhealthy(RateCause::LiveLatency)
        );
        assert_ne!(
            shared.judge(&window, 3, 30, 0.1),
            Verdict::Unhealthy(RateCause::LiveLatency)
        );
        let silent = LatencyBaseline {
            calls_per_interval: 0.0,
            ..transactions
        };
        assert_eq!(
            statements_as_share_of_transactions(statements, &silent),
            statements
        );
        // A transaction faster than its statements' sum (counters from different moments)
        // gives no share.
        let fast = LatencyBaseline::measure(&intervals(30, &[100, 100])).unwrap();
        assert_eq!(
            statements_as_share_of_transactions(statements, &fast),
            statements
        );
    }

    /// A followed baseline comes back down when a full window says live traffic is faster
    /// again, to that window's level plus its noise and never under the level at rest; a
    /// window at or above it, or a baseline never followed, moves nothing.
    #[test]
    fn a_followed_baseline_comes_back_down_when_the_drift_ends() {
        let rest = LatencyBaseline::measure(&intervals(1000, &[748, 748])).unwrap();
        let drifted = intervals(1000, &[870, 872, 868, 870, 871, 869]);
        let followed = follow_drift_at_floor(&rest, &drifted, 0.2).expect("followed");
        assert_eq!(followed.mean(), us(870));
        let faster = intervals(1000, &[800, 800, 800, 800, 800, 800]);
        let back = return_from_drift(&rest, &followed, &faster).expect("lower");
        assert!(
            back.mean() >= us(800) && back.mean() < us(803),
            "the window's level plus its noise: {:?}",
            back.mean()
        );
        let rested = intervals(1000, &[700, 700, 700, 700, 700, 700]);
        let floor = return_from_drift(&rest, &followed, &rested).expect("lower");
        assert_eq!(
            floor, rest,
            "never under the level at rest: that baseline itself"
        );
        assert_eq!(return_from_drift(&rest, &followed, &drifted), None);
        assert_eq!(
            return_from_drift(&rest, &rest, &rested),
            None,
            "never followed"
        );
        assert_eq!(return_from_drift(&rest, &followed, &[]), None);
    }

    #[test]
    fn the_baseline_is_the_mean_per_call_and_its_spread_per_call() {
        // Means 90 and 110 µs over 100 calls each: mean 100 µs; each interval strays 10 µs,
        // so σ per call = √(100 × 10² × 2 / 1) µs ≈ 141 µs.
        let base = LatencyBaseline::measure(&intervals(100, &[90, 110])).unwrap();
        assert_eq!(base.mean(), us(100));
        assert!(
            (base.sigma * 1e6 - 141.42).abs() < 0.01,
            "{}",
            base.sigma * 1e6
        );
        assert_eq!(base.calls_per_interval(), 100.0);
        // Idle intervals count for the traffic, not for the mean.
        let idle = [intervals(100, &[90, 110]), vec![StatDelta::default(); 2]].concat();
        let base_idle = LatencyBaseline::measure(&idle).unwrap();
        assert_eq!(base_idle.mean(), us(100));
        assert_eq!(base_idle.calls_per_interval(), 50.0);
        // Read every 100 ms for a run deciding every second: ten times the calls.
        let rescaled = base_idle.rescaled(10.0);
        assert_eq!(
            (rescaled.calls_per_interval(), rescaled.mean()),
            (500.0, us(100))
        );
        assert_eq!(base_idle.rescaled(f64::NAN), base_idle);
        // Too little to measure.
        assert_eq!(LatencyBaseline::measure(&intervals(100, &[90])), None);
        assert_eq!(LatencyBaseline::measure(&[StatDelta::default(); 5]), None);
        assert_eq!(LatencyBaseline::measure(&[]), None);
    }

    #[test]
    fn windows_are_judged_against_the_allowed_rise_or_their_own_noise() {
        // At rest: 1,000 calls per interval, mean 200 µs, intervals straying ±10 µs (σ per
        // call = √(4 × 1,000 × 10² / 5) ≈ 283 µs).
        let base =
            LatencyBaseline::measure(&intervals(1000, &[190, 210, 190, 210, 200, 200])).unwrap();
        assert_eq!(base.allowed(0.10), us(220));
        // A window of 1,000 calls at rest reaches 212 µs one time in ten against this
        // baseline of 6,000 calls (z σ √(1/1,000 + 1/6,000)); of 3,000, 208 µs.
        assert_eq!(base.noise_ceiling(1000).as_micros(), 212);
        assert_eq!(base.noise_ceiling(3000).as_micros(), 208);
        // (intervals of the window as mean µs per call, calls per interval) -> verdict.
        let cases: &[(&[u64], u64, Verdict)] = &[
            // Too few intervals for any verdict, however slow.
            (&[900, 900], 1000, Verdict::Undecided),
            // Three intervals, 3,000 calls: within the +10%: healthy (the noise of 3,000 calls
            // is under the allowed rise, so a rise would show).
            (&[200, 215, 205], 1000, Verdict::Healthy),
            (
                &[230, 230, 230],
                1000,
                Verdict::Unhealthy(RateCause::LiveLatency),
            ),
            // Ten calls per interval: the noise of 30 calls (≈ 266 µs) is above the allowed
            // rise: +15% is within it (undecided: cannot tell yet); +50% is not.
            (&[230, 230, 230], 10, Verdict::Undecided),
            (
                &[300, 300, 300],
                10,
                Verdict::Unhealthy(RateCause::LiveLatency),
            ),
            // ... and a full window (5) is judged on what it has.
            (&[230, 230, 230, 230, 230], 10, Verdict::Healthy),
            // No calls at all: nothing to judge.
            (&[], 0, Verdict::Undecided),
        ];
        for (means, calls, verdict) in cases {
            assert_eq!(
                base.judge(&intervals(*calls, means), 0, 5, 0.10),
                *verdict,
                "{means:?} × {calls}"
            );
        }
        // A window shorter than two batches of the backfill may hold none of them, or one
        // batch's burst: however quiet or slow, it decides nothing yet.
        let quiet = intervals(1000, &[200, 200, 200]);
        assert_eq!(base.judge(&quiet, 4, 5, 0.10), Verdict::Undecided);
        let burst = intervals(1000, &[700, 700, 700]);
        assert_eq!(base.judge(&burst, 4, 5, 0.10), Verdict::Undecided);
        let spanned = intervals(1000, &[700, 700, 700, 200]);
        assert_eq!(
            base.judge(&spanned, 4, 5, 0.10),
            Verdict::Unhealthy(RateCause::LiveLatency),
            "over two batches the burst still costs +87%"
        );
        // At its baseline, noise (≈ 6.5 µs for 3,000 calls) included: under half the allowed
        // rise (210 µs), so comfortable: the rate may double per window.
        assert_eq!(base.judge(&quiet, 3, 5, 0.10), Verdict::Comfortable);
        // +5%: under the limit, over half the allowed rise: healthy, an additive step.
        let near = intervals(1000, &[210, 210, 210]);
        assert_eq!(base.judge(&near, 3, 5, 0.10), Verdict::Healthy);
        // Another signal of the same shape cuts with its own cause.
        let slow_tx = intervals(1000, &[300, 300, 300]);
        assert_eq!(
            base.judge_as(RateCause::LiveTransactions, &slow_tx, 3, 5, 0.10),
            Verdict::Unhealthy(RateCause::LiveTransactions)
        );
        let slow = intervals(1000, &[300, 300, 300]);
        assert_eq!(
            base.judge(&slow, 3, 5, 0.10),
            Verdict::Unhealthy(RateCause::LiveLatency)
        );
    }

    #[test]
    fn a_verdict_spans_two_batches_of_the_backfill() {
        let ms100 = Duration::from_millis(100);
        // 5,000-row batches at 3,250 rows/s, read every 100 ms: two batches take 3.1 s.
        assert_eq!(batch_intervals(5000, 3250.0, ms100, 100), 31);
        assert_eq!(
            batch_intervals(5000, 3250.0, ms100, 20),
            20,
            "capped at the window"
        );
        assert_eq!(batch_intervals(5000, 1e6, ms100, 100), 1);
        assert_eq!(batch_intervals(5000, 0.0, ms100, 100), 100);
        assert_eq!(batch_intervals(5000, f64::NAN, ms100, 100), 100);
    }

    #[test]
    fn gauges_object_above_their_margin_and_noise() {
        // Waiting sessions at rest: 0 or 1, mean 0.25.
        let base = GaugeBaseline::measure(&[0.0, 1.0, 0.0, 0.0], 0.5, RateCause::Waiting).unwrap();
        assert_eq!(base.mean(), 0.25);
        // A gauge that does not object leaves the pace to the latency signals: comfortable.
        let cases: &[(&[f64], Verdict)] = &[
            (&[2.0, 2.0], Verdict::Comfortable), // too few readings
            (&[1.0, 0.0, 1.0], Verdict::Comfortable),
            (&[2.0, 2.0, 1.0], Verdict::Unhealthy(RateCause::Waiting)),
            (&[], Verdict::Comfortable),
        ];
        for (samples, verdict) in cases {
            assert_eq!(base.judge(samples), *verdict, "{samples:?}");
        }
        // A noisy gauge's own spread sets the limit when it exceeds the margin.
        let noisy = GaugeBaseline::measure(&[0.0, 8.0, 0.0, 8.0], 1.0, RateCause::Running).unwrap();
        assert!(noisy.limit(3) > 4.0 + 3.0, "{}", noisy.limit(3));
        assert_eq!(noisy.judge(&[6.0, 6.0, 6.0]), Verdict::Comfortable);
        assert_eq!(GaugeBaseline::measure(&[], 1.0, RateCause::Running), None);
    }

    #[test]
    fn verdicts_combine_unhealthy_first_then_undecided_then_healthy() {
        use Verdict::*;
        let cut = Unhealthy(RateCause::Waiting);
        assert_eq!(Verdict::combine([Healthy, Undecided, cut]), cut);
        assert_eq!(Verdict::combine([Comfortable, cut, Undecided]), cut);
        assert_eq!(Verdict::combine([Healthy, Undecided]), Undecided);
        assert_eq!(Verdict::combine([Comfortable, Undecided]), Undecided);
        assert_eq!(Verdict::combine([Healthy, Healthy]), Healthy);
        assert_eq!(Verdict::combine([Comfortable, Healthy]), Healthy);
        assert_eq!(Verdict::combine([Comfortable, Comfortable]), Comfortable);
        assert_eq!(Verdict::combine([Comfortable]), Comfortable);
        assert_eq!(Verdict::combine([]), Healthy);
    }

    #[test]
    fn busy_traffic_resolves_a_rise_in_a_few_intervals_quiet_traffic_takes_the_window() {
        let busy = LatencyBaseline::measure(&intervals(2000, &[190, 210, 195, 205])).unwrap();
        assert_eq!(intervals_to_resolve(&busy, 0.10, 20), MIN_JUDGED_INTERVALS);
        let quiet = LatencyBaseline::measure(&intervals(5, &[100, 300, 150, 250])).unwrap();
        assert_eq!(intervals_to_resolve(&quiet, 0.10, 20), 20);
        let between = LatencyBaseline::measure(&intervals(50, &[150, 250].repeat(20))).unwrap();
        let n = intervals_to_resolve(&between, 0.10, 20);
        assert!((4..20).contains(&n), "{n}");
        // The same traffic measured over 4 intervals: the baseline's own mean strays more
        // than the allowed rise, so no window, however long, resolves it before it is full.
        let short = LatencyBaseline::measure(&intervals(50, &[150, 250, 150, 250])).unwrap();
        assert_eq!(intervals_to_resolve(&short, 0.10, 20), 20);
    }

    /// A baseline measured over few calls (a 2 s rest check) strays as much as a short
    /// window: the comparison's noise counts both, so a window that would cut against a
    /// long baseline at the same level and spread is within the noise against the short one.
    #[test]
    fn a_short_baseline_counts_its_own_noise() {
        // Heavy-tailed traffic: 300 calls per interval, mean 1 ms, σ per call ≈ 4 ms.
        let long: Vec<u64> = [770, 1230].repeat(50);
        let rest = LatencyBaseline::measure(&intervals(300, &long)).unwrap();
        assert!(
            (rest.sigma * 1e3 - 4.0).abs() < 0.05,
            "{}",
            rest.sigma * 1e3
        );
        // 2 s of rest at the same level and spread.
        let short = intervals(300, &[770, 1230, 770, 1230]);
        let remeasured = remeasure_at_rest(&rest, &short, 0.1).expect("within the bound");
        assert_eq!(remeasured.mean(), us(1000));
        assert!((remeasured.sigma / rest.sigma - 1.0).abs() < 0.2);
        // A window of 30 intervals (9,000 calls) at +14%.
        let window = intervals(300, &[1140; 30]);
        assert_eq!(
            judge_tx(&rest, &window),
            Verdict::Unhealthy(RateCause::LiveTransactions),
            "against 30,000 calls at rest, +14% is past the noise and the allowed rise"
        );
        assert_eq!(
            judge_tx(&remeasured, &window),
            Verdict::Healthy,
            "against 1,200 calls at rest, +14% is within their noise"
        );
        assert!(remeasured.noise_ceiling(9000) > rest.noise_ceiling(9000));
    }

    /// A live database whose statements slow down once the backfill exceeds `knee` rows/s:
    /// the mean per call grows by `slope` × the excess share, with a deterministic ±6% jitter.
    struct Plant {
        knee: f64,
        slope: f64,
        base_us: f64,
        calls: u64,
        seed: u64,
    }

    impl Plant {
        fn interval(&mut self, rate: f64) -> StatDelta {
            // A small LCG: the same jitter on every run of the test.
            self.seed = self
                .seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            #[allow(clippy::cast_precision_loss)]
            let u = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
            let jitter = 1.0 + 0.12 * (u - 0.5);
            let excess = (rate / self.knee - 1.0).max(0.0);
            let mean = self.base_us * (1.0 + self.slope * excess) * jitter;
            #[allow(clippy::cast_precision_loss)]
            let total = mean * self.calls as f64;
            StatDelta {
                calls: self.calls,
                time: Duration::from_secs_f64(total / 1e6),
            }
        }
    }

    /// The engine's loop, without I/O: a baseline at rest, then one verdict per interval over
    /// the last `pace` intervals (the readings since the latest cut). Returns the rate after
    /// each interval.
    fn simulate(plant: &mut Plant, max: f64, seconds: usize) -> Vec<f64> {
        let spec = ThrottleSpec::default(); // interval 1 s, window 20, +10%
        let rest: Vec<StatDelta> = (0..spec.baseline_probes)
            .map(|_| plant.interval(0.0))
            .collect();
        let base = LatencyBaseline::measure(&rest).unwrap();
        let mut aimd = Aimd::new(&spec, max);
        let window = intervals_to_resolve(&base, spec.max_latency_increase, spec.window as usize);
        aimd.set_pace(u32::try_from(window).unwrap());
        let mut seen: Vec<StatDelta> = Vec::new();
        let mut rates = Vec::new();
        for _ in 0..seconds {
            seen.push(plant.interval(aimd.rate()));
            if seen.len() > window {
                seen.remove(0);
            }
            let change = match base.judge(&seen, 0, window, spec.max_latency_increase) {
                Verdict::Unhealthy(cause) => aimd.on_verdict(Some(cause)),
                Verdict::Healthy => aimd.on_verdict(None),
                Verdict::Comfortable => aimd.on_headroom(),
                Verdict::Undecided => {
                    rates.push(aimd.rate());
                    continue;
                }
            };
            if let Some(change) = change
                && change.to < change.from
            {
                seen.clear();
            }
            rates.push(aimd.rate());
        }
        rates
    }

    #[test]
    fn reaches_a_steady_rate_within_sixty_seconds_and_keeps_it_under_the_knee() {
        // The benchmark's shape: live traffic tolerates 1/20 of the unthrottled rate; above
        // it each 10% of excess costs +20% per statement. Busy traffic (2,000 statements/s)
        // and quiet traffic (40/s, a window takes many intervals).
        for (calls, max) in [(2000, 200_000.0), (40, 200_000.0), (2000, 20_000.0)] {
            let knee = 10_000.0;
            let mut plant = Plant {
                knee,
                slope: 2.0,
                base_us: 200.0,
                calls,
                seed: 7,
            };
            let rates = simulate(&mut plant, max, 600);
            let after = &rates[60..];
            let low = after.iter().copied().fold(f64::INFINITY, f64::min);
            let high = after.iter().copied().fold(0.0, f64::max);
            #[allow(clippy::cast_precision_loss)]
            let mean = after.iter().sum::<f64>() / after.len() as f64;
            let first: Vec<String> = rates[..90]
                .iter()
                .step_by(5)
                .map(|r| format!("{:.0}", r / knee * 100.0))
                .collect();
            let shape = format!(
                "calls {calls}, max {max}: % of knee every 5 s {}; after 60 s: {:.0}%..{:.0}%, mean {:.0}%",
                first.join(" "),
                low / knee * 100.0,
                high / knee * 100.0,
                mean / knee * 100.0
            );
            // Steady: after 60 s the rate never drops below half the knee (no collapse to the
            // floor) nor climbs past 1.3× it, and averages at least 70% of it.
            assert!(low >= 0.5 * knee, "{shape}");
            assert!(high <= 1.3 * knee, "{shape}");
            assert!(mean >= 0.7 * knee, "{shape}");
        }
    }
}
