//! The canary (`[canary]`) through the real binary, on SQLite and PostgreSQL: it runs the
//! first, the last, the largest and seeded random partitions before any other (the same seed
//! picks the same ones); a canary partition the target rejects rows of stops the run
//! (`failed`, reason `canary_failed`) with no other partition written; with
//! `require_approval` the run waits in `awaiting_approval` until a second process runs
//! `backfill approve`; `approve` is refused on a run not awaiting approval; bad keys are spec
//! errors.

use std::process::Stdio;
use std::time::{Duration, Instant};

use backfill_testkit::servers::{Db, System};
use serde_json::Value as J;

use crate::support::{Workspace, audit_events, runs_json};

const DAYS: i64 = 10;
/// Day index (from 0) with twice the rows: the largest partition.
const LARGEST: i64 = 4;

fn ts(system: System, day: i64, minute: i64) -> String {
    match system {
        System::Sqlite => format!("2026-01-{day:02}T00:{minute:02}:00Z"),
        _ => format!("2026-01-{day:02} 00:{minute:02}:00"),
    }
}

/// Source `src` (5 rows a day, 10 on day `LARGEST`; with `bad_last_day`, one negative amount
/// on the last day) and an empty target `dst` that refuses negative amounts.
async fn fixture(system: System, ws: &Workspace, bad_last_day: bool) -> Option<(Db, Db)> {
    let source = Db::open(system, ws.dir.path(), "bf_canary", "src").await?;
    let target = Db::open(system, ws.dir.path(), "bf_canary", "dst").await?;
    let t = match system {
        System::Sqlite => "TEXT",
        System::Postgres => "timestamptz",
        System::MySql => "DATETIME(6)",
    };
    let src = source.table("src");
    source
        .exec(&format!(
            "CREATE TABLE {src} (id BIGINT PRIMARY KEY, amount BIGINT, ts {t} NOT NULL)"
        ))
        .await;
    let mut rows = Vec::new();
    let mut id = 0;
    for day in 0..DAYS {
        let n = if day == LARGEST { 10 } else { 5 };
        for minute in 0..n {
            id += 1;
            let amount = if bad_last_day && day == DAYS - 1 && minute == 2 {
                -1
            } else {
                id * 10
            };
            rows.push(format!(
                "({id}, {amount}, '{}')",
                ts(system, day + 1, minute)
            ));
        }
    }
    source
        .exec(&format!("INSERT INTO {src} VALUES {}", rows.join(", ")))
        .await;
    let dst = target.table("dst");
    target
        .exec(&format!(
            "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, amount BIGINT CHECK (amount >= 0), \
             ts {t} NOT NULL)"
        ))
        .await;
    Some((source, target))
}

fn spec(source: &Db, target: &Db, canary: &str) -> String {
    format!(
        r#"name = "canary_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount, ts FROM {} WHERE ts >= :start AND ts < :end"

[target]
url = "{}"
table = "{}"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-11T00:00:00Z"
partition = "1d"

[limits]
concurrency = 2

[canary]
{canary}
"#,
        source.url(),
        source.table("src"),
        target.url(),
        target.table("dst"),
    )
}

fn newest_run(ws: &Workspace) -> String {
    runs_json(ws)[0]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The id of the workspace's run once `status` shows it awaiting approval (within 60 s);
/// panics if `child` (the run's process, when given) ends first.
async fn awaiting_approval(ws: &Workspace, mut child: Option<&mut std::process::Child>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ws.run(&["status", "--json"]);
        if status.code == 0 && status.json()["state"] == "awaiting_approval" {
            return status.json()["run_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "never awaiting approval: {status:?}"
        );
        if let Some(child) = child.as_deref_mut() {
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "run ended early"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn actions<'a>(events: &'a [J], action: &str) -> Vec<&'a J> {
    events.iter().filter(|e| e["action"] == action).collect()
}

/// The canary's chosen (index, why) pairs, from `canary.chosen`.
fn chosen(events: &[J]) -> Vec<(u64, String)> {
    let chosen = actions(events, "canary.chosen");
    assert_eq!(chosen.len(), 1, "{events:#?}");
    chosen[0]["detail"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["index"].as_u64().unwrap_or(u64::MAX),
                p["why"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn picks_first_last_largest_and_seeded_random(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, false).await else {
        return;
    };
    let path = ws.write(
        "spec.toml",
        &spec(&source, &target, "partitions = 5\nseed = 7"),
    );
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let first = newest_run(&ws);
    let events = audit_events(&ws, &first);
    let picks = chosen(&events);
    assert_eq!(
        picks[..3],
        [
            (0, "first".to_owned()),
            (DAYS as u64 - 1, "last".to_owned()),
            (LARGEST as u64, "largest".to_owned()),
        ],
        "{picks:?}"
    );
    assert!(
        picks[3..].iter().all(|(_, why)| why == "random"),
        "{picks:?}"
    );
    // Every canary partition finished before any other started.
    let canary_ids: Vec<&J> = actions(&events, "canary.chosen")[0]["detail"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["partition_id"])
        .collect();
    let passed_at = events
        .iter()
        .position(|e| e["action"] == "canary.passed")
        .expect("canary.passed");
    for (i, e) in events.iter().enumerate() {
        if e["action"] == "partition.running" && !canary_ids.contains(&&e["partition_id"]) {
            assert!(
                i > passed_at,
                "a partition ran before the canary passed: {e}"
            );
        }
    }
    let status = ws.run(&["status", &first, "--json"]).json();
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["canary"]["outcome"], "passed", "{status:#}");
    // The same seed picks the same partitions in a new run.
    let ran = ws.run(&["run", &path, "--new"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let second = newest_run(&ws);
    assert_ne!(first, second);
    assert_eq!(chosen(&audit_events(&ws, &second)), picks);
    // `approve` is refused on a run that is not awaiting approval, changing nothing.
    let ran = ws.run(&["approve", &second, "--reason", "too late"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("only a run awaiting approval"),
        "{ran:?}"
    );
    assert!(actions(&audit_events(&ws, &second), "run.approved").is_empty());
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn canary_picks_first_last_largest_and_seeded_random_sqlite() {
    picks_first_last_largest_and_seeded_random(System::Sqlite).await;
}

#[tokio::test]
async fn canary_picks_first_last_largest_and_seeded_random_postgres() {
    picks_first_last_largest_and_seeded_random(System::Postgres).await;
}

async fn failed_canary_stops_the_run(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, true).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, "partitions = 2"));
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("run failed at its canary"), "{ran:?}");
    let run = newest_run(&ws);
    let status = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(status["state"], "failed", "{status:#}");
    assert_eq!(status["canary"]["outcome"], "failed", "{status:#}");
    // Only the two canary partitions (first and last day) were touched.
    assert_eq!(status["partitions"]["pending"], DAYS - 2, "{status:#}");
    assert_eq!(status["rows"]["read"], 10, "{status:#}");
    let events = audit_events(&ws, &run);
    let failed = actions(&events, "run.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["detail"]["reason"], "canary_failed");
    assert_eq!(actions(&events, "canary.failed").len(), 1);
    // (A pushed-down partition is redone row by row to isolate the refused row: two
    // partitions, maybe three attempts.)
    let mut started: Vec<&J> = actions(&events, "partition.running")
        .into_iter()
        .map(|e| &e["partition_id"])
        .collect();
    started.sort_by_key(|v| v.to_string());
    started.dedup();
    assert_eq!(started.len(), 2, "{events:#?}");
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn failed_canary_partition_stops_the_run_untouched_sqlite() {
    failed_canary_stops_the_run(System::Sqlite).await;
}

#[tokio::test]
async fn failed_canary_partition_stops_the_run_untouched_postgres() {
    failed_canary_stops_the_run(System::Postgres).await;
}

async fn waits_for_approval(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, false).await else {
        return;
    };
    let text = spec(
        &source,
        &target,
        "partitions = 2\nseed = 1\nrequire_approval = true",
    );
    let path = ws.write("spec.toml", &text);
    let mut child = ws
        .command(&["run", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backfill");
    let run = awaiting_approval(&ws, Some(&mut child)).await;
    // Status shows the canary's partitions with their rows; nothing else ran.
    let status = ws.run(&["status", &run]);
    assert!(status.stdout.contains("awaiting approval"), "{status:?}");
    assert!(status.stdout.contains("5 rows read"), "{status:?}");
    let json = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(json["partitions"]["pending"], DAYS - 2, "{json:#}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the run must wait"
    );
    let ran = ws.run(&["approve", &run[..8], "--reason", "canary rows checked"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        assert!(Instant::now() < deadline, "run never ended after approval");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, Some(0));
    let json = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(json["state"], "succeeded", "{json:#}");
    assert_eq!(json["rows"]["inserted"], DAYS * 5 + 5, "{json:#}");
    let events = audit_events(&ws, &run);
    let approved = actions(&events, "run.approved");
    assert_eq!(approved.len(), 1, "{events:#?}");
    assert_eq!(approved[0]["detail"]["reason"], "canary rows checked");
    assert!(approved[0]["actor"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(actions(&events, "run.awaiting_approval").len(), 1);
    // Approving again is refused: the run no longer awaits approval.
    let ran = ws.run(&["approve", &run]);
    assert_eq!(ran.code, 2, "{ran:?}");
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn run_awaits_approval_until_another_process_approves_sqlite() {
    waits_for_approval(System::Sqlite).await;
}

#[tokio::test]
async fn run_awaits_approval_until_another_process_approves_postgres() {
    waits_for_approval(System::Postgres).await;
}

/// While a run awaits approval, `pause` is refused (it writes nothing: nothing to pause) and
/// says what to do instead; `cancel` ends it: the waiting process exits and the run is
/// `cancelled`, with only the canary written.
#[tokio::test]
async fn pause_is_refused_and_cancel_ends_a_run_awaiting_approval() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws, false).await else {
        return;
    };
    let text = spec(&source, &target, "partitions = 1\nrequire_approval = true");
    let path = ws.write("spec.toml", &text);
    let mut child = ws
        .command(&["run", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backfill");
    let run = awaiting_approval(&ws, None).await;
    let paused = ws.run(&["pause", &run]);
    assert_eq!(paused.code, 2, "{paused:?}");
    assert!(
        paused.stderr.contains("awaiting approval") && paused.stderr.contains("backfill cancel"),
        "{paused:?}"
    );
    assert_eq!(
        ws.run(&["status", &run, "--json"]).json()["state"],
        "awaiting_approval"
    );

    let cancelled = ws.run(&["cancel", &run]);
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the waiting process never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let json = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(json["state"], "cancelled", "{json:#}");
    assert_eq!(json["partitions"]["pending"], DAYS - 1, "{json:#}");
    source.drop_now().await;
    target.drop_now().await;
}

/// Ctrl-C while the run awaits approval leaves it `awaiting_approval`; an approval with no
/// process says to resume, and `resume` runs the rest.
#[tokio::test]
async fn stopped_while_awaiting_approval_resumes_after_approval() {
    let system = System::Sqlite;
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, false).await else {
        return;
    };
    let text = spec(&source, &target, "partitions = 1\nrequire_approval = true");
    let path = ws.write("spec.toml", &text);
    let child = ws
        .command(&["run", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let run = awaiting_approval(&ws, None).await;
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run awaits approval"), "{stderr}");
    let json = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(json["state"], "awaiting_approval", "{json:#}");
    let ran = ws.run(&["approve", &run]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("backfill resume"), "{ran:?}");
    let ran = ws.run(&["resume", &run]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(json["state"], "succeeded", "{json:#}");
    assert_eq!(json["rows"]["inserted"], DAYS * 5 + 5, "{json:#}");
    let events = audit_events(&ws, &run);
    assert_eq!(actions(&events, "canary.passed").len(), 1, "{events:#?}");
    assert_eq!(actions(&events, "run.approved").len(), 1);
}

#[tokio::test]
async fn bad_canary_keys_are_spec_errors() {
    let ws = Workspace::new();
    let base = r#"name = "canary_keys"
reason = "test"

[source]
url = "sqlite://src.db"
query = "SELECT id FROM t WHERE ts >= :start AND ts < :end"

[target]
url = "sqlite://dst.db"
table = "t"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-02T00:00:00Z"
partition = "1d"

[canary]
EXTRA
"#;
    let cases = [
        ("partitions = 0", "canary.partitions", "must be between 1"),
        ("seed = 3", "canary.partitions", "missing required key"),
        (
            "partitions = 2\nseed = -4",
            "canary.seed",
            "must not be negative",
        ),
        (
            "partitions = \"3\"",
            "canary.partitions",
            "expected an integer",
        ),
        (
            "partitions = 2\nrequire_approval = \"yes\"",
            "canary.require_approval",
            "expected true or false",
        ),
        (
            "partitions = 2\nseeds = 1",
            "canary.seeds",
            "did you mean `seed`",
        ),
    ];
    for (extra, field, message) in cases {
        let path = ws.write("spec.toml", &base.replace("EXTRA", extra));
        let ran = ws.run(&["check", &path, "--offline"]);
        assert_eq!(ran.code, 2, "{extra}: {ran:?}");
        assert!(ran.stderr.contains(field), "{extra}: {ran:?}");
        assert!(ran.stderr.contains(message), "{extra}: {ran:?}");
    }
}
