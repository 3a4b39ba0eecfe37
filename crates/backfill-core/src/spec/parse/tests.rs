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
    assert_eq!(spec.source.url.expose(), "sqlite:///specs/src.db");
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
              hint: known keys here: concurrency, rows_per_second, batch_rows, max_attempts, retry_base, retry_cap"#]],
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
          hint: add a `[source]` table; see docs/spec.md
        spec.toml: error: target: missing section `[target]`
          hint: add a `[target]` table; see docs/spec.md"#]],
    );
}

#[test]
fn urls_expand_env_and_never_show_passwords() {
    let text = good_with("sqlite://src.db", "sqlite://src.db?password=${DB_PASSWORD}");
    let spec = parse(&text).spec.unwrap();
    assert_eq!(
        spec.source.url.expose(),
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
    assert_eq!(spec.source.time_format, crate::TimeFormat::Native);
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
