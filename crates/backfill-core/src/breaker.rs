//! The circuit breaker: stop hammering a failing target (`limits.circuit_breaker`).
//!
//! Pure: the engine records the outcome of every batch and pauses the run (`circuit_open`)
//! when [`Breaker::record`] says the breaker is open. Invariants: the breaker opens as soon as
//! the failures among the last `window` batches exceed `max_error_rate × window`, counting
//! from the first batch (it does not wait for the window to fill); once open it stays open
//! until [`Breaker::reset`] (`resume` closes it); a disabled breaker never opens.

use std::collections::VecDeque;

/// When the breaker opens.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// False turns the breaker off.
    pub enabled: bool,
    /// Batches in the sliding window; at least 1.
    pub window: u32,
    /// The breaker opens when failures exceed this fraction of `window`; in `[0, 1)`.
    pub max_error_rate: f64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            enabled: true,
            window: 50,
            max_error_rate: 0.2,
        }
    }
}

impl BreakerPolicy {
    /// Most failures the window may hold while the breaker stays closed:
    /// `floor(max_error_rate × window)`, with a tolerance so 0.2 × 50 is 10, not 10.000…2.
    pub fn max_failures(&self) -> u32 {
        let allowed = self.max_error_rate * f64::from(self.window) + 1e-9;
        // Truncation is the point: 10.5 allowed failures means 10.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = allowed.floor().max(0.0) as u32;
        n
    }
}

/// Sliding record of the last `window` batch outcomes (success/failure).
#[derive(Clone, Debug, PartialEq)]
pub struct Breaker {
    /// What opens it.
    policy: BreakerPolicy,
    /// Outcomes of the last `window` batches, oldest first; `true` is a success.
    outcomes: VecDeque<bool>,
    /// Failures in `outcomes`.
    failures: u32,
    /// Sticky: set when the failures exceeded the limit, cleared only by `reset`.
    open: bool,
}

impl Breaker {
    /// A closed breaker with no history. A `window` of 0 is treated as 1.
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let policy = BreakerPolicy {
            window: policy.window.max(1),
            ..policy
        };
        Breaker {
            outcomes: VecDeque::with_capacity(policy.window as usize),
            policy,
            failures: 0,
            open: false,
        }
    }

    /// Records one batch outcome (`ok = false` for a failed batch); returns true when the
    /// breaker is now open: the failures among the last `window` outcomes exceed
    /// `max_error_rate × window` (so 11 failures in the first 11 batches trip a 50/0.2
    /// breaker), or it was already open.
    pub fn record(&mut self, ok: bool) -> bool {
        self.outcomes.push_back(ok);
        if !ok {
            self.failures += 1;
        }
        while self.outcomes.len() > self.policy.window as usize {
            if self.outcomes.pop_front() == Some(false) {
                self.failures -= 1;
            }
        }
        if self.policy.enabled && self.failures > self.policy.max_failures() {
            self.open = true;
        }
        self.open
    }

    /// True from the outcome that opened it until [`Breaker::reset`].
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Failures among the outcomes held (at most `window`), from 0 to 1; 0 with no outcome.
    pub fn error_rate(&self) -> f64 {
        if self.outcomes.is_empty() {
            0.0
        } else {
            f64::from(self.failures) / self.outcomes.len() as f64
        }
    }

    /// Failures among the outcomes held.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Closes the breaker and forgets the history (a resumed run starts afresh).
    pub fn reset(&mut self) {
        self.outcomes.clear();
        self.failures = 0;
        self.open = false;
    }

    /// The policy in force.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn eleven_failures_in_the_first_eleven_batches_trip_the_default() {
        let mut b = Breaker::new(BreakerPolicy::default());
        for _ in 0..10 {
            assert!(!b.record(false));
        }
        assert!(b.record(false));
        assert!(b.is_open());
        assert_eq!(b.error_rate(), 1.0);
        // Sticky until reset.
        assert!(b.record(true));
        b.reset();
        assert!(!b.is_open());
        assert_eq!(b.error_rate(), 0.0);
    }

    #[test]
    fn old_failures_slide_out() {
        let mut b = Breaker::new(BreakerPolicy {
            enabled: true,
            window: 10,
            max_error_rate: 0.2,
        });
        // Two failures per ten batches, forever: at the limit, never over it.
        for i in 0..1_000 {
            assert!(!b.record(i % 5 != 0), "opened at batch {i}");
        }
        assert!((b.error_rate() - 0.2).abs() < 1e-9);
        // Batch 1000 fails: the last ten (991..=1000) hold 995 and 1000, still at the limit;
        // batch 1001 fails too: three of the last ten.
        assert!(!b.record(false));
        assert!(b.record(false));
    }

    #[test]
    fn disabled_never_opens() {
        let mut b = Breaker::new(BreakerPolicy {
            enabled: false,
            ..BreakerPolicy::default()
        });
        for _ in 0..100 {
            assert!(!b.record(false));
        }
        assert_eq!(b.error_rate(), 1.0);
    }

    #[test]
    fn zero_rate_opens_on_the_first_failure() {
        let mut b = Breaker::new(BreakerPolicy {
            enabled: true,
            window: 0,
            max_error_rate: 0.0,
        });
        assert_eq!(b.policy().window, 1);
        assert!(!b.record(true));
        assert!(b.record(false));
    }

    proptest! {
        /// The breaker is open exactly when some suffix window of the history held too many
        /// failures (checked against a naive recount).
        #[test]
        fn matches_a_naive_recount(
            outcomes in proptest::collection::vec(any::<bool>(), 0..200),
            window in 1u32..30,
            rate in 0.0f64..1.0,
        ) {
            let policy = BreakerPolicy { enabled: true, window, max_error_rate: rate };
            let limit = policy.max_failures();
            let mut b = Breaker::new(policy);
            let mut ever = false;
            for (i, ok) in outcomes.iter().enumerate() {
                let from = (i + 1).saturating_sub(window as usize);
                let failures = outcomes[from..=i].iter().filter(|o| !**o).count();
                ever |= failures > limit as usize;
                prop_assert_eq!(b.record(*ok), ever);
                prop_assert_eq!(b.failures() as usize, failures);
            }
        }
    }
}
