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
//! Servers come from `BACKFILL_TEST_POSTGRES_URL` and `BACKFILL_TEST_MYSQL_URL` (local defaults),
//! as in `matrix.rs`; a test whose server is down is skipped, or fails when
//! `BACKFILL_REQUIRE_SERVICES=1` or `CI=true`. Each test uses its own schema or database and
//! drops it at the end.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{MySqlPool, PgPool, Row, SqlitePool};

use crate::support::{Workspace, runs_json, sqlite};

const ROWS: i64 = 60_000;
/// A session is killed once the target holds this many thousandths of the rows.
const KILLS_PER_MILLE: [i64; 3] = [150, 400, 700];

type Rows = Vec<(i64, Option<String>, i64)>;

/// One isolated database of a test (a compact copy of `matrix.rs`'s).
enum Db {
    Sqlite(SqlitePool, String),
    Postgres(PgPool, String, String),
    MySql(MySqlPool, String, String),
}

/// How long a test waits for a server before it is skipped (a refused connection is retried
/// until then).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn required() -> bool {
    std::env::var("BACKFILL_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

fn skip_or_fail<T>(what: &str, url: &str, e: &sqlx::Error) -> Option<T> {
    assert!(
        !required(),
        "{what} is required (CI) but not reachable at {url}: {e}"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!("skipped: {what} not reachable at {url}: {e}");
    }
    None
}

impl Db {
    async fn open(system: &str, ws: &Workspace, name: &str) -> Option<Db> {
        let db = match system {
            "sqlite" => {
                let path = ws.path(&format!("{name}.db"));
                let url = format!("sqlite://{}", path.display());
                Db::Sqlite(sqlite(&path).await, url)
            }
            "postgres" => {
                let base = std::env::var("BACKFILL_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
                let pool = match sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect(&base)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => return skip_or_fail("PostgreSQL", &base, &e),
                };
                Db::Postgres(pool, base, unique(&format!("bf_cr_{name}")))
            }
            "mysql" => {
                let base = std::env::var("BACKFILL_TEST_MYSQL_URL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
                let pool = match sqlx::mysql::MySqlPoolOptions::new()
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect(&base)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => return skip_or_fail("MySQL", &base, &e),
                };
                Db::MySql(pool, base, unique(&format!("bf_cr_{name}")))
            }
            other => panic!("unknown system {other}"),
        };
        match &db {
            Db::Sqlite(..) => {}
            Db::Postgres(_, _, s) => db.exec(&format!("CREATE SCHEMA {s}")).await,
            Db::MySql(_, _, d) => {
                db.exec(&format!("CREATE DATABASE {d} CHARACTER SET utf8mb4"))
                    .await;
            }
        }
        Some(db)
    }

    fn table(&self, table: &str) -> String {
        match self {
            Db::Sqlite(..) => table.to_owned(),
            Db::Postgres(_, _, ns) | Db::MySql(_, _, ns) => format!("{ns}.{table}"),
        }
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) | Db::Postgres(_, url, _) | Db::MySql(_, url, _) => url,
        }
    }

    async fn exec(&self, sql: &str) {
        let q = || sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()));
        let done = match self {
            Db::Sqlite(pool, _) => q().execute(pool).await.map(drop),
            Db::Postgres(pool, ..) => q().execute(pool).await.map(drop),
            Db::MySql(pool, ..) => q().execute(pool).await.map(drop),
        };
        done.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

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
            Db::Postgres(pool, ..) => collect!(pool),
            Db::MySql(pool, ..) => collect!(pool),
        }
    }

    /// Number of rows in `name` (committed ones, as another connection sees them).
    async fn count(&self, name: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.table(name));
        let sql = sqlx::AssertSqlSafe(sql);
        let n = match self {
            Db::Sqlite(pool, _) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Db::Postgres(pool, ..) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Db::MySql(pool, ..) => sqlx::query_scalar(sql).fetch_one(pool).await,
        };
        n.unwrap_or_else(|e| panic!("count {name}: {e}"))
    }

    async fn drop_all(&self) {
        match self {
            Db::Sqlite(..) => {}
            Db::Postgres(_, _, s) => {
                self.exec(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                    .await
            }
            Db::MySql(_, _, d) => self.exec(&format!("DROP DATABASE IF EXISTS {d}")).await,
        }
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
    let Some(source) = Db::open(from, &ws, "src").await else {
        return;
    };
    let Some(target) = Db::open(to, &ws, "dst").await else {
        source.drop_all().await;
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

    source.drop_all().await;
    target.drop_all().await;
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
