//! `[slo]` in an executing run: samples the session's attempts, failures and budget use for
//! the core's [`BurnGuard`], and turns its decisions into a throttle (written to the run's
//! controls, audited as `run.throttled` with cause `burn_rate`) or a hold (`burn_rate`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use backfill_core::Spec;
use backfill_core::budget::{BudgetExtension, BudgetUse};
use backfill_core::slo::{BudgetLine, Burn, BurnGuard, LONG_WINDOW, SHORT_WINDOW, Sample};
use serde_json::json;

use super::{Hold, Limits, Live};

/// The burn guard of one session and the hold it asked for.
pub(crate) struct BurnWatch {
    guard: BurnGuard,
    started: Instant,
    /// Set by a pause, cleared by a resume.
    pub(crate) hold: Option<Hold>,
}

impl BurnWatch {
    /// A watch when the spec has `[slo]`, for a run of `partitions` partitions.
    pub(crate) fn of(spec: &Spec, partitions: u64) -> Option<BurnWatch> {
        let slo = spec.slo.clone()?;
        Some(BurnWatch {
            guard: BurnGuard::new(slo, partitions),
            started: Instant::now(),
            hold: None,
        })
    }

    /// Feeds the guard this moment's counters; what it asks for, if anything.
    pub(crate) fn observe(
        &mut self,
        spec: &Spec,
        live: &Live,
        used: &BudgetUse,
        extension: &BudgetExtension,
    ) -> Option<backfill_core::slo::BurnAction> {
        let failed = live.attempts_failed.load(Ordering::Relaxed);
        let finished = live.partitions_finished.load(Ordering::Relaxed);
        self.guard.observe(Sample {
            at: self.started.elapsed(),
            attempts: finished + failed,
            errors: failed,
            budget: watched_lines(spec, used, extension),
        })
    }

    /// The throttle asked for could not be written: the guard watches as before.
    pub(crate) fn throttle_failed(&mut self) {
        self.guard.throttle_failed();
    }

    /// A resume: the guard counts from now, and the hold is lifted.
    pub(crate) fn resumed(&mut self) {
        self.guard.reset();
        self.hold = None;
    }

    /// What `status` shows: the objective, the error budget, the burn rates and the stage.
    pub(crate) fn telemetry(&self, spec: &Spec) -> serde_json::Value {
        let (short, long) = self.guard.burn_rates();
        let slo = spec.slo.as_ref();
        json!({
            "objective": {
                "complete_within_seconds": slo.and_then(|s| s.complete_within).map(|d| d.as_secs()),
                "success_rate": slo.and_then(|s| s.success_rate),
                "max_latency_increase": slo.and_then(|s| s.max_latency_increase),
            },
            "error_budget": self.guard.error_budget(),
            "burn_rate_short": short,
            "burn_rate_long": long,
            "short_window_seconds": SHORT_WINDOW.as_secs(),
            "long_window_seconds": LONG_WINDOW.as_secs(),
            "stage": self.guard.stage().as_str(),
        })
    }
}

/// The rows and cost budget lines, when the spec limits them.
fn watched_lines(spec: &Spec, used: &BudgetUse, extension: &BudgetExtension) -> Vec<BudgetLine> {
    let budget = &spec.limits.budget;
    let mut lines = Vec::new();
    if let Some(limit) = budget.rows {
        #[allow(clippy::cast_precision_loss)]
        lines.push(BudgetLine {
            kind: "rows",
            used: used.rows as f64,
            limit: (limit + extension.rows) as f64,
        });
    }
    if let Some(cost) = &budget.cost
        && let Some(max) = cost.max
    {
        lines.push(BudgetLine {
            kind: "cost",
            used: cost.cost(used.rows, used.active),
            limit: max + extension.cost,
        });
    }
    lines
}

/// The limits after a burn-rate throttle: half the concurrency (at least 1), half each rate
/// limit in force; without a rows limit, half the rate this session has read at, so a run
/// already at one partition at a time still slows down.
pub(crate) fn throttled(now: Limits, session_rows_per_second: f64) -> Limits {
    let half = |v: u32| if v == 0 { 0 } else { (v / 2).max(1) };
    let rows = if now.rows_per_second > 0 {
        half(now.rows_per_second)
    } else if now.concurrency <= 1 && session_rows_per_second >= 2.0 {
        // Truncation is the intent: a whole number of rows per second, at least 1.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let r = (session_rows_per_second / 2.0).min(f64::from(u32::MAX)) as u32;
        r.max(1)
    } else {
        0
    };
    Limits {
        rows_per_second: rows,
        batches_per_second: half(now.batches_per_second),
        concurrency: half(now.concurrency),
    }
}

/// The audit and log detail of a burn.
pub(crate) fn burn_json(burn: &Burn) -> serde_json::Value {
    json!({ "budget": burn.budget, "share": burn.share, "detail": burn.detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        let text = format!(
            "name = \"t\"\n[source]\nurl = \"sqlite://s.db\"\n\
             query = \"SELECT id FROM t WHERE ts >= :start AND ts < :end\"\n\
             [target]\nurl = \"sqlite://t.db\"\ntable = \"t\"\nkey = [\"id\"]\n\
             [scope]\nstart = \"2026-01-01T00:00:00Z\"\nend = \"2026-01-03T00:00:00Z\"\n\
             partition = \"1d\"\n{extra}"
        );
        let parsed = backfill_core::spec::parse(
            &text,
            &backfill_core::spec::ParseContext {
                env: &|_| None,
                base_dir: std::path::Path::new("/"),
            },
        );
        parsed
            .spec
            .unwrap_or_else(|| panic!("{:?}", parsed.diagnostics))
    }

    #[test]
    fn the_guard_watches_the_rows_and_cost_budgets_with_their_extensions() {
        let used = BudgetUse {
            rows: 2_000_000,
            active: std::time::Duration::from_secs(3600),
            partitions: 1,
        };
        let extension = BudgetExtension {
            rows: 500,
            cost: 1.0,
            ..BudgetExtension::default()
        };
        let limited = spec(
            "[limits]\nbudget = { rows = 1000, duration = \"1h\", cost = { per_million_rows = 2.0, \
             per_hour = 1.0, currency = \"USD\", max = 10.0 } }\n",
        );
        let lines = watched_lines(&limited, &used, &extension);
        assert_eq!(
            lines,
            [
                BudgetLine {
                    kind: "rows",
                    used: 2_000_000.0,
                    limit: 1500.0
                },
                BudgetLine {
                    kind: "cost",
                    used: 5.0,
                    limit: 11.0
                },
            ],
            "duration is not watched: throttling does not slow time"
        );
        assert_eq!(watched_lines(&spec(""), &used, &extension), []);
        assert!(BurnWatch::of(&spec(""), 2).is_none(), "no [slo], no guard");
        let watch = BurnWatch::of(&spec("[slo]\nsuccess_rate = 0.5\n"), 2).unwrap();
        let t = watch.telemetry(&spec("[slo]\nsuccess_rate = 0.5\n"));
        assert_eq!(t["error_budget"], 1.0);
        assert_eq!(t["stage"], "watching");
        assert_eq!(t["short_window_seconds"], 300);
    }

    #[test]
    fn a_throttle_halves_what_is_in_force() {
        let l = |r, b, c| Limits {
            rows_per_second: r,
            batches_per_second: b,
            concurrency: c,
        };
        assert_eq!(throttled(l(1000, 10, 8), 500.0), l(500, 5, 4));
        assert_eq!(throttled(l(1, 1, 1), 500.0), l(1, 1, 1), "never below 1");
        assert_eq!(
            throttled(l(0, 0, 4), 500.0),
            l(0, 0, 2),
            "concurrency first"
        );
        assert_eq!(
            throttled(l(0, 0, 1), 500.0),
            l(250, 0, 1),
            "one at a time: half the rate read"
        );
        assert_eq!(throttled(l(0, 0, 1), 0.0), l(0, 0, 1));
    }
}
