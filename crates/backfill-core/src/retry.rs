//! Retry policy: exponential backoff with full jitter, capped, with a maximum of attempts;
//! and the whole decision after a partition's attempt failed ([`RetryPolicy::after_failure`]):
//! retry, wait out an unreachable database, or fail.
//!
//! Pure: the random draw and the time of each failure are passed in, so every decision is
//! deterministic under test. The engine supplies a uniform draw in `[0, 1)` per retry and the
//! time on its monotonic clock.
//!
//! Rules: a permanent or data error fails the partition at once. A transient error is retried
//! with backoff until `max_attempts` attempts have been used. An unreachable database (a
//! restart, an outage) is waited out with the same backoff, counted from the outage's first
//! failure, for up to [`OUTAGE_PATIENCE`]; attempts lost to it do not count against
//! `max_attempts`, so an outage never fails a partition that would otherwise succeed.

use std::time::Duration;

/// Whether an error is worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// May succeed if tried again (database busy or locked, connection lost, timeout).
    Transient,
    /// Will fail the same way again (SQL error, missing table or column): fail the
    /// partition now and let the others continue.
    Permanent,
    /// The target rejected a row (constraint violation, value out of range): the row goes to
    /// quarantine with the reason and the rest of the batch is written. Never retried as is.
    Data,
}

impl ErrorClass {
    /// `transient`, `permanent` or `data`: how the store records the class of an error.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Data => "data",
        }
    }
}

/// When and how often to retry a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay scale of the first retry.
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
    /// Total attempts including the first; at least 1.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
            max_attempts: 6,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Stop: the error is permanent or attempts are used up.
    GiveUp,
}

impl RetryPolicy {
    /// Decides after attempt number `attempt` (1-based) failed with an error of `class`.
    /// `draw` is a uniform random number in `[0, 1)`; the delay is
    /// `draw × min(cap, base × 2^(attempt-1))` ("full jitter"), which spreads retries of many
    /// partitions so they do not hammer a recovering database in lockstep.
    pub fn decide(&self, attempt: u32, class: ErrorClass, draw: f64) -> RetryDecision {
        if class != ErrorClass::Transient || attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // `mul_f64` would panic on a product it cannot hold; a draw near 1 of a ceiling near
        // `Duration::MAX` rounds up past it.
        let delay = Duration::try_from_secs_f64(ceiling.as_secs_f64() * draw).unwrap_or(ceiling);
        RetryDecision::RetryAfter(delay.min(ceiling))
    }
}

/// How long a partition keeps retrying while a database is unreachable before it fails.
pub const OUTAGE_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// One failed attempt of a partition, as the engine saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Whether trying again may help.
    pub class: ErrorClass,
    /// A database could not be reached (refused, reset, timed out): waited out for up to
    /// [`OUTAGE_PATIENCE`] without using up `max_attempts`.
    pub unavailable: bool,
    /// The number of the attempt that failed, 1-based, as the store counts them (attempts lost
    /// to outages included).
    pub attempt: u32,
    /// When it failed, on any monotonic clock of the caller (say, time since the partition
    /// started in this process): measures how long an outage has lasted.
    pub at: Duration,
}

/// What a partition's earlier failures in this process leave for the next decision: the
/// outage in progress and the attempts outages used. Starts empty
/// ([`RetryHistory::default`]); only [`RetryPolicy::after_failure`] changes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryHistory {
    /// The outage in progress: when its first failure was and how many attempts it failed in
    /// a row. `None` when the last failure was not an outage.
    outage: Option<(Duration, u32)>,
    /// Attempts lost to outages in all, which `max_attempts` does not count.
    outage_attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Try again after this delay; the failed attempt counted against `max_attempts`.
    Retry(Duration),
    /// A database is unreachable: try again after this delay, without using up an attempt.
    WaitOutOutage(Duration),
    /// Fail the partition, for this reason.
    Fail(FailReason),
}

/// Why a partition failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The error would happen again (a permanent or data error).
    Permanent,
    /// Transient errors used up `max_attempts`.
    AttemptsUsedUp,
    /// A database stayed unreachable for longer than [`OUTAGE_PATIENCE`].
    OutageOutlasted,
}

impl FailReason {
    /// The partition's failure message: the (already redacted) `error`, and for a transient
    /// error how many attempts were made.
    pub fn message(self, error: &str, attempt: u32) -> String {
        match self {
            FailReason::Permanent => error.to_owned(),
            FailReason::AttemptsUsedUp | FailReason::OutageOutlasted => {
                format!("{error} (gave up after {attempt} attempts)")
            }
        }
    }
}

impl RetryPolicy {
    /// Decides what follows `failure` and records it in `history`: a permanent or data error
    /// fails; an unreachable database is waited out (backoff by the outage's own failures, no
    /// attempt used up) until it has lasted [`OUTAGE_PATIENCE`]; any other transient error is
    /// retried until `max_attempts`, not counting attempts lost to outages. `draw` is a
    /// uniform random number in `[0, 1)`, as for [`RetryPolicy::decide`].
    pub fn after_failure(
        &self,
        failure: Failure,
        history: &mut RetryHistory,
        draw: f64,
    ) -> NextStep {
        let permanent = failure.class != ErrorClass::Transient;
        if !failure.unavailable {
            history.outage = None;
            let counted = failure
                .attempt
                .saturating_sub(history.outage_attempts)
                .max(1);
            return match self.decide(counted, failure.class, draw) {
                RetryDecision::RetryAfter(delay) => NextStep::Retry(delay),
                RetryDecision::GiveUp if permanent => NextStep::Fail(FailReason::Permanent),
                RetryDecision::GiveUp => NextStep::Fail(FailReason::AttemptsUsedUp),
            };
        }
        history.outage_attempts = history.outage_attempts.saturating_add(1);
        let (since, tries) = history.outage.get_or_insert((failure.at, 0));
        *tries = tries.saturating_add(1);
        if permanent {
            return NextStep::Fail(FailReason::Permanent);
        }
        if failure.at.saturating_sub(*since) >= OUTAGE_PATIENCE {
            return NextStep::Fail(FailReason::OutageOutlasted);
        }
        let patient = RetryPolicy {
            max_attempts: u32::MAX,
            ..*self
        };
        match patient.decide(*tries, failure.class, draw) {
            RetryDecision::RetryAfter(delay) => NextStep::WaitOutOutage(delay),
            RetryDecision::GiveUp => NextStep::Fail(FailReason::OutageOutlasted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::{Data, Permanent, Transient};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_attempts: 4,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        let full = |attempt| match p.decide(attempt, ErrorClass::Transient, 0.999_999) {
            RetryDecision::RetryAfter(d) => d.as_millis(),
            RetryDecision::GiveUp => 0,
        };
        assert_eq!([full(1), full(2), full(3)], [99, 199, 399]);
        let big = RetryPolicy {
            max_attempts: 100,
            ..p
        };
        assert_eq!(
            big.decide(40, ErrorClass::Transient, 1.0),
            RetryDecision::RetryAfter(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_ceiling_at_the_largest_duration_does_not_overflow() {
        let p = RetryPolicy {
            base: Duration::MAX,
            cap: Duration::MAX,
            max_attempts: 9,
        };
        for draw in [0.0, 0.5, 0.999_999_999_999_999_9, 1.0] {
            assert!(matches!(
                p.decide(5, ErrorClass::Transient, draw),
                RetryDecision::RetryAfter(_)
            ));
        }
    }

    #[test]
    fn jitter_scales_the_delay() {
        let p = policy();
        assert_eq!(
            p.decide(3, ErrorClass::Transient, 0.0),
            RetryDecision::RetryAfter(Duration::ZERO)
        );
        assert_eq!(
            p.decide(3, ErrorClass::Transient, 0.5),
            RetryDecision::RetryAfter(Duration::from_millis(200))
        );
        assert_eq!(
            p.decide(1, ErrorClass::Transient, f64::NAN),
            RetryDecision::RetryAfter(Duration::ZERO)
        );
    }

    #[test]
    fn gives_up_on_permanent_errors_and_after_max_attempts() {
        let p = policy();
        assert_eq!(
            p.decide(1, ErrorClass::Permanent, 0.5),
            RetryDecision::GiveUp
        );
        assert_eq!(
            p.decide(4, ErrorClass::Transient, 0.5),
            RetryDecision::GiveUp
        );
        assert!(matches!(
            p.decide(3, ErrorClass::Transient, 0.5),
            RetryDecision::RetryAfter(_)
        ));
    }

    /// Feeds failures `(class, unavailable, attempt, at in seconds)` to one history; returns
    /// each step, delays drawn at 0.5 in milliseconds.
    fn steps(p: RetryPolicy, failures: &[(ErrorClass, bool, u32, u64)]) -> Vec<String> {
        let mut history = RetryHistory::default();
        failures
            .iter()
            .map(|&(class, unavailable, attempt, at)| {
                let failure = Failure {
                    class,
                    unavailable,
                    attempt,
                    at: Duration::from_secs(at),
                };
                match p.after_failure(failure, &mut history, 0.5) {
                    NextStep::Retry(d) => format!("retry {}ms", d.as_millis()),
                    NextStep::WaitOutOutage(d) => format!("wait {}ms", d.as_millis()),
                    NextStep::Fail(reason) => format!("fail {reason:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn permanent_and_data_errors_fail_at_once() {
        assert_eq!(
            steps(policy(), &[(Permanent, false, 1, 0)]),
            ["fail Permanent"]
        );
        assert_eq!(steps(policy(), &[(Data, false, 1, 0)]), ["fail Permanent"]);
        assert_eq!(
            steps(policy(), &[(Permanent, true, 1, 0)]),
            ["fail Permanent"]
        );
    }

    #[test]
    fn transient_errors_retry_with_backoff_until_max_attempts() {
        let failures: Vec<_> = (1..=4).map(|n| (Transient, false, n, 0)).collect();
        assert_eq!(
            steps(policy(), &failures),
            [
                "retry 50ms",
                "retry 100ms",
                "retry 200ms",
                "fail AttemptsUsedUp"
            ]
        );
    }

    #[test]
    fn an_outage_is_waited_out_without_using_up_attempts() {
        // Ten attempts lost to an outage with `max_attempts = 4`, then ordinary errors: they
        // count from one again, so the partition still gets its four attempts.
        let mut failures: Vec<_> = (1..=10)
            .map(|n| (Transient, true, n, u64::from(n)))
            .collect();
        failures.extend((11..=14).map(|n| (Transient, false, n, 100)));
        let got = steps(policy(), &failures);
        assert_eq!(
            got[..6],
            [
                "wait 50ms",
                "wait 100ms",
                "wait 200ms",
                "wait 400ms",
                "wait 800ms",
                "wait 1000ms"
            ]
        );
        assert!(got[6..10].iter().all(|s| s == "wait 1000ms"), "{got:?}");
        assert_eq!(
            got[10..],
            [
                "retry 50ms",
                "retry 100ms",
                "retry 200ms",
                "fail AttemptsUsedUp"
            ]
        );
    }

    #[test]
    fn an_outage_longer_than_the_patience_fails() {
        let minute = 60;
        let at = |m: u64| (Transient, true, 1, m * minute);
        assert_eq!(
            steps(
                policy(),
                &[at(0), at(14), (Transient, true, 3, 15 * minute - 1)]
            )[2],
            "wait 200ms"
        );
        assert_eq!(
            steps(policy(), &[at(0), at(14), at(15)])[2],
            "fail OutageOutlasted"
        );
    }

    #[test]
    fn another_error_ends_the_outage_so_the_next_one_starts_afresh() {
        let minute = 60;
        let p = RetryPolicy {
            max_attempts: 10,
            ..policy()
        };
        let got = steps(
            p,
            &[
                (Transient, true, 1, 0),
                (Transient, true, 2, 10 * minute),
                (Transient, false, 3, 11 * minute),
                // A new outage: its patience and backoff count from here.
                (Transient, true, 4, 20 * minute),
                (Transient, true, 5, 34 * minute),
            ],
        );
        assert_eq!(
            got,
            [
                "wait 50ms",
                "wait 100ms",
                "retry 50ms",
                "wait 50ms",
                "wait 100ms"
            ]
        );
    }

    #[test]
    fn the_failure_message_says_how_many_attempts_were_made() {
        assert_eq!(
            FailReason::Permanent.message("no such table", 1),
            "no such table"
        );
        assert_eq!(
            FailReason::AttemptsUsedUp.message("database is locked", 6),
            "database is locked (gave up after 6 attempts)"
        );
        assert_eq!(
            FailReason::OutageOutlasted.message("connection refused", 40),
            "connection refused (gave up after 40 attempts)"
        );
    }
}
