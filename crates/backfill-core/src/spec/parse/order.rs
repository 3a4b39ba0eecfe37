//! `limits.order`: a named order, or a priority list of windows checked against the scope.

use std::ops::Range;

use chrono_tz::Tz;
use toml::de::DeValue;

use crate::order::{Order, PriorityRange};
use crate::plan::{Scope, Window};
use crate::spec::schema::suggest;

use super::walker::{Table, Value, Walker, kind};

/// What `limits.order` accepts, for hints.
const NAMES: &str = "`oldest_first`, `newest_first`, `largest_first`, or a priority list such \
                     as `[\"2025-12-24\", \"2025-12-20..2025-12-23\"]`";

/// `limits.order`: a name, or a priority list of windows read in the scope's zone. A priority
/// item of the other kind than the scope is an error; one that covers no partition of the
/// scope is a warning.
pub(super) fn order(w: &mut Walker<'_>, t: &Table<'_>, scope: Option<&Scope>) -> Option<Order> {
    let v = t.get("order")?;
    let items = match v.get_ref() {
        DeValue::String(s) => return order_name(w, s, v.span()),
        DeValue::Array(items) => items,
        other => {
            w.error(
                "limits.order",
                Some(v.span()),
                format!(
                    "expected a string or an array of windows, found {}",
                    kind(other)
                ),
            )
            .hint = Some(format!("use {NAMES}"));
            return None;
        }
    };
    if items.is_empty() {
        w.error("limits.order", Some(v.span()), "the priority list is empty")
            .hint = Some(format!("use {NAMES}"));
        return None;
    }
    let tz = match scope {
        Some(Scope::Time { timezone, .. }) => *timezone,
        _ => Tz::UTC,
    };
    let mut ranges = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match priority_item(w, &format!("limits.order[{i}]"), item, tz, scope) {
            Some(range) => ranges.push(range),
            None => ok = false,
        }
    }
    ok.then_some(Order::Priority(ranges))
}

/// A named order (`oldest_first`, …), with a suggestion for a near miss.
fn order_name(w: &mut Walker<'_>, s: &str, span: Range<usize>) -> Option<Order> {
    match Order::parse_name(s) {
        Ok(order) => Some(order),
        Err(msg) => {
            let known = ["oldest_first", "newest_first", "largest_first"];
            let close = suggest(s, &known).or_else(|| {
                known
                    .iter()
                    .find(|k| !s.is_empty() && k.starts_with(s))
                    .map(|k| (*k).to_owned())
            });
            let hint = match close {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("use {NAMES}"),
            };
            w.error("limits.order", Some(span), msg).hint = Some(hint);
            None
        }
    }
}

/// One window of a priority list at `path`: `None` (with an error) when it is not a window or
/// is of the other kind than the scope; a window outside the scope is only a warning.
fn priority_item(
    w: &mut Walker<'_>,
    path: &str,
    item: &Value<'_>,
    tz: Tz,
    scope: Option<&Scope>,
) -> Option<PriorityRange> {
    let DeValue::String(text) = item.get_ref() else {
        w.error(
            path,
            Some(item.span()),
            format!("expected a window string, found {}", kind(item.get_ref())),
        )
        .hint = Some(
            "e.g. `\"2025-12-24\"`, `\"2025-12-20..2025-12-23\"` or `\"1000..2000\"`".to_owned(),
        );
        return None;
    };
    let range = match PriorityRange::parse(text, tz) {
        Ok(r) => r,
        Err(msg) => {
            w.error(path, Some(item.span()), msg).hint = Some(
                "a date, an RFC 3339 instant, `START..END` of those, or a key range `1000..2000`"
                    .to_owned(),
            );
            return None;
        }
    };
    let Some(scope) = scope else {
        return Some(range);
    };
    let scope_is_time = match scope {
        Scope::Time { .. } => true,
        Scope::Key { .. } => false,
        Scope::List(list) => list.iter().any(|w| matches!(w, Window::Time { .. })),
    };
    let range_is_time = matches!(range.window, Window::Time { .. });
    if scope_is_time != range_is_time {
        let (is, scope_kind) = if range_is_time {
            ("a time", "key")
        } else {
            ("a key", "time")
        };
        w.error(
            path,
            Some(item.span()),
            format!("`{text}` is {is} window but the scope is a {scope_kind} scope"),
        )
        .hint = Some(if scope_is_time {
            "use dates or instants, e.g. `2025-12-24` or `2025-12-20..2025-12-23`".to_owned()
        } else {
            "use keys, e.g. `1000..2000`".to_owned()
        });
        return None;
    }
    let covered = match scope {
        Scope::Time { start, end, .. } => range.overlaps(&Window::Time {
            start: *start,
            end: *end,
        }),
        Scope::Key { from, to, .. } => range.overlaps(&Window::Key {
            start: *from,
            end: *to,
        }),
        Scope::List(list) => list.iter().any(|win| range.overlaps(win)),
    };
    if !covered {
        w.warn(
            path,
            Some(item.span()),
            format!("`{text}` covers no partition of the scope"),
        )
        .hint = Some("it has no effect; compare it with `[scope]`".to_owned());
    }
    Some(range)
}
