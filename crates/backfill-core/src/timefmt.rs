//! How a window bound is represented in the source and target databases.
//!
//! SQLite has no timestamp type, so users store instants as RFC 3339 text, unix seconds,
//! unix milliseconds or some other text pattern. [`TimeFormat`] turns a window bound into the
//! value that compares correctly against that column, and parses sampled column values back
//! (used by `check` to warn about a format that does not match the data).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

use crate::value::Value;

/// The representation of instants in a source or target column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// RFC 3339 text in UTC with a `Z` suffix, e.g. `2025-01-01T00:00:00Z`; sorts as text.
    Rfc3339,
    /// Integer seconds since 1970-01-01T00:00:00Z.
    Unix,
    /// Integer milliseconds since 1970-01-01T00:00:00Z.
    UnixMs,
    /// Text formatted in UTC with a strftime pattern, e.g. `%Y-%m-%d %H:%M:%S`.
    Strftime(String),
    /// The database's own timestamp type: the bound is an instant (PostgreSQL `timestamptz`,
    /// MySQL `DATETIME`/`TIMESTAMP` in UTC). The default for PostgreSQL and MySQL URLs.
    Native,
}

impl TimeFormat {
    /// Parses the spec's `time_format` value; `None` for an unknown name or a pattern with no
    /// `%` directive.
    pub fn parse(s: &str) -> Option<TimeFormat> {
        match s {
            "rfc3339" => Some(TimeFormat::Rfc3339),
            "unix" => Some(TimeFormat::Unix),
            "unix_ms" => Some(TimeFormat::UnixMs),
            "native" => Some(TimeFormat::Native),
            pattern if pattern.contains('%') && strftime_is_valid(pattern) => {
                Some(TimeFormat::Strftime(pattern.to_owned()))
            }
            _ => None,
        }
    }

    /// The name as written in a spec.
    pub fn name(&self) -> &str {
        match self {
            TimeFormat::Rfc3339 => "rfc3339",
            TimeFormat::Unix => "unix",
            TimeFormat::UnixMs => "unix_ms",
            TimeFormat::Strftime(p) => p,
            TimeFormat::Native => "native",
        }
    }

    /// The value to bind for the instant `t`.
    pub fn bind(&self, t: DateTime<Utc>) -> Value {
        match self {
            TimeFormat::Rfc3339 => Value::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            TimeFormat::Unix => Value::Int(t.timestamp()),
            TimeFormat::UnixMs => Value::Int(t.timestamp_millis()),
            TimeFormat::Strftime(p) => Value::Text(t.format(p).to_string()),
            TimeFormat::Native => Value::TimestampTz(t),
        }
    }

    /// Reads a column value written in this format; `None` when it does not match (which is
    /// what `check` warns about). NULL is not a mismatch and also gives `None`.
    pub fn parse_value(&self, v: &Value) -> Option<DateTime<Utc>> {
        match (self, v) {
            (TimeFormat::Rfc3339, Value::Text(s)) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            (TimeFormat::Unix, Value::Int(i)) => Utc.timestamp_opt(*i, 0).single(),
            (TimeFormat::UnixMs, Value::Int(i)) => Utc.timestamp_millis_opt(*i).single(),
            (TimeFormat::Strftime(p), Value::Text(s)) => NaiveDateTime::parse_from_str(s, p)
                .ok()
                .map(|n| n.and_utc())
                .or_else(|| {
                    chrono::NaiveDate::parse_from_str(s, p)
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|n| n.and_utc())
                }),
            (TimeFormat::Native, Value::TimestampTz(t)) => Some(*t),
            (TimeFormat::Native, Value::Timestamp(t)) => Some(t.and_utc()),
            _ => None,
        }
    }

    /// The formats worth suggesting when this one finds no rows.
    pub fn alternatives(&self) -> Vec<TimeFormat> {
        [
            TimeFormat::Rfc3339,
            TimeFormat::Unix,
            TimeFormat::UnixMs,
            TimeFormat::Strftime("%Y-%m-%d %H:%M:%S".to_owned()),
        ]
        .into_iter()
        .filter(|f| f != self)
        .collect()
    }
}

fn strftime_is_valid(pattern: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    StrftimeItems::new(pattern).all(|item| !matches!(item, Item::Error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_each_format() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let cases = [
            ("rfc3339", Value::Text("2025-01-01T00:00:00Z".into())),
            ("unix", Value::Int(1_735_689_600)),
            ("unix_ms", Value::Int(1_735_689_600_000)),
            (
                "%Y-%m-%d %H:%M:%S",
                Value::Text("2025-01-01 00:00:00".into()),
            ),
        ];
        for (name, want) in cases {
            let f = TimeFormat::parse(name).unwrap();
            assert_eq!(f.bind(t), want, "{name}");
            assert_eq!(f.parse_value(&want), Some(t), "{name}");
            assert_eq!(f.name(), name);
        }
    }

    #[test]
    fn rejects_unknown_formats_and_mismatched_values() {
        assert_eq!(TimeFormat::parse("iso"), None);
        assert_eq!(TimeFormat::parse("%Q"), None);
        assert_eq!(
            TimeFormat::Unix.parse_value(&Value::Text("2025-01-01".into())),
            None
        );
        assert_eq!(TimeFormat::Rfc3339.parse_value(&Value::Int(5)), None);
        assert_eq!(TimeFormat::Rfc3339.parse_value(&Value::Null), None);
    }
}
