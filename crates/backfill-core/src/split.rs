//! Splitting skewed partitions (failure mode "backfill stalls on a few partitions").
//!
//! A partition whose estimated rows exceed `limits.split_rows`, or which runs more than
//! `limits.split_slow` times the median partition time, is split into children: equal slices
//! of its window that other workers take. Pure: the engine measures, this module decides and
//! cuts.
//!
//! Invariants:
//! - The children's windows cover the parent's window exactly, in order, with no overlap and no
//!   hole (property-tested), so splitting never loses or duplicates a row.
//! - Child ids are derived from the parent's id and the slice number (`<parent>.<n>`, from 1),
//!   so a split of the same partition into the same number of parts gives the same ids.
//! - A window is never cut finer than one second (time) or one key.

use std::time::Duration;

use chrono::TimeDelta;

use crate::plan::{Partition, Window};

/// Most children one split makes.
pub const MAX_PARTS: u32 = 64;

/// Finished partitions needed before "slow" means anything.
pub const MIN_SAMPLES: usize = 3;

/// When to split partitions; both triggers are off unless the spec sets them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SplitPolicy {
    /// Split a partition before it starts when its estimated rows exceed this.
    pub rows: Option<u64>,
    /// Split a running partition once it has run this many times the median time of the
    /// partitions finished so far (at least [`MIN_SAMPLES`] of them).
    pub slow_factor: Option<f64>,
}

impl SplitPolicy {
    /// True when neither trigger is set.
    pub fn is_off(&self) -> bool {
        self.rows.is_none() && self.slow_factor.is_none()
    }

    /// How many parts a partition of `estimated_rows` should become, if it must be split:
    /// `ceil(estimated / rows)`, between 2 and [`MAX_PARTS`].
    pub fn parts_for_estimate(&self, estimated_rows: u64) -> Option<u32> {
        let limit = self.rows?.max(1);
        (estimated_rows > limit).then(|| {
            let parts = estimated_rows.div_ceil(limit);
            u32::try_from(parts)
                .unwrap_or(MAX_PARTS)
                .clamp(2, MAX_PARTS)
        })
    }

    /// Whether a partition running for `elapsed` is slow against `finished` (the durations of
    /// partitions finished so far).
    pub fn is_slow(&self, elapsed: Duration, finished: &[Duration]) -> bool {
        let Some(factor) = self.slow_factor else {
            return false;
        };
        if finished.len() < MIN_SAMPLES {
            return false;
        }
        let Some(median) = median(finished) else {
            return false;
        };
        // A median of a few milliseconds would split everything: at least one second.
        elapsed.as_secs_f64() > factor * median.as_secs_f64().max(1.0)
    }
}

/// The median of `times` (the upper one of an even count); `None` when there are none.
pub fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// `window` cut into at most `parts` equal slices (fewer when the window is shorter than
/// `parts` seconds or keys); a single slice means it cannot be split.
pub fn split_window(window: &Window, parts: u32) -> Vec<Window> {
    let parts = i64::from(parts.clamp(1, MAX_PARTS));
    match *window {
        Window::Time { start, end } => {
            let span = (end - start).num_seconds();
            let parts = parts.min(span.max(1));
            let step = (end - start) / i32::try_from(parts).unwrap_or(1);
            let step = TimeDelta::seconds(step.num_seconds().max(1));
            (0..parts)
                .map(|i| Window::Time {
                    start: start + step * i32::try_from(i).unwrap_or(0),
                    end: if i == parts - 1 {
                        end
                    } else {
                        start + step * i32::try_from(i + 1).unwrap_or(0)
                    },
                })
                .collect()
        }
        Window::Key { start, end } => {
            let span = end.saturating_sub(start);
            let parts = parts.min(span.max(1));
            let step = (span / parts).max(1);
            (0..parts)
                .map(|i| Window::Key {
                    start: start + step * i,
                    end: if i == parts - 1 {
                        end
                    } else {
                        start + step * (i + 1)
                    },
                })
                .collect()
        }
    }
}

/// The children of `parent` for `windows` (from [`split_window`]): ids `<parent>.<n>`, plan
/// index `first_index + n - 1`.
pub fn children(parent: &Partition, windows: &[Window], first_index: usize) -> Vec<Partition> {
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| Partition {
            id: format!("{}.{}", parent.id, i + 1),
            index: first_index + i,
            window: *w,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn covers_exactly(window: &Window, slices: &[Window]) -> bool {
        match (window, slices.first(), slices.last()) {
            (
                Window::Time { start, end },
                Some(Window::Time { start: s, .. }),
                Some(Window::Time { end: e, .. }),
            ) => {
                s == start
                    && e == end
                    && slices.windows(2).all(|p| match (p[0], p[1]) {
                        (
                            Window::Time { end: a, start: s0 },
                            Window::Time { start: b, end: e1 },
                        ) => a == b && s0 < a && b < e1,
                        _ => false,
                    })
            }
            (
                Window::Key { start, end },
                Some(Window::Key { start: s, .. }),
                Some(Window::Key { end: e, .. }),
            ) => {
                s == start
                    && e == end
                    && slices.windows(2).all(|p| match (p[0], p[1]) {
                        (Window::Key { end: a, start: s0 }, Window::Key { start: b, end: e1 }) => {
                            a == b && s0 < a && b < e1
                        }
                        _ => false,
                    })
            }
            _ => false,
        }
    }

    #[test]
    fn a_day_splits_into_equal_hours() {
        let start = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let day = Window::Time {
            start,
            end: start + TimeDelta::days(1),
        };
        let slices = split_window(&day, 4);
        assert_eq!(slices.len(), 4);
        assert_eq!(
            slices[1],
            Window::Time {
                start: start + TimeDelta::hours(6),
                end: start + TimeDelta::hours(12)
            }
        );
        assert!(covers_exactly(&day, &slices));
        let parent = Partition {
            id: "p7".into(),
            index: 7,
            window: day,
        };
        let kids = children(&parent, &slices, 365);
        assert_eq!(kids[0].id, "p7.1");
        assert_eq!(kids[3].id, "p7.4");
        assert_eq!(kids[3].index, 368);
    }

    #[test]
    fn tiny_windows_are_not_cut_below_one_unit() {
        assert_eq!(split_window(&Window::Key { start: 5, end: 7 }, 8).len(), 2);
        assert_eq!(split_window(&Window::Key { start: 5, end: 6 }, 8).len(), 1);
        let start = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let one_second = Window::Time {
            start,
            end: start + TimeDelta::seconds(1),
        };
        assert_eq!(split_window(&one_second, 4), vec![one_second]);
    }

    #[test]
    fn estimates_and_slowness_decide_as_documented() {
        let policy = SplitPolicy {
            rows: Some(1000),
            slow_factor: Some(4.0),
        };
        assert_eq!(policy.parts_for_estimate(1000), None);
        assert_eq!(policy.parts_for_estimate(1001), Some(2));
        assert_eq!(policy.parts_for_estimate(30_000), Some(30));
        assert_eq!(policy.parts_for_estimate(10_000_000), Some(MAX_PARTS));
        let s = Duration::from_secs;
        assert!(!policy.is_slow(s(100), &[s(2), s(2)]), "too few samples");
        assert!(!policy.is_slow(s(8), &[s(2), s(2), s(3)]));
        assert!(policy.is_slow(s(13), &[s(2), s(3), s(3)]));
        // Sub-second medians count as one second.
        assert!(!policy.is_slow(Duration::from_millis(3500), &[Duration::from_millis(5); 5]));
        assert!(SplitPolicy::default().is_off());
        assert!(!SplitPolicy::default().is_slow(s(1000), &[s(1); 10]));
    }

    proptest! {
        #[test]
        fn slices_cover_the_window_exactly(start in -1_000_000i64..1_000_000, len in 1i64..10_000_000, parts in 1u32..80) {
            let window = Window::Key { start, end: start + len };
            let slices = split_window(&window, parts);
            prop_assert!(!slices.is_empty() && slices.len() <= parts.clamp(1, MAX_PARTS) as usize);
            prop_assert!(covers_exactly(&window, &slices) || slices == vec![window]);
            let secs = len % 400_000 + 1;
            let t0 = Utc.timestamp_opt(1_700_000_000 + start, 0).unwrap();
            let tw = Window::Time { start: t0, end: t0 + TimeDelta::seconds(secs) };
            let ts = split_window(&tw, parts);
            prop_assert!(covers_exactly(&tw, &ts) || ts == vec![tw]);
        }
    }
}
