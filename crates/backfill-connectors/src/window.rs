//! Window bounds as bound values, shared by every system.
//!
//! Invariant: `:start` and `:end` are the only named parameters a user statement may use, and
//! they are always bound (never pasted): time windows through the spec's [`TimeFormat`], key
//! windows as integers.

use backfill_core::plan::Window;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::Value;

use crate::ConnectorError;

/// The inclusive start and exclusive end of `window` as values to bind.
pub(crate) fn bounds(window: &Window, format: &TimeFormat) -> [Value; 2] {
    match window {
        Window::Time { start, end } => [format.bind(*start), format.bind(*end)],
        Window::Key { start, end } => [Value::Int(*start), Value::Int(*end)],
    }
}

/// Refuses a statement naming a parameter other than `:start` and `:end`.
pub(crate) fn check_names(names: &[String], what: &str) -> Result<(), ConnectorError> {
    match names
        .iter()
        .find(|n| n.as_str() != "start" && n.as_str() != "end")
    {
        None => Ok(()),
        Some(other) => Err(ConnectorError::Data {
            message: format!(
                "{what} uses the parameter `:{other}`; only `:start` and `:end` are bound"
            ),
        }),
    }
}

/// One value per parameter name (as returned by `params::rewrite`), in placeholder order.
pub(crate) fn named_values(names: &[String], window: &Window, format: &TimeFormat) -> Vec<Value> {
    let [start, end] = bounds(window, format);
    names
        .iter()
        .map(|n| {
            if n == "start" {
                start.clone()
            } else {
                end.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn binds_bounds_by_name() {
        let w = Window::Time {
            start: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2025, 1, 2, 0, 0, 0).unwrap(),
        };
        let names = vec!["end".to_owned(), "start".to_owned()];
        assert_eq!(
            named_values(&names, &w, &TimeFormat::Unix),
            [Value::Int(1_735_776_000), Value::Int(1_735_689_600)]
        );
        let k = Window::Key { start: 5, end: 9 };
        assert_eq!(
            bounds(&k, &TimeFormat::Rfc3339),
            [Value::Int(5), Value::Int(9)]
        );
        assert!(check_names(&names, "query").is_ok());
        let err = check_names(&["day".to_owned()], "source query").unwrap_err();
        assert!(err.to_string().contains(":day"), "{err}");
    }
}
