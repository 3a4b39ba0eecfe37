//! `[slo]`: the run's objectives (`complete_within`, `success_rate`, `max_latency_increase`),
//! and the rule that the live-impact bound is the adaptive throttle's own.

use crate::slo::SloSpec;
use crate::spec::ThrottleSpec;

use super::walker::{Table, Walker};

const SECTION: &str = "slo";

/// `[slo]`: `None` (with diagnostics) when a key is wrong. With `[throttle]`,
/// `max_latency_increase` becomes the throttle's bound unless the throttle gives its own, and
/// two different bounds are an error.
pub(super) fn slo(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    throttle_table: Option<&Table<'_>>,
    throttle: Option<&mut ThrottleSpec>,
) -> Option<SloSpec> {
    let errors_before = w.diags.iter().filter(|d| d.is_error()).count();
    let complete_within = match w.opt_duration(t, SECTION, "complete_within") {
        Some((d, span)) if d.is_zero() => {
            w.error("slo.complete_within", Some(span), "must be positive")
                .hint = Some("write e.g. `48h` or `7days`".to_owned());
            None
        }
        other => other.map(|(d, _)| d),
    };
    let success_rate = w.float(t, SECTION, "success_rate").and_then(|(f, span)| {
        if f > 0.0 && f < 1.0 {
            Some(f)
        } else {
            w.error(
                "slo.success_rate",
                Some(span),
                format!("must be above 0 and below 1, found {f}"),
            )
            .hint = Some(
                "the share of attempts that should succeed, e.g. `0.99`; 1 would leave no \
                 error budget at all"
                    .to_owned(),
            );
            None
        }
    });
    let max_latency_increase = w
        .float(t, SECTION, "max_latency_increase")
        .and_then(|(f, span)| {
            if f > 0.0 {
                Some((f, span))
            } else {
                w.error(
                    "slo.max_latency_increase",
                    Some(span),
                    format!("must be positive (0.10 allows +10%), found {f}"),
                );
                None
            }
        });
    if let Some((bound, span)) = &max_latency_increase {
        latency_bound(w, *bound, span.clone(), throttle_table, throttle);
    }
    if w.diags.iter().filter(|d| d.is_error()).count() != errors_before {
        return None;
    }
    Some(SloSpec {
        complete_within,
        success_rate,
        max_latency_increase: max_latency_increase.map(|(f, _)| f),
    })
}

/// The adaptive throttle enforces the live-impact bound: it takes the objective's unless it
/// states its own, which must then agree. Without `[throttle]` nothing enforces it: a warning.
fn latency_bound(
    w: &mut Walker<'_>,
    bound: f64,
    span: std::ops::Range<usize>,
    throttle_table: Option<&Table<'_>>,
    throttle: Option<&mut ThrottleSpec>,
) {
    let Some(table) = throttle_table else {
        w.warn(
            "slo.max_latency_increase",
            Some(span),
            "nothing enforces this bound without `[throttle]`",
        )
        .hint = Some(
            "add `[throttle]` with `watch` or `probe` naming the live database: the adaptive \
             throttle keeps its latency within this bound"
                .to_owned(),
        );
        return;
    };
    match (table.get("max_latency_increase"), throttle) {
        (None, Some(throttle)) => throttle.max_latency_increase = bound,
        (Some(_), Some(throttle)) if (throttle.max_latency_increase - bound).abs() > 1e-12 => {
            w.error(
                "slo.max_latency_increase",
                Some(span),
                format!(
                    "{bound} differs from `throttle.max_latency_increase` = {}",
                    throttle.max_latency_increase
                ),
            )
            .hint =
                Some("the throttle enforces the objective's bound: keep one of the two".to_owned());
        }
        _ => {}
    }
}
