//! Live controls from another terminal: while one `backfill run SPEC` process executes a run,
//! other processes of the binary pause, resume, cancel and throttle it through the state
//! store, and the run's own holds (budget spent, circuit breaker open) wait for `resume`.
//!
//! Every test spawns the run as a real child process (killed if the test fails), steers it
//! with further invocations, and compares the target with the source row by row at the end.
//! Runs are slowed with `rows_per_second` so there is time to act mid-run; each test has its
//! own temporary folder (and, for the PostgreSQL test, its own schema), so they run in
//! parallel. Measured latencies are printed (`--nocapture` shows them).

#![allow(clippy::print_stderr)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use backfill_testkit::PgSchema;
use sqlx::{Row, SqlitePool};

use crate::support::{
    Ran, Workspace, assert_same_rows, audit_events, copy_spec, make_source, make_target, reference,
    runs_json, target_rows,
};

/// A `backfill` child process, killed when dropped (a failing test leaves nothing behind).
struct Proc {
    child: Child,
    stderr: PathBuf,
    code: Option<i32>,
}

impl Proc {
    /// Starts the binary with `args` in `ws`; stdout and stderr go to files of the workspace.
    fn spawn(ws: &Workspace, args: &[&str], name: &str) -> Proc {
        let stderr = ws.path(&format!("{name}.stderr"));
        let child = ws
            .command(args)
            .stdin(Stdio::null())
            .stdout(File::create(ws.path(&format!("{name}.stdout"))).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn backfill");
        Proc {
            child,
            stderr,
            code: None,
        }
    }

    fn alive(&mut self) -> bool {
        if self.code.is_some() {
            return false;
        }
        match self.child.try_wait().expect("try_wait") {
            Some(status) => {
                self.code = Some(status.code().unwrap_or(-1));
                false
            }
            None => true,
        }
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        while self.alive() {
            assert!(
                Instant::now() < deadline,
                "the run process did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.code.expect("exit code")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.code.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one run of the workspace, once the run process has created it.
fn the_run(ws: &Workspace, run: &mut Proc) -> String {
    let mut id = None;
    wait_until(
        "the run process creates its run",
        Duration::from_secs(15),
        || {
            assert!(
                run.alive(),
                "the run process exited early:\n{}",
                run.stderr()
            );
            id = runs_json(ws)
                .first()
                .and_then(|r| r["run_id"].as_str().map(str::to_owned));
            id.is_some()
        },
    );
    id.expect("run id")
}

fn status(ws: &Workspace, run_id: &str) -> serde_json::Value {
    let ran = ws.run(&["status", run_id, "--json"]);
    assert_eq!(ran.code, 0, "status failed: {ran:?}");
    ran.json()
}

/// The actions of the run's audit events, in order.
fn actions(ws: &Workspace, run_id: &str) -> Vec<String> {
    audit_events(ws, run_id)
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn count(target: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events_copy")
        .fetch_one(target)
        .await
        .expect("count target")
}

/// Runs the binary, timing it.
fn timed(ws: &Workspace, args: &[&str]) -> (Ran, Duration) {
    let started = Instant::now();
    let ran = ws.run(args);
    (ran, started.elapsed())
}

/// A SQLite source of `rows` rows over `days` days, an empty target, and a spec copying one
/// into the other whose `[limits]` are `limits` (replacing `copy_spec`'s concurrency and
/// batch size).
struct Fixture {
    ws: Workspace,
    source: SqlitePool,
    target: SqlitePool,
    spec: String,
}

async fn fixture(rows: i64, days: i64, limits: &str) -> Fixture {
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), rows, days).await;
    let target = make_target(&ws.path("target.db")).await;
    let text = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        days,
        "",
    );
    let with_limits = text.replacen("concurrency = 4\nbatch_rows = 1000\n", limits, 1);
    assert_ne!(
        text, with_limits,
        "copy_spec changed: cannot set the limits"
    );
    let spec = ws.write("spec.toml", &with_limits);
    Fixture {
        ws,
        source,
        target,
        spec,
    }
}

impl Fixture {
    fn start(&self) -> (Proc, String) {
        let mut run = Proc::spawn(&self.ws, &["run", &self.spec], "run");
        let id = self.ws_run_id(&mut run);
        (run, id)
    }

    fn ws_run_id(&self, run: &mut Proc) -> String {
        the_run(&self.ws, run)
    }

    /// Waits until the target holds at least `rows` rows (the run is well under way).
    async fn until_rows(&self, rows: i64, run: &mut Proc) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while count(&self.target).await < rows {
            assert!(run.alive(), "the run ended early:\n{}", run.stderr());
            assert!(
                Instant::now() < deadline,
                "no {rows} rows in the target in 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn assert_target_is_source(&self) {
        let expected = reference(&self.source).await;
        assert_same_rows(
            &target_rows(&self.target).await,
            &expected,
            "target vs source",
        );
    }
}

#[tokio::test]
async fn pause_and_resume_from_another_process() {
    // 3,000 rows at 375 rows/s: about 8 s of work.
    let f = fixture(
        3_000,
        3,
        "concurrency = 2\nbatch_rows = 50\nrows_per_second = 375\n",
    )
    .await;
    let (mut run, id) = f.start();
    f.until_rows(300, &mut run).await;

    let (paused, took) = timed(&f.ws, &["pause", &id, "--reason", "test pause", "--json"]);
    eprintln!("pause returned after {took:?}");
    assert_eq!(paused.code, 0, "{paused:?}");
    assert!(took < Duration::from_secs(5), "pause took {took:?}");
    let report = paused.json();
    assert_eq!(report["state"], "paused", "{report:#}");
    assert_eq!(report["process_running"], true, "{report:#}");

    let st = status(&f.ws, &id);
    assert_eq!(st["state"], "paused", "{st:#}");
    assert_eq!(st["pause_reason"], "user", "{st:#}");
    assert_eq!(st["control"]["process_running"], true, "{st:#}");
    let before = count(&f.target).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = count(&f.target).await;
    assert_eq!(before, after, "rows were written while paused");
    assert!(
        before < 3_000,
        "the run finished before the pause: {before}"
    );
    assert!(
        run.alive(),
        "the run process exited while paused:\n{}",
        run.stderr()
    );

    let (resumed, took) = timed(&f.ws, &["resume", &id]);
    eprintln!("resume returned after {took:?}");
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(took < Duration::from_secs(5), "resume took {took:?}");
    assert_eq!(run.wait(Duration::from_secs(30)), 0, "{}", run.stderr());

    f.assert_target_is_source().await;
    assert_eq!(status(&f.ws, &id)["state"], "succeeded");
    let actions = actions(&f.ws, &id);
    for wanted in ["run.pause_requested", "run.paused", "run.resume_requested"] {
        assert!(
            actions.iter().any(|a| a == wanted),
            "no {wanted} in {actions:?}"
        );
    }
}

#[tokio::test]
async fn cancel_from_another_process_leaves_a_consistent_target_and_needs_reopen() {
    // 3,000 rows at 600 rows/s: about 5 s of work.
    let f = fixture(
        3_000,
        3,
        "concurrency = 2\nbatch_rows = 50\nrows_per_second = 600\n",
    )
    .await;
    let (mut run, id) = f.start();
    f.until_rows(300, &mut run).await;

    let (cancelled, took) = timed(&f.ws, &["cancel", &id, "--reason", "test cancel", "--json"]);
    eprintln!("cancel returned after {took:?}");
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    assert_eq!(cancelled.json()["state"], "cancelled", "{cancelled:?}");
    assert_eq!(run.wait(Duration::from_secs(10)), 1, "{}", run.stderr());
    assert_eq!(status(&f.ws, &id)["state"], "cancelled");

    // What was written is right; the rest is missing.
    let expected = reference(&f.source).await;
    let written = target_rows(&f.target).await;
    assert!(
        !written.is_empty() && written.len() < expected.len(),
        "expected a partial target, got {} rows",
        written.len()
    );
    let subset: Vec<_> = expected
        .iter()
        .filter(|row| written.iter().any(|w| w[0] == row[0]))
        .cloned()
        .collect();
    assert_same_rows(&written, &subset, "cancelled target vs its source rows");

    let refused = f.ws.run(&["resume", &id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--reopen"), "{}", refused.stderr);

    let reopened = f.ws.run(&["resume", "--reopen", &id]);
    assert_eq!(reopened.code, 0, "{reopened:?}");
    f.assert_target_is_source().await;
    assert_eq!(status(&f.ws, &id)["state"], "succeeded");
    let actions = actions(&f.ws, &id);
    for wanted in [
        "run.cancel_requested",
        "run.cancelled",
        "run.resume_requested",
    ] {
        assert!(
            actions.iter().any(|a| a == wanted),
            "no {wanted} in {actions:?}"
        );
    }
}

#[tokio::test]
async fn throttle_from_another_process_takes_effect_within_a_second() {
    const ROWS: i64 = 20_000;
    let f = fixture(
        ROWS,
        4,
        "concurrency = 4\nbatch_rows = 50\nrows_per_second = 100\n",
    )
    .await;
    let (mut run, id) = f.start();
    f.until_rows(50, &mut run).await;

    // Wrong uses first, while the run goes.
    let nothing = f.ws.run(&["throttle", &id]);
    assert_eq!(nothing.code, 2, "{nothing:?}");
    let zero = f.ws.run(&["throttle", &id, "--rows-per-second", "0"]);
    assert_eq!(zero.code, 2, "{zero:?}");
    assert!(zero.stderr.contains("at least 1"), "{}", zero.stderr);

    let slow = count(&f.target).await;
    let asked = Instant::now();
    let throttled =
        f.ws.run(&["throttle", &id, "--rows-per-second", "5000", "--json"]);
    let command_took = asked.elapsed();
    assert_eq!(throttled.code, 0, "{throttled:?}");
    assert_eq!(throttled.json()["rows_per_second"], 5000, "{throttled:?}");

    // The rate rose once 250 rows (over 12 times the old rate) land within 200 ms.
    let mut samples: Vec<(Duration, i64)> = vec![(Duration::ZERO, slow)];
    let risen = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (asked.elapsed(), count(&f.target).await);
        samples.push(now);
        let window = samples
            .iter()
            .rev()
            .find(|(at, _)| now.0 - *at >= Duration::from_millis(200));
        if let Some((_, then)) = window
            && now.1 - then >= 250
        {
            break now.0;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10) && now.1 < ROWS,
            "the rate did not rise: {samples:?}"
        );
    };
    eprintln!("throttle command took {command_took:?}; the rate rose {risen:?} after it was asked");
    assert!(
        risen < Duration::from_secs(3),
        "the throttle took {risen:?}: {samples:?}"
    );

    let st = status(&f.ws, &id);
    assert_eq!(st["control"]["throttle"]["rows_per_second"], 5000, "{st:#}");
    assert_eq!(run.wait(Duration::from_secs(30)), 0, "{}", run.stderr());
    f.assert_target_is_source().await;

    let events = audit_events(&f.ws, &id);
    let throttled = events
        .iter()
        .find(|e| e["action"] == "run.throttled")
        .unwrap_or_else(|| panic!("no run.throttled in {events:#?}"));
    let text = throttled.to_string();
    assert!(
        text.contains("\"from\"") && text.contains("\"to\"") && text.contains("5000"),
        "{throttled:#}"
    );

    let done = f.ws.run(&["throttle", &id, "--rows-per-second", "10"]);
    assert_eq!(done.code, 2, "throttling a succeeded run: {done:?}");
}

#[tokio::test]
async fn budget_pauses_the_run_and_extend_budget_continues_it() {
    // The budget is half the rows; 400 rows/s leaves the controller (polling every 250 ms)
    // time to see 80% before 100%.
    let f = fixture(
        2_000,
        2,
        "concurrency = 2\nbatch_rows = 50\nrows_per_second = 400\n\
         budget = { rows = 1000, cost = { per_million_rows = 1000.0, per_hour = 0.0, currency = \"EUR\" } }\n",
    )
    .await;
    let (mut run, id) = f.start();
    let mut st = serde_json::Value::Null;
    wait_until(
        "the run pauses with budget_exhausted",
        Duration::from_secs(15),
        || {
            assert!(run.alive(), "the run ended:\n{}", run.stderr());
            st = status(&f.ws, &id);
            st["state"] == "paused"
        },
    );
    assert_eq!(st["pause_reason"], "budget_exhausted", "{st:#}");
    assert_eq!(st["control"]["process_running"], true, "{st:#}");
    // The telemetry of the paused process comes with its next heartbeat.
    wait_until(
        "status shows the rows budget spent",
        Duration::from_secs(5),
        || {
            st = status(&f.ws, &id);
            st["live"]["budget"].as_array().is_some_and(|lines| {
                lines.iter().any(|l| {
                    l["kind"] == "rows"
                        && l["limit"].as_f64() == Some(1000.0)
                        && l["used"].as_f64().is_some_and(|u| u >= 1000.0)
                })
            })
        },
    );
    assert!(count(&f.target).await < 2_000);
    // Cost so far: 1,000 rows at 1,000 per million rows = 1.00 EUR; to complete: as much
    // again at the pace so far (one of two partitions finished, or none yet).
    let cost = &st["live"]["cost"];
    let so_far = cost["so_far_amount"].as_f64().expect("cost so far");
    assert!((1.0..1.2).contains(&so_far), "{cost:#}");
    assert_eq!(cost["currency"], "EUR", "{cost:#}");
    let text = f.ws.run(&["status", &id]);
    assert!(text.stdout.contains("budget:     rows"), "{}", text.stdout);
    assert!(text.stdout.contains("EUR so far"), "{}", text.stdout);
    assert!(
        text.stdout.contains("paused:     budget_exhausted"),
        "{}",
        text.stdout
    );
    let stderr = run.stderr();
    assert!(
        stderr.contains("budget warning") && stderr.contains("80%"),
        "no 80% warning:\n{stderr}"
    );

    let bad = f.ws.run(&["resume", &id, "--extend-budget", "rows=abc"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("rows=abc"), "{}", bad.stderr);
    assert!(run.alive(), "a refused resume stopped the run");

    let resumed = f.ws.run(&["resume", &id, "--extend-budget", "rows=5000"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(run.wait(Duration::from_secs(30)), 0, "{}", run.stderr());
    f.assert_target_is_source().await;
}

#[tokio::test]
async fn partition_budget_stops_within_the_partitions_in_flight() {
    // Regression: `budget = { partitions = 10 }` stopped after 36-38 partitions, because
    // only the controller's poll (every 250 ms) looked at the budget. 240 hourly partitions
    // of a few rows each finish far faster than that; the dispatcher itself must not start a
    // partition the budget cannot pay for.
    let f = fixture(
        600,
        10,
        "concurrency = 4\nbatch_rows = 1000\nbudget = { partitions = 10 }\n",
    )
    .await;
    let hourly = std::fs::read_to_string(&f.spec)
        .expect("read spec")
        .replacen("partition = \"1d\"", "partition = \"1h\"", 1);
    std::fs::write(&f.spec, hourly).expect("write spec");
    let (mut run, id) = f.start();
    let mut st = serde_json::Value::Null;
    wait_until(
        "the run pauses with budget_exhausted",
        Duration::from_secs(30),
        || {
            assert!(run.alive(), "the run ended:\n{}", run.stderr());
            st = status(&f.ws, &id);
            st["state"] == "paused"
        },
    );
    assert_eq!(st["pause_reason"], "budget_exhausted", "{st:#}");
    assert_eq!(st["partitions_total"], 240, "{st:#}");
    // Every partition it started finished (none failed), so exactly the budget is done.
    assert_eq!(st["partitions"]["done"], 10, "{st:#}");
    assert_eq!(st["partitions"]["pending"], 230, "{st:#}");
    let started = actions(&f.ws, &id)
        .iter()
        .filter(|a| *a == "partition.running")
        .count();
    assert_eq!(started, 10, "partitions started under a budget of 10");
    let resumed =
        f.ws.run(&["resume", &id, "--extend-budget", "partitions=230"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(run.wait(Duration::from_secs(60)), 0, "{}", run.stderr());
    f.assert_target_is_source().await;
}

#[tokio::test]
async fn a_second_run_process_refuses_while_one_is_executing() {
    let f = fixture(
        3_000,
        3,
        "concurrency = 2\nbatch_rows = 50\nrows_per_second = 300\n",
    )
    .await;
    let (mut run, id) = f.start();
    f.until_rows(100, &mut run).await;

    let resumed = f.ws.run(&["resume", &id, "--json"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(resumed.json()["process_running"], true, "{resumed:?}");
    assert!(resumed.stderr.contains("continues"), "{}", resumed.stderr);

    let second = f.ws.run(&["run", &f.spec]);
    eprintln!("second `run SPEC`: exit {}\n{}", second.code, second.stderr);
    assert_eq!(second.code, 1, "refused, naming the holder: {second:?}");
    assert!(
        second
            .stderr
            .contains("is being executed by another process: pid "),
        "{}",
        second.stderr
    );
    assert!(
        !second.stderr.contains("resuming"),
        "no misleading `resuming` line: {}",
        second.stderr
    );
    assert!(run.alive(), "the first process stopped:\n{}", run.stderr());
    assert_eq!(runs_json(&f.ws).len(), 1, "a second run was created");

    let off = f.ws.run(&["throttle", &id, "--rows-per-second", "off"]);
    assert_eq!(off.code, 0, "{off:?}");
    assert_eq!(run.wait(Duration::from_secs(30)), 0, "{}", run.stderr());
    f.assert_target_is_source().await;
}

// The circuit breaker, against a PostgreSQL target whose trigger fails every write with a
// serialization failure (SQLSTATE 40001, transient) while a flag is set.

#[tokio::test]
async fn circuit_breaker_opens_on_failing_batches_and_resume_closes_it() {
    const ROWS: i64 = 2_000;
    let Some(schema) = PgSchema::create("bf_ctl").await else {
        return;
    };
    let base = schema.server_url().to_owned();
    let s = schema.name();
    schema
        .exec(&format!(
            "CREATE TABLE {s}.events_copy (id BIGINT PRIMARY KEY, user_id BIGINT, amount_cents BIGINT, ts TEXT NOT NULL, note TEXT);
             CREATE TABLE {s}.fail (on_ BOOLEAN NOT NULL);
             INSERT INTO {s}.fail VALUES (true);
             CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT on_ FROM {s}.fail) THEN
                 RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {s}.events_copy
               FOR EACH ROW EXECUTE FUNCTION {s}.refuse();"
        ))
        .await;

    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), ROWS, 2).await;
    let text = copy_spec(&ws.path("source.db").display().to_string(), "TARGET", 2, "");
    let text = text
        .replacen("url = \"sqlite://TARGET\"", &format!("url = \"{base}\""), 1)
        .replacen(
            "table = \"events_copy\"",
            &format!("table = \"{s}.events_copy\""),
            1,
        )
        .replacen(
            "concurrency = 4\nbatch_rows = 1000\n",
            "concurrency = 2\nbatch_rows = 100\nrows_per_second = 1000\nmax_attempts = 100\n\
             retry_base = \"50ms\"\nretry_cap = \"200ms\"\n\
             circuit_breaker = { window = 10, max_error_rate = 0.3 }\n",
            1,
        );
    assert!(text.contains(&format!("{s}.events_copy")) && text.contains("max_attempts"));
    let spec = ws.write("spec.toml", &text);

    let mut run = Proc::spawn(&ws, &["run", &spec], "run");
    let id = the_run(&ws, &mut run);
    let mut st = serde_json::Value::Null;
    let opened = Instant::now();
    wait_until(
        "the run pauses with circuit_open",
        Duration::from_secs(15),
        || {
            assert!(run.alive(), "the run ended:\n{}", run.stderr());
            st = status(&ws, &id);
            st["state"] == "paused"
        },
    );
    eprintln!(
        "circuit opened {:?} after the run started",
        opened.elapsed()
    );
    assert_eq!(st["pause_reason"], "circuit_open", "{st:#}");
    assert_eq!(st["control"]["process_running"], true, "{st:#}");
    let paused = audit_events(&ws, &id)
        .into_iter()
        .find(|e| e["action"] == "run.paused")
        .expect("run.paused event");
    assert!(
        paused
            .to_string()
            .contains("injected serialization failure"),
        "the pause should record the last errors: {paused:#}"
    );
    // The run's own output says why it stopped, though a worker (not the controller) opened
    // the breaker.
    wait_until("the breaker is announced", Duration::from_secs(5), || {
        run.stderr().contains("circuit breaker open")
    });

    schema
        .exec(&format!("UPDATE {s}.fail SET on_ = false"))
        .await;
    let resumed = ws.run(&["resume", &id]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(run.wait(Duration::from_secs(30)), 0, "{}", run.stderr());

    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, user_id, amount_cents, ts, note FROM {s}.events_copy ORDER BY id"
    )))
    .fetch_all(schema.pool())
    .await
    .expect("read target");
    let got: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|r| {
            vec![
                Some(format!("i:{}", r.get::<i64, _>(0))),
                r.get::<Option<i64>, _>(1).map(|v| format!("i:{v}")),
                r.get::<Option<i64>, _>(2).map(|v| format!("i:{v}")),
                Some(format!("t:{}", r.get::<String, _>(3))),
                r.get::<Option<String>, _>(4).map(|v| format!("t:{v}")),
            ]
        })
        .collect();
    assert_same_rows(
        &got,
        &reference(&source).await,
        "PostgreSQL target vs source",
    );
    let actions = actions(&ws, &id);
    assert!(
        actions.iter().any(|a| a == "partition.retry"),
        "{actions:?}"
    );
    schema.drop_now().await;
}

// `[slo]`: a run burning its error budget is throttled first, then paused with reason
// `burn_rate`; `resume` continues it, still throttled until `throttle` lifts it.

/// A trigger of the target refusing (SQLite `RAISE(ABORT)`, a data error: the partition fails
/// at once) each day's rows from 22:00 while `fail.on_` is set: written in key order, a
/// partition writes most of its day, at the run's rate, before it fails.
const REFUSE_LATE_ROWS: &str = "CREATE TABLE fail (on_ INTEGER NOT NULL); \
     INSERT INTO fail VALUES (1); \
     CREATE TRIGGER refuse BEFORE INSERT ON events_copy \
     WHEN (SELECT on_ FROM fail) AND substr(NEW.ts, 12, 2) >= '22' \
     BEGIN SELECT RAISE(ABORT, 'injected refusal'); END;";

#[tokio::test]
async fn burning_the_error_budget_throttles_then_pauses_and_resume_continues() {
    const DAYS: i64 = 20;
    let ws = Workspace::new();
    let source = make_source(&ws.path("source.db"), 100 * DAYS, DAYS).await;
    let target = make_target(&ws.path("target.db")).await;
    sqlx::raw_sql(REFUSE_LATE_ROWS)
        .execute(&target)
        .await
        .expect("refusing trigger");
    let text = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        DAYS,
        "",
    );
    let text = text.replacen(
        "concurrency = 4\nbatch_rows = 1000\n",
        "concurrency = 2\nbatch_rows = 10\nrows_per_second = 100\ncircuit_breaker = false\n",
        1,
    );
    // 20 partitions at 90%: an error budget of 2 failed attempts.
    let text = format!("{text}\n[slo]\ncomplete_within = \"48h\"\nsuccess_rate = 0.9\n");
    assert!(text.contains("rows_per_second = 100"));
    let spec = ws.write("spec.toml", &text);

    let mut run = Proc::spawn(&ws, &["run", &spec], "run");
    let id = the_run(&ws, &mut run);
    let mut st = serde_json::Value::Null;
    wait_until(
        "the run pauses with burn_rate",
        Duration::from_secs(60),
        || {
            assert!(run.alive(), "the run ended:\n{}", run.stderr());
            st = status(&ws, &id);
            st["state"] == "paused"
        },
    );
    assert_eq!(st["pause_reason"], "burn_rate", "{st:#}");
    assert_eq!(st["control"]["process_running"], true, "{st:#}");
    // Throttled before the pause: half the concurrency and half the rate, by the engine,
    // with the burn as the audited cause.
    assert_eq!(st["control"]["throttle"]["concurrency"], 1, "{st:#}");
    assert_eq!(st["control"]["throttle"]["rows_per_second"], 50, "{st:#}");
    let events = audit_events(&ws, &id);
    let throttled = events
        .iter()
        .position(|e| e["action"] == "run.throttled")
        .expect("a run.throttled event");
    let paused = events
        .iter()
        .position(|e| e["action"] == "run.paused")
        .expect("a run.paused event");
    assert!(throttled < paused, "throttle first, then pause");
    let t = &events[throttled];
    assert_eq!(t["actor"], "engine", "{t:#}");
    assert_eq!(t["detail"]["cause"], "burn_rate", "{t:#}");
    assert_eq!(t["detail"]["why"]["budget"], "error budget", "{t:#}");
    let p = &events[paused];
    assert_eq!(p["detail"]["pause_reason"], "burn_rate", "{p:#}");
    assert!(
        p["detail"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("failed attempts")),
        "{p:#}"
    );
    // `status` shows the objective and the burn.
    let slo = &st["slo"];
    assert_eq!(slo["stage"], "paused", "{slo:#}");
    assert_eq!(slo["objective"]["success_rate"], 0.9, "{slo:#}");
    assert_eq!(slo["error_budget"]["allowed"], 2.0, "{slo:#}");
    let used = slo["error_budget"]["used"].as_u64().expect("errors used");
    assert!(used >= 4, "two burns of more than half the budget: {slo:#}");
    assert!(
        slo["burn_rate"]["short"].as_f64().unwrap_or(0.0) > 1.0,
        "{slo:#}"
    );
    assert!(slo["deadline"].is_string(), "{slo:#}");
    let text_status = ws.run(&["status", &id]);
    assert!(
        text_status.stdout.contains("error budget:") && text_status.stdout.contains("burn guard"),
        "{}",
        text_status.stdout
    );
    // Nothing is written while paused.
    let before = count(&target).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        before,
        count(&target).await,
        "rows were written while paused"
    );

    // Fixed: lift the throttle, stop the failures and resume the waiting process.
    sqlx::query("UPDATE fail SET on_ = 0")
        .execute(&target)
        .await
        .expect("clear the flag");
    let lifted = ws.run(&[
        "throttle",
        &id,
        "--rows-per-second",
        "off",
        "--concurrency",
        "4",
    ]);
    assert_eq!(lifted.code, 0, "{lifted:?}");
    let resumed = ws.run(&["resume", &id]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    run.wait(Duration::from_secs(60));
    let st = status(&ws, &id);
    let n = |state: &str| st["partitions"][state].as_u64().unwrap_or(0);
    let done = n("done");
    // The refused rows were quarantined (a data error), or their partitions failed.
    assert_eq!(
        done + n("done_with_quarantine") + n("failed"),
        DAYS as u64,
        "every partition ended: {st:#}"
    );
    assert!(done >= 10, "the resumed run went on: {st:#}");
    // Every row written is the source's, and every done day (100 rows each) is complete.
    let expected = reference(&source).await;
    let by_id: std::collections::BTreeMap<_, _> =
        expected.iter().map(|r| (r[0].clone(), r)).collect();
    let got = target_rows(&target).await;
    assert!(
        got.len() as u64 >= done * 100,
        "{} rows for {done} days",
        got.len()
    );
    for row in &got {
        assert_eq!(by_id.get(&row[0]), Some(&row), "row {:?}", row[0]);
    }
}

/// `[slo]` guards the compute budget too: a run reading more than half its rows budget within
/// five minutes is throttled (audited with the rows budget as the cause), and, burning no
/// more than that afterwards, goes on to the end with every row right.
#[tokio::test]
async fn burning_half_the_rows_budget_throttles_the_run() {
    // 1,500 rows of a 2,000-row budget: past half of it, 500 rows read after the throttle.
    let f = fixture(
        1_500,
        3,
        "concurrency = 2\nbatch_rows = 50\nrows_per_second = 600\nbudget = { rows = 2000 }\n",
    )
    .await;
    let text = std::fs::read_to_string(&f.spec).unwrap();
    std::fs::write(
        &f.spec,
        format!("{text}\n[slo]\ncomplete_within = \"1h\"\n"),
    )
    .unwrap();
    let (mut run, id) = f.start();
    assert_eq!(run.wait(Duration::from_secs(60)), 0, "{}", run.stderr());
    f.assert_target_is_source().await;
    let events = audit_events(&f.ws, &id);
    let throttled: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "run.throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "one burn, one throttle: {throttled:#?}");
    let t = throttled[0];
    assert_eq!(t["actor"], "engine", "{t:#}");
    assert_eq!(t["detail"]["cause"], "burn_rate", "{t:#}");
    assert_eq!(t["detail"]["why"]["budget"], "rows budget", "{t:#}");
    assert_eq!(t["detail"]["to"]["concurrency"], 1, "{t:#}");
    assert!(
        !events.iter().any(|e| e["action"] == "run.paused"),
        "no second burn, no pause"
    );
    let st = status(&f.ws, &id);
    assert_eq!(st["slo"]["stage"], "throttled", "{st:#}");
    assert_eq!(st["rate"]["cause"], "burn_rate", "{st:#}");
}
