//! Run windows: the daily wall-clock hours a run may work in (`limits.window`).
//!
//! Pure: the engine passes `now` and gets back whether the window is open and the next edge
//! (when it closes, or when it opens), then sleeps until that edge itself.
//!
//! Invariants (property-tested): the answer only changes at the edge it names, i.e. just before
//! the returned edge the state is the same and at the edge it flips. Wall times are read in the
//! window's zone on each day, so `22:00-06:00 Europe/Paris` stays 22:00 local across DST. On a
//! DST day, a wall time that does not exist (inside the spring-forward gap) is the first instant
//! after the gap, and a repeated one (autumn fold) is its earlier instant.

use std::fmt;

use chrono::{DateTime, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The daily hours a run may work, `[start, end)` in wall time of a zone; `end` before `start`
/// crosses midnight (`22:00-06:00`). `start != end` always holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunWindow {
    start: NaiveTime,
    end: NaiveTime,
    tz: Tz,
    /// Whether the zone was written (so `Display` gives back the text as written).
    zone_written: bool,
}

/// Whether a run may work now, and until or from when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Inside the window until `closes_at` (exclusive).
    Open {
        /// The first instant outside the window.
        closes_at: DateTime<Utc>,
    },
    /// Outside the window until `opens_at`.
    Closed {
        /// The first instant inside the window.
        opens_at: DateTime<Utc>,
    },
}

impl RunWindow {
    /// Parses `HH:MM-HH:MM` (seconds allowed: `HH:MM:SS`), optionally followed by a space and
    /// an IANA zone (`22:00-06:00 Europe/Paris`); UTC when no zone is written. Errors say what
    /// is wrong; a window that starts where it ends is refused (it would mean "always" or
    /// "never").
    pub fn parse(text: &str) -> Result<RunWindow, String> {
        let mut parts = text.split_whitespace();
        let Some(hours) = parts.next() else {
            return Err("the window is empty; write e.g. `22:00-06:00`".to_owned());
        };
        let zone = parts.next();
        if parts.next().is_some() {
            return Err(format!(
                "`{text}` has more than a time range and a zone (e.g. `22:00-06:00 Europe/Paris`)"
            ));
        }
        let Some((a, b)) = hours.split_once('-') else {
            return Err(format!("`{hours}` is not a range `HH:MM-HH:MM`"));
        };
        let start = parse_time(a)?;
        let end = parse_time(b)?;
        if start == end {
            return Err(format!(
                "the window starts and ends at {a}; remove `window` to run at any time"
            ));
        }
        let tz = match zone {
            None => Tz::UTC,
            Some(z) => z.parse::<Tz>().map_err(|_| {
                format!("unknown time zone `{z}` (use an IANA name such as `Europe/Paris`)")
            })?,
        };
        Ok(RunWindow {
            start,
            end,
            tz,
            zone_written: zone.is_some(),
        })
    }

    /// Local wall time the window opens each day.
    pub fn start(&self) -> NaiveTime {
        self.start
    }

    /// Local wall time the window closes each day (the next day when before `start`).
    pub fn end(&self) -> NaiveTime {
        self.end
    }

    /// The zone the wall times are read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Whether the window is open at `now`, with the next edge: `Open { closes_at }` with
    /// `now < closes_at`, or `Closed { opens_at }` with `now < opens_at`. The state is the
    /// same at every instant in `[now, edge)` and flips at the edge.
    pub fn state_at(&self, now: DateTime<Utc>) -> WindowState {
        let today = now.with_timezone(&self.tz).date_naive();
        // Intervals opening from two days ago (a window crossing midnight opened yesterday at
        // the earliest) to a week ahead (a window swallowed by a DST gap may skip a day).
        let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        let first = today.checked_sub_days(Days::new(2)).unwrap_or(today);
        for offset in 0..10 {
            let Some(day) = first.checked_add_days(Days::new(offset)) else {
                break;
            };
            let Some((open, close)) = self.interval(day) else {
                continue;
            };
            if open >= close {
                continue;
            }
            // Merge touching intervals: the window then never closes at that instant.
            match intervals.last_mut() {
                Some(last) if last.1 >= open => last.1 = last.1.max(close),
                _ => intervals.push((open, close)),
            }
        }
        for (open, close) in &intervals {
            if now < *open {
                return WindowState::Closed { opens_at: *open };
            }
            if now < *close {
                return WindowState::Open { closes_at: *close };
            }
        }
        // Only at the very end of chrono's range; a day later is as good an answer as any.
        WindowState::Closed {
            opens_at: now + chrono::Duration::days(1),
        }
    }

    /// The instants the window opens and closes for the opening on local `day`.
    fn interval(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let end_day = if self.end <= self.start {
            day.checked_add_days(Days::new(1))?
        } else {
            day
        };
        Some((
            local_instant(day.and_time(self.start), self.tz),
            local_instant(end_day.and_time(self.end), self.tz),
        ))
    }
}

impl fmt::Display for RunWindow {
    /// As written: `22:00-06:00`, or `22:00-06:00 Europe/Paris` when the zone was given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", show_time(self.start), show_time(self.end))?;
        if self.zone_written {
            write!(f, " {}", self.tz.name())?;
        }
        Ok(())
    }
}

fn parse_time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .map_err(|_| {
            let hint = if s.starts_with("24") {
                " (midnight is `00:00`)"
            } else {
                ""
            };
            format!("`{s}` is not a time `HH:MM`{hint}")
        })
}

fn show_time(t: NaiveTime) -> String {
    if t.format("%S").to_string() == "00" {
        t.format("%H:%M").to_string()
    } else {
        t.format("%H:%M:%S").to_string()
    }
}

/// The instant of a local wall time: the earlier one when repeated, the first instant after
/// the gap when it does not exist.
pub(crate) fn local_instant(local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return t.with_timezone(&Utc);
    }
    // Inside a gap: find the first instant whose wall time is at or past `local`. Offsets lie
    // within ±15 h, so the answer is within ±15 h of `local` read as UTC; the wall time jumps
    // over `local` exactly once there, so a binary search on whole seconds finds the jump.
    let guess = local.and_utc().timestamp();
    let mut lo = guess - 15 * 3600; // wall time < local
    let mut hi = guess + 15 * 3600; // wall time >= local
    let wall =
        |secs: i64| DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&tz).naive_local());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall(mid).is_none_or(|w| w >= local) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn show(state: WindowState) -> String {
        match state {
            WindowState::Open { closes_at } => format!("open until {}", closes_at.to_rfc3339()),
            WindowState::Closed { opens_at } => format!("closed until {}", opens_at.to_rfc3339()),
        }
    }

    fn states(window: &str, nows: &[&str]) -> String {
        let w = RunWindow::parse(window).unwrap();
        nows.iter()
            .map(|n| format!("{n}: {}", show(w.state_at(at(n)))))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn parse_and_display() {
        for text in [
            "22:00-06:00",
            "09:30-17:00 Europe/Paris",
            "00:00-00:00:30 UTC",
        ] {
            assert_eq!(RunWindow::parse(text).unwrap().to_string(), text);
        }
        let errors: Vec<String> = [
            "",
            "22:00",
            "22:00-25:00",
            "22:00-24:00",
            "06:00-06:00",
            "22:00-06:00 Mars/Olympus",
            "22:00-06:00 Europe/Paris extra",
        ]
        .iter()
        .map(|t| RunWindow::parse(t).unwrap_err())
        .collect();
        expect_test::expect![[r#"
            the window is empty; write e.g. `22:00-06:00`
            `22:00` is not a range `HH:MM-HH:MM`
            `25:00` is not a time `HH:MM`
            `24:00` is not a time `HH:MM` (midnight is `00:00`)
            the window starts and ends at 06:00; remove `window` to run at any time
            unknown time zone `Mars/Olympus` (use an IANA name such as `Europe/Paris`)
            `22:00-06:00 Europe/Paris extra` has more than a time range and a zone (e.g. `22:00-06:00 Europe/Paris`)"#]]
        .assert_eq(&errors.join("\n"));
    }

    #[test]
    fn crossing_midnight() {
        expect_test::expect![[r#"
            2026-03-10T12:00:00Z: closed until 2026-03-10T22:00:00+00:00
            2026-03-10T22:00:00Z: open until 2026-03-11T06:00:00+00:00
            2026-03-11T03:00:00Z: open until 2026-03-11T06:00:00+00:00
            2026-03-11T06:00:00Z: closed until 2026-03-11T22:00:00+00:00"#]]
        .assert_eq(&states(
            "22:00-06:00",
            &[
                "2026-03-10T12:00:00Z",
                "2026-03-10T22:00:00Z",
                "2026-03-11T03:00:00Z",
                "2026-03-11T06:00:00Z",
            ],
        ));
        expect_test::expect![[r#"
            2026-03-10T08:59:59Z: closed until 2026-03-10T09:00:00+00:00
            2026-03-10T17:00:00Z: closed until 2026-03-11T09:00:00+00:00"#]]
        .assert_eq(&states(
            "09:00-17:00",
            &["2026-03-10T08:59:59Z", "2026-03-10T17:00:00Z"],
        ));
    }

    #[test]
    fn dst_days_in_the_zone() {
        // Paris springs forward on 2026-03-29 at 02:00 (→ 03:00, 01:00 UTC) and falls back on
        // 2026-10-25 at 03:00 (→ 02:00, 01:00 UTC).
        expect_test::expect![[r#"
            2026-03-28T12:00:00Z: closed until 2026-03-28T21:00:00+00:00
            2026-03-29T00:00:00Z: open until 2026-03-29T04:00:00+00:00
            2026-10-24T12:00:00Z: closed until 2026-10-24T20:00:00+00:00
            2026-10-25T04:00:00Z: open until 2026-10-25T05:00:00+00:00"#]]
        .assert_eq(&states(
            "22:00-06:00 Europe/Paris",
            &[
                "2026-03-28T12:00:00Z",
                "2026-03-29T00:00:00Z",
                "2026-10-24T12:00:00Z",
                "2026-10-25T04:00:00Z",
            ],
        ));
        // 02:30 does not exist on 2026-03-29: the window opens when the gap ends (03:00 CEST).
        // 02:30 happens twice on 2026-10-25: the earlier one (CEST, 00:30 UTC).
        expect_test::expect![[r#"
            2026-03-28T12:00:00Z: closed until 2026-03-29T01:00:00+00:00
            2026-10-24T12:00:00Z: closed until 2026-10-25T00:30:00+00:00"#]]
        .assert_eq(&states(
            "02:30-05:00 Europe/Paris",
            &["2026-03-28T12:00:00Z", "2026-10-24T12:00:00Z"],
        ));
        // A window entirely inside the gap does not open that day.
        expect_test::expect![[r#"
            2026-03-28T12:00:00Z: closed until 2026-03-30T00:15:00+00:00"#]]
        .assert_eq(&states(
            "02:15-02:45 Europe/Paris",
            &["2026-03-28T12:00:00Z"],
        ));
    }

    const ZONES: &[&str] = &[
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Pacific/Chatham",
    ];

    proptest! {
        /// The state holds until the edge it names and flips exactly there.
        #[test]
        fn state_flips_exactly_at_the_edge(
            start in 0u32..(24 * 4),
            end in 0u32..(24 * 4),
            zone in 0..ZONES.len(),
            // 2025 to 2027: every DST change of the zones above, twice.
            now in 1_735_689_600i64..1_830_297_600,
        ) {
            prop_assume!(start != end);
            let text = format!(
                "{:02}:{:02}-{:02}:{:02} {}",
                start / 4, (start % 4) * 15, end / 4, (end % 4) * 15, ZONES[zone]
            );
            let w = RunWindow::parse(&text).unwrap();
            let now = DateTime::from_timestamp(now, 0).unwrap();
            let second = chrono::Duration::seconds(1);
            match w.state_at(now) {
                WindowState::Open { closes_at } => {
                    prop_assert!(now < closes_at);
                    prop_assert_eq!(w.state_at(closes_at - second), WindowState::Open { closes_at });
                    prop_assert!(
                        matches!(w.state_at(closes_at), WindowState::Closed { .. }),
                        "{text}: still open at {closes_at}"
                    );
                }
                WindowState::Closed { opens_at } => {
                    prop_assert!(now < opens_at);
                    prop_assert!(opens_at - now <= chrono::Duration::days(3), "{text}: {opens_at}");
                    prop_assert_eq!(w.state_at(opens_at - second), WindowState::Closed { opens_at });
                    prop_assert!(
                        matches!(w.state_at(opens_at), WindowState::Open { .. }),
                        "{text}: still closed at {opens_at}"
                    );
                }
            }
        }
    }
}
