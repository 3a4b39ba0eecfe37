//! How model values are written to and read from store columns.
//!
//! Every conversion is exact: windows keep nanoseconds, timestamps are UTC RFC 3339 with
//! microseconds (fixed width, so they sort as text). Anything that does not read back is a
//! [`StoreError::Corrupt`], never a panic.

use backfill_core::Window;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::StoreError;

/// The current time as stored in timestamp columns.
pub(crate) fn now() -> String {
    timestamp(Utc::now())
}

/// A timestamp as stored: `2026-03-01T00:00:00.000000Z`.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_time(text: &str, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("{what} `{text}` is not a timestamp: {e}")))
}

pub(crate) fn parse_opt_time(
    text: Option<String>,
    what: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| parse_time(&t, what)).transpose()
}

/// A window as `(kind, start, end)` columns.
pub(crate) fn window_columns(window: &Window) -> (&'static str, String, String) {
    match window {
        Window::Time { start, end } => (
            "time",
            start.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            end.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        Window::Key { start, end } => ("key", start.to_string(), end.to_string()),
    }
}

pub(crate) fn parse_window(kind: &str, start: &str, end: &str) -> Result<Window, StoreError> {
    let bad = || StoreError::Corrupt(format!("window {kind}:{start}/{end} cannot be read"));
    match kind {
        "time" => Ok(Window::Time {
            start: parse_time(start, "window start")?,
            end: parse_time(end, "window end")?,
        }),
        "key" => Ok(Window::Key {
            start: start.parse().map_err(|_| bad())?,
            end: end.parse().map_err(|_| bad())?,
        }),
        _ => Err(bad()),
    }
}

/// A counter as stored. Counters beyond `i64::MAX` cannot happen in practice; saturate rather
/// than wrap if they ever do.
pub(crate) fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored counter; negative values (never written by us) read as 0.
pub(crate) fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_round_trip_exactly() {
        let windows = [
            Window::Key {
                start: i64::MIN,
                end: i64::MAX,
            },
            Window::Time {
                start: Utc.timestamp_opt(1_772_323_200, 123_456_789).unwrap(),
                end: Utc.timestamp_opt(1_772_326_800, 0).unwrap(),
            },
        ];
        for w in windows {
            let (kind, start, end) = window_columns(&w);
            assert_eq!(parse_window(kind, &start, &end).unwrap(), w);
        }
        assert!(parse_window("key", "x", "1").is_err());
        assert!(parse_window("day", "1", "2").is_err());
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let t = Utc.timestamp_opt(1_772_323_200, 0).unwrap();
        assert_eq!(timestamp(t), "2026-03-01T00:00:00.000000Z");
        assert_eq!(parse_time(&timestamp(t), "t").unwrap(), t);
    }
}
