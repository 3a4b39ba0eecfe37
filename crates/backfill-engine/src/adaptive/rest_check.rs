//! Rest checks (`throttle.rest_check`): the adaptive throttle holds the backfill for a moment,
//! measures live traffic at rest, makes that the baseline, and judges the window read before
//! the hold against it.
//!
//! Why: live traffic's time per call drifts by itself, by ±10–20% over tens of seconds on the
//! benchmark machine (more than the +10% a spec allows), and a level measured before the run
//! cannot tell that drift from the backfill's cost. Runs cut a harmless rate to a third of
//! what a static rate managed when the drift went up, and let harm through when it went down.
//! Measured a second apart, with and without the backfill, the two levels share the drift: their
//! difference is the backfill's.
//!
//! Protocol: a check starts when the watch's latency signals ask for a cut above the floor
//! (and nothing else does), or, with a full window in, when `rest_check_every` passed since the
//! last one or the rate doubled since then ([`GROWTH_PER_CHECK`]). The limiter is set to one row a second (batches in flight finish; no new batch
//! gets its rows). Readings during the first [`RestCheck::settle`] are dropped: live sessions
//! report the counters of their last loaded second up to [`super::STATS_REPORT`] late. Then
//! `rest_check` of readings make the new baselines ([`remeasure_at_rest`], bounded by the level
//! measured before the run). The window read before the hold, judged against them, decides:
//! a cut (the window is forgotten), or the rate it had (the window is kept, and the next
//! interval judges it with one more reading: a climb goes on at once).
//!
//! Does not: run at the floor (there [`super::Adaptive::follow_drift`] moves the baselines, and
//! a hold would change little), run without a watch's latency baseline, or move the probe's
//! baseline.

use std::time::Duration;

use backfill_connectors::watch::Reading;
use backfill_core::aimd::RateCause;
use backfill_core::live::{
    StatDelta, Verdict, judge_statements_and_transactions, remeasure_at_rest,
};
use tokio::time::Instant;

use super::{Adaptive, LiveWindow, STATS_REPORT, ms, rows};

/// Why a rest check started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    /// A live latency signal asked for this cut.
    Cut(RateCause),
    /// `rest_check_every` passed since the last check.
    Due,
    /// The rate grew [`GROWTH_PER_CHECK`] times since the last check (or since the run began).
    Grown,
}

/// A rest check is due once the rate has grown this many times since the last one (or since
/// the run began): the baseline it climbs against is measured again before the rate moves far
/// on it. A baseline measured during a stall (run T, 2026-12-07: pgbench's transactions at
/// 1.55 ms with a spread of 36 ms per call, 0.93 ms at rest a minute later) made every window
/// look faster than at rest, and the rate doubled its way from 1% to 30% of the maximum
/// before the first periodic check, 64 s in.
pub(super) const GROWTH_PER_CHECK: f64 = 2.0;

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Cut(_) => "a live latency signal asked for a cut",
            Why::Due => "due",
            Why::Grown => "the rate doubled since the last check",
        }
    }
}

/// One rest check in progress: the readings taken at rest, once settled.
#[derive(Debug)]
pub(super) struct RestCheck {
    why: Why,
    /// Readings taken before this are dropped.
    settled_at: Instant,
    /// The check is over at the first interval from this on.
    ends_at: Instant,
    statements: Vec<StatDelta>,
    transactions: Vec<StatDelta>,
}

impl RestCheck {
    /// How long after the hold readings still carry the backfill: batches in flight finish
    /// (two intervals), and live sessions report the counters of their last loaded second
    /// ([`STATS_REPORT`]).
    pub(super) fn settle(interval: Duration) -> Duration {
        STATS_REPORT + interval * 2
    }

    /// A check starting at `now`, measuring for `length` once settled.
    pub(super) fn start(now: Instant, why: Why, interval: Duration, length: Duration) -> RestCheck {
        let settled_at = now + RestCheck::settle(interval);
        RestCheck {
            why,
            settled_at,
            ends_at: settled_at + length,
            statements: Vec::new(),
            transactions: Vec::new(),
        }
    }

    /// Keeps `reading` taken at `now` when the hold has settled.
    pub(super) fn push(&mut self, now: Instant, reading: &Reading) {
        if now < self.settled_at {
            return;
        }
        self.statements.extend(reading.statements);
        self.transactions.extend(reading.transactions);
    }

    /// Whether the check has all its readings at `now`.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        now >= self.ends_at
    }
}

/// What a finished check decided, for the log and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RestChecks {
    /// Checks finished.
    pub(super) done: u32,
    /// Of those, the ones that cut the rate.
    pub(super) cut: u32,
    /// Of those started for a cut, the ones that kept the rate: live traffic was as slow at
    /// rest (a drift, not the backfill).
    pub(super) spared: u32,
    /// A check holds the backfill now.
    pub(super) holding: bool,
}

impl Adaptive {
    /// Whether a rest check should start now: checks are on, the watch has a latency
    /// baseline, the rate is above its floor, and either `verdicts` hold a live latency cut
    /// and no other unhealthy verdict (which cuts at once), or, with a full window of either
    /// live latency signal and no other cut, `rest_check_every` passed since `last` or the
    /// rate grew [`GROWTH_PER_CHECK`] times over `last_rate` (the rate at the last check).
    pub(super) fn rest_check_due(
        &self,
        verdicts: &[Verdict],
        live: &LiveWindow,
        full: usize,
        (last, last_rate): (Instant, f64),
        now: Instant,
    ) -> Option<Why> {
        let on = !self.throttle.rest_check.is_zero()
            && (self.live_base.is_some() || self.tx_base.is_some())
            && self.aimd.rate() > self.aimd.floor();
        if !on {
            return None;
        }
        let full_window = live.statements.len() >= full || live.transactions.len() >= full;
        why_check(
            verdicts,
            full_window,
            now.duration_since(last) >= self.throttle.rest_check_every,
            self.aimd.rate() / last_rate,
        )
    }

    /// Holds the backfill for a rest check (the limiter at one row a second) and says so.
    pub(super) fn begin_rest_check(&self, why: Why, now: Instant) -> RestCheck {
        self.live.set_adaptive_rows(1);
        self.lock().live.rest_checks.holding = true;
        tracing::debug!(
            run_id = self.run_id,
            why = why.as_str(),
            rate = self.aimd.rate(),
            "adaptive throttle: holding the backfill to measure live traffic at rest"
        );
        RestCheck::start(now, why, self.throttle.interval, self.throttle.rest_check)
    }

    /// Ends `check`: its readings become the baselines (within the bound of the levels
    /// measured before the run; a signal without enough readings keeps its baseline), the
    /// window read before the hold is judged against them, and the rate is cut when it is
    /// over their limit, restored otherwise. A cut forgets the window (it judged a rate no
    /// longer in force); a kept rate keeps it, so the climb goes on at the next interval
    /// instead of after a new window (10 s on the benchmark: with a check at every doubling,
    /// the climb took twice as long).
    pub(super) async fn finish_rest_check(
        &mut self,
        check: RestCheck,
        live: &mut LiveWindow,
        batches: usize,
        full: usize,
    ) {
        let mli = self.throttle.max_latency_increase;
        let (old_s, old_t) = (self.live_base, self.tx_base);
        if let (Some(rest), Some(_)) = (self.rest_live_base, self.live_base)
            && let Some(now) = remeasure_at_rest(&rest, &check.statements, mli)
        {
            self.live_base = Some(now);
        }
        if let (Some(rest), Some(_)) = (self.rest_tx_base, self.tx_base)
            && let Some(now) = remeasure_at_rest(&rest, &check.transactions, mli)
        {
            self.tx_base = Some(now);
        }
        let (s_base, t_base) = (self.live_base, self.tx_base);
        let statements = live.statements.make_contiguous();
        let transactions = live.transactions.make_contiguous();
        let verdicts = judge_statements_and_transactions(
            s_base.as_ref().map(|b| (b, &*statements)),
            t_base.as_ref().map(|b| (b, &*transactions)),
            batches,
            full,
            mli,
        );
        let change = match Verdict::combine([verdicts.0, verdicts.1]) {
            Verdict::Unhealthy(cause) => self.aimd.on_verdict(Some(cause)),
            _ => None,
        };
        let loaded = backfill_core::live::window_mean(transactions)
            .or_else(|| backfill_core::live::window_mean(statements))
            .map(|m| ms(m.mean));
        tracing::info!(
            run_id = self.run_id,
            why = check.why.as_str(),
            statements_ms = ms_pair(old_s.map(|b| b.mean()), s_base.map(|b| b.mean())),
            transactions_ms = ms_pair(old_t.map(|b| b.mean()), t_base.map(|b| b.mean())),
            loaded_ms = loaded,
            cut = change.is_some(),
            "adaptive throttle: rest check: live traffic measured at rest is the baseline now \
             (old -> new); the backfill's window against it {}",
            if change.is_some() {
                "cuts the rate"
            } else {
                "keeps the rate"
            }
        );
        {
            let mut status = self.lock();
            let checks = &mut status.live.rest_checks;
            checks.holding = false;
            checks.done += 1;
            if change.is_some() {
                checks.cut += 1;
            } else if matches!(check.why, Why::Cut(_)) {
                checks.spared += 1;
            }
        }
        self.publish_baselines();
        match change {
            Some(change) => {
                live.clear();
                self.apply(&change, None, None).await;
            }
            None => self.live.set_adaptive_rows(rows(self.aimd.rate())),
        }
    }
}

/// The reason [`Adaptive::rest_check_due`] gives once checks apply: a live latency cut in
/// `verdicts` with no other cut; else, with a `full_window` and no other cut, `every_passed`
/// (`rest_check_every` since the last check), or a rate `grown` [`GROWTH_PER_CHECK`] times.
fn why_check(
    verdicts: &[Verdict],
    full_window: bool,
    every_passed: bool,
    grown: f64,
) -> Option<Why> {
    let live_cut = |v: &Verdict| {
        matches!(
            v,
            Verdict::Unhealthy(RateCause::LiveLatency | RateCause::LiveTransactions)
        )
    };
    let other_cut = verdicts
        .iter()
        .any(|v| matches!(v, Verdict::Unhealthy(_)) && !live_cut(v));
    if let Some(Verdict::Unhealthy(cause)) = verdicts.iter().find(|v| live_cut(v)) {
        return (!other_cut).then_some(Why::Cut(*cause));
    }
    if !full_window || other_cut {
        None
    } else if every_passed {
        Some(Why::Due)
    } else if grown >= GROWTH_PER_CHECK {
        Some(Why::Grown)
    } else {
        None
    }
}

/// "old -> new" in milliseconds, for the log; `None` without a baseline.
fn ms_pair(old: Option<Duration>, new: Option<Duration>) -> Option<String> {
    Some(format!("{:.3} -> {:.3}", ms(old?), ms(new?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(calls: u64, micros: u64) -> Reading {
        let delta = StatDelta {
            calls,
            time: Duration::from_micros(calls * micros),
        };
        Reading {
            statements: Some(delta),
            transactions: Some(delta),
            ..Reading::default()
        }
    }

    /// A check starts for a live latency cut (not beside another cut, which cuts at once),
    /// and, on a full window, when `rest_check_every` passed or the rate doubled since the
    /// last one; otherwise not.
    #[test]
    fn a_check_is_due_for_a_live_cut_after_its_period_or_once_the_rate_doubled() {
        use Verdict::*;
        let live = Unhealthy(RateCause::LiveTransactions);
        let lag = Unhealthy(RateCause::ReplicaLag);
        assert_eq!(
            why_check(&[Healthy, live], false, false, 1.0),
            Some(Why::Cut(RateCause::LiveTransactions))
        );
        assert_eq!(why_check(&[live, lag], true, true, 3.0), None);
        assert_eq!(why_check(&[Healthy], true, true, 1.0), Some(Why::Due));
        assert_eq!(
            why_check(&[Comfortable], true, false, 2.0),
            Some(Why::Grown)
        );
        assert_eq!(why_check(&[Comfortable], true, false, 1.9), None);
        assert_eq!(
            why_check(&[Comfortable], false, true, 4.0),
            None,
            "a window still filling"
        );
        assert_eq!(why_check(&[lag], true, true, 4.0), None);
    }

    #[test]
    fn a_rest_check_drops_the_readings_that_still_carry_the_backfill() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        let mut check = RestCheck::start(t0, Why::Due, interval, Duration::from_secs(2));
        let settle = RestCheck::settle(interval);
        assert_eq!(settle, Duration::from_millis(1200));
        check.push(t0 + Duration::from_millis(500), &reading(10, 900));
        check.push(t0 + settle - Duration::from_millis(1), &reading(10, 900));
        assert!(check.statements.is_empty() && check.transactions.is_empty());
        check.push(t0 + settle, &reading(10, 500));
        check.push(t0 + settle + interval, &reading(12, 520));
        assert_eq!(check.statements.len(), 2);
        assert_eq!(check.transactions.len(), 2);
        assert!(!check.is_over(t0 + settle + Duration::from_millis(1999)));
        assert!(check.is_over(t0 + settle + Duration::from_secs(2)));
    }
}
