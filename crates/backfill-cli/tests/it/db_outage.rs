//! Lost database connections mid-run: while `backfill run` copies a table, the test kills the
//! run's busy connections on the server several times (PostgreSQL: `pg_terminate_backend`,
//! MySQL/MariaDB: `KILL CONNECTION`). The run must still succeed (exit 0) by retrying the
//! interrupted partitions from their checkpoints, the retries must show in `status --json`
//! (`retries_per_partition`) and in the audit trail (`partition.retry`), and the target must
//! equal the source row by row.
//!
//! Only this test's connections are killed, and only while they run a statement or hold a
//! transaction open, so every kill interrupts real work:
//! - PostgreSQL: the spec's URLs carry a unique `application_name` (the connector passes URL
//!   parameters to the driver), and so does the state store's URL in the PostgreSQL-store
//!   tests, with another name; the test terminates the backends of `pg_stat_activity` with the
//!   chosen name whose `state` is not `idle`.
//! - MySQL: the spec's URLs name this test's own database, so the engine's connections are the
//!   processlist entries whose `db` is that database and whose `command` is not `Sleep`.
//!
//! Kills start once the first batch is in the target (mid-run, not during start-up), are
//! spaced out and capped (`HITS`), and the spec allows `max_attempts = 10`, so a partition hit
//! every time still has attempts left: the tests are about recovering, not about exhausting
//! retries. `rows_per_second` keeps the run long enough (about 2 s) for every kill to land
//! mid-run.
//!
//! Each test uses its own PostgreSQL schema or MySQL database (`backfill_testkit::servers`)
//! and drops it at the end; a test whose server is down is skipped and counted as skipped, or
//! fails when services are required (`backfill_testkit::skip`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use backfill_testkit::servers::{with_database, with_param};
use backfill_testkit::{MyDatabase, PgSchema};
use sqlx::Row;

use crate::support::{Ran, Workspace};

const ROWS: i64 = 40_000;
/// Kill rounds that hit at least one busy connection.
const HITS: u32 = 5;
/// Pause after a hit before the next one, so the run makes progress in between.
const GAP: Duration = Duration::from_millis(250);

/// Whose connections a kill round ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whom {
    /// The source's and the target's.
    Engine,
    /// The PostgreSQL state store's.
    Store,
}

/// Where the run keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The workspace's SQLite file.
    SqliteFile,
    /// A schema of the same PostgreSQL server (so checkpoints commit with the target's
    /// batches), connected with its own application name.
    Postgres,
}

/// The source and target of one test, on one server.
enum Server {
    Postgres(PgSchema),
    MySql(MyDatabase),
}

impl Server {
    async fn open(system: &str) -> Option<Server> {
        Some(match system {
            "postgres" => Server::Postgres(PgSchema::create("bf_out").await?),
            "mysql" => Server::MySql(MyDatabase::create("bf_out").await?),
            other => panic!("unknown system {other}"),
        })
    }

    async fn exec(&self, sql: &str) {
        match self {
            Server::Postgres(schema) => schema.exec(sql).await,
            Server::MySql(database) => database.exec(sql).await,
        }
    }

    fn table(&self, name: &str) -> String {
        match self {
            Server::Postgres(schema) => schema.table(name),
            Server::MySql(database) => database.table(name),
        }
    }

    /// The PostgreSQL `application_name` of `whom`'s connections.
    fn app(&self, whom: Whom) -> String {
        match (self, whom) {
            (Server::Postgres(schema), Whom::Engine) => format!("{}_engine", schema.name()),
            (Server::Postgres(schema), Whom::Store) => format!("{}_store", schema.name()),
            (Server::MySql(..), _) => panic!("MySQL connections carry no application name"),
        }
    }

    /// The URL the source and target connect with, marked so the test can find their
    /// connections.
    fn engine_url(&self) -> String {
        match self {
            Server::Postgres(schema) => with_param(
                schema.server_url(),
                "application_name",
                &self.app(Whom::Engine),
            ),
            Server::MySql(database) => with_database(database.server_url(), database.name()),
        }
    }

    /// The schema of the PostgreSQL state store.
    fn state_schema(&self) -> String {
        match self {
            Server::Postgres(schema) => format!("{}_state", schema.name()),
            Server::MySql(..) => panic!("the state store cannot live in MySQL"),
        }
    }

    /// `--state` for a PostgreSQL state store on this server: its own schema, marked with its
    /// own application name.
    fn state_url(&self) -> String {
        match self {
            Server::Postgres(schema) => with_param(
                &with_param(schema.server_url(), "schema", &self.state_schema()),
                "application_name",
                &self.app(Whom::Store),
            ),
            Server::MySql(..) => panic!("the state store cannot live in MySQL"),
        }
    }

    /// Creates `src` with `rows` rows (NULLs, empty strings, unicode) and an empty `dst`.
    async fn create_tables(&self, rows: i64) {
        let text = match self {
            Server::Postgres(..) => "TEXT",
            Server::MySql(..) => "VARCHAR(200)",
        };
        for name in ["src", "dst"] {
            self.exec(&format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, note {text}, n BIGINT)",
                self.table(name)
            ))
            .await;
        }
        let src = self.table("src");
        for chunk in (1..=rows).collect::<Vec<_>>().chunks(5_000) {
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
                "INSERT INTO {src} (id, note, n) VALUES {}",
                values.join(", ")
            ))
            .await;
        }
    }

    async fn rows(&self, name: &str) -> Vec<(i64, Option<String>, i64)> {
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
            Server::Postgres(schema) => collect!(schema.pool()),
            Server::MySql(database) => collect!(database.pool()),
        }
    }

    /// Whether `name` holds a committed row.
    async fn has_rows(&self, name: &str) -> bool {
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM {} LIMIT 1) AS t",
            self.table(name)
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let n: i64 = match self {
            Server::Postgres(schema) => sqlx::query_scalar(sql).fetch_one(schema.pool()).await,
            Server::MySql(database) => sqlx::query_scalar(sql).fetch_one(database.pool()).await,
        }
        .expect("count");
        n > 0
    }

    /// Kills `whom`'s connections that are running a statement or hold a transaction open;
    /// returns how many.
    async fn kill_busy(&self, whom: Whom) -> u64 {
        match self {
            Server::Postgres(schema) => {
                let pool = schema.pool();
                let killed: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                     FROM pg_stat_activity \
                     WHERE application_name = $1 AND state <> 'idle' AND pid <> pg_backend_pid()",
                )
                .bind(self.app(whom))
                .fetch_one(pool)
                .await
                .expect("pg_terminate_backend");
                u64::try_from(killed).unwrap_or(0)
            }
            Server::MySql(database) => {
                let pool = database.pool();
                assert_eq!(whom, Whom::Engine, "MySQL holds no state store");
                let ids: Vec<u64> = sqlx::query_scalar(
                    "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist \
                     WHERE db = ? AND command <> 'Sleep' AND id <> CONNECTION_ID()",
                )
                .bind(database.name())
                .fetch_all(pool)
                .await
                .expect("processlist");
                let mut killed = 0;
                for id in ids {
                    // The connection may have ended in between ("Unknown thread id").
                    if sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                        .execute(pool)
                        .await
                        .is_ok()
                    {
                        killed += 1;
                    }
                }
                killed
            }
        }
    }

    async fn drop_all(&self) {
        match self {
            Server::Postgres(schema) => {
                self.exec(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    self.state_schema()
                ))
                .await;
                schema.drop_now().await;
            }
            Server::MySql(database) => database.drop_now().await,
        }
    }
}

/// The spec copying `src` into `dst` on `server`, key windows of 2,000 from 1 to `to`, the
/// source query's rows joined with `from_extra` (e.g. a `pg_sleep`).
fn spec(server: &Server, to: i64, from_extra: &str) -> String {
    let url = server.engine_url();
    format!(
        r#"name = "db-outage"
reason = "connections killed mid-run"

[source]
url = "{url}"
query = "SELECT id, note, n FROM {}{from_extra} WHERE id >= :start AND id < :end"

[target]
url = "{url}"
table = "{}"
key = ["id"]

[scope]
key = "id"
from = 1
to = {to}
chunk = 2000

[limits]
concurrency = 3
batch_rows = 500
rows_per_second = 20000
max_attempts = 10
retry_base = "50ms"
retry_cap = "1s"
"#,
        server.table("src"),
        server.table("dst"),
    )
}

/// What one session with kills did.
struct Outage {
    ran: Ran,
    /// Kill rounds that ended at least one busy connection.
    hits: u32,
    /// Connections ended.
    killed: u64,
}

/// Runs `backfill [state args] --json run spec.toml` and, once `start` says so, ends `whom`'s
/// busy connections up to `hits` times, `GAP` apart, while it runs.
async fn run_with_kills(
    ws: &Workspace,
    server: &Server,
    state_args: &[String],
    whom: Whom,
    hits: u32,
    mid_run: bool,
) -> Outage {
    let mut args: Vec<&str> = state_args.iter().map(String::as_str).collect();
    args.extend(["--json", "run", "spec.toml"]);
    let mut child = ws
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backfill");
    let started = Instant::now();
    let mut outage = Outage {
        ran: Ran {
            code: -1,
            stdout: String::new(),
            stderr: String::new(),
        },
        hits: 0,
        killed: 0,
    };
    let mut last_hit: Option<Instant> = None;
    // Mid-run: once the first batch is in the target.
    let mut armed = !mid_run;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the run did not finish in 3 minutes"
        );
        if !armed {
            armed = server.has_rows("dst").await;
        }
        if armed && outage.hits < hits && last_hit.is_none_or(|t| t.elapsed() >= GAP) {
            let n = server.kill_busy(whom).await;
            if n > 0 {
                outage.hits += 1;
                outage.killed += n;
                last_hit = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let output = child.wait_with_output().expect("wait");
    outage.ran = Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    outage
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds, so a failing test
/// can still drop its schemas before it panics.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// `system` → `system` with its state in `state`; `whom`'s busy connections are killed
/// `HITS` times mid-run.
async fn survives_killed_connections(system: &str, state: State, whom: Whom) {
    let ws = Workspace::new();
    let Some(server) = Server::open(system).await else {
        return;
    };
    let outcome = outage_and_check(&ws, &server, state, whom).await;
    server.drop_all().await;
    if let Err(message) = outcome {
        panic!("{system} ({state:?} state, {whom:?} connections killed): {message}");
    }
}

async fn outage_and_check(
    ws: &Workspace,
    server: &Server,
    state: State,
    whom: Whom,
) -> Result<(), String> {
    server.create_tables(ROWS).await;
    ws.write("spec.toml", &spec(server, ROWS + 1, ""));
    let state_args: Vec<String> = match state {
        State::SqliteFile => Vec::new(),
        State::Postgres => vec!["--state".to_owned(), server.state_url()],
    };
    let cli = |args: &[&str]| -> Ran {
        let all: Vec<&str> = state_args
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        ws.run(&all)
    };

    let Outage { ran, hits, killed } =
        run_with_kills(ws, server, &state_args, whom, HITS, true).await;
    let status = cli(&["status", "--json"]);
    ensure!(
        ran.code == 0,
        "the run must recover from {hits} kills ({killed} connections): {ran:#?}\n\
         status: {}",
        status.stdout
    );
    ensure!(
        hits >= 3,
        "only {hits} kills landed while the run was busy; the test proves nothing"
    );
    let report = ran.json();
    ensure!(report["state"] == "succeeded", "{report:#}");
    // A batch whose commit was cut off may be replayed (and counted) again.
    ensure!(report["rows"]["read"].as_i64() >= Some(ROWS), "{report:#}");
    if state == State::Postgres {
        ensure!(report["exactly_once_checkpoints"] == true, "{report:#}");
    }

    ensure!(status.code == 0, "{status:?}");
    let status = status.json();
    let run_id = report["run_id"].as_str().unwrap_or_default();
    if matches!(whom, Whom::Store) {
        // State-store calls are retried in place, so no partition needs another attempt;
        // the process logs each retry, or the pool notices a killed idle connection.
        ensure!(
            ran.stderr.contains("transient failure; retrying")
                || ran.stderr.contains("terminating connection"),
            "{hits} kills of the store's connections but the run never saw one: {}",
            ran.stderr
        );
    } else {
        let retried = status["retries_per_partition"]
            .as_f64()
            .is_some_and(|r| r > 0.0);
        ensure!(retried, "{hits} kills but no retry counted: {status:#}");
        let audit = cli(&["audit", run_id, "--json"]);
        ensure!(audit.code == 0, "{audit:?}");
        let retried = audit.json().as_array().map_or(0, |events| {
            events
                .iter()
                .filter(|e| e["action"] == "partition.retry")
                .count()
        });
        ensure!(retried > 0, "no partition.retry event after {hits} kills");
    }

    let want = server.rows("src").await;
    ensure!(
        want.len() == ROWS as usize,
        "source has {} rows",
        want.len()
    );
    let got = server.rows("dst").await;
    ensure!(
        got.len() == want.len(),
        "target has {} rows, source {}",
        got.len(),
        want.len()
    );
    ensure!(got == want, "target differs from source");
    let verify = cli(&["audit", "--verify"]);
    ensure!(verify.code == 0, "{verify:?}");
    Ok(())
}

/// PostgreSQL → PostgreSQL, state in the workspace's SQLite file: source and target
/// connections are killed.
#[tokio::test]
async fn postgres_run_survives_killed_connections() {
    survives_killed_connections("postgres", State::SqliteFile, Whom::Engine).await;
}

/// PostgreSQL → PostgreSQL with the state store in the same server (checkpoints commit in the
/// target's transactions): source and target connections are killed.
#[tokio::test]
async fn postgres_run_with_postgres_state_survives_killed_connections() {
    survives_killed_connections("postgres", State::Postgres, Whom::Engine).await;
}

/// PostgreSQL → PostgreSQL with the state store in the same server: the state store's own
/// connections are killed (starting an attempt, finishing a partition).
#[tokio::test]
async fn postgres_run_survives_killed_state_store_connections() {
    survives_killed_connections("postgres", State::Postgres, Whom::Store).await;
}

/// MySQL → MySQL, state in the workspace's SQLite file.
#[tokio::test]
async fn mysql_run_survives_killed_connections() {
    survives_killed_connections("mysql", State::SqliteFile, Whom::Engine).await;
}

/// A connection lost while the run starts (the source query's first read, before any
/// partition) is a transient error like any other: the run should retry it, not fail.
#[tokio::test]
async fn postgres_connection_lost_during_start_up_is_retried() {
    const FEW: i64 = 1_000;
    let ws = Workspace::new();
    let Some(server) = Server::open("postgres").await else {
        return;
    };
    server.create_tables(FEW).await;
    // Every read of the source takes 0.3 s, so the first busy connection is the start-up's.
    ws.write(
        "spec.toml",
        &spec(&server, FEW + 1, " CROSS JOIN pg_sleep(0.3)"),
    );
    let Outage { ran, hits, .. } = run_with_kills(&ws, &server, &[], Whom::Engine, 1, false).await;
    let (got, want) = (server.rows("dst").await, server.rows("src").await);
    server.drop_all().await;
    assert_eq!(hits, 1, "the start-up was not hit: {ran:#?}");
    assert_eq!(ran.code, 0, "a start-up kill must be retried: {ran:#?}");
    assert!(got == want, "target differs from source");
}
