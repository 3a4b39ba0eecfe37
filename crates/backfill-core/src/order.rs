//! The order partitions run in (`limits.order`): oldest or newest first, largest first, or an
//! explicit priority list of windows, so the partitions that matter most finish first.
//!
//! Pure and deterministic: the same partitions, order and estimates always give the same
//! sequence. Invariant: [`order_partitions`] returns a permutation of the partition indices
//! (every partition exactly once), whatever the order and the estimates.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;

use crate::plan::{Partition, Window};
use crate::run_window::local_instant;

/// The order partitions are handed to workers in. The default is [`Order::OldestFirst`].
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Order {
    /// By window start, earliest first (the plan's order).
    #[default]
    OldestFirst,
    /// By window start, latest first.
    NewestFirst,
    /// By estimated rows, largest first (the long tail starts early); partitions without an
    /// estimate follow, oldest first.
    LargestFirst,
    /// Partitions overlapping the first range first, then the second…, then the rest; oldest
    /// first within each group.
    Priority(Vec<PriorityRange>),
}

/// One item of a priority list, with the text it was written as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityRange {
    /// The half-open window the item covers; a partition is in the item's group when their
    /// windows overlap.
    pub window: Window,
    /// The item as written in the spec.
    pub text: String,
}

impl PriorityRange {
    /// Parses one priority item. `tz` is the zone dates and local date-times are read in (the
    /// scope's). Forms:
    /// - a date `2025-12-24`: that whole day;
    /// - an RFC 3339 instant `2025-12-24T10:00:00Z`: the partition containing it;
    /// - a range `START..END` of those: from the start of START to END, where a date END
    ///   includes that whole day (`2025-12-20..2025-12-23` is four days) and an instant END
    ///   is excluded;
    /// - an integer key `1500`, or a key range `1000..2000`: keys `[1000, 2000)`.
    ///
    /// An empty range (END not after START) is an error.
    pub fn parse(text: &str, tz: Tz) -> Result<PriorityRange, String> {
        let t = text.trim();
        let window = match t.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (a.trim(), b.trim());
                if let (Ok(a), Ok(b)) = (parse_key(a), parse_key(b)) {
                    Window::Key { start: a, end: b }
                } else {
                    let start = time_item(a, tz)?.0;
                    let (b_start, b_end) = time_item(b, tz)?;
                    let end = if is_date(b) { b_end } else { b_start };
                    Window::Time { start, end }
                }
            }
            None => match parse_key(t) {
                Ok(k) => Window::Key {
                    start: k,
                    end: k.saturating_add(1),
                },
                Err(_) => {
                    let (start, end) = time_item(t, tz)?;
                    Window::Time { start, end }
                }
            },
        };
        if window.is_empty() {
            return Err(format!("`{t}` is empty: its end is not after its start"));
        }
        Ok(PriorityRange {
            window,
            text: t.to_owned(),
        })
    }

    /// True when the range and `window` share at least one instant or key.
    pub fn overlaps(&self, window: &Window) -> bool {
        match (&self.window, window) {
            (Window::Time { start: a, end: b }, Window::Time { start: c, end: d }) => {
                a < d && c < b
            }
            (Window::Key { start: a, end: b }, Window::Key { start: c, end: d }) => a < d && c < b,
            _ => false,
        }
    }
}

fn parse_key(s: &str) -> Result<i64, std::num::ParseIntError> {
    s.replace('_', "").parse::<i64>()
}

fn is_date(s: &str) -> bool {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// A date as its whole day `[midnight, next midnight)` in `tz`, or an instant as the
/// one-nanosecond window that holds it.
fn time_item(s: &str, tz: Tz) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let next = day
            .checked_add_days(Days::new(1))
            .ok_or_else(|| format!("`{s}` is the last date there is; its day has no end"))?;
        let midnight = |d: NaiveDate| local_instant(d.and_time(NaiveTime::MIN), tz);
        return Ok((midnight(day), midnight(next)));
    }
    match crate::spec::parse_instant(s, tz) {
        Some(t) => {
            let after = t
                .checked_add_signed(chrono::TimeDelta::nanoseconds(1))
                .ok_or_else(|| format!("`{s}` is at the end of time"))?;
            Ok((t, after))
        }
        None => Err(format!(
            "`{s}` is not a date (`2025-12-24`), an instant (`2025-12-24T10:00:00Z`), a range \
             `START..END` of those, or a key range (`1000..2000`)"
        )),
    }
}

impl Order {
    /// Parses `oldest_first`, `newest_first` or `largest_first`; the error lists the choices.
    pub fn parse_name(name: &str) -> Result<Order, String> {
        match name {
            "oldest_first" => Ok(Order::OldestFirst),
            "newest_first" => Ok(Order::NewestFirst),
            "largest_first" => Ok(Order::LargestFirst),
            other => Err(format!("unknown order `{other}`")),
        }
    }

    /// One line for `status` and `plan`: `oldest first`, `newest first`, `largest first`, or
    /// `priority: 2025-12-24, 2025-12-20..2025-12-23, then the rest oldest first`.
    pub fn describe(&self) -> String {
        match self {
            Order::OldestFirst => "oldest first".to_owned(),
            Order::NewestFirst => "newest first".to_owned(),
            Order::LargestFirst => "largest first".to_owned(),
            Order::Priority(ranges) => {
                let items: Vec<&str> = ranges.iter().map(|r| r.text.as_str()).collect();
                format!("priority: {}, then the rest oldest first", items.join(", "))
            }
        }
    }
}

/// The order to run `partitions` in, as indices into `partitions`. `estimates[i]` is the
/// estimated rows of `partitions[i]` (`None`, or a missing entry, when unknown).
///
/// Guarantees: a permutation of `0..partitions.len()`; stable (ties keep the order of the
/// input); within every group "oldest" means by window, earliest first.
/// - `OldestFirst` / `NewestFirst`: by window.
/// - `LargestFirst`: known estimates, largest first (ties oldest first); then the unknown ones
///   oldest first.
/// - `Priority`: partitions overlapping the first range, then those overlapping the second
///   (and not the first)…, then the rest; oldest first within each group.
pub fn order_partitions(
    partitions: &[Partition],
    order: &Order,
    estimates: &[Option<u64>],
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..partitions.len()).collect();
    let window = |i: usize| &partitions[i].window;
    match order {
        Order::OldestFirst => idx.sort_by(|&a, &b| window(a).cmp(window(b))),
        Order::NewestFirst => idx.sort_by(|&a, &b| window(b).cmp(window(a))),
        Order::LargestFirst => {
            let estimate = |i: usize| estimates.get(i).copied().flatten();
            idx.sort_by(|&a, &b| match (estimate(a), estimate(b)) {
                (Some(x), Some(y)) => y.cmp(&x).then_with(|| window(a).cmp(window(b))),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => window(a).cmp(window(b)),
            });
        }
        Order::Priority(ranges) => {
            let group = |i: usize| {
                ranges
                    .iter()
                    .position(|r| r.overlaps(window(i)))
                    .unwrap_or(ranges.len())
            };
            idx.sort_by_cached_key(|&i| (group(i), *window(i)));
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::plan::{Scope, Step, partitions};

    #[test]
    fn instants_at_the_ends_of_time_do_not_overflow() {
        let got: Vec<String> = [
            "+262142-12-31T23:59:59",
            "+262142-12-31",
            "-262143-01-01",
            "9999-12-31T23:59:59Z..+262142-12-31T23:59:59.999999999",
        ]
        .iter()
        .map(|t| match PriorityRange::parse(t, Tz::UTC) {
            Ok(r) => r.window.to_string(),
            Err(e) => e,
        })
        .collect();
        expect_test::expect![[r#"
            [+262142-12-31T23:59:59Z, +262142-12-31T23:59:59.000000001Z)
            `+262142-12-31` is the last date there is; its day has no end
            [-262143-01-01T00:00:00Z, -262143-01-02T00:00:00Z)
            `+262142-12-31T23:59:59.999999999` is not a date (`2025-12-24`), an instant (`2025-12-24T10:00:00Z`), a range `START..END` of those, or a key range (`1000..2000`)"#]].assert_eq(&got.join("\n"));
    }

    fn days(n: u32) -> Vec<Partition> {
        let start = DateTime::parse_from_rfc3339("2025-12-18T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        partitions(&Scope::Time {
            start,
            end: start + chrono::Duration::days(i64::from(n)),
            step: Step::Days(1),
            timezone: Tz::UTC,
        })
        .unwrap()
    }

    /// The run order as the start dates of the partitions (`12-24`).
    fn run(parts: &[Partition], order: &Order, estimates: &[Option<u64>]) -> String {
        order_partitions(parts, order, estimates)
            .into_iter()
            .map(|i| match parts[i].window {
                Window::Time { start, .. } => start.format("%m-%d").to_string(),
                Window::Key { start, .. } => start.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn priority(items: &[&str]) -> Order {
        Order::Priority(
            items
                .iter()
                .map(|t| PriorityRange::parse(t, Tz::UTC).unwrap())
                .collect(),
        )
    }

    #[test]
    fn simple_orders() {
        let p = days(5);
        assert_eq!(
            run(&p, &Order::OldestFirst, &[]),
            "12-18 12-19 12-20 12-21 12-22"
        );
        assert_eq!(
            run(&p, &Order::NewestFirst, &[]),
            "12-22 12-21 12-20 12-19 12-18"
        );
        let est = [Some(10), None, Some(30), Some(10), None];
        assert_eq!(
            run(&p, &Order::LargestFirst, &est),
            "12-20 12-18 12-21 12-19 12-22"
        );
        // Missing estimates count as unknown.
        assert_eq!(
            run(&p, &Order::LargestFirst, &[None, Some(1)]),
            "12-19 12-18 12-20 12-21 12-22"
        );
    }

    #[test]
    fn priority_groups_then_the_rest() {
        let p = days(10); // 12-18 … 12-27
        let order = priority(&["2025-12-24", "2025-12-20..2025-12-23"]);
        assert_eq!(
            run(&p, &order, &[]),
            "12-24 12-20 12-21 12-22 12-23 12-18 12-19 12-25 12-26 12-27"
        );
        assert_eq!(
            order.describe(),
            "priority: 2025-12-24, 2025-12-20..2025-12-23, then the rest oldest first"
        );
        // An instant picks the partition holding it; an instant END is excluded.
        let order = priority(&[
            "2025-12-26T12:00:00Z",
            "2025-12-19T00:00:00Z..2025-12-21T00:00:00Z",
        ]);
        assert_eq!(
            run(&p, &order, &[]),
            "12-26 12-19 12-20 12-18 12-21 12-22 12-23 12-24 12-25 12-27"
        );
        // Keys.
        let keys = partitions(&Scope::Key {
            from: 0,
            to: 5000,
            chunk: 1000,
        })
        .unwrap();
        assert_eq!(
            run(&keys, &priority(&["3500", "1000..2000"]), &[]),
            "3000 1000 0 2000 4000"
        );
    }

    #[test]
    fn priority_items_parse() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let r = PriorityRange::parse("2025-12-24", paris).unwrap();
        assert_eq!(
            r.window.to_string(),
            "[2025-12-23T23:00:00Z, 2025-12-24T23:00:00Z)"
        );
        let errors: Vec<String> = [
            "2025-12-24..2025-12-23",
            "yesterday",
            "5..5",
            "2025-12-24..x",
        ]
        .iter()
        .map(|t| PriorityRange::parse(t, Tz::UTC).unwrap_err())
        .collect();
        expect_test::expect![[r#"
            `2025-12-24..2025-12-23` is empty: its end is not after its start
            `yesterday` is not a date (`2025-12-24`), an instant (`2025-12-24T10:00:00Z`), a range `START..END` of those, or a key range (`1000..2000`)
            `5..5` is empty: its end is not after its start
            `x` is not a date (`2025-12-24`), an instant (`2025-12-24T10:00:00Z`), a range `START..END` of those, or a key range (`1000..2000`)"#]]
        .assert_eq(&errors.join("\n"));
        assert_eq!(Order::parse_name("largest_first"), Ok(Order::LargestFirst));
        assert!(Order::parse_name("random").is_err());
        assert_eq!(Order::default().describe(), "oldest first");
    }

    proptest! {
        /// Every order is a permutation, whatever the estimates.
        #[test]
        fn always_a_permutation(
            n in 0u32..40,
            which in 0usize..4,
            estimates in proptest::collection::vec(proptest::option::of(0u64..5), 0..40),
            first in 0u32..40,
            len in 1u32..10,
        ) {
            let p = days(n);
            let item = format!(
                "{}..{}",
                (NaiveDate::from_ymd_opt(2025, 12, 18).unwrap() + Days::new(first.into())),
                (NaiveDate::from_ymd_opt(2025, 12, 18).unwrap() + Days::new((first + len).into())),
            );
            let order = [Order::OldestFirst, Order::NewestFirst, Order::LargestFirst, priority(&[&item])]
                [which].clone();
            let mut got = order_partitions(&p, &order, &estimates);
            got.sort_unstable();
            prop_assert_eq!(got, (0..p.len()).collect::<Vec<_>>());
        }
    }
}
