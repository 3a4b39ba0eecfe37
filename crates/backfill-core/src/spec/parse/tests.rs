//! Spec validation cases: each input is a spec, each expectation the rendered diagnostics.

use std::path::Path;

use expect_test::{Expect, expect};

use crate::spec::{ParseContext, Parsed, WriteMode};

const GOOD: &str = r#"
name = "orders_repair"
reason = "ETL outage"

[source]
url = "sqlite://src.db"
query = "SELECT id, v FROM t WHERE ts >= :start AND ts < :end"

[target]
url = "sqlite://dst.db"
table = "t_copy"
key = ["id"]

[scope]
start = "2026-03-01T00:00:00Z"
end = "2026-03-04T00:00:00Z"
partition = "1h"
"#;

fn parse(text: &str) -> Parsed {
    let env = |name: &str| (name == "DB_PASSWORD").then(|| "s3cret".to_owned());
    crate::spec::parse(
        text,
        &ParseContext {
            env: &env,
            base_dir: Path::new("/specs"),
        },
    )
}

fn check(text: &str, want: Expect) {
    let parsed = parse(text);
    let got: Vec<String> = parsed
        .diagnostics
        .iter()
        .map(|d| d.render("spec.toml"))
        .collect();
    want.assert_eq(&got.join("\n"));
}

/// `GOOD` with `from` replaced by `to`.
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn a_good_spec_parses() {
    let parsed = parse(GOOD);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let spec = parsed.spec.unwrap();
    assert_eq!(spec.name, "orders_repair");
    assert_eq!(
        spec.source.as_ref().unwrap().url.expose(),
        "sqlite:///specs/src.db"
    );
    assert_eq!(spec.target.mode, WriteMode::Upsert);
    assert_eq!(spec.limits.concurrency.get(), 4);
    assert_eq!(crate::plan::partitions(&spec.scope).unwrap().len(), 72);
}

#[test]
fn unknown_keys_suggest_the_closest() {
    check(
        &good_with("partition = \"1h\"", "partiton = \"1h\""),
        expect![[r#"
            spec.toml:14:2: error: scope.partition: a time scope needs `partition`, the partition size
              hint: e.g. `partition = "1h"`
            spec.toml:17:1: error: scope.partiton: unknown key `partiton`
              hint: did you mean `partition`?"#]],
    );
    check(
        &format!("{GOOD}\n[limits]\nconcurency = 3\nwhatever = 1\n"),
        expect![[r#"
            spec.toml:20:1: error: limits.concurency: unknown key `concurency`
              hint: did you mean `concurrency`?
            spec.toml:21:1: error: limits.whatever: unknown key `whatever`
              hint: known keys here: concurrency, rows_per_second, batches_per_second, split_rows, split_slow, batch_rows, max_attempts, retry_base, retry_cap, budget, window, order, circuit_breaker"#]],
    );
}

#[test]
fn start_must_precede_end() {
    check(
        &good_with("2026-03-04T00:00:00Z", "2026-03-01T00:00:00Z"),
        expect![[r#"
            spec.toml:16:7: error: scope.end: end (2026-03-01 00:00:00 UTC) must be after start (2026-03-01 00:00:00 UTC)
              hint: the scope is the half-open range [start, end)"#]],
    );
}

#[test]
fn partition_size_must_be_positive() {
    check(
        &good_with("\"1h\"", "\"0h\""),
        expect![[r#"
            spec.toml:17:13: error: scope.partition: invalid partition size: a partition size must be greater than zero
              hint: e.g. `15m`, `1h`, `1d`, `1mo`"#]],
    );
    check(
        &good_with("\"1h\"", "\"-2d\""),
        expect![[r#"
            spec.toml:17:13: error: scope.partition: invalid partition size: a partition size must be positive
              hint: e.g. `15m`, `1h`, `1d`, `1mo`"#]],
    );
}

#[test]
fn key_columns_are_required_for_upsert() {
    check(
        &good_with("key = [\"id\"]", ""),
        expect![[r#"
            spec.toml:9:2: error: target.key: `upsert` mode needs `key`, the key columns
              hint: e.g. `key = ["id"]`; the source query must return these columns"#]],
    );
    check(
        &good_with("key = [\"id\"]", "key = []"),
        expect![[r#"
            spec.toml:12:7: error: target.key: the key list is empty
              hint: e.g. `key = ["id"]`"#]],
    );
    check(
        &good_with("key = [\"id\"]", "key = [\"id; drop table x\"]"),
        expect![[r#"
            spec.toml:12:8: error: target.key: `id; drop table x` is not a valid identifier
              hint: use letters, digits and `_` (optionally `schema.table`); quoting is done for you"#]],
    );
}

#[test]
fn query_must_use_start_and_end() {
    check(
        &good_with("ts >= :start AND ts < :end", "ts >= '2026-01-01'"),
        expect![[r#"
            spec.toml:7:9: error: source.query: the query does not use `:start`
              hint: filter the window with bound parameters, e.g. `WHERE ts >= :start AND ts < :end`
            spec.toml:7:9: error: source.query: the query does not use `:end`
              hint: filter the window with bound parameters, e.g. `WHERE ts >= :start AND ts < :end`"#]],
    );
    check(
        &good_with("ts < :end", "ts < :ende"),
        expect![[r#"
            spec.toml:7:9: error: source.query: the query does not use `:end`
              hint: filter the window with bound parameters, e.g. `WHERE ts >= :start AND ts < :end`
            spec.toml:7:9: error: source.query: unknown parameter `:ende`
              hint: only `:start` and `:end` are bound"#]],
    );
}

#[test]
fn wrong_types_and_bad_toml() {
    check(
        &format!("{GOOD}\n[limits]\nconcurrency = \"four\"\nbatch_rows = 0\n"),
        expect![[r#"
            spec.toml:20:15: error: limits.concurrency: expected an integer, found a string
            spec.toml:21:14: error: limits.batch_rows: must be between 1 and 4294967295, found 0"#]],
    );
    check(
        "name = \"x\"\n[source\nurl = 1",
        expect!["spec.toml:2:8: error: invalid TOML: unclosed table, expected `]`"],
    );
    check(
        "",
        expect![[r#"
        spec.toml: error: name: missing required key `name`
        spec.toml: error: scope: missing section `[scope]`
          hint: add a `[scope]` table; see docs/spec.md
        spec.toml: error: source: missing section `[source]`
          hint: add a `[source]` table with the `url` and `query` rows are read from (only `sql` mode, which runs its own statement, can do without); see docs/spec.md
        spec.toml: error: target: missing section `[target]`
          hint: add a `[target]` table; see docs/spec.md"#]],
    );
}

#[test]
fn urls_expand_env_and_never_show_passwords() {
    let text = good_with("sqlite://src.db", "sqlite://src.db?password=${DB_PASSWORD}");
    let spec = parse(&text).spec.unwrap();
    assert_eq!(
        spec.source.as_ref().unwrap().url.expose(),
        "sqlite:///specs/src.db?password=s3cret"
    );
    assert!(!format!("{:?}", spec).contains("s3cret"));
    check(
        &good_with("sqlite://src.db", "sqlite://src.db?password=${MISSING}"),
        expect![[r#"
            spec.toml:6:7: error: source.url: environment variable `MISSING` is not set
              hint: export MISSING=… before running, or remove `${MISSING}` from the URL"#]],
    );
    check(
        &good_with("sqlite://src.db", "oracle://u:hunter2@h/db"),
        expect![[r#"
            spec.toml:6:7: error: source.url: unsupported URL `oracle://u:***@h/db`
              hint: supported schemes: sqlite, postgres, postgresql, mysql, mariadb; e.g. `sqlite://data/events.db` (relative to the spec file)"#]],
    );
}

#[test]
fn write_modes() {
    check(
        &good_with("key = [\"id\"]", "key = [\"id\"]\nmode = \"replase\""),
        expect![[r#"
            spec.toml:13:8: error: target.mode: unknown write mode `replase`
              hint: did you mean `replace`?"#]],
    );
    check(
        &good_with("key = [\"id\"]", "key = [\"id\"]\nmode = \"replace\""),
        expect![[r#"
            spec.toml:9:2: error: target.window_column: `replace` mode needs `window_column`
              hint: the target column compared with `:start`/`:end` when deleting a window"#]],
    );
    let sql = good_with(
        "key = [\"id\"]",
        "mode = \"sql\"\nsql = \"INSERT INTO x SELECT * FROM y WHERE ts >= :start AND ts < :end\"",
    );
    let spec = parse(&sql).spec.unwrap();
    assert!(matches!(spec.target.mode, WriteMode::Sql { .. }));
    check(
        &good_with("key = [\"id\"]", "mode = \"sql\"\nsql = \"DELETE FROM x\""),
        expect![[r#"
            spec.toml:13:7: error: target.sql: the statement does not use `:start`
              hint: without the window each partition would redo the whole table
            spec.toml:13:7: error: target.sql: the statement does not use `:end`
              hint: without the window each partition would redo the whole table"#]],
    );
}

#[test]
fn sql_mode_needs_no_source_nor_key() {
    let without = |extra: &str| {
        let text = good_with(
            "key = [\"id\"]",
            "mode = \"sql\"\nsql = \"INSERT INTO x SELECT * FROM y WHERE ts >= :start AND ts < :end\"",
        );
        let start = text.find("[source]").unwrap();
        let end = text.find("[target]").unwrap();
        format!("{}{}{extra}", &text[..start], &text[end..])
    };
    let parsed = parse(&without(""));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let spec = parsed.spec.unwrap();
    assert!(spec.source.is_none());
    assert!(spec.target.key.is_empty());
    // Limits that count a window's rows need a source to count them in.
    check(
        &without("\n[limits]\nsplit_rows = 1000\norder = \"largest_first\"\n"),
        expect![[r#"
            spec.toml:17:14: error: limits.split_rows: `split_rows` needs `[source]`: it counts each partition's rows in the source
              hint: add a `[source]` whose `query` selects the rows of a window (`:start`, `:end`): in `sql` mode it is only used to count them
            spec.toml:18:9: error: limits.order: `largest_first` needs `[source]`: it counts each partition's rows in the source
              hint: add a `[source]` whose `query` selects the rows of a window (`:start`, `:end`): in `sql` mode it is only used to count them"#]],
    );
    // Other modes still need one.
    check(
        &without("").replace("mode = \"sql\"", "key = [\"id\"]\nmode = \"upsert\""),
        expect![[r#"
            spec.toml: error: source: missing section `[source]`
              hint: add a `[source]` table with the `url` and `query` rows are read from (only `sql` mode, which runs its own statement, can do without); see docs/spec.md"#]],
    );
}

#[test]
fn unknown_zones_and_schemes_suggest_the_closest() {
    check(
        &good_with(
            "partition = \"1h\"",
            "partition = \"1h\"\ntimezone = \"Europe/Berln\"",
        ),
        expect![[r#"
            spec.toml:18:12: error: scope.timezone: unknown time zone `Europe/Berln`
              hint: did you mean `Europe/Berlin`?"#]],
    );
    check(
        &good_with(
            "partition = \"1h\"",
            "partition = \"1h\"\ntimezone = \"america/new_york\"",
        ),
        expect![[r#"
            spec.toml:18:12: error: scope.timezone: unknown time zone `america/new_york`
              hint: did you mean `America/New_York`?"#]],
    );
    check(
        &good_with("sqlite://src.db", "postgress://u:hunter2@h/db"),
        expect![[r#"
            spec.toml:6:7: error: source.url: unsupported URL `postgress://u:***@h/db`
              hint: did you mean `postgres://`? (supported schemes: sqlite, postgres, postgresql, mysql, mariadb)"#]],
    );
    check(
        &good_with("sqlite://dst.db", "sqlite3://dst.db"),
        expect![[r#"
            spec.toml:10:7: error: target.url: unsupported URL `sqlite3://dst.db`
              hint: did you mean `sqlite://`? (supported schemes: sqlite, postgres, postgresql, mysql, mariadb)"#]],
    );
}

#[test]
fn sizes_past_what_can_be_planned_name_the_field() {
    check(
        &good_with("partition = \"1h\"", "partition = \"4000000000h\""),
        expect![[r#"
            spec.toml:17:13: error: scope.partition: invalid partition size: `4000000000h` is longer than 10000 years, the largest partition size
              hint: e.g. `15m`, `1h`, `1d`, `1mo`"#]],
    );
    check(
        &good_with(
            "end = \"2026-03-04T00:00:00Z\"",
            "end = \"9999-12-31T23:59:59Z\"",
        )
        .replace("partition = \"1h\"", "partition = \"1s\""),
        expect![[r#"
            spec.toml:17:13: error: scope.partition: the scope makes about 251629977599 partitions, more than the 1000000 a plan may hold
              hint: use a larger partition size, or split the scope into several specs"#]],
    );
    let key = |from: &str, to: &str, chunk: &str| {
        let text = good_with(
            "start = \"2026-03-01T00:00:00Z\"\nend = \"2026-03-04T00:00:00Z\"\npartition = \"1h\"",
            &format!("from = {from}\nto = {to}\nchunk = {chunk}"),
        );
        parse(&text)
    };
    let rendered = |p: Parsed| {
        p.diagnostics
            .iter()
            .map(|d| d.render("spec.toml"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    expect![[r#"
        spec.toml:17:9: error: scope.chunk: the scope makes about 18446744073709551615 partitions, more than the 1000000 a plan may hold
          hint: use a larger partition size, or split the scope into several specs"#]]
    .assert_eq(&rendered(key("-9223372036854775808", "9223372036854775807", "1")));
    let whole = key(
        "-9223372036854775808",
        "9223372036854775807",
        "9223372036854775807",
    );
    assert!(whole.diagnostics.is_empty(), "{:?}", whole.diagnostics);
    assert_eq!(crate::plan::plan(&whole.spec.unwrap()).unwrap().len(), 3);
    expect!["spec.toml:15:8: error: scope.from: integer out of range"].assert_eq(&rendered(key(
        "-9223372036854775809",
        "0",
        "1",
    )));
    expect![[r#"
        spec.toml:20:14: error: limits.batch_rows: at most 10000000 rows, found 4294967295
          hint: a batch is held in memory; e.g. `batch_rows = 5_000`"#]]
    .assert_eq(&rendered(parse(&format!(
        "{GOOD}\n[limits]\nbatch_rows = 4294967295\n"
    ))));
    expect![[r#"
        spec.toml:20:13: error: limits.retry_cap: must be at most 24h, found 1year 1day
          hint: retries back off exponentially up to `retry_cap`; e.g. `1m`"#]]
    .assert_eq(&rendered(parse(&format!(
        "{GOOD}\n[limits]\nretry_cap = \"1y 1d\"\n"
    ))));
}

#[test]
fn key_and_list_scopes() {
    let key_scope = "[scope]\nkey = \"id\"\nfrom = 1\nto = 1_000\nchunk = 100\n";
    let text = GOOD.split("[scope]").next().unwrap().to_owned() + key_scope;
    let spec = parse(&text).spec.unwrap();
    assert_eq!(crate::plan::partitions(&spec.scope).unwrap().len(), 10);

    let bad =
        GOOD.split("[scope]").next().unwrap().to_owned() + "[scope]\nfrom = 5\nto = 5\nchunk = 0\n";
    check(
        &bad,
        expect![[r#"
            spec.toml:16:6: error: scope.to: to (5) must be greater than from (5)
              hint: the scope is the half-open range [from, to)
            spec.toml:17:9: error: scope.chunk: chunk must be positive, found 0"#]],
    );
    let list = GOOD.split("[scope]").next().unwrap().to_owned()
        + "[scope]\nlist = [{ start = 2026-03-01T00:00:00Z, end = \"2026-03-02\" }, { start = \"2026-03-05\", end = \"2026-03-06\" }]\n";
    let spec = parse(&list).spec.unwrap();
    assert_eq!(crate::plan::partitions(&spec.scope).unwrap().len(), 2);
    let mixed = GOOD.to_owned() + "from = 1\n";
    check(
        &mixed,
        expect![[r#"
            spec.toml:14:2: error: scope: the scope mixes kinds
              hint: use exactly one of: time (`start`/`end`/`partition`), keys (`from`/`to`/`chunk`), or `list`"#]],
    );
}

#[test]
fn timezones_and_local_dates() {
    let text = good_with(
        "end = \"2026-03-04T00:00:00Z\"",
        "end = \"2026-03-04\"\ntimezone = \"Europe/Berlin\"",
    )
    .replace("2026-03-01T00:00:00Z", "2026-03-01");
    let spec = parse(&text).spec.unwrap();
    let crate::plan::Scope::Time { start, .. } = spec.scope else {
        panic!("time scope")
    };
    assert_eq!(start.to_rfc3339(), "2026-02-28T23:00:00+00:00");
    check(
        &good_with(
            "partition = \"1h\"",
            "partition = \"1h\"\ntimezone = \"Mars/Olympus\"",
        ),
        expect![[r#"
            spec.toml:18:12: error: scope.timezone: unknown time zone `Mars/Olympus`
              hint: use an IANA name such as `UTC`, `Europe/Berlin` or `America/New_York`"#]],
    );
}

#[test]
fn never_panics_on_odd_input() {
    for text in [
        "\u{0}",
        "name = 1",
        "[[source]]\nurl=1",
        "source = 5",
        "a.b.c.d = 1",
        "[scope]\nlist = 3",
        "[scope]\nlist = [1, {start = 1, end = \"x\"}]",
    ] {
        let parsed = parse(text);
        assert!(parsed.spec.is_none());
        assert!(!parsed.diagnostics.is_empty());
    }
}

#[test]
fn same_spec_same_hash() {
    assert_eq!(
        parse(GOOD).spec.unwrap().spec_hash,
        parse(GOOD).spec.unwrap().spec_hash
    );
}

#[test]
fn databases_default_to_native_time_binding() {
    let text = GOOD
        .replace(
            "sqlite://src.db",
            "postgres://app:${DB_PASSWORD}@127.0.0.1:5432/shop",
        )
        .replace("sqlite://dst.db", "mariadb://root@127.0.0.1:3306/test");
    let spec = parse(&text).spec.unwrap();
    assert_eq!(
        spec.source.as_ref().unwrap().time_format,
        crate::TimeFormat::Native
    );
    assert_eq!(spec.target.time_format, crate::TimeFormat::Native);
    assert_eq!(spec.target.url.expose(), "mysql://root@127.0.0.1:3306/test");
    assert!(!format!("{spec:?}").contains("s3cret"));
    // A SQLite target of a PostgreSQL source compares text.
    let text = GOOD.replace("sqlite://src.db", "postgres://127.0.0.1/shop");
    let spec = parse(&text).spec.unwrap();
    assert_eq!(spec.target.time_format, crate::TimeFormat::Rfc3339);
}

#[test]
fn guard_is_an_upsert_column() {
    let spec = parse(&good_with(
        "key = [\"id\"]",
        "key = [\"id\"]\nguard = \"updated_at\"",
    ))
    .spec
    .unwrap();
    assert_eq!(spec.target.guard.as_deref(), Some("updated_at"));
    check(
        &good_with(
            "key = [\"id\"]",
            "key = [\"id\"]\nguard = \"updated_at\"\nmode = \"replace\"\nwindow_column = \"ts\"",
        ),
        expect![[r#"
            spec.toml:13:9: error: target.guard: `guard` only applies to `upsert` mode
              hint: replace and sql modes rewrite the window as a whole"#]],
    );
}

const ALL_LIMITS: &str = r#"
[limits]
rows_per_second = 50_000
batches_per_second = 20
budget = { rows = 100_000_000, duration = "6h", partitions = 300, cost = { per_million_rows = 0.40, per_hour = 2, currency = "EUR", max = 50.0 } }
window = "22:00-06:00 Europe/Paris"
order = ["2026-03-03", "2026-03-01T10:00:00Z..2026-03-01T12:00:00Z"]
circuit_breaker = { window = 20, max_error_rate = 0.25 }
split_rows = 200_000
split_slow = 4
"#;

#[test]
fn every_limit_parses() {
    use std::time::Duration;

    use crate::order::Order;

    let parsed = parse(&format!("{GOOD}{ALL_LIMITS}"));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let limits = parsed.spec.unwrap().limits;
    assert_eq!(limits.batches_per_second.map(|n| n.get()), Some(20));
    let budget = &limits.budget;
    assert_eq!(budget.rows, Some(100_000_000));
    assert_eq!(budget.duration, Some(Duration::from_secs(6 * 3600)));
    assert_eq!(budget.partitions, Some(300));
    let cost = budget.cost.as_ref().unwrap();
    assert_eq!(
        (
            cost.per_million_rows,
            cost.per_hour,
            cost.currency.as_str(),
            cost.max
        ),
        (0.40, 2.0, "EUR", Some(50.0))
    );
    assert_eq!(
        limits.window.as_ref().map(ToString::to_string).as_deref(),
        Some("22:00-06:00 Europe/Paris")
    );
    assert_eq!(
        limits.order.describe(),
        "priority: 2026-03-03, 2026-03-01T10:00:00Z..2026-03-01T12:00:00Z, then the rest oldest first"
    );
    assert!(matches!(limits.order, Order::Priority(ref r) if r.len() == 2));
    assert!(limits.breaker.enabled);
    assert_eq!(limits.breaker.window, 20);
    assert_eq!(limits.breaker.max_error_rate, 0.25);
    assert_eq!(limits.split.rows, Some(200_000));
    assert_eq!(limits.split.slow_factor, Some(4.0));

    // Defaults.
    let limits = parse(GOOD).spec.unwrap().limits;
    assert!(limits.budget.is_empty());
    assert_eq!(limits.window, None);
    assert_eq!(limits.order, Order::OldestFirst);
    assert_eq!(limits.breaker, crate::breaker::BreakerPolicy::default());
    assert!(limits.split.is_off());

    // Budget as its own table, a named order, the breaker switched off.
    let parsed = parse(&format!(
        "{GOOD}\n[limits]\norder = \"largest_first\"\ncircuit_breaker = false\n\n[limits.budget]\nrows = 10\n"
    ));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let limits = parsed.spec.unwrap().limits;
    assert_eq!(limits.order, Order::LargestFirst);
    assert!(!limits.breaker.enabled);
    assert_eq!(limits.budget.rows, Some(10));
    let parsed = parse(&format!(
        "{GOOD}\n[limits]\ncircuit_breaker = {{ enabled = false }}\n"
    ));
    assert!(!parsed.spec.unwrap().limits.breaker.enabled);
}

fn limits_check(limits: &str, want: Expect) {
    check(&format!("{GOOD}\n[limits]\n{limits}\n"), want);
}

#[test]
fn bad_rates_and_budgets() {
    limits_check(
        "batches_per_second = 0\nbudget = 5",
        expect![[r#"
            spec.toml:20:22: error: limits.batches_per_second: must be between 1 and 4294967295, found 0
            spec.toml:21:10: error: limits.budget: expected a table, found an integer
              hint: e.g. `budget = { rows = 100_000_000, duration = "6h" }`"#]],
    );
    limits_check(
        "budget = { rows = -1, duration = \"soon\", partitions = \"many\", minutes = 3 }",
        expect![[r#"
            spec.toml:20:19: error: limits.budget.rows: must be positive, found -1
            spec.toml:20:34: error: limits.budget.duration: invalid duration `soon`: expected number at 0
              hint: write e.g. `200ms`, `5s`, `2m`, `6h`
            spec.toml:20:55: error: limits.budget.partitions: expected an integer, found a string
            spec.toml:20:63: error: limits.budget.minutes: unknown key `minutes`
              hint: known keys here: rows, duration, partitions, cost"#]],
    );
    limits_check(
        "budget = { duration = \"0s\", cost = { per_hour = -2, max = 0, currency = \"\", per_milion_rows = 1 } }",
        expect![[r#"
            spec.toml:20:23: error: limits.budget.duration: must be longer than zero
            spec.toml:20:49: error: limits.budget.cost.per_hour: must be zero or more, found -2
            spec.toml:20:59: error: limits.budget.cost.max: must be positive, found 0
            spec.toml:20:73: error: limits.budget.cost.currency: invalid currency ``
              hint: a code such as `USD` or `EUR` (at most 16 characters)
            spec.toml:20:77: error: limits.budget.cost.per_milion_rows: unknown key `per_milion_rows`
              hint: did you mean `per_million_rows`?"#]],
    );
    limits_check(
        "budget = { cost = { per_hour = \"2\", max = nan } }",
        expect![[r#"
            spec.toml:20:32: error: limits.budget.cost.per_hour: expected a number, found a string
            spec.toml:20:43: error: limits.budget.cost.max: expected a finite number"#]],
    );
}

#[test]
fn bad_windows() {
    limits_check(
        "window = \"22:00-22:00\"",
        expect![[r#"
            spec.toml:20:10: error: limits.window: invalid window: the window starts and ends at 22:00; remove `window` to run at any time
              hint: e.g. `window = "22:00-06:00"` or `"22:00-06:00 Europe/Paris"` (UTC when no zone is given)"#]],
    );
    limits_check(
        "window = \"22h-6h Paris\"",
        expect![[r#"
            spec.toml:20:10: error: limits.window: invalid window: `22h` is not a time `HH:MM`
              hint: e.g. `window = "22:00-06:00"` or `"22:00-06:00 Europe/Paris"` (UTC when no zone is given)"#]],
    );
    limits_check(
        "window = 22",
        expect!["spec.toml:20:10: error: limits.window: expected a string, found an integer"],
    );
}

#[test]
fn bad_orders() {
    limits_check(
        "order = \"newest\"",
        expect![[r#"
            spec.toml:20:9: error: limits.order: unknown order `newest`
              hint: did you mean `newest_first`?"#]],
    );
    limits_check(
        "order = []",
        expect![[r#"
            spec.toml:20:9: error: limits.order: the priority list is empty
              hint: use `oldest_first`, `newest_first`, `largest_first`, or a priority list such as `["2025-12-24", "2025-12-20..2025-12-23"]`"#]],
    );
    limits_check(
        "order = [\"2026-03-02\", 3, \"1000..2000\", \"2026-03-09\", \"2026-03-03..2026-03-01\"]",
        expect![[r#"
            spec.toml:20:24: error: limits.order[1]: expected a window string, found an integer
              hint: e.g. `"2025-12-24"`, `"2025-12-20..2025-12-23"` or `"1000..2000"`
            spec.toml:20:27: error: limits.order[2]: `1000..2000` is a key window but the scope is a time scope
              hint: use dates or instants, e.g. `2025-12-24` or `2025-12-20..2025-12-23`
            spec.toml:20:41: warning: limits.order[3]: `2026-03-09` covers no partition of the scope
              hint: it has no effect; compare it with `[scope]`
            spec.toml:20:55: error: limits.order[4]: `2026-03-03..2026-03-01` is empty: its end is not after its start
              hint: a date, an RFC 3339 instant, `START..END` of those, or a key range `1000..2000`"#]],
    );
    limits_check(
        "order = 1",
        expect![[r#"
            spec.toml:20:9: error: limits.order: expected a string or an array of windows, found an integer
              hint: use `oldest_first`, `newest_first`, `largest_first`, or a priority list such as `["2025-12-24", "2025-12-20..2025-12-23"]`"#]],
    );
    // A priority list that only warns still yields a spec.
    let parsed = parse(&format!("{GOOD}\n[limits]\norder = [\"2027-01-01\"]\n"));
    assert!(parsed.spec.is_some());
    assert_eq!(parsed.diagnostics.len(), 1);
}

#[test]
fn bad_circuit_breakers() {
    limits_check(
        "circuit_breaker = { window = 0, max_error_rate = 1.0, enable = false }",
        expect![[r#"
            spec.toml:20:30: error: limits.circuit_breaker.window: must be between 1 and 4294967295, found 0
            spec.toml:20:50: error: limits.circuit_breaker.max_error_rate: must be at least 0 and below 1, found 1
            spec.toml:20:55: error: limits.circuit_breaker.enable: unknown key `enable`
              hint: did you mean `enabled`?"#]],
    );
    limits_check(
        "circuit_breaker = \"off\"",
        expect![[r#"
            spec.toml:20:19: error: limits.circuit_breaker: expected a table, found a string
              hint: e.g. `circuit_breaker = { window = 50, max_error_rate = 0.2 }`, or `false` to turn it off"#]],
    );
    limits_check(
        "circuit_breaker = { window = 200_000 }",
        expect!["spec.toml:20:30: error: limits.circuit_breaker.window: at most 100000 batches"],
    );
}

#[test]
fn key_scope_priorities_and_free_costs() {
    let key_scope = GOOD.replace(
        "start = \"2026-03-01T00:00:00Z\"\nend = \"2026-03-04T00:00:00Z\"\npartition = \"1h\"",
        "key = \"id\"\nfrom = 0\nto = 10_000\nchunk = 1000",
    );
    check(
        &format!(
            "{key_scope}\n[limits]\norder = [\"2000..3000\", \"2026-03-01\", \"20000..30000\"]\nbudget = {{ cost = {{ currency = \"USD\" }} }}\n"
        ),
        expect![[r#"
            spec.toml:21:24: error: limits.order[1]: `2026-03-01` is a time window but the scope is a key scope
              hint: use keys, e.g. `1000..2000`
            spec.toml:21:38: warning: limits.order[2]: `20000..30000` covers no partition of the scope
              hint: it has no effect; compare it with `[scope]`
            spec.toml:22:12: warning: limits.budget.cost: the cost is always zero
              hint: set `per_million_rows` and/or `per_hour`"#]],
    );
}

const THROTTLE: &str = r#"
[throttle]
probe = { url = "postgres://app:${DB_PASSWORD}@db/shop", sql = "SELECT 1" }
watch = { url = "mariadb://app:${DB_PASSWORD}@db/shop" }
interval = "500ms"
baseline_probes = 30
window = 12
max_latency_increase = 0.2
max_replica_lag = "5s"
decrease_factor = 0.7
min_rate_fraction = 0.1
increase_fraction = 0.02
max_rows_per_second = 40_000
rest_check = "3s"
rest_check_every = "2m"
"#;

#[test]
fn a_spec_with_every_new_key_parses() {
    use std::time::Duration;

    let parsed = parse(&format!("{GOOD}{ALL_LIMITS}{THROTTLE}"));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let spec = parsed.spec.unwrap();
    let throttle = spec.throttle.as_ref().unwrap();
    let probe = throttle.probe.as_ref().unwrap();
    assert_eq!(probe.url.expose(), "postgres://app:s3cret@db/shop");
    assert!(!format!("{probe:?}").contains("s3cret"));
    assert_eq!(probe.sql, "SELECT 1");
    let watch = throttle.watch.as_ref().unwrap();
    assert_eq!(watch.expose(), "mysql://app:s3cret@db/shop");
    assert!(!format!("{throttle:?}").contains("s3cret"));
    assert_eq!(throttle.interval, Duration::from_millis(500));
    assert_eq!((throttle.baseline_probes, throttle.window), (30, 12));
    assert_eq!(throttle.max_replica_lag, Some(Duration::from_secs(5)));
    assert_eq!(
        (
            throttle.max_latency_increase,
            throttle.decrease_factor,
            throttle.min_rate_fraction,
            throttle.increase_fraction
        ),
        (0.2, 0.7, 0.1, 0.02)
    );
    assert_eq!(
        (throttle.rest_check, throttle.rest_check_every),
        (Duration::from_secs(3), Duration::from_secs(120))
    );
    // The smaller of the throttle's maximum and the static limit.
    assert_eq!(throttle.max_rate(&spec.limits), Some(40_000.0));
    assert!(!spec.redacted_text.contains("s3cret"));

    // Defaults, with the maximum from `limits.rows_per_second`.
    let parsed = parse(&format!(
        "{GOOD}\n[limits]\nrows_per_second = 1000\n\n[throttle]\nprobe = {{ url = \"sqlite://live.db\", sql = \"SELECT 1\" }}\n"
    ));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let spec = parsed.spec.unwrap();
    let throttle = spec.throttle.unwrap();
    assert_eq!(
        throttle,
        crate::spec::ThrottleSpec {
            probe: throttle.probe.clone(),
            ..crate::spec::ThrottleSpec::default()
        }
    );
    assert_eq!(
        throttle.probe.as_ref().unwrap().url.expose(),
        "sqlite:///specs/live.db"
    );
    assert_eq!(throttle.max_rate(&spec.limits), Some(1000.0));
    assert!(parse(GOOD).spec.unwrap().throttle.is_none());

    // A watched database alone: no probe, no warning, and the replica lag is read from it.
    let parsed = parse(&format!(
        "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nmax_replica_lag = \"2s\"\nwatch = {{ url = \"postgres://monitor@db/shop\" }}\n"
    ));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let throttle = parsed.spec.unwrap().throttle.unwrap();
    assert_eq!(throttle.probe, None);
    assert_eq!(
        throttle.watch.as_ref().map(crate::SecretUrl::expose),
        Some("postgres://monitor@db/shop")
    );
}

#[test]
fn throttle_needs_a_maximum_rate() {
    check(
        &format!(
            "{GOOD}\n[throttle]\nprobe = {{ url = \"sqlite://live.db\", sql = \"SELECT 1\" }}\n"
        ),
        expect![[r#"
            spec.toml:19:2: error: throttle: the throttle has no maximum rate
              hint: set `throttle.max_rows_per_second` or `limits.rows_per_second`: the rate the run starts at and never exceeds"#]],
    );
}

#[test]
fn rest_checks_are_off_at_zero_and_otherwise_bounded() {
    let off = parse(&format!(
        "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nwatch = {{ url = \"postgres://db/x\" }}\nrest_check = \"0s\"\n"
    ));
    assert!(off.diagnostics.is_empty(), "{:?}", off.diagnostics);
    assert!(off.spec.unwrap().throttle.unwrap().rest_check.is_zero());
    check(
        &format!(
            "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nwatch = {{ url = \"postgres://db/x\" }}\ninterval = \"1s\"\nrest_check = \"1s\"\nrest_check_every = \"5s\"\n"
        ),
        expect![[r#"
            spec.toml:23:14: error: throttle.rest_check: must be "0s" (off) or between two intervals (2000 ms) and 1m, found 1000 ms
              hint: a rest check measures live traffic with the backfill held; "2s" is the default
            spec.toml:24:20: error: throttle.rest_check_every: must be between 10 times `rest_check` (10000 ms) and 1h, found 5000 ms
              hint: each check holds the backfill for `rest_check` and a settling second; "60s" is the default"#]],
    );
    check(
        &format!(
            "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nwatch = {{ url = \"postgres://db/x\" }}\nrest_check = \"2m\"\nrest_check_every = \"soon\"\n"
        ),
        expect![[r#"
            spec.toml:22:14: error: throttle.rest_check: must be "0s" (off) or between two intervals (2000 ms) and 1m, found 120000 ms
              hint: a rest check measures live traffic with the backfill held; "2s" is the default
            spec.toml:23:20: error: throttle.rest_check_every: invalid duration `soon`: expected number at 0
              hint: write e.g. `200ms`, `5s`, `2m`, `6h`"#]],
    );
}

#[test]
fn bad_throttles() {
    check(
        &format!(
            "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nprobe = {{ url = \"postgres://u:${{NOPE}}@db/x\", sql = \" \", timeout = 1 }}\ninterval = \"1ms\"\nbaseline_probes = 3\nwindow = 0\nmax_latency_increase = 0\ndecrease_factor = 1.5\nmin_rate_fraction = 0\nincrease_fraction = \"5%\"\nmax_replica_lag = \"0s\"\nmax_rows_per_sec = 5\n"
        ),
        expect![[r#"
            spec.toml:21:17: error: throttle.probe.url: environment variable `NOPE` is not set
              hint: export NOPE=… before running, or remove `${NOPE}` from the URL
            spec.toml:21:52: error: throttle.probe.sql: the probe statement is empty
              hint: e.g. `sql = "SELECT 1"`, or a cheap query live traffic runs
            spec.toml:21:57: error: throttle.probe.timeout: unknown key `timeout`
              hint: known keys here: url, sql
            spec.toml:22:12: error: throttle.interval: must be between 10ms and 10m
            spec.toml:23:19: error: throttle.baseline_probes: must be between 5 and 10000, found 3
              hint: a baseline needs enough probes for a p90; 20 takes 20 intervals
            spec.toml:24:10: error: throttle.window: must be between 1 and 4294967295, found 0
            spec.toml:25:24: error: throttle.max_latency_increase: must be positive (0.10 allows +10%), found 0
            spec.toml:26:19: error: throttle.decrease_factor: must be between 0 and 1 (exclusive), found 1.5
            spec.toml:27:21: error: throttle.min_rate_fraction: must be above 0 and at most 1, found 0
            spec.toml:28:21: error: throttle.increase_fraction: expected a number, found a string
            spec.toml:29:19: error: throttle.max_replica_lag: must be longer than zero
            spec.toml:30:1: error: throttle.max_rows_per_sec: unknown key `max_rows_per_sec`
              hint: did you mean `max_rows_per_second`?"#]],
    );
    check(
        &format!(
            "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nwatch = {{ url = \"redis://db\", sql = \"SELECT 1\" }}\n"
        ),
        expect![[r#"
            spec.toml:21:17: error: throttle.watch.url: unsupported URL `redis://db`
              hint: supported schemes: sqlite, postgres, postgresql, mysql, mariadb; e.g. `sqlite://data/events.db` (relative to the spec file)
            spec.toml:21:31: error: throttle.watch.sql: unknown key `sql`
              hint: did you mean `url`?"#]],
    );
    check(
        &format!(
            "{GOOD}\n[throttle]\nmax_rows_per_second = 100\nwatch = {{ url = \"sqlite://live.db\" }}\n"
        ),
        expect![[r#"
            spec.toml:21:17: error: throttle.watch.url: SQLite has no live signals to watch
              hint: name a PostgreSQL or MySQL/MariaDB database, or time a statement with `probe` instead"#]],
    );
    check(
        &format!("{GOOD}\n[throttle]\nmax_rows_per_second = 100\nmax_replica_lag = \"5s\"\n"),
        expect![[r#"
            spec.toml:21:19: error: throttle.max_replica_lag: `max_replica_lag` needs `watch` or `probe`
              hint: the lag is measured on the watched (or the probe's) database; add `watch = { url = … }` naming the live database"#]],
    );
    check(
        &format!("{GOOD}\n[throttle]\nmax_rows_per_second = 100\n"),
        expect![[r#"
            spec.toml:19:2: warning: throttle: without `watch` or `probe` the throttle reacts to errors only
              hint: add `watch = { url = … }` naming the live database, to follow its own statements' latency"#]],
    );
    check(
        &format!("throttle = 3\n{GOOD}"),
        expect!["spec.toml:1:12: error: throttle: `throttle` must be a table (`[throttle]`)"],
    );
}

#[test]
fn bad_split_settings() {
    limits_check(
        "split_rows = 0\nsplit_slow = 1.1",
        expect![[r#"
            spec.toml:20:14: error: limits.split_rows: must be positive, found 0
            spec.toml:21:14: error: limits.split_slow: must be between 1.5 and 1000 (times the median partition time), found 1.1"#]],
    );
    limits_check(
        "split_slow = \"fast\"",
        expect!["spec.toml:20:14: error: limits.split_slow: expected a number, found a string"],
    );
}

#[test]
fn shadow_mode_is_an_upsert_into_a_shadow() {
    let text = good_with("key = [\"id\"]", "key = [\"id\"]\nmode = \"shadow\"");
    let spec = parse(&text).spec.unwrap();
    assert_eq!(spec.target.mode, WriteMode::Upsert);
    assert_eq!(spec.target.mode_name(), "shadow");
    assert!(
        !spec.target.undo,
        "a shadow's rollback is a rename: no undo log by default"
    );
    let shadow = spec.target.shadow.unwrap();
    assert!(!shadow.seed_outside_scope);
    assert_eq!(shadow.window_column, None);

    let seeded = good_with(
        "key = [\"id\"]",
        "key = [\"id\"]\nmode = \"shadow\"\nseed_outside_scope = true\nwindow_column = \"ts\"",
    );
    let shadow = parse(&seeded).spec.unwrap().target.shadow.unwrap();
    assert!(shadow.seed_outside_scope);
    assert_eq!(shadow.window_column.as_deref(), Some("ts"));

    check(
        &good_with(
            "key = [\"id\"]",
            "key = [\"id\"]\nmode = \"shadow\"\nseed_outside_scope = true",
        ),
        expect![[r#"
            spec.toml:14:22: error: target.seed_outside_scope: `seed_outside_scope` needs the column that places a row in the scope
              hint: set `target.window_column` (or `source.time_column`): rows of the live table outside `[scope start, scope end)` by that column are copied into the shadow"#]],
    );
    check(
        &good_with(
            "key = [\"id\"]",
            "key = [\"id\"]\nseed_outside_scope = true",
        ),
        expect![
            "spec.toml:13:22: error: target.seed_outside_scope: `seed_outside_scope` only applies to `shadow` mode"
        ],
    );
}

/// `[validate]` (issue 11): the decision of `crate::reconcile` per spec, and its errors.
#[test]
fn validate_section_decides_reconciliation() {
    use crate::reconcile::{Reconcile, reconcile};
    let decide = |text: &str| {
        let parsed = parse(text);
        let errors: Vec<String> = parsed.diagnostics.iter().map(|d| d.render("s")).collect();
        parsed.spec.map(|s| reconcile(&s)).ok_or(errors)
    };
    // No window column and no [validate]: not verified, with the reason.
    assert!(matches!(
        decide(GOOD),
        Ok(Reconcile::NotVerified { reason }) if reason.contains("no column places rows")
    ));
    let timed = good_with("query =", "time_column = \"ts\"\nquery =");
    assert_eq!(
        decide(&timed),
        Ok(Reconcile::Rows {
            window_column: "ts".to_owned()
        })
    );
    let guarded = timed.replace("key = [\"id\"]", "key = [\"id\"]\nguard = \"v\"");
    assert!(matches!(
        decide(&guarded),
        Ok(Reconcile::NotVerified { .. })
    ));
    let explicit = format!("{guarded}\n[validate]\ntolerance = 3\n");
    assert!(matches!(decide(&explicit), Ok(Reconcile::Rows { .. })));
    let column = format!("{GOOD}\n[validate]\nwindow_column = \"v\"\n");
    assert_eq!(
        decide(&column),
        Ok(Reconcile::Rows {
            window_column: "v".to_owned()
        })
    );
    let off = format!("{timed}\n[validate]\nafter_partition = false\nat_end = false\n");
    assert!(matches!(decide(&off), Ok(Reconcile::NotVerified { .. })));
    let missing = format!("{GOOD}\n[validate]\ntolerance = 0\n");
    assert!(matches!(
        decide(&missing),
        Err(errors) if errors.iter().any(|e| e.contains("validate.window_column"))
    ));
}

#[test]
fn undo_is_on_by_default_for_upsert_and_replace_only() {
    let target = "url = \"sqlite://dst.db\"\ntable = \"t_copy\"\nkey = [\"id\"]";
    let with = |url: &str, extra: &str| {
        let text = good_with(
            target,
            &format!("url = \"{url}\"\ntable = \"t_copy\"\nkey = [\"id\"]\n{extra}"),
        );
        let parsed = parse(&text);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        parsed.spec.unwrap().target.undo
    };
    let pg = "postgres://u@127.0.0.1/db";
    assert!(with(pg, ""), "PostgreSQL upsert");
    assert!(with("postgresql://u@127.0.0.1/db", ""), "either scheme");
    let replace = "mode = \"replace\"\nwindow_column = \"ts\"";
    assert!(with(pg, replace), "PostgreSQL replace");
    assert!(!with(pg, "undo = false"), "asked off");
    assert!(
        !with(pg, &format!("{replace}\npartition_exchange = true")),
        "an exchange keeps no log, and is no error by default"
    );
    assert!(
        !with(pg, "mode = \"shadow\""),
        "a shadow's rollback is a rename"
    );
    assert!(with("sqlite://dst.db", ""), "SQLite upsert");
    assert!(with("sqlite://dst.db", replace), "SQLite replace");
    assert!(
        !with("sqlite://dst.db", "mode = \"shadow\""),
        "a SQLite shadow's rollback is a rename too"
    );
    let my = "mysql://root@127.0.0.1/db";
    assert!(with(my, ""), "MySQL upsert");
    assert!(
        with("mariadb://root@127.0.0.1/db", replace),
        "MySQL replace"
    );
    assert!(!with(my, "undo = false"), "asked off");
    assert!(
        !with(my, "mode = \"shadow\""),
        "a MySQL shadow's rollback is a rename"
    );
}

#[test]
fn slo_parses_and_is_optional() {
    assert_eq!(parse(GOOD).spec.unwrap().slo, None);
    let text = format!("{GOOD}\n[slo]\ncomplete_within = \"48h\"\nsuccess_rate = 0.99\n");
    let parsed = parse(&text);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let slo = parsed.spec.unwrap().slo.unwrap();
    assert_eq!(
        slo.complete_within,
        Some(std::time::Duration::from_secs(48 * 3600))
    );
    assert_eq!(slo.success_rate, Some(0.99));
    assert_eq!(slo.max_latency_increase, None);
}

#[test]
fn slo_rejects_bad_values_naming_the_field() {
    check(
        &format!(
            "{GOOD}\n[slo]\ncomplete_within = \"0s\"\nsuccess_rate = 1.0\nmax_latency_increase = -0.1\nburn = 2\n"
        ),
        expect![[r#"
            spec.toml:20:19: error: slo.complete_within: must be positive
              hint: write e.g. `48h` or `7days`
            spec.toml:21:16: error: slo.success_rate: must be above 0 and below 1, found 1
              hint: the share of attempts that should succeed, e.g. `0.99`; 1 would leave no error budget at all
            spec.toml:22:24: error: slo.max_latency_increase: must be positive (0.10 allows +10%), found -0.1
            spec.toml:23:1: error: slo.burn: unknown key `burn`
              hint: known keys here: complete_within, success_rate, max_latency_increase"#]],
    );
    check(
        &format!("{GOOD}\n[slo]\ncomplete_within = \"soon\"\nsuccess_rate = \"high\"\n"),
        expect![[r#"
            spec.toml:20:19: error: slo.complete_within: invalid duration `soon`: expected number at 0
              hint: write e.g. `200ms`, `5s`, `2m`, `6h`
            spec.toml:21:16: error: slo.success_rate: expected a number, found a string"#]],
    );
}

#[test]
fn slo_latency_bound_is_the_throttles() {
    let throttle = "\n[throttle]\nwatch = { url = \"postgres://app@localhost/shop\" }\n";
    let limits = good_with("[scope]", "[limits]\nrows_per_second = 1000\n\n[scope]");
    let text = format!("{limits}{throttle}\n[slo]\nmax_latency_increase = 0.25\n");
    let parsed = parse(&text);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let spec = parsed.spec.unwrap();
    assert_eq!(spec.throttle.unwrap().max_latency_increase, 0.25);
    check(
        &format!(
            "{limits}{throttle}max_latency_increase = 0.2\n\n[slo]\nmax_latency_increase = 0.25\n"
        ),
        expect![[r#"
            spec.toml:27:24: error: slo.max_latency_increase: 0.25 differs from `throttle.max_latency_increase` = 0.2
              hint: the throttle enforces the objective's bound: keep one of the two"#]],
    );
    check(
        &format!("{GOOD}\n[slo]\nmax_latency_increase = 0.25\n"),
        expect![[r#"
            spec.toml:20:24: warning: slo.max_latency_increase: nothing enforces this bound without `[throttle]`
              hint: add `[throttle]` with `watch` or `probe` naming the live database: the adaptive throttle keeps its latency within this bound"#]],
    );
}
