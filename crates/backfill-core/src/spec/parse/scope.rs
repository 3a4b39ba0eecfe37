//! `[scope]`: a time range cut by a partition size in a time zone, a key range cut in
//! chunks, or an explicit list of windows; refused when it would make more partitions than a
//! plan may hold.

use std::ops::Range;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use toml::de::DeValue;

use crate::plan::{MAX_PARTITIONS, Scope, Step, Window, estimated_partitions};
use crate::spec::schema::suggest;

use super::walker::{Table, Value, Walker, join, kind};

impl Walker<'_> {
    /// An instant at `path` (a TOML date-time or a string), read in `tz` when it has no
    /// offset.
    pub(super) fn instant(&mut self, v: &Value<'_>, path: &str, tz: Tz) -> Option<DateTime<Utc>> {
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Datetime(d) => d.to_string(),
            other => {
                self.error(
                    path,
                    Some(v.span()),
                    format!("expected a date-time, found {}", kind(other)),
                );
                return None;
            }
        };
        match parse_instant(&text, tz) {
            Some(t) => Some(t),
            None => {
                self.error(path, Some(v.span()), format!("`{text}` is not a date-time"))
                    .hint = Some("use RFC 3339 (`2026-03-01T00:00:00Z`), a date (`2026-03-01`) or a local date-time read in `scope.timezone`".to_owned());
                None
            }
        }
    }
}

/// Parses an instant: RFC 3339 with offset; otherwise a local date or date-time in `tz`.
pub(crate) fn parse_instant(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// `[scope]`: exactly one kind of scope (time, keys or list).
pub(super) fn scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let has = |k: &str| t.get(k).is_some();
    let time = has("start") || has("end") || has("partition");
    let key = has("from") || has("to") || has("chunk") || has("key");
    let list = has("list");
    match (time, key, list) {
        (true, false, false) => time_scope(w, t),
        (false, true, false) => key_scope(w, t),
        (false, false, true) => list_scope(w, t),
        (false, false, false) => {
            w.error("scope", None, "the scope is empty")
                .hint = Some("set `start`, `end` and `partition` (time), `from`, `to` and `chunk` (keys), or `list`".to_owned());
            None
        }
        _ => {
            w.error("scope", None, "the scope mixes kinds")
                .hint = Some("use exactly one of: time (`start`/`end`/`partition`), keys (`from`/`to`/`chunk`), or `list`".to_owned());
            None
        }
    }
}

/// `scope.timezone`, an IANA name (UTC when absent).
fn timezone(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Tz> {
    match w.string(t, "scope", "timezone", false) {
        None => Some(Tz::UTC),
        Some((s, span)) => match s.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                w.error(
                    "scope.timezone",
                    Some(span),
                    format!("unknown time zone `{s}`"),
                )
                .hint = Some(match suggest_zone(&s) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "use an IANA name such as `UTC`, `Europe/Berlin` or \
                             `America/New_York`"
                        .to_owned(),
                });
                None
            }
        },
    }
}

/// The IANA zone closest to `name`: the same name in other case (`europe/berlin`), or a typo
/// away from one (`Europe/Berln`).
fn suggest_zone(name: &str) -> Option<String> {
    let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))
        .map(|n| (*n).to_owned())
        .or_else(|| suggest(name, &names))
}

/// A time scope: `start` before `end`, a partition size, within the partition cap.
fn time_scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let tz = timezone(w, t);
    let zone = tz.unwrap_or(Tz::UTC);
    let get = |w: &mut Walker<'_>, k: &str| match t.get(k) {
        Some(v) => w.instant(v, &join("scope", k), zone).map(|i| (i, v.span())),
        None => {
            w.error(&join("scope", k), None, format!("a time scope needs `{k}`"));
            None
        }
    };
    let start = get(w, "start");
    let end = get(w, "end");
    let mut step_span = None;
    let step = match w.string(t, "scope", "partition", false) {
        Some((s, span)) => match Step::parse(&s) {
            Ok(step) => {
                step_span = Some(span);
                Some(step)
            }
            Err(msg) => {
                w.error(
                    "scope.partition",
                    Some(span),
                    format!("invalid partition size: {msg}"),
                )
                .hint = Some("e.g. `15m`, `1h`, `1d`, `1mo`".to_owned());
                None
            }
        },
        None => {
            w.error(
                "scope.partition",
                None,
                "a time scope needs `partition`, the partition size",
            )
            .hint = Some("e.g. `partition = \"1h\"`".to_owned());
            None
        }
    };
    let ((start, _), (end, end_span)) = (start?, end?);
    if start >= end {
        w.error(
            "scope.end",
            Some(end_span),
            format!("end ({end}) must be after start ({start})"),
        )
        .hint = Some("the scope is the half-open range [start, end)".to_owned());
        return None;
    }
    let scope = Scope::Time {
        start,
        end,
        step: step?,
        timezone: tz?,
    };
    within_cap(w, scope, "scope.partition", step_span)
}

/// Refuses a scope that makes more partitions than a plan may hold, before planning it (the
/// estimate takes constant time; planning a scope of a billion seconds would not), naming the
/// field that sets the partition size and the count.
fn within_cap(
    w: &mut Walker<'_>,
    scope: Scope,
    path: &str,
    span: Option<Range<usize>>,
) -> Option<Scope> {
    let n = estimated_partitions(&scope);
    if n <= MAX_PARTITIONS as u64 {
        return Some(scope);
    }
    w.error(
        path,
        span,
        format!(
            "the scope makes about {n} partitions, more than the {MAX_PARTITIONS} a plan may hold"
        ),
    )
    .hint = Some("use a larger partition size, or split the scope into several specs".to_owned());
    None
}

/// A key scope: `from` below `to`, a positive chunk, within the partition cap.
fn key_scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let _ = w.string(t, "scope", "key", false);
    let need = |w: &mut Walker<'_>, k: &str| {
        let v = w.integer(t, "scope", k);
        if v.is_none() && t.get(k).is_none() {
            w.error(&join("scope", k), None, format!("a key scope needs `{k}`"));
        }
        v
    };
    let from = need(w, "from");
    let to = need(w, "to");
    let chunk = need(w, "chunk");
    let ((from, _), (to, to_span), (chunk, chunk_span)) = (from?, to?, chunk?);
    let mut ok = true;
    if chunk <= 0 {
        w.error(
            "scope.chunk",
            Some(chunk_span.clone()),
            format!("chunk must be positive, found {chunk}"),
        );
        ok = false;
    }
    if from >= to {
        w.error(
            "scope.to",
            Some(to_span),
            format!("to ({to}) must be greater than from ({from})"),
        )
        .hint = Some("the scope is the half-open range [from, to)".to_owned());
        ok = false;
    }
    if !ok {
        return None;
    }
    let scope = Scope::Key {
        from,
        to,
        chunk: chunk.unsigned_abs(),
    };
    within_cap(w, scope, "scope.chunk", Some(chunk_span))
}

/// A list of windows, all of one kind, none empty, none overlapping.
fn list_scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let tz = timezone(w, t).unwrap_or(Tz::UTC);
    let v = t.get("list")?;
    let DeValue::Array(items) = v.get_ref() else {
        w.error(
            "scope.list",
            Some(v.span()),
            format!("expected an array of windows, found {}", kind(v.get_ref())),
        );
        return None;
    };
    let mut windows = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("scope.list[{i}]");
        let DeValue::Table(entry) = item.get_ref() else {
            w.error(
                &path,
                Some(item.span()),
                "expected `{ start = …, end = … }`",
            );
            ok = false;
            continue;
        };
        w.unknown_keys(entry, "scope.list[]");
        let (Some(s), Some(e)) = (entry.get("start"), entry.get("end")) else {
            w.error(
                &path,
                Some(item.span()),
                "a listed window needs `start` and `end`",
            );
            ok = false;
            continue;
        };
        let window = match (s.get_ref(), e.get_ref()) {
            (DeValue::Integer(_), DeValue::Integer(_)) => {
                match (
                    w.integer(entry, &path, "start"),
                    w.integer(entry, &path, "end"),
                ) {
                    (Some((a, _)), Some((b, _))) => Some(Window::Key { start: a, end: b }),
                    _ => None,
                }
            }
            _ => match (
                w.instant(s, &format!("{path}.start"), tz),
                w.instant(e, &format!("{path}.end"), tz),
            ) {
                (Some(a), Some(b)) => Some(Window::Time { start: a, end: b }),
                _ => None,
            },
        };
        match window {
            Some(win) if win.is_empty() => {
                w.error(&path, Some(item.span()), "end must be after start");
                ok = false;
            }
            Some(win) => windows.push(win),
            None => ok = false,
        }
    }
    let time = windows
        .iter()
        .filter(|w| matches!(w, Window::Time { .. }))
        .count();
    if time != 0 && time != windows.len() {
        w.error(
            "scope.list",
            Some(v.span()),
            "the list mixes time and key windows",
        );
        return None;
    }
    if windows.is_empty() && ok {
        w.error("scope.list", Some(v.span()), "the list is empty");
        return None;
    }
    if let Err(e) = crate::plan::partitions(&Scope::List(windows.clone())) {
        w.error("scope.list", Some(v.span()), e.to_string());
        return None;
    }
    ok.then_some(Scope::List(windows))
}
