//! Source readiness (`source.ready`): asks the source whether a window's data is complete.
//!
//! Each system runs the query with `:start`/`:end` bound exactly as its source query binds
//! them (same placeholder rewriting, same time format), in its own `source.rs`; this module
//! dispatches and reads the answer. A ready query changes nothing in the source: it is run
//! as given, once per check, and its errors name `source.ready`.

use backfill_core::plan::Window;
use backfill_core::value::Value;

use crate::{AnySource, ConnectorError};

impl AnySource {
    /// Whether the source is ready for `window` by `ready_sql` (see [`is_ready`]).
    pub async fn ready(&self, ready_sql: &str, window: &Window) -> Result<bool, ConnectorError> {
        let value = match self {
            AnySource::Sqlite(s) => s.ready_value(ready_sql, window).await?,
            AnySource::MySql(s) => s.ready_value(ready_sql, window).await?,
            AnySource::Postgres(s) => s.ready_value(ready_sql, window).await?,
        };
        Ok(is_ready(value.as_ref()))
    }
}

/// The answer of a ready query: true, or a number other than zero, means ready; false, zero,
/// NULL, no row, and anything else (text `"t"`, `"true"`, `"yes"` and numbers in text
/// excepted) mean not yet.
pub fn is_ready(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::Int(n)) => *n != 0,
        Some(Value::Float(f)) => *f != 0.0 && !f.is_nan(),
        Some(Value::Decimal(d)) => d.chars().any(|c| c.is_ascii_digit() && c != '0'),
        Some(Value::Text(t)) => {
            let t = t.trim().to_ascii_lowercase();
            matches!(t.as_str(), "t" | "true" | "yes" | "y")
                || t.parse::<f64>().is_ok_and(|f| f != 0.0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let yes = [
            Value::Bool(true),
            Value::Int(3),
            Value::Int(-1),
            Value::Decimal("0.010".into()),
            Value::Text("true".into()),
            Value::Text(" 2 ".into()),
        ];
        let no = [
            Value::Bool(false),
            Value::Int(0),
            Value::Decimal("0.000".into()),
            Value::Null,
            Value::Text("f".into()),
            Value::Text(String::new()),
        ];
        for v in &yes {
            assert!(is_ready(Some(v)), "{v:?}");
        }
        for v in &no {
            assert!(!is_ready(Some(v)), "{v:?}");
        }
        assert!(!is_ready(None));
    }
}
