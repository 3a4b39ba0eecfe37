//! A run resumes from wherever its files are, and a changed spec is refused naming what
//! changed: a demo-like folder (a spec and its SQLite files, named by relative paths, with
//! its state store) moved elsewhere continues the same run through `resume --spec` and
//! `run`; a changed spec is refused by `run` and `resume` alike, changing nothing, with each
//! changed field's old and new value.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    Ran, Workspace, copy_spec, make_source, make_target, reference, sqlite, target_rows,
};

/// Makes `dir` like the demo's folder: `source.db` with `n` rows over 3 days, an empty
/// `target.db`, and `spec.toml` naming both by paths relative to itself, copying at `rate`
/// rows per second so a run can be interrupted half way.
async fn demo_like_folder(dir: &Path, n: i64, rate: u32) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    make_source(&dir.join("source.db"), n, 3)
        .await
        .close()
        .await;
    make_target(&dir.join("target.db")).await.close().await;
    let spec = copy_spec(
        "source.db",
        "target.db",
        3,
        &format!("rows_per_second = {rate}"),
    )
    .replacen("batch_rows = 1000", "batch_rows = 200", 1);
    assert!(spec.contains("url = \"sqlite://source.db\""), "{spec}");
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).expect("write spec");
    path
}

/// The state store kept in `dir`, as the demo keeps it.
fn state_in(dir: &Path) -> String {
    format!(
        "sqlite://{}",
        dir.join(".backfill").join("state.db").display()
    )
}

async fn target_count(target: &Path) -> i64 {
    let pool = sqlite(target).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events_copy")
        .fetch_one(&pool)
        .await
        .expect("count target");
    pool.close().await;
    n
}

/// Runs the binary with `args`, waits until `target` holds more rows than before, sends
/// SIGINT (a graceful pause) and waits for the process to end.
async fn interrupt(ws: &Workspace, args: &[&str], target: &Path) -> Ran {
    let before = target_count(target).await;
    let child = ws
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let deadline = Instant::now() + Duration::from_secs(60);
    while target_count(target).await <= before {
        assert!(
            Instant::now() < deadline,
            "no new rows within 60s: {args:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// The ids of every run in `state`, newest first.
fn run_ids(ws: &Workspace, state: &str) -> Vec<String> {
    let runs = ws.run(&["--state", state, "--json", "runs"]);
    assert_eq!(runs.code, 0, "{runs:#?}");
    runs.json()
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_moved_folder_continues_the_same_run_through_resume_and_run() {
    let ws = Workspace::new();
    let old = ws.path("demo");
    let old_spec = demo_like_folder(&old, 20_000, 4_000).await;
    let paused = interrupt(
        &ws,
        &[
            "--state",
            &state_in(&old),
            "run",
            &old_spec.display().to_string(),
        ],
        &old.join("target.db"),
    )
    .await;
    assert_eq!(paused.code, 1, "{paused:#?}");
    let [id] = run_ids(&ws, &state_in(&old)).try_into().expect("one run");

    // The whole folder moves, state store included.
    let new = ws.path("elsewhere").join("demo-moved");
    std::fs::create_dir_all(new.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&old, &new).expect("move the folder");
    let state = state_in(&new);
    let spec = new.join("spec.toml").display().to_string();

    // The spec file the run recorded is gone: say so, and how to go on.
    let lost = ws.run(&["--state", &state, "resume", &id]);
    assert_eq!(lost.code, 2, "{lost:#?}");
    assert!(
        lost.stderr.contains("no longer there") && lost.stderr.contains("--spec FILE"),
        "{}",
        lost.stderr
    );

    // From the new place, `resume --spec` continues the same run ...
    let resumed = interrupt(
        &ws,
        &["--state", &state, "resume", &id, "--spec", &spec],
        &new.join("target.db"),
    )
    .await;
    assert_eq!(resumed.code, 1, "{resumed:#?}");
    assert!(
        resumed.stderr.contains(&format!("resuming run {id}")),
        "{}",
        resumed.stderr
    );

    // ... and so does `run`, with other limits (not part of the plan), to the end.
    let faster = std::fs::read_to_string(&spec).expect("read spec").replacen(
        "rows_per_second = 4000",
        "rows_per_second = 1000000",
        1,
    );
    std::fs::write(&spec, faster).expect("write spec");
    let finished = ws.run(&["--state", &state, "run", &spec]);
    assert_eq!(finished.code, 0, "{finished:#?}");
    assert!(
        finished
            .stderr
            .contains(&format!("resuming unfinished run {id}")),
        "{}",
        finished.stderr
    );
    assert_eq!(run_ids(&ws, &state), [id]);
    let source = sqlite(&new.join("source.db")).await;
    let target = sqlite(&new.join("target.db")).await;
    assert_eq!(target_rows(&target).await, reference(&source).await);
}

#[tokio::test]
async fn a_changed_spec_is_refused_naming_each_field_and_nothing_changes() {
    let ws = Workspace::new();
    let dir = ws.path("demo");
    let spec_path = demo_like_folder(&dir, 20_000, 4_000).await;
    let spec = spec_path.display().to_string();
    let state = state_in(&dir);
    let paused = interrupt(
        &ws,
        &["--state", &state, "run", &spec],
        &dir.join("target.db"),
    )
    .await;
    assert_eq!(paused.code, 1, "{paused:#?}");
    let [id] = run_ids(&ws, &state).try_into().expect("one run");
    let audit_len = || {
        let audit = ws.run(&["--state", &state, "--json", "audit", &id]);
        audit.json().as_array().expect("events").len()
    };
    let events = audit_len();

    let original = std::fs::read_to_string(&spec_path).expect("read spec");
    let changed = original
        .replacen(
            "end = \"2026-01-04T00:00:00Z\"",
            "end = \"2026-01-05T00:00:00Z\"",
            1,
        )
        .replacen("table = \"events_copy\"", "table = \"events_copy2\"", 1);
    assert_ne!(changed, original);
    std::fs::write(&spec_path, &changed).expect("write spec");
    let lines = [
        r#"    target.table: "events_copy" -> "events_copy2""#,
        r#"    scope.end: "2026-01-04T00:00:00Z" -> "2026-01-05T00:00:00Z""#,
    ];
    for args in [vec!["run", spec.as_str()], vec!["resume", id.as_str()]] {
        let mut all = vec!["--state", state.as_str()];
        all.extend(args);
        let refused = ws.run(&all);
        assert_eq!(refused.code, 2, "{refused:#?}");
        let stderr = &refused.stderr;
        assert!(stderr.contains("2 fields of"), "{stderr}");
        for line in lines {
            assert!(
                stderr.contains(&format!("{line}\n")),
                "{line} in:\n{stderr}"
            );
        }
        assert!(
            stderr.contains("restore the old values")
                && stderr.contains(&format!("`backfill run --new {spec}`"))
                && stderr.contains("stays in the old target"),
            "{stderr}"
        );
    }
    // Refusing wrote nothing: no new audit event, the run still paused.
    assert_eq!(audit_len(), events);
    let st = ws.run(&["--state", &state, "--json", "status", &id]).json();
    assert_eq!(st["state"], "paused", "{st:#}");

    // A run created before its normalised spec was stored: only the hashes can be named.
    let db = sqlite(&dir.join(".backfill").join("state.db")).await;
    sqlx::query("UPDATE runs SET normalized_spec = NULL")
        .execute(&db)
        .await
        .expect("forget the normalised spec");
    db.close().await;
    let old = ws.run(&["--state", &state, "run", &spec]);
    assert_eq!(old.code, 2, "{old:#?}");
    assert!(
        old.stderr.contains(" then, ") && old.stderr.contains("cannot be named"),
        "{}",
        old.stderr
    );

    // The spec as it was continues the run to the end.
    std::fs::write(&spec_path, &original).expect("write spec");
    let finished = ws.run(&["--state", &state, "resume", &id]);
    assert_eq!(finished.code, 0, "{finished:#?}");
    assert_eq!(run_ids(&ws, &state), [id]);
}
