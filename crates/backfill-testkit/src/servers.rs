//! The test servers and a private namespace on each for one test.
//!
//! Servers come from `BACKFILL_TEST_POSTGRES_URL` and `BACKFILL_TEST_MYSQL_URL` (defaults: the
//! machine's PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306, database `test`).
//! [`PgSchema::create`] and [`MyDatabase::create`] connect (waiting up to
//! [`CONNECT_TIMEOUT`]) and create a uniquely named schema or database, or skip the test
//! through [`crate::skip`] when the server does not answer.
//!
//! Invariants: two tests never share a namespace (names carry the process id, a counter and
//! the clock), so tests run in parallel; a namespace is dropped by `drop_now` at the end of
//! the test or, when the test panicked before, by `Drop` on a fresh connection.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, MySqlPool, PgPool};

/// How long opening a test's namespace waits for its server before the test is skipped (a
/// refused connection is retried until then).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL server of the tests: `BACKFILL_TEST_POSTGRES_URL`, or
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("BACKFILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The MySQL/MariaDB server of the tests: `BACKFILL_TEST_MYSQL_URL`, or
/// `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("BACKFILL_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A name no other test uses at the same time: `PREFIX_PID_SEQ_NANOS`, lower-case, a valid
/// unquoted identifier when `prefix` is one.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{seq}_{nanos}", std::process::id())
}

/// `url` with `key=value` added to its query string.
pub fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// `url` with its database (the path) replaced by `database`, its query string kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let server = &base[..authority_end];
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// Runs `sql` (one or several statements) on `executor`, panicking with the statement.
macro_rules! exec_on {
    ($executor:expr, $sql:expr) => {{
        let sql: &str = $sql;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute($executor)
            .await
            .map(drop)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }};
}

/// Which server a namespace lives on, for the fallback drop.
#[derive(Clone, Copy)]
enum System {
    Postgres,
    MySql,
}

/// Drops a namespace from `Drop`: the test's runtime may be blocked right there, so a
/// connection of its pool would never see the answer. A fresh thread, runtime and connection
/// do it; a failure is reported on stderr (the test is failing already).
fn drop_on_fresh_connection(system: System, server: &str, sql: String) {
    let server = server.to_owned();
    let shown = sql.clone();
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let sql = sqlx::AssertSqlSafe(sql);
            let done: Result<(), sqlx::Error> = match system {
                System::Postgres => match sqlx::PgConnection::connect(&server).await {
                    Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
                    Err(e) => Err(e),
                },
                System::MySql => match sqlx::MySqlConnection::connect(&server).await {
                    Ok(mut conn) => sqlx::raw_sql(sql).execute(&mut conn).await.map(drop),
                    Err(e) => Err(e),
                },
            };
            done.map_err(|e| e.to_string())
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        #[allow(clippy::print_stderr, reason = "a test's cleanup has no other channel")]
        {
            eprintln!("could not run {shown}: {dropped:?}");
        }
    }
}

/// One test's PostgreSQL schema on the test server, with a small pool on the server's URL.
pub struct PgSchema {
    pool: PgPool,
    /// The server's URL (the schema is not in it).
    server: String,
    name: String,
    /// Set once the schema is gone, so `Drop` does nothing more.
    dropped: AtomicBool,
}

impl PgSchema {
    /// A new schema `PREFIX_…` on [`postgres_url`], or `None` when the server does not answer
    /// and services are not required (the test is then skipped and counted).
    pub async fn create(prefix: &str) -> Option<PgSchema> {
        PgSchema::create_on(&postgres_url(), prefix).await
    }

    /// [`PgSchema::create`] on the server at `server`.
    pub async fn create_on(server: &str, prefix: &str) -> Option<PgSchema> {
        let pool = match PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(server)
            .await
        {
            Ok(pool) => pool,
            Err(e) => return crate::skip::unreachable("PostgreSQL", server, &e),
        };
        let name = unique(prefix);
        exec_on!(&pool, &format!("CREATE SCHEMA {name}"));
        Some(PgSchema {
            pool,
            server: server.to_owned(),
            name,
            dropped: AtomicBool::new(false),
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL (connections on it start in the default `search_path`).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// A pool on the server (up to 4 connections).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `table` qualified with the schema.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    /// Runs `sql` (statements separated by `;`) on the pool; panics naming the statement.
    pub async fn exec(&self, sql: &str) {
        exec_on!(&self.pool, sql);
    }

    /// Drops the schema and everything in it.
    pub async fn drop_now(&self) {
        self.exec(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .await;
        self.dropped.store(true, Ordering::Relaxed);
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if !self.dropped.load(Ordering::Relaxed) {
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
            drop_on_fresh_connection(System::Postgres, &self.server, sql);
        }
    }
}

/// One test's MySQL/MariaDB database (`utf8mb4`) on the test server, with a small pool on the
/// server's URL whose sessions are in UTC and `utf8mb4`, as the connector's.
pub struct MyDatabase {
    pool: MySqlPool,
    /// The server's URL (its own database, not this one).
    server: String,
    name: String,
    /// Set once the database is gone, so `Drop` does nothing more.
    dropped: AtomicBool,
}

impl MyDatabase {
    /// A new database `PREFIX_…` on [`mysql_url`], or `None` when the server does not answer
    /// and services are not required (the test is then skipped and counted).
    pub async fn create(prefix: &str) -> Option<MyDatabase> {
        MyDatabase::create_on(&mysql_url(), prefix).await
    }

    /// [`MyDatabase::create`] on the server at `server`.
    pub async fn create_on(server: &str, prefix: &str) -> Option<MyDatabase> {
        let options = MySqlConnectOptions::from_str(server)
            .unwrap_or_else(|e| {
                let shown = backfill_core::secret::redact(server);
                panic!("BACKFILL_TEST_MYSQL_URL {shown} is not a MySQL URL: {e}")
            })
            .timezone(Some("+00:00".to_owned()))
            .charset("utf8mb4");
        let pool = match MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
        {
            Ok(pool) => pool,
            Err(e) => return crate::skip::unreachable("MySQL", server, &e),
        };
        let name = unique(prefix);
        exec_on!(
            &pool,
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")
        );
        Some(MyDatabase {
            pool,
            server: server.to_owned(),
            name,
            dropped: AtomicBool::new(false),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL (its own database, not this one).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The URL of this database on the server.
    pub fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }

    /// A pool on the server (up to 4 connections, UTC sessions).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// `table` qualified with the database.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    /// Runs `sql` (statements separated by `;`) on the pool; panics naming the statement.
    pub async fn exec(&self, sql: &str) {
        exec_on!(&self.pool, sql);
    }

    /// Drops the database and everything in it.
    pub async fn drop_now(&self) {
        self.exec(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .await;
        self.dropped.store(true, Ordering::Relaxed);
    }
}

impl Drop for MyDatabase {
    fn drop(&mut self) {
        if !self.dropped.load(Ordering::Relaxed) {
            let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
            drop_on_fresh_connection(System::MySql, &self.server, sql);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_database_or_a_parameter_and_keep_the_rest() {
        let cases = [
            (
                "mysql://root@127.0.0.1:3306/test",
                "mysql://root@127.0.0.1:3306/db1",
            ),
            (
                "mysql://root@h:1/test?ssl-mode=disabled",
                "mysql://root@h:1/db1?ssl-mode=disabled",
            ),
            ("mysql://root@h:1", "mysql://root@h:1/db1"),
            ("mysql://u:p@h/t", "mysql://u:p@h/db1"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "db1"), expected, "{url}");
        }
        assert_eq!(with_param("postgres://h/t", "a", "1"), "postgres://h/t?a=1");
        assert_eq!(
            with_param("postgres://h/t?b=2", "a", "1"),
            "postgres://h/t?b=2&a=1"
        );
    }

    #[test]
    fn unique_names_differ_within_one_process() {
        assert_ne!(unique("bf_x"), unique("bf_x"));
        assert!(unique("bf_x").starts_with(&format!("bf_x_{}_", std::process::id())));
    }
}
