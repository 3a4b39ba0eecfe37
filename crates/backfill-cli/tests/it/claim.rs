//! One process executes a run, always: several `backfill resume RUN` or `backfill run SPEC`
//! started at the same moment (real processes, released together), on a SQLite and on a
//! PostgreSQL state store. Exactly one executes; the others say who holds the run and exit 1
//! (or, for `resume`, hand the resume to the executing process); the target equals the source
//! row by row; the run's observed rate stays within its limit; and a process stopped with
//! SIGSTOP past its lease, then continued, cannot write any more.

#![allow(clippy::print_stderr)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sqlx::SqlitePool;

use crate::support::{
    Ran, Workspace, assert_same_rows, copy_spec, make_source, make_target, reference, target_rows,
};

const ROWS: i64 = 2_000;
const DAYS: i64 = 4;
/// The run's global limit. The limiter's burst is a tenth of it, so one executor's observed
/// rate is at most `RATE * ROWS / (ROWS - RATE / 10)`; two executors would double it.
const RATE: f64 = 2_000.0;
const ROUNDS: usize = 20;

/// Where the state store lives for a test.
enum StoreKind {
    Sqlite,
    Postgres,
}

/// A workspace with a source, an empty target and a rate-limited spec, on a state store.
struct Fixture {
    ws: Workspace,
    spec: String,
    state: String,
    source: SqlitePool,
    target: SqlitePool,
    /// The PostgreSQL server and schema to drop at the end.
    pg: Option<(String, String)>,
}

impl Fixture {
    async fn new(kind: StoreKind) -> Option<Fixture> {
        let ws = Workspace::new();
        let source = make_source(&ws.path("source.db"), ROWS, DAYS).await;
        let target = make_target(&ws.path("target.db")).await;
        let spec = ws.write(
            "spec.toml",
            &copy_spec(
                &ws.path("source.db").display().to_string(),
                &ws.path("target.db").display().to_string(),
                DAYS,
                &format!("rows_per_second = {RATE}\nbatch_rows = 100"),
            )
            .replace("batch_rows = 1000\n", ""),
        );
        let (state, pg) = match kind {
            StoreKind::Sqlite => (ws.state(), None),
            StoreKind::Postgres => {
                let server = backfill_testkit::postgres_url();
                if let Err(e) = <sqlx::PgConnection as sqlx::Connection>::connect(&server).await {
                    return backfill_testkit::unreachable("PostgreSQL", &server, &e);
                }
                let schema = backfill_testkit::unique("bf_claim");
                let url = backfill_testkit::servers::with_param(&server, "schema", &schema);
                (url, Some((server, schema)))
            }
        };
        Some(Fixture {
            ws,
            spec,
            state,
            source,
            target,
            pg,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.ws.command(args);
        cmd.env("BACKFILL_STATE", &self.state);
        cmd
    }

    fn run(&self, args: &[&str]) -> Ran {
        let out = self.command(args).output().expect("run backfill");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `n` processes of `args` released together by a barrier; waits for all of them.
    fn race(&self, n: usize, args: &[&str]) -> Vec<Ran> {
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let mut cmd = self.command(args);
                cmd.stdin(Stdio::null());
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let out = cmd.output().expect("run backfill");
                    Ran {
                        code: out.status.code().unwrap_or(-1),
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn status(&self, run_id: &str) -> serde_json::Value {
        let ran = self.run(&["status", run_id, "--json"]);
        assert_eq!(ran.code, 0, "status: {ran:?}");
        ran.json()
    }

    async fn assert_target_is_source(&self, what: &str) {
        assert_same_rows(
            &target_rows(&self.target).await,
            &reference(&self.source).await,
            what,
        );
    }

    async fn clear_target(&self) {
        sqlx::query("DELETE FROM events_copy")
            .execute(&self.target)
            .await
            .expect("clear target");
    }

    async fn drop_schema(&self) {
        if let Some((server, schema)) = &self.pg {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(server)
                .await
                .expect("connect");
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("drop schema");
        }
    }
}

/// Checks one round: exactly one process executed run `run_id` (its summary says so and the
/// audit chain has one `run.running`), every other one either was refused naming the holder
/// (exit 1) or, for `resume`, handed its resume to the executing process (exit 0); the run
/// succeeded within its rate limit and the target equals the source.
async fn check_round(f: &Fixture, run_id: &str, ran: &[Ran], round: usize) {
    let summary = format!("run {run_id} succeeded");
    let executed: Vec<&Ran> = ran.iter().filter(|r| r.stdout.contains(&summary)).collect();
    assert_eq!(
        executed.len(),
        1,
        "round {round}: exactly one process executes the run: {ran:#?}"
    );
    assert_eq!(executed[0].code, 0, "round {round}: {:?}", executed[0]);
    for other in ran.iter().filter(|r| !r.stdout.contains(&summary)) {
        let refused = other.code == 1
            && other
                .stderr
                .contains("is being executed by another process")
            && other.stderr.contains("pid ");
        let handed_over = other.code == 0 && other.stderr.contains("resume requested");
        assert!(
            refused || handed_over,
            "round {round}: a losing process says who holds the run and exits 1: {other:?}"
        );
    }
    let audit = audit_events_of(f, run_id);
    let running = audit
        .iter()
        .filter(|e| e["action"] == "run.running")
        .count();
    assert_eq!(running, 1, "round {round}: one `run.running` event");
    let status = f.status(run_id);
    assert_eq!(status["state"], "succeeded", "round {round}: {status}");
    let rows = status["rows"]["read"].as_f64().unwrap();
    assert_eq!(rows as i64, ROWS, "round {round}: every row read once");
    let started =
        chrono::DateTime::parse_from_rfc3339(status["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(status["finished_at"].as_str().unwrap()).unwrap();
    let seconds = (finished - started).as_seconds_f64();
    let bound = RATE * ROWS as f64 / (ROWS as f64 - RATE / 10.0);
    assert!(
        rows / seconds <= bound * 1.05,
        "round {round}: observed {:.0} rows/s over {seconds:.2}s, limit {RATE} (bound {bound:.0})",
        rows / seconds
    );
    f.assert_target_is_source(&format!("round {round}")).await;
}

fn audit_events_of(f: &Fixture, run_id: &str) -> Vec<serde_json::Value> {
    let ran = f.run(&["audit", run_id, "--json"]);
    assert_eq!(ran.code, 0, "audit: {ran:?}");
    ran.json()
        .as_array()
        .cloned()
        .expect("audit --json is an array")
}

/// `n` processes `backfill resume RUN` at once on a run created with `--create-only`.
async fn resumes_race(kind: StoreKind, n: usize) {
    let Some(f) = Fixture::new(kind).await else {
        return;
    };
    for round in 0..ROUNDS {
        f.clear_target().await;
        let created = f.run(&["run", &f.spec, "--create-only", "--new"]);
        assert_eq!(created.code, 0, "{created:?}");
        let run_id = created.stdout.trim().to_owned();
        let ran = f.race(n, &["resume", &run_id]);
        check_round(&f, &run_id, &ran, round).await;
    }
    f.drop_schema().await;
}

/// `n` processes `backfill run SPEC` at once: one run is created, one process executes it.
async fn runs_race(kind: StoreKind, n: usize) {
    let Some(f) = Fixture::new(kind).await else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for round in 0..ROUNDS {
        f.clear_target().await;
        let ran = f.race(n, &["run", &f.spec]);
        let runs = f.run(&["runs", "--json", "--limit", "1000"]).json();
        let runs = runs.as_array().unwrap();
        assert_eq!(
            runs.len(),
            round + 1,
            "round {round}: one new run per round: {ran:#?}"
        );
        let run_id = runs[0]["run_id"].as_str().unwrap().to_owned();
        assert!(seen.insert(run_id.clone()));
        check_round(&f, &run_id, &ran, round).await;
    }
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resumes_at_once_execute_once_sqlite() {
    resumes_race(StoreKind::Sqlite, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_resumes_at_once_execute_once_sqlite() {
    resumes_race(StoreKind::Sqlite, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resumes_at_once_execute_once_postgres() {
    resumes_race(StoreKind::Postgres, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_resumes_at_once_execute_once_postgres() {
    resumes_race(StoreKind::Postgres, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_a_spec_at_once_make_one_run_sqlite() {
    runs_race(StoreKind::Sqlite, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runs_of_a_spec_at_once_make_one_run_sqlite() {
    runs_race(StoreKind::Sqlite, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_a_spec_at_once_make_one_run_postgres() {
    runs_race(StoreKind::Postgres, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runs_of_a_spec_at_once_make_one_run_postgres() {
    runs_race(StoreKind::Postgres, 4).await;
}

/// A process is stopped (SIGSTOP) mid-run past its 2 s lease; another `resume` takes the run
/// over and finishes it; the stopped one, continued (SIGCONT), finds its claim lost, writes
/// nothing more and exits 1. The target is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_past_its_lease_a_process_cannot_write_a_checkpoint() {
    let Some(f) = Fixture::new(StoreKind::Sqlite).await else {
        return;
    };
    // Slow enough that the first process is mid-run when stopped.
    let slow = std::fs::read_to_string(&f.spec).unwrap().replace(
        &format!("rows_per_second = {RATE}"),
        "rows_per_second = 400",
    );
    std::fs::write(&f.spec, slow).unwrap();
    let created = f.run(&["run", &f.spec, "--create-only"]);
    assert_eq!(created.code, 0, "{created:?}");
    let run_id = created.stdout.trim().to_owned();

    let first_err = f.ws.path("first.stderr");
    let mut first: Child = f
        .command(&["resume", &run_id, "--lease", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&first_err).unwrap())
        .spawn()
        .unwrap();
    let first_pid = first.id();
    wait_until("the first process writes rows", || {
        f.status(&run_id)["rows"]["read"].as_u64().unwrap_or(0) >= 200
    });
    signal("STOP", first_pid);
    let stopped_at = Instant::now();
    let read_when_stopped = f.status(&run_id)["rows"]["read"].as_u64().unwrap();
    // While its lease is live, the stopped process still holds the run.
    // (`run SPEC` goes straight to the claim; `resume` would hand its request to the
    // process, which looks alive.)
    let early = f.run(&["run", &f.spec]);
    assert_eq!(early.code, 1, "{early:?}");
    assert!(
        early.stderr.contains(&format!("pid {first_pid}")),
        "names the holder: {early:?}"
    );
    while stopped_at.elapsed() < Duration::from_millis(2_500) {
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = f
        .command(&["run", &f.spec])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second_pid = second.id();
    wait_until("the second process claims the run", || {
        f.status(&run_id)["claim"]["pid"].as_u64() == Some(u64::from(second_pid))
    });
    let fence = f.status(&run_id)["claim"]["fence"].as_u64().unwrap();
    assert_eq!(fence, 2, "the first process's claim, then the second's");
    signal("CONT", first_pid);
    let first_code = wait_child(&mut first, Duration::from_secs(30));
    let first_stderr = std::fs::read_to_string(&first_err).unwrap();
    assert_eq!(first_code, 1, "the stale process fails: {first_stderr}");
    assert!(
        first_stderr.contains("lost the claim"),
        "it says it lost its claim: {first_stderr}"
    );
    let second_out = second.wait_with_output().unwrap();
    assert_eq!(
        second_out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second_out.stderr)
    );
    let status = f.status(&run_id);
    assert_eq!(status["state"], "succeeded");
    assert!(read_when_stopped < ROWS as u64);
    let events = audit_events_of(&f, &run_id);
    assert!(events.iter().any(|e| e["action"] == "run.succeeded"));
    f.assert_target_is_source("after takeover").await;
}

fn signal(name: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{name} {pid}");
}

fn wait_child(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--wait`: a second `run SPEC --wait` started while another process executes the run says it
/// waits, waits for the run to end, then reports it finished without executing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_waits_for_the_holder_then_reports_the_finished_run() {
    let Some(f) = Fixture::new(StoreKind::Sqlite).await else {
        return;
    };
    let slow = std::fs::read_to_string(&f.spec).unwrap().replace(
        &format!("rows_per_second = {RATE}"),
        "rows_per_second = 1000",
    );
    std::fs::write(&f.spec, slow).unwrap();
    let created = f.run(&["run", &f.spec, "--create-only"]);
    let run_id = created.stdout.trim().to_owned();
    let mut first = f
        .command(&["resume", &run_id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first_pid = u64::from(first.id());
    wait_until("the first process claims the run", || {
        f.status(&run_id)["claim"]["pid"].as_u64() == Some(first_pid)
    });
    let second = f.run(&["run", &f.spec, "--wait"]);
    let first_code = wait_child(&mut first, Duration::from_secs(30));
    assert_eq!(first_code, 0);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(
        second.stderr.contains("waiting for it to finish or stop"),
        "says it waits: {second:?}"
    );
    assert!(
        second.stdout.contains(&format!("run {run_id} succeeded")),
        "{second:?}"
    );
    let audit = audit_events_of(&f, &run_id);
    let running = audit
        .iter()
        .filter(|e| e["action"] == "run.running")
        .count();
    assert_eq!(running, 1, "executed once");
    f.assert_target_is_source("after --wait").await;
}
