//! Failures: a permanent error in one partition, missing reason, broken SQL, bad arguments,
//! unknown run ids; data edge cases copied exactly; secrets never shown or stored.

use crate::support::{
    Ran, Workspace, copy_spec, exec, make_source, make_target, reference, rows, sqlite, target_rows,
};

const SPEC: &str = "spec.toml";

/// Source of `n` rows over 3 days and an empty standard target; returns the spec text.
async fn setup(ws: &Workspace, n: i64, extra_limits: &str) -> String {
    make_source(&ws.path("source.db"), n, 3).await.close().await;
    make_target(&ws.path("target.db")).await.close().await;
    copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        3,
        extra_limits,
    )
}

fn edit(spec: &str, from: &str, to: &str) -> String {
    assert!(spec.contains(from), "`{from}` not in spec:\n{spec}");
    spec.replacen(from, to, 1)
}

#[tokio::test]
async fn a_permanent_error_fails_one_partition_and_the_others_finish() {
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), 3000, 3).await;
    let target = sqlite(&ws.path("target.db")).await;
    exec(
        &target,
        &["CREATE TABLE events_copy (id INTEGER PRIMARY KEY, user_id INTEGER, amount_cents INTEGER, \
           ts TEXT NOT NULL, note TEXT)"],
    )
    .await;
    // A bug in the transform: the query fails (malformed JSON) for the rows of 2026-01-02 only.
    let spec = edit(
        &copy_spec(
            &ws.path("source.db").display().to_string(),
            &ws.path("target.db").display().to_string(),
            3,
            "max_attempts = 3\nretry_base = \"10ms\"\nretry_cap = \"20ms\"",
        ),
        "lower(note) AS note",
        "CASE WHEN substr(ts, 1, 10) = '2026-01-02' THEN json_extract('not json', '$') \
         ELSE lower(note) END AS note",
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["run", SPEC]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(
        ran.stderr.contains("run failed: 1 of 3 partitions failed"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("malformed JSON"), "{}", ran.stderr);

    let status = ws.run(&["--json", "status"]);
    assert_eq!(status.code, 0, "{status:#?}");
    let st = status.json();
    assert_eq!(st["state"], "failed", "{st:#}");
    assert_eq!(st["partitions"]["failed"], 1, "{st:#}");
    assert_eq!(st["partitions"]["done"], 2, "{st:#}");
    assert_eq!(st["partitions"]["running"], 0, "{st:#}");
    assert_eq!(st["partitions"]["pending"], 0, "{st:#}");
    let failing = st["failing"].as_array().expect("failing");
    assert_eq!(failing.len(), 1, "{st:#}");
    assert_eq!(failing[0]["state"], "failed");
    assert_eq!(
        failing[0]["window"],
        "[2026-01-02T00:00:00Z, 2026-01-03T00:00:00Z)"
    );
    assert!(
        failing[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed JSON")),
        "{st:#}"
    );
    // An SQL error is permanent: it is not retried.
    assert_eq!(failing[0]["attempts"], 1, "{st:#}");

    // The rows of the other days are all there, exactly; none of the failing day.
    let want: Vec<_> = reference(&source)
        .await
        .into_iter()
        .filter(|r| {
            !r[3]
                .as_deref()
                .is_some_and(|ts| ts.starts_with("t:2026-01-02"))
        })
        .collect();
    assert_eq!(want.len(), 2000);
    assert_eq!(target_rows(&target).await, want);

    let text = ws.run(&["status"]);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(
        text.stdout.contains("failing partitions (1)"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("malformed JSON"), "{}", text.stdout);
}

#[tokio::test]
async fn rows_the_target_rejects_are_quarantined_and_the_rest_is_written() {
    rejected_rows_are_quarantined("").await;
}

/// `replace` too: the window commits without the rejected rows (isolated under savepoints on
/// a second try) and the stale rows of the window are gone.
#[tokio::test]
async fn replace_quarantines_rejected_rows_and_commits_the_rest_of_the_window() {
    rejected_rows_are_quarantined("mode = \"replace\"\nwindow_column = \"ts\"\n").await;
}

async fn rejected_rows_are_quarantined(mode: &str) {
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), 900, 3).await;
    let target = sqlite(&ws.path("target.db")).await;
    exec(
        &target,
        &["CREATE TABLE events_copy (id INTEGER PRIMARY KEY, user_id INTEGER, amount_cents INTEGER, \
           ts TEXT NOT NULL, note TEXT NOT NULL)"],
    )
    .await;
    // A stale row inside the scope: `replace` deletes it, `upsert` (no source row) keeps it.
    exec(
        &target,
        &["INSERT INTO events_copy VALUES (900000, 1, 1, '2026-01-02T12:00:00Z', 'stale')"],
    )
    .await;
    let spec = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        3,
        "",
    );
    ws.write(
        SPEC,
        &spec.replace("key = [\"id\"]\n", &format!("key = [\"id\"]\n{mode}")),
    );
    // Every 7th source row has a NULL note, which the target's NOT NULL refuses.
    let ran = ws.run(&["--json", "run", SPEC]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    let summary = ran.json();
    assert_eq!(summary["state"], "failed", "{summary:#}");
    assert_eq!(summary["partitions"]["failed"], 0, "{summary:#}");
    assert_eq!(
        summary["partitions"]["done_with_quarantine"], 3,
        "{summary:#}"
    );
    assert!(ran.stderr.contains("backfill quarantine"), "{}", ran.stderr);

    // Every accepted row is in the target, exactly; every rejected row is in quarantine.
    let want = reference(&source).await;
    let (rejected, mut accepted): (Vec<_>, Vec<_>) = want.into_iter().partition(|r| r[4].is_none());
    if mode.is_empty() {
        accepted.push(
            [
                "i:900000",
                "i:1",
                "i:1",
                "t:2026-01-02T12:00:00Z",
                "t:stale",
            ]
            .map(|v| Some(v.to_owned()))
            .to_vec(),
        );
    }
    assert_eq!(target_rows(&target).await, accepted);
    let run_id = summary["run_id"].as_str().expect("run id").to_owned();
    let q = ws.run(&["--json", "quarantine", &run_id]);
    assert_eq!(q.code, 0, "{q:#?}");
    let listed = q.json();
    let listed = listed.as_array().expect("rows");
    assert_eq!(listed.len(), rejected.len());
    for row in listed {
        assert!(
            row["error"]
                .as_str()
                .is_some_and(|e| e.contains("NOT NULL")),
            "{row}"
        );
        assert_eq!(row["row"]["note"], serde_json::Value::Null, "{row}");
    }
    let st = ws.run(&["--json", "status"]).json();
    assert_eq!(st["partitions"]["done_with_quarantine"], 3, "{st:#}");
}

#[tokio::test]
async fn quarantined_rows_are_written_after_the_cause_is_fixed_and_retried() {
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), 600, 3).await;
    let target = make_target(&ws.path("target.db")).await;
    // A guard in the target refuses large amounts (a trigger, so the fix can remove it).
    exec(
        &target,
        &[
            "CREATE TRIGGER no_big BEFORE INSERT ON events_copy WHEN NEW.amount_cents > 10000 \
           BEGIN SELECT RAISE(ABORT, 'amount too large'); END",
        ],
    )
    .await;
    ws.write(
        SPEC,
        &copy_spec(
            &ws.path("source.db").display().to_string(),
            &ws.path("target.db").display().to_string(),
            3,
            "",
        ),
    );
    let first = ws.run(&["--json", "run", SPEC]);
    assert_eq!(first.code, 1, "{first:#?}");
    let run_id = first.json()["run_id"].as_str().expect("run id").to_owned();
    let listed = ws.run(&["--json", "quarantine", &run_id]).json();
    let rejected = listed.as_array().expect("rows").len();
    assert!(rejected > 0, "some rows must be rejected");
    assert!(
        listed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("amount too large"))
    );

    // Fix the cause, give the quarantined rows another run, resume: everything is there.
    exec(&target, &["DROP TRIGGER no_big"]).await;
    let retry = ws.run(&["quarantine", &run_id, "--retry"]);
    assert_eq!(retry.code, 0, "{retry:#?}");
    let resumed = ws.run(&["--json", "resume", &run_id]);
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    assert_eq!(resumed.json()["state"], "succeeded");
    assert_eq!(target_rows(&target).await, reference(&source).await);
    let empty = ws.run(&["--json", "quarantine", &run_id]).json();
    assert_eq!(empty.as_array().map(Vec::len), Some(0));
    assert_eq!(ws.run(&["audit", "--verify"]).code, 0);
}

#[tokio::test]
async fn a_run_needs_a_reason() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 300, "").await,
        "reason = \"integration test\"\n",
        "",
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["run", SPEC]);
    assert_eq!(ran.code, 2, "{ran:#?}");
    assert!(ran.stderr.contains("needs a reason"), "{}", ran.stderr);
    assert!(ran.stderr.contains("hint:"), "{}", ran.stderr);
    assert!(ran.stderr.contains("--reason"), "{}", ran.stderr);
    let blank = ws.run(&["run", "--reason", "   ", SPEC]);
    assert_eq!(blank.code, 2, "a blank reason is no reason: {blank:#?}");
    let runs = ws.run(&["--json", "runs"]);
    assert_eq!(runs.code, 0, "{runs:#?}");
    assert_eq!(
        runs.json(),
        serde_json::json!([]),
        "no run may be created without a reason"
    );

    let ok = ws.run(&["run", "--reason", "ticket OPS-42", SPEC]);
    assert_eq!(ok.code, 0, "{ok:#?}");
    let st = ws.run(&["--json", "status"]).json();
    assert_eq!(st["reason"], "ticket OPS-42");
    assert_eq!(st["state"], "succeeded");
}

#[tokio::test]
async fn a_sql_syntax_error_fails_loudly_and_writes_nothing() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 600, "").await,
        "SELECT id, user_id",
        "SELEC id, user_id",
    );
    ws.write(SPEC, &spec);

    let ran = ws.run(&["run", SPEC]);
    assert_ne!(ran.code, 0, "{ran:#?}");
    assert!(ran.stderr.contains("syntax error"), "{}", ran.stderr);
    assert!(ran.stderr.contains("source query"), "{}", ran.stderr);

    let target = sqlite(&ws.path("target.db")).await;
    assert!(
        target_rows(&target).await.is_empty(),
        "nothing may be written"
    );
    // If a run was recorded, it says that nothing is done.
    let status = ws.run(&["--json", "status"]);
    if status.code == 0 {
        let st = status.json();
        assert_ne!(st["state"], "succeeded", "{st:#}");
        assert_eq!(st["partitions"]["done"], 0, "{st:#}");
        assert_eq!(st["rows"]["written"], 0, "{st:#}");
    }

    let check = ws.run(&["check", SPEC]);
    assert_eq!(check.code, 2, "{check:#?}");
    // The problem is the query, not the connection: the diagnostic must say so.
    assert!(
        check.stderr.contains("error: source.query"),
        "{}",
        check.stderr
    );
    assert!(check.stderr.contains("syntax error"), "{}", check.stderr);
}

#[tokio::test]
async fn an_engine_error_is_printed_once() {
    let ws = Workspace::new();
    let spec = edit(
        &setup(&ws, 60, "").await,
        "SELECT id, user_id",
        "SELEC id, user_id",
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["run", SPEC]);
    assert_ne!(ran.code, 0, "{ran:#?}");
    let times = ran.stderr.matches("syntax error").count();
    assert_eq!(
        times, 1,
        "the error and its `caused by:` repeat the same text:\n{}",
        ran.stderr
    );
}

#[tokio::test]
async fn bad_command_line_arguments_exit_2() {
    let ws = Workspace::new();
    let cases: &[&[&str]] = &[
        &["run"],
        &["run", "--bogus", SPEC],
        &["frobnicate"],
        &["runs", "--limit", "many"],
        &["plan"],
        &["--log-format", "xml", "runs"],
        // Values the binary parses: refused with the value named, never a panic.
        &["status", "not-a-run!"],
        &[
            "resume",
            "0193",
            "--extend-budget",
            "rows=99999999999999999999",
        ],
        &[
            "resume",
            "0193",
            "--extend-budget",
            "duration=584942417355y",
        ],
        &["resume", "0193", "--extend-budget", "cost=1e400"],
        &["throttle", "0193", "--rows-per-second", "4294967296"],
        &["throttle", "0193", "--concurrency", "0"],
        &["cancel", "0193aaaa-bbbb-cccc-dddd-eeeeffff00001"],
    ];
    for args in cases {
        let ran = ws.run(args);
        assert_eq!(ran.code, 2, "{args:?}: {ran:#?}");
        assert!(ran.stderr.contains("error"), "{args:?}: {}", ran.stderr);
        assert!(ran.stdout.is_empty(), "{args:?}: {}", ran.stdout);
    }
    let missing = ws.run(&["check", "does-not-exist.toml"]);
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert!(
        missing.stderr.contains("cannot read spec file"),
        "{}",
        missing.stderr
    );
    let help = ws.run(&["--help"]);
    assert_eq!(help.code, 0, "{help:#?}");
    assert!(help.stdout.contains("Usage"), "{}", help.stdout);
}

/// A partition size past the end of time panicked the planner (exit 101): now it is a
/// diagnostic at the field, exit 2, from `plan` and `run` alike.
#[tokio::test]
async fn a_partition_size_past_the_end_of_time_is_an_error_not_a_panic() {
    let ws = Workspace::new();
    let spec = setup(&ws, 10, "")
        .await
        .replace("partition = \"1d\"", "partition = \"4000000000h\"");
    ws.write(SPEC, &spec);
    for args in [&["plan", SPEC, "--no-estimate"][..], &["run", SPEC][..]] {
        let ran = ws.run(args);
        assert_eq!(ran.code, 2, "{args:?}: {ran:#?}");
        assert!(
            ran.stderr.contains(
                "error: scope.partition: invalid partition size: `4000000000h` is longer than 10000 years"
            ),
            "{args:?}: {}",
            ran.stderr
        );
    }
}

#[tokio::test]
async fn unknown_run_ids_exit_2_with_a_hint() {
    let ws = Workspace::new();
    let spec = setup(&ws, 100, "").await;
    ws.write(SPEC, &spec);
    assert_eq!(ws.run(&["run", SPEC]).code, 0);
    for args in [
        &["resume", "0000dead-beef"][..],
        &["status", "0000dead-beef"][..],
        &["audit", "0000dead-beef"][..],
    ] {
        let ran = ws.run(args);
        assert_eq!(ran.code, 2, "{args:?}: {ran:#?}");
        assert!(
            ran.stderr.contains("0000dead-beef"),
            "{args:?}: {}",
            ran.stderr
        );
        assert!(ran.stderr.contains("hint:"), "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("backfill runs"),
            "{args:?}: {}",
            ran.stderr
        );
    }
    let empty = Workspace::new();
    let ran = empty.run(&["status"]);
    assert_eq!(ran.code, 2, "status without any run: {ran:#?}");
    assert!(ran.stderr.contains("hint:"), "{}", ran.stderr);
}

#[tokio::test]
async fn edge_case_values_are_copied_exactly() {
    let ws = Workspace::new();
    let source = sqlite(&ws.path("source.db")).await;
    let target = sqlite(&ws.path("target.db")).await;
    let schema = "(id INTEGER PRIMARY KEY, n INTEGER, r REAL, t TEXT, b BLOB, ts TEXT NOT NULL)";
    exec(&source, &[&format!("CREATE TABLE items {schema}")]).await;
    exec(&target, &[&format!("CREATE TABLE items_copy {schema}")]).await;

    let big: String = "Ünïcödé ✓ 日本語 😀 ".repeat(40_000);
    assert!(big.len() > 1_000_000);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    type Item = (
        i64,
        Option<i64>,
        Option<f64>,
        Option<String>,
        Option<Vec<u8>>,
        &'static str,
    );
    let items: Vec<Item> = vec![
        (1, None, None, None, None, "2026-01-01T00:00:01Z"),
        (
            2,
            Some(0),
            Some(0.0),
            Some(String::new()),
            Some(Vec::new()),
            "2026-01-01T00:00:02Z",
        ),
        (
            3,
            Some(i64::MAX),
            Some(f64::MAX),
            Some("NULL".into()),
            Some(vec![0]),
            "2026-01-01T12:00:00Z",
        ),
        (
            4,
            Some(i64::MIN),
            Some(f64::MIN_POSITIVE),
            Some("null".into()),
            Some(all_bytes),
            "2026-01-01T23:59:59Z",
        ),
        (
            5,
            Some(-1),
            Some(0.1),
            Some("Ünïcödé ✓ 日本語 😀 Ω".into()),
            None,
            "2026-01-02T00:00:00Z",
        ),
        (
            6,
            Some(1),
            Some(-1e-300),
            Some(
                "line1\nline2\r\n\ttab 'single' \"double\" \\ back; DROP TABLE items_copy; --"
                    .into(),
            ),
            None,
            "2026-01-02T06:00:00Z",
        ),
        (
            7,
            Some(42),
            Some(1.0),
            Some(big.clone()),
            None,
            "2026-01-02T12:00:00Z",
        ),
        (
            8,
            None,
            Some(-0.5),
            Some(" ".into()),
            None,
            "2026-01-02T18:00:00Z",
        ),
        (
            i64::MAX,
            Some(i64::MAX),
            None,
            Some("max key".into()),
            None,
            "2026-01-02T23:00:00Z",
        ),
        (
            i64::MIN,
            Some(i64::MIN),
            None,
            Some("min key".into()),
            None,
            "2026-01-01T01:00:00Z",
        ),
    ];
    for (id, n, r, t, b, ts) in &items {
        sqlx::query("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .bind(id)
            .bind(n)
            .bind(r)
            .bind(t)
            .bind(b)
            .bind(ts)
            .execute(&source)
            .await
            .expect("insert item");
    }
    // Outside the scope: must not be copied.
    exec(
        &source,
        &["INSERT INTO items VALUES (100, 1, 1.0, 'outside', NULL, '2026-01-03T00:00:00Z')"],
    )
    .await;

    let spec = format!(
        r#"name = "edge_cases"
reason = "integration test: edge-case values"

[source]
url = "sqlite://{}"
query = "SELECT id, n, r, t, b, ts FROM items WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "sqlite://{}"
table = "items_copy"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-03T00:00:00Z"
partition = "1d"

[limits]
batch_rows = 2
"#,
        ws.path("source.db").display(),
        ws.path("target.db").display()
    );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["run", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");

    let select =
        |table: &str| format!("SELECT id, n, r, t, b, ts FROM {table} WHERE id <> 100 ORDER BY id");
    let want = rows(&source, &select("items")).await;
    let got = rows(&target, &select("items_copy")).await;
    assert_eq!(want.len(), items.len());
    assert_eq!(got.len(), want.len());
    for (w, g) in want.iter().zip(&got) {
        assert!(
            w == g,
            "row differs (id {:?}): {:?}",
            w[0],
            g.iter()
                .map(|c| c.as_ref().map(|s| s.chars().take(80).collect::<String>()))
                .collect::<Vec<_>>()
        );
    }
    // Storage classes and exact representations too (NULL vs '' vs x'', REAL vs INTEGER).
    let exact = |table: &str| {
        format!(
            "SELECT id, typeof(n), typeof(r), typeof(t), typeof(b), quote(n), quote(r), hex(t), hex(b), length(t) \
             FROM {table} WHERE id <> 100 ORDER BY id"
        )
    };
    assert_eq!(
        rows(&target, &exact("items_copy")).await,
        rows(&source, &exact("items")).await
    );
    let outside = rows(&target, "SELECT count(*) FROM items_copy WHERE id = 100").await;
    assert_eq!(outside, vec![vec![Some("i:0".to_owned())]]);
    let big_copy = rows(&target, "SELECT t FROM items_copy WHERE id = 7").await;
    assert_eq!(big_copy[0][0].as_deref(), Some(format!("t:{big}").as_str()));
}

/// Every place a secret could leak to: outputs, audit, status, and the state store's bytes.
fn assert_no_secret(ws: &Workspace, secret: &str, outputs: &[&Ran]) {
    for r in outputs {
        assert!(!r.stdout.contains(secret), "secret on stdout: {r:#?}");
        assert!(!r.stderr.contains(secret), "secret on stderr: {r:#?}");
    }
    for entry in std::fs::read_dir(ws.dir.path()).expect("read workspace") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with("state.db") {
            let bytes = std::fs::read(&path).expect("read state file");
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "secret stored in {name}");
        }
    }
}

#[tokio::test]
async fn a_password_from_the_environment_is_never_shown_or_stored() {
    const SECRET: &str = "pw-Zq8r1Xk3secret";
    let ws = Workspace::new();
    let spec = setup(&ws, 200, "").await;
    let source = ws.path("source.db").display().to_string();
    let target = ws.path("target.db").display().to_string();
    // SQLite has no passwords: the driver rejects the parameter, so these URLs fail to open
    // with an error message that quotes the URL.
    let spec = edit(
        &spec,
        &format!("sqlite://{source}"),
        &format!("sqlite://{source}?password=${{PW}}"),
    );
    let spec = edit(
        &spec,
        &format!("sqlite://{target}"),
        &format!("sqlite://{target}?password=${{PW}}"),
    );
    ws.write(SPEC, &spec);
    let with_pw = |args: &[&str]| {
        let out = ws
            .command(args)
            .env("PW", SECRET)
            .output()
            .expect("run backfill");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let check = with_pw(&["check", SPEC]);
    assert_eq!(check.code, 2, "{check:#?}");
    assert!(
        check.stderr.contains("error: source.url"),
        "{}",
        check.stderr
    );
    assert!(
        check.stderr.contains("password=***"),
        "the URL is shown redacted: {}",
        check.stderr
    );
    let check_json = with_pw(&["--json", "check", SPEC]);
    let plan = with_pw(&["--json", "plan", SPEC]);
    let run = with_pw(&["-vvv", "run", SPEC]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("password=***"), "{}", run.stderr);
    let run_json = with_pw(&["--json", "--log-format", "json", "-vvv", "run", SPEC]);
    assert_ne!(run_json.code, 0, "{run_json:#?}");
    let status = with_pw(&["--json", "status"]);
    let status_text = with_pw(&["status"]);
    let audit = with_pw(&["--json", "audit"]);
    assert_eq!(audit.code, 0, "{audit:#?}");
    let runs = with_pw(&["--json", "runs"]);
    // Without the variable the spec is rejected, naming it.
    let unset = ws.run(&["check", SPEC]);
    assert_eq!(unset.code, 2, "{unset:#?}");
    assert!(unset.stderr.contains("`PW` is not set"), "{}", unset.stderr);
    assert_no_secret(
        &ws,
        SECRET,
        &[
            &check,
            &check_json,
            &plan,
            &run,
            &run_json,
            &status,
            &status_text,
            &audit,
            &runs,
            &unset,
        ],
    );
}

#[tokio::test]
async fn a_password_in_an_unreachable_database_url_is_never_shown_or_stored() {
    const SECRET: &str = "hunter2";
    let ws = Workspace::new();
    let spec = setup(&ws, 200, "").await;
    let target = ws.path("target.db").display().to_string();
    let spec = edit(
        &spec,
        &format!("sqlite://{target}"),
        "postgres://u:${PW}@127.0.0.1:1/db",
    );
    ws.write(SPEC, &spec);
    let with_pw = |args: &[&str]| {
        let out = ws
            .command(args)
            .env("PW", SECRET)
            .output()
            .expect("run backfill");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let check = with_pw(&["--json", "check", SPEC]);
    assert_eq!(check.code, 2, "{check:#?}");
    assert!(check.stdout.contains("target.url"), "{}", check.stdout);
    // The database cannot be reached: the work fails (exit 1), naming the redacted URL.
    let run = with_pw(&["-vvv", "run", SPEC]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("u:***@127.0.0.1:1"), "{}", run.stderr);
    let runs = with_pw(&["--json", "runs"]);
    assert_no_secret(&ws, SECRET, &[&check, &run, &runs]);
}

/// A reader that closed the pipe (`backfill plan SPEC --all | head -1`) is not a crash: the
/// command drops the lines it can no longer write and ends normally, where `println!`
/// panicked (exit 101 and a backtrace).
#[tokio::test]
async fn a_closed_stdout_pipe_is_not_a_panic() {
    let ws = Workspace::new();
    let spec = setup(&ws, 300, "").await;
    ws.write(SPEC, &spec);
    // `true` exits at once, before `backfill` writes: every write meets a closed pipe.
    let script = format!(
        "\"{}\" --state '{}' plan {SPEC} --all --no-estimate 2>err.txt | true; echo \"${{PIPESTATUS[0]}}\"",
        crate::support::bin().display(),
        ws.state()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(ws.path(""))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = std::fs::read_to_string(ws.path("err.txt")).unwrap_or_default();
    assert_eq!(status, "0", "exit status {status}, stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
