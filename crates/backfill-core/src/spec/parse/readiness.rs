//! Issue 11's gates before and between partitions: `source.ready` (with `ready_timeout` and
//! `ready_interval`), read from the `[source]` table, and the `[canary]` section.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::params::named_params;
use crate::spec::{CanarySpec, ReadyCheck};

use super::walker::{Table, Walker};

/// `source.ready_timeout` when absent.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// `source.ready_interval` when absent.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// `source.ready`, `source.ready_timeout` and `source.ready_interval`. The timings without a
/// query are an error (they would silently do nothing). `Err(())` when a key is wrong
/// (already reported).
pub(super) fn ready_check(w: &mut Walker<'_>, t: &Table<'_>) -> Result<Option<ReadyCheck>, ()> {
    let sql = w.string(t, "source", "ready", false);
    let timeout = w.opt_duration(t, "source", "ready_timeout");
    let interval = w.opt_duration(t, "source", "ready_interval");
    let mut ok = true;
    for (key, value) in [("ready_timeout", &timeout), ("ready_interval", &interval)] {
        if let Some((d, span)) = value {
            if d.is_zero() {
                w.error(
                    &format!("source.{key}"),
                    Some(span.clone()),
                    "must be positive",
                )
                .hint = Some("write e.g. `30s` or `6h`".to_owned());
                ok = false;
            }
            if sql.is_none() {
                w.error(
                    &format!("source.{key}"),
                    Some(span.clone()),
                    format!("`{key}` needs `source.ready`"),
                )
                .hint = Some(
                    "add `ready = \"SELECT … WHERE … :start … :end\"`, the query that says a \
                     window's data is complete, or remove this key"
                        .to_owned(),
                );
                ok = false;
            }
        }
    }
    let Some((sql, span)) = sql else {
        return if ok { Ok(None) } else { Err(()) };
    };
    if sql.trim().is_empty() {
        w.error("source.ready", Some(span), "the ready query is empty")
            .hint = Some(
            "e.g. `SELECT count(*) FROM loads WHERE day >= :start AND day < :end AND finished`"
                .to_owned(),
        );
        return Err(());
    }
    for p in named_params(&sql) {
        if p != "start" && p != "end" {
            w.error(
                "source.ready",
                Some(span.clone()),
                format!("unknown parameter `:{p}`"),
            )
            .hint = Some("only `:start` and `:end` are bound (the partition's window)".to_owned());
            ok = false;
        }
    }
    if !ok {
        return Err(());
    }
    Ok(Some(ReadyCheck {
        sql,
        timeout: timeout.map_or(DEFAULT_TIMEOUT, |(d, _)| d),
        interval: interval.map_or(DEFAULT_INTERVAL, |(d, _)| d),
    }))
}

/// `[canary]`: `partitions` (required, positive), `seed` (optional, not negative),
/// `require_approval` (default false).
pub(super) fn canary(w: &mut Walker<'_>, t: &Table<'_>) -> Option<CanarySpec> {
    let partitions = match w.integer(t, "canary", "partitions") {
        None if t.get("partitions").is_none() => {
            w.error(
                "canary.partitions",
                None,
                "missing required key `partitions`",
            )
            .hint = Some("how many partitions run first, e.g. `partitions = 3`".to_owned());
            None
        }
        None => None,
        Some((n, span)) => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
            Some(n) => Some(n),
            None => {
                w.error(
                    "canary.partitions",
                    Some(span),
                    format!("must be between 1 and {}, found {n}", u32::MAX),
                )
                .hint = Some("the canary runs at least one partition".to_owned());
                None
            }
        },
    };
    let seed = match w.integer(t, "canary", "seed") {
        None => Ok(None),
        Some((n, span)) => match u64::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                w.error(
                    "canary.seed",
                    Some(span),
                    format!("must not be negative, found {n}"),
                )
                .hint = Some(
                    "any whole number from 0; the same seed picks the same partitions".to_owned(),
                );
                Err(())
            }
        },
    };
    let require_approval = w.boolean(t, "canary", "require_approval", false);
    Some(CanarySpec {
        partitions: partitions?,
        seed: seed.ok()?,
        require_approval,
    })
}
