//! Scope, partitions and the deterministic planner.
//!
//! Invariants (property-tested): a plan covers its scope exactly, with no overlap and no hole;
//! partitions are ordered by window; the same scope always gives the same partitions with the
//! same ids, so a re-plan after a crash or on another machine agrees with the stored run.
//! Calendar steps (days, weeks, months) follow the scope's time zone, so a day partition on a
//! DST change is 23 or 25 hours long; fixed steps (seconds to hours) are exact durations.

use std::fmt;

use chrono::{DateTime, Days, Months, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::normalized::NormalizedSpec;

/// A half-open unit of work `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// Instants, compared in the source through the spec's time format.
    Time {
        /// Inclusive start.
        start: DateTime<Utc>,
        /// Exclusive end.
        end: DateTime<Utc>,
    },
    /// Integer keys.
    Key {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
}

impl Window {
    /// A canonical text form, stable across versions: it is hashed into partition ids.
    pub fn canonical(&self) -> String {
        let mut text = String::new();
        self.write_canonical(&mut text);
        text
    }

    /// Appends [`Self::canonical`] to `out`, so a pass over many windows can reuse one buffer.
    pub fn write_canonical(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a `String` cannot fail.
        let _ = match self {
            Window::Time { start, end } => write!(
                out,
                "time:{}/{}",
                start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Window::Key { start, end } => write!(out, "key:{start}/{end}"),
        };
    }

    /// True when `start >= end`.
    pub fn is_empty(&self) -> bool {
        match self {
            Window::Time { start, end } => start >= end,
            Window::Key { start, end } => start >= end,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Time { start, end } => write!(
                f,
                "[{}, {})",
                start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Window::Key { start, end } => write!(f, "[{start}, {end})"),
        }
    }
}

/// One unit of work of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Stable id derived from the window alone (`p` + 16 hex digits of its hash).
    pub id: String,
    /// Position in the plan, from 0.
    pub index: usize,
    /// The window it covers.
    pub window: Window,
}

/// The id of the partition covering `window`; the same window always has the same id.
pub fn partition_id(window: &Window) -> String {
    let hash = blake3::hash(window.canonical().as_bytes());
    format!("p{}", &hash.to_hex()[..16])
}

/// How a time scope is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A fixed duration in seconds (from `15m`, `1h`, …).
    Seconds(u64),
    /// Calendar days in the scope's time zone.
    Days(u32),
    /// Calendar weeks (7 calendar days) in the scope's time zone.
    Weeks(u32),
    /// Calendar months in the scope's time zone.
    Months(u32),
}

impl Step {
    /// Parses `15m`, `1h`, `1d`, `2w`, `1mo` (also `s`, `min`, `day`, `week`, `month`, plurals).
    /// Errors say what was wrong; zero and negative sizes are errors.
    pub fn parse(s: &str) -> Result<Step, String> {
        let s = s.trim();
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if s.starts_with('-') {
            return Err("a partition size must be positive".to_owned());
        }
        let (n, unit) = s.split_at(digits_end);
        if n.is_empty() {
            return Err(format!(
                "`{s}` does not start with a number (e.g. `1h`, `1d`, `1mo`)"
            ));
        }
        let n: u32 = n.parse().map_err(|_| format!("`{n}` is too large"))?;
        if n == 0 {
            return Err("a partition size must be greater than zero".to_owned());
        }
        let secs = |mult: u64| Step::Seconds(u64::from(n) * mult);
        let step = match unit.trim() {
            "s" | "sec" | "secs" | "second" | "seconds" => secs(1),
            "m" | "min" | "mins" | "minute" | "minutes" => secs(60),
            "h" | "hr" | "hour" | "hours" => secs(3600),
            "d" | "day" | "days" => Step::Days(n),
            "w" | "week" | "weeks" => Step::Weeks(n),
            "mo" | "month" | "months" => Step::Months(n),
            "" => return Err(format!("`{s}` has no unit (use s, m, h, d, w or mo)")),
            other => return Err(format!("unknown unit `{other}` (use s, m, h, d, w or mo)")),
        };
        if step.nominal_seconds() > MAX_STEP_SECONDS {
            return Err(format!(
                "`{s}` is longer than {MAX_STEP_YEARS} years, the largest partition size"
            ));
        }
        Ok(step)
    }

    /// The step's length in seconds, with calendar units at their average length (a day is
    /// 86,400 s, a month 30.436875 days): exact for fixed steps, an estimate for calendar ones.
    pub fn nominal_seconds(&self) -> f64 {
        match *self {
            Step::Seconds(s) => s as f64,
            Step::Days(d) => f64::from(d) * 86_400.0,
            Step::Weeks(w) => f64::from(w) * 7.0 * 86_400.0,
            Step::Months(m) => f64::from(m) * 30.436_875 * 86_400.0,
        }
    }
}

/// The longest partition size [`Step::parse`] accepts, in years. Longer steps are surely typos,
/// and keeping them far inside what `chrono` can add keeps the planner's arithmetic exact.
pub const MAX_STEP_YEARS: u32 = 10_000;

/// [`MAX_STEP_YEARS`] in (average Gregorian) seconds.
const MAX_STEP_SECONDS: f64 = MAX_STEP_YEARS as f64 * 365.2425 * 86_400.0;

/// What a backfill covers.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// `[start, end)` cut into steps; calendar steps follow `timezone`.
    Time {
        /// Inclusive start.
        start: DateTime<Utc>,
        /// Exclusive end.
        end: DateTime<Utc>,
        /// Partition size.
        step: Step,
        /// Zone for calendar steps (UTC unless the spec says otherwise).
        timezone: Tz,
    },
    /// Integer keys `[from, to)` cut into chunks of `chunk` keys.
    Key {
        /// Inclusive first key.
        from: i64,
        /// Exclusive end key.
        to: i64,
        /// Keys per partition, at least 1.
        chunk: u64,
    },
    /// An explicit list of windows, planned in order of their start.
    List(Vec<Window>),
}

/// The most partitions one plan may hold; more is almost always a typo in the step.
pub const MAX_PARTITIONS: usize = 1_000_000;

/// About how many partitions `scope` makes, without planning it, in constant time: exact for
/// key scopes, lists and fixed time steps; for calendar steps (days, weeks, months) the span
/// divided by the step's average length, rounded up, which DST changes and month lengths move
/// by a partition or so. Saturates at `u64::MAX`. Used to refuse a scope too large to plan
/// before planning it.
pub fn estimated_partitions(scope: &Scope) -> u64 {
    match scope {
        Scope::Time {
            start, end, step, ..
        } => {
            if start >= end {
                return 0;
            }
            let span = (*end - *start).as_seconds_f64();
            let n = (span / step.nominal_seconds().max(1.0)).ceil();
            // `as` saturates; a NaN (impossible here) would give 0.
            n as u64
        }
        Scope::Key { from, to, chunk } => {
            let span = i128::from(*to) - i128::from(*from);
            if span <= 0 {
                return 0;
            }
            let chunk = i128::from((*chunk).max(1));
            u64::try_from((span + chunk - 1) / chunk).unwrap_or(u64::MAX)
        }
        Scope::List(list) => list.len() as u64,
    }
}

/// Why a scope cannot be planned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The scope would produce more than [`MAX_PARTITIONS`] partitions.
    #[error(
        "the scope produces more than {MAX_PARTITIONS} partitions; use a larger partition size"
    )]
    TooManyPartitions,
    /// Two windows of an explicit list overlap.
    #[error("windows {0} and {1} overlap")]
    Overlap(String, String),
}

/// A scope made ready to cut: an explicit list sorted, emptied of empty windows and checked
/// for overlaps. It cuts its windows one at a time ([`Cut::windows`], [`Cut::partitions`]),
/// so no caller needs every partition in memory at once; every pass yields the same windows.
/// It does not count them: [`Cut::count`] and [`plan`] bound the count by
/// [`MAX_PARTITIONS`].
#[derive(Clone, Debug, PartialEq)]
pub struct Cut {
    kind: CutKind,
}

#[derive(Clone, Debug, PartialEq)]
enum CutKind {
    Time {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Step,
        timezone: Tz,
    },
    Key {
        from: i64,
        to: i64,
        chunk: u64,
    },
    /// Sorted, without empty windows, no two overlapping.
    List(Vec<Window>),
}

impl Cut {
    /// Readies `scope`; fails only when two windows of an explicit list overlap.
    pub fn new(scope: &Scope) -> Result<Cut, PlanError> {
        let kind = match scope {
            Scope::Time {
                start,
                end,
                step,
                timezone,
            } => CutKind::Time {
                start: *start,
                end: *end,
                step: *step,
                timezone: *timezone,
            },
            Scope::Key { from, to, chunk } => CutKind::Key {
                from: *from,
                to: *to,
                chunk: *chunk,
            },
            Scope::List(list) => {
                let mut list: Vec<Window> =
                    list.iter().copied().filter(|w| !w.is_empty()).collect();
                list.sort();
                for pair in list.windows(2) {
                    if overlaps(&pair[0], &pair[1]) {
                        return Err(PlanError::Overlap(pair[0].to_string(), pair[1].to_string()));
                    }
                }
                CutKind::List(list)
            }
        };
        Ok(Cut { kind })
    }

    /// The windows in plan order, cut as they are read (constant memory for time and key
    /// scopes). Finite: every window is at least one second or one key long and none goes
    /// past the scope's end.
    pub fn windows(&self) -> Windows<'_> {
        let inner = match &self.kind {
            CutKind::Time {
                start,
                end,
                step,
                timezone,
            } => WindowsInner::Time {
                cursor: *start,
                end: *end,
                step: *step,
                tz: *timezone,
                // Calendar steps advance the local start time, so every boundary is the same
                // local wall time (midnight stays midnight across DST changes).
                local_start: start.with_timezone(timezone).naive_local(),
                n: 0,
            },
            CutKind::Key { from, to, chunk } => WindowsInner::Key {
                cursor: *from,
                to: *to,
                chunk: i64::try_from((*chunk).max(1)).unwrap_or(i64::MAX),
            },
            CutKind::List(list) => WindowsInner::List(list.iter()),
        };
        Windows { inner }
    }

    /// The partitions in plan order (index from 0, id from the window), cut as they are read.
    pub fn partitions(&self) -> Partitions<'_> {
        Partitions {
            windows: self.windows(),
            index: 0,
        }
    }

    /// How many partitions it cuts; [`PlanError::TooManyPartitions`] past [`MAX_PARTITIONS`]
    /// (it stops counting there).
    pub fn count(&self) -> Result<usize, PlanError> {
        let n = self.windows().take(MAX_PARTITIONS + 1).count();
        if n > MAX_PARTITIONS {
            return Err(PlanError::TooManyPartitions);
        }
        Ok(n)
    }
}

/// The windows of a [`Cut`], in plan order (see [`Cut::windows`]).
#[derive(Clone, Debug)]
pub struct Windows<'a> {
    inner: WindowsInner<'a>,
}

#[derive(Clone, Debug)]
enum WindowsInner<'a> {
    Time {
        cursor: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Step,
        tz: Tz,
        local_start: NaiveDateTime,
        /// Steps taken from the start (calendar steps are counted from it, not chained).
        n: u32,
    },
    Key {
        cursor: i64,
        to: i64,
        chunk: i64,
    },
    List(std::slice::Iter<'a, Window>),
}

impl Iterator for Windows<'_> {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        match &mut self.inner {
            WindowsInner::Time {
                cursor,
                end,
                step,
                tz,
                local_start,
                n,
            } => {
                if *cursor >= *end {
                    return None;
                }
                *n = n.saturating_add(1);
                let next = time_step(*cursor, *local_start, *step, *tz, *n);
                let at_least = cursor
                    .checked_add_signed(TimeDelta::seconds(1))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                let next = next.min(*end).max(at_least);
                let window = Window::Time {
                    start: *cursor,
                    end: next.min(*end),
                };
                *cursor = next;
                Some(window)
            }
            WindowsInner::Key { cursor, to, chunk } => {
                if *cursor >= *to {
                    return None;
                }
                let next = cursor.checked_add(*chunk).map_or(*to, |n| n.min(*to));
                let window = Window::Key {
                    start: *cursor,
                    end: next,
                };
                *cursor = next;
                Some(window)
            }
            WindowsInner::List(list) => list.next().copied(),
        }
    }
}

/// The end of the `n`th step from the start (`cursor` is the end of the previous one). Every
/// sum is checked: a step past the end of time ends at the far future, which the caller
/// clamps to the scope's end.
fn time_step(
    cursor: DateTime<Utc>,
    local_start: NaiveDateTime,
    step: Step,
    tz: Tz,
    n: u32,
) -> DateTime<Utc> {
    match step {
        Step::Seconds(secs) => i64::try_from(secs)
            .ok()
            .and_then(TimeDelta::try_seconds)
            .and_then(|d| cursor.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        Step::Days(d) => local_to_utc(
            local_start.checked_add_days(Days::new(u64::from(d) * u64::from(n))),
            tz,
        ),
        Step::Weeks(w) => local_to_utc(
            local_start.checked_add_days(Days::new(7 * u64::from(w) * u64::from(n))),
            tz,
        ),
        Step::Months(m) => local_to_utc(
            n.checked_mul(m)
                .and_then(|k| local_start.checked_add_months(Months::new(k))),
            tz,
        ),
    }
}

/// The partitions of a [`Cut`], in plan order (see [`Cut::partitions`]).
#[derive(Clone, Debug)]
pub struct Partitions<'a> {
    windows: Windows<'a>,
    index: usize,
}

impl Iterator for Partitions<'_> {
    type Item = Partition;

    fn next(&mut self) -> Option<Partition> {
        let window = self.windows.next()?;
        let index = self.index;
        self.index += 1;
        Some(Partition {
            id: partition_id(&window),
            index,
            window,
        })
    }
}

/// Cuts `scope` into its ordered partitions, all in memory. Pure and deterministic. For
/// tests and small scopes: a run never needs them all at once ([`Plan::partitions`] cuts
/// them as they are read).
pub fn partitions(scope: &Scope) -> Result<Vec<Partition>, PlanError> {
    let cut = Cut::new(scope)?;
    let mut out = Vec::new();
    for p in cut.partitions() {
        if out.len() >= MAX_PARTITIONS {
            return Err(PlanError::TooManyPartitions);
        }
        out.push(p);
    }
    Ok(out)
}

fn overlaps(a: &Window, b: &Window) -> bool {
    match (a, b) {
        (Window::Time { end: ae, .. }, Window::Time { start: bs, .. }) => ae > bs,
        (Window::Key { end: ae, .. }, Window::Key { start: bs, .. }) => ae > bs,
        _ => false,
    }
}

/// The instant of a local wall time: the earlier one when the time is repeated (DST end), the
/// first valid instant after the gap when it does not exist (DST start). `None` (overflow) maps
/// to the far future, which the caller clamps to the scope's end.
fn local_to_utc(local: Option<NaiveDateTime>, tz: Tz) -> DateTime<Utc> {
    let Some(local) = local else {
        return DateTime::<Utc>::MAX_UTC;
    };
    let mut probe = local;
    for _ in 0..48 {
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            return t.with_timezone(&Utc);
        }
        let Some(later) = probe.checked_add_signed(TimeDelta::minutes(30)) else {
            return DateTime::<Utc>::MAX_UTC;
        };
        probe = later;
    }
    local.and_utc()
}

/// The deterministic, ordered partitions of a spec, identified by a hash.
///
/// It holds the scope's [`Cut`] and not the partitions: [`Plan::partitions`] cuts them again
/// each time they are read, so a plan of a million partitions takes as little memory as one
/// of three (an explicit list excepted, which the spec holds anyway).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    cut: Cut,
    len: usize,
    /// The fields of the spec that decide the partitions and what the run writes, stored with
    /// the run so a refused resume can name what changed.
    pub normalized: NormalizedSpec,
    /// Hash of `normalized`: the same for the same source and target databases, query, time
    /// formats, target table, key, mode and guard, scope and partitions (in `sql` mode without
    /// the source, which only counts rows there), wherever the spec file lies and whatever the
    /// passwords. Limits (concurrency, rate, budget) are not part of it, so changing them
    /// resumes the same run.
    pub hash: String,
}

impl Plan {
    /// The partitions in execution order, cut as they are read; every call yields the same.
    pub fn partitions(&self) -> Partitions<'_> {
        self.cut.partitions()
    }

    /// Their windows alone, in the same order.
    pub fn windows(&self) -> Windows<'_> {
        self.cut.windows()
    }

    /// How many partitions it has (at most [`MAX_PARTITIONS`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the scope is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Plans `spec`: same spec, same partitions, same hash. Cuts the scope once, hashing each
/// window as it goes (the normalised spec keeps their count and digest), and keeps none.
pub fn plan(spec: &crate::spec::Spec) -> Result<Plan, PlanError> {
    let cut = Cut::new(&spec.scope)?;
    let mut digest = Digest::new();
    let mut text = String::new();
    let mut len = 0usize;
    for window in cut.windows() {
        if len >= MAX_PARTITIONS {
            return Err(PlanError::TooManyPartitions);
        }
        text.clear();
        window.write_canonical(&mut text);
        digest.push(&text);
        len += 1;
    }
    let normalized = NormalizedSpec::of(spec, len, &digest.finish());
    Ok(Plan {
        hash: normalized.hash(),
        normalized,
        cut,
        len,
    })
}

/// The plan hash of backfill versions before the normalised spec (state store schema 7 and
/// older), which covered the spec's name and hashed SQLite paths made absolute. A run those
/// versions created, with no normalised spec stored, still resumes when this matches: from
/// the same folder with the same spec. Streams `plan`'s windows like [`plan`].
pub fn legacy_hash(spec: &crate::spec::Spec, plan: &Plan) -> String {
    // A `sql`-mode spec without `[source]` hashes it as empty; with one, as it always did.
    let source = spec.source.as_ref();
    let fields: [String; 9] = [
        spec.name.clone(),
        source.map(|s| s.url.redacted()).unwrap_or_default(),
        source.map(|s| s.query.clone()).unwrap_or_default(),
        source
            .map_or("rfc3339", |s| s.time_format.name())
            .to_owned(),
        spec.target.url.redacted(),
        spec.target.table.clone().unwrap_or_default(),
        spec.target.key.join(","),
        format!("{:?}", spec.target.mode),
        spec.target.time_format.name().to_owned(),
    ];
    let mut digest = Digest::new();
    for field in &fields {
        digest.push(field);
    }
    let mut text = String::new();
    for window in plan.windows() {
        text.clear();
        window.write_canonical(&mut text);
        digest.push(&text);
    }
    digest.finish()
}

/// A short, stable hash of some text (hex), for plan and spec hashes.
pub fn short_hash(parts: &[&str]) -> String {
    let mut digest = Digest::new();
    for part in parts {
        digest.push(part);
    }
    digest.finish()
}

/// [`short_hash`] fed one part at a time: the parts pushed hash exactly as `short_hash` of
/// them all, so a hash over a million windows needs none of them kept.
#[derive(Clone, Debug, Default)]
pub struct Digest {
    hasher: blake3::Hasher,
}

impl Digest {
    /// An empty digest (`short_hash(&[])` until a part is pushed).
    pub fn new() -> Digest {
        Digest::default()
    }

    /// Adds the next part.
    pub fn push(&mut self, part: &str) {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        self.hasher.update(&(part.len() as u64).to_le_bytes());
        self.hasher.update(part.as_bytes());
    }

    /// 16 hex digits over the parts pushed so far.
    pub fn finish(&self) -> String {
        self.hasher.finalize().to_hex()[..16].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn check(scope: Scope, want: Expect) {
        let got = match partitions(&scope) {
            Ok(parts) => {
                let mut lines: Vec<String> = parts.iter().map(|p| p.window.to_string()).collect();
                if lines.len() > 6 {
                    let n = lines.len();
                    lines.splice(3..n - 2, [format!("... {} more", n - 5)]);
                }
                lines.join("\n")
            }
            Err(e) => format!("error: {e}"),
        };
        want.assert_eq(&got);
    }

    fn time(start: &str, end: &str, step: &str, tz: &str) -> Scope {
        Scope::Time {
            start: t(start),
            end: t(end),
            step: Step::parse(step).unwrap(),
            timezone: tz.parse().unwrap(),
        }
    }

    #[test]
    fn hourly_and_truncated_last_window() {
        check(
            time("2026-03-01T00:00:00Z", "2026-03-01T02:30:00Z", "1h", "UTC"),
            expect![[r#"
                [2026-03-01T00:00:00Z, 2026-03-01T01:00:00Z)
                [2026-03-01T01:00:00Z, 2026-03-01T02:00:00Z)
                [2026-03-01T02:00:00Z, 2026-03-01T02:30:00Z)"#]],
        );
    }

    #[test]
    fn days_across_dst_start_and_end_in_a_zone() {
        // Berlin: 2026-03-29 has 23 hours, 2026-10-25 has 25 hours.
        check(
            time(
                "2026-03-27T23:00:00Z",
                "2026-03-30T22:00:00Z",
                "1d",
                "Europe/Berlin",
            ),
            expect![[r#"
                [2026-03-27T23:00:00Z, 2026-03-28T23:00:00Z)
                [2026-03-28T23:00:00Z, 2026-03-29T22:00:00Z)
                [2026-03-29T22:00:00Z, 2026-03-30T22:00:00Z)"#]],
        );
        check(
            time(
                "2026-10-24T22:00:00Z",
                "2026-10-26T23:00:00Z",
                "1d",
                "Europe/Berlin",
            ),
            expect![[r#"
                [2026-10-24T22:00:00Z, 2026-10-25T23:00:00Z)
                [2026-10-25T23:00:00Z, 2026-10-26T23:00:00Z)"#]],
        );
    }

    #[test]
    fn hours_across_dst_are_exact_durations() {
        // The local 02:00-03:00 hour does not exist in Berlin on 2026-03-29; an hourly plan is
        // still exactly 3600 s per partition.
        let parts = partitions(&time(
            "2026-03-29T00:00:00Z",
            "2026-03-29T03:00:00Z",
            "1h",
            "Europe/Berlin",
        ))
        .unwrap();
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn calendar_months_and_month_ends() {
        check(
            time("2026-01-01T00:00:00Z", "2026-05-01T00:00:00Z", "1mo", "UTC"),
            expect![[r#"
                [2026-01-01T00:00:00Z, 2026-02-01T00:00:00Z)
                [2026-02-01T00:00:00Z, 2026-03-01T00:00:00Z)
                [2026-03-01T00:00:00Z, 2026-04-01T00:00:00Z)
                [2026-04-01T00:00:00Z, 2026-05-01T00:00:00Z)"#]],
        );
        // Starting on the 31st, month steps clamp to the month's last day and come back to
        // the 31st (steps are counted from the start, not chained).
        check(
            time("2026-01-31T00:00:00Z", "2026-04-30T00:00:00Z", "1mo", "UTC"),
            expect![[r#"
                [2026-01-31T00:00:00Z, 2026-02-28T00:00:00Z)
                [2026-02-28T00:00:00Z, 2026-03-31T00:00:00Z)
                [2026-03-31T00:00:00Z, 2026-04-30T00:00:00Z)"#]],
        );
        // Leap year February.
        check(
            time("2028-02-01T00:00:00Z", "2028-03-02T00:00:00Z", "1mo", "UTC"),
            expect![[r#"
                [2028-02-01T00:00:00Z, 2028-03-01T00:00:00Z)
                [2028-03-01T00:00:00Z, 2028-03-02T00:00:00Z)"#]],
        );
    }

    #[test]
    fn key_ranges_and_edges() {
        check(
            Scope::Key {
                from: 1,
                to: 26,
                chunk: 10,
            },
            expect![[r#"
                [1, 11)
                [11, 21)
                [21, 26)"#]],
        );
        check(
            Scope::Key {
                from: i64::MAX - 5,
                to: i64::MAX,
                chunk: 4,
            },
            expect![[r#"
                [9223372036854775802, 9223372036854775806)
                [9223372036854775806, 9223372036854775807)"#]],
        );
        check(
            Scope::Key {
                from: -3,
                to: 0,
                chunk: u64::MAX,
            },
            expect!["[-3, 0)"],
        );
        check(
            Scope::Key {
                from: 0,
                to: 10_000_000,
                chunk: 1,
            },
            expect![[
                "error: the scope produces more than 1000000 partitions; use a larger partition size"
            ]],
        );
    }

    #[test]
    fn empty_scopes_plan_nothing() {
        check(
            Scope::Key {
                from: 5,
                to: 5,
                chunk: 1,
            },
            expect![""],
        );
        check(
            time("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", "1h", "UTC"),
            expect![""],
        );
        check(Scope::List(vec![]), expect![""]);
    }

    #[test]
    fn lists_are_sorted_and_overlaps_rejected() {
        check(
            Scope::List(vec![
                Window::Key { start: 10, end: 20 },
                Window::Key { start: 0, end: 5 },
            ]),
            expect![[r#"
                [0, 5)
                [10, 20)"#]],
        );
        check(
            Scope::List(vec![
                Window::Key { start: 0, end: 10 },
                Window::Key { start: 5, end: 20 },
            ]),
            expect!["error: windows [0, 10) and [5, 20) overlap"],
        );
    }

    #[test]
    fn step_parsing() {
        let cases = [
            ("15m", Ok(Step::Seconds(900))),
            ("1h", Ok(Step::Seconds(3600))),
            ("1d", Ok(Step::Days(1))),
            ("2 weeks", Ok(Step::Weeks(2))),
            ("1mo", Ok(Step::Months(1))),
            (
                "0h",
                Err("a partition size must be greater than zero".to_owned()),
            ),
            ("-1h", Err("a partition size must be positive".to_owned())),
            (
                "h",
                Err("`h` does not start with a number (e.g. `1h`, `1d`, `1mo`)".to_owned()),
            ),
            (
                "5",
                Err("`5` has no unit (use s, m, h, d, w or mo)".to_owned()),
            ),
            (
                "5y",
                Err("unknown unit `y` (use s, m, h, d, w or mo)".to_owned()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Step::parse(input), want, "{input}");
        }
    }

    #[test]
    fn ids_are_stable_and_window_derived() {
        let a = partitions(&time(
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            "1h",
            "UTC",
        ))
        .unwrap();
        let b = partitions(&time(
            "2026-03-01T05:00:00Z",
            "2026-03-02T00:00:00Z",
            "1h",
            "UTC",
        ))
        .unwrap();
        assert_eq!(a[5].id, b[0].id);
        expect!["pe1224a56906009df"].assert_eq(&a[0].id);
    }

    /// The planner before it streamed (a `Vec` of every window), kept as the oracle the
    /// streaming cut must agree with window for window.
    fn collected_time_windows(
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Step,
        tz: Tz,
    ) -> Vec<Window> {
        let mut out = Vec::new();
        let mut cursor = start;
        let local_start = start.with_timezone(&tz).naive_local();
        let mut n: u32 = 0;
        while cursor < end && out.len() <= MAX_PARTITIONS {
            n += 1;
            let next = match step {
                Step::Seconds(secs) => i64::try_from(secs)
                    .ok()
                    .and_then(TimeDelta::try_seconds)
                    .and_then(|d| cursor.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
                Step::Days(d) => local_to_utc(
                    local_start.checked_add_days(Days::new(u64::from(d) * u64::from(n))),
                    tz,
                ),
                Step::Weeks(w) => local_to_utc(
                    local_start.checked_add_days(Days::new(7 * u64::from(w) * u64::from(n))),
                    tz,
                ),
                Step::Months(m) => local_to_utc(
                    n.checked_mul(m)
                        .and_then(|k| local_start.checked_add_months(Months::new(k))),
                    tz,
                ),
            };
            let at_least = cursor
                .checked_add_signed(TimeDelta::seconds(1))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            let next = next.min(end).max(at_least);
            out.push(Window::Time {
                start: cursor,
                end: next.min(end),
            });
            cursor = next;
        }
        out
    }

    fn collected_key_windows(from: i64, to: i64, chunk: u64) -> Vec<Window> {
        let chunk = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut cursor = from;
        while cursor < to && out.len() <= MAX_PARTITIONS {
            let next = cursor.checked_add(chunk).map_or(to, |n| n.min(to));
            out.push(Window::Key {
                start: cursor,
                end: next,
            });
            cursor = next;
        }
        out
    }

    /// The streaming cut of `scope` is the collected one, and its running digest is
    /// `short_hash` of every canonical window (what the plan hash covered before).
    fn assert_stream_is_collect(scope: &Scope) -> Result<(), TestCaseError> {
        let collected = match scope {
            Scope::Time {
                start,
                end,
                step,
                timezone,
            } => collected_time_windows(*start, *end, *step, *timezone),
            Scope::Key { from, to, chunk } => collected_key_windows(*from, *to, *chunk),
            Scope::List(_) => unreachable!("lists are sorted, not cut"),
        };
        let cut = Cut::new(scope).unwrap();
        let streamed: Vec<Window> = cut.windows().take(MAX_PARTITIONS + 1).collect();
        prop_assert_eq!(&streamed, &collected);
        let ids: Vec<Partition> = cut.partitions().take(3).collect();
        for (i, p) in ids.iter().enumerate() {
            prop_assert_eq!(p.index, i);
            prop_assert_eq!(&p.id, &partition_id(&collected[i]));
        }
        let texts: Vec<String> = collected.iter().map(Window::canonical).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut digest = Digest::new();
        let mut text = String::new();
        for w in cut.windows() {
            text.clear();
            w.write_canonical(&mut text);
            digest.push(&text);
        }
        prop_assert_eq!(digest.finish(), short_hash(&refs));
        Ok(())
    }

    #[test]
    fn a_million_partitions_stream_in_constant_memory() {
        let cut = Cut::new(&Scope::Key {
            from: 1,
            to: 100_000_001,
            chunk: 100,
        })
        .unwrap();
        assert_eq!(cut.count(), Ok(MAX_PARTITIONS));
        let last = cut.partitions().last().unwrap();
        assert_eq!(last.index, MAX_PARTITIONS - 1);
        assert_eq!(
            last.window,
            Window::Key {
                start: 99_999_901,
                end: 100_000_001
            }
        );
        let over = Cut::new(&Scope::Key {
            from: 0,
            to: 100_000_001,
            chunk: 100,
        })
        .unwrap();
        assert_eq!(over.count(), Err(PlanError::TooManyPartitions));
    }

    proptest! {
        #[test]
        fn streamed_key_cuts_are_the_collected_ones(from in any::<i64>(), len in prop_oneof![0u64..5_000, any::<u64>()], chunk in prop_oneof![1u64..100, 1u64..u64::MAX]) {
            let to = from.saturating_add_unsigned(len);
            let chunk = chunk.max(len / 1000).max(1);
            assert_stream_is_collect(&Scope::Key { from, to, chunk })?;
        }

        #[test]
        fn streamed_time_cuts_are_the_collected_ones(
            start in -8_210_000_000_000i64..8_210_000_000_000,
            step_kind in 0usize..4,
            size in prop_oneof![1u32..40, any::<u32>()],
            secs in prop_oneof![1u64..100_000, any::<u64>()],
            steps in 0.0f64..2_000.0,
            zone in 0usize..5,
        ) {
            let zones = ["UTC", "Europe/Berlin", "America/Santiago", "Pacific/Apia", "Australia/Lord_Howe"];
            let step = match step_kind {
                0 => Step::Seconds(secs.max(1)),
                1 => Step::Days(size.max(1)),
                2 => Step::Weeks(size.max(1)),
                _ => Step::Months(size.max(1)),
            };
            let s = Utc.timestamp_opt(start, 0).unwrap();
            let len = (step.nominal_seconds() * steps).min(1.6e13) as i64;
            let e = Utc.timestamp_opt(start.saturating_add(len).min(8_210_000_000_000), 0).unwrap();
            assert_stream_is_collect(&Scope::Time { start: s, end: e, step, timezone: zones[zone].parse().unwrap() })?;
        }

        #[test]
        fn key_plans_cover_exactly(from in -1_000_000i64..1_000_000, len in 0i64..100_000, chunk in 1u64..50_000) {
            let parts = partitions(&Scope::Key { from, to: from + len, chunk }).unwrap();
            let mut cursor = from;
            for p in &parts {
                let Window::Key { start, end } = p.window else { panic!("key window") };
                prop_assert_eq!(start, cursor);
                prop_assert!(end > start);
                cursor = end;
            }
            prop_assert_eq!(cursor, from.max(from + len));
        }

        /// Any step at any instant chrono holds: no overflow panics, the plan still covers
        /// the scope (a step past the end of time ends at the scope's end).
        #[test]
        fn extreme_time_plans_never_panic(
            start in -8_210_000_000_000i64..8_210_000_000_000,
            step_kind in 0usize..4,
            size in prop_oneof![1u32..40, any::<u32>()],
            secs in prop_oneof![1u64..100_000, any::<u64>()],
            steps in 0.0f64..300.0,
            zone in 0usize..4,
        ) {
            let zones = ["UTC", "Pacific/Apia", "America/St_Johns", "Australia/Lord_Howe"];
            let step = match step_kind {
                0 => Step::Seconds(secs.max(1)),
                1 => Step::Days(size.max(1)),
                2 => Step::Weeks(size.max(1)),
                _ => Step::Months(size.max(1)),
            };
            let s = Utc.timestamp_opt(start, 0).unwrap();
            let len = (step.nominal_seconds() * steps).min(1.6e13) as i64;
            let e = Utc.timestamp_opt(start.saturating_add(len).min(8_210_000_000_000), 0).unwrap();
            let scope = Scope::Time { start: s, end: e, step, timezone: zones[zone].parse().unwrap() };
            let parts = partitions(&scope).unwrap();
            let mut cursor = s;
            for p in &parts {
                let Window::Time { start, end } = p.window else { panic!("time window") };
                prop_assert_eq!(start, cursor);
                prop_assert!(end > start);
                cursor = end;
            }
            prop_assert_eq!(cursor, s.max(e));
        }

        #[test]
        fn time_plans_cover_exactly(start in 0i64..2_000_000_000, len in 0i64..40_000_000, step in 0usize..6, zone in 0usize..3) {
            let steps = ["15m", "1h", "1d", "1w", "1mo", "7h"];
            let zones = ["UTC", "Europe/Berlin", "America/Santiago"];
            let s = Utc.timestamp_opt(start, 0).unwrap();
            let e = Utc.timestamp_opt(start + len, 0).unwrap();
            let scope = Scope::Time { start: s, end: e, step: Step::parse(steps[step]).unwrap(), timezone: zones[zone].parse().unwrap() };
            let parts = partitions(&scope).unwrap();
            let mut cursor = s;
            for p in &parts {
                let Window::Time { start, end } = p.window else { panic!("time window") };
                prop_assert_eq!(start, cursor);
                prop_assert!(end > start);
                cursor = end;
            }
            prop_assert_eq!(cursor, s.max(e));
        }
    }
}
