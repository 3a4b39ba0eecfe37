//! Live control of an executing run: holds (pause, cancel, budget, circuit breaker, time
//! window), limits that change while the run goes (rate, batches per second, concurrency), and
//! the controller task that polls the state store for commands from other terminals.
//!
//! In four parts: `gate` (the live limiters: a rate whose schedule a change of the limit
//! keeps, and the resizable concurrency gate), `live` (what the workers and the controller share: holds, limits in
//! force, the breaker, this session's tallies), `controller` (the polling task: commands,
//! budget, window and breaker as holds, the claim's renewal, heartbeats) and `liveness`
//! (whether a process of this host still exists).
//!
//! Invariants:
//! - A hold is a level the workers check between batches, exactly like a stop request: the
//!   batch in flight finishes and checkpoints, then the partition goes back to `pending`.
//! - A command written to the store takes effect within [`POLL`] plus one batch: the
//!   controller polls every [`POLL`], and rate waits are cut in slices of at most a tenth of
//!   a second's rows, each taken from the limiter in force at that moment.
//! - Concurrency bounds the batches (for `replace` and `sql`: the partitions) in flight, not
//!   the worker tasks, so lowering it takes effect as soon as in-flight batches end.
//! - Every budget, window and breaker decision is made by the pure policies of
//!   `backfill-core`; this module only feeds them measurements and the clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

mod burn;
mod controller;
mod gate;
mod live;
mod liveness;

pub(crate) use controller::Controller;
pub(crate) use live::{Limits, Live};
pub(crate) use liveness::{host, process_exists};

/// How often the controller reads the store's controls.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// How often the controller reports its heartbeat and telemetry.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A heartbeat older than this means no process is executing the run.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);

/// The wall clock the engine reads for time windows and budgets; injectable for tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    /// A clock that reads `now` (a test moves time by changing what it returns).
    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The current instant.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Why the workers are held between batches.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    /// `backfill cancel`: the run ends `cancelled`.
    Cancel,
    /// `backfill pause`.
    User,
    /// Too many batches failed recently; `backfill resume` closes the breaker.
    CircuitOpen {
        /// The last errors seen, newest last.
        errors: Vec<String>,
    },
    /// A budget line reached 100%; `backfill resume --extend-budget` continues.
    BudgetExhausted {
        /// The exhausted lines, e.g. `rows 1000/1000`.
        lines: Vec<String>,
    },
    /// `[slo]`: a budget burned fast again after the burn-rate throttle; `backfill resume`
    /// continues, still throttled.
    BurnRate {
        /// The budget that burned: `error budget`, `rows budget` or `cost budget`.
        budget: String,
        /// What burned, in words.
        detail: String,
    },
    /// The run may only work inside `limits.window`.
    OutsideWindow {
        /// When the window opens next.
        opens_at: DateTime<Utc>,
    },
}

impl Hold {
    /// The pause reason stored on the run (`paused` runs) and shown by `status`.
    pub fn pause_reason(&self) -> &'static str {
        match self {
            Hold::Cancel => "cancel",
            Hold::User => "user",
            Hold::CircuitOpen { .. } => "circuit_open",
            Hold::BudgetExhausted { .. } => "budget_exhausted",
            Hold::BurnRate { .. } => "burn_rate",
            Hold::OutsideWindow { .. } => "outside_window",
        }
    }

    /// The audit detail of the pause this hold causes.
    pub(crate) fn detail(&self) -> serde_json::Value {
        let mut detail = json!({ "pause_reason": self.pause_reason() });
        match self {
            Hold::CircuitOpen { errors } => detail["last_errors"] = json!(errors),
            Hold::BudgetExhausted { lines } => detail["budget"] = json!(lines),
            Hold::BurnRate {
                budget,
                detail: why,
            } => {
                detail["burned"] = json!(budget);
                detail["why"] = json!(why);
            }
            Hold::OutsideWindow { opens_at } => detail["resumes_at"] = json!(opens_at.to_rfc3339()),
            Hold::Cancel | Hold::User => {}
        }
        detail
    }
}
