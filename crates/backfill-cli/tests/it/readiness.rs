//! Source readiness (`source.ready`) through the real binary, on SQLite and PostgreSQL: a
//! partition whose source is not loaded waits in `waiting_source` and runs once another
//! connection loads it; a source never loaded fails the partition with `source_not_ready`;
//! `plan` lists the partitions not ready; a broken ready query names `source.ready`; bad keys
//! are spec errors.

use std::process::Stdio;
use std::time::{Duration, Instant};

use backfill_testkit::servers::{Db, System};
use serde_json::Value as J;

use crate::support::{Workspace, audit_events, runs_json};

/// Days of the fixture (one partition each), 5 rows a day.
const DAYS: i64 = 3;
const PER_DAY: i64 = 5;

fn ts(system: System, day: i64, minute: i64) -> String {
    match system {
        System::Sqlite => format!("2026-01-{day:02}T00:{minute:02}:00Z"),
        _ => format!("2026-01-{day:02} 00:{minute:02}:00"),
    }
}

fn ts_type(system: System) -> &'static str {
    match system {
        System::Sqlite => "TEXT",
        System::Postgres => "timestamptz",
        System::MySql => "DATETIME(6)",
    }
}

/// Source `src` (all days' rows) and `loads` (the days loaded upstream: `loaded` of them),
/// target `dst` empty; `None` when the server is not there.
async fn fixture(system: System, ws: &Workspace, loaded: i64) -> Option<(Db, Db)> {
    let source = Db::open(system, ws.dir.path(), "bf_ready", "src").await?;
    let target = Db::open(system, ws.dir.path(), "bf_ready", "dst").await?;
    let t = ts_type(system);
    let (src, loads) = (source.table("src"), source.table("loads"));
    source
        .exec(&format!(
            "CREATE TABLE {src} (id BIGINT PRIMARY KEY, amount BIGINT, ts {t} NOT NULL)"
        ))
        .await;
    source
        .exec(&format!("CREATE TABLE {loads} (day {t} NOT NULL)"))
        .await;
    let rows: Vec<String> = (0..DAYS * PER_DAY)
        .map(|i| {
            let (day, minute) = (i / PER_DAY + 1, i % PER_DAY);
            format!("({}, {}, '{}')", i + 1, i * 10, ts(system, day, minute))
        })
        .collect();
    source
        .exec(&format!("INSERT INTO {src} VALUES {}", rows.join(", ")))
        .await;
    for day in 1..=loaded {
        load_day(system, &source, day).await;
    }
    let dst = target.table("dst");
    target
        .exec(&format!(
            "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, amount BIGINT, ts {t} NOT NULL)"
        ))
        .await;
    Some((source, target))
}

/// Another connection marks `day` loaded upstream.
async fn load_day(system: System, source: &Db, day: i64) {
    let loads = source.table("loads");
    source
        .exec(&format!(
            "INSERT INTO {loads} VALUES ('{}')",
            ts(system, day, 30)
        ))
        .await;
}

fn spec(source: &Db, target: &Db, ready: &str) -> String {
    let (src, loads) = (source.table("src"), source.table("loads"));
    format!(
        r#"name = "ready_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount, ts FROM {src} WHERE ts >= :start AND ts < :end"
ready = "SELECT count(*) FROM {loads} WHERE day >= :start AND day < :end"
{ready}

[target]
url = "{}"
table = "{}"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-04T00:00:00Z"
partition = "1d"
"#,
        source.url(),
        target.url(),
        target.table("dst"),
    )
}

fn only_run(ws: &Workspace) -> String {
    let runs = runs_json(ws);
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0]["run_id"].as_str().unwrap_or_default().to_owned()
}

fn actions<'a>(events: &'a [J], action: &str) -> Vec<&'a J> {
    events.iter().filter(|e| e["action"] == action).collect()
}

async fn waits_then_runs_when_loaded(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, DAYS - 1).await else {
        return;
    };
    let text = spec(
        &source,
        &target,
        "ready_timeout = \"2m\"\nready_interval = \"100ms\"",
    );
    let path = ws.write("spec.toml", &text);
    let mut child = ws
        .command(&["run", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backfill");
    // The last day waits: status shows it in `waiting_source`, the others done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ws.run(&["status", "--json"]);
        if status.code == 0 {
            let json = status.json();
            if json["partitions"]["waiting_source"] == 1 && json["partitions"]["done"] == 2 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never waiting: {status:?}");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "run ended early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Re-checks write nothing; another connection loads the day.
    tokio::time::sleep(Duration::from_millis(500)).await;
    load_day(system, &source, DAYS).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        assert!(Instant::now() < deadline, "run never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, Some(0));
    let run = only_run(&ws);
    let events = audit_events(&ws, &run);
    let waiting = actions(&events, "partition.waiting_source");
    let ready = actions(&events, "partition.source_ready");
    assert_eq!(
        waiting.len(),
        1,
        "one event when it starts waiting: {events:#?}"
    );
    assert_eq!(ready.len(), 1, "one event when ready: {events:#?}");
    assert_eq!(waiting[0]["partition_id"], ready[0]["partition_id"]);
    assert!(
        ready[0]["detail"]["checks"].as_u64().unwrap_or(0) >= 2,
        "{ready:?}"
    );
    let status = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["rows"]["inserted"], DAYS * PER_DAY, "{status:#}");
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn partition_waits_for_its_source_then_runs_sqlite() {
    waits_then_runs_when_loaded(System::Sqlite).await;
}

#[tokio::test]
async fn partition_waits_for_its_source_then_runs_postgres() {
    waits_then_runs_when_loaded(System::Postgres).await;
}

async fn times_out(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, DAYS - 1).await else {
        return;
    };
    let text = spec(
        &source,
        &target,
        "ready_timeout = \"1s\"\nready_interval = \"100ms\"",
    );
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.contains("source not ready"), "{ran:?}");
    let run = only_run(&ws);
    let status = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(status["state"], "failed", "{status:#}");
    assert_eq!(status["partitions"]["done"], 2, "{status:#}");
    assert_eq!(status["partitions"]["failed"], 1, "{status:#}");
    let events = audit_events(&ws, &run);
    let failed = actions(&events, "partition.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["detail"]["reason"], "source_not_ready");
    assert_eq!(actions(&events, "partition.waiting_source").len(), 1);
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn source_never_ready_fails_with_source_not_ready_sqlite() {
    times_out(System::Sqlite).await;
}

#[tokio::test]
async fn source_never_ready_fails_with_source_not_ready_postgres() {
    times_out(System::Postgres).await;
}

async fn plan_lists_not_ready(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, 1).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let ran = ws.run(&["plan", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let ready = &ran.json()["source_ready"];
    assert_eq!(ready["checked"], DAYS, "{ready:#}");
    assert_eq!(ready["not_ready"], 2, "{ready:#}");
    let indexes: Vec<&J> = ready["not_ready_partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["index"])
        .collect();
    assert_eq!(indexes, [&J::from(1), &J::from(2)], "{ready:#}");
    let ran = ws.run(&["plan", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.contains("NOT READY for 2 partition(s)"),
        "{ran:?}"
    );
    // `check` runs the ready query for the first partition: ready here, so nothing to say;
    // when it is not (no load recorded at all), a warning: the spec itself is right.
    let ran = ws.run(&["check", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(!ran.stdout.contains("source.ready"), "{ran:?}");
    let loads = source.table("loads");
    let never = spec(&source, &target, "").replace(
        &format!("FROM {loads} WHERE"),
        &format!("FROM {loads} WHERE 1 = 0 AND"),
    );
    let ran = ws.run(&["check", &ws.write("never.toml", &never)]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        said.contains("source.ready") && said.contains("not ready for the first partition"),
        "{ran:?}"
    );
    // Nothing ran, nothing was written.
    assert!(runs_json(&ws).is_empty());
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn plan_lists_partitions_not_ready_sqlite() {
    plan_lists_not_ready(System::Sqlite).await;
}

#[tokio::test]
async fn plan_lists_partitions_not_ready_postgres() {
    plan_lists_not_ready(System::Postgres).await;
}

#[tokio::test]
async fn plan_lists_partitions_not_ready_mysql() {
    plan_lists_not_ready(System::MySql).await;
}

/// Ctrl-C while a partition waits for its source: the wait ends at once, the partition is
/// back to `pending` (audited), the run is paused, and `resume` waits again and finishes once
/// the source is loaded.
#[tokio::test]
async fn ctrl_c_while_waiting_leaves_the_partition_pending() {
    let system = System::Sqlite;
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, DAYS - 1).await else {
        return;
    };
    let text = spec(
        &source,
        &target,
        "ready_timeout = \"2m\"\nready_interval = \"100ms\"",
    );
    let path = ws.write("spec.toml", &text);
    let child = ws
        .command(&["run", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ws.run(&["status", "--json"]);
        if status.code == 0 && status.json()["partitions"]["waiting_source"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never waiting: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let run = only_run(&ws);
    let status = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(status["state"], "paused", "{status:#}");
    assert_eq!(status["partitions"]["pending"], 1, "{status:#}");
    assert_eq!(status["partitions"]["waiting_source"], 0, "{status:#}");
    let events = audit_events(&ws, &run);
    let interrupted = actions(&events, "partition.interrupted");
    assert_eq!(interrupted.len(), 1, "{events:#?}");
    load_day(system, &source, DAYS).await;
    let ran = ws.run(&["resume", &run]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let status = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["rows"]["inserted"], DAYS * PER_DAY, "{status:#}");
}

async fn broken_ready_query(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws, DAYS).await else {
        return;
    };
    let loads = source.table("loads");
    let text = spec(&source, &target, "").replace(
        &format!("SELECT count(*) FROM {loads} WHERE"),
        &format!("SELECT count(*) FROM {loads}_missing WHERE"),
    );
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["plan", &path]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("source.ready"), "{ran:?}");
    assert!(ran.stderr.contains("loads_missing"), "{ran:?}");
    // `check` runs the ready query too, and names it.
    let ran = ws.run(&["check", &path]);
    assert_ne!(ran.code, 0, "{ran:?}");
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        said.contains("source.ready") && said.contains("loads_missing"),
        "{ran:?}"
    );
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.contains("`source.ready` failed"), "{ran:?}");
    let run = only_run(&ws);
    let status = ws.run(&["status", &run, "--json"]).json();
    assert_eq!(status["partitions"]["failed"], DAYS, "{status:#}");
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn ready_query_error_names_source_ready_sqlite() {
    broken_ready_query(System::Sqlite).await;
}

#[tokio::test]
async fn ready_query_error_names_source_ready_postgres() {
    broken_ready_query(System::Postgres).await;
}

#[tokio::test]
async fn bad_ready_keys_are_spec_errors() {
    let ws = Workspace::new();
    let base = r#"name = "ready_keys"
reason = "test"

[source]
url = "sqlite://src.db"
query = "SELECT id FROM t WHERE ts >= :start AND ts < :end"
EXTRA

[target]
url = "sqlite://dst.db"
table = "t"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-02T00:00:00Z"
partition = "1d"
"#;
    let cases = [
        (
            "ready_timeout = \"1h\"",
            "source.ready_timeout",
            "needs `source.ready`",
        ),
        (
            "ready = \"SELECT 1 WHERE :day > 0\"",
            "source.ready",
            "unknown parameter `:day`",
        ),
        ("ready = \"  \"", "source.ready", "the ready query is empty"),
        (
            "ready = \"SELECT 1\"\nready_interval = \"0s\"",
            "source.ready_interval",
            "must be positive",
        ),
        (
            "ready = \"SELECT 1\"\nready_timeout = \"soon\"",
            "source.ready_timeout",
            "invalid duration",
        ),
        ("ready = 1", "source.ready", "expected a string"),
        (
            "readyy = \"SELECT 1\"",
            "source.readyy",
            "did you mean `ready`",
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
