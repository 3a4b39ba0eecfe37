//! What a user sees: no driver log lines, `--json` errors as one JSON object with the exit
//! code, state-store open failures that say whose fault they are, a run summary and a
//! quarantine listing in the user's terms, PostgreSQL errors without the server's source line,
//! and spec errors with the offending source line underlined.

use crate::support::{Ran, Workspace, copy_spec, exec, make_source, make_target, sqlite};

const SPEC: &str = "spec.toml";

/// The last line of stderr as the `--json` error object; asserts its shape and exit code.
fn json_error(ran: &Ran, exit: i32) -> serde_json::Value {
    assert_eq!(ran.code, exit, "{ran:#?}");
    let last = ran.stderr.lines().last().unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stderr line is not JSON ({e}):\n{}", ran.stderr));
    assert_eq!(value["exit"], exit, "{value:#}");
    assert!(
        value["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{value:#}"
    );
    assert!(value.get("hint").is_some(), "{value:#}");
    value
}

/// A workspace with a 3-day source of `n` rows and an empty target, and its spec written.
async fn setup(ws: &Workspace, n: i64) -> String {
    make_source(&ws.path("source.db"), n, 3).await.close().await;
    make_target(&ws.path("target.db")).await.close().await;
    let spec = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        3,
        "",
    );
    ws.write(SPEC, &spec);
    spec
}

/// The demo printed sqlx's `WARN slow statement … db.statement="…"` lines between its
/// own; the default demo (a million rows) has statements slower than sqlx's 1 s threshold.
#[tokio::test]
async fn the_demo_prints_no_driver_log_lines() {
    let ws = Workspace::new();
    let dir = ws.path("demo").display().to_string();
    let ran = ws.run(&["demo", "--dir", &dir]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    for bad in ["WARN", "slow statement", "db.statement"] {
        assert!(
            !ran.stderr.contains(bad),
            "{bad} in stderr:\n{}",
            ran.stderr
        );
        assert!(
            !ran.stdout.contains(bad),
            "{bad} in stdout:\n{}",
            ran.stdout
        );
    }
}

#[tokio::test]
async fn json_errors_are_one_object_with_the_exit_code() {
    let ws = Workspace::new();
    let spec = setup(&ws, 100).await;

    // A spec with an error: the object carries its diagnostics, with positions.
    ws.write(
        "bad.toml",
        &spec.replace("partition = \"1d\"", "partition = \"0h\""),
    );
    for command in ["plan", "run", "check"] {
        let ran = ws.run(&["--json", command, "bad.toml"]);
        let error = json_error(&ran, 2);
        let diagnostics = error["diagnostics"].as_array().expect("diagnostics");
        assert_eq!(diagnostics.len(), 1, "{command}: {error:#}");
        assert_eq!(diagnostics[0]["path"], "scope.partition", "{error:#}");
        assert!(diagnostics[0]["line"].is_u64(), "{error:#}");
    }

    // An unknown run id: the user's input, with the hint that lists runs.
    for command in ["status", "resume", "quarantine", "audit"] {
        let ran = ws.run(&["--json", command, "0000dead-beef"]);
        let error = json_error(&ran, 2);
        assert!(error["error"].as_str().unwrap().contains("0000dead-beef"));
        assert!(
            error["hint"].as_str().unwrap().contains("backfill runs"),
            "{command}: {error:#}"
        );
        assert!(ran.stdout.is_empty(), "{command}: {}", ran.stdout);
    }

    // An unreachable state store: failed work (exit 1), the password masked.
    let ran = ws.run(&[
        "--json",
        "--state",
        "postgres://bob:hunter2@127.0.0.1:1/state",
        "runs",
    ]);
    let error = json_error(&ran, 1);
    assert!(error["hint"].as_str().unwrap().contains("running"));
    assert!(!ran.stderr.contains("hunter2"), "{}", ran.stderr);

    // The text form is unchanged without --json.
    let ran = ws.run(&["status", "0000dead-beef"]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.starts_with("error: "), "{}", ran.stderr);
}

#[tokio::test]
async fn state_store_open_failures_say_whose_fault_it_is() {
    let ws = Workspace::new();
    // Wrong input: exit 2, with the forms a state store URL takes.
    for bad in ["mysql://h/db", "sqlite://", "postgres://h:notaport/db"] {
        let ran = ws.run(&["--state", bad, "runs"]);
        assert_eq!(ran.code, 2, "{bad}: {ran:#?}");
        assert!(
            ran.stderr.contains("invalid state store URL"),
            "{bad}: {}",
            ran.stderr
        );
        assert!(ran.stderr.contains("hint:") && ran.stderr.contains("sqlite://PATH"));
    }
    // A closed loopback port: the server is not there (exit 1), and the hint says so.
    let ran = ws.run(&["--state", "postgres://bob@127.0.0.1:1/state", "runs"]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(
        ran.stderr.contains("cannot reach the state store"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("hint: is the PostgreSQL server running"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("sqlite://PATH"), "{}", ran.stderr);

    // A store written by a newer backfill: exit 1, upgrade.
    assert_eq!(ws.run(&["runs"]).code, 0);
    let store = sqlite(&ws.path("state.db")).await;
    exec(
        &store,
        &["INSERT INTO schema_version (version, applied_at) VALUES (9999, 'later')"],
    )
    .await;
    store.close().await;
    let ran = ws.run(&["runs"]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(ran.stderr.contains("schema version 9999"), "{}", ran.stderr);
    assert!(ran.stderr.contains("hint:") && ran.stderr.contains("newer backfill"));
}

/// Every partition ends `done_with_quarantine`: the summary names that state (it said "0
/// done, 0 failed, 3 total"), and `quarantine` prints keys as `id=7`, not `[{"i":7}]`.
#[tokio::test]
async fn the_quarantine_flow_speaks_the_users_terms() {
    let ws = Workspace::new();
    make_source(&ws.path("source.db"), 900, 3)
        .await
        .close()
        .await;
    let target = sqlite(&ws.path("target.db")).await;
    // Every 7th source row has a NULL note, which the target refuses.
    exec(
        &target,
        &[
            "CREATE TABLE events_copy (id INTEGER PRIMARY KEY, user_id INTEGER, \
           amount_cents INTEGER, ts TEXT NOT NULL, note TEXT NOT NULL)",
        ],
    )
    .await;
    target.close().await;
    ws.write(
        SPEC,
        &copy_spec(
            &ws.path("source.db").display().to_string(),
            &ws.path("target.db").display().to_string(),
            3,
            "",
        ),
    );
    let ran = ws.run(&["run", SPEC]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(
        ran.stdout
            .contains("partitions: 0 done, 3 done with quarantine, 0 failed, 3 total"),
        "{}",
        ran.stdout
    );
    let run_id = crate::support::runs_json(&ws)[0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let listed = ws.run(&["quarantine", &run_id]);
    assert_eq!(listed.code, 0, "{listed:#?}");
    assert!(listed.stdout.contains(" key id=7: "), "{}", listed.stdout);
    assert!(!listed.stdout.contains("{\"i\""), "{}", listed.stdout);
    let json = ws.run(&["--json", "quarantine", &run_id]).json();
    let keys: Vec<&str> = json
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["key_text"].as_str())
        .collect();
    assert!(keys.contains(&"id=7"), "{keys:?}");
}

/// A PostgreSQL target's refusal reads as PostgreSQL says it (message, detail, constraint,
/// column), never with the server's C source line (`… at line 2090`).
#[tokio::test]
async fn postgresql_errors_show_detail_constraint_and_column() {
    use sqlx::PgPool;
    let base = backfill_testkit::postgres_url();
    let pool = match PgPool::connect(&base).await {
        Ok(p) => p,
        Err(e) => return backfill_testkit::unreachable("PostgreSQL", &base, &e).unwrap_or(()),
    };
    let schema = backfill_testkit::unique("bf_out");
    let run = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    run(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    run(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.events_copy (id bigint PRIMARY KEY, \
         user_id bigint, amount_cents bigint, ts text NOT NULL, note text NOT NULL, \
         CONSTRAINT no_hundred_ones CHECK (id % 100 <> 1))"
    ))
    .await;

    let ws = Workspace::new();
    make_source(&ws.path("source.db"), 300, 3)
        .await
        .close()
        .await;
    let spec = copy_spec(&ws.path("source.db").display().to_string(), "TARGET", 3, "")
        .replace("sqlite://TARGET", &base)
        .replace(
            "table = \"events_copy\"",
            &format!("table = \"{schema}.events_copy\""),
        );
    ws.write(SPEC, &spec);
    let ran = ws.run(&["run", SPEC]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    let run_id = crate::support::runs_json(&ws)[0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let listed = ws.run(&["--json", "quarantine", &run_id]).json();
    let errors: Vec<&str> = listed
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["error"].as_str().expect("error"))
        .collect();
    run(format!("DROP SCHEMA {schema} CASCADE")).await;
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| !e.contains(" at line ")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(
            |e| e.contains("violates check constraint \"no_hundred_ones\"")
                && e.contains("; detail: Failing row contains")
                && e.contains("; constraint: no_hundred_ones")
        ),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not-null constraint") && e.contains("; column: note")),
        "{errors:#?}"
    );
}

/// A spec error shows the offending line with a caret under the value, after the
/// `file:line:column` line that editors and tests match, and before the hint.
#[tokio::test]
async fn spec_errors_underline_the_offending_value() {
    let ws = Workspace::new();
    let spec = setup(&ws, 10).await;
    ws.write(
        SPEC,
        &spec.replace("partition = \"1d\"", "partition = \"0h\""),
    );
    for args in [
        &["check", SPEC][..],
        &["plan", SPEC][..],
        &["--json", "run", SPEC][..],
    ] {
        let ran = ws.run(args);
        assert_eq!(ran.code, 2, "{ran:#?}");
        let lines: Vec<&str> = ran.stderr.lines().collect();
        let head = lines
            .iter()
            .position(|l| l.starts_with("spec.toml:") && l.contains(": error: scope.partition: "))
            .unwrap_or_else(|| panic!("{args:?}: no diagnostic line in\n{}", ran.stderr));
        let source = lines
            .iter()
            .skip(head)
            .position(|l| l.ends_with("| partition = \"0h\""))
            .map(|i| lines[head + i])
            .unwrap_or_else(|| panic!("{args:?}: no source line in\n{}", ran.stderr));
        let carets = lines[lines.iter().position(|l| *l == source).unwrap() + 1];
        let value_at = source.find("\"0h\"").unwrap();
        assert_eq!(
            carets.find('^'),
            Some(value_at),
            "{args:?}: caret not under the value:\n{source}\n{carets}"
        );
        assert_eq!(carets.matches('^').count(), 4, "{carets}");
        assert!(ran.stderr.contains("  hint: e.g."), "{}", ran.stderr);
        assert!(
            !ran.stderr.contains('\u{1b}'),
            "no colour without a terminal"
        );
    }
}
