//! `backfill check` and `backfill plan`: precise diagnostics (field path, line:column, hint),
//! exit code 2 for any problem, every problem at once, no secret in any output, and a
//! deterministic plan with correct windows, estimates and ETA.

use crate::support::{Ran, Workspace, copy_spec, exec, make_source, make_target, sqlite};

/// The spec file name used in every test (relative to the workspace, so diagnostics start
/// with exactly `spec.toml:`).
const SPEC: &str = "spec.toml";

/// A workspace with a 3-day source of `n` rows and an empty target; returns the spec text.
async fn setup(ws: &Workspace, n: i64, extra_limits: &str) -> String {
    let source = ws.path("source.db");
    let target = ws.path("target.db");
    make_source(&source, n, 3).await.close().await;
    make_target(&target).await.close().await;
    copy_spec(
        &source.display().to_string(),
        &target.display().to_string(),
        3,
        extra_limits,
    )
}

/// 1-based `line:column` of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    format!("{line}:{col}")
}

/// 1-based `line:column` of the first occurrence of `needle` in `text`.
fn locate(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in spec:\n{text}"));
    line_col(text, offset)
}

/// `line:column` of `needle` inside the first occurrence of `context` in `text`.
fn locate_in(text: &str, context: &str, needle: &str) -> String {
    let start = text
        .find(context)
        .unwrap_or_else(|| panic!("`{context}` not in spec:\n{text}"));
    let inner = context
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in `{context}`"));
    line_col(text, start + inner)
}

/// Replaces `from` (which must occur) by `to`.
fn edit(spec: &str, from: &str, to: &str) -> String {
    assert!(spec.contains(from), "`{from}` not in spec:\n{spec}");
    spec.replacen(from, to, 1)
}

/// Runs `check` on `text` written as the spec; asserts exit code 2.
fn check_fails(ws: &Workspace, text: &str) -> Ran {
    ws.write(SPEC, text);
    let ran = ws.run(&["check", SPEC]);
    assert_eq!(ran.code, 2, "check should fail with exit 2: {ran:#?}");
    ran
}

/// Asserts stderr has the diagnostic `spec.toml:LINE:COL: error: PATH: …` containing `words`.
fn assert_diagnostic(ran: &Ran, at: &str, path: &str, words: &str) {
    let head = format!("{SPEC}:{at}: error: {path}: ");
    let line = ran
        .stderr
        .lines()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| {
            panic!(
                "no diagnostic starting with `{head}` in stderr:\n{}",
                ran.stderr
            )
        });
    assert!(
        line.contains(words),
        "diagnostic `{line}` should mention `{words}`"
    );
}

/// Asserts stderr has an error diagnostic for `path` that carries some `LINE:COL`.
fn assert_located(ran: &Ran, path: &str) {
    let suffix = format!(": error: {path}: ");
    let located = ran.stderr.lines().any(|l| {
        let Some(rest) = l.strip_prefix(&format!("{SPEC}:")) else {
            return false;
        };
        let Some((place, _)) = rest.split_once(&suffix) else {
            return false;
        };
        let mut parts = place.split(':');
        let numeric = |p: Option<&str>| {
            p.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        };
        numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
    });
    assert!(
        located,
        "expected `{SPEC}:LINE:COL: error: {path}: …` in stderr:\n{}",
        ran.stderr
    );
}

#[tokio::test]
async fn a_good_spec_passes_with_both_databases_reachable() {
    let ws = Workspace::new();
    let spec = setup(&ws, 300, "").await;
    // The time index each partition's reconciliation reads its window by (without it,
    // `check` warns: see validate.rs, `unindexed_target_is_warned_about_*`).
    let target = sqlite(&ws.path("target.db")).await;
    exec(
        &target,
        &["CREATE INDEX events_copy_ts ON events_copy (ts)"],
    )
    .await;
    target.close().await;
    ws.write(SPEC, &spec);
    let ran = ws.run(&["check", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.contains("ok"), "{ran:#?}");
    assert!(ran.stdout.contains("3 partitions"), "{ran:#?}");
    assert!(
        ran.stdout.contains("source and target reachable"),
        "{ran:#?}"
    );
    assert!(!ran.stderr.contains("error"), "{ran:#?}");

    let json = ws.run(&["--json", "check", SPEC]);
    assert_eq!(json.code, 0, "{json:#?}");
    let v = json.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["partitions"], 3);
    assert_eq!(v["diagnostics"].as_array().map(Vec::len), Some(0));
}

/// `replace` deletes each window by `window_column`: without an index starting with it, every
/// partition scans the whole target, which `check` points out (a warning: exit 0).
#[tokio::test]
async fn replace_without_an_index_on_the_window_column_is_a_warning() {
    let ws = Workspace::new();
    let spec = setup(&ws, 300, "").await;
    let replace = edit(
        &spec,
        "key = [\"id\"]\n",
        "key = [\"id\"]\nmode = \"replace\"\nwindow_column = \"ts\"\n",
    );
    ws.write(SPEC, &replace);
    let ran = ws.run(&["--json", "check", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    let v = ran.json();
    let diagnostics = v["diagnostics"].as_array().expect("diagnostics");
    // The same missing index also moves reconciliation to the end of the run.
    let paths: Vec<&str> = diagnostics
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        ["target.window_column", "validate.after_partition"],
        "{v:#}"
    );
    assert!(
        diagnostics.iter().all(|d| d["severity"] == "warning"),
        "{v:#}"
    );
    assert!(
        diagnostics[0]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("CREATE INDEX ON events_copy (ts)")),
        "{v:#}"
    );

    let target = sqlite(&ws.path("target.db")).await;
    exec(
        &target,
        &["CREATE INDEX events_copy_ts ON events_copy (ts)"],
    )
    .await;
    let ran = ws.run(&["--json", "check", SPEC]);
    assert_eq!(
        ran.json()["diagnostics"].as_array().map(Vec::len),
        Some(0),
        "{ran:#?}"
    );
}

#[tokio::test]
async fn unknown_key_suggests_the_right_one() {
    let ws = Workspace::new();
    let spec = edit(&setup(&ws, 10, "").await, "partition = ", "partiton = ");
    let ran = check_fails(&ws, &spec);
    assert_diagnostic(
        &ran,
        &locate(&spec, "partiton"),
        "scope.partiton",
        "unknown key `partiton`",
    );
    assert!(
        ran.stderr.contains("hint: did you mean `partition`?"),
        "{}",
        ran.stderr
    );
}

#[tokio::test]
async fn start_not_before_end_is_an_error_at_end() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 10, "").await,
        "end = \"2026-01-04T00:00:00Z\"",
        "end = \"2026-01-01T00:00:00Z\"",
    );
    let ran = check_fails(&ws, &spec);
    let at = locate_in(&spec, "end = \"2026", "\"2026");
    assert_diagnostic(&ran, &at, "scope.end", "must be after start");
    assert!(ran.stderr.contains("hint:"), "{}", ran.stderr);
}

#[tokio::test]
async fn zero_and_negative_partition_sizes_are_errors() {
    for (size, words) in [
        ("0h", "greater than zero"),
        ("-1h", "positive"),
        ("0d", "greater than zero"),
    ] {
        let ws = Workspace::new();
        let spec = edit(
            &setup(&ws, 10, "").await,
            "partition = \"1d\"",
            &format!("partition = \"{size}\""),
        );
        let ran = check_fails(&ws, &spec);
        assert_diagnostic(
            &ran,
            &locate(&spec, &format!("\"{size}\"")),
            "scope.partition",
            words,
        );
        assert!(ran.stderr.contains("hint: e.g."), "{}", ran.stderr);
    }
}

#[tokio::test]
async fn upsert_without_key_columns_is_an_error() {
    let ws = Workspace::new();
    let spec = edit(&setup(&ws, 10, "").await, "key = [\"id\"]\n", "");
    let ran = check_fails(&ws, &spec);
    assert!(
        ran.stderr
            .contains("error: target.key: `upsert` mode needs `key`"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("hint: e.g. `key = [\"id\"]`"),
        "{}",
        ran.stderr
    );
    // Every diagnostic names its line:column; a missing key points at its `[target]` table.
    assert_located(&ran, "target.key");
}

#[tokio::test]
async fn empty_key_list_is_an_error_at_its_position() {
    let ws = Workspace::new();
    let spec = edit(&setup(&ws, 10, "").await, "key = [\"id\"]", "key = []");
    let ran = check_fails(&ws, &spec);
    assert_diagnostic(&ran, &locate(&spec, "[]"), "target.key", "empty");
}

#[tokio::test]
async fn query_without_start_or_end_is_an_error() {
    let ws = Workspace::new();
    let base = setup(&ws, 10, "").await;
    for (from, missing) in [("ts >= :start AND ", ":start"), (" AND ts < :end", ":end")] {
        let spec = edit(&base, from, "");
        let ran = check_fails(&ws, &spec);
        let at = locate(&spec, "\"SELECT");
        assert_diagnostic(
            &ran,
            &at,
            "source.query",
            &format!("does not use `{missing}`"),
        );
        assert!(ran.stderr.contains("hint:"), "{}", ran.stderr);
    }
}

#[tokio::test]
async fn wrong_value_types_are_errors() {
    let ws = Workspace::new();
    let base = setup(&ws, 10, "").await;
    let spec = edit(&base, "concurrency = 4", "concurrency = \"4\"");
    let ran = check_fails(&ws, &spec);
    assert_diagnostic(
        &ran,
        &locate(&spec, "\"4\""),
        "limits.concurrency",
        "expected an integer, found a string",
    );

    let spec = edit(&base, "table = \"events_copy\"", "table = 7");
    let ran = check_fails(&ws, &spec);
    assert_diagnostic(
        &ran,
        &locate_in(&spec, "table = 7", "7"),
        "target.table",
        "expected a string, found an integer",
    );
}

#[tokio::test]
async fn malformed_toml_is_an_error_with_a_position() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 10, "").await,
        "table = \"events_copy\"",
        "table = \"events_copy",
    );
    let ran = check_fails(&ws, &spec);
    let line = locate(&spec, "table = ")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let head = format!("{SPEC}:{line}:");
    assert!(
        ran.stderr
            .lines()
            .any(|l| l.starts_with(&head) && l.contains("error: invalid TOML")),
        "expected `{head}COL: error: invalid TOML…` in:\n{}",
        ran.stderr
    );
}

#[tokio::test]
async fn missing_sqlite_file_is_an_error_naming_source_url() {
    let ws = Workspace::new();
    let source = ws.path("source.db").display().to_string();
    let spec = edit(
        &setup(&ws, 10, "").await,
        &source,
        &ws.path("missing.db").display().to_string(),
    );
    let ran = check_fails(&ws, &spec);
    assert!(
        ran.stderr.contains("error: source.url: cannot open"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("missing.db"), "{}", ran.stderr);
    assert!(ran.stderr.contains("does not exist"), "{}", ran.stderr);
    assert!(
        !ws.path("missing.db").exists(),
        "check must never create the source file"
    );
    // Like every other diagnostic, it points at the offending value in the file.
    assert_diagnostic(
        &ran,
        &locate(&spec, "\"sqlite://"),
        "source.url",
        "cannot open",
    );
}

#[tokio::test]
async fn unsupported_url_with_password_never_shows_the_password() {
    let ws = Workspace::new();
    let source = ws.path("source.db").display().to_string();
    let spec = edit(
        &setup(&ws, 10, "").await,
        &format!("sqlite://{source}"),
        "oracle://u:hunter2@127.0.0.1:1/db",
    );
    let ran = check_fails(&ws, &spec);
    assert_diagnostic(
        &ran,
        &locate(&spec, "\"oracle://"),
        "source.url",
        "unsupported URL",
    );
    assert!(
        ran.stderr.contains("hint: supported schemes"),
        "{}",
        ran.stderr
    );
    let json = ws.run(&["--json", "check", SPEC]);
    assert_eq!(json.code, 2);
    let plan = ws.run(&["plan", SPEC]);
    assert_eq!(plan.code, 2);
    let run = ws.run(&["run", SPEC]);
    assert_eq!(run.code, 2);
    for r in [&ran, &json, &plan, &run] {
        assert!(!r.stdout.contains("hunter2"), "password on stdout: {r:#?}");
        assert!(!r.stderr.contains("hunter2"), "password on stderr: {r:#?}");
    }
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let ws = Workspace::new();
    let base = setup(&ws, 10, "").await;
    let spec = edit(&base, "concurrency = 4", "concurrency = \"4\"");
    let spec = edit(
        &spec,
        "end = \"2026-01-04T00:00:00Z\"",
        "end = \"2025-12-01T00:00:00Z\"",
    );
    let spec = edit(
        &spec,
        "batch_rows = 1000",
        "batch_rows = 1000\nbach_rows = 5",
    );
    let ran = check_fails(&ws, &spec);
    assert_diagnostic(
        &ran,
        &locate(&spec, "\"4\""),
        "limits.concurrency",
        "expected an integer",
    );
    assert_diagnostic(
        &ran,
        &locate(&spec, "\"2025-12-01"),
        "scope.end",
        "must be after start",
    );
    assert_diagnostic(
        &ran,
        &locate(&spec, "bach_rows"),
        "limits.bach_rows",
        "unknown key",
    );
    assert!(
        ran.stderr.contains("did you mean `batch_rows`?"),
        "{}",
        ran.stderr
    );
    let errors = ran
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{SPEC}:")))
        .count();
    assert_eq!(errors, 3, "{}", ran.stderr);
    assert!(ran.stderr.contains("3 errors"), "{}", ran.stderr);

    let json = ws.run(&["--json", "check", SPEC]);
    assert_eq!(json.code, 2, "{json:#?}");
    let v = json.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 3);
    let diags = v["diagnostics"].as_array().expect("diagnostics array");
    assert_eq!(diags.len(), 3, "{v:#}");
    for d in diags {
        assert_eq!(d["severity"], "error", "{d}");
        assert!(d["line"].as_u64().is_some_and(|l| l > 0), "{d}");
        assert!(d["column"].as_u64().is_some_and(|c| c > 0), "{d}");
        assert!(d["path"].as_str().is_some_and(|p| !p.is_empty()), "{d}");
        assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
    }
    let paths: Vec<&str> = diags.iter().filter_map(|d| d["path"].as_str()).collect();
    for p in ["limits.concurrency", "scope.end", "limits.bach_rows"] {
        assert!(paths.contains(&p), "{paths:?}");
    }
}

#[tokio::test]
async fn unix_timestamps_read_as_rfc3339_give_a_time_format_warning() {
    let ws = Workspace::new();
    let source = ws.path("source.db");
    let target = ws.path("target.db");
    let pool = sqlite(&source).await;
    exec(
        &pool,
        &[
            "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER, amount REAL, ts INTEGER NOT NULL, note TEXT)",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
             INSERT INTO events SELECT i, i % 10, i / 10.0, 1767225600 + (i - 1) * 864, 'Note ' || i FROM n",
        ],
    )
    .await;
    pool.close().await;
    make_target(&target).await.close().await;
    let spec = copy_spec(
        &source.display().to_string(),
        &target.display().to_string(),
        3,
        "",
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["check", SPEC]);
    assert_eq!(ran.code, 0, "a warning is not an error: {ran:#?}");
    assert!(
        ran.stderr.contains("warning: source.time_format"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("time_format = \"unix\""),
        "{}",
        ran.stderr
    );

    let json = ws.run(&["--json", "check", SPEC]);
    assert_eq!(json.code, 0, "{json:#?}");
    let v = json.json();
    assert_eq!(v["ok"], true);
    assert!(v["warnings"].as_u64().is_some_and(|w| w >= 1), "{v:#}");
    let warned = v["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .any(|d| {
            d["severity"] == "warning"
                && d["hint"]
                    .as_str()
                    .is_some_and(|h| h.contains("time_format = \"unix\""))
        });
    assert!(warned, "{v:#}");

    // With the right format the warning goes away.
    let fixed = edit(
        &spec,
        "time_column = \"ts\"",
        "time_column = \"ts\"\ntime_format = \"unix\"",
    );
    ws.write(SPEC, &fixed);
    let ran = ws.run(&["check", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(!ran.stderr.contains("time_format"), "{}", ran.stderr);
}

#[tokio::test]
async fn plan_hash_is_deterministic() {
    let ws = Workspace::new();
    let spec = setup(&ws, 300, "").await;
    ws.write(SPEC, &spec);
    ws.write("copy.toml", &spec);
    let a = ws.run(&["--json", "plan", SPEC]);
    let b = ws.run(&["--json", "plan", SPEC]);
    let c = ws.run(&["--json", "plan", "copy.toml"]);
    for r in [&a, &b, &c] {
        assert_eq!(r.code, 0, "{r:#?}");
    }
    let hash = a.json()["plan_hash"]
        .as_str()
        .expect("plan_hash")
        .to_owned();
    assert!(!hash.is_empty());
    assert_eq!(b.json()["plan_hash"], hash.as_str());
    assert_eq!(c.json()["plan_hash"], hash.as_str());
    // The partition ids are part of the plan too.
    assert_eq!(a.json()["sample"], b.json()["sample"]);

    // A different scope is a different plan.
    ws.write(
        "hourly.toml",
        &edit(&spec, "partition = \"1d\"", "partition = \"1h\""),
    );
    let d = ws.run(&["--json", "plan", "hourly.toml"]);
    assert_eq!(d.code, 0, "{d:#?}");
    assert_ne!(d.json()["plan_hash"], hash.as_str());
}

#[tokio::test]
async fn plan_of_three_days_hourly_has_72_partitions_and_exact_rows() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 5000, "").await,
        "partition = \"1d\"",
        "partition = \"1h\"",
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["--json", "plan", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    let v = ran.json();
    assert_eq!(v["partitions"], 72);
    assert_eq!(v["first"], "[2026-01-01T00:00:00Z, 2026-01-01T01:00:00Z)");
    assert_eq!(v["last"], "[2026-01-03T23:00:00Z, 2026-01-04T00:00:00Z)");
    let pool = sqlite(&ws.path("source.db")).await;
    let (truth,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events WHERE ts >= '2026-01-01T00:00:00Z' AND ts < '2026-01-04T00:00:00Z'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    pool.close().await;
    assert_eq!(truth, 5000);
    assert_eq!(v["estimated_rows"], truth);
    assert_eq!(v["estimate_exact"], true);
    let sample = v["sample"].as_array().expect("sample");
    assert_eq!(
        sample.first().map(|p| &p["index"]),
        Some(&serde_json::json!(0))
    );
    assert_eq!(
        sample.last().map(|p| &p["index"]),
        Some(&serde_json::json!(71))
    );
    assert_eq!(
        v["eta_seconds"],
        serde_json::Value::Null,
        "no rate limit, no ETA"
    );

    let all = ws.run(&["--json", "plan", "--all", SPEC]);
    assert_eq!(all.code, 0, "{all:#?}");
    let all = all.json();
    let parts = all["sample"].as_array().expect("sample");
    assert_eq!(parts.len(), 72);
    let sum: i64 = parts
        .iter()
        .filter_map(|p| p["estimated_rows"].as_i64())
        .sum();
    assert_eq!(
        sum, truth,
        "per-partition estimates add up to the true count"
    );

    let text = ws.run(&["plan", SPEC]);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(text.stdout.contains("partitions: 72"), "{}", text.stdout);
    assert!(text.stdout.contains("5,000"), "{}", text.stdout);
}

#[tokio::test]
async fn plan_has_an_eta_when_rows_per_second_is_set() {
    let ws = Workspace::new();
    let spec = setup(&ws, 5000, "rows_per_second = 1000").await;
    ws.write(SPEC, &spec);
    let ran = ws.run(&["--json", "plan", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    let v = ran.json();
    assert_eq!(v["rows_per_second_limit"], 1000);
    assert_eq!(v["estimated_rows"], 5000);
    let eta = v["eta_seconds"].as_f64().expect("eta_seconds");
    assert!((eta - 5.0).abs() < 1e-9, "5000 rows at 1000 rows/s: {eta}");
    let text = ws.run(&["plan", SPEC]);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(text.stdout.contains("ETA:"), "{}", text.stdout);
    assert!(text.stdout.contains("5.0s"), "{}", text.stdout);
}

#[tokio::test]
async fn plan_projects_the_cost_and_shows_budget_order_and_window() {
    let ws = Workspace::new();
    // 5,000 rows at 1,000 rows/s: 5 s; 0.40 per million rows and 3,600 per hour (1 a second).
    let spec = setup(
        &ws,
        5000,
        "rows_per_second = 1000\norder = \"newest_first\"\nwindow = \"22:00-06:00 Europe/Paris\"\n\
         budget = { rows = 4000, cost = { per_million_rows = 0.40, per_hour = 3600.0, currency = \"USD\", max = 100.0 } }",
    )
    .await;
    ws.write(SPEC, &spec);
    let ran = ws.run(&["--json", "plan", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    let v = ran.json();
    let amount = v["projected_cost"]["amount"]
        .as_f64()
        .expect("projected cost");
    let expected = 5000.0 / 1e6 * 0.40 + 5.0;
    assert!((amount - expected).abs() < 1e-9, "{amount} vs {expected}");
    assert_eq!(v["projected_cost"]["currency"], "USD");
    assert_eq!(v["projected_cost"]["includes_time"], true);
    assert_eq!(v["budget"]["rows"], 4000);
    assert_eq!(v["window"], "22:00-06:00 Europe/Paris");
    assert!(
        v["order"].as_str().unwrap().contains("newest"),
        "{}",
        v["order"]
    );
    let text = ws.run(&["plan", SPEC]);
    assert_eq!(text.code, 0, "{text:#?}");
    for needle in [
        "cost:",
        "projected",
        "budget:",
        "4,000 rows",
        "window:",
        "order:",
    ] {
        assert!(text.stdout.contains(needle), "{needle}: {}", text.stdout);
    }
}

#[tokio::test]
async fn plan_of_a_bad_spec_exits_2() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 10, "").await,
        "partition = \"1d\"",
        "partition = \"0d\"",
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["plan", SPEC]);
    assert_eq!(ran.code, 2, "{ran:#?}");
    assert!(
        ran.stderr.contains("error: scope.partition"),
        "{}",
        ran.stderr
    );
    let missing = ws.run(&["plan", "no-such-spec.toml"]);
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert!(missing.stderr.contains("hint:"), "{}", missing.stderr);
}

#[tokio::test]
async fn logs_to_a_file_carry_no_colour_codes() {
    let ws = Workspace::new();
    let spec = setup(&ws, 50, "").await;
    ws.write(SPEC, &spec);
    let ran = ws.run(&["-vv", "run", SPEC, "--reason", "colour test"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stderr.contains("partition done"), "{}", ran.stderr);
    assert!(!ran.stderr.contains('\u{1b}'), "{:?}", ran.stderr);
}
