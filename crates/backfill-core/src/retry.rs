//! Retry policy: exponential backoff with full jitter, capped, with a maximum of attempts.
//!
//! Pure: the random draw is passed in, so the policy is deterministic under test. The engine
//! supplies a uniform draw in `[0, 1)` per retry.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
