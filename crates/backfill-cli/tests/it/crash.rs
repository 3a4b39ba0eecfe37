//! Invariant 3: a process killed with SIGKILL at any point loses at most its batches in
//! flight; `backfill resume RUN` and `backfill run SPEC` continue the same run from its
//! checkpoints, and the target ends up row for row as an uninterrupted run leaves it: nothing
//! missing, duplicated or wrong.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    Workspace, assert_same_rows, copy_spec, exec, make_source, make_target, reference,
    replace_spec, rows, runs_json, target_rows,
};

/// When a session is killed.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after it started.
    After(Duration),
    /// Once `status` shows this many more partitions done than when it started.
    MoreDone(u64),
}

/// How a session of the binary ended.
#[derive(Debug)]
struct Session {
    args: Vec<String>,
    /// It exited on its own before the kill.
    finished: bool,
    code: Option<i32>,
    stderr: String,
}

/// Partitions done per `status --json` of the latest run (0 when there is no run yet).
fn done_partitions(ws: &Workspace) -> u64 {
    let ran = ws.run(&["status", "--json"]);
    if ran.code != 0 {
        return 0;
    }
    ran.json()["partitions"]["done"].as_u64().unwrap_or(0)
}

/// The state of the only run, if any.
fn only_run(ws: &Workspace) -> Option<(String, String)> {
    let runs = runs_json(ws);
    assert!(runs.len() <= 1, "a restart created a second run: {runs:?}");
    runs.first().map(|r| {
        (
            r["run_id"].as_str().expect("run_id").to_owned(),
            r["state"].as_str().expect("state").to_owned(),
        )
    })
}

/// Starts the binary with `args`, SIGKILLs it at `kill` unless it exits first.
fn session(ws: &Workspace, args: &[&str], kill: KillAt) -> Session {
    let mut child: Child = ws
        .command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let started = Instant::now();
    let done_at_start = done_partitions(ws);
    // A generous cap so a stuck process cannot hang the test; the kill then happens anyway.
    let cap = Duration::from_secs(120);
    let finished = loop {
        if child.try_wait().expect("try_wait").is_some() {
            break true;
        }
        let due = match kill {
            KillAt::After(d) => started.elapsed() >= d,
            KillAt::MoreDone(n) => done_partitions(ws) >= done_at_start + n,
        };
        if due || started.elapsed() >= cap {
            // SIGKILL; the process may have exited in between, which is fine.
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("wait");
    Session {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        finished,
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `spec` in `ws`, killing it at each of `kills` in turn, restarting alternately with
/// `run SPEC` and `resume RUN`, then lets it finish. Checks that every restart resumes the one
/// run and returns its id and the sessions.
fn run_with_kills(ws: &Workspace, spec: &str, kills: &[KillAt]) -> (String, Vec<Session>) {
    let mut sessions: Vec<Session> = Vec::new();
    for (i, &kill) in kills.iter().enumerate() {
        let known = only_run(ws);
        if let Some((_, state)) = &known
            && state == "succeeded"
        {
            break;
        }
        let resume_args;
        let args: Vec<&str> = match &known {
            Some((id, _)) if i % 2 == 1 => {
                resume_args = ["resume".to_owned(), id.clone()];
                resume_args.iter().map(String::as_str).collect()
            }
            _ => vec!["run", spec],
        };
        let s = session(ws, &args, kill);
        if let Some((id, _)) = &known {
            assert!(
                !s.stderr.contains("created run"),
                "a restart must resume run {id}, not create one: {s:?}"
            );
            if s.stderr.contains("partitions") {
                assert!(
                    s.stderr.contains("resuming") && s.stderr.contains(id.as_str()),
                    "{s:?}"
                );
            }
        }
        if s.finished {
            assert_eq!(
                s.code,
                Some(0),
                "a session ended on its own but failed: {s:?}"
            );
        }
        sessions.push(s);
    }
    let (run_id, state) = only_run(ws).expect("a run exists after the sessions");
    if state != "succeeded" {
        // Finish with `run SPEC` when the last restart was `resume`, and vice versa.
        let last_was_resume = sessions.last().is_some_and(|s| s.args[0] == "resume");
        let args: Vec<&str> = if last_was_resume {
            vec!["run", spec, "--json"]
        } else {
            vec!["resume", &run_id, "--json"]
        };
        let ran = ws.run(&args);
        assert_eq!(ran.code, 0, "final {args:?} failed: {ran:?}");
        assert!(
            ran.stderr.contains("resuming") && ran.stderr.contains(&run_id),
            "the final session must resume {run_id}: {}",
            ran.stderr
        );
        let report = ran.json();
        assert_eq!(report["run_id"], run_id.as_str());
        assert_eq!(report["state"], "succeeded", "{report:#}");
    }
    let (again, state) = only_run(ws).expect("run");
    assert_eq!(again, run_id);
    assert_eq!(state, "succeeded");
    (run_id, sessions)
}

/// After the crashes: one run, succeeded, every partition done exactly once in the audit
/// trail, the chain verifies, and the counters add up to the source rows exactly once.
fn check_state(
    ws: &Workspace,
    run_id: &str,
    partitions: u64,
    source_rows: u64,
    sessions: &[Session],
) {
    let verify = ws.run(&["audit", "--verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert_eq!(verify.json()["ok"], true, "{}", verify.stdout);

    let status = ws.run(&["status", run_id, "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["partitions"]["done"], partitions, "{status:#}");
    assert_eq!(status["rows"]["read"], source_rows, "{status:#}");

    let events = crate::support::audit_events(ws, run_id);
    let mut done = std::collections::BTreeMap::<String, u32>::new();
    for e in &events {
        if e["action"] == "partition.done" {
            *done
                .entry(e["partition_id"].as_str().expect("id").to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(done.len() as u64, partitions, "{done:?}");
    assert!(
        done.values().all(|&n| n == 1),
        "a partition was done twice: {done:?}"
    );
    let created = events
        .iter()
        .filter(|e| e["action"] == "run.created")
        .count();
    let succeeded = events
        .iter()
        .filter(|e| e["action"] == "run.succeeded")
        .count();
    assert_eq!((created, succeeded), (1, 1), "sessions: {sessions:#?}");
}

/// Spawns an uninterrupted run of `spec` in its own workspace (own state store).
fn spawn_clean_run(ws: &Workspace, spec: &str) -> Child {
    ws.command(&["run", spec, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clean run")
}

fn wait_clean_run(child: Child) {
    let output = child.wait_with_output().expect("wait clean run");
    assert!(
        output.status.success(),
        "uninterrupted run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["state"], "succeeded");
}

const KILLS: [KillAt; 6] = [
    KillAt::After(Duration::from_millis(300)),
    KillAt::MoreDone(3),
    KillAt::After(Duration::from_millis(800)),
    KillAt::MoreDone(10),
    KillAt::After(Duration::from_millis(1500)),
    KillAt::MoreDone(15),
];

#[tokio::test]
async fn upsert_resumes_after_repeated_sigkill_without_missing_duplicated_or_wrong_rows() {
    const ROWS: i64 = 500_000;
    const DAYS: i64 = 60;
    let ws = Workspace::new();
    let clean = Workspace::new();
    let source_path = ws.path("source.db").display().to_string();
    let source = make_source(&ws.path("source.db"), ROWS, DAYS).await;
    let target = make_target(&ws.path("target.db")).await;
    let clean_target = make_target(&clean.path("target.db")).await;
    let spec = ws.write(
        "spec.toml",
        &copy_spec(
            &source_path,
            &ws.path("target.db").display().to_string(),
            DAYS,
            "",
        ),
    );
    let clean_spec = clean.write(
        "spec.toml",
        &copy_spec(
            &source_path,
            &clean.path("target.db").display().to_string(),
            DAYS,
            "",
        ),
    );

    let clean_run = spawn_clean_run(&clean, &clean_spec);
    let (run_id, sessions) = run_with_kills(&ws, &spec, &KILLS);
    wait_clean_run(clean_run);

    check_state(&ws, &run_id, DAYS as u64, ROWS as u64, &sessions);
    let expected = reference(&source).await;
    assert_eq!(expected.len() as i64, ROWS);
    let crashed = target_rows(&target).await;
    let uninterrupted = target_rows(&clean_target).await;
    assert_same_rows(
        &uninterrupted,
        &expected,
        "uninterrupted target vs reference",
    );
    assert_same_rows(
        &crashed,
        &expected,
        "crashed-and-resumed target vs reference",
    );
    assert_same_rows(
        &crashed,
        &uninterrupted,
        "crashed-and-resumed vs uninterrupted target",
    );
}

#[tokio::test]
async fn replace_resumes_after_repeated_sigkill_without_missing_duplicated_or_wrong_rows() {
    const ROWS: i64 = 100_000;
    const DAYS: i64 = 30;
    let ws = Workspace::new();
    let clean = Workspace::new();
    let source_path = ws.path("source.db").display().to_string();
    let source = make_source(&ws.path("source.db"), ROWS, DAYS).await;
    let target = make_target(&ws.path("target.db")).await;
    let clean_target = make_target(&clean.path("target.db")).await;
    // Both targets start with rows outside the scope (kept) and stale rows inside (replaced).
    let seed = [
        "INSERT INTO events_copy VALUES (2000001, 1, 1, '2025-12-31T23:59:59Z', 'outside')",
        "INSERT INTO events_copy VALUES (2000002, 2, 2, '2026-01-31T00:00:00Z', 'outside')",
    ];
    let stale = [
        "INSERT INTO events_copy VALUES (7, 0, 0, '2026-01-01T00:00:01Z', 'STALE')",
        "INSERT INTO events_copy VALUES (1500000, 0, 0, '2026-01-15T12:00:00Z', 'stale')",
    ];
    for t in [&target, &clean_target] {
        exec(t, &seed).await;
    }
    let kept = rows(
        &target,
        "SELECT id, user_id, amount_cents, ts, note FROM events_copy ORDER BY id",
    )
    .await;
    for t in [&target, &clean_target] {
        exec(t, &stale).await;
    }
    let spec = ws.write(
        "spec.toml",
        &replace_spec(
            &source_path,
            &ws.path("target.db").display().to_string(),
            DAYS,
            "",
        ),
    );
    let clean_spec = clean.write(
        "spec.toml",
        &replace_spec(
            &source_path,
            &clean.path("target.db").display().to_string(),
            DAYS,
            "",
        ),
    );

    let clean_run = spawn_clean_run(&clean, &clean_spec);
    let (run_id, sessions) = run_with_kills(&ws, &spec, &KILLS);
    wait_clean_run(clean_run);

    check_state(&ws, &run_id, DAYS as u64, ROWS as u64, &sessions);
    let mut expected = reference(&source).await;
    expected.extend(kept);
    let crashed = target_rows(&target).await;
    let uninterrupted = target_rows(&clean_target).await;
    assert_same_rows(
        &uninterrupted,
        &expected,
        "uninterrupted target vs reference",
    );
    assert_same_rows(
        &crashed,
        &expected,
        "crashed-and-resumed target vs reference",
    );
    assert_same_rows(
        &crashed,
        &uninterrupted,
        "crashed-and-resumed vs uninterrupted target",
    );
}
