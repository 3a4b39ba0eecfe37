//! Invariant 3 on real servers: a run between SQLite, PostgreSQL and MySQL/MariaDB that is
//! SIGKILLed several times mid-run and restarted with `backfill run SPEC` resumes the one run,
//! and the target ends up exactly as the source: nothing missing, duplicated or wrong.
//!
//! All nine source → target pairs of {sqlite, postgres, mysql}² are here. SQLite → SQLite is
//! covered on both of its paths: here on the row path (`target.pushdown = false`), and in
//! `crash.rs` on the default pushdown path (500,000 rows, upsert and replace, compared row by
//! row with an uninterrupted run).
//!
//! Each session is killed when the target holds a given share of the rows (15 %, 40 %, 70 %),
//! so every kill lands mid-run whatever the machine's speed; the test checks that at least two
//! sessions really died by SIGKILL with the target still incomplete.
//!
//! Each test uses its own PostgreSQL schema or MySQL database (`backfill_testkit::servers`)
//! and drops it at the end; a test whose server is down is skipped and counted as skipped, or
//! fails when services are required (`backfill_testkit::skip`).

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use backfill_testkit::{Db, System};
use sqlx::Row;

use crate::support::{Workspace, runs_json};

const ROWS: i64 = 60_000;
/// A session is killed once the target holds this many thousandths of the rows.
const KILLS_PER_MILLE: [i64; 3] = [150, 400, 700];

type Rows = Vec<(i64, Option<String>, i64)>;

/// Opens an isolated database of `system` (`sqlite`, `postgres`, `mysql`), or `None` (skip)
/// when its server is down.
async fn open(system: &str, ws: &Workspace, name: &str) -> Option<Db> {
    Db::open(System::parse(system), ws.dir.path(), "bf_cr", name).await
}

/// The tables of this file's tests.
trait Tables {
    async fn create(&self, name: &str, rows: i64);
    async fn rows(&self, name: &str) -> Rows;
    async fn count(&self, name: &str) -> i64;
}

impl Tables for Db {
    /// Creates `name (id BIGINT PRIMARY KEY, note, n BIGINT)` and fills it with `rows` rows.
    async fn create(&self, name: &str, rows: i64) {
        let text = if matches!(self, Db::MySql(..)) {
            "VARCHAR(200)"
        } else {
            "TEXT"
        };
        let table = self.table(name);
        self.exec(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, note {text}, n BIGINT)"
        ))
        .await;
        for chunk in (1..=rows).collect::<Vec<_>>().chunks(2_000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|i| {
                    let note = match i % 7 {
                        0 => "NULL".to_owned(),
                        1 => "''".to_owned(),
                        2 => format!("'Ünïcödé ✓ {i}'"),
                        _ => format!("'note {i}'"),
                    };
                    format!("({i}, {note}, {})", i * 1_000_000_007)
                })
                .collect();
            self.exec(&format!(
                "INSERT INTO {table} (id, note, n) VALUES {}",
                values.join(", ")
            ))
            .await;
        }
    }

    /// Every row of `name` ordered by id.
    async fn rows(&self, name: &str) -> Rows {
        let sql = format!("SELECT id, note, n FROM {} ORDER BY id", self.table(name));
        let sql = sqlx::AssertSqlSafe(sql);
        macro_rules! collect {
            ($pool:expr) => {
                sqlx::query(sql)
                    .fetch_all($pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            };
        }
        match self {
            Db::Sqlite(pool, _) => collect!(pool),
            Db::Postgres(schema) => collect!(schema.pool()),
            Db::MySql(database) => collect!(database.pool()),
        }
    }

    /// Number of rows in `name` (committed ones, as another connection sees them).
    async fn count(&self, name: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.table(name));
        let sql = sqlx::AssertSqlSafe(sql);
        let n = match self {
            Db::Sqlite(pool, _) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Db::Postgres(schema) => sqlx::query_scalar(sql).fetch_one(schema.pool()).await,
            Db::MySql(database) => sqlx::query_scalar(sql).fetch_one(database.pool()).await,
        };
        n.unwrap_or_else(|e| panic!("count {name}: {e}"))
    }
}

fn spec(source: &Db, target: &Db, extra_target: &str) -> String {
    format!(
        r#"name = "crash-db"
reason = "crash and resume across database systems"

[source]
url = "{}"
query = "SELECT id, note, n FROM {} WHERE id >= :start AND id < :end"

[target]
url = "{}"
table = "{}"
key = ["id"]
{extra_target}

[scope]
key = "id"
from = 1
to = {}
chunk = 2000

[limits]
concurrency = 3
batch_rows = 500
"#,
        source.url(),
        source.table("src"),
        target.url(),
        target.table("dst"),
        ROWS + 1
    )
}

/// Whether a run already exists in the workspace's state store.
fn has_run(ws: &Workspace) -> bool {
    !runs_json(ws).is_empty()
}

/// How one `backfill run spec.toml` session ended.
struct Session {
    /// It died by SIGKILL (rather than exiting on its own).
    killed: bool,
    code: Option<i32>,
    /// Rows in the target when the kill was sent.
    rows_at_kill: i64,
    stderr: String,
}

/// Starts `backfill run spec.toml` and SIGKILLs it as soon as the target holds at least
/// `kill_at` rows, unless it exits first.
async fn killed_session(ws: &Workspace, target: &Db, kill_at: i64) -> Session {
    let mut child = ws
        .command(&["run", "spec.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let started = Instant::now();
    let mut rows_at_kill = -1;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        let rows = target.count("dst").await;
        // A generous cap so a stuck session cannot hang the test.
        if rows >= kill_at || started.elapsed() >= Duration::from_secs(120) {
            rows_at_kill = rows;
            // SIGKILL; the process may have exited in between, which the status tells.
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let output = child.wait_with_output().expect("wait");
    Session {
        killed: output.status.signal() == Some(9),
        code: output.status.code(),
        rows_at_kill,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn crash_and_resume(from: &str, to: &str) {
    crash_and_resume_with(from, to, "").await;
}

async fn crash_and_resume_with(from: &str, to: &str, extra_target: &str) {
    let ws = Workspace::new();
    let Some(source) = open(from, &ws, "src").await else {
        return;
    };
    let Some(target) = open(to, &ws, "dst").await else {
        source.drop_now().await;
        return;
    };
    source.create("src", ROWS).await;
    target.create("dst", 0).await;
    ws.write("spec.toml", &spec(&source, &target, extra_target));

    let mut succeeded = false;
    let mut killed_mid_run = 0;
    for per_mille in KILLS_PER_MILLE {
        let existed = has_run(&ws);
        let s = killed_session(&ws, &target, ROWS * per_mille / 1000).await;
        if existed {
            assert!(
                !s.stderr.contains("created run"),
                "{from} -> {to}: a restart created a run: {}",
                s.stderr
            );
            // A session killed before it printed anything cannot say it resumed.
            if !s.stderr.is_empty() {
                assert!(
                    s.stderr.contains("resuming"),
                    "{from} -> {to}: {}",
                    s.stderr
                );
            }
        }
        if !s.killed {
            assert_eq!(
                s.code,
                Some(0),
                "{from} -> {to}: session failed: {}",
                s.stderr
            );
            succeeded = true;
            break;
        }
        if s.rows_at_kill < ROWS {
            killed_mid_run += 1;
        }
    }
    // Kills are triggered by the target's progress, so they land mid-run on any machine.
    assert!(
        killed_mid_run >= 2,
        "{from} -> {to}: only {killed_mid_run} sessions were killed mid-run"
    );
    let mut tries = 0;
    while !succeeded {
        tries += 1;
        assert!(tries <= 10, "{from} -> {to}: no success after 10 restarts");
        let existed = has_run(&ws);
        let ran = ws.run(&["--json", "run", "spec.toml"]);
        if existed {
            assert!(
                ran.stderr.contains("resuming") && !ran.stderr.contains("created run"),
                "{from} -> {to}: a restart must resume the run: {ran:?}"
            );
        }
        succeeded = ran.code == 0;
    }

    let want = source.rows("src").await;
    assert_eq!(want.len(), ROWS as usize);
    let got = target.rows("dst").await;
    assert_eq!(got.len(), want.len(), "{from} -> {to}: row count differs");
    assert!(got == want, "{from} -> {to}: target differs from source");

    let runs = ws.run(&["--json", "runs"]);
    assert_eq!(runs.code, 0, "{runs:?}");
    let runs = runs.json();
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "{from} -> {to}: {runs:#}"
    );
    let status = ws.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json();
    assert_eq!(status["state"], "succeeded", "{from} -> {to}: {status:#}");
    assert_eq!(
        status["partitions"]["done"],
        ROWS / 2000,
        "{from} -> {to}: {status:#}"
    );
    let verify = ws.run(&["audit", "--verify"]);
    assert_eq!(verify.code, 0, "{from} -> {to}: {verify:?}");

    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn sqlite_to_sqlite_row_path_resumes_after_sigkills() {
    crash_and_resume_with("sqlite", "sqlite", "pushdown = false").await;
}

#[tokio::test]
async fn sqlite_to_postgres_resumes_after_sigkills() {
    crash_and_resume("sqlite", "postgres").await;
}

#[tokio::test]
async fn sqlite_to_mysql_resumes_after_sigkills() {
    crash_and_resume("sqlite", "mysql").await;
}

#[tokio::test]
async fn postgres_to_sqlite_resumes_after_sigkills() {
    crash_and_resume("postgres", "sqlite").await;
}

#[tokio::test]
async fn postgres_to_postgres_resumes_after_sigkills() {
    crash_and_resume("postgres", "postgres").await;
}

#[tokio::test]
async fn postgres_to_mysql_resumes_after_sigkills() {
    crash_and_resume("postgres", "mysql").await;
}

#[tokio::test]
async fn mysql_to_sqlite_resumes_after_sigkills() {
    crash_and_resume("mysql", "sqlite").await;
}

#[tokio::test]
async fn mysql_to_postgres_resumes_after_sigkills() {
    crash_and_resume("mysql", "postgres").await;
}

#[tokio::test]
async fn mysql_to_mysql_resumes_after_sigkills() {
    crash_and_resume("mysql", "mysql").await;
}
