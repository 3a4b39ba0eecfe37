//! Invariant 1: replaying a spec, any number of times, leaves the target as one clean run
//! would, in `upsert` and `replace` mode; and every state change is in the audit trail.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{
    Workspace, assert_same_rows, audit_events, copy_spec, exec, make_source, make_target,
    reference, replace_spec, rows, runs_json, target_rows,
};

const DAYS: i64 = 30;
const ROWS: i64 = 60_000;

fn count(report: &Value, name: &str) -> u64 {
    report["rows"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("rows.{name} missing in {report:#}"))
}

/// How many events of each action the run's audit trail holds; also checks that every event
/// belongs to the run and that `partition.done` occurs once per partition (`partitions`).
fn audit_summary(ws: &Workspace, run_id: &str, partitions: usize) -> BTreeMap<String, usize> {
    let events = audit_events(ws, run_id);
    let mut actions = BTreeMap::new();
    let mut done_partitions = BTreeMap::new();
    for e in &events {
        assert_eq!(e["run_id"], run_id, "event of another run: {e}");
        let action = e["action"].as_str().expect("action").to_owned();
        if action == "partition.done" {
            let id = e["partition_id"].as_str().expect("partition_id").to_owned();
            *done_partitions.entry(id).or_insert(0usize) += 1;
        }
        *actions.entry(action).or_insert(0usize) += 1;
    }
    assert_eq!(
        done_partitions.len(),
        partitions,
        "partitions done: {done_partitions:?}"
    );
    assert!(
        done_partitions.values().all(|&n| n == 1),
        "a partition was done twice: {done_partitions:?}"
    );
    for action in ["run.created", "run.running", "run.succeeded"] {
        assert_eq!(actions.get(action), Some(&1), "{action} in {actions:?}");
    }
    for action in [
        "partition.failed",
        "partition.interrupted",
        "run.failed",
        "run.paused",
    ] {
        assert_eq!(actions.get(action), None, "{action} in {actions:?}");
    }
    assert!(actions["partition.running"] >= partitions, "{actions:?}");
    actions
}

fn verify_audit(ws: &Workspace) {
    let verify = ws.run(&["audit", "--verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let report = verify.json();
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["events"].as_u64().expect("events") > 0);
}

#[tokio::test]
async fn upsert_twice_gives_the_reference_and_the_second_run_changes_nothing() {
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), ROWS, DAYS).await;
    let target = make_target(&ws.path("target.db")).await;
    let expected = reference(&source).await;
    let spec = ws.write(
        "spec.toml",
        &copy_spec(
            &ws.path("source.db").display().to_string(),
            &ws.path("target.db").display().to_string(),
            DAYS,
            "",
        ),
    );

    let first = ws.run(&["run", &spec, "--json"]);
    assert_eq!(first.code, 0, "first run failed: {first:?}");
    assert!(first.stderr.contains("created run"), "{}", first.stderr);
    let first = first.json();
    assert_eq!(first["state"], "succeeded");
    assert_eq!(first["partitions"]["done"], DAYS);
    assert_eq!(count(&first, "read"), ROWS as u64);
    assert_eq!(count(&first, "inserted"), ROWS as u64);
    assert_eq!(count(&first, "updated"), 0);
    assert_eq!(count(&first, "unchanged"), 0);
    assert_same_rows(
        &target_rows(&target).await,
        &expected,
        "target after the first run",
    );

    // The first run finished, so running the spec again is a new run; it finds every row
    // already right and rewrites none.
    let second = ws.run(&["run", &spec, "--json"]);
    assert_eq!(second.code, 0, "second run failed: {second:?}");
    assert!(
        second.stderr.contains("created run") && !second.stderr.contains("resuming"),
        "{}",
        second.stderr
    );
    let second = second.json();
    assert_eq!(second["state"], "succeeded");
    assert_ne!(second["run_id"], first["run_id"]);
    assert_eq!(count(&second, "read"), ROWS as u64);
    assert_eq!(count(&second, "inserted"), 0, "{second:#}");
    assert_eq!(count(&second, "updated"), 0, "{second:#}");
    assert_eq!(count(&second, "deleted"), 0, "{second:#}");
    assert_eq!(count(&second, "unchanged"), ROWS as u64, "{second:#}");
    assert_same_rows(
        &target_rows(&target).await,
        &expected,
        "target after the second run",
    );

    let runs = runs_json(&ws);
    assert_eq!(runs.len(), 2, "{runs:?}");
    // Newest first.
    assert_eq!(runs[0]["run_id"], second["run_id"]);
    assert_eq!(runs[1]["run_id"], first["run_id"]);
    for run in &runs {
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["partitions"], DAYS, "{run}");
    }

    verify_audit(&ws);
    for run in [&first, &second] {
        audit_summary(&ws, run["run_id"].as_str().expect("run_id"), DAYS as usize);
    }
}

#[tokio::test]
async fn replace_twice_gives_the_reference_and_keeps_rows_outside_the_scope() {
    const DAYS: i64 = 20;
    const ROWS: i64 = 40_000;
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), ROWS, DAYS).await;
    let target = make_target(&ws.path("target.db")).await;
    // Outside the scope (before its start, at and after its end): replace must not touch them.
    let outside = [
        "INSERT INTO events_copy VALUES (1000001, 1, 100, '2025-12-31T23:59:59Z', 'before')",
        "INSERT INTO events_copy VALUES (1000002, NULL, NULL, '2025-06-01T00:00:00Z', NULL)",
        "INSERT INTO events_copy VALUES (1000003, 3, 300, '2026-01-21T00:00:00Z', 'at the end')",
        "INSERT INTO events_copy VALUES (1000004, 4, -400, '2026-02-01T12:00:00Z', 'AFTER')",
    ];
    exec(&target, &outside).await;
    let kept = rows(
        &target,
        "SELECT id, user_id, amount_cents, ts, note FROM events_copy ORDER BY id",
    )
    .await;
    // Inside the scope: stale rows (wrong values, and ids the source does not have) that the
    // replace deletes.
    exec(
        &target,
        &[
            "INSERT INTO events_copy VALUES (5, 0, 0, '2026-01-01T00:10:00Z', 'STALE')",
            "INSERT INTO events_copy VALUES (900001, 9, 9, '2026-01-03T00:00:00Z', 'gone')",
            "INSERT INTO events_copy VALUES (900002, 9, 9, '2026-01-20T23:59:59Z', 'gone')",
            "INSERT INTO events_copy VALUES (900003, 9, 9, '2026-01-01T00:00:00Z', 'gone')",
        ],
    )
    .await;
    let mut expected = reference(&source).await;
    expected.extend(kept);
    let spec = ws.write(
        "spec.toml",
        &replace_spec(
            &ws.path("source.db").display().to_string(),
            &ws.path("target.db").display().to_string(),
            DAYS,
            "",
        ),
    );

    for (round, deleted) in [(1, 4u64), (2, ROWS as u64)] {
        let ran = ws.run(&["run", &spec, "--json"]);
        assert_eq!(ran.code, 0, "replace run {round} failed: {ran:?}");
        let report = ran.json();
        assert_eq!(report["state"], "succeeded", "{report:#}");
        assert_eq!(count(&report, "read"), ROWS as u64, "{report:#}");
        assert_eq!(count(&report, "inserted"), ROWS as u64, "{report:#}");
        assert_eq!(
            count(&report, "deleted"),
            deleted,
            "round {round}: {report:#}"
        );
        assert_same_rows(
            &target_rows(&target).await,
            &expected,
            &format!("target after replace run {round}"),
        );
    }

    let runs = runs_json(&ws);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["state"] == "succeeded"), "{runs:?}");
    verify_audit(&ws);
    for run in &runs {
        audit_summary(&ws, run["run_id"].as_str().expect("run_id"), DAYS as usize);
    }
}

/// When the target database is the state store, each batch and its checkpoint commit in one
/// transaction (invariant 2); running twice still gives the reference, and the counts say what
/// each run did.
#[tokio::test]
async fn upsert_into_the_state_store_twice_gives_the_reference_and_true_counts() {
    const DAYS: i64 = 10;
    const ROWS: i64 = 20_000;
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), ROWS, DAYS).await;
    // The target table lives in the workspace's state store file.
    let target = make_target(&ws.path("state.db")).await;
    let expected = reference(&source).await;
    let spec = ws.write(
        "spec.toml",
        &copy_spec(
            &ws.path("source.db").display().to_string(),
            &ws.path("state.db").display().to_string(),
            DAYS,
            "",
        ),
    );
    for (round, inserted, unchanged) in [(1, ROWS as u64, 0), (2, 0, ROWS as u64)] {
        let ran = ws.run(&["run", &spec, "--json"]);
        assert_eq!(ran.code, 0, "run {round} failed: {ran:?}");
        let report = ran.json();
        assert_eq!(report["state"], "succeeded", "{report:#}");
        assert_eq!(report["exactly_once_checkpoints"], true, "{report:#}");
        assert_same_rows(
            &target_rows(&target).await,
            &expected,
            &format!("target after run {round}"),
        );
        assert_eq!(count(&report, "read"), ROWS as u64, "{report:#}");
        assert_eq!(count(&report, "updated"), 0, "run {round}: {report:#}");
        assert_eq!(
            count(&report, "inserted"),
            inserted,
            "run {round}: {report:#}"
        );
        assert_eq!(
            count(&report, "unchanged"),
            unchanged,
            "run {round}: {report:#}"
        );
    }
    verify_audit(&ws);
}
