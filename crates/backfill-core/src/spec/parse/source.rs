//! `[source]`: the database rows are read from and the query for one window, plus the
//! pieces `[target]` shares with it (time formats, identifiers).

use std::ops::Range;

use crate::secret::SecretUrl;
use crate::spec::{ParseContext, SourceSpec, is_identifier};
use crate::timefmt::TimeFormat;

use super::walker::{Table, Walker, join};

/// The time format used when a spec does not set one: text for SQLite (which has no
/// timestamp type), the native timestamp type for PostgreSQL and MySQL.
pub(super) fn default_time_format(url: Option<&SecretUrl>) -> TimeFormat {
    match url.map(SecretUrl::scheme).as_deref() {
        Some("sqlite") | None => TimeFormat::Rfc3339,
        Some(_) => TimeFormat::Native,
    }
}

/// `time_format` of `section`, or `default` when absent.
pub(super) fn time_format(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    section: &str,
    default: &TimeFormat,
) -> Option<TimeFormat> {
    match w.string(t, section, "time_format", false) {
        None => Some(default.clone()),
        Some((s, span)) => match TimeFormat::parse(&s) {
            Some(f) => Some(f),
            None => {
                w.error(&join(section, "time_format"), Some(span), format!("unknown time format `{s}`"))
                    .hint = Some("use `rfc3339`, `unix`, `unix_ms` or a strftime pattern such as `%Y-%m-%d %H:%M:%S`".to_owned());
                None
            }
        },
    }
}

/// An SQL identifier (`name` or `schema.name`) read from the spec at `path`.
pub(super) fn identifier(
    w: &mut Walker<'_>,
    value: Option<(String, Range<usize>)>,
    path: &str,
) -> Option<String> {
    let (s, span) = value?;
    if is_identifier(&s) {
        Some(s)
    } else {
        w.error(path, Some(span), format!("`{s}` is not a valid identifier"))
            .hint = Some(
            "use letters, digits and `_` (optionally `schema.table`); quoting is done for you"
                .to_owned(),
        );
        None
    }
}

/// `[source]`: URL, a non-empty query, the time format and the optional time column.
pub(super) fn source_spec(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    ctx: &ParseContext<'_>,
) -> Option<SourceSpec> {
    let url = w.url(t, "source", ctx);
    let query = w.string(t, "source", "query", true).and_then(|(q, span)| {
        if q.trim().is_empty() {
            w.error("source.query", Some(span), "the query is empty");
            None
        } else {
            Some(q)
        }
    });
    let time_format = time_format(w, t, "source", &default_time_format(url.as_ref()));
    let time_column_raw = w.string(t, "source", "time_column", false);
    let had_column = time_column_raw.is_some();
    let time_column = identifier(w, time_column_raw, "source.time_column");
    if had_column && time_column.is_none() {
        return None;
    }
    let ready = super::readiness::ready_check(w, t);
    Some(SourceSpec {
        url: url?,
        query: query?,
        time_format: time_format?,
        time_column,
        ready: ready.ok()?,
    })
}
