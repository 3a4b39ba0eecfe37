//! A run's objectives (`[slo]`) and the burn of its budgets: the projected completion against
//! `complete_within`, the error budget that `success_rate` allows and how fast it burns, and
//! the guard that throttles, then pauses, a run burning a budget too fast.
//!
//! Pure: the engine samples its counters (attempts, failed attempts, budget use) and the
//! monotonic time, and feeds them in; this module only counts and compares.
//!
//! Definitions (also in `docs/spec.md` and `docs/runbook.md`):
//! - The **error budget** is the failed attempts the objective allows over the whole run:
//!   `(1 - success_rate) × the plan's partitions`.
//! - The **burn rate** of a window is its failed attempts over its attempts, divided by
//!   `1 - success_rate`: 1 spends the budget exactly as fast as the run uses attempts, above 1
//!   it runs out before the run ends. It is shown for a [`SHORT_WINDOW`] and a [`LONG_WINDOW`].
//! - The guard acts when the failed attempts of the last [`SHORT_WINDOW`] exceed
//!   [`ACT_SHARE`] of the error budget, or when the rows read or the cost of that window exceed
//!   [`ACT_SHARE`] of their budget's limit: first it throttles ([`BurnAction::Throttle`]) and
//!   counts the window again from that moment; if the window burns as much again, it pauses
//!   ([`BurnAction::Pause`]). A resume counts from the resume, still throttled: the next burn
//!   pauses at once.
//!
//! Invariants: the guard never acts twice on the same failures (each action restarts the
//! window); it never acts without a budget to burn; a paused guard does nothing until reset.
//! The guard lives in the executing process: a new process (a `resume` after the old one
//! exited) watches afresh from `Watching`, under the limits the earlier throttle left.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The short window of burn rates, and the window the guard judges.
pub const SHORT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The long window of burn rates.
pub const LONG_WINDOW: Duration = Duration::from_secs(60 * 60);

/// The share of a budget one short window may burn before the guard acts.
pub const ACT_SHARE: f64 = 0.5;

/// The closest two samples are kept apart, so a long window holds at most 3,600 of them.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A run's objectives (`[slo]`). Every field is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SloSpec {
    /// The run should complete within this long of its creation.
    pub complete_within: Option<Duration>,
    /// The share of attempts that should succeed, in (0, 1).
    pub success_rate: Option<f64>,
    /// The live-impact bound (a rise of the live database's latency over its baseline, 0.10
    /// for +10%), enforced by the adaptive throttle (`[throttle]`).
    pub max_latency_increase: Option<f64>,
}

impl SloSpec {
    /// The failed attempts the objective allows over a run of `partitions` partitions;
    /// `None` without `success_rate`.
    pub fn error_budget(&self, partitions: u64) -> Option<f64> {
        let s = self.success_rate?;
        // u64 → f64 loses precision only above 2^53 partitions, far past MAX_PARTITIONS.
        #[allow(clippy::cast_precision_loss)]
        let budget = (1.0 - s) * partitions as f64;
        // Rounded to a billionth: `1 - 0.9` is 0.0999…, and 100 partitions at 90% allow 10
        // failed attempts, not 9.999….
        Some((budget * 1e9).round() / 1e9)
    }

    /// The burn rate of `errors` failed attempts out of `attempts`: 0 without attempts;
    /// `None` without `success_rate`.
    pub fn burn_rate(&self, attempts: u64, errors: u64) -> Option<f64> {
        let s = self.success_rate?;
        if attempts == 0 {
            return Some(0.0);
        }
        #[allow(clippy::cast_precision_loss)]
        Some(errors as f64 / attempts as f64 / (1.0 - s))
    }

    /// Completion projected `eta` from `now`, against the deadline `complete_within` after
    /// `created`; `None` without `complete_within`. Without an ETA the projection is unknown,
    /// and the run is late (`on_track` false) once `now` is past the deadline.
    pub fn projection(
        &self,
        created: DateTime<Utc>,
        now: DateTime<Utc>,
        eta: Option<Duration>,
    ) -> Option<Projection> {
        let within = chrono::Duration::from_std(self.complete_within?).ok()?;
        let deadline = created.checked_add_signed(within)?;
        let projected = eta
            .and_then(|e| chrono::Duration::from_std(e).ok())
            .and_then(|e| now.checked_add_signed(e));
        // Without a projection, a run already past its deadline is late all the same.
        let on_track = match projected {
            Some(p) => Some(p <= deadline),
            None => (now > deadline).then_some(false),
        };
        Some(Projection {
            deadline,
            projected,
            on_track,
        })
    }
}

/// When a run should complete and when it is projected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Projection {
    /// The run's creation plus `complete_within`.
    pub deadline: DateTime<Utc>,
    /// Now plus the ETA, when there is one.
    pub projected: Option<DateTime<Utc>>,
    /// Whether the projection is at or before the deadline; without a projection, false
    /// past the deadline and `None` before it.
    pub on_track: Option<bool>,
}

/// A budget line the guard watches besides errors: what it counts, how much is used, and
/// its limit.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetLine {
    /// `rows` or `cost`.
    pub kind: &'static str,
    /// Used so far over the whole run.
    pub used: f64,
    /// The limit (with extensions).
    pub limit: f64,
}

/// The engine's counters at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Monotonic time since the guard's session began.
    pub at: Duration,
    /// Attempts that ended, this session.
    pub attempts: u64,
    /// Attempts that ended in an error, this session.
    pub errors: u64,
    /// The watched budget lines (rows read, cost), same kinds in the same order every time.
    pub budget: Vec<BudgetLine>,
}

/// What burned: the budget and how much of it the window used.
#[derive(Clone, Debug, PartialEq)]
pub struct Burn {
    /// `error budget`, `rows budget` or `cost budget`.
    pub budget: String,
    /// The share of that budget the window burned (0.5 is half).
    pub share: f64,
    /// What burned, in words: `6 failed attempts in 41s, 60% of an error budget of 10`.
    pub detail: String,
}

/// What the guard asks of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum BurnAction {
    /// Lower the rate and the concurrency: the first burn.
    Throttle(Burn),
    /// Pause the run (reason `burn_rate`): it burned again after the throttle.
    Pause(Burn),
}

/// Where the guard stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No burn yet.
    Watching,
    /// Throttled once; the next burn pauses.
    Throttled,
    /// Paused; nothing more until [`BurnGuard::reset`].
    Paused,
}

impl Stage {
    /// `watching`, `throttled`, `paused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Watching => "watching",
            Stage::Throttled => "throttled",
            Stage::Paused => "paused",
        }
    }
}

/// Watches a run's samples for a burning budget. See the module doc for the rules.
#[derive(Clone, Debug)]
pub struct BurnGuard {
    slo: SloSpec,
    error_budget: Option<f64>,
    samples: VecDeque<Sample>,
    /// The window the guard judges starts no earlier than this sample's time.
    since: Duration,
    stage: Stage,
}

impl BurnGuard {
    /// A guard for a run of `partitions` partitions under `slo`.
    pub fn new(slo: SloSpec, partitions: u64) -> BurnGuard {
        BurnGuard {
            error_budget: slo.error_budget(partitions),
            slo,
            samples: VecDeque::new(),
            since: Duration::ZERO,
            stage: Stage::Watching,
        }
    }

    /// Where the guard stands.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The throttle the guard asked for could not be made (the store refused it): it watches
    /// as before, so the next burn throttles rather than pauses.
    pub fn throttle_failed(&mut self) {
        if self.stage == Stage::Throttled {
            self.stage = Stage::Watching;
        }
    }

    /// The error budget, in failed attempts.
    pub fn error_budget(&self) -> Option<f64> {
        self.error_budget
    }

    /// Records `sample` (samples less than a second after the last are judged but not kept)
    /// and says whether to act.
    pub fn observe(&mut self, sample: Sample) -> Option<BurnAction> {
        let keep = self
            .samples
            .back()
            .is_none_or(|last| sample.at >= last.at + SAMPLE_EVERY);
        let action = self.judge(&sample);
        if keep || action.is_some() {
            self.samples.push_back(sample);
        }
        let newest = self.samples.back().map_or(Duration::ZERO, |s| s.at);
        while self
            .samples
            .front()
            .is_some_and(|s| newest.saturating_sub(s.at) > LONG_WINDOW + SAMPLE_EVERY)
        {
            self.samples.pop_front();
        }
        if let Some(action) = &action {
            self.since = newest;
            self.stage = match action {
                BurnAction::Throttle(_) => Stage::Throttled,
                BurnAction::Pause(_) => Stage::Paused,
            };
        }
        action
    }

    /// After a resume: the judged window starts at the last sample, and a paused guard
    /// watches again, still counting as throttled.
    pub fn reset(&mut self) {
        self.since = self.samples.back().map_or(Duration::ZERO, |s| s.at);
        if self.stage == Stage::Paused {
            self.stage = Stage::Throttled;
        }
    }

    /// The burn rates of the last [`SHORT_WINDOW`] and [`LONG_WINDOW`] of samples (as much
    /// of them as this session has seen); `None` without `success_rate` or samples.
    pub fn burn_rates(&self) -> (Option<f64>, Option<f64>) {
        let rate = |window: Duration| {
            let newest = self.samples.back()?;
            let oldest = self.oldest_within(newest.at, window, Duration::ZERO)?;
            self.slo.burn_rate(
                newest.attempts - oldest.attempts,
                newest.errors - oldest.errors,
            )
        };
        (rate(SHORT_WINDOW), rate(LONG_WINDOW))
    }

    /// The oldest kept sample no older than `window` before `now` and not before `since`.
    fn oldest_within(&self, now: Duration, window: Duration, since: Duration) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| now.saturating_sub(s.at) <= window && s.at >= since)
    }

    fn judge(&self, now: &Sample) -> Option<BurnAction> {
        if self.stage == Stage::Paused {
            return None;
        }
        let base = self.oldest_within(now.at, SHORT_WINDOW, self.since)?;
        let burn = self
            .error_burn(base, now)
            .or_else(|| budget_burn(base, now))?;
        Some(match self.stage {
            Stage::Watching => BurnAction::Throttle(burn),
            Stage::Throttled | Stage::Paused => BurnAction::Pause(burn),
        })
    }

    fn error_burn(&self, base: &Sample, now: &Sample) -> Option<Burn> {
        let budget = self.error_budget?;
        let errors = now.errors.saturating_sub(base.errors);
        #[allow(clippy::cast_precision_loss)]
        let burned = errors as f64;
        if errors == 0 || burned <= ACT_SHARE * budget {
            return None;
        }
        let share = if budget > 0.0 { burned / budget } else { 1.0 };
        Some(Burn {
            budget: "error budget".to_owned(),
            share,
            detail: format!(
                "{errors} failed attempts in {}s, {:.0}% of an error budget of {}",
                now.at.saturating_sub(base.at).as_secs(),
                share * 100.0,
                round2(budget),
            ),
        })
    }
}

/// The first watched budget line whose use over the window exceeds [`ACT_SHARE`] of its limit.
fn budget_burn(base: &Sample, now: &Sample) -> Option<Burn> {
    now.budget.iter().find_map(|line| {
        let before = base
            .budget
            .iter()
            .find(|b| b.kind == line.kind)
            .map_or(0.0, |b| b.used);
        let burned = line.used - before;
        (line.limit > 0.0 && burned > ACT_SHARE * line.limit).then(|| {
            let share = burned / line.limit;
            Burn {
                budget: format!("{} budget", line.kind),
                share,
                detail: format!(
                    "{} {} used in {}s, {:.0}% of a {} budget of {}",
                    round2(burned),
                    line.kind,
                    now.at.saturating_sub(base.at).as_secs(),
                    share * 100.0,
                    line.kind,
                    round2(line.limit),
                ),
            }
        })
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(rate: f64) -> SloSpec {
        SloSpec {
            success_rate: Some(rate),
            ..SloSpec::default()
        }
    }

    fn at(secs: u64, attempts: u64, errors: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            attempts,
            errors,
            budget: Vec::new(),
        }
    }

    #[test]
    fn error_budget_and_burn_rate_follow_the_objective() {
        let s = slo(0.99);
        assert!((s.error_budget(1000).unwrap() - 10.0).abs() < 1e-9);
        assert!((s.burn_rate(100, 1).unwrap() - 1.0).abs() < 1e-9);
        assert!((s.burn_rate(100, 5).unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(s.burn_rate(0, 0), Some(0.0));
        assert_eq!(SloSpec::default().burn_rate(10, 1), None);
        assert_eq!(SloSpec::default().error_budget(10), None);
    }

    #[test]
    fn projection_compares_now_plus_eta_with_the_deadline() {
        let s = SloSpec {
            complete_within: Some(Duration::from_secs(48 * 3600)),
            ..SloSpec::default()
        };
        let created = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = created + chrono::Duration::hours(40);
        let on = s
            .projection(created, now, Some(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(on.deadline, created + chrono::Duration::hours(48));
        assert_eq!(on.on_track, Some(true));
        let late = s
            .projection(created, now, Some(Duration::from_secs(9 * 3600)))
            .unwrap();
        assert_eq!(late.on_track, Some(false));
        assert_eq!(s.projection(created, now, None).unwrap().on_track, None);
        let after = created + chrono::Duration::hours(50);
        assert_eq!(
            s.projection(created, after, None).unwrap().on_track,
            Some(false),
            "past the deadline with no ETA is late"
        );
        assert_eq!(slo(0.9).projection(created, now, None), None);
        // Past the end of time: no deadline, no panic.
        let forever = SloSpec {
            complete_within: Some(Duration::MAX),
            ..SloSpec::default()
        };
        assert_eq!(forever.projection(created, now, Some(Duration::MAX)), None);
        let far = SloSpec {
            complete_within: Some(Duration::from_secs(3600)),
            ..SloSpec::default()
        };
        let p = far.projection(created, now, Some(Duration::MAX)).unwrap();
        assert_eq!(
            (p.projected, p.on_track),
            (None, Some(false)),
            "no projection, and past its one-hour deadline"
        );
    }

    #[test]
    fn the_guard_throttles_then_pauses_then_waits_for_a_reset() {
        // 100 partitions at 0.9: a budget of 10 failed attempts; acts above 5 in a window.
        let mut g = BurnGuard::new(slo(0.9), 100);
        assert_eq!(g.observe(at(0, 0, 0)), None);
        assert_eq!(g.observe(at(10, 20, 5)), None, "exactly half does not act");
        let Some(BurnAction::Throttle(burn)) = g.observe(at(20, 30, 6)) else {
            panic!("more than half throttles");
        };
        assert_eq!(burn.budget, "error budget");
        assert!((burn.share - 0.6).abs() < 1e-9, "{burn:?}");
        assert_eq!(g.stage(), Stage::Throttled);
        // The window restarts at the throttle: the six failures before it do not count again.
        assert_eq!(g.observe(at(30, 40, 10)), None);
        assert!(matches!(
            g.observe(at(40, 50, 12)),
            Some(BurnAction::Pause(_))
        ));
        assert_eq!(g.stage(), Stage::Paused);
        assert_eq!(g.observe(at(50, 60, 30)), None, "paused: nothing more");
        g.reset();
        assert_eq!(g.stage(), Stage::Throttled);
        assert_eq!(g.observe(at(60, 70, 30)), None, "counts from the resume");
        assert!(matches!(
            g.observe(at(70, 80, 36)),
            Some(BurnAction::Pause(_))
        ));
    }

    #[test]
    fn a_throttle_that_could_not_be_made_leaves_the_guard_watching() {
        let mut g = BurnGuard::new(slo(0.9), 100);
        g.observe(at(0, 0, 0));
        assert!(matches!(
            g.observe(at(10, 10, 6)),
            Some(BurnAction::Throttle(_))
        ));
        g.throttle_failed();
        assert_eq!(g.stage(), Stage::Watching);
        // The next burn (counted from the failed throttle) throttles again, not pauses.
        assert!(matches!(
            g.observe(at(20, 20, 12)),
            Some(BurnAction::Throttle(_))
        ));
    }

    #[test]
    fn failures_spread_over_more_than_a_short_window_do_not_act() {
        let mut g = BurnGuard::new(slo(0.9), 100);
        // One failure a minute: never more than 5 in five minutes.
        for minute in 0..60u64 {
            assert_eq!(
                g.observe(at(minute * 60, minute * 10, minute)),
                None,
                "minute {minute}"
            );
        }
        let (short, long) = g.burn_rates();
        assert!((short.unwrap() - 1.0).abs() < 1e-9, "{short:?}");
        assert!((long.unwrap() - 1.0).abs() < 1e-9, "{long:?}");
    }

    #[test]
    fn a_budget_line_burning_half_its_limit_in_a_window_acts() {
        let mut g = BurnGuard::new(SloSpec::default(), 100);
        let line = |used: f64| BudgetLine {
            kind: "cost",
            used,
            limit: 10.0,
        };
        let sample = |secs: u64, used: f64| Sample {
            budget: vec![line(used)],
            ..at(secs, 0, 0)
        };
        assert_eq!(g.observe(sample(0, 1.0)), None);
        assert_eq!(g.observe(sample(60, 5.0)), None);
        let Some(BurnAction::Throttle(burn)) = g.observe(sample(120, 6.5)) else {
            panic!("5.5 of 10 in two minutes throttles");
        };
        assert_eq!(burn.budget, "cost budget");
        assert!(burn.detail.contains("55%"), "{}", burn.detail);
        // Without success_rate there is no error budget: failures alone never act.
        assert_eq!(g.observe(at(130, 100, 100)), None);
    }

    #[test]
    fn burn_rates_need_an_objective_and_samples() {
        let g = BurnGuard::new(SloSpec::default(), 10);
        assert_eq!(g.burn_rates(), (None, None));
        let mut g = BurnGuard::new(slo(0.99), 10);
        assert_eq!(g.burn_rates(), (None, None));
        g.observe(at(0, 0, 0));
        assert_eq!(g.burn_rates(), (Some(0.0), Some(0.0)));
    }
}
