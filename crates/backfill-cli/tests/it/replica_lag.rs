//! The adaptive throttle's `max_replica_lag` against real replication (issue 5): a private
//! primary and its replica (a PostgreSQL hot standby made by `pg_basebackup -R`, a MariaDB
//! replica following the primary's binary log), live traffic on the primary (a row into
//! `ticks` every 100 ms), and a `backfill run` whose `[throttle]` probe watches the replica.
//!
//! Mid-run the test makes the replica fall behind while the primary keeps writing (PostgreSQL:
//! `pg_wal_replay_pause()` on the standby; MariaDB: a replica session holds `LOCK TABLES
//! ticks WRITE`, so the SQL thread waits for it). The run must cut its rate with cause
//! `replica_lag`, showing the lag it read (> 1 s) in `backfill status --json`; once the
//! replica catches up it must raise the rate again (`recovered`), then finish by itself with
//! the target equal to the source row by row. The probe may also point at the PostgreSQL
//! primary, which reads the standby's `replay_lag` in `pg_stat_replication`.
//!
//! Tests of the probe alone (`backfill_connectors::Probe`, what the engine calls every
//! interval) pin the readings themselves, edge cases included, in a few seconds.
//!
//! Servers are private (`private_server.rs`): when their binaries are missing the tests are
//! skipped (and counted), or fail when services are required. Each test takes about
//! 15–20 s, mostly the run itself; every wait has a generous limit and no assertion is about
//! how fast anything happened.

#![allow(clippy::print_stderr)]

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use backfill_connectors::Probe;
use backfill_core::SecretUrl;
use backfill_store::{RateChangeRecord, Store};
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::private_server::{PrivateMariaDb, PrivatePostgres};
use crate::support::{
    Ran, Workspace, assert_same_rows, copy_spec, make_source, make_target, reference, runs_json,
    target_rows,
};

/// 12,000 rows at 1,000 rows/s: about 12 s at full speed, longer once cut, so the lag
/// episode (about 3 s) lands mid-run even when the machine is slow to react.
const ROWS: i64 = 12_000;
/// Days of the source, one partition each.
const DAYS: i64 = 4;
const LIMITS: &str = "concurrency = 2\nbatch_rows = 100\nrows_per_second = 1000\n";

/// The throttle under test. Latency is not what these tests are about: `SELECT 1` may take
/// 1,000× its baseline before it counts (a loaded CI machine), so lag is the one signal.
/// `increase_fraction = 1.0` climbs back to 75% of the rate cut from in one healthy interval,
/// and `min_rate_fraction` keeps the rate at 250 rows/s or more, so the run ends soon after.
fn throttle(probe_url: &str) -> String {
    format!(
        "\n[throttle]\nprobe = {{ url = \"{probe_url}\", sql = \"SELECT 1\" }}\n\
         interval = \"200ms\"\nbaseline_probes = 5\nwindow = 5\nmax_latency_increase = 1000.0\n\
         max_replica_lag = \"1s\"\nincrease_fraction = 1.0\nmin_rate_fraction = 0.25\n"
    )
}

/// The limit of every wait for something the test caused (a cut, a recovery, replication).
/// Generous: under the whole suite on 2 cores the live statements' own times stay inflated
/// for a while after the test restores them, so a recovery can take well over 30 s (seen in
/// CI-like runs); a passing test waits only as long as it needs.
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);
/// The limit for the run to finish after the replica caught up.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A primary and its replica (private servers), and the way to make the replica fall behind.
enum Pair {
    Postgres {
        primary: PrivatePostgres,
        standby: PrivatePostgres,
    },
    MariaDb {
        primary: PrivateMariaDb,
        replica: PrivateMariaDb,
        /// The replica session holding `LOCK TABLES ticks WRITE` while it falls behind.
        lock: Option<sqlx::MySqlConnection>,
    },
}

impl Pair {
    /// A PostgreSQL primary and hot standby, with `ticks` on both. Only the test writes on
    /// the primary (no autovacuum), so what the standby replays is known.
    async fn postgres() -> Option<Pair> {
        let primary = PrivatePostgres::start_with("autovacuum = off\n")?;
        let standby = PrivatePostgres::standby_of(&primary);
        let pair = Pair::Postgres { primary, standby };
        pair.create_ticks().await;
        Some(pair)
    }

    /// A MariaDB primary and replica, with `ticks` on both.
    async fn mariadb() -> Option<Pair> {
        let primary = PrivateMariaDb::primary().await?;
        let replica = PrivateMariaDb::replica_of(&primary).await;
        let pair = Pair::MariaDb {
            primary,
            replica,
            lock: None,
        };
        pair.create_ticks().await;
        Some(pair)
    }

    fn primary_url(&self) -> String {
        match self {
            Pair::Postgres { primary, .. } => primary.url(),
            Pair::MariaDb { primary, .. } => primary.url(),
        }
    }

    fn replica_url(&self) -> String {
        match self {
            Pair::Postgres { standby, .. } => standby.url(),
            Pair::MariaDb { replica, .. } => replica.url(),
        }
    }

    /// Creates `ticks` on the primary and waits until the replica has it.
    async fn create_ticks(&self) {
        match self {
            Pair::Postgres { primary, standby } => {
                sqlx::raw_sql(
                    "CREATE TABLE ticks (id bigserial PRIMARY KEY, \
                     at timestamptz NOT NULL DEFAULT clock_timestamp())",
                )
                .execute(&mut primary.connect().await)
                .await
                .expect("create ticks");
                let mut on_standby = standby.connect().await;
                wait_for("ticks on the standby", PATIENCE, async || {
                    sqlx::query_scalar::<_, bool>("SELECT to_regclass('ticks') IS NOT NULL")
                        .fetch_one(&mut on_standby)
                        .await
                        .expect("query the standby")
                })
                .await;
            }
            Pair::MariaDb {
                primary, replica, ..
            } => {
                let mut on_primary = primary.connect("test").await.expect("connect");
                sqlx::raw_sql(
                    "CREATE TABLE ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                     at DATETIME(6) NOT NULL)",
                )
                .execute(&mut on_primary)
                .await
                .expect("create ticks");
                let mut on_replica = replica.connect("test").await.expect("connect");
                wait_for("ticks on the replica", PATIENCE, async || {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM information_schema.tables \
                         WHERE table_schema = 'test' AND table_name = 'ticks'",
                    )
                    .fetch_one(&mut on_replica)
                    .await
                    .expect("query the replica")
                        == 1
                })
                .await;
            }
        }
    }

    /// Makes the replica stop applying what the primary sends (the primary's writes keep
    /// arriving, so its lag grows).
    async fn fall_behind(&mut self) {
        match self {
            Pair::Postgres { standby, .. } => {
                sqlx::raw_sql("SELECT pg_wal_replay_pause()")
                    .execute(&mut standby.connect().await)
                    .await
                    .expect("pause replay");
            }
            Pair::MariaDb { replica, lock, .. } => {
                let mut conn = replica.connect("test").await.expect("connect");
                sqlx::raw_sql("LOCK TABLES ticks WRITE")
                    .execute(&mut conn)
                    .await
                    .expect("lock ticks on the replica");
                *lock = Some(conn);
            }
        }
    }

    /// Lets the replica apply again; it catches up in milliseconds.
    async fn catch_up(&mut self) {
        match self {
            Pair::Postgres { standby, .. } => {
                sqlx::raw_sql("SELECT pg_wal_replay_resume()")
                    .execute(&mut standby.connect().await)
                    .await
                    .expect("resume replay");
            }
            Pair::MariaDb { lock, .. } => {
                let mut conn = lock.take().expect("the replica is behind");
                sqlx::raw_sql("UNLOCK TABLES")
                    .execute(&mut conn)
                    .await
                    .expect("unlock ticks on the replica");
            }
        }
    }

    /// Starts the live traffic: a row into `ticks` on the primary every 100 ms.
    async fn traffic(&self) -> Traffic {
        enum Conn {
            Postgres(sqlx::PgConnection),
            MySql(sqlx::MySqlConnection),
        }
        let mut conn = match self {
            Pair::Postgres { primary, .. } => Conn::Postgres(primary.connect().await),
            Pair::MariaDb { primary, .. } => {
                Conn::MySql(primary.connect("test").await.expect("connect"))
            }
        };
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut written = 0;
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.wait_for(|s| *s) => return Ok(written),
                }
                match &mut conn {
                    Conn::Postgres(c) => sqlx::raw_sql("INSERT INTO ticks DEFAULT VALUES")
                        .execute(c)
                        .await
                        .map(drop),
                    Conn::MySql(c) => sqlx::raw_sql("INSERT INTO ticks (at) VALUES (NOW(6))")
                        .execute(c)
                        .await
                        .map(drop),
                }
                .map_err(|e| format!("traffic on the primary failed after {written} rows: {e}"))?;
                written += 1;
            }
        });
        Traffic {
            stop,
            task: Some(task),
        }
    }
}

/// Live traffic on the primary, aborted if the test ends before [`Traffic::stop`].
struct Traffic {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<u64, String>>>,
}

impl Traffic {
    /// Stops the traffic; the rows it wrote. Panics if a write failed.
    async fn stop(mut self) -> u64 {
        self.stop.send_replace(true);
        let task = self.task.take().expect("running");
        task.await
            .expect("traffic task")
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after `limit`.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `backfill --json run` child process, killed if the test ends before it does.
pub(crate) struct Running {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Running {
    pub(crate) fn spawn(ws: &Workspace) -> Running {
        let (out, err) = (ws.path("run.stdout"), ws.path("run.stderr"));
        // Files, not pipes: a full pipe would block the run.
        let child = ws
            .command(&["--json", "run", "spec.toml"])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn backfill");
        Running {
            child,
            stdout: out,
            stderr: err,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<i32> {
        let status = self.child.try_wait().expect("try_wait")?;
        Some(status.code().unwrap_or(-1))
    }

    /// What the process printed so far, and `code`.
    pub(crate) fn ran(&self, code: i32) -> Ran {
        Ran {
            code,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    /// Panics with the run's output when it has already exited.
    pub(crate) fn assert_alive(&mut self, when: &str) {
        if let Some(code) = self.exited() {
            panic!(
                "the run ended {when}, before the test was done with it; the run is too \
                 short for this machine\n{:?}",
                self.ran(code)
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `backfill status RUN --json`.
pub(crate) fn status(ws: &Workspace, run_id: &str) -> serde_json::Value {
    let ran = ws.run(&["status", run_id, "--json"]);
    assert_eq!(ran.code, 0, "status failed: {ran:?}");
    ran.json()
}

/// The run's rate changes, oldest first, read from its state store.
pub(crate) async fn rate_changes(ws: &Workspace, run_id: &str) -> Vec<RateChangeRecord> {
    let store = Store::open(&ws.state())
        .await
        .expect("open the state store");
    let changes = store
        .rate_changes(run_id, 10_000)
        .await
        .expect("read rate changes");
    store.close().await;
    changes
}

/// The changes in a failure message: one line each.
pub(crate) fn show(changes: &[RateChangeRecord]) -> String {
    changes
        .iter()
        .map(|c| format!("  #{} {} {:?} {}\n", c.seq, c.cause, c.rate, c.detail))
        .collect()
}

/// The change `backfill status --json` shows, once it has `cause`.
pub(crate) async fn wait_for_cause(
    ws: &Workspace,
    run: &mut Running,
    run_id: &str,
    cause: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        run.assert_alive(&format!("while waiting for a `{cause}` rate change"));
        let last = status(ws, run_id);
        if last["rate"]["cause"] == cause {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "no `{cause}` rate change within {PATIENCE:?}; last status:\n{last:#}\nchanges:\n{}",
            show(&rate_changes(ws, run_id).await)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lag a change (or `status`'s `rate.detail`) records, in ms.
fn lag_ms(detail: &serde_json::Value) -> f64 {
    detail["lag_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no lag_ms in {detail}"))
}

/// Writes `ws`'s `spec.toml`: a copy of a fresh source of `rows` rows over `days` days (one
/// partition each) into a fresh target, with `limits` (the `[limits]` lines) in place of
/// [`copy_spec`]'s and `throttle` appended. Returns the source's rows, which the target must
/// hold once the run is done, and the target.
pub(crate) async fn throttled_copy(
    ws: &Workspace,
    rows: i64,
    days: i64,
    limits: &str,
    throttle: &str,
) -> (Vec<Vec<Option<String>>>, sqlx::SqlitePool) {
    let (source, target) = (ws.path("source.db"), ws.path("target.db"));
    let want = reference(&make_source(&source, rows, days).await).await;
    let target_pool = make_target(&target).await;
    let spec = copy_spec(
        &source.display().to_string(),
        &target.display().to_string(),
        days,
        "",
    );
    let with_limits = spec.replacen("concurrency = 4\nbatch_rows = 1000\n", limits, 1);
    assert_ne!(
        spec, with_limits,
        "copy_spec changed: cannot set the limits"
    );
    assert!(!with_limits.contains("probe"));
    ws.write("spec.toml", &(with_limits + throttle));
    (want, target_pool)
}

/// Spawns `backfill run` on `ws`'s spec and waits until it has created its run: the process
/// and the run's id.
pub(crate) async fn spawn_run(ws: &Workspace) -> (Running, String) {
    let mut run = Running::spawn(ws);
    let mut run_id = None;
    wait_for("the run process creates its run", PATIENCE, async || {
        run.assert_alive("at its start");
        run_id = runs_json(ws)
            .first()
            .and_then(|r| r["run_id"].as_str().map(str::to_owned));
        run_id.is_some()
    })
    .await;
    (run, run_id.expect("run id"))
}

/// The scenario: a run throttled by `probe_url`'s replica lag goes through a lag episode of
/// `pair`'s replica, is cut for it, recovers after it, and completes without loss.
async fn lag_episode_mid_run(mut pair: Pair, probe_url: &str, what: &str) {
    let started = Instant::now();
    let ws = Workspace::new();
    let (want, target_pool) = throttled_copy(&ws, ROWS, DAYS, LIMITS, &throttle(probe_url)).await;

    let traffic = pair.traffic().await;
    let (mut run, run_id) = spawn_run(&ws).await;

    // Healthy first: the adaptive throttle starts at the maximum, rows flow, replication is
    // live and no lag is read where there is none.
    wait_for("the adaptive throttle starts", PATIENCE, async || {
        run.assert_alive("before the adaptive throttle started");
        rate_changes(&ws, &run_id)
            .await
            .iter()
            .any(|c| c.cause == "start" && c.detail["adaptive"] == true)
    })
    .await;
    let mut live = serde_json::Value::Null;
    wait_for("status shows the lag read", PATIENCE, async || {
        run.assert_alive("before the lag was read");
        live = status(&ws, &run_id)["live"]["adaptive"].clone();
        live["lag_ms"].is_number()
    })
    .await;
    assert!(
        live["lag_ms"].as_f64() < Some(1000.0) && live["probe_error"].is_null(),
        "{what}: the replica keeps up, so its lag reads under 1 s: {live:#}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healthy = rate_changes(&ws, &run_id).await;
    assert!(
        healthy.iter().all(|c| c.cause != "replica_lag"),
        "{what}: a replica_lag cut while the replica kept up:\n{}",
        show(&healthy)
    );
    let before = healthy.last().map_or(0, |c| c.seq);

    // The replica falls behind while the primary keeps writing: the run is cut for it.
    run.assert_alive("before the replica fell behind");
    let behind = Instant::now();
    pair.fall_behind().await;
    let cut = wait_for_cause(&ws, &mut run, &run_id, "replica_lag").await;
    let cut_after = behind.elapsed();
    let detail = &cut["rate"]["detail"];
    assert!(lag_ms(detail) > 1000.0, "{what}: {cut:#}");
    assert!(
        cut["rate"]["rows_per_second"].as_f64() < detail["from"].as_f64(),
        "{what}: a cut lowers the rate: {cut:#}"
    );

    // Caught up: the rate climbs again.
    pair.catch_up().await;
    let caught_up = Instant::now();
    let recovered = wait_for_cause(&ws, &mut run, &run_id, "recovered").await;
    let recovered_after = caught_up.elapsed();

    // The run finishes by itself, with nothing lost.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let code = loop {
        if let Some(code) = run.exited() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the run did not finish within {RUN_TIMEOUT:?} after the replica caught \
             up\n{:?}\n{:#}",
            run.ran(-1),
            status(&ws, &run_id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ticks = traffic.stop().await;
    let ran = run.ran(code);
    assert_eq!(ran.code, 0, "{what}: {ran:?}");
    assert_eq!(ran.json()["state"], "succeeded", "{what}: {ran:?}");
    assert_same_rows(&target_rows(&target_pool).await, &want, what);

    // The whole series: every lag cut is in the episode and read more than 1 s; the
    // recovery follows the last of them.
    let changes = rate_changes(&ws, &run_id).await;
    let lag_cuts: Vec<_> = changes
        .iter()
        .filter(|c| c.cause == "replica_lag")
        .collect();
    assert!(!lag_cuts.is_empty(), "{what}:\n{}", show(&changes));
    for c in &lag_cuts {
        assert!(
            c.seq > before && lag_ms(&c.detail) > 1000.0,
            "{what}: #{}\n{}",
            c.seq,
            show(&changes)
        );
    }
    let last_cut = lag_cuts.last().map_or(0, |c| c.seq);
    assert!(
        changes
            .iter()
            .any(|c| c.cause == "recovered" && c.seq > last_cut),
        "{what}: no recovery after the last lag cut\n{}",
        show(&changes)
    );
    eprintln!(
        "{what}: cut {cut_after:?} after the replica fell behind (lag read {} ms), recovered \
         {recovered_after:?} after it caught up (rate {}); {} lag cuts; {ticks} rows of live \
         traffic; {:?} in all\n{}",
        lag_ms(detail),
        recovered["rate"]["rows_per_second"],
        lag_cuts.len(),
        started.elapsed(),
        show(&changes)
    );
}

/// The essential case: the probe on the standby reads `now() - pg_last_xact_replay_timestamp()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_standby_lag_cuts_the_rate_and_the_run_recovers_and_completes() {
    let Some(pair) = Pair::postgres().await else {
        return;
    };
    let probe = pair.replica_url();
    lag_episode_mid_run(pair, &probe, "PostgreSQL, probe on the standby").await;
}

/// The probe on the primary reads the standby's `replay_lag` in `pg_stat_replication`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_primary_reads_standby_replay_lag_and_cuts_the_rate() {
    let Some(pair) = Pair::postgres().await else {
        return;
    };
    let probe = pair.primary_url();
    lag_episode_mid_run(pair, &probe, "PostgreSQL, probe on the primary").await;
}

/// The probe on the replica reads `Seconds_Behind_Master` (whole seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_replica_lag_cuts_the_rate_and_the_run_recovers_and_completes() {
    let Some(pair) = Pair::mariadb().await else {
        return;
    };
    let probe = pair.replica_url();
    lag_episode_mid_run(pair, &probe, "MariaDB, probe on the replica").await;
}

/// A lag reading as the engine gets it, the error as text.
type Reading = Result<Option<Duration>, String>;

/// Reads the lag with `probe` every 100 ms until `accept` takes the reading; panics after
/// [`PATIENCE`] with the last one.
async fn read_until(probe: &Probe, what: &str, accept: impl Fn(&Reading) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reading = probe.replica_lag().await.map_err(|e| e.to_string());
        if accept(&reading) {
            eprintln!("{what}: {reading:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {reading:?} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn over_a_second(r: &Reading) -> bool {
    matches!(r, Ok(Some(l)) if *l > Duration::from_secs(1))
}

fn under_a_second(r: &Reading) -> bool {
    matches!(r, Ok(Some(l)) if *l < Duration::from_secs(1))
}

/// The readings the engine gets from a PostgreSQL standby and its primary, through a lag
/// episode, including a standby that has replayed no transaction since it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_probe_reads_the_lag_of_a_standby_and_of_its_primary() {
    let Some(mut pair) = Pair::postgres().await else {
        return;
    };
    let on_standby = Probe::open(&SecretUrl::new(pair.replica_url()))
        .await
        .expect("probe the standby");
    let on_primary = Probe::open(&SecretUrl::new(pair.primary_url()))
        .await
        .expect("probe the primary");

    // Caught up and idle: no lag on either side (a primary with a standby is replicated).
    read_until(&on_standby, "idle standby", |r| {
        *r == Ok(Some(Duration::ZERO))
    })
    .await;
    read_until(&on_primary, "idle primary", under_a_second).await;

    // Paused with writes waiting: the lag grows past 1 s on both sides.
    pair.fall_behind().await;
    let traffic = pair.traffic().await;
    read_until(&on_standby, "paused standby", over_a_second).await;
    read_until(&on_primary, "primary of a paused standby", over_a_second).await;

    // Replaying again: back under 1 s on both sides while the traffic goes on.
    pair.catch_up().await;
    read_until(&on_standby, "resumed standby", under_a_second).await;
    read_until(&on_primary, "primary of a resumed standby", under_a_second).await;
    traffic.stop().await;

    // A standby that has replayed no transaction since it started (a new clone, as after a
    // restart) with replay paused: `pg_last_xact_replay_timestamp()` is NULL while WAL
    // waits, so its lag is unknown. That is an error (as for a MariaDB replica whose SQL
    // thread stopped), never "not replicated", which would let the run go at full speed.
    let Pair::Postgres { primary, .. } = &pair else {
        unreachable!()
    };
    let fresh = PrivatePostgres::standby_of(primary);
    let on_fresh = Probe::open(&SecretUrl::new(fresh.url()))
        .await
        .expect("probe the new standby");
    read_until(&on_fresh, "new standby", |r| *r == Ok(Some(Duration::ZERO))).await;
    sqlx::raw_sql("SELECT pg_wal_replay_pause()")
        .execute(&mut fresh.connect().await)
        .await
        .expect("pause replay");
    sqlx::raw_sql("INSERT INTO ticks DEFAULT VALUES")
        .execute(&mut primary.connect().await)
        .await
        .expect("write on the primary");
    read_until(&on_fresh, "new paused standby", |r| {
        *r != Ok(Some(Duration::ZERO))
    })
    .await;
    // Still paused, still the same answer.
    let unknown = on_fresh.replica_lag().await.map_err(|e| e.to_string());
    assert!(
        unknown.as_ref().is_err_and(|e| e.contains("unknown")),
        "a standby with WAL to replay and no replayed transaction: {unknown:?}"
    );
}

/// The readings the engine gets from a MariaDB replica: caught up, behind a lock, and with
/// its SQL thread stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_probe_reads_seconds_behind_master() {
    let Some(mut pair) = Pair::mariadb().await else {
        return;
    };
    let on_replica = Probe::open(&SecretUrl::new(pair.replica_url()))
        .await
        .expect("probe the replica");
    let on_primary = Probe::open(&SecretUrl::new(pair.primary_url()))
        .await
        .expect("probe the primary");
    assert_eq!(
        on_primary.replica_lag().await.map_err(|e| e.to_string()),
        Ok(None),
        "a primary is not a replica"
    );
    read_until(&on_replica, "idle replica", |r| {
        *r == Ok(Some(Duration::ZERO))
    })
    .await;

    let traffic = pair.traffic().await;
    pair.fall_behind().await;
    read_until(&on_replica, "replica behind a lock", over_a_second).await;
    pair.catch_up().await;
    read_until(&on_replica, "replica caught up", under_a_second).await;
    traffic.stop().await;

    let Pair::MariaDb { replica, .. } = &pair else {
        unreachable!()
    };
    let mut conn = replica.connect("test").await.expect("connect");
    sqlx::raw_sql("STOP SLAVE SQL_THREAD")
        .execute(&mut conn)
        .await
        .expect("stop the SQL thread");
    read_until(&on_replica, "replica without SQL thread", Result::is_err).await;
    let stopped = on_replica.replica_lag().await.map_err(|e| e.to_string());
    assert!(
        stopped
            .as_ref()
            .is_err_and(|e| e.contains("SQL thread is not running")),
        "{stopped:?}"
    );
    conn.close().await.expect("close");
}
