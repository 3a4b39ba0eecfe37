//! `[limits]`: concurrency, rates, batch size, retries, budget, run window, circuit breaker
//! and splitting (the partition order has its own module).

use std::time::Duration;

use toml::de::DeValue;

use crate::breaker::BreakerPolicy;
use crate::budget::{Budget, CostModel};
use crate::plan::Scope;
use crate::retry::RetryPolicy;
use crate::run_window::RunWindow;
use crate::spec::Limits;

use super::order::order;
use super::walker::{Table, Walker, join};

/// The largest `limits.batch_rows`: connectors reserve memory for a whole batch up front.
const MAX_BATCH_ROWS: u32 = 10_000_000;

/// `[limits]`, each key checked; a wrong key is reported and its default used, so the other
/// problems are still found.
pub(super) fn limits(w: &mut Walker<'_>, t: &Table<'_>, scope: Option<&Scope>) -> Limits {
    let d = Limits::default();
    let concurrency = w.positive_u32(t, "limits", "concurrency", d.concurrency.get());
    let batch_rows = w.positive_u32(t, "limits", "batch_rows", d.batch_rows.get());
    let rows_per_second = t
        .get("rows_per_second")
        .map(|_| w.positive_u32(t, "limits", "rows_per_second", u32::MAX));
    let batches_per_second = t
        .get("batches_per_second")
        .map(|_| w.positive_u32(t, "limits", "batches_per_second", u32::MAX));
    let max_attempts = w.positive_u32(t, "limits", "max_attempts", d.retry.max_attempts);
    let base = retry_delay(w, t, "retry_base", d.retry.base);
    let cap = retry_delay(w, t, "retry_cap", d.retry.cap);
    if concurrency.get() > 1024 {
        w.error(
            "limits.concurrency",
            t.get("concurrency").map(|v| v.span()),
            "at most 1024",
        );
    }
    if batch_rows.get() > MAX_BATCH_ROWS {
        w.error(
            "limits.batch_rows",
            t.get("batch_rows").map(|v| v.span()),
            format!("at most {MAX_BATCH_ROWS} rows, found {batch_rows}"),
        )
        .hint = Some("a batch is held in memory; e.g. `batch_rows = 5_000`".to_owned());
    } else if batch_rows.get() > 1_000_000 {
        w.warn(
            "limits.batch_rows",
            t.get("batch_rows").map(|v| v.span()),
            "batches over 1,000,000 rows use a lot of memory",
        );
    }
    let budget = budget(w, t);
    let window = w
        .string(t, "limits", "window", false)
        .and_then(|(text, span)| match RunWindow::parse(&text) {
            Ok(window) => Some(window),
            Err(msg) => {
                w.error(
                    "limits.window",
                    Some(span),
                    format!("invalid window: {msg}"),
                )
                .hint = Some(
                    "e.g. `window = \"22:00-06:00\"` or `\"22:00-06:00 Europe/Paris\"` (UTC \
                     when no zone is given)"
                        .to_owned(),
                );
                None
            }
        });
    let order = order(w, t, scope).unwrap_or_default();
    let breaker = breaker(w, t);
    let split = crate::split::SplitPolicy {
        rows: w.positive_u64(t, "limits", "split_rows"),
        slow_factor: t.get("split_slow").map(|_| {
            w.fraction(
                t,
                "limits",
                "split_slow",
                4.0,
                |f| (1.5..=1000.0).contains(&f),
                "between 1.5 and 1000 (times the median partition time)",
            )
        }),
    };
    Limits {
        concurrency,
        rows_per_second,
        batches_per_second,
        batch_rows,
        retry: RetryPolicy {
            base,
            cap: cap.max(base),
            max_attempts: max_attempts.get(),
        },
        budget,
        window,
        order,
        breaker,
        split,
    }
}

/// `limits.retry_base` / `limits.retry_cap`: at most a day, so a retry's backoff
/// (`base × 2^n`, capped, times a random fraction) always fits a `Duration` and a partition is
/// never parked for ages by a typo.
fn retry_delay(w: &mut Walker<'_>, t: &Table<'_>, key: &str, default: Duration) -> Duration {
    const MAX: Duration = Duration::from_secs(24 * 3600);
    match w.opt_duration(t, "limits", key) {
        None => default,
        Some((d, _)) if d <= MAX => d,
        Some((d, span)) => {
            w.error(
                &join("limits", key),
                Some(span),
                format!(
                    "must be at most 24h, found {}",
                    humantime::format_duration(d)
                ),
            )
            .hint = Some("retries back off exponentially up to `retry_cap`; e.g. `1m`".to_owned());
            default
        }
    }
}

/// `limits.budget`: rows, partitions, duration and cost the run may use.
fn budget(w: &mut Walker<'_>, limits: &Table<'_>) -> Budget {
    const SECTION: &str = "limits.budget";
    let Some(t) = w.subtable(
        limits,
        "limits",
        "budget",
        "e.g. `budget = { rows = 100_000_000, duration = \"6h\" }`",
    ) else {
        return Budget::default();
    };
    let rows = w.positive_u64(t, SECTION, "rows");
    let partitions = w.positive_u64(t, SECTION, "partitions");
    let duration = w
        .opt_duration(t, SECTION, "duration")
        .and_then(|(d, span)| {
            if d.is_zero() {
                w.error(
                    "limits.budget.duration",
                    Some(span),
                    "must be longer than zero",
                );
                None
            } else {
                Some(d)
            }
        });
    let cost = w
        .subtable(
            t,
            SECTION,
            "cost",
            "e.g. `cost = { per_million_rows = 0.40, per_hour = 2.0, currency = \"USD\", max = 50.0 }`",
        )
        .map(|c| cost_model(w, c));
    Budget {
        rows,
        duration,
        partitions,
        cost,
    }
}

/// `limits.budget.cost`: prices per million rows and per hour, a currency and a maximum.
fn cost_model(w: &mut Walker<'_>, t: &Table<'_>) -> CostModel {
    const SECTION: &str = "limits.budget.cost";
    let problems_before = w.diags.len();
    let price = |w: &mut Walker<'_>, key: &str| {
        w.fraction(t, SECTION, key, 0.0, |f| f >= 0.0, "zero or more")
    };
    let per_million_rows = price(w, "per_million_rows");
    let per_hour = price(w, "per_hour");
    let currency = match w.string(t, SECTION, "currency", false) {
        None => "USD".to_owned(),
        Some((c, span)) => {
            let ok =
                !c.trim().is_empty() && c.chars().count() <= 16 && !c.chars().any(char::is_control);
            if !ok {
                w.error(
                    "limits.budget.cost.currency",
                    Some(span),
                    format!("invalid currency `{c}`"),
                )
                .hint = Some("a code such as `USD` or `EUR` (at most 16 characters)".to_owned());
            }
            c.trim().to_owned()
        }
    };
    let max = w.float(t, SECTION, "max").and_then(|(m, span)| {
        if m > 0.0 {
            Some(m)
        } else {
            w.error(
                "limits.budget.cost.max",
                Some(span),
                format!("must be positive, found {m}"),
            );
            None
        }
    });
    if per_million_rows == 0.0 && per_hour == 0.0 && w.diags.len() == problems_before {
        w.warn(SECTION, None, "the cost is always zero").hint =
            Some("set `per_million_rows` and/or `per_hour`".to_owned());
    }
    CostModel {
        per_million_rows,
        per_hour,
        currency,
        max,
    }
}

/// `limits.circuit_breaker`: `true`, `false` or a table of window and error rate.
fn breaker(w: &mut Walker<'_>, limits: &Table<'_>) -> BreakerPolicy {
    const SECTION: &str = "limits.circuit_breaker";
    let d = BreakerPolicy::default();
    if let Some(v) = limits.get("circuit_breaker")
        && let DeValue::Boolean(on) = v.get_ref()
    {
        if *on {
            return d;
        }
        return BreakerPolicy {
            enabled: false,
            ..d
        };
    }
    let Some(t) = w.subtable(
        limits,
        "limits",
        "circuit_breaker",
        "e.g. `circuit_breaker = { window = 50, max_error_rate = 0.2 }`, or `false` to turn it off",
    ) else {
        return d;
    };
    let enabled = w.boolean(t, SECTION, "enabled", true);
    let window = w.positive_u32(t, SECTION, "window", d.window);
    if window.get() > 100_000 {
        w.error(
            "limits.circuit_breaker.window",
            t.get("window").map(|v| v.span()),
            "at most 100000 batches",
        );
    }
    let max_error_rate = w.fraction(
        t,
        SECTION,
        "max_error_rate",
        d.max_error_rate,
        |f| (0.0..1.0).contains(&f),
        "at least 0 and below 1",
    );
    BreakerPolicy {
        enabled,
        window: window.get().min(100_000),
        max_error_rate,
    }
}
