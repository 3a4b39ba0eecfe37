//! Budgets: how much a run may read, how long it may run, how many partitions it may finish and
//! what it may cost, and the verdict on what it has used so far.
//!
//! Pure: the engine measures the use (rows read, running time summed over sessions, partitions
//! finished) and passes it in; this module only compares. A limit is the spec's value plus every
//! extension granted since (`resume --extend-budget`), so an extension never lowers a limit.
//!
//! Invariants: a budget with no limit is never exhausted; a verdict is `Exhausted` exactly when
//! some line reached 100% of its limit, and `Warning` when none did but one reached
//! [`WARN_FRACTION`].

use std::fmt;
use std::time::Duration;

/// The fraction of a limit at which a run warns (log line and `status`).
pub const WARN_FRACTION: f64 = 0.8;

/// The budget of a run (`limits.budget`). Every field is optional; an absent one is no limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budget {
    /// Most rows the run may read.
    pub rows: Option<u64>,
    /// Longest running time, summed over every session of the run (paused time does not count).
    pub duration: Option<Duration>,
    /// Most partitions the run may finish.
    pub partitions: Option<u64>,
    /// Turns rows and time into money; caps the run when `max` is set.
    pub cost: Option<CostModel>,
}

/// What reading rows and running for a while cost (`limits.budget.cost`).
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    /// Price of one million rows read; finite and not negative.
    pub per_million_rows: f64,
    /// Price of one hour of running time; finite and not negative.
    pub per_hour: f64,
    /// Currency the prices are in, as written (`USD`); informational.
    pub currency: String,
    /// Most the run may cost, when set; positive.
    pub max: Option<f64>,
}

impl CostModel {
    /// The cost of reading `rows` rows over `active` running time: linear in both, zero for
    /// zero use, never negative for valid prices.
    pub fn cost(&self, rows: u64, active: Duration) -> f64 {
        // u64 → f64 loses precision only above 2^53 rows, far past any real backfill.
        #[allow(clippy::cast_precision_loss)]
        let millions = rows as f64 / 1_000_000.0;
        millions * self.per_million_rows + active.as_secs_f64() / 3600.0 * self.per_hour
    }

    /// `12.34 USD`: an amount with two decimals and the currency.
    pub fn format(&self, amount: f64) -> String {
        format!("{amount:.2} {}", self.currency)
    }
}

/// The largest count (rows, partitions) or cost one budget extension may add: a quadrillion.
pub const MAX_EXTENSION: u64 = 1_000_000_000_000_000;

/// The longest running time one budget extension may add: 100 years.
pub const MAX_EXTENSION_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Extra allowance granted by `resume --extend-budget rows=…,duration=…,partitions=…,cost=…`.
/// Extensions add up; `Default` is no extension.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BudgetExtension {
    /// Extra rows.
    pub rows: u64,
    /// Extra running time.
    pub duration: Duration,
    /// Extra partitions.
    pub partitions: u64,
    /// Extra cost, in the cost model's currency; finite and not negative.
    pub cost: f64,
}

impl BudgetExtension {
    /// Parses `rows=1000000,duration=2h,partitions=10,cost=5` (any subset, any order, spaces
    /// allowed, `_` in numbers). An empty text, an unknown or repeated item, or a bad value is
    /// an error naming the item. Counts and cost are at most [`MAX_EXTENSION`] and durations
    /// at most [`MAX_EXTENSION_DURATION`], so extensions summed in the state store (64-bit
    /// integers) cannot overflow however often a run is extended.
    pub fn parse(text: &str) -> Result<BudgetExtension, String> {
        let mut ext = BudgetExtension::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "`{item}` is not `name=value` (e.g. `rows=1000000,duration=2h`)"
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(format!("`{key}` is given twice"));
            }
            let count = |v: &str| -> Result<u64, String> {
                let n = v
                    .replace('_', "")
                    .parse::<u64>()
                    .map_err(|_| format!("`{item}`: `{v}` is not a whole number"))?;
                if n > MAX_EXTENSION {
                    return Err(format!("`{item}`: at most {MAX_EXTENSION}"));
                }
                Ok(n)
            };
            match key {
                "rows" => ext.rows = count(value)?,
                "partitions" => ext.partitions = count(value)?,
                "duration" => {
                    ext.duration = humantime::parse_duration(value)
                        .map_err(|e| format!("`{item}`: invalid duration ({e}); e.g. `2h`"))?;
                    if ext.duration > MAX_EXTENSION_DURATION {
                        return Err(format!("`{item}`: at most 100 years"));
                    }
                }
                "cost" => {
                    ext.cost = value
                        .replace('_', "")
                        .parse::<f64>()
                        .ok()
                        .filter(|c| c.is_finite() && *c >= 0.0 && *c <= MAX_EXTENSION as f64)
                        .ok_or_else(|| {
                            format!(
                                "`{item}`: `{value}` is not an amount from 0 to {MAX_EXTENSION}"
                            )
                        })?;
                }
                other => {
                    return Err(format!(
                        "unknown budget item `{other}` (use rows, duration, partitions or cost)"
                    ));
                }
            }
            seen.push(key);
        }
        if seen.is_empty() {
            return Err("nothing to extend (e.g. `rows=1000000,duration=2h`)".to_owned());
        }
        Ok(ext)
    }

    /// Adds `other` to this extension, saturating instead of overflowing.
    pub fn add(&mut self, other: &BudgetExtension) {
        self.rows = self.rows.saturating_add(other.rows);
        self.duration = self.duration.saturating_add(other.duration);
        self.partitions = self.partitions.saturating_add(other.partitions);
        self.cost += other.cost;
    }
}

impl fmt::Display for BudgetExtension {
    /// The form [`BudgetExtension::parse`] reads, listing only non-zero items.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if self.rows > 0 {
            items.push(format!("rows={}", self.rows));
        }
        if !self.duration.is_zero() {
            items.push(format!(
                "duration={}",
                humantime::format_duration(self.duration)
            ));
        }
        if self.partitions > 0 {
            items.push(format!("partitions={}", self.partitions));
        }
        if self.cost > 0.0 {
            items.push(format!("cost={}", self.cost));
        }
        f.write_str(&items.join(","))
    }
}

/// What a run has used so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetUse {
    /// Rows read.
    pub rows: u64,
    /// Running time summed over every session of the run.
    pub active: Duration,
    /// Partitions finished (done, with or without quarantined rows).
    pub partitions: u64,
}

/// The kinds of limit a budget holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetKind {
    /// Rows read.
    Rows,
    /// Running time.
    Duration,
    /// Partitions finished.
    Partitions,
    /// Money, from the cost model.
    Cost,
}

impl BudgetKind {
    /// The name used in specs, `--extend-budget`, logs and `status`: `rows`, `duration`,
    /// `partitions`, `cost`.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Rows => "rows",
            BudgetKind::Duration => "duration",
            BudgetKind::Partitions => "partitions",
            BudgetKind::Cost => "cost",
        }
    }
}

impl fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One limit of a budget and its use, in the kind's unit: rows, seconds, partitions, or the
/// cost model's currency.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetLine {
    /// Which limit.
    pub kind: BudgetKind,
    /// How much is used.
    pub used: f64,
    /// The limit (spec value plus extensions); positive for a validated spec.
    pub limit: f64,
}

impl BudgetLine {
    /// `used / limit`: 1.0 means exhausted. A limit of zero or less counts as exhausted
    /// (infinity), never as a division by zero.
    pub fn fraction(&self) -> f64 {
        if self.limit > 0.0 {
            self.used / self.limit
        } else {
            f64::INFINITY
        }
    }
}

/// Where a run stands against its budget.
#[derive(Clone, Debug, PartialEq)]
pub enum BudgetVerdict {
    /// Every line is under [`WARN_FRACTION`] of its limit (or there is no limit).
    Within,
    /// No line is exhausted, and these lines are at [`WARN_FRACTION`] or more.
    Warning(Vec<BudgetLine>),
    /// These lines reached 100% of their limit: the run must pause (`budget_exhausted`).
    Exhausted(Vec<BudgetLine>),
}

impl Budget {
    /// True when the budget sets nothing at all: no limit and no cost model.
    pub fn is_empty(&self) -> bool {
        self.rows.is_none()
            && self.duration.is_none()
            && self.partitions.is_none()
            && self.cost.is_none()
    }

    /// One line per limit that is set, in the order rows, duration, partitions, cost (cost only
    /// when the cost model has a `max`). Each limit is the spec's value plus `ext`.
    #[allow(clippy::cast_precision_loss)] // counts above 2^53 do not occur
    pub fn lines(&self, used: &BudgetUse, ext: &BudgetExtension) -> Vec<BudgetLine> {
        let mut out = Vec::new();
        if let Some(rows) = self.rows {
            out.push(BudgetLine {
                kind: BudgetKind::Rows,
                used: used.rows as f64,
                limit: rows.saturating_add(ext.rows) as f64,
            });
        }
        if let Some(d) = self.duration {
            out.push(BudgetLine {
                kind: BudgetKind::Duration,
                used: used.active.as_secs_f64(),
                limit: d.saturating_add(ext.duration).as_secs_f64(),
            });
        }
        if let Some(p) = self.partitions {
            out.push(BudgetLine {
                kind: BudgetKind::Partitions,
                used: used.partitions as f64,
                limit: p.saturating_add(ext.partitions) as f64,
            });
        }
        if let Some(cost) = &self.cost
            && let Some(max) = cost.max
        {
            out.push(BudgetLine {
                kind: BudgetKind::Cost,
                used: cost.cost(used.rows, used.active),
                limit: max + ext.cost,
            });
        }
        out
    }

    /// `Exhausted` with the lines at 100% or more when there are any; otherwise `Warning`
    /// with the lines at [`WARN_FRACTION`] or more when there are any; otherwise `Within`.
    pub fn verdict(&self, used: &BudgetUse, ext: &BudgetExtension) -> BudgetVerdict {
        let lines = self.lines(used, ext);
        let exhausted: Vec<BudgetLine> = lines
            .iter()
            .filter(|l| l.fraction() >= 1.0)
            .cloned()
            .collect();
        if !exhausted.is_empty() {
            return BudgetVerdict::Exhausted(exhausted);
        }
        let warning: Vec<BudgetLine> = lines
            .into_iter()
            .filter(|l| l.fraction() >= WARN_FRACTION)
            .collect();
        if warning.is_empty() {
            BudgetVerdict::Within
        } else {
            BudgetVerdict::Warning(warning)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn budget() -> Budget {
        Budget {
            rows: Some(1_000),
            duration: Some(Duration::from_secs(3600)),
            partitions: Some(10),
            cost: Some(CostModel {
                per_million_rows: 1_000.0,
                per_hour: 1.0,
                currency: "USD".to_owned(),
                max: Some(10.0),
            }),
        }
    }

    fn use_(rows: u64, secs: u64, partitions: u64) -> BudgetUse {
        BudgetUse {
            rows,
            active: Duration::from_secs(secs),
            partitions,
        }
    }

    fn kinds(lines: &[BudgetLine]) -> Vec<&'static str> {
        lines.iter().map(|l| l.kind.as_str()).collect()
    }

    #[test]
    fn cost_is_linear_in_rows_and_time() {
        let model = CostModel {
            per_million_rows: 0.40,
            per_hour: 2.0,
            currency: "USD".to_owned(),
            max: None,
        };
        assert_eq!(model.cost(0, Duration::ZERO), 0.0);
        let c = model.cost(10_000_000, Duration::from_secs(5400));
        assert!((c - 7.0).abs() < 1e-9, "{c}");
        assert_eq!(model.format(c), "7.00 USD");
    }

    #[test]
    fn verdicts_by_threshold() {
        let b = budget();
        let none = BudgetExtension::default();
        assert_eq!(b.verdict(&use_(0, 0, 0), &none), BudgetVerdict::Within);
        assert_eq!(b.verdict(&use_(799, 0, 0), &none), BudgetVerdict::Within);
        match b.verdict(&use_(800, 0, 8), &none) {
            BudgetVerdict::Warning(lines) => assert_eq!(kinds(&lines), ["rows", "partitions"]),
            other => panic!("{other:?}"),
        }
        // One exhausted line wins over warnings elsewhere, and lists only itself.
        match b.verdict(&use_(800, 3600, 8), &none) {
            BudgetVerdict::Exhausted(lines) => assert_eq!(kinds(&lines), ["duration"]),
            other => panic!("{other:?}"),
        }
        // Cost: 1000 per million rows → 1 per 1000 rows; 1 per hour; max 10.
        match b.verdict(
            &use_(0, 36_000 - 1, 0),
            &BudgetExtension {
                duration: Duration::from_secs(100_000),
                ..BudgetExtension::default()
            },
        ) {
            BudgetVerdict::Warning(lines) => assert_eq!(kinds(&lines), ["cost"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extensions_raise_limits() {
        let b = budget();
        let used = use_(1_000, 0, 0);
        assert!(matches!(
            b.verdict(&used, &BudgetExtension::default()),
            BudgetVerdict::Exhausted(_)
        ));
        let mut ext = BudgetExtension::parse("rows=1000").unwrap();
        ext.add(&BudgetExtension::parse("rows = 1_000, cost=2.5").unwrap());
        assert_eq!(ext.rows, 2_000);
        assert_eq!(ext.cost, 2.5);
        let lines = b.lines(&used, &ext);
        assert_eq!(lines[0].limit, 3_000.0);
        assert_eq!(lines[3].limit, 12.5);
        assert_eq!(b.verdict(&used, &ext), BudgetVerdict::Within);
    }

    #[test]
    fn empty_budget_is_never_exhausted() {
        let b = Budget::default();
        assert!(b.is_empty());
        assert!(
            b.lines(
                &use_(u64::MAX, 1 << 40, u64::MAX),
                &BudgetExtension::default()
            )
            .is_empty()
        );
        assert_eq!(
            b.verdict(&use_(u64::MAX, 0, 0), &BudgetExtension::default()),
            BudgetVerdict::Within
        );
        // A cost model without `max` projects cost but limits nothing.
        let b = Budget {
            cost: Some(CostModel {
                max: None,
                ..budget().cost.unwrap()
            }),
            ..Budget::default()
        };
        assert!(!b.is_empty());
        assert!(
            b.lines(&use_(1, 1, 1), &BudgetExtension::default())
                .is_empty()
        );
    }

    #[test]
    fn zero_limit_fraction_is_infinite() {
        let line = BudgetLine {
            kind: BudgetKind::Rows,
            used: 0.0,
            limit: 0.0,
        };
        assert_eq!(line.fraction(), f64::INFINITY);
    }

    proptest! {
        /// Any text: an extension or an error, never a panic; an extension is within the caps
        /// and reads back from its own display.
        #[test]
        fn any_extension_text_parses_or_errs(text in "\\PC{0,40}") {
            if let Ok(ext) = BudgetExtension::parse(&text) {
                prop_assert!(ext.rows <= MAX_EXTENSION && ext.partitions <= MAX_EXTENSION);
                prop_assert!(ext.duration <= MAX_EXTENSION_DURATION);
            }
        }

        #[test]
        fn extreme_extensions_round_trip_or_name_the_item(
            rows in prop_oneof![Just(0u64), Just(MAX_EXTENSION), Just(MAX_EXTENSION + 1), Just(u64::MAX), any::<u64>()],
            secs in prop_oneof![Just(0u64), Just(MAX_EXTENSION_DURATION.as_secs()), Just(u64::MAX / 1000), any::<u64>()],
            cost in prop_oneof![Just(0.0f64), Just(1e15), Just(1e300), Just(f64::NAN), any::<f64>()],
        ) {
            let text = format!("rows={rows}, duration={secs}s ,cost={cost}");
            match BudgetExtension::parse(&text) {
                Ok(ext) => {
                    prop_assert_eq!(ext.rows, rows);
                    if ext != BudgetExtension::default() {
                        prop_assert_eq!(BudgetExtension::parse(&ext.to_string()), Ok(ext.clone()));
                    }
                    let mut twice = ext.clone();
                    twice.add(&ext);
                    prop_assert!(twice.rows >= ext.rows);
                }
                Err(e) => prop_assert!(
                    e.starts_with("`rows=") || e.starts_with("`duration=") || e.starts_with("`cost="),
                    "{}", e
                ),
            }
        }
    }

    #[test]
    fn extension_parsing() {
        let ext = BudgetExtension::parse("rows=1000000,duration=2h,partitions=10,cost=5").unwrap();
        assert_eq!(
            ext,
            BudgetExtension {
                rows: 1_000_000,
                duration: Duration::from_secs(7200),
                partitions: 10,
                cost: 5.0,
            }
        );
        assert_eq!(
            ext.to_string(),
            "rows=1000000,duration=2h,partitions=10,cost=5"
        );
        assert_eq!(BudgetExtension::parse(&ext.to_string()), Ok(ext));
        let errors: Vec<String> = [
            "",
            "rows",
            "rows=-1",
            "rows=1,rows=2",
            "duration=soon",
            "cost=-1",
            "cost=inf",
            "time=2h",
            "rows=1_000_000_000_000_001",
            "partitions=18446744073709551616",
            "duration=101y",
            "cost=1e16",
        ]
        .iter()
        .map(|t| BudgetExtension::parse(t).unwrap_err())
        .collect();
        expect_test::expect![[r#"
            nothing to extend (e.g. `rows=1000000,duration=2h`)
            `rows` is not `name=value` (e.g. `rows=1000000,duration=2h`)
            `rows=-1`: `-1` is not a whole number
            `rows` is given twice
            `duration=soon`: invalid duration (expected number at 0); e.g. `2h`
            `cost=-1`: `-1` is not an amount from 0 to 1000000000000000
            `cost=inf`: `inf` is not an amount from 0 to 1000000000000000
            unknown budget item `time` (use rows, duration, partitions or cost)
            `rows=1_000_000_000_000_001`: at most 1000000000000000
            `partitions=18446744073709551616`: `18446744073709551616` is not a whole number
            `duration=101y`: at most 100 years
            `cost=1e16`: `1e16` is not an amount from 0 to 1000000000000000"#]]
        .assert_eq(&errors.join("\n"));
    }

    proptest! {
        /// More use never improves the verdict, and a bigger extension never worsens it.
        #[test]
        fn verdict_is_monotone(rows in 0u64..3_000, more in 0u64..3_000, extra in 0u64..3_000) {
            let b = Budget { rows: Some(1_000), ..Budget::default() };
            let rank = |v: BudgetVerdict| match v {
                BudgetVerdict::Within => 0,
                BudgetVerdict::Warning(_) => 1,
                BudgetVerdict::Exhausted(_) => 2,
            };
            let none = BudgetExtension::default();
            let ext = BudgetExtension { rows: extra, ..BudgetExtension::default() };
            let base = rank(b.verdict(&use_(rows, 0, 0), &none));
            prop_assert!(rank(b.verdict(&use_(rows + more, 0, 0), &none)) >= base);
            prop_assert!(rank(b.verdict(&use_(rows, 0, 0), &ext)) <= base);
            prop_assert_eq!(base == 2, rows >= 1_000);
        }
    }
}
