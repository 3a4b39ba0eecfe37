//! No input panics or hangs the spec parser and the planner (invariant 7).
//!
//! Thousands of generated specs: valid ones with extreme values (far dates, huge sizes, keys at
//! the ends of `i64`, odd time zones and DST edges), real specs mutated and truncated, random
//! TOML and unicode. Every case must parse without panicking, quickly; a spec that parses must
//! plan (or be refused with a plan error) and its plan must cover the scope exactly, with no
//! hole and no overlap. Then the windows are split as a skewed partition would be, and must
//! still cover their parent.

use std::path::Path;
use std::time::{Duration, Instant};

use backfill_core::plan::{MAX_PARTITIONS, Scope, Window, estimated_partitions};
use backfill_core::spec::{ParseContext, Parsed};
use backfill_core::split::split_window;
use proptest::prelude::*;

/// Larger plans are only estimated by the property tests, to keep them fast.
const PLANNED_HERE: u64 = 20_000;

/// The most one case may take (parse, plan, check), in a debug build on a busy machine.
const CASE_LIMIT: Duration = Duration::from_secs(20);

const README_SPEC: &str = r#"
name   = "orders_copy_repair"
reason = "ETL outage skipped 2026-03-01..03"

[source]
url         = "sqlite://shop.db"
query       = "SELECT id, customer_id, amount_cents, created_at FROM orders WHERE created_at >= :start AND created_at < :end"
time_format = "rfc3339"
time_column = "created_at"

[target]
url   = "sqlite://analytics.db"
table = "orders_copy"
key   = ["id"]
mode  = "upsert"

[scope]
start     = "2026-03-01T00:00:00Z"
end       = "2026-03-04T00:00:00Z"
partition = "1h"

[limits]
concurrency     = 4
rows_per_second = 50_000
batch_rows      = 5_000
max_attempts    = 6
budget          = { rows = 100_000_000, duration = "6h", partitions = 300, cost = { per_million_rows = 0.4, max = 50.0 } }
window          = "22:00-06:00 Europe/Paris"
order           = ["2026-03-02", "2026-03-01T10:00:00Z..2026-03-01T12:00:00Z"]
split_rows      = 200_000
split_slow      = 4

[throttle]
probe                = { url = "sqlite://shop.db", sql = "SELECT 1" }
max_latency_increase = 0.10
interval             = "1s"
"#;

const SQL_SPEC: &str = r#"
name = "daily_rollup"
reason = "recompute"

[target]
url  = "postgres://app:secret@127.0.0.1/analytics"
mode = "sql"
sql  = "INSERT INTO daily SELECT date(ts), count(*) FROM events WHERE ts >= :start AND ts < :end GROUP BY 1"

[scope]
start     = "2025-12-20"
end       = "2026-01-05"
partition = "1d"
timezone  = "Europe/Berlin"
"#;

const KEY_SPEC: &str = r#"
name = "by_key"
reason = "keys"

[source]
url = "mysql://root@127.0.0.1/test"
query = "SELECT id, v FROM t WHERE id >= :start AND id < :end"

[target]
url = "sqlite://out.db"
table = "t"
key = "id"
mode = "replace"
window_column = "id"

[scope]
key = "id"
from = 1
to = 50_000_000
chunk = 100_000

[limits]
order = "largest_first"
circuit_breaker = { window = 50, max_error_rate = 0.2 }
"#;

const LIST_SPEC: &str = r#"
name = "listed"
reason = "a few days"

[source]
url = "sqlite://a.db"
query = "SELECT id FROM t WHERE ts >= :start AND ts < :end"

[target]
url = "sqlite://b.db"
table = "t"
key = ["id"]

[scope]
timezone = "America/Santiago"
list = [{ start = "2026-03-01", end = "2026-03-02" }, { start = 2026-04-05T00:00:00Z, end = "2026-04-06" }]
"#;

const SEEDS: &[&str] = &[README_SPEC, SQL_SPEC, KEY_SPEC, LIST_SPEC];

/// Instants at the edges: far past and future, the ends of what chrono holds, DST gaps and
/// repeats, leap days, fractions of a second, offsets.
const INSTANTS: &[&str] = &[
    "2026-03-01T00:00:00Z",
    "2026-03-29T02:30:00",
    "2026-10-25T02:30:00",
    "2026-03-08T02:30:00",
    "2011-12-30",
    "2024-02-29",
    "1970-01-01",
    "0001-01-01",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999999+14:00",
    "-9999-01-01",
    "+262142-12-31T23:59:59",
    "+262142-12-31T23:59:59.999999999",
    "262142-12-31 23:59:59",
    "-262143-01-01",
    "-262143-01-01T00:00:00",
    "262143-12-31",
    "2026-03-01T00:00:00-23:59",
    "2026-03-01T00:00:00.5Z",
    "2026-02-30",
    "2026-03-01 00:00",
    "1582-10-10",
    "",
    "yesterday",
    "2026-03-01T00:00:00Z\u{0}",
];

const STEPS: &[&str] = &[
    "1s",
    "15m",
    "1h",
    "7h",
    "1d",
    "1w",
    "1mo",
    "13mo",
    "4000000000h",
    "4294967295s",
    "4294967295mo",
    "4294967295d",
    "4294967295w",
    "99999999999999999999h",
    "0h",
    "-1h",
    "1 y",
    "1\u{00a0}h",
    "١h",
    "",
];

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/Santiago",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "Europe/Berln",
    "europe/berlin",
    "Mars/Olympus",
    "",
];

const INTEGERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "99999999999999999999999",
    "4294967295",
    "4294967296",
    "0x7fffffffffffffff",
    "1e10",
    "1.5",
    "\"12\"",
    "inf",
    "nan",
];

const DURATIONS: &[&str] = &[
    "1s",
    "0s",
    "6h",
    "99999999999y",
    "584942417355y",
    "18446744073709551615s",
    "1ns",
    "-1s",
    "",
    "10m 3s",
];

fn pick<T: Clone + std::fmt::Debug + 'static>(list: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(list)
}

/// Mostly from `good` (valid but extreme values), sometimes from `any`.
fn mostly(
    good: &'static [&'static str],
    any: &'static [&'static str],
) -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => pick(good), 1 => pick(any)]
}

/// Ordered scopes at the edges of time, in `(start, end)` pairs.
const TIME_RANGES: &[(&str, &str)] = &[
    ("2026-03-01T00:00:00Z", "2026-03-04T00:00:00Z"),
    ("2026-03-28", "2026-03-31"),
    ("2026-10-24T22:00:00", "2026-10-26T03:30:00"),
    ("2026-03-08T01:59:59", "2026-03-08T03:00:01"),
    ("2011-12-29", "2012-01-02"),
    ("2024-02-28", "2024-03-02"),
    ("0001-01-01", "0001-01-01T00:00:01Z"),
    ("9999-12-30", "9999-12-31T23:59:59Z"),
    ("1900-01-01", "2100-01-01"),
    ("2026-03-01T00:00:00.5Z", "2026-03-01T00:00:02.25Z"),
    ("1970-01-01", "2026-01-01"),
];

const GOOD_STEPS: &[&str] = &[
    "1s", "15m", "1h", "7h", "1d", "1w", "1mo", "13mo", "3 days", "9999mo",
];
const GOOD_ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/Santiago",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
];
const GOOD_KEYS: &[(&str, &str)] = &[
    ("1", "50_000_000"),
    ("-9223372036854775808", "9223372036854775807"),
    ("9223372036854775806", "9223372036854775807"),
    ("-9223372036854775808", "-9223372036854775000"),
    ("0", "1"),
    ("-5", "5"),
];
const GOOD_CHUNKS: &[&str] = &["1", "100_000", "9223372036854775807", "4294967296", "7"];
const GOOD_COUNTS: &[&str] = &["1", "4", "1024", "4294967295", "200_000"];
const GOOD_DURATIONS: &[&str] = &["1s", "6h", "10m 3s", "1ns", "99999999999y"];

/// A spec built from extreme values, mostly well-formed.
fn generated() -> impl Strategy<Value = String> {
    let range = prop_oneof![
        4 => pick(TIME_RANGES),
        1 => (pick(INSTANTS), pick(INSTANTS)),
    ];
    let time = (
        range,
        mostly(GOOD_STEPS, STEPS),
        proptest::option::of(mostly(GOOD_ZONES, ZONES)),
    )
        .prop_map(|((start, end), step, zone)| {
            let zone = zone
                .map(|z| format!("timezone = \"{z}\"\n"))
                .unwrap_or_default();
            format!("start = \"{start}\"\nend = \"{end}\"\npartition = \"{step}\"\n{zone}")
        });
    let keys = prop_oneof![
        4 => pick(GOOD_KEYS),
        1 => (pick(INTEGERS), pick(INTEGERS)),
    ];
    let key = (keys, mostly(GOOD_CHUNKS, INTEGERS))
        .prop_map(|((from, to), chunk)| format!("from = {from}\nto = {to}\nchunk = {chunk}\n"));
    let list = proptest::collection::vec(pick(TIME_RANGES), 0..3).prop_map(|w| {
        let items: Vec<String> = w
            .iter()
            .map(|(a, b)| format!("{{ start = \"{a}\", end = \"{b}\" }}"))
            .collect();
        format!("list = [{}]\n", items.join(", "))
    });
    let scope = prop_oneof![4 => time, 3 => key, 1 => list];
    let order = prop_oneof![
        Just(String::new()),
        Just("order = \"largest_first\"\n".to_owned()),
        (pick(INSTANTS), pick(INSTANTS))
            .prop_map(|(a, b)| format!("order = [\"{a}\", \"{a}..{b}\", \"{b}\"]\n")),
        (pick(INTEGERS), pick(INTEGERS))
            .prop_map(|(a, b)| format!("order = [\"{a}..{b}\", \"{b}\"]\n")),
    ];
    let limits = (
        mostly(GOOD_COUNTS, INTEGERS),
        mostly(GOOD_DURATIONS, DURATIONS),
        mostly(GOOD_DURATIONS, DURATIONS),
        mostly(GOOD_ZONES, ZONES),
        mostly(GOOD_COUNTS, INTEGERS),
        order,
    )
        .prop_map(|(split_rows, duration, retry, zone, rows, order)| {
            format!(
                "[limits]\nsplit_rows = {split_rows}\nretry_cap = \"{retry}\"\n\
                 window = \"22:00-06:00 {zone}\"\n{order}\
                 budget = {{ rows = {rows}, duration = \"{duration}\" }}\n"
            )
        });
    let throttle = (
        mostly(GOOD_DURATIONS, DURATIONS),
        mostly(GOOD_COUNTS, INTEGERS),
    )
        .prop_map(|(interval, max)| {
            format!("[throttle]\ninterval = \"{interval}\"\nmax_rows_per_second = {max}\n")
        });
    let mode = prop_oneof![
        Just("url = \"sqlite://b.db\"\ntable = \"t\"\nkey = [\"id\"]\n"),
        Just(
            "url = \"postgres://u:p@h/db\"\nmode = \"sql\"\nsql = \"DELETE FROM t WHERE a >= :start AND a < :end\"\n"
        ),
        Just(
            "url = \"mariadb://h/db\"\ntable = \"t\"\nkey = [\"id\"]\nmode = \"replace\"\nwindow_column = \"ts\"\n"
        ),
    ];
    (
        scope,
        proptest::option::of(limits),
        proptest::option::weighted(0.2, throttle),
        mode,
        proptest::bool::weighted(0.9),
    )
        .prop_map(|(scope, limits, throttle, mode, with_source)| {
            let source = if with_source {
                "[source]\nurl = \"sqlite://a.db\"\nquery = \"SELECT id FROM t WHERE k >= :start AND k < :end\"\n"
            } else {
                ""
            };
            format!(
                "name = \"gen\"\nreason = \"r\"\n{source}[target]\n{mode}[scope]\n{scope}{}{}",
                limits.unwrap_or_default(),
                throttle.unwrap_or_default()
            )
        })
}

/// A seed spec cut short, with a slice removed, or with text (often unicode) inserted.
fn mutated() -> impl Strategy<Value = String> {
    let edit = prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (any::<prop::sample::Index>(), 0usize..40).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<prop::sample::Index>(), ".{0,12}").prop_map(|(i, s)| Edit::Insert(i, s)),
        (any::<prop::sample::Index>(), pick(INTEGERS)).prop_map(|(i, s)| Edit::Insert(i, s.into())),
        (any::<prop::sample::Index>(), pick(INSTANTS)).prop_map(|(i, s)| Edit::Insert(i, s.into())),
    ];
    (pick(SEEDS), proptest::collection::vec(edit, 1..4)).prop_map(|(seed, edits)| {
        let mut text = seed.to_owned();
        for edit in edits {
            edit.apply(&mut text);
        }
        text
    })
}

#[derive(Clone, Debug)]
enum Edit {
    Truncate(prop::sample::Index),
    Remove(prop::sample::Index, usize),
    Insert(prop::sample::Index, String),
}

impl Edit {
    fn apply(self, text: &mut String) {
        let boundary = |text: &str, i: &prop::sample::Index| {
            let mut at = i.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        match self {
            Edit::Truncate(i) => {
                let at = boundary(text, &i);
                text.truncate(at);
            }
            Edit::Remove(i, n) => {
                let at = boundary(text, &i);
                let mut end = (at + n).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(at..end, "");
            }
            Edit::Insert(i, s) => {
                let at = boundary(text, &i);
                text.insert_str(at, &s);
            }
        }
    }
}

/// Random TOML-ish text: keys, tables, values and unicode.
fn random_toml() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "\\[[a-z\\.\\[\\]]{0,12}\\]",
        "[a-z_]{1,10} = \"[^\"\\\\]{0,20}\"",
        "[a-z_]{1,10} = -?[0-9_]{1,25}",
        "[a-z_]{1,10} = \\{ [a-z]{1,5} = [0-9]{1,3} \\}",
        "[a-z_]{1,10} = \\[[0-9, \"a-z]{0,20}\\]",
        "\\PC{0,30}",
    ];
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

fn parse(text: &str) -> Parsed {
    let env = |name: &str| (name == "PASSWORD").then(|| "pw".to_owned());
    backfill_core::spec::parse(
        text,
        &ParseContext {
            env: &env,
            base_dir: Path::new("/specs"),
        },
    )
}

/// Parses, plans and splits `text`; fails on a plan that does not cover its scope, and on a
/// case that takes longer than [`CASE_LIMIT`]. A panic fails the case by itself.
fn check(text: &str) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let parsed = parse(text);
    let Some(spec) = parsed.spec else {
        prop_assert!(
            parsed.diagnostics.iter().any(|d| d.is_error()),
            "no spec and no error"
        );
        return Ok(());
    };
    let estimate = estimated_partitions(&spec.scope);
    prop_assert!(
        estimate <= MAX_PARTITIONS as u64,
        "parsed past the cap: {estimate}"
    );
    if estimate > PLANNED_HERE {
        // Valid but large: planning it would make this test slow (`a_plan_at_the_cap_covers`
        // plans one).
        return Ok(());
    }
    let plan = match backfill_core::plan::plan(&spec) {
        Ok(plan) => plan,
        // Refused, not panicked: allowed only where the estimate was close to the cap.
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "a parsed spec fails to plan: {e}"
            )));
        }
    };
    let windows: Vec<Window> = plan.windows().collect();
    covers(&spec.scope, &windows)?;
    for w in windows.iter().take(3).chain(windows.last()) {
        let parts = split_window(w, 64);
        prop_assert_eq!(parts.first().map(start_of), Some(start_of(w)));
        prop_assert_eq!(parts.last().map(end_of), Some(end_of(w)));
        for pair in parts.windows(2) {
            prop_assert_eq!(end_of(&pair[0]), start_of(&pair[1]), "split of {}", w);
            prop_assert!(!pair[0].is_empty());
        }
    }
    prop_assert!(
        started.elapsed() < CASE_LIMIT,
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

fn start_of(w: &Window) -> (u8, i128) {
    match *w {
        Window::Time { start, .. } => (0, nanos(start)),
        Window::Key { start, .. } => (1, i128::from(start)),
    }
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> i128 {
    i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())
}

fn end_of(w: &Window) -> (u8, i128) {
    match *w {
        Window::Time { end, .. } => (0, nanos(end)),
        Window::Key { end, .. } => (1, i128::from(end)),
    }
}

/// The windows cover the scope exactly: in order, each non-empty, each starting where the
/// previous ended, from the scope's start to its end (a list: its own windows, sorted).
fn covers(scope: &Scope, windows: &[Window]) -> Result<(), TestCaseError> {
    for pair in windows.windows(2) {
        match scope {
            Scope::List(_) => prop_assert!(end_of(&pair[0]) <= start_of(&pair[1])),
            _ => prop_assert_eq!(end_of(&pair[0]), start_of(&pair[1]), "hole or overlap"),
        }
    }
    prop_assert!(windows.iter().all(|w| !w.is_empty()));
    match scope {
        Scope::Time { start, end, .. } => {
            let whole = Window::Time {
                start: *start,
                end: *end,
            };
            prop_assert_eq!(windows.first().map(start_of), Some(start_of(&whole)));
            prop_assert_eq!(windows.last().map(end_of), Some(end_of(&whole)));
        }
        Scope::Key { from, to, .. } => {
            let whole = Window::Key {
                start: *from,
                end: *to,
            };
            prop_assert_eq!(windows.first().map(start_of), Some(start_of(&whole)));
            prop_assert_eq!(windows.last().map(end_of), Some(end_of(&whole)));
        }
        Scope::List(list) => prop_assert_eq!(windows.len(), list.len()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_specs_never_panic_and_plans_cover_their_scope(text in generated()) {
        check(&text)?;
    }

    #[test]
    fn mutated_real_specs_never_panic(text in mutated()) {
        check(&text)?;
    }

    #[test]
    fn random_toml_never_panics(text in random_toml()) {
        check(&text)?;
    }
}

#[test]
fn the_seeds_are_valid_specs() {
    for seed in SEEDS {
        let parsed = parse(seed);
        let errors: Vec<String> = parsed
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{seed}");
        check(seed).unwrap();
    }
}

/// The generator is not all noise: a good share of its specs are valid, so the coverage
/// check above runs on many plans, including extreme ones.
#[test]
fn generated_specs_are_often_valid() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = generated();
    let mut valid = 0;
    for _ in 0..400 {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        valid += usize::from(parse(&text).spec.is_some());
    }
    assert!(valid >= 40, "only {valid} of 400 generated specs are valid");
}

/// A scope just under the cap parses, plans in reasonable time and covers its scope; one step
/// finer is refused while parsing, naming the field and the count.
#[test]
fn a_plan_at_the_cap_covers_and_one_past_it_is_refused() {
    let spec = |step: &str| {
        SQL_SPEC
            .replace(
                "start     = \"2025-12-20\"",
                "start = \"2026-01-01T00:00:00Z\"",
            )
            .replace(
                "end       = \"2026-01-05\"",
                "end = \"2026-01-12T13:46:40Z\"",
            )
            .replace("partition = \"1d\"", &format!("partition = \"{step}\""))
    };
    // 1,000,000 seconds.
    let started = Instant::now();
    let parsed = parse(&spec("1s"));
    let plan = backfill_core::plan::plan(parsed.spec.as_ref().unwrap()).unwrap();
    assert_eq!(plan.len(), MAX_PARTITIONS);
    covers(
        &parsed.spec.unwrap().scope,
        &plan.windows().collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(started.elapsed() < CASE_LIMIT, "{:?}", started.elapsed());
    let finer = spec("1s").replace("13:46:40Z", "13:46:41Z");
    let rendered: Vec<String> = parse(&finer)
        .diagnostics
        .iter()
        .map(|d| d.render("spec.toml"))
        .collect();
    assert_eq!(
        rendered,
        [
            "spec.toml:13:13: error: scope.partition: the scope makes about 1000001 partitions, more than the 1000000 a plan may hold\n  hint: use a larger partition size, or split the scope into several specs"
        ]
    );
}
