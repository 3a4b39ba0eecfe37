//! Every source × target pair of SQLite, PostgreSQL and MySQL/MariaDB, through the real
//! binary: a copy, then an idempotent re-run, compared row by row.
//!
//! Each test isolates itself: its own SQLite files, its own PostgreSQL schema and its own MySQL
//! database, dropped at the end. Servers come from `BACKFILL_TEST_POSTGRES_URL` and
//! `BACKFILL_TEST_MYSQL_URL` (local defaults); a test whose server is not reachable is skipped
//! with a message, or fails when `BACKFILL_REQUIRE_SERVICES=1` or `CI=true`.

use sqlx::{MySqlPool, PgPool, Row, SqlitePool};

use crate::support::{Workspace, sqlite};

const ROWS: i64 = 3_000;

/// One database of a test, of any system.
enum Db {
    Sqlite {
        pool: SqlitePool,
        url: String,
    },
    Postgres {
        pool: PgPool,
        url: String,
        schema: String,
    },
    MySql {
        pool: MySqlPool,
        url: String,
        database: String,
    },
}

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

impl Db {
    /// Opens an isolated database of `system`, or `None` (skip) when its server is down.
    async fn open(system: &str, ws: &Workspace, name: &str) -> Option<Db> {
        match system {
            "sqlite" => {
                let path = ws.path(&format!("{name}.db"));
                let pool = sqlite(&path).await;
                Some(Db::Sqlite {
                    pool,
                    url: format!("sqlite://{}", path.display()),
                })
            }
            "postgres" => {
                let base = std::env::var("BACKFILL_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
                let pool = match PgPool::connect(&base).await {
                    Ok(p) => p,
                    Err(e) => return skip_or_fail("PostgreSQL", &base, &e),
                };
                let schema = unique(&format!("bf_mx_{name}"));
                exec_pg(&pool, &format!("CREATE SCHEMA {schema}")).await;
                Some(Db::Postgres {
                    pool,
                    url: base,
                    schema,
                })
            }
            "mysql" => {
                let base = std::env::var("BACKFILL_TEST_MYSQL_URL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
                let pool = match MySqlPool::connect(&base).await {
                    Ok(p) => p,
                    Err(e) => return skip_or_fail("MySQL", &base, &e),
                };
                let database = unique(&format!("bf_mx_{name}"));
                exec_my(
                    &pool,
                    &format!("CREATE DATABASE {database} CHARACTER SET utf8mb4"),
                )
                .await;
                Some(Db::MySql {
                    pool,
                    url: base,
                    database,
                })
            }
            other => panic!("unknown system {other}"),
        }
    }

    /// `table` qualified with this test's schema or database.
    fn table(&self, table: &str) -> String {
        match self {
            Db::Sqlite { .. } => table.to_owned(),
            Db::Postgres { schema, .. } => format!("{schema}.{table}"),
            Db::MySql { database, .. } => format!("{database}.{table}"),
        }
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite { url, .. } | Db::Postgres { url, .. } | Db::MySql { url, .. } => url,
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite { pool, .. } => {
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Db::Postgres { pool, .. } => exec_pg(pool, sql).await,
            Db::MySql { pool, .. } => exec_my(pool, sql).await,
        }
    }

    /// Creates `name (id BIGINT PRIMARY KEY, note TEXT, n BIGINT)` in this system's types.
    async fn create(&self, name: &str) {
        let text = if matches!(self, Db::MySql { .. }) {
            "VARCHAR(200)"
        } else {
            "TEXT"
        };
        let table = self.table(name);
        self.exec(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, note {text}, n BIGINT)"
        ))
        .await;
    }

    /// Fills `name` with `ROWS` rows: NULL notes, unicode, empty strings and big numbers.
    async fn fill(&self, name: &str) {
        let table = self.table(name);
        for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(500) {
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

    /// Every row of `name` ordered by id, as `(id, note, n)`.
    async fn rows(&self, name: &str) -> Vec<(i64, Option<String>, i64)> {
        let sql = format!("SELECT id, note, n FROM {} ORDER BY id", self.table(name));
        let sql = sqlx::AssertSqlSafe(sql);
        macro_rules! collect {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            };
        }
        match self {
            Db::Sqlite { pool, .. } => collect!(sqlx::query(sql).fetch_all(pool).await.unwrap()),
            Db::Postgres { pool, .. } => collect!(sqlx::query(sql).fetch_all(pool).await.unwrap()),
            Db::MySql { pool, .. } => collect!(sqlx::query(sql).fetch_all(pool).await.unwrap()),
        }
    }

    async fn drop_all(&self) {
        match self {
            Db::Sqlite { .. } => {}
            Db::Postgres { pool, schema, .. } => {
                exec_pg(pool, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
            }
            Db::MySql { pool, database, .. } => {
                exec_my(pool, &format!("DROP DATABASE IF EXISTS {database}")).await;
            }
        }
    }
}

pub(crate) fn skip_or_fail<T>(what: &str, url: &str, e: &sqlx::Error) -> Option<T> {
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

async fn exec_pg(pool: &PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn exec_my(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn spec(source: &Db, target: &Db) -> String {
    format!(
        r#"name = "matrix"
reason = "source x target matrix"

[source]
url = "{}"
query = "SELECT id, note, n FROM {} WHERE id >= :start AND id < :end"

[target]
url = "{}"
table = "{}"
key = ["id"]

[scope]
key = "id"
from = 1
to = {}
chunk = 500

[limits]
concurrency = 3
batch_rows = 200
"#,
        source.url(),
        source.table("src"),
        target.url(),
        target.table("dst"),
        ROWS + 1
    )
}

async fn copy_and_rerun(from: &str, to: &str) {
    let ws = Workspace::new();
    let Some(source) = Db::open(from, &ws, "src").await else {
        return;
    };
    let Some(target) = Db::open(to, &ws, "dst").await else {
        source.drop_all().await;
        return;
    };
    source.create("src").await;
    source.fill("src").await;
    target.create("dst").await;
    ws.write("spec.toml", &spec(&source, &target));

    let first = ws.run(&["--json", "run", "spec.toml"]);
    assert_eq!(first.code, 0, "{from} -> {to}: {first:#?}");
    let json = first.json();
    assert_eq!(json["rows"]["inserted"], ROWS, "{from} -> {to}: {json}");
    let want = source.rows("src").await;
    assert_eq!(want.len(), ROWS as usize);
    assert_eq!(
        target.rows("dst").await,
        want,
        "{from} -> {to}: target differs from source"
    );

    let second = ws.run(&["--json", "run", "spec.toml"]);
    assert_eq!(second.code, 0, "{from} -> {to}: {second:#?}");
    let json = second.json();
    assert_eq!(
        json["rows"]["unchanged"], ROWS,
        "{from} -> {to}: re-run changed rows: {json}"
    );
    assert_eq!(json["rows"]["inserted"], 0, "{json}");
    assert_eq!(json["rows"]["updated"], 0, "{json}");
    assert_eq!(
        target.rows("dst").await,
        want,
        "{from} -> {to}: re-run changed the target"
    );

    source.drop_all().await;
    target.drop_all().await;
}

macro_rules! pairs {
    ($($name:ident: $from:literal -> $to:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            copy_and_rerun($from, $to).await;
        }
    )*};
}

pairs! {
    sqlite_to_sqlite: "sqlite" -> "sqlite";
    sqlite_to_postgres: "sqlite" -> "postgres";
    sqlite_to_mysql: "sqlite" -> "mysql";
    postgres_to_sqlite: "postgres" -> "sqlite";
    postgres_to_postgres: "postgres" -> "postgres";
    postgres_to_mysql: "postgres" -> "mysql";
    mysql_to_sqlite: "mysql" -> "sqlite";
    mysql_to_postgres: "mysql" -> "postgres";
    mysql_to_mysql: "mysql" -> "mysql";
}

/// With the state store in the target's PostgreSQL database, each batch and its checkpoint
/// commit in one transaction (the run reports exactly-once checkpoints), and a re-run is
/// still all unchanged.
#[tokio::test]
async fn postgres_target_in_the_postgres_state_store_is_exactly_once() {
    let ws = Workspace::new();
    let Some(source) = Db::open("sqlite", &ws, "src").await else {
        return;
    };
    let Some(target) = Db::open("postgres", &ws, "dst").await else {
        return;
    };
    source.create("src").await;
    source.fill("src").await;
    target.create("dst").await;
    ws.write("spec.toml", &spec(&source, &target));
    let state_schema = unique("bf_mx_state");
    let state = format!("{}?schema={state_schema}", target.url());

    let first = ws.run(&["--state", &state, "--json", "run", "spec.toml"]);
    assert_eq!(first.code, 0, "{first:#?}");
    let json = first.json();
    assert_eq!(json["exactly_once_checkpoints"], true, "{json}");
    assert_eq!(json["rows"]["inserted"], ROWS, "{json}");
    assert_eq!(target.rows("dst").await, source.rows("src").await);

    let second = ws.run(&["--state", &state, "--json", "run", "spec.toml"]);
    assert_eq!(second.code, 0, "{second:#?}");
    assert_eq!(second.json()["rows"]["unchanged"], ROWS);
    let verify = ws.run(&["--state", &state, "audit", "--verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");

    target
        .exec(&format!("DROP SCHEMA IF EXISTS {state_schema} CASCADE"))
        .await;
    target.drop_all().await;
}

/// `guard = "n"` (a version column): rows a live writer updates while the backfill runs keep
/// the live values (their guard is newer); every other row gets the source's values. For
/// each target system (SQLite → SQLite runs inside SQLite, the pushdown).
async fn guard_lets_concurrent_live_writes_win(to: &str) {
    let ws = Workspace::new();
    let Some(source) = Db::open("sqlite", &ws, "src").await else {
        return;
    };
    let Some(target) = Db::open(to, &ws, "dst").await else {
        return;
    };
    source.create("src").await;
    target.create("dst").await;
    // Source rows carry version 1; the target starts with stale version-0 rows.
    let rows = |note: &str, version: i64| -> Vec<String> {
        (1..=ROWS)
            .collect::<Vec<_>>()
            .chunks(500)
            .map(|chunk| {
                let values: Vec<String> = chunk
                    .iter()
                    .map(|i| format!("({i}, '{note} {i}', {version})"))
                    .collect();
                values.join(", ")
            })
            .collect()
    };
    for values in rows("backfill", 1) {
        let src = source.table("src");
        source
            .exec(&format!("INSERT INTO {src} (id, note, n) VALUES {values}"))
            .await;
    }
    for values in rows("stale", 0) {
        let dst = target.table("dst");
        target
            .exec(&format!("INSERT INTO {dst} (id, note, n) VALUES {values}"))
            .await;
    }
    let spec = spec(&source, &target)
        .replace("key = [\"id\"]", "key = [\"id\"]\nguard = \"n\"")
        .replace(
            "batch_rows = 200",
            "batch_rows = 50\nrows_per_second = 3000",
        );
    ws.write("spec.toml", &spec);

    // A live writer touches every 10th row with version 2 while the backfill runs (about a
    // second).
    let mut child = ws
        .command(&["run", "spec.toml"])
        .spawn()
        .expect("spawn backfill");
    let dst = target.table("dst");
    for i in (10..=ROWS).step_by(10) {
        target
            .exec(&format!(
                "UPDATE {dst} SET note = 'live {i}', n = 2 WHERE id = {i}"
            ))
            .await;
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "backfill into {to} failed");

    let want: Vec<(i64, Option<String>, i64)> = (1..=ROWS)
        .map(|id| {
            if id % 10 == 0 {
                (id, Some(format!("live {id}")), 2)
            } else {
                (id, Some(format!("backfill {id}")), 1)
            }
        })
        .collect();
    assert_eq!(target.rows("dst").await, want, "into {to}");
    source.drop_all().await;
    target.drop_all().await;
}

#[tokio::test]
async fn guard_lets_concurrent_live_writes_win_in_postgres() {
    guard_lets_concurrent_live_writes_win("postgres").await;
}

#[tokio::test]
async fn guard_lets_concurrent_live_writes_win_in_mysql() {
    guard_lets_concurrent_live_writes_win("mysql").await;
}

#[tokio::test]
async fn guard_lets_concurrent_live_writes_win_in_sqlite() {
    guard_lets_concurrent_live_writes_win("sqlite").await;
}
