//! `backfill demo`: the self-contained repair works end to end, its target ends up exactly as
//! a reference computed in Rust from the source, a second demo recreates its own folder, and a
//! folder that is not a demo is never touched.

use crate::support::{Workspace, assert_same_rows, reference, rows, sqlite};

const ROWS: &str = "200000";

/// The expected `events_fixed` of the demo, computed in Rust from the source `events`
/// (amount → cents rounded half away from zero, note ASCII-lowercased, NULL kept).
async fn expected_and_actual(
    dir: &std::path::Path,
) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let source = sqlite(&dir.join("source.db")).await;
    let target = sqlite(&dir.join("target.db")).await;
    let expected = reference(&source).await;
    let actual = rows(
        &target,
        "SELECT id, user_id, amount_cents, ts, note FROM events_fixed ORDER BY id",
    )
    .await;
    source.close().await;
    target.close().await;
    (expected, actual)
}

#[tokio::test]
async fn demo_repairs_the_broken_days_and_a_second_demo_recreates_its_folder() {
    let ws = Workspace::new();
    let dir = ws.path("demo");
    let dir_arg = dir.display().to_string();
    let demo_state = format!(
        "sqlite://{}",
        dir.join(".backfill").join("state.db").display()
    );

    // First demo, text output for people.
    let first = ws.run(&["demo", "--dir", &dir_arg, "--rows", ROWS]);
    assert_eq!(first.code, 0, "demo failed: {first:?}");
    let runs = ws.run(&["--state", &demo_state, "runs", "--json"]);
    assert_eq!(runs.code, 0, "{runs:?}");
    let runs = runs.json();
    let runs = runs.as_array().expect("array");
    assert_eq!(runs.len(), 1, "the demo makes exactly one run: {runs:?}");
    let first_id = runs[0]["run_id"].as_str().expect("run_id").to_owned();
    assert_eq!(runs[0]["state"], "succeeded");
    assert!(
        first.stdout.contains(&format!("run {first_id}: succeeded")),
        "stdout should name the run and its state:\n{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("4 of 90 days differ"),
        "before:\n{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("0 of 90 days differ"),
        "after:\n{}",
        first.stdout
    );
    let (expected, actual) = expected_and_actual(&dir).await;
    assert_eq!(expected.len(), 200_000);
    assert_same_rows(&actual, &expected, "events_fixed after the first demo");

    // Second demo into the same folder, JSON output for scripts.
    let second = ws.run(&["demo", "--dir", &dir_arg, "--rows", ROWS, "--json"]);
    assert_eq!(second.code, 0, "second demo failed: {second:?}");
    assert!(
        second.stderr.contains("recreating") && second.stderr.contains("earlier demo"),
        "stderr should say the folder is recreated:\n{}",
        second.stderr
    );
    let report = second.json();
    let run_id = report["run_id"].as_str().expect("run_id");
    assert_ne!(run_id, first_id, "a recreated demo starts afresh");
    assert_eq!(report["state"], "succeeded");
    assert_eq!(report["before"]["days_total"], 90);
    assert_eq!(report["before"]["days_differing"], 4, "{report:#}");
    assert_eq!(report["after"]["days_differing"], 0, "{report:#}");
    let rows_json = &report["rows"];
    let count = |name: &str| {
        rows_json[name]
            .as_u64()
            .unwrap_or_else(|| panic!("rows.{name}"))
    };
    assert!(
        count("inserted") > 0 && count("updated") > 0 && count("unchanged") > 0,
        "{report:#}"
    );
    assert_eq!(count("read"), 200_000);
    assert_eq!(
        count("inserted") + count("updated") + count("unchanged"),
        200_000
    );
    // Exactly the rows of the missing days are inserted and those of the wrong day updated.
    let affected = report["before"]["affected"].as_array().expect("affected");
    assert_eq!(affected.len(), 4, "{report:#}");
    let (missing, wrong): (Vec<_>, Vec<_>) = affected.iter().partition(|d| d["target_rows"] == 0);
    assert_eq!(
        missing.len(),
        3,
        "three days were never loaded: {affected:?}"
    );
    let sum = |days: &[&serde_json::Value], field: &str| -> u64 {
        days.iter().map(|d| d[field].as_u64().expect("count")).sum()
    };
    assert_eq!(count("inserted"), sum(&missing, "source_rows"));
    assert_eq!(count("updated"), sum(&wrong, "wrong_rows"));
    assert!(sum(&wrong, "wrong_rows") > 0);
    for day in report["after"]["affected"]
        .as_array()
        .expect("after.affected")
    {
        assert_eq!(day["source_rows"], day["target_rows"], "{day}");
        assert_eq!(day["wrong_rows"], 0, "{day}");
    }

    // The old state store went with the old folder: one run, and its audit chain verifies.
    let runs = ws.run(&["--state", &demo_state, "runs", "--json"]).json();
    let runs = runs.as_array().expect("array");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["run_id"], run_id);
    let verify = ws.run(&["--state", &demo_state, "audit", "--verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert_eq!(verify.json()["ok"], true);

    let (expected, actual) = expected_and_actual(&dir).await;
    assert_same_rows(&actual, &expected, "events_fixed after the second demo");
}

#[tokio::test]
async fn demo_refuses_a_non_empty_folder_that_is_not_a_demo() {
    let ws = Workspace::new();
    let dir = ws.path("precious");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("notes.txt"), "keep me").expect("write");
    std::fs::write(dir.join("sub").join("data.db"), "not a database").expect("write");
    let listing = |d: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&dir);

    let ran = ws.run(&[
        "demo",
        "--dir",
        &dir.display().to_string(),
        "--rows",
        "1000",
    ]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("not a backfill demo folder"),
        "{}",
        ran.stderr
    );
    assert_eq!(listing(&dir), before, "nothing created or deleted");
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).expect("read"),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sub").join("data.db")).expect("read"),
        "not a database"
    );
}

#[tokio::test]
async fn demo_uses_an_existing_empty_folder() {
    let ws = Workspace::new();
    let dir = ws.path("empty");
    std::fs::create_dir(&dir).expect("mkdir");
    let ran = ws.run(&[
        "demo",
        "--dir",
        &dir.display().to_string(),
        "--rows",
        "1000",
        "--prepare-only",
        "--json",
    ]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json()["before"]["days_differing"], 4);
    assert!(dir.join("source.db").exists() && dir.join("target.db").exists());
    assert!(dir.join("spec.toml").exists());
}
