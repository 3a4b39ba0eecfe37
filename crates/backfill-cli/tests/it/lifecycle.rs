//! The life of a run: Ctrl-C pauses gracefully and `run` resumes the same run; `--new` forces
//! another; `status`, `runs` and `audit` report it; the audit chain detects tampering.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    Ran, Workspace, copy_spec, exec, make_source, make_target, reference, sqlite, target_rows,
};

const SPEC: &str = "spec.toml";

/// Source of `n` rows over 3 days (by day) and an empty target; returns the spec text.
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

/// The run id in a `created run ID …` or `resuming … run ID …` note.
fn run_id_in(stderr: &str) -> String {
    for line in stderr.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "run"
                && let Some(id) = words
                    .next()
                    .filter(|id| id.len() == 36 && id.matches('-').count() == 4)
            {
                return id.to_owned();
            }
        }
    }
    panic!("no run id in stderr:\n{stderr}")
}

/// Starts `backfill run SPEC`, waits until rows reach the target (so the run is executing and
/// its Ctrl-C handler installed), sends SIGINT and waits for the process to end.
async fn run_and_interrupt(ws: &Workspace) -> Ran {
    let child = ws
        .command(&["run", SPEC])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let target = sqlite(&ws.path("target.db")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events_copy")
            .fetch_one(&target)
            .await
            .expect("count target");
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run wrote nothing within 60s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    target.close().await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A spec that takes several seconds: `n` rows in batches of 500 at `rate` rows/s.
async fn slow_setup(ws: &Workspace, n: i64, rate: u32) -> String {
    let spec = setup(ws, n, &format!("rows_per_second = {rate}")).await;
    assert!(spec.contains("batch_rows = 1000"));
    let spec = spec.replacen("batch_rows = 1000", "batch_rows = 500", 1);
    ws.write(SPEC, &spec);
    spec
}

#[tokio::test]
async fn ctrl_c_pauses_and_run_resumes_the_same_run() {
    let ws = Workspace::new();
    slow_setup(&ws, 60_000, 10_000).await;
    let paused = run_and_interrupt(&ws).await;
    assert_eq!(
        paused.code, 1,
        "a paused run is unfinished work: {paused:#?}"
    );
    let stderr = paused.stderr.to_lowercase();
    assert!(stderr.contains("paused"), "{}", paused.stderr);
    assert!(stderr.contains("resume"), "{}", paused.stderr);
    let id = run_id_in(&paused.stderr);

    let st = ws.run(&["--json", "status"]);
    assert_eq!(st.code, 0, "{st:#?}");
    let st = st.json();
    assert_eq!(st["run_id"], id.as_str());
    assert_eq!(st["state"], "paused", "{st:#}");
    assert_eq!(
        st["partitions"]["running"], 0,
        "no partition left running: {st:#}"
    );
    assert_eq!(st["partitions"]["failed"], 0, "{st:#}");
    assert!(
        st["partitions"]["done"].as_u64().is_some_and(|d| d < 3),
        "{st:#}"
    );
    assert!(
        st["rows"]["written"]
            .as_u64()
            .is_some_and(|w| w > 0 && w < 60_000),
        "{st:#}"
    );
    assert!(
        st["failing"].as_array().is_some_and(Vec::is_empty),
        "a pause is not a failure: {st:#}"
    );

    let resumed = ws.run(&["run", SPEC]);
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    assert!(resumed.stderr.contains("resuming"), "{}", resumed.stderr);
    assert_eq!(run_id_in(&resumed.stderr), id);
    let runs = ws.run(&["--json", "runs"]).json();
    let runs = runs.as_array().expect("runs array");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["run_id"], id.as_str());
    assert_eq!(runs[0]["state"], "succeeded");

    let st = ws.run(&["--json", "status"]).json();
    assert_eq!(st["state"], "succeeded", "{st:#}");
    assert_eq!(st["partitions"]["done"], 3, "{st:#}");
    assert_eq!(
        st["rows"]["read"].as_u64(),
        st["rows"]["written"].as_u64(),
        "{st:#}"
    );

    let source = sqlite(&ws.path("source.db")).await;
    let target = sqlite(&ws.path("target.db")).await;
    assert_eq!(target_rows(&target).await, reference(&source).await);

    let verify = ws.run(&["audit", "--verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");
    let audit = ws.run(&["--json", "audit", &id]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["run.created", "run.paused", "run.succeeded"] {
        assert!(actions.contains(&a), "{a} missing in {actions:?}");
    }
}

#[tokio::test]
async fn a_graceful_pause_is_not_counted_as_an_error() {
    let ws = Workspace::new();
    slow_setup(&ws, 60_000, 10_000).await;
    let paused = run_and_interrupt(&ws).await;
    assert_eq!(paused.code, 1, "{paused:#?}");
    let st = ws.run(&["--json", "status"]).json();
    assert_eq!(st["state"], "paused", "{st:#}");
    assert!(
        st["failing"].as_array().is_some_and(Vec::is_empty),
        "{st:#}"
    );
    // Nothing failed: an interrupted attempt is not a failed attempt.
    assert_eq!(st["errors_per_1000_rows"], 0.0, "{st:#}");
}

#[tokio::test]
async fn new_forces_a_second_run() {
    let ws = Workspace::new();
    make_source(&ws.path("source.db"), 600, 3)
        .await
        .close()
        .await;
    // The target file exists but its table does not yet: the first run stops before writing.
    let target = sqlite(&ws.path("target.db")).await;
    let spec = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        3,
        "",
    );
    ws.write(SPEC, &spec);
    let first = ws.run(&["run", SPEC]);
    assert_eq!(first.code, 1, "{first:#?}");
    let first_id = run_id_in(&first.stderr);
    exec(
        &target,
        &["CREATE TABLE events_copy (id INTEGER PRIMARY KEY, user_id INTEGER, amount_cents INTEGER, ts TEXT NOT NULL, note TEXT)"],
    )
    .await;

    let second = ws.run(&["run", "--new", SPEC]);
    assert_eq!(second.code, 0, "{second:#?}");
    assert!(second.stderr.contains("created run"), "{}", second.stderr);
    let second_id = run_id_in(&second.stderr);
    assert_ne!(first_id, second_id);

    let runs = ws.run(&["--json", "runs"]).json();
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(runs[0]["run_id"], second_id.as_str(), "newest first");
    assert_eq!(runs[0]["state"], "succeeded");
    assert_eq!(runs[1]["run_id"], first_id.as_str());
    assert_ne!(runs[1]["state"], "succeeded");

    let source = sqlite(&ws.path("source.db")).await;
    assert_eq!(target_rows(&target).await, reference(&source).await);

    // Without --new, the unfinished first run is resumed rather than duplicated.
    let again = ws.run(&["run", SPEC]);
    assert_eq!(again.code, 0, "{again:#?}");
    assert!(again.stderr.contains("resuming"), "{}", again.stderr);
    assert_eq!(run_id_in(&again.stderr), first_id);
    assert_eq!(
        ws.run(&["--json", "runs"]).json().as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(target_rows(&target).await, reference(&source).await);
}

#[tokio::test]
async fn status_and_runs_report_the_latest_run() {
    let ws = Workspace::new();
    let spec = setup(&ws, 2000, "").await;
    ws.write(SPEC, &spec);
    let first = ws.run(&["run", SPEC]);
    assert_eq!(first.code, 0, "{first:#?}");
    let first_id = run_id_in(&first.stderr);

    let text = ws.run(&["status"]);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(text.stdout.contains(&first_id), "{}", text.stdout);
    assert!(text.stdout.contains("succeeded"), "{}", text.stdout);
    assert!(text.stdout.contains("integration test"), "{}", text.stdout);

    let st = ws.run(&["--json", "status"]);
    assert_eq!(st.code, 0, "{st:#?}");
    let st = st.json();
    assert_eq!(st["run_id"], first_id.as_str());
    assert_eq!(st["spec"], "copy_events");
    assert_eq!(st["state"], "succeeded");
    assert_eq!(st["reason"], "integration test");
    assert_eq!(st["partitions"]["done"], 3, "{st:#}");
    for s in ["pending", "running", "failed"] {
        assert_eq!(st["partitions"][s], 0, "{s}: {st:#}");
    }
    assert_eq!(st["partitions_total"], 3);
    assert_eq!(st["rows"]["read"], 2000, "{st:#}");
    assert_eq!(st["rows"]["written"], 2000, "{st:#}");
    assert_eq!(st["rows"]["inserted"], 2000, "{st:#}");
    assert_eq!(st["success_rate"], 1.0);
    assert!(
        st["rows_per_second"].as_f64().is_some_and(|r| r >= 0.0),
        "{st:#}"
    );
    assert_eq!(st["errors_per_1000_rows"], 0.0);
    assert_eq!(st["retries_per_partition"], 0.0);
    assert!(st["failing"].as_array().is_some_and(Vec::is_empty));

    // A second run of the same spec: upserts change nothing; `status` shows the newest.
    let second = ws.run(&["--json", "run", "--new", SPEC]);
    assert_eq!(second.code, 0, "{second:#?}");
    let summary = second.json();
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["rows"]["unchanged"], 2000, "{summary:#}");
    let second_id = summary["run_id"].as_str().expect("run_id").to_owned();
    assert_ne!(second_id, first_id);
    let latest = ws.run(&["--json", "status"]).json();
    assert_eq!(latest["run_id"], second_id.as_str());
    let older = ws.run(&["--json", "status", &first_id]).json();
    assert_eq!(older["run_id"], first_id.as_str());

    let runs = ws.run(&["--json", "runs"]);
    assert_eq!(runs.code, 0, "{runs:#?}");
    let runs = runs.json();
    let list = runs.as_array().expect("runs");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["run_id"], second_id.as_str());
    assert_eq!(list[1]["run_id"], first_id.as_str());
    for r in list {
        assert_eq!(r["spec"], "copy_events");
        assert_eq!(r["state"], "succeeded");
        assert_eq!(r["partitions"], 3);
        assert!(r["owner"].as_str().is_some_and(|o| !o.is_empty()));
    }
    let limited = ws.run(&["--json", "runs", "--limit", "1"]).json();
    assert_eq!(limited.as_array().map(Vec::len), Some(1));
    let text = ws.run(&["runs"]);
    assert!(
        text.stdout.contains(&first_id) && text.stdout.contains(&second_id),
        "{}",
        text.stdout
    );
}

/// A finished small run; returns the workspace.
async fn finished_run() -> Workspace {
    let ws = Workspace::new();
    let spec = setup(&ws, 300, "").await;
    ws.write(SPEC, &spec);
    let ran = ws.run(&["run", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    ws
}

#[tokio::test]
async fn audit_verify_detects_an_edited_event() {
    let ws = finished_run().await;
    let ok = ws.run(&["audit", "--verify"]);
    assert_eq!(ok.code, 0, "{ok:#?}");
    assert!(ok.stdout.contains("ok"), "{}", ok.stdout);
    let events = ws.run(&["--json", "audit"]).json();
    let events = events.as_array().expect("events");
    assert!(events.len() >= 5, "{events:#?}");
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());

    let state = sqlite(&ws.path("state.db")).await;
    exec(
        &state,
        &["UPDATE audit_events SET detail = '{\"reason\":\"forged\"}' WHERE seq = 2"],
    )
    .await;
    state.close().await;

    let broken = ws.run(&["audit", "--verify"]);
    assert_eq!(broken.code, 1, "{broken:#?}");
    assert!(
        broken.stdout.contains("BROKEN at event 2"),
        "{}",
        broken.stdout
    );
    let json = ws.run(&["--json", "audit", "--verify"]);
    assert_eq!(json.code, 1, "{json:#?}");
    let v = json.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 2);
    assert!(
        v["problem"].as_str().is_some_and(|p| !p.is_empty()),
        "{v:#}"
    );
}

#[tokio::test]
async fn audit_verify_detects_a_removed_event() {
    let ws = finished_run().await;
    let state = sqlite(&ws.path("state.db")).await;
    exec(&state, &["DELETE FROM audit_events WHERE seq = 3"]).await;
    state.close().await;
    let broken = ws.run(&["--json", "audit", "--verify"]);
    assert_eq!(broken.code, 1, "{broken:#?}");
    let v = broken.json();
    assert_eq!(v["ok"], false);
    assert!(
        v["first_bad_seq"]
            .as_i64()
            .is_some_and(|s| s == 3 || s == 4),
        "{v:#}"
    );
}

/// `plan` (without creating the store), the run summary and `status` state the run's
/// guarantee: exactly once only for upserts into the state store's own database.
#[tokio::test]
async fn plan_run_and_status_state_the_guarantee() {
    let ws = Workspace::new();
    let spec = setup(&ws, 300, "").await;
    ws.write(SPEC, &spec);
    let in_target = format!("sqlite://{}", ws.path("target.db").display());

    let plan = ws.run(&["--json", "plan", SPEC, "--no-estimate"]);
    assert_eq!(plan.code, 0, "{plan:#?}");
    assert_eq!(plan.json()["guarantee"], "idempotent", "{plan:#?}");
    assert!(
        !ws.path("state.db").exists(),
        "plan must not create the store"
    );
    let plan = ws.run(&["--state", &in_target, "plan", SPEC, "--no-estimate"]);
    assert!(
        plan.stdout.contains("guarantee:  exactly once"),
        "{}",
        plan.stdout
    );

    let ran = ws.run(&["--state", &in_target, "--json", "run", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert_eq!(ran.json()["guarantee"], "exactly_once", "{ran:#?}");
    let status = ws.run(&["--state", &in_target, "--json", "status"]);
    assert_eq!(status.json()["guarantee"], "exactly_once", "{status:#?}");
    let status = ws.run(&["--state", &in_target, "status"]);
    assert!(
        status.stdout.contains("guarantee:  exactly once"),
        "{}",
        status.stdout
    );

    // `replace` replays an unfinished partition after a crash, even in the store's database.
    let replace = spec.replacen(
        "key = [\"id\"]\n",
        "key = [\"id\"]\nmode = \"replace\"\nwindow_column = \"ts\"\n",
        1,
    );
    ws.write(SPEC, &replace);
    let plan = ws.run(&[
        "--state",
        &in_target,
        "--json",
        "plan",
        SPEC,
        "--no-estimate",
    ]);
    assert_eq!(plan.json()["guarantee"], "idempotent", "{plan:#?}");
    let ran = ws.run(&["--json", "run", SPEC]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert_eq!(ran.json()["guarantee"], "idempotent", "{ran:#?}");
    let status = ws.run(&["--json", "status"]).json();
    assert_eq!(status["guarantee"], "idempotent", "{status:#}");
}
