//! `[throttle]`: the watched live database, the probe against it, and the rules of the adaptive (AIMD)
//! throttle.

use std::ops::Range;
use std::time::Duration;

use crate::secret::SecretUrl;
use crate::spec::{Limits, ParseContext, Probe, ThrottleSpec};

use super::walker::{Table, Walker};

/// `[throttle]`: `None` (with diagnostics) when any of its keys is wrong, so a run never
/// starts with half a throttle.
pub(super) fn throttle(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    ctx: &ParseContext<'_>,
    limits: &Limits,
) -> Option<ThrottleSpec> {
    const SECTION: &str = "throttle";
    let d = ThrottleSpec::default();
    let problems_before = w.diags.iter().filter(|d| d.is_error()).count();
    let probe = w
        .subtable(
            t,
            SECTION,
            "probe",
            "e.g. `probe = { url = \"postgres://app@db/shop\", sql = \"SELECT 1\" }`",
        )
        .map(|p| probe(w, p, ctx));
    let watch = w
        .subtable(
            t,
            SECTION,
            "watch",
            "e.g. `watch = { url = \"postgres://app@db/shop\" }`",
        )
        .map(|p| watch(w, p, ctx));
    let interval = interval(w, t).unwrap_or(d.interval);
    let baseline_probes = w.positive_u32(t, SECTION, "baseline_probes", d.baseline_probes);
    if !(5..=10_000).contains(&baseline_probes.get()) {
        w.error(
            "throttle.baseline_probes",
            t.get("baseline_probes").map(|v| v.span()),
            format!("must be between 5 and 10000, found {baseline_probes}"),
        )
        .hint = Some("a baseline needs enough probes for a p90; 20 takes 20 intervals".to_owned());
    }
    let window = w.positive_u32(t, SECTION, "window", d.window);
    if window.get() > 10_000 {
        w.error(
            "throttle.window",
            t.get("window").map(|v| v.span()),
            "at most 10000 probes",
        );
    }
    let max_latency_increase = w.fraction(
        t,
        SECTION,
        "max_latency_increase",
        d.max_latency_increase,
        |f| f > 0.0,
        "positive (0.10 allows +10%)",
    );
    let max_replica_lag = max_replica_lag(w, t);
    let (rest_check, rest_check_every) = rest_check(w, t, &d, interval);
    let (decrease_factor, min_rate_fraction, increase_fraction) = rate_steps(w, t, &d);
    let max_rows_per_second = t
        .get("max_rows_per_second")
        .map(|_| w.positive_u32(t, SECTION, "max_rows_per_second", u32::MAX));
    needs_rate_and_probe(
        w,
        max_rows_per_second.is_some() || limits.rows_per_second.is_some(),
        probe.is_some() || watch.is_some(),
        max_replica_lag.as_ref().map(|(_, span)| span.clone()),
    );
    let watch = match watch {
        Some(Some(url)) => Some(url),
        Some(None) => return None,
        None => None,
    };
    let probe = match probe {
        Some((Some(url), Some(sql))) => Some(Probe { url, sql }),
        Some(_) => return None,
        None => None,
    };
    if w.diags.iter().filter(|d| d.is_error()).count() != problems_before {
        return None;
    }
    Some(ThrottleSpec {
        probe,
        watch,
        interval,
        baseline_probes: baseline_probes.get(),
        max_latency_increase,
        max_replica_lag: max_replica_lag.map(|(lag, _)| lag),
        decrease_factor,
        min_rate_fraction,
        increase_fraction,
        window: window.get(),
        max_rows_per_second,
        rest_check,
        rest_check_every,
    })
}

/// `throttle.rest_check` (zero, or 2 intervals to 1 minute; by default 2 s or two intervals)
/// and `throttle.rest_check_every` (at least 10 times `rest_check`, at most 1 hour; by default
/// 1 minute or 10 checks' length).
fn rest_check(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    d: &ThrottleSpec,
    interval: Duration,
) -> (Duration, Duration) {
    let check = w.opt_duration(t, "throttle", "rest_check");
    let every = w.opt_duration(t, "throttle", "rest_check_every");
    // The defaults follow a long `interval`: a check spans two readings at least.
    let rest_check = check
        .as_ref()
        .map_or(d.rest_check.max(interval * 2), |(c, _)| *c);
    if let Some((c, span)) = check
        && !c.is_zero()
        && !(interval * 2..=Duration::from_secs(60)).contains(&c)
    {
        w.error(
            "throttle.rest_check",
            Some(span),
            format!(
                "must be \"0s\" (off) or between two intervals ({} ms) and 1m, found {} ms",
                (interval * 2).as_millis(),
                c.as_millis()
            ),
        )
        .hint = Some(
            "a rest check measures live traffic with the backfill held; \"2s\" is the default"
                .to_owned(),
        );
    }
    let rest_check_every = every
        .as_ref()
        .map_or(d.rest_check_every.max(rest_check * 10), |(e, _)| *e);
    if let Some((e, span)) = every
        && !(rest_check * 10..=Duration::from_secs(3600)).contains(&e)
    {
        w.error(
            "throttle.rest_check_every",
            Some(span),
            format!(
                "must be between 10 times `rest_check` ({} ms) and 1h, found {} ms",
                (rest_check * 10).as_millis(),
                e.as_millis()
            ),
        )
        .hint = Some(
            "each check holds the backfill for `rest_check` and a settling second; \"60s\" is the default"
                .to_owned(),
        );
    }
    (rest_check, rest_check_every)
}

/// `decrease_factor`, `min_rate_fraction` and `increase_fraction`: how the rate moves.
fn rate_steps(w: &mut Walker<'_>, t: &Table<'_>, d: &ThrottleSpec) -> (f64, f64, f64) {
    const SECTION: &str = "throttle";
    let decrease_factor = w.fraction(
        t,
        SECTION,
        "decrease_factor",
        d.decrease_factor,
        |f| f > 0.0 && f < 1.0,
        "between 0 and 1 (exclusive)",
    );
    let min_rate_fraction = w.fraction(
        t,
        SECTION,
        "min_rate_fraction",
        d.min_rate_fraction,
        |f| f > 0.0 && f <= 1.0,
        "above 0 and at most 1",
    );
    let increase_fraction = w.fraction(
        t,
        SECTION,
        "increase_fraction",
        d.increase_fraction,
        |f| f > 0.0 && f <= 1.0,
        "above 0 and at most 1",
    );
    (decrease_factor, min_rate_fraction, increase_fraction)
}

/// `throttle.watch`: the live database whose own signals are read (not SQLite, which has
/// none).
fn watch(w: &mut Walker<'_>, p: &Table<'_>, ctx: &ParseContext<'_>) -> Option<SecretUrl> {
    let url = w.url(p, "throttle.watch", ctx)?;
    if url.scheme() == "sqlite" {
        w.error(
            "throttle.watch.url",
            p.get("url").map(|v| v.span()),
            "SQLite has no live signals to watch",
        )
        .hint = Some(
            "name a PostgreSQL or MySQL/MariaDB database, or time a statement with `probe` instead"
                .to_owned(),
        );
        return None;
    }
    Some(url)
}

/// `throttle.probe`: its URL and a non-empty statement.
fn probe(
    w: &mut Walker<'_>,
    p: &Table<'_>,
    ctx: &ParseContext<'_>,
) -> (Option<SecretUrl>, Option<String>) {
    let url = w.url(p, "throttle.probe", ctx);
    let sql = w
        .string(p, "throttle.probe", "sql", true)
        .and_then(|(sql, span)| {
            if sql.trim().is_empty() {
                w.error(
                    "throttle.probe.sql",
                    Some(span),
                    "the probe statement is empty",
                )
                .hint = Some(
                    "e.g. `sql = \"SELECT 1\"`, or a cheap query live traffic runs".to_owned(),
                );
                None
            } else {
                Some(sql)
            }
        });
    (url, sql)
}

/// `throttle.interval`, between 10 ms and 10 minutes, when given and valid.
fn interval(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Duration> {
    w.opt_duration(t, "throttle", "interval")
        .and_then(|(i, span)| {
            if (Duration::from_millis(10)..=Duration::from_secs(600)).contains(&i) {
                Some(i)
            } else {
                w.error(
                    "throttle.interval",
                    Some(span),
                    "must be between 10ms and 10m",
                );
                None
            }
        })
}

/// `throttle.max_replica_lag`, longer than zero, with its span.
fn max_replica_lag(w: &mut Walker<'_>, t: &Table<'_>) -> Option<(Duration, Range<usize>)> {
    w.opt_duration(t, "throttle", "max_replica_lag")
        .and_then(|(lag, span)| {
            if lag.is_zero() {
                w.error(
                    "throttle.max_replica_lag",
                    Some(span),
                    "must be longer than zero",
                );
                None
            } else {
                Some((lag, span))
            }
        })
}

/// The throttle needs a maximum rate to start at; without a watch or a probe it only reacts
/// to errors (a warning), and cannot watch replica lag (an error at `lag_span`).
fn needs_rate_and_probe(
    w: &mut Walker<'_>,
    has_max_rate: bool,
    has_probe: bool,
    lag_span: Option<Range<usize>>,
) {
    const SECTION: &str = "throttle";
    if !has_max_rate {
        w.error(SECTION, None, "the throttle has no maximum rate")
            .hint = Some(
            "set `throttle.max_rows_per_second` or `limits.rows_per_second`: the rate the run starts at and never exceeds"
                .to_owned(),
        );
    }
    if !has_probe {
        if let Some(span) = lag_span {
            w.error("throttle.max_replica_lag", Some(span), "`max_replica_lag` needs `watch` or `probe`")
                .hint = Some("the lag is measured on the watched (or the probe's) database; add `watch = { url = … }` naming the live database".to_owned());
        } else {
            w.warn(SECTION, None, "without `watch` or `probe` the throttle reacts to errors only")
                .hint = Some("add `watch = { url = … }` naming the live database, to follow its own statements' latency".to_owned());
        }
    }
}
